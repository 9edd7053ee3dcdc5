"""CuPy's API contract: every array-module function, ufunc method, array method and keyword
that the device path uses exists in the installed CuPy and is accepted there.

What is used is derived from the code, two ways, so that new code is covered without a list
to keep: (1) every call cpu-strict saw (``strict.api_usage()``: this module runs last, after
the device-parametrised tests, and runs a small workload of its own so it stands alone), and
(2) every ``xp.<name>(...)``, ``get_array_module(...).<name>(...)``, ``cupy.<name>`` and
``cupyx.<name>`` written in gpurnn's source. Each is looked up in CuPy, which imports
without a GPU, and its keywords (and the number of positional arguments where known) are
bound to CuPy's signature: ``inspect.signature`` where Python has one, else the signature
line Cython writes at the top of the docstring. The CuPy versions this was checked against
are pinned in pyproject.toml's ``test`` extra, and the installed one must be in that range.
"""
import ast
import functools
import importlib.metadata
import inspect
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest

import gpurnn
from gpurnn.engine.arrays import strict

ROOT = Path(gpurnn.__file__).parent
PYPROJECT = ROOT.parent / "pyproject.toml"
UFUNC_METHODS = ("reduce", "accumulate", "reduceat", "at", "outer")

try:
    import cupy
    import cupyx
    _CUPY_ERROR = None
except Exception as error:  # noqa: BLE001 - any import failure means: no CuPy to check
    cupy = cupyx = None
    _CUPY_ERROR = error

if cupy is None:
    if os.environ.get("GPURNN_REQUIRE_CUPY"):
        raise RuntimeError(f"GPURNN_REQUIRE_CUPY is set but CuPy does not import "
                           f"({_CUPY_ERROR!r}); install gpurnn[contract]") from _CUPY_ERROR
    pytest.skip(f"CuPy is not importable ({_CUPY_ERROR!r}); install gpurnn[contract]",
                allow_module_level=True)


# --- what the code uses ---------------------------------------------------------------------
def _chain(node):
    """(root, [attr, ...]) of an attribute chain such as xp.add.at, or (None, None)."""
    names = []
    while isinstance(node, ast.Attribute):
        names.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return node.id, names[::-1]
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            and node.func.id == "get_array_module"):
        return "xp", names[::-1]
    return None, None


def source_usage():
    """{(module, kind, dotted name, positional count or None, keywords): "file:line"}."""
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        if "reference" in path.parts:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        calls = {id(node.func): node for node in ast.walk(tree) if isinstance(node, ast.Call)}
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute) or isinstance(getattr(node, "ctx", None),
                                                                   ast.Store):
                continue
            root, names = _chain(node)
            if root not in ("xp", "cupy", "cupyx") or not names:
                continue
            call = calls.get(id(node))
            starred = call is not None and (any(isinstance(a, ast.Starred) for a in call.args)
                                            or any(k.arg is None for k in call.keywords))
            positional = None if call is None or starred else len(call.args)
            keywords = () if call is None else tuple(sorted(k.arg for k in call.keywords
                                                            if k.arg))
            module = "cupyx" if root == "cupyx" else "cupy"
            kind = "call" if call is not None else "name"
            key = (module, kind, ".".join(names), positional, keywords)
            found.setdefault(key, f"{path.relative_to(ROOT.parent)}:{node.lineno}")
    # A chain seen as xp.a.b(...) also contains the bare name xp.a: keep the longest only.
    longest = {(m, n) for (m, kind, n, _, _) in found if kind == "call"}
    return {key: where for key, where in found.items()
            if key[1] == "call" or not any(other.startswith(key[2] + ".")
                                           for m, other in longest if m == key[0])}


