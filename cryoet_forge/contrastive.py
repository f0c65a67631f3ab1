"""Generator regularisers: PatchNCE, the contrastive loss of CUT (Park et al. 2020), and a
radial power-spectrum term.

A *generator regulariser* is a term added to the generator loss that needs more than a pair of
volumes: the generators themselves, or parameters of its own. It is registered like any loss
(``forge_register_losses``) and switched on by name in ``[loss.regularizers]``::

    [loss.regularizers.patchnce]
    weight = 1.0          # every key is an option of the registered factory
    layers = 4

The trainer calls ``setup(g_ds, g_sd, example)`` once, before the optimisers are built; a
regulariser may create parameters there (they are trained with the generators, by the
generator optimiser, and saved in every checkpoint under ``reg.<name>.``). Each generator update
then calls it with a ``RegularizerInputs`` and adds the returned tensor to the generator loss.

**PatchNCE** (Park, Efros, Zhang and Zhu, "Contrastive Learning for Unpaired Image-to-Image
Translation", ECCV 2020; the reference code is taesungp/contrastive-unpaired-translation): the
D -> S generator's own encoder embeds its input d and its output G(d); a patch of G(d) must be
closer to the patch of d at the same place than to the other patches of d (InfoNCE, temperature
0.07, 256 patches per layer, a two-layer MLP head of 256 features per layer, keys detached as in
the reference code). It keeps *what is where* (the particle, its class) while the adversarial
term changes *how it looks*. Differences from CUT: the encoder layers are found by tracing the
generator (its convolutions before the first one whose output grows: the decoder); of those,
the first at each resolution and the middle one of the deepest (CUT's choice for its ResNet
generator, without the input pixels); the volume is 3D, so a patch is
a voxel of a 3D feature map. ``directions = "both"`` also applies it to the S -> D generator.

**radial-spectrum**: the log of the batch's mean power per Fourier shell of G(d) must match the
real batch's (``RadialSpectrumLoss``), what weighted back-projection, the CTF and the noise shape
most and what a refining generator is most often seen to get wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from cryoet_forge import registry
from cryoet_forge.contracts import check_role
from cryoet_forge.errors import ConfigError


@dataclass
class RegularizerInputs:
    """What a regulariser sees at one generator update (one pair of batches)."""

    d: torch.Tensor
    s: torch.Tensor
    fake_s: torch.Tensor
    fake_d: torch.Tensor
    g_ds: nn.Module
    g_sd: nn.Module


class GeneratorRegularizer(nn.Module):
    """A convenience base class: ``setup`` once (may create parameters), ``forward(inputs)`` ->
    weighted term. The contract is ``contracts.GeneratorRegularizer`` (a ``torch.nn.Module`` with
    ``setup`` and ``forward``); a plugin's regulariser need not derive from this class."""

    def setup(self, g_ds: nn.Module, g_sd: nn.Module, example: torch.Tensor) -> None:
        return None

    def forward(self, inputs: RegularizerInputs) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError


class _Stop(Exception):
    """Raised by a forward hook to end an encoder pass once its last layer has run."""


def trace_convolutions(net: nn.Module, example: torch.Tensor) -> list[tuple[str, nn.Module, tuple[int, ...]]]:
    """(name, module, output shape) of every Conv3d of ``net`` in the order a forward runs them."""
    order: list[tuple[str, nn.Module, tuple[int, ...]]] = []
    names = {id(m): n for n, m in net.named_modules()}
    handles = [m.register_forward_hook(lambda mod, _i, out: order.append((names[id(mod)], mod, tuple(out.shape))))
               for m in net.modules() if isinstance(m, nn.Conv3d)]
    was_training = net.training
    try:
        net.eval()
        with torch.no_grad():
            net(example)
    finally:
        net.train(was_training)
        for h in handles:
            h.remove()
    return order


