"""Contract tests over every registered component of every kind (third-party ones included).

A component is built with its defaults, or with the options its factory's ``contract_example(folder)``
returns (for factories that need input, such as dataset folders), and must then satisfy its kind's
protocol (``cryoet_forge.contracts``) and behave as that protocol says. Generators and critics are
exercised further (shapes, ranges, determinism) in ``test_contract_models.py``.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

from cryoet_forge import contracts, registry
from cryoet_forge.errors import ConfigError

#: every registered component of every kind declared in ``contracts.KINDS``
EVERY = [(kind.name, name) for kind in contracts.KINDS for name in registry.names(kind.name)]


def build(kind: str, name: str, folder):
    """The component with its defaults, or with its factory's contract example options."""
    component = registry.get(kind, name)
    example = getattr(component.factory, "contract_example", None)
    if kind in contracts.FACTORY_OPTIONS:
        return registry.create(kind, name, **{o: 1 for o in contracts.FACTORY_OPTIONS[kind]})
    if example is None:
        try:
            return registry.create(kind, name)
        except ConfigError as exc:
            pytest.fail(f"{kind} {name!r} ({component.origin}) needs options ({exc}); give its factory a "
                        "contract_example(folder) -> options for the contract tests")
    try:
        options = example(folder)
    except ImportError as exc:
        pytest.skip(f"{kind} {name!r} needs an optional dependency that is not installed: {exc}")
    return registry.create(kind, name, **options)


def test_every_kind_has_registered_components():
    kinds = {kind for kind, _ in EVERY}
    assert kinds == set(registry.KIND_HOOKS)
    assert set(contracts.PROTOCOLS) == set(registry.KIND_HOOKS)


def test_kinds_are_declared_once_and_the_registry_and_hooks_derive_from_them():
    import pluggy

    from cryoet_forge import hookspecs

    assert list(registry.KIND_HOOKS.items()) == [(kind.name, kind.hook) for kind in contracts.KINDS]
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for kind in contracts.KINDS:
        assert contracts.PROTOCOLS[kind.name] == kind.protocols and kind.protocols
        assert pm.hook.__dict__[kind.hook].spec.argnames == ("register",)
        function = getattr(hookspecs, kind.hook)
        assert function.__name__ == kind.hook and function.__module__ == "cryoet_forge.hookspecs"
        assert inspect.getdoc(function) == inspect.cleandoc(kind.doc)
        assert f"contracts.{kind.protocols[0].__name__}" in kind.doc
    assert [k.name for k in contracts.KINDS if k.module] == ["generator", "critic"]
    assert contracts.FACTORY_OPTIONS == {"generator": ("in_channels", "out_channels"), "critic": ("in_channels",)}


@pytest.mark.parametrize(("kind", "name"), EVERY)
def test_factory_and_instance_satisfy_the_protocol(kind, name, tmp_path):
    component = registry.get(kind, name)
    contracts.check_factory(kind, component.factory)
    obj = build(kind, name, tmp_path)
    contracts.check_instance(kind, obj)
    assert isinstance(obj, contracts.PROTOCOLS[kind])
    assert component.description, f"{kind} {name!r} has no description for forge list"


ADVERSARIAL = [n for k, n in EVERY if k == "loss"
               and isinstance(registry.create("loss", n), contracts.AdversarialLoss)]
REGULARIZERS = [n for k, n in EVERY if k == "loss" and n not in ADVERSARIAL]


@pytest.mark.parametrize("name", [n for k, n in EVERY if k == "loss"])
def test_a_loss_in_the_other_roles_place_is_a_one_line_config_error(name):
    """A loss plays the role whose protocol it satisfies (``contracts.check_role``); named under the
    other role's config key it is one line naming that key, what it expects and where it belongs."""
    loss = registry.create("loss", name)
    roles = contracts.KIND["loss"].roles
    plays = [role for role in roles if isinstance(loss, role.protocol)]
    assert len(plays) == 1
    contracts.check_role("loss", plays[0].name, loss, name)
    for role in roles:
        if role is plays[0]:
            continue
        with pytest.raises(ConfigError) as info:
            contracts.check_role("loss", role.name, loss, name)
        message = str(info.value)
        assert message.startswith(f"{role.config_key.format(name=name)}: loss {name!r} is not {role.noun} "
                                  f"(contracts.{role.protocol.__name__}: it lacks ")
        assert message.endswith(f"; {plays[0].noun} goes in {plays[0].config_key.format(name=name)}")
        assert "\n" not in message
    assert (name in ADVERSARIAL) == (plays[0].name == "adversarial")


@pytest.mark.parametrize("name", ADVERSARIAL)
def test_adversarial_loss_values(name):
    loss = registry.create("loss", name)
    torch.manual_seed(0)
    real, fake = torch.randn(2, 1, 3, 3, 3), torch.randn(2, 1, 3, 3, 3)
    for value in (loss.critic_loss(real, fake), loss.generator_loss(fake)):
        assert value.shape == () and torch.isfinite(value)
    assert loss.gap(real, fake).item() == pytest.approx((real.mean() - fake.mean()).item(), abs=1e-6)
    interpolates = torch.randn(2, 1, 4, 4, 4, requires_grad=True)
    scores = (interpolates**2).sum(dim=(2, 3, 4), keepdim=True)
    penalty = loss.penalty(scores, interpolates)
    assert penalty.shape == () and torch.isfinite(penalty) and penalty.item() >= 0
    assert (penalty.item() > 0) == bool(loss.needs_interpolates)
    critic = torch.nn.Conv3d(1, 1, 3)
    loss.after_critic_step(critic)  # a constraint, or nothing; must leave finite weights
    assert all(torch.isfinite(p).all() for p in critic.parameters())


