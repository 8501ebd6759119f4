"""The layers of DESIGN.md, checked on the source: who may import whom inside ``nbdeploy/``.

Every module under ``nbdeploy/`` is parsed with :mod:`ast` (nothing is imported) and every
``import`` statement is collected: at module level, inside functions and methods, and under
``if TYPE_CHECKING:``. An import resolves to a module of the package the way Python finds it:
``from nbdeploy.x import y`` is ``nbdeploy.x.y`` when that is a module, else ``nbdeploy.x``;
relative imports resolve against the importing module's package. Importing a submodule is an
edge to that submodule only, not to its parent packages (whose ``__init__`` Python runs too,
but every module has that edge, so it would make everything one cycle). Dynamic imports
(``importlib.import_module(name)``) are not seen.

``TYPE_CHECKING`` imports count for the layer rules (an adapter that annotates with a core
internal depends on it all the same) and are tagged ``[TYPE_CHECKING]`` in the messages; they
do not count for cycles, since they never run. Function-level imports count for both and are
tagged ``[in a function]``: a deferred import hides a cycle at import time, it does not remove it.

The layers (data flows down, imports point down only):

- adapters: ``nbdeploy/jupyter/**``, ``nbdeploy/cli.py``, ``nbdeploy/quickstart.py`` (driven
  by the CLI). They reach the core only through :data:`ADAPTER_MAY_IMPORT`.
- the facade package ``nbdeploy/__init__.py``: lazy re-exports and ``load_ipython_extension``;
  it belongs to no layer and may import anything (it is in the cycle check).
- core: every other module, ``nbdeploy/serve/`` included. No adapter, no Jupyter package
  (:data:`JUPYTER_PACKAGES`), and not the facade (:data:`FACADE`): the facade sits on top of
  the core, so a core module calling it goes up a layer.
- server: ``nbdeploy/serve/`` imports nothing from nbdeploy outside itself.
"""

from __future__ import annotations

import ast
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "nbdeploy"

# --------------------------------------------------------------------------- the layer map

ADAPTERS: tuple[str, ...] = ("nbdeploy.jupyter", "nbdeploy.cli", "nbdeploy.quickstart")
"""Adapter modules, each with its submodules."""

DEMO_PAGE = "nbdeploy._demo_template"
"""Copied verbatim into every demo notebook: its function-level imports (ipywidgets, and
``nbdeploy`` to re-find a moved endpoint) run in the demo's Voila kernel, never in the core's
process, so they are left out of every rule; its module-level imports are checked as core."""

FACADE_PACKAGE = "nbdeploy"
"""``nbdeploy/__init__.py``: the lazy public re-export; exempt from the layer rules."""

SERVER = "nbdeploy.serve"
"""The inference server that runs inside the image: self-contained."""

ADAPTER_MAY_IMPORT: frozenset[str] = frozenset(
    {
        "nbdeploy",  # the lazy facade (nbdeploy/__init__.py): the same functions as nbdeploy.api
        "nbdeploy.api",  # the facade: every public function
        "nbdeploy.vocabulary",  # choices, the name rule, records that cross layers
        "nbdeploy._errors",  # the error types
        "nbdeploy._format",  # how numbers and errors print
        "nbdeploy._types",  # public records: Signature, TensorSpec, Parity, Quantization
    }
)
"""The only core modules an adapter may import (exactly these modules, not their children)."""

PUBLIC_RECORDS: dict[str, frozenset[str]] = {
    "nbdeploy.artifact": frozenset({"ModelArtifact"}),
    "nbdeploy.bench": frozenset({"BenchmarkReport"}),
    "nbdeploy.endpoint": frozenset({"Endpoint"}),
}
"""Modules an adapter may take only their public record types from (``from X import Name``).
Importing them through the ``nbdeploy`` package instead would loop back into the adapters the
package's ``load_ipython_extension`` and ``DeployPanel`` re-export."""

FACADE: frozenset[str] = frozenset({"nbdeploy.api", "nbdeploy"})
"""What no core module may import: ``nbdeploy.api`` and the package facade that re-exports it
(``import nbdeploy; nbdeploy.get(...)`` is the same call through the lazy ``__getattr__``)."""

