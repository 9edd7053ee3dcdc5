"""The package's layers: imports point one way (tools → training → engine; reference alone)
and no module imports itself back through others, lazy imports inside functions included."""
import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "gpurnn"

# A module may import its own layer and those to the right of it in this order; the façade
# (gpurnn/__init__.py, __main__.py, and _moved.py, the old module paths it keeps) sits above
# everything and is not checked.
LAYERS = ("tools", "training", "engine", "reference", "_version")
FACADE = {"gpurnn", "gpurnn.__main__", "gpurnn._moved"}


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: pathlib.Path, modules: set) -> set:
    """The gpurnn modules ``path`` imports anywhere in its body (functions included)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import mod` imports the submodule pkg.mod where there is one
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                       for alias in node.names]
        else:
            continue
        found.update(t for t in targets if t in modules and t != name)
    return found


def import_graph() -> dict:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    return {module_name(p): imports_of(p, modules) for p in paths}


def layer_of(module: str) -> str:
    return module.split(".")[1]


def upward_imports(graph: dict) -> list:
    bad = []
    for module, targets in graph.items():
        if module in FACADE:
            continue
        rank = LAYERS.index(layer_of(module))
        for target in targets:
            if target in FACADE or LAYERS.index(layer_of(target)) < rank:
                bad.append(f"{module} -> {target}")
    return sorted(bad)


def find_cycle(graph: dict):
    """One import cycle as a list of modules, or None."""
    state = {}

    def visit(module, path):
        state[module] = "open"
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                return path[path.index(target):] + [target]
            if target not in state:
                cycle = visit(target, path + [target])
                if cycle:
                    return cycle
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state:
            cycle = visit(module, [module])
            if cycle:
                return cycle
    return None


def test_every_module_sits_in_a_layer():
    for module in import_graph():
        if module not in FACADE:
            assert layer_of(module) in LAYERS, f"{module} is in no layer of {LAYERS}"


def test_imports_point_down_the_layers():
    assert upward_imports(import_graph()) == []


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_checks_catch_planted_faults():
    graph = import_graph()
    planted = {m: set(t) for m, t in graph.items()}
    planted["gpurnn.engine.arrays.backend"].add("gpurnn.engine.models.model")   # model imports backend
    assert find_cycle(planted) is not None
    planted = {m: set(t) for m, t in graph.items()}
    planted["gpurnn.engine.recurrences.cells"].add("gpurnn.training.optim")
    assert upward_imports(planted) == ["gpurnn.engine.recurrences.cells -> gpurnn.training.optim"]
    planted["gpurnn.reference.elman"] = {"gpurnn.engine.arrays.backend"}
    assert "gpurnn.reference.elman -> gpurnn.engine.arrays.backend" in upward_imports(planted)


def test_lazy_and_relative_imports_are_seen(tmp_path):
    # the checker reads imports inside functions and resolves `from ..x import y`
    graph = import_graph()
    assert "gpurnn.engine.arrays.backend" in graph["gpurnn.engine.models.model"]
    assert "gpurnn.training.train" in graph["gpurnn.tools.cli"]   # imported inside a handler


@pytest.mark.parametrize("argv", [["--version"], ["train", "--help"]])
def test_python_dash_m_gpurnn_is_the_command(argv):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "gpurnn", *argv], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert ("gpurnn" in result.stdout) and ("usage" in result.stdout or argv == ["--version"])
