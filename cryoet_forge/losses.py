"""Adversarial and cycle-consistency losses.

An adversarial loss object works on critic scores (patches of any shape) and has:

- ``critic_loss(real_scores, fake_scores) -> Tensor``: what the critic minimises;
- ``generator_loss(fake_scores) -> Tensor``: what the generator minimises;
- ``needs_interpolates`` and ``penalty(scores, interpolates, grad_scale=1.0)``: an extra
  critic term on points between real and fake samples (WGAN-GP); 0 for the others;
- ``after_critic_step(critic)``: a constraint applied after each critic update (weight
  clipping for WGAN with clipping);
- ``gap(real_scores, fake_scores) -> Tensor``: mean real minus mean fake score, the
  Wasserstein-distance estimate for WGAN critics (logged for every loss).

``CycleL1Loss(weight)`` is the cycle-consistency term ``weight * |x - G(F(x))|_1``.
"""

from __future__ import annotations

import torch
from torch import nn

from cryoet_forge.errors import ConfigError


class AdversarialLoss:
    """A convenience base class (defaults for ``penalty``, ``after_critic_step`` and ``gap``); see the
    module docstring for the interface. The contract is ``contracts.AdversarialLoss``: a plugin's
    loss need not derive from this class."""

    needs_interpolates = False

    def critic_loss(self, real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def generator_loss(self, fake_scores: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def penalty(self, scores: torch.Tensor, interpolates: torch.Tensor,
                grad_scale: float = 1.0) -> torch.Tensor:
        return scores.new_zeros(())

    @torch.no_grad()
    def after_critic_step(self, critic: nn.Module) -> None:
        return None

    @staticmethod
    def gap(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
        return real_scores.float().mean() - fake_scores.float().mean()


def gradient_penalty(scores: torch.Tensor, interpolates: torch.Tensor, weight: float,
                     grad_scale: float = 1.0) -> torch.Tensor:
    """weight * mean (||d score / d interpolate||_2 - 1)^2 (Gulrajani et al. 2017).

    ``grad_scale``: a GradScaler's scale, so fp16 gradients do not underflow (AMP recipe).
    """
    (grad,) = torch.autograd.grad(scores.float().sum() * grad_scale, interpolates, create_graph=True)
    grad = grad.float() / grad_scale
    norm = grad.flatten(1).norm(2, dim=1)
    return weight * ((norm - 1.0) ** 2).mean()


class WGANClipLoss(AdversarialLoss):
    """WGAN with critic weight clipping to [-clip, clip] (paper; c = 0.01, use RMSProp)."""

    def __init__(self, clip: float = 0.01):
        if not clip > 0:
            raise ConfigError(f"wgan-clip clip must be > 0, got {clip}")
        self.clip = float(clip)

    def critic_loss(self, real_scores, fake_scores):
        return fake_scores.float().mean() - real_scores.float().mean()

    def generator_loss(self, fake_scores):
        return -fake_scores.float().mean()

    @torch.no_grad()
    def after_critic_step(self, critic: nn.Module) -> None:
        # clips what the optimiser updates; under spectral norm that is the raw weight.
        # One fused call for all tensors: a per-tensor loop costs a kernel launch each on a GPU.
        params: list[torch.Tensor] = list(critic.parameters())
        if params:
            torch._foreach_clamp_min_(params, -self.clip)
            torch._foreach_clamp_max_(params, self.clip)


class WGANGPLoss(WGANClipLoss):
    """WGAN with a gradient penalty (Gulrajani et al. 2017; weight 10, no clipping)."""

    needs_interpolates = True

    def __init__(self, weight: float = 10.0):
        if not weight >= 0:
            raise ConfigError(f"wgan-gp weight must be >= 0, got {weight}")
        self.weight = float(weight)

    def penalty(self, scores, interpolates, grad_scale=1.0):
        return gradient_penalty(scores, interpolates, self.weight, grad_scale)

    @torch.no_grad()
    def after_critic_step(self, critic: nn.Module) -> None:
        return None


class LSGANLoss(AdversarialLoss):
    """Least-squares GAN (Mao et al. 2017): the "without Wasserstein" ablation.

    ``real_label``: the target score of real volumes (and of fakes for the generator); the
    published CryoETGAN code uses 0.8 (one-sided label smoothing). ``gp_weight`` > 0 adds the
    gradient penalty on real/fake interpolates, as that code does (weight 10).
    """

    def __init__(self, real_label: float = 1.0, gp_weight: float = 0.0):
        if not 0 < real_label <= 1:
            raise ConfigError(f"lsgan real_label must be in (0, 1], got {real_label}")
        if not gp_weight >= 0:
            raise ConfigError(f"lsgan gp_weight must be >= 0, got {gp_weight}")
        self.real_label, self.gp_weight = float(real_label), float(gp_weight)
        self.needs_interpolates = self.gp_weight > 0

    def critic_loss(self, real_scores, fake_scores):
        real, fake = real_scores.float(), fake_scores.float()
        return 0.5 * (((real - self.real_label) ** 2).mean() + (fake**2).mean())

    def generator_loss(self, fake_scores):
        return 0.5 * ((fake_scores.float() - self.real_label) ** 2).mean()

    def penalty(self, scores, interpolates, grad_scale=1.0):
        if not self.needs_interpolates:
            return scores.new_zeros(())
        return gradient_penalty(scores, interpolates, self.gp_weight, grad_scale)


class CycleL1Loss:
    """Cycle-consistency loss: weight * mean |x - reconstruction| (lambda = 10 in the paper)."""

    def __init__(self, weight: float = 10.0):
        if not weight >= 0:
            raise ConfigError(f"cycle weight must be >= 0, got {weight}")
        self.weight = float(weight)

    def __call__(self, original: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
        return self.weight * (original.float() - reconstruction.float()).abs().mean()