@pytest.mark.parametrize("name", REGULARIZERS)
def test_generator_regularizer_gives_a_finite_term_with_gradients(name):
    from cryoet_forge.contrastive import RegularizerInputs

    torch.manual_seed(0)
    reg = registry.create("loss", name)
    g_ds = registry.create("generator", "cryoetgan", in_channels=1, out_channels=1, base=2, n_residual=1)
    g_sd = registry.create("generator", "cryoetgan", in_channels=1, out_channels=1, base=2, n_residual=1,
                           noise=False)
    d, s = torch.randn(2, 1, 16, 16, 16), torch.randn(2, 1, 16, 16, 16)
    reg.setup(g_ds, g_sd, d[:1])
    fake_s, fake_d = g_ds(d), g_sd(s)
    term = reg(RegularizerInputs(d=d, s=s, fake_s=fake_s, fake_d=fake_d, g_ds=g_ds, g_sd=g_sd))
    assert term.shape == () and torch.isfinite(term)
    term.backward()
    assert any(p.grad is not None for p in g_ds.parameters())


def _maps(n: int = 2, box: int = 16) -> torch.Tensor:
    grid = torch.linspace(-1, 1, box)
    z, y, x = torch.meshgrid(grid, grid, grid, indexing="ij")
    ball = ((x**2 + y**2 + z**2) < 0.3).float()
    return torch.stack([ball * (i + 1) for i in range(n)])


@pytest.mark.parametrize("name", registry.names("simulator"))
def test_simulator_shape_records_and_determinism(name, tmp_path):
    sim = build("simulator", name, tmp_path)
    maps = _maps()
    outs = []
    for _ in range(2):
        volumes, records = sim.simulate(maps, 10.0, torch.Generator().manual_seed(7))
        assert volumes.shape == maps.shape and torch.isfinite(volumes).all()
        assert len(records) == 2 and all(isinstance(r, dict) and r for r in records)
        outs.append(volumes)
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("name", registry.names("dataset"))
def test_dataset_items_hold_a_float_volume(name, tmp_path):
    ds = build("dataset", name, tmp_path)
    assert len(ds) >= 1
    item = ds[0]
    volume = item["volume"]
    assert isinstance(volume, torch.Tensor) and volume.dtype == torch.float32
    assert volume.ndim == 4 and volume.shape[0] == 1 and len(set(volume.shape[1:])) == 1
    assert torch.isfinite(volume).all()


@pytest.mark.parametrize("name", registry.names("feature-extractor"))
def test_feature_extractor_gives_one_finite_row_per_volume(name, tmp_path):
    extractor = build("feature-extractor", name, tmp_path)
    box = int(getattr(extractor, "box", 16))
    volumes = np.random.default_rng(0).normal(size=(3, box, box, box)).astype(np.float32)
    features = np.asarray(extractor.extract(volumes))
    assert features.ndim == 2 and features.shape[0] == 3 and np.isfinite(features).all()
    if hasattr(extractor, "probabilities"):
        p = np.asarray(extractor.probabilities(volumes))
        assert p.shape[0] == 3 and np.allclose(p.sum(axis=1), 1, atol=1e-4)


@pytest.mark.parametrize("name", registry.names("knn-backend"))
def test_knn_backend_radii_and_counts(name, tmp_path):
    backend = build("knn-backend", name, tmp_path)
    rng = np.random.default_rng(0)
    real = rng.normal(size=(60, 8)).astype(np.float32)
    fake = (rng.normal(size=(50, 8)) + 0.3).astype(np.float32)
    radii = np.asarray(backend.kth_neighbour_distances(real, 3))
    brute = np.sqrt(((real[:, None, :].astype(np.float64) - real[None]) ** 2).sum(-1))
    np.fill_diagonal(brute, np.inf)
    expected = np.sort(brute, axis=1)[:, 2]
    assert radii.shape == (60,)
    if backend.exact:
        np.testing.assert_allclose(radii, expected, rtol=1e-5)
        reference = registry.create("knn-backend", "exact").prdc_counts(real, fake, 3)
        counts = backend.prdc_counts(real, fake, 3)
        assert counts.metrics() == reference.metrics()
    else:  # an approximate backend's radii are never shorter than the true ones
        assert (radii >= expected * (1 - 1e-5)).all()


def test_contract_examples_take_only_a_folder():
    for kind, name in EVERY:
        example = getattr(registry.get(kind, name).factory, "contract_example", None)
        if example is not None:
            assert list(inspect.signature(example).parameters) == ["folder"], (kind, name)


def test_a_generator_regulariser_must_be_a_torch_module():
    class Plain:
        def setup(self, g_ds, g_sd, example):
            return None

        def forward(self, inputs):
            return torch.zeros(())

    with pytest.raises(ConfigError, match=r"^loss\.regularizers\.plain: loss 'plain' is not a generator regulariser "
                                          r"\(contracts\.GeneratorRegularizer: it is a Plain, not a "
                                          r"torch\.nn\.Module\)$"):
        contracts.check_role("loss", "regularizer", Plain(), "plain")
