"""One-way layering (issue 19): data flows io -> faces -> degradations -> models -> diffusion ->
pipelines -> cli. Every ``flipnet`` import of every module counts, including the lazy ones inside
functions and ``__import__("flipnet...")`` calls: a lazy import still ties the two modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# rank of each layer: a module may import its own layer and lower ones only
BASE, FACES, DEGRADATIONS, MODELS, DIFFUSION, PIPELINES, TOP = range(7)
LAYERS = {
    # io plus the base utilities every layer may use
    "flipnet.io": BASE, "flipnet.errors": BASE, "flipnet.config": BASE, "flipnet.device": BASE,
    "flipnet.weights": BASE, "flipnet.splits": BASE, "flipnet.viz": BASE, "flipnet.gate": BASE,
    "flipnet.faces": FACES,
    "flipnet.degradations": DEGRADATIONS,
    "flipnet.models": MODELS,
    "flipnet.metrics": MODELS,  # measurement networks and statistics; they import no models
    "flipnet.diffusion": DIFFUSION,
    "flipnet.pipelines": PIPELINES,
    "flipnet.training": PIPELINES,  # beside pipelines: neither imports the other
    "flipnet.cli": TOP, "flipnet.cli_options": TOP, "flipnet.serve": TOP, "flipnet.api": TOP,
    "flipnet": TOP,  # the package itself: its lazy ``Restorer``/``Degrader`` come from api
}
SIBLINGS_APART = {("flipnet.training", "flipnet.pipelines"),
                  ("flipnet.pipelines", "flipnet.training")}


def module_name(path: Path) -> str:
    """``src/flipnet/models/prior.py`` -> ``flipnet.models.prior`` (a package -> its name)."""
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    """Every module under src/flipnet by dotted name."""
    return {module_name(p): p for p in sorted((SRC / "flipnet").rglob("*.py"))}


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The flipnet modules ``name`` imports anywhere in its source (``from pkg import mod``
    counts as ``pkg.mod`` when that is a module)."""
    is_pkg = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package (the module's own, for a package)
                package = name.split(".") if is_pkg else name.split(".")[:-1]
                package = package[:len(package) - node.level + 1]
                base = ".".join(package + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                       for a in node.names]
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id == "__import__" and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            targets = [node.args[0].value]
        for target in targets:
            if target == "flipnet" or target.startswith("flipnet."):
                while target not in modules and "." in target:  # an attribute of a module
                    target = target.rsplit(".", 1)[0]
                if target != name:
                    found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    """module -> the flipnet modules it imports."""
    modules = all_modules()
    assert "flipnet.io" in modules, f"no flipnet sources under {SRC}"
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def layer_of(module: str) -> str:
    """The longest ``LAYERS`` key that is ``module`` or a package above it (``flipnet`` itself
    only for the package, so a new top-level module must be placed); KeyError if none."""
    if module in LAYERS:
        return module
    parts = module.split(".")
    for i in range(len(parts) - 1, 1, -1):
        if ".".join(parts[:i]) in LAYERS:
            return ".".join(parts[:i])
    raise KeyError(module)


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Import cycles as closed paths ``a -> b -> ... -> a``: in each strongly connected
    component of more than one module (Tarjan), the shortest cycle through each member."""
    index, low, stack, on_stack, sccs = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                scc.append(w)
                if w == v:
                    break
            if len(scc) > 1:
                sccs.append(set(scc))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    cycles, seen = [], set()
    for scc in sccs:  # the shortest cycle through each member, by breadth-first search
        for start in sorted(scc):
            paths, queue, cycle = {start: [start]}, [start], None
            while queue and cycle is None:
                v = queue.pop(0)
                for w in sorted(graph[v] & scc):
                    if w == start:
                        cycle = paths[v] + [start]
                        break
                    if w not in paths:
                        paths[w] = paths[v] + [w]
                        queue.append(w)
            key = frozenset(zip(cycle, cycle[1:]))
            if key not in seen:
                seen.add(key)
                cycles.append(cycle)
    return sorted(cycles)


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """``a imports b`` lines where b's layer is above a's, or a and b are kept apart."""
    out = []
    for a, targets in sorted(graph.items()):
        la = layer_of(a)
        for b in sorted(targets):
            lb = layer_of(b)
            if LAYERS[lb] > LAYERS[la] or (la, lb) in SIBLINGS_APART:
                out.append(f"{a} ({la}) imports {b} ({lb})")
    return out


def test_every_module_has_a_layer():
    unplaced = []
    for m in all_modules():
        try:
            layer_of(m)
        except KeyError:
            unplaced.append(m)
    assert not unplaced, f"place these modules in tests/test_layering.py LAYERS: {unplaced}"
    with pytest.raises(KeyError):
        layer_of("flipnet.new_module")
    assert layer_of("flipnet.models.prior") == "flipnet.models"


def test_no_import_cycles():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_lower_layers_never_import_higher_ones():
    bad = layer_violations(import_graph())
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


@pytest.mark.parametrize("graph, want", [
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c", "a"]]),
    ({"a": {"b"}, "b": set()}, []),
])
def test_find_cycles(graph, want):
    assert find_cycles(graph) == want


def test_lazy_and_relative_imports_count(tmp_path):
    pkg = tmp_path / "flipnet" / "models"
    pkg.mkdir(parents=True)
    (pkg / "x.py").write_text("def f():\n    from flipnet.pipelines.methods import make_method\n"
                              "    from . import y\n    __import__('flipnet.cli')\n")
    modules = {"flipnet.pipelines.methods": None, "flipnet.models.y": None, "flipnet.cli": None}
    got = imported_modules("flipnet.models.x", pkg / "x.py", modules)
    assert got == {"flipnet.pipelines.methods", "flipnet.models.y", "flipnet.cli"}