def workload():
    """A small run of every model, option and tool on cpu-strict, so that the recorded usage
    does not depend on which other tests ran in this session."""
    from gpurnn import make_model
    from gpurnn.engine.arrays.backend import to_device
    from gpurnn.tools.diagnostics import diagnose
    from gpurnn.training.distributed import FlatGradients
    from gpurnn.training.optim import _OPTIMIZERS, clip_grad_norm, grads_finite, make_optimizer

    rng = np.random.default_rng(0)
    x, mask = rng.integers(0, 6, (3, 5)), np.ones((3, 5))
    mask[2, 3:] = 0
    for cell, layers, embedding, output in (("elman", 1, None, "softmax"),
                                            ("elman", 2, 2, "sigmoid"),
                                            ("gru", 2, None, "softmax"),
                                            ("lstm", 2, 3, "identity")):
        model = make_model(cell, 6, 4, 6, num_layers=layers, embedding_size=embedding,
                           output=output, device="cpu-strict")
        y = x if output == "softmax" else rng.normal(size=(3, 5, 6))
        for truncate in (None, 1):
            result = model.loss_and_grads(x, y, truncate=truncate, mask=mask,
                                          reduction="mean")
        model.loss(x, y, weights=mask, reduction="sum")
        model.forward(rng.normal(size=(3, 5, 6)) if embedding is None else x, return_state=True)
        diagnose(model, x, y, max_lag=3)
        for name in _OPTIMIZERS:
            optimizer = make_optimizer(name)
            for _ in range(2):
                optimizer.step(model.params, result.grads)
            optimizer.load_state_dict(optimizer.state_dict())
            optimizer.step(model.params, result.grads)
        clip_grad_norm(result.grads, 0.1)
        grads_finite(result.grads)
        flat = FlatGradients(model.params, extra=2)
        flat.pack(result.grads)
        flat.set_extra([1.0, 2.0])
        flat.get_extra()
        flat.zero()
    to_device(model.pack_state(result.last_hidden), "cpu")


# --- what CuPy accepts ----------------------------------------------------------------------
def _split_top_level(text):
    parts, depth, quote, current = [], 0, None, ""
    for char in text:
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "([{<":
            depth += 1
        elif char in ")]}>":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(current)
            current = ""
            continue
        current += char
    return parts + [current] if current.strip() else parts


def _signature_from_doc(obj):
    """The signature Cython writes on the docstring's first line, e.g.
    ``_ndarray_base.sum(self, axis=None, dtype=None, out=None, keepdims=False) -> ...``."""
    line = (getattr(obj, "__doc__", None) or "").strip().splitlines()
    match = re.match(r"^[\w.]+\((.*)\)(\s*->.*)?$", line[0].strip()) if line else None
    if match is None:
        return None
    params = []
    for part in _split_top_level(match.group(1).replace("\\*", "*")):
        part = part.strip()
        if part in ("*", "/") or part.startswith("**") or (part.startswith("*")
                                                              and "=" not in part):
            params.append(part.split(":")[0])
        elif part:
            name = part.split("=")[0].split(":")[0].split()[-1]    # "Py_ssize_t axis1"
            params.append(f"{name}=None" if "=" in part else name)
    namespace = {}
    try:
        exec(f"def f({', '.join(params)}): pass", namespace)  # noqa: S102 - our own text
    except SyntaxError:
        return None
    signature = inspect.signature(namespace["f"])
    parameters = list(signature.parameters.values())
    if parameters and parameters[0].name == "self":
        signature = signature.replace(parameters=parameters[1:])
    return signature


def _signature(obj):
    if isinstance(obj, cupy.ufunc):
        return _signature_from_doc(obj)
    if type(obj).__name__ == "_GUFunc":                         # matmul
        return inspect.signature(obj.__call__)
    try:
        return inspect.signature(obj)
    except (TypeError, ValueError):
        return _signature_from_doc(obj)


def _resolve(module, dotted):
    return functools.reduce(getattr, dotted.split("."), module)


