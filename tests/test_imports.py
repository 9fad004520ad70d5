"""No import cycles among agentrl's own modules.

Every module under ``agentrl/``, ``envs/``, ``policies/`` and ``algorithms/`` (installed as
``agentrl``, ``agentrl.envs``, ``agentrl.policies``, ``agentrl.algorithms``) is read with
``ast``, without importing anything, and the graph of imports between them is checked for
cycles. What counts as an edge:

- every ``import x`` / ``from x import y`` statement, at module level **and inside functions**.
  A function-level import back into a module that imports this one is how cycles usually hide
  (it defers the failure; the two modules still cannot be understood or moved apart);
- ``from pkg import name`` is an edge to ``pkg.name`` when that is one of our modules, else to
  ``pkg`` (its ``__init__``); relative imports are resolved against the package.

What does not count:

- imports under ``if TYPE_CHECKING:`` (never executed; annotations only);
- a submodule's implicit import of its parent package (Python runs ``pkg/__init__.py`` first,
  and a package's ``__init__`` re-exporting its submodules is not a cycle of design);
- loading by name at run time: ``importlib.import_module(...)`` and ``"pkg.module:Class"``
  entry-point strings. That is how registries find plugins (gymnasium's ``entry_point``, our
  env, algorithm, policy-backend and env-pool lookups): the registry stays a leaf that plugins
  import to register themselves, and a plugin is loaded only when its name is asked for.

A cycle is printed as ``a -> b -> c -> a`` with the file and line of each import.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Iterator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: source folder -> the package it is installed as (pyproject's package-dir mapping)
PACKAGES = {"agentrl": "agentrl", "envs": "agentrl.envs", "policies": "agentrl.policies",
            "algorithms": "agentrl.algorithms"}


def _modules() -> dict[str, str]:
    """Module name -> file path, for every .py file of the four source folders."""
    out = {}
    for folder, pkg in PACKAGES.items():
        base = os.path.join(ROOT, folder)
        for dirpath, dirnames, files in os.walk(base):
            dirnames[:] = [d for d in dirnames if d != "__pycache__"]
            rel = os.path.relpath(dirpath, base)
            parts = [pkg] + ([] if rel == "." else rel.split(os.sep))
            for f in files:
                if f.endswith(".py"):
                    name = ".".join(parts if f == "__init__.py" else parts + [f[:-3]])
                    out[name] = os.path.join(dirpath, f)
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST, type_checking: bool = False
                  ) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement, at any depth, except (unless ``type_checking``) those under
    ``if TYPE_CHECKING:``."""
    todo = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        if not type_checking and isinstance(node, ast.If) and _is_type_checking(node.test):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))


def import_graph(type_checking: bool = False, names: bool = False
                 ) -> dict[str, dict[str, int]]:
    """module -> {imported module of ours: line of the first such import}. ``type_checking``:
    count imports under ``if TYPE_CHECKING:`` too. ``names``: key ``from m import x`` as
    ``m:x`` (to see which names cross a boundary)."""
    mods = _modules()
    graph: dict[str, dict[str, int]] = {m: {} for m in mods}
    for mod, path in mods.items():
        is_pkg = path.endswith("__init__.py")
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        for node in _import_nodes(tree, type_checking):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = node.module or ""
                if node.level:  # relative: from the package (a module's is its parent)
                    pkg = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    pkg = pkg[:len(pkg) - (node.level - 1)]
                    base = ".".join(pkg + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else
                           f"{base}:{a.name}" if names else base for a in node.names]
            for t in targets:
                if ":" in t:
                    if t.partition(":")[0] in mods and t.partition(":")[0] != mod:
                        graph[mod].setdefault(t, node.lineno)
                    continue
                # `import a.b.c` runs a.b.c; the nearest module of ours is the edge.
                while t and t not in mods:
                    t = t.rpartition(".")[0]
                if t and t != mod:
                    graph[mod].setdefault(t, node.lineno)
    return graph


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle (as a closed path a, b, ..., a) per strongly connected component of 2+ modules
    (Tarjan), in a stable order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    comps: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, {})):
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
                comps.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    cycles = []
    for comp in sorted(comps):
        members = set(comp)
        # the shortest way back to the first module, staying inside the component
        start = comp[0]
        prev: dict[str, str] = {}
        frontier = [start]
        found = None
        while frontier and found is None:
            nxt = []
            for v in frontier:
                for w in sorted(graph[v]):
                    if w == start:
                        found = v
                        break
                    if w in members and w not in prev:
                        prev[w] = v
                        nxt.append(w)
                if found:
                    break
            frontier = nxt
        path = [start]
        v = found
        while v is not None and v != start:
            path.insert(1, v)
            v = prev.get(v)
        cycles.append(path + [start])
    return cycles


