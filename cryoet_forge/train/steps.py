"""The two updates of a training step, as functions of what they use.

``critic_step`` is one critic update on a pair of batches and their translations;
``generator_step`` the generator update on the generators' outputs for the last pair, with the
critics frozen. Each takes its networks, optimiser, gradient scaler, losses and autocast context
as arguments and returns the detached scalars the loop logs (``loss/...``, ``critic_gap/...``);
neither draws from a random generator except through the ``rand`` it is given. ``Trainer.train_step``
(``train/loop.py``) draws the batches and the noise and calls them in order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Iterable, Mapping, Sequence

import torch
import torch.distributed as dist
from torch import nn

from cryoet_forge.contracts import AdversarialLoss, noise_shape, takes_noise
from cryoet_forge.contrastive import RegularizerInputs
from cryoet_forge.losses import CycleL1Loss

Autocast = Callable[[], ContextManager[Any]]


# -- learning rate, noise ----------------------------------------------------------------------

def lr_factor(o, step: int) -> float:
    """The learning-rate multiplier at ``step`` (0-based): 1 until ``optim.decay_start``, then
    linearly down to 0 over ``optim.decay_steps`` (CycleGAN's schedule); 1 throughout when
    ``decay_steps`` is 0."""
    if o.decay_steps <= 0 or step < o.decay_start:
        return 1.0
    return max(0.0, 1.0 - (step - o.decay_start) / o.decay_steps)


def set_learning_rates(optimizers: Sequence[torch.optim.Optimizer], base_lrs: Sequence[float],
                       factor: float) -> None:
    for opt, base in zip(optimizers, base_lrs):
        for group in opt.param_groups:
            group["lr"] = base * factor


class GlobalNoise:
    """The run's own noise generator (seeded ``seed``, checkpointed with the run). Each draw is made
    for the whole global batch and sliced to this rank's part, so the values do not depend on the
    number of processes."""

    def __init__(self, seed: int, device: torch.device, rank: int = 0, world_size: int = 1):
        self.device, self.rank, self.world_size = device, rank, world_size
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def randn(self, local_shape: tuple[int, ...], sample=torch.randn) -> torch.Tensor:
        b = local_shape[0]
        full = sample((b * self.world_size, *local_shape[1:]), generator=self.generator, device=self.device)
        return full[self.rank * b:(self.rank + 1) * b]

    def rand(self, local_shape: tuple[int, ...]) -> torch.Tensor:
        return self.randn(local_shape, sample=torch.rand)

    def for_generator(self, generator: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
        """The noise input of ``generator`` for input ``x`` (None for a generator without one)."""
        if not takes_noise(generator):
            return None
        return self.randn(noise_shape(generator, tuple(x.shape)))


@dataclass
class GeneratorNoise:
    """The noise of one generator update: z for D -> S, z for the S -> D -> S cycle, the cycle
    noise (None when ``loss.cycle_noise_std`` is 0) and z for the identity pass G_DS(s)."""

    z1: torch.Tensor | None
    z2: torch.Tensor | None
    cycle_noise: torch.Tensor | None
    z_id: torch.Tensor | None
    identity: bool  # whether the identity pass runs (``loss.identity_weight`` > 0)

    def forward(self, generators: Callable[..., Any], d: torch.Tensor, s: torch.Tensor) -> tuple:
        """The generators' training forward (``CyclePair``) on a pair with this noise."""
        return generators(d, s, self.z1, self.z2, cycle_noise=self.cycle_noise, identity=self.identity,
                          z_id=self.z_id)


def dropout_rng_state(device: torch.device) -> tuple:
    """The global RNG states that dropout draws from (CPU, and the CUDA device in use)."""
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def set_dropout_rng_state(state: tuple, device: torch.device) -> None:
    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state(cuda, device)


# -- the critic update -------------------------------------------------------------------------

def critic_step(critics: Mapping[str, Callable[[Sequence[torch.Tensor]], Sequence[torch.Tensor]]],
                critic_modules: nn.ModuleDict | Mapping[str, nn.Module], optimizer: torch.optim.Optimizer,
                scaler: torch.amp.GradScaler, adversarial: AdversarialLoss,
                batches: Mapping[str, tuple[torch.Tensor, torch.Tensor]], autocast: Autocast,
                rand: Callable[[tuple[int, ...]], torch.Tensor]) -> dict[str, torch.Tensor]:
    """One critic update. ``batches``: domain -> (real, fake) (the fakes detached); ``critics``:
    domain -> a pass scoring a list of batches in one forward (``CriticPass``, maybe in DDP);
    ``critic_modules``: domain -> the critic itself (weight clipping); ``rand``: uniform noise of a
    shape (the interpolation weights of a gradient penalty). Returns the summed critic loss, its
    penalty part and each domain's critic gap, detached."""
    parts = {domain: [real, fake] for domain, (real, fake) in batches.items()}
    if adversarial.needs_interpolates:
        for scored in parts.values():
            real, fake = scored
            eps = rand((real.shape[0], 1, 1, 1, 1))
            scored.append((eps * real + (1 - eps) * fake).requires_grad_(True))
    optimizer.zero_grad(set_to_none=True)
    total: torch.Tensor | None = None
    penalty: torch.Tensor | None = None
    stats: dict[str, torch.Tensor] = {}
    # one critic at a time (forward + backward): the critics' activations dominate the
    # memory, so this halves the peak; their parameters are disjoint, the gradients equal
    for domain, scored in parts.items():
        with autocast():
            scores = critics[domain](scored)
            loss = adversarial.critic_loss(scores[0], scores[1])
            pen = loss.new_zeros(())
            if adversarial.needs_interpolates:
                # the penalty's inner gradient is taken unscaled: at the GradScaler's
                # starting scale (65536) it overflows fp16 and the penalty turns NaN;
                # the outer loss below is still scaled for the parameter gradients
                pen = adversarial.penalty(scores[2], scored[2])
            loss = loss + pen
        scaler.scale(loss).backward()
        total = loss.detach() if total is None else total + loss.detach()
        penalty = pen.detach() if penalty is None else penalty + pen.detach()
        stats[f"critic_gap/{domain}"] = adversarial.gap(scores[0], scores[1]).detach()
    scaler.step(optimizer)
    scaler.update()
    for critic in critic_modules.values():
        adversarial.after_critic_step(critic)
    assert total is not None and penalty is not None  # every domain ran
    return {"loss/critic": total.float(), "loss/penalty": penalty.float(), **stats}


# -- the generator update ----------------------------------------------------------------------

@dataclass
class GeneratorLosses:
    """The terms of the generator loss besides the adversarial one."""

    cycle: CycleL1Loss
    identity: CycleL1Loss | None  # None: no identity term
    semantic: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None  # (d, G_DS(d)) -> loss
    regularizers: nn.ModuleDict | Mapping[str, Callable[[RegularizerInputs], torch.Tensor]]


def generator_step(outputs: Sequence[torch.Tensor], d: torch.Tensor, s: torch.Tensor,
                   critics: Mapping[str, Callable[[torch.Tensor], torch.Tensor]],
                   critic_params: Iterable[torch.nn.Parameter], generators: tuple[nn.Module, nn.Module],
                   optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                   adversarial: AdversarialLoss, losses: GeneratorLosses, autocast: Autocast,
                   sync_grads: Callable[[], None] | None = None) -> dict[str, torch.Tensor]:
    """One generator update on ``outputs`` = (G_DS(d), G_SD(s), cycled d, cycled s[, G_DS(s),
    G_SD(d)]), the generators' training forward on the pair (d, s). ``critics``: domain -> critic
    (not in DDP), frozen here; ``generators``: (G_DS, G_SD), what the regularisers look into;
    ``sync_grads``: called between backward and the optimiser step (the regularisers' own
    gradients under DDP). Returns each loss term, detached."""
    frozen = list(critic_params)
    for p in frozen:
        p.requires_grad_(False)
    try:
        fake_s, fake_d, cyc_d, cyc_s = outputs[:4]
        terms: dict[str, torch.Tensor] = {}
        with autocast():
            adv = (adversarial.generator_loss(critics["subtomograms"](fake_s))
                   + adversarial.generator_loss(critics["density"](fake_d)))
            cycle = losses.cycle(d, cyc_d) + losses.cycle(s, cyc_s)
            loss = adv + cycle
            terms["loss/generator"], terms["loss/cycle"] = adv, cycle
            if losses.identity is not None:  # the cycle's weighted L1, input against its identity pass
                idt_s, idt_d = outputs[4:]
                terms["loss/identity"] = losses.identity(s, idt_s) + losses.identity(d, idt_d)
                loss = loss + terms["loss/identity"]
            if losses.semantic is not None:
                terms["loss/semantic"] = losses.semantic(d, fake_s)
                loss = loss + terms["loss/semantic"]
            if len(losses.regularizers):
                inputs = RegularizerInputs(d, s, fake_s, fake_d, *generators)
                for name, reg in losses.regularizers.items():
                    terms[f"loss/{name}"] = reg(inputs)
                    loss = loss + terms[f"loss/{name}"]
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if sync_grads is not None:
            sync_grads()
        scaler.step(optimizer)
        scaler.update()
    finally:
        for p in frozen:
            p.requires_grad_(True)
    return {k: v.detach().float() for k, v in terms.items()}


def average_gradients(params: Iterable[torch.nn.Parameter], world_size: int) -> None:
    """Average the gradients of parameters outside DDP across the ranks (a missing one counts as 0)."""
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)
        p.grad /= world_size