def problems_with(uses):
    """For (module, kind, name, positional, keywords) uses: a list of what CuPy lacks or
    refuses, and the count of uses whose signature could be bound."""
    problems, bound = [], 0
    for module_name, kind, name, positional, keywords in uses:
        module = cupyx if module_name == "cupyx" else cupy
        try:
            if kind in ("method", "attribute"):
                obj = getattr(cupy.ndarray, name)
            else:
                obj = _resolve(module, name)
        except AttributeError:
            where = "cupy.ndarray." if kind in ("method", "attribute") else f"{module_name}."
            problems.append(f"{where}{name} does not exist in CuPy {cupy.__version__}")
            continue
        if kind == "ufunc" and "." not in name and not (isinstance(obj, cupy.ufunc)
                                                        or type(obj).__name__ == "_GUFunc"):
            problems.append(f"cupy.{name} is not a ufunc")
            continue
        if kind in ("attribute", "name"):
            continue
        signature = _signature(obj)
        if signature is None:
            continue
        try:
            signature.bind(*[None] * (positional or 0), **dict.fromkeys(keywords))
            bound += 1
        except TypeError as error:
            problems.append(f"{module_name if kind != 'method' else 'cupy.ndarray'}.{name}"
                            f"({positional} positional, keywords {list(keywords)}): {error}")
    return problems, bound


def recorded_uses():
    return {("cupyx" if name.startswith("cupyx.") else "cupy", kind,
             name[len("cupyx."):] if name.startswith("cupyx.") else name, positional, keywords)
            for kind, name, positional, keywords in strict.api_usage()}


def test_every_call_the_device_path_makes_exists_in_cupy_with_its_keywords():
    workload()
    uses = recorded_uses()
    static = source_usage()
    uses |= {(module, "function" if kind == "call" else "name", name, positional, keywords)
             for module, kind, name, positional, keywords in static}
    problems, bound = problems_with(sorted(uses, key=str))
    assert not problems, "\n".join(problems)
    # The check had something to check: the engine's staples were seen and bound.
    names = {use[2] for use in uses}
    assert {"matmul", "take", "tanh", "ascontiguousarray", "sum", "reshape", "zeros_like",
            "scatter_add"} <= names, names
    assert bound >= 0.8 * sum(1 for use in uses if use[1] not in ("attribute", "name"))


@pytest.mark.parametrize("use, words", [
    (("cupy", "function", "busday_count", 2, ()), "does not exist"),          # NumPy-only
    (("cupy", "function", "take", 2, ("mode",)), "mode"),                      # NumPy keyword
    (("cupy", "method", "sum", 0, ("where",)), "where"),
    (("cupy", "ufunc", "tanh", 1, ("where",)), "where"),
    (("cupy", "ufunc", "add.reduce", 1, ("initial",)), "initial"),
    (("cupy", "function", "zeros", 1, ("like",)), "like"),
    (("cupy", "method", "ptp_fake", 0, ()), "does not exist"),
    (("cupyx", "function", "scatter_add", 3, ("mode",)), "mode"),
])
def test_the_check_refuses_what_cupy_lacks(use, words):
    """Planted uses that NumPy accepts and CuPy does not are caught."""
    problems, _ = problems_with([use])
    assert len(problems) == 1 and words in problems[0], problems


def test_the_source_scan_sees_calls_through_xp_and_get_array_module():
    uses = source_usage()
    assert ("cupy", "call", "take", 2, ("axis", "out")) in uses            # xp.take(...)
    assert any(u[2] == "multiply" and u[4] == ("out",) for u in uses)    # get_array_module(..)
    assert any(u[0] == "cupyx" and u[2] == "scatter_add" for u in uses)


def _version(text):
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def test_installed_cupy_is_in_the_pinned_range():
    text = PYPROJECT.read_text(encoding="utf-8")
    match = re.search(r'contract = \[[^\]]*"cupy-cuda12x>=([\d.]+),<([\d.]+)', text)
    assert match, "pyproject.toml's contract extra must pin cupy-cuda12x to a range"
    low, high = _version(match.group(1)), _version(match.group(2))
    installed = _version(cupy.__version__)
    assert low <= installed < high, (f"CuPy {cupy.__version__} is outside the range the "
                                     f"contract was checked against ({match.group(0)})")
    for extra in ("cuda12", "cuda13"):
        assert re.search(rf'{extra} = \["cupy-cuda1\dx>={re.escape(match.group(1))},'
                         rf'<{re.escape(match.group(2))}"\]', text), extra
    assert importlib.metadata.version("cupy-cuda12x") == cupy.__version__
    assert sys.modules["cupy"] is cupy
