"""The architecture rules, checked on the source: imports go one way (runtime <- tpo_core <- export) with no cycle
(imports inside functions count), runtime/ imports no training-side package, and tpo verify certifies the runtime's
own Pipeline rather than a loop of its own."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("runtime", "tpo_core", "export")
FORBIDDEN_IN_RUNTIME = ("tpo_core", "export", "transformers", "peft", "accelerate")


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for p in (ROOT / pkg).rglob("*.py"):
            mods[".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")] = p
    return mods


def _imports(module: str, path: Path) -> set[str]:
    """Every module name imported anywhere in the file (absolute; relative imports resolved)."""
    pkg = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> project modules it imports."""
    mods = _modules()
    graph = {}
    for m, p in mods.items():
        edges = set()
        for name in _imports(m, p):
            while name and name not in mods:
                name = name.rpartition(".")[0]
            if name and name != m:
                edges.add(name)
        graph[m] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_checker_finds_a_cycle_and_a_forbidden_import():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle():
    found = cycles(import_graph())
    assert not found, f"import cycles (make the imports go one way): {found}"


def test_layers_go_one_way():
    graph = import_graph()
    up = {("runtime", "tpo_core"), ("runtime", "export"), ("tpo_core", "export")}
    bad = sorted((a, b) for a, deps in graph.items() for b in deps if (a.split(".")[0], b.split(".")[0]) in up)
    assert not bad, f"imports against the layering runtime <- tpo_core <- export: {bad}"


@pytest.mark.parametrize("path", sorted((ROOT / "runtime").rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_runtime_imports_no_training_code(path):
    module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    bad = sorted(n for n in _imports(module, path) if n.split(".")[0] in FORBIDDEN_IN_RUNTIME)
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}; runtime/ reads only the manifest"


def test_verify_has_no_decode_loop_and_drives_the_pipeline():
    graph = import_graph()
    verify = [m for m in graph if m.startswith("export.verify")]
    assert verify == ["export.verify"], f"one verify module, got {verify}"
    assert "runtime.pipeline" in _imports("export.verify", ROOT / "export" / "verify.py")
    tree = ast.parse((ROOT / "export" / "verify.py").read_text())
    calls = {n.func.attr for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)}
    assert "ask" in calls and "generate" in calls  # Pipeline.ask vs TPOModel.generate
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    assert not ({"choose", "decode"} & calls) and not ({"Router", "Sampler"} & names), \
        "export/verify.py must not decode by itself"