JUPYTER_PACKAGES: frozenset[str] = frozenset(
    {
        "IPython",
        "ipykernel",
        "ipywidgets",
        "ipycanvas",
        "traitlets",
        "tornado",
        "voila",
        "notebook",
        "nbclient",
    }
)
"""Top-level packages no core module may import, besides every ``jupyter*`` package.
``nbformat`` (the .ipynb file format, which the demo writes) is not among them."""


# --------------------------------------------------------------------------- the collector


@dataclass(frozen=True)
class Import:
    source: str
    """The importing module, dotted (``nbdeploy.jupyter.server`` for its ``__init__.py``)."""
    target: str
    """The module imported: resolved inside the package, else as written (``IPython.display``)."""
    path: Path
    line: int
    type_checking: bool
    in_function: bool
    names: tuple[str, ...] = ()
    """What a ``from X import a, b`` took from ``X`` (empty for ``import X``)."""

    def where(self, root: Path) -> str:
        tags = "".join(
            f" [{tag}]"
            for tag, on in (
                ("TYPE_CHECKING", self.type_checking),
                ("in a function", self.in_function),
            )
            if on
        )
        return f"{self.path.relative_to(root.parent)}:{self.line}: {self.source} imports {self.target}{tags}"


def module_names(package_dir: Path) -> dict[str, Path]:
    """Every module of the package: dotted name -> file (a package is its ``__init__.py``)."""
    modules = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk(
    node: ast.AST, type_checking: bool = False, in_function: bool = False
) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool, bool]]:
    """Every import statement under ``node`` with its context (TYPE_CHECKING, in a function)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child, type_checking, in_function
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for stmt in child.body:
                yield from _walk_one(stmt, True, in_function)
            for stmt in child.orelse:
                yield from _walk_one(stmt, type_checking, in_function)
        else:
            function = isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            yield from _walk(child, type_checking, in_function or function)


def _walk_one(
    stmt: ast.stmt, type_checking: bool, in_function: bool
) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool, bool]]:
    wrapper = ast.Module(body=[stmt], type_ignores=[])
    yield from _walk(wrapper, type_checking, in_function)


def collect_imports(package_dir: Path) -> tuple[dict[str, Path], list[Import]]:
    """All modules of the package at ``package_dir`` and every import statement in them."""
    modules = module_names(package_dir)
    found: list[Import] = []
    for source, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        package = source if path.name == "__init__.py" else source.rpartition(".")[0]
        for node, type_checking, in_function in _walk(tree):
            targets: list[str] = []
            taken: dict[str, list[str]] = {}
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    base_parts = package.split(".")
                    base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                    base = ".".join(base_parts + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                for alias in node.names:
                    child = f"{base}.{alias.name}"
                    targets.append(child if child in modules else base)
                    if child not in modules:
                        taken.setdefault(base, []).append(alias.name)
            for target in dict.fromkeys(targets):
                names = tuple(taken.get(target, ()))
                found.append(
                    Import(source, target, path, node.lineno, type_checking, in_function, names)
                )
    return modules, found


# --------------------------------------------------------------------------- the rules


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def is_adapter(module: str) -> bool:
    return any(_within(module, adapter) for adapter in ADAPTERS)


def is_core(module: str) -> bool:
    return module != FACADE_PACKAGE and not is_adapter(module)


def _ours(target: str) -> bool:
    return _within(target, FACADE_PACKAGE)


def server_violations(imports: Iterable[Import]) -> list[Import]:
    """a. ``nbdeploy/serve/`` imports nothing from nbdeploy outside itself."""
    return [
        i
        for i in imports
        if _within(i.source, SERVER) and _ours(i.target) and not _within(i.target, SERVER)
    ]


def core_violations(imports: Iterable[Import]) -> list[Import]:
    """b. Core modules import no adapter and no Jupyter package."""
    bad = []
    for i in imports:
        if not is_core(i.source):
            continue
        top = i.target.partition(".")[0]
        if (_ours(i.target) and is_adapter(i.target)) or (
            not _ours(i.target) and (top in JUPYTER_PACKAGES or top.startswith("jupyter"))
        ):
            bad.append(i)
    return bad


def adapter_violations(imports: Iterable[Import]) -> list[Import]:
    """c. Adapters reach the core only through :data:`ADAPTER_MAY_IMPORT`."""
    return [
        i
        for i in imports
        if is_adapter(i.source)
        and _ours(i.target)
        and not is_adapter(i.target)
        and i.target not in ADAPTER_MAY_IMPORT
        and not (i.names and set(i.names) <= PUBLIC_RECORDS.get(i.target, frozenset()))
    ]


def facade_violations(imports: Iterable[Import]) -> list[Import]:
    """d. No core module imports the facade."""
    return [i for i in imports if is_core(i.source) and i.target in FACADE]


def find_cycles(modules: dict[str, Path], imports: Iterable[Import]) -> list[list[Import]]:
    """e. Import cycles among the package's modules (TYPE_CHECKING imports left out).

    Every import inside a strongly connected component lies on some cycle; the shortest cycle
    through each such import is a candidate, and candidates are kept shortest first as long as
    they pass through an import no kept cycle passes through. So each tangled import shows up
    in at least one cycle, and two modules importing each other read as ``a -> b -> a``.
    A cycle is a list of imports (edges) that starts at its smallest module name.
    """
    edges: dict[str, dict[str, Import]] = {name: {} for name in modules}
    for i in imports:
        if not i.type_checking and i.target in modules and i.target != i.source:
            edges[i.source].setdefault(i.target, i)

    # Tarjan's strongly connected components, iteratively.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[set[str]] = []
    counter = 0
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        components.append(component)

    # The shortest cycle through each edge of a component, shortest first; keep those that
    # pass through an edge no kept cycle passes through yet.
    candidates: dict[tuple[str, ...], list[str]] = {}
    for component in components:
        for source in component:
            for target in (t for t in edges[source] if t in component):
                nodes = [source, *_shortest_path(edges, component, target, source)]
                ring = nodes[:-1]
                turn = ring.index(min(ring))
                key = tuple(ring[turn:] + ring[:turn])
                candidates.setdefault(key, [*key, key[0]])
    cycles: list[list[Import]] = []
    covered: set[tuple[str, str]] = set()
    for nodes in sorted(candidates.values(), key=lambda nodes: (len(nodes), nodes)):
        pairs = list(zip(nodes, nodes[1:], strict=False))
        if not covered.issuperset(pairs):
            covered.update(pairs)
            cycles.append([edges[a][b] for a, b in pairs])
    return cycles


def _shortest_path(
    edges: dict[str, dict[str, Import]], within: set[str], start: str, goal: str
) -> list[str]:
    """Nodes from ``start`` to ``goal`` (both included) by breadth-first search inside ``within``."""
    previous: dict[str, str | None] = {start: None}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        if node == goal:
            break
        for child in sorted(edges[node]):
            if child in within and child not in previous:
                previous[child] = node
                queue.append(child)
    path: list[str] = []
    node: str | None = goal
    while node is not None:
        path.append(node)
        node = previous[node]
    return path[::-1]


def describe_cycle(cycle: list[Import], root: Path) -> str:
    chain = " -> ".join([cycle[0].source, *(i.target for i in cycle)])
    return chain + "".join(f"\n      {i.where(root)}" for i in cycle)


def _report(title: str, found: list[Import], root: Path) -> str:
    return f"{title} ({len(found)}):\n" + "\n".join(f"  {i.where(root)}" for i in found)


# --------------------------------------------------------------------------- the package


def _package() -> tuple[dict[str, Path], list[Import]]:
    modules, imports = collect_imports(PACKAGE_DIR)
    return modules, [i for i in imports if not (i.source == DEMO_PAGE and i.in_function)]


def test_server_imports_nothing_else_from_nbdeploy() -> None:
    found = server_violations(_package()[1])
    assert not found, _report(
        "nbdeploy/serve/ imports nbdeploy outside nbdeploy.serve", found, PACKAGE_DIR
    )


def test_core_imports_no_adapter_and_no_jupyter() -> None:
    found = core_violations(_package()[1])
    assert not found, _report(
        "core modules import an adapter or a Jupyter package", found, PACKAGE_DIR
    )


def test_adapters_reach_the_core_only_through_the_facade_and_records() -> None:
    found = adapter_violations(_package()[1])
    allowed = ", ".join(sorted(ADAPTER_MAY_IMPORT))
    assert not found, _report(
        f"adapters import core modules other than {allowed}", found, PACKAGE_DIR
    )


def test_core_does_not_call_the_facade() -> None:
    found = facade_violations(_package()[1])
    assert not found, _report(
        "core modules import the facade (nbdeploy.api / nbdeploy)", found, PACKAGE_DIR
    )


def test_no_import_cycles() -> None:
    cycles = find_cycles(*_package())
    assert not cycles, f"import cycles in nbdeploy/ ({len(cycles)}):\n" + "\n".join(
        f"  {describe_cycle(cycle, PACKAGE_DIR)}" for cycle in cycles
    )


# --------------------------------------------------------------------------- the detector


def test_the_detector_finds_a_known_cycle_and_known_violations(tmp_path: Path) -> None:
    """A miniature nbdeploy with one planted fault per rule: each rule must report exactly it."""
    files = {
        "__init__.py": (
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n"
            "    from nbdeploy.jupyter.magics import Magic\n"  # the facade: exempt, and never runs
        ),
        "_errors.py": "",
        "api.py": "from nbdeploy import deployment\n",
        "deployment.py": (
            "from typing import TYPE_CHECKING\n"
            "from .endpoint import Endpoint\n"
            "if TYPE_CHECKING:\n"
            "    from nbdeploy.api import deploy\n"  # never runs: no cycle through api
            "def stop():\n"
            "    import IPython.display\n"  # b: a Jupyter package, in a function
        ),
        "endpoint.py": "def stop():\n    from . import deployment\n",  # e: endpoint <-> deployment
        "demo.py": "import nbdeploy\n",  # d: the package facade
        "serve/__init__.py": "",
        "serve/app.py": "from . import model\nfrom ..endpoint import Endpoint\n",  # a
        "serve/model.py": "",
        "jupyter/__init__.py": "from nbdeploy._errors import Error\n",
        "jupyter/magics.py": (
            "from nbdeploy import api\n"
            "from nbdeploy.jupyter import helper\n"
            "from nbdeploy.demo import launch\n"  # c: not through the facade
        ),
        "store.py": "from nbdeploy.jupyter import panel\n",  # b: an adapter
    }
    root = tmp_path / "nbdeploy"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    modules, imports = collect_imports(root)

    def pairs(found: list[Import]) -> set[tuple[str, str]]:
        return {(i.source, i.target) for i in found}

    assert ("nbdeploy.serve.app", "nbdeploy.serve.model") in pairs(imports)
    assert pairs(server_violations(imports)) == {("nbdeploy.serve.app", "nbdeploy.endpoint")}
    assert pairs(core_violations(imports)) == {
        ("nbdeploy.deployment", "IPython.display"),
        ("nbdeploy.store", "nbdeploy.jupyter"),
    }
    assert pairs(adapter_violations(imports)) == {("nbdeploy.jupyter.magics", "nbdeploy.demo")}
    assert pairs(facade_violations(imports)) == {
        ("nbdeploy.demo", "nbdeploy"),
        ("nbdeploy.deployment", "nbdeploy.api"),
    }
    [tagged] = [
        i for i in imports if i.target == "nbdeploy.api" and i.source == "nbdeploy.deployment"
    ]
    assert tagged.type_checking and "[TYPE_CHECKING]" in tagged.where(root)

    cycles = find_cycles(modules, imports)
    chains = [describe_cycle(cycle, root).splitlines()[0] for cycle in cycles]
    assert chains == ["nbdeploy.deployment -> nbdeploy.endpoint -> nbdeploy.deployment"]
    assert (
        "nbdeploy/endpoint.py:2: nbdeploy.endpoint imports nbdeploy.deployment [in a function]"
        in (describe_cycle(cycles[0], root))
    )