def encoder_layers(net: nn.Module, example: torch.Tensor, count: int,
                   names: list[str] | None = None) -> list[tuple[nn.Module, int]]:
    """``count`` encoder convolutions of ``net`` (module, channels), evenly spread, in run order;
    or the named ones (``names``, in the order given)."""
    traced = trace_convolutions(net, example)
    if not traced:
        raise ConfigError(f"patchnce: generator {type(net).__name__} has no Conv3d layer to take features from")
    if names:
        by_name = {n: (m, shape) for n, m, shape in traced}
        missing = [n for n in names if n not in by_name]
        if missing:
            raise ConfigError(f"patchnce layer_names {missing}: not Conv3d layers of {type(net).__name__} "
                              f"(its Conv3d layers: {', '.join(n for n, _, _ in traced)})")
        run_order = [n for n, _, _ in traced]
        chosen = sorted(names, key=run_order.index)
        return [(by_name[n][0], by_name[n][1][1]) for n in chosen]
    encoder = []
    for i, (_, module, shape) in enumerate(traced):
        if i and shape[-1] > traced[i - 1][2][-1]:
            break  # the first layer whose output grows: the decoder starts
        encoder.append((module, shape))
    # as CUT: the first convolution at each resolution (stem, downsamplings), then the middle
    # one of the deepest resolution (a residual block); more layers are filled in evenly
    firsts = [i for i, (_, shape) in enumerate(encoder) if i == 0 or shape[-1] != encoder[i - 1][1][-1]]
    deepest = [i for i, (_, shape) in enumerate(encoder) if shape[-1] == encoder[-1][1][-1]]
    candidates = list(dict.fromkeys([*firsts, deepest[len(deepest) // 2]]))
    if count < len(candidates):
        candidates = [*candidates[:count - 1], candidates[-1]]
    rest = [i for i in range(len(encoder)) if i not in candidates]
    while len(candidates) < count and rest:
        candidates.append(rest.pop(len(rest) // 2))
    return [(encoder[i][0], encoder[i][1][1]) for i in sorted(candidates)]


def encode(net: nn.Module, x: torch.Tensor, modules: list[nn.Module]) -> list[torch.Tensor]:
    """The outputs of ``modules`` (run order) for input ``x``; the pass stops after the last."""
    found: dict[int, torch.Tensor] = {}
    last = modules[-1]

    def hook(mod, _inputs, out):
        found[id(mod)] = out
        if mod is last:
            raise _Stop

    handles = [m.register_forward_hook(hook) for m in modules]
    try:
        net(x)
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    return [found[id(m)] for m in modules]


def patch_nce(q: torch.Tensor, k: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE over patches (CUT's PatchNCELoss): q, k (B, P, C) L2-normalised; the positive of
    q[b, i] is k[b, i], its negatives the other patches k[b, j] of the same volume."""
    k = k.detach()
    positive = (q * k).sum(-1, keepdim=True)  # (B, P, 1)
    negative = torch.bmm(q, k.transpose(1, 2))  # (B, P, P)
    eye = torch.eye(q.shape[1], dtype=torch.bool, device=q.device)
    negative = negative.masked_fill(eye, -10.0)  # a patch is not its own negative
    logits = torch.cat([positive, negative], dim=-1) / temperature
    target = torch.zeros(logits.shape[0] * logits.shape[1], dtype=torch.long, device=q.device)
    return nn.functional.cross_entropy(logits.flatten(0, 1).float(), target)


class PatchNCELoss(GeneratorRegularizer):
    """weight * mean over layers of PatchNCE between G(x) and x in G's own encoder (see module doc).

    Options: ``weight`` (1.0, CUT's lambda_NCE), ``layers`` (4 encoder convolutions; CUT takes 5
    including the input pixels), ``layer_names`` (explicit Conv3d names instead), ``patches``
    (256 per layer and volume, fewer where a feature map has fewer voxels), ``features`` (256,
    the MLP head's width), ``temperature`` (0.07), ``directions`` ("ds": the D -> S generator,
    as CUT is one-sided; "both" adds S -> D).
    """

    def __init__(self, weight: float = 1.0, layers: int = 4, layer_names: list[str] | None = None,
                 patches: int = 256, features: int = 256, temperature: float = 0.07,
                 directions: str = "ds"):
        super().__init__()
        if not weight >= 0:
            raise ConfigError(f"patchnce weight must be >= 0, got {weight}")
        if int(layers) < 1 or int(patches) < 2 or int(features) < 1:
            raise ConfigError(f"patchnce needs layers >= 1, patches >= 2, features >= 1; got layers={layers}, "
                              f"patches={patches}, features={features}")
        if not temperature > 0:
            raise ConfigError(f"patchnce temperature must be > 0, got {temperature}")
        if directions not in ("ds", "both"):
            raise ConfigError(f"patchnce directions must be \"ds\" or \"both\", got {directions!r}")
        self.weight, self.n_layers, self.layer_names = float(weight), int(layers), list(layer_names or [])
        self.patches, self.features, self.temperature = int(patches), int(features), float(temperature)
        self.directions = directions
        self.heads = nn.ModuleDict()
        self._layers: dict[str, list[nn.Module]] = {}

    def _head(self, channels: int) -> nn.Module:
        return nn.Sequential(nn.Linear(channels, self.features), nn.ReLU(), nn.Linear(self.features, self.features))

    def setup(self, g_ds: nn.Module, g_sd: nn.Module, example: torch.Tensor) -> None:
        nets = {"ds": g_ds} if self.directions == "ds" else {"ds": g_ds, "sd": g_sd}
        for key, net in nets.items():
            layers = encoder_layers(net, example, self.n_layers, self.layer_names or None)
            self._layers[key] = [m for m, _ in layers]
            self.heads[key] = nn.ModuleList(self._head(c) for _, c in layers).to(example.device)

    def _direction(self, net: nn.Module, key: str, source: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        modules, heads = self._layers[key], cast(nn.ModuleList, self.heads[key])
        with torch.no_grad():  # keys are detached (reference code), so no graph for them
            keys = encode(net, source, modules)
        queries = encode(net, output, modules)
        total = output.new_zeros((), dtype=torch.float32)
        for head, fq, fk in zip(heads, queries, keys):
            b, c = fq.shape[:2]
            n = fq[0, 0].numel()
            p = min(self.patches, n)
            ids = torch.randperm(n, device=fq.device)[:p]  # the same places in q and k
            q = fq.reshape(b, c, n)[:, :, ids].transpose(1, 2).float()
            k = fk.reshape(b, c, n)[:, :, ids].transpose(1, 2).float()
            q = nn.functional.normalize(head(q), dim=-1)
            with torch.no_grad():
                k = nn.functional.normalize(head(k), dim=-1)
            total = total + patch_nce(q, k, self.temperature)
        return total / len(modules)

    def forward(self, inputs: RegularizerInputs) -> torch.Tensor:
        if not self._layers:
            raise RuntimeError("PatchNCELoss.setup must run before the loss is used")
        loss = self._direction(inputs.g_ds, "ds", inputs.d, inputs.fake_s)
        if self.directions == "both":
            loss = loss + self._direction(inputs.g_sd, "sd", inputs.s, inputs.fake_d)
        return self.weight * loss


def build_regularizers(table: dict[str, Any]) -> dict[str, Any]:
    """The regularisers of ``[loss.regularizers]`` (name -> options), created from the registry:
    each a ``torch.nn.Module`` satisfying ``contracts.GeneratorRegularizer``, whatever its class (an
    adversarial loss there is a one-line ConfigError naming the key, ``contracts.check_role``)."""
    out: dict[str, Any] = {}
    for name, options in table.items():
        if not isinstance(options, dict):
            raise ConfigError(f"loss.regularizers.{name} must be a table of options, got {options!r}")
        reg = registry.create("loss", name, **options)
        check_role("loss", "regularizer", reg, name)
        out[name] = reg
    return out


def _shell_index(size: int, device: torch.device) -> tuple[torch.Tensor, int]:
    """The integer radius of each rfft voxel of a (size,)^3 volume and the number of shells up to Nyquist."""
    k = torch.fft.fftfreq(size, device=device) * size
    kx = torch.fft.rfftfreq(size, device=device) * size
    radius = torch.sqrt(k.reshape(-1, 1, 1) ** 2 + k.reshape(1, -1, 1) ** 2 + kx.reshape(1, 1, -1) ** 2)
    return torch.round(radius).long().clamp_max(size // 2 + 1), size // 2 + 1


def radial_log_power(volumes: torch.Tensor) -> torch.Tensor:
    """(B, 1, S, S, S) -> (S//2 + 1,): the log of the batch's mean power in each integer Fourier
    shell from DC to Nyquist (each volume's mean removed first, so shell 0 carries no offset)."""
    x = volumes.float()
    x = x - x.mean(dim=(-3, -2, -1), keepdim=True)
    power = torch.fft.rfftn(x, dim=(-3, -2, -1)).abs() ** 2
    index, n = _shell_index(x.shape[-1], x.device)
    flat = index.flatten()
    totals = torch.zeros(n + 1, device=x.device).index_add(0, flat, power.reshape(-1, flat.numel()).mean(0))
    counts = torch.bincount(flat, minlength=n + 1).to(totals.dtype)
    return torch.log(totals[1:n] / counts[1:n] + 1e-8)


class RadialSpectrumLoss(GeneratorRegularizer):
    """weight * mean over Fourier shells of (log power of G(d) - log power of the real batch s)^2.

    A frequency-domain term: the D -> S generator's output must have the real batch's radially
    averaged power spectrum (shells 1 to Nyquist of the batch's mean power; DC left out), the
    second-order statistic that reconstruction (ramp filter, CTF, missing wedge) and noise shape
    most. ``directions = "both"`` also matches G_SD(s) to the batch d. The real batch is a target
    only (no gradient reaches it)."""

    def __init__(self, weight: float = 1.0, directions: str = "ds"):
        super().__init__()
        if not weight >= 0:
            raise ConfigError(f"radial-spectrum weight must be >= 0, got {weight}")
        if directions not in ("ds", "both"):
            raise ConfigError(f"radial-spectrum directions must be \"ds\" or \"both\", got {directions!r}")
        self.weight, self.directions = float(weight), directions

    def forward(self, inputs: RegularizerInputs) -> torch.Tensor:
        pairs = [(inputs.fake_s, inputs.s)] + ([(inputs.fake_d, inputs.d)] if self.directions == "both" else [])
        total = sum(((radial_log_power(fake) - radial_log_power(real.detach())) ** 2).mean() for fake, real in pairs)
        return self.weight * cast(torch.Tensor, total)
