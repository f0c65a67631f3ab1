"""The type stub `_metrics_rs.pyi` against the built extension, and the one GEMM error bound."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import numpy as np
import pytest

from cryoet_forge import _metrics_rs

STUB = Path(__file__).resolve().parents[1] / "cryoet_forge" / "_metrics_rs.pyi"


def _stub_members() -> tuple[dict[str, list[tuple[str, bool]]], set[str]]:
    tree = ast.parse(STUB.read_text())
    functions, names = {}, set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            args = node.args
            defaults = [False] * (len(args.args) - len(args.defaults)) + [True] * len(args.defaults)
            functions[node.name] = [(a.arg, d) for a, d in zip(args.args, defaults)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return functions, names


def test_stub_lists_exactly_the_extension_and_its_signatures():
    functions, names = _stub_members()
    public = {n for n in dir(_metrics_rs) if not n.startswith("_")} - {"__all__"}
    built_functions = {n for n in public if callable(getattr(_metrics_rs, n))}
    assert set(functions) == built_functions
    assert names - {"__version__"} == public - built_functions
    for name, params in functions.items():
        signature = inspect.signature(getattr(_metrics_rs, name))
        built = [(p.name, p.default is not inspect.Parameter.empty) for p in signature.parameters.values()]
        assert built == params, name


def _stub_results() -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    """The stub's TypedDicts (name -> {key: annotation}) and each function's return annotation."""
    tree = ast.parse(STUB.read_text())
    typed, returns = {}, {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and any(ast.unparse(b) == "TypedDict" for b in node.bases):
            typed[node.name] = {item.target.id: ast.unparse(item.annotation) for item in node.body
                                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)}
        elif isinstance(node, ast.FunctionDef) and node.returns is not None:
            returns[node.name] = ast.unparse(node.returns)
    return typed, returns


def _fits(value, annotation: str) -> bool:
    if annotation in ("int", "float"):
        return type(value) is {"int": int, "float": float}[annotation]
    dtype = re.fullmatch(r"npt\.NDArray\[np\.(\w+)\]", annotation)
    assert dtype is not None, f"the test reads int, float and npt.NDArray[np.X] only, not {annotation}"
    return isinstance(value, np.ndarray) and value.dtype == np.dtype(getattr(np, dtype.group(1)))


def _results_of_the_extension() -> dict[str, dict]:
    """One call of each function that returns several values, on tiny inputs."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 4)).astype(np.float32)
    y = rng.normal(size=(10, 4)).astype(np.float32)
    counts = _metrics_rs.prdc_counts(x, y, 3)
    lists = _metrics_rs.radii_candidates(x, 3)
    finish = _metrics_rs.radii_finish(x, 3, None, lists["vals"][None], lists["idx"][None], lists["len"][None],
                                      lists["floor"][None], lists["max_norm"], lists["cap"], 0)
    balls = _metrics_rs.ball_counts(x, y, counts["real_radii"], counts["fake_radii"])
    return {"prdc_counts": counts, "radii_candidates": lists, "radii_finish": finish, "ball_counts": balls}


def test_every_dict_the_extension_returns_has_its_typed_dict_in_the_stub():
    typed, returns = _stub_results()
    assert not [name for name, r in returns.items() if r.startswith("dict")], "an untyped dict result"
    results = _results_of_the_extension()
    assert set(results) == {name for name, r in returns.items() if r in typed}
    for name, result in results.items():
        fields = typed[returns[name]]
        assert set(result) == set(fields), name
        wrong = {key: (type(value).__name__, getattr(value, "dtype", None), fields[key])
                 for key, value in result.items() if not _fits(value, fields[key])}
        assert not wrong, name


def test_python_backends_use_the_rust_bound():
    from cryoet_forge.metrics.knn import gemm_margin_factor

    for d in (1, 64, 2048, 100_000):
        assert gemm_margin_factor(d) == _metrics_rs.gemm_margin_factor(d, _metrics_rs.FLOAT32_EXTRA_ROUNDINGS)
        assert gemm_margin_factor(d) > _metrics_rs.gemm_margin_factor(d, _metrics_rs.CRATE_EXTRA_ROUNDINGS)
    assert gemm_margin_factor(1 << 22) == float("inf")


def test_the_float32_bound_holds_for_torch_gemm_distances():
    torch = pytest.importorskip("torch")
    from cryoet_forge.metrics.knn import gemm_margin_factor

    rng = np.random.default_rng(0)
    d = 2048
    x = (rng.normal(size=(64, d)) * 3 + 5).astype(np.float32)  # an offset makes cancellation hard
    y = (x[:32] + rng.normal(size=(32, d)).astype(np.float32) * 1e-3).astype(np.float32)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    nx, ny = (tx * tx).sum(1), (ty * ty).sum(1)
    approx = (nx[:, None] + ny[None, :] - 2.0 * tx @ ty.T).double().numpy()
    exact = ((x[:, None, :].astype(np.float64) - y[None].astype(np.float64)) ** 2).sum(-1)
    norms = (x.astype(np.float64) ** 2).sum(1)[:, None] + (y.astype(np.float64) ** 2).sum(1)[None, :]
    assert (np.abs(approx - exact) <= gemm_margin_factor(d) * norms).all()