def _describe(cycle: list[str], graph: dict[str, dict[str, int]]) -> str:
    mods = _modules()
    steps = [f"  {a} -> {b}  ({os.path.relpath(mods[a], ROOT)}:{graph[a][b]})"
             for a, b in zip(cycle, cycle[1:])]
    return " -> ".join(cycle) + "\n" + "\n".join(steps)


def test_no_import_cycles() -> None:
    graph = import_graph()
    # The graph is real: known imports are seen, at module level and inside functions.
    assert "agentrl.config" in graph["agentrl.trainer"]
    assert "agentrl.policies.base" in graph["agentrl.policies.hf"]
    cycles = find_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(_describe(c, graph) for c in cycles)


def test_the_core_imports_no_env() -> None:
    """Env knowledge stays in envs/: no core module imports an env module, apart from the
    modules that define the env contracts (``agentrl.envs.base``, ``agentrl.envs.multiagent.base``,
    which the conformance checks in ``agentrl.testing`` test against). The registry loads the
    built-in envs by name; shared helpers such as the cache directory live in the core."""
    graph = import_graph()
    plugins = ("agentrl.envs", "agentrl.algorithms", "agentrl.policies")
    core = [m for m in graph if not m.startswith(plugins)]
    assert "agentrl.models" in core and "agentrl.cache" in graph["agentrl.models"]
    bad = {m: sorted(t for t in graph[m] if t.startswith("agentrl.envs") and
                     not t.endswith(".base")) for m in core}
    assert not {m: t for m, t in bad.items() if t}, bad


def test_the_cycle_finder_finds_cycles() -> None:
    g = {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3, "d": 4}, "d": {}, "e": {"f": 1},
         "f": {"e": 1}}
    assert find_cycles(g) == [["a", "b", "c", "a"], ["e", "f", "e"]]
    assert find_cycles({"a": {"b": 1}, "b": {}}) == []


# ------------------------------------------------------------------------------- layering

#: The packages of agentrl from the bottom up: a module may import its own package and the
#: packages below it, never one above (``if TYPE_CHECKING:`` imports included). The order is
#: the one-iteration data flow; why each sits where it does:
LAYERS: list[tuple[str, ...]] = [
    # leaves: the contracts (types, registry, fields) and helpers envs and algorithms share
    ("agentrl.types", "agentrl.registry", "agentrl.fields", "agentrl.collectives",
     "agentrl.progress", "agentrl.cache"),
    ("agentrl.envs",),  # envs know only the leaves (register_env, the cache)
    ("agentrl.models",),  # loading, LoRA, memory estimate: torch and transformers only
    ("agentrl.policies",),  # backends: generate with a model (see RunConfig for the config)
    ("agentrl.config",),  # the run's schema: gathers every backend's section by name
    ("agentrl.envpool",),  # env slots, built from the env section
    ("agentrl.rollout",),  # policy x envpool -> trajectories (lineups get a player loader)
    ("agentrl.learn",),  # trajectories -> batch -> scores, update (the algorithm as Objective)
    ("agentrl.algorithms",),  # credit and loss over learn's Batch and ModelOutputs
    ("agentrl.run",),  # what a run writes: checkpoints, metrics, alarms, report, viewer
    ("agentrl.testing",),  # public checkers (the distributed harness runs a learner)
    ("agentrl.assemble",),  # the composition root: builds every part above from a config
    ("agentrl.evaluate",),  # agentrl eval: builds policies through assemble
    # roots: the recipe, the command, the front door
    ("agentrl.trainer", "agentrl.cli", "agentrl.serve", "agentrl.__main__", "agentrl"),
]


def layer_of(module: str) -> int:
    """The index in `LAYERS` of ``module`` (the longest matching prefix)."""
    best, depth = -1, -1
    for i, layer in enumerate(LAYERS):
        for p in layer:
            if (module == p or module.startswith(p + ".")) and len(p) > depth:
                best, depth = i, len(p)
    if best < 0:
        raise AssertionError(f"{module} is in no layer of tests/test_imports.py: add it")
    return best


def package_of(module: str) -> str:
    """The package a module belongs to for the private-name rule: its layer entry."""
    return max((p for layer in LAYERS for p in layer
                if module == p or module.startswith(p + ".")), key=len)


def upward_imports(graph: dict[str, dict[str, int]]) -> list[str]:
    """``a -> b (file:line)`` for every import of a higher layer."""
    mods = _modules()
    return [f"{a} -> {b}  ({os.path.relpath(mods[a], ROOT)}:{line})"
            for a, targets in sorted(graph.items()) for b, line in sorted(targets.items())
            if layer_of(b.partition(":")[0]) > layer_of(a)]


def private_imports(graph: dict[str, dict[str, int]]) -> list[str]:
    """``a -> b:_x`` for every private name imported from another package (and every private
    module, ``b._x``, imported from outside its package)."""
    mods = _modules()
    out = []
    for a, targets in sorted(graph.items()):
        for t, line in sorted(targets.items()):
            mod, _, name = t.partition(":")
            private = name.startswith("_") and not name.startswith("__") or any(
                part.startswith("_") and not part.startswith("__") for part in mod.split("."))
            if private and package_of(mod) != package_of(a):
                out.append(f"{a} -> {t}  ({os.path.relpath(mods[a], ROOT)}:{line})")
    return out


def test_every_module_has_a_layer() -> None:
    for m in _modules():
        layer_of(m)
    assert layer_of("agentrl.learn.batch") > layer_of("agentrl.rollout.context")
    assert layer_of("agentrl") == len(LAYERS) - 1


def test_packages_import_only_downward() -> None:
    """Including ``if TYPE_CHECKING:`` imports: an annotation is a dependency too."""
    bad = upward_imports(import_graph(type_checking=True))
    assert not bad, "imports of a higher layer (see LAYERS):\n" + "\n".join(bad)


def test_no_private_name_crosses_a_package() -> None:
    graph = import_graph(type_checking=True, names=True)
    assert "agentrl.envpool:rss_bytes" in graph["agentrl.run.alarms"]  # names are seen
    bad = private_imports(graph)
    assert not bad, "private names imported across packages:\n" + "\n".join(bad)


def test_the_layer_checks_catch_violations() -> None:
    """Planted edges: an upward import, a TYPE_CHECKING one, and a private name."""
    assert upward_imports({"agentrl.types": {"agentrl.trainer": 1}}) != []
    assert upward_imports({"agentrl.rollout.engine": {"agentrl.learn.batch": 3}}) != []
    assert upward_imports({"agentrl.learn.batch": {"agentrl.rollout.context": 3}}) == []
    assert private_imports({"agentrl.run.alarms": {"agentrl.envpool:_rss": 2}}) != []
    assert private_imports({"agentrl.envpool.ray": {"agentrl.envpool:_call": 2}}) == []
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import agentrl.trainer\n")
    assert sorted(n.lineno for n in _import_nodes(tree, type_checking=True)) == [1, 3]
    assert [n.lineno for n in _import_nodes(tree)] == [1]


def test_the_top_of_agentrl_stays_small() -> None:
    """The stages live in packages; the top keeps the roots, the leaves and the composition
    root (at most 12 modules)."""
    top = sorted(f for f in os.listdir(os.path.join(ROOT, "agentrl")) if f.endswith(".py"))
    assert len(top) <= 12, top
    assert {"trainer.py", "cli.py", "types.py", "registry.py", "assemble.py"} <= set(top)
