"""The import contract of store/etcdstore: one-way layers, no package cycles.

Every `import` of an etcdstore module anywhere in a module counts: at the top, inside a function,
and under `if TYPE_CHECKING:` (a type-only import still ties the packages together). The layer
order is the one written in docs/architecture.md; keep the two the same.

Rules, for every import from component A to component B (a component is a package or top-level
module listed in LAYERS, matched by the longest prefix):
* B is in a lower layer than A, or A and B are the same component;
* components of one layer are independent of each other (no sideways imports);
* every module of etcdstore belongs to a listed component;
* the component graph has no cycle (implied by the above; checked on its own for a clear message).
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "store"
PKG = ROOT / "etcdstore"

# Top to bottom. Components in one inner list are siblings: neither may import the other.
LAYERS: list[list[str]] = [
    ["etcdstore.__main__"],
    ["etcdstore.cli"],
    # the composition root and the other programs (each a process of its own)
    # (discovery resolves --discovery/--discovery-srv into the initial cluster before a member starts)
    [
        "etcdstore.member",
        "etcdstore.localcluster",
        "etcdstore.bench",
        "etcdstore.proxy",
        "etcdstore.discovery",
    ],
    # client-facing APIs: gRPC services, gateway, client-port mux, /health
    ["etcdstore.api"],
    # the API's own parts, and the client library (the API never uses it)
    ["etcdstore.api.v2", "etcdstore.api.h2", "etcdstore.client"],
    # one member: Raft driver, requests, the apply loop (the API sees it through server/api.py's Protocol)
    ["etcdstore.server"],
    # one committed request's state changes (etcd 3.6's etcdserver/apply), driven by the server
    ["etcdstore.apply"],
    # what the server drives: auth checks and apply handlers, member-to-member transport
    ["etcdstore.auth", "etcdstore.transport"],
    # request semantics over the stores; the snapshot formats
    ["etcdstore.txn", "etcdstore.snapshot"],
    # the replicated state machines' stores, and metrics
    ["etcdstore.mvcc", "etcdstore.lease", "etcdstore.membership", "etcdstore.metrics"],
    # storage and TLS
    ["etcdstore.storage", "etcdstore.security"],
    # Raft, pure
    ["etcdstore.raft"],
    # leaves
    ["etcdstore.config", "etcdstore.logs", "etcdstore.errors"],
    ["etcdstore.proto", "etcdstore"],  # generated protobuf code; the package root (ETCD_VERSION)
]

# Imports that break the rules on purpose, each with its reason. Keep this short.
ALLOWED: dict[tuple[str, str], str] = {}


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in PKG.rglob("*.py") if "__pycache__" not in p.parts}


@functools.cache
def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), str(path))


def imports_of(path: Path, modname: str, modules: dict[str, Path]) -> list[tuple[str, int]]:
    """(imported etcdstore module, line) for every import statement in the file."""
    tree = _parse(path)
    is_pkg = path.name == "__init__.py"
    found: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = modname.split(".") if is_pkg else modname.split(".")[:-1]
                pkg = pkg[: len(pkg) - (node.level - 1)]
                base = ".".join(pkg + ([base] if base else []))
            # `from a import b` imports a, and a.b when b is a module
            names = [base] + [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules]
        for name in names:
            if name == "etcdstore" or name.startswith("etcdstore."):
                found.append((name, node.lineno))
    return found


def component_of(name: str) -> str | None:
    if name == "etcdstore":
        return name  # the package root only (its __init__): not everything below it
    best = None
    for layer in LAYERS:
        for comp in layer:
            if (
                comp != "etcdstore"
                and (name == comp or name.startswith(comp + "."))
                and (best is None or len(comp) > len(best))
            ):
                best = comp
    return best


LAYER_OF = {comp: i for i, layer in enumerate(LAYERS) for comp in layer}


def violations(modules: dict[str, Path]) -> tuple[list[str], dict[str, set[str]]]:
    problems: list[str] = []
    graph: dict[str, set[str]] = {}
    for mod, path in sorted(modules.items()):
        src = component_of(mod)
        if src is None:
            problems.append(f"{mod}: not in any layer of tests/test_layers.py LAYERS")
            continue
        for target, line in imports_of(path, mod, modules):
            dst = component_of(target)
            if dst is None or dst == src:
                continue
            if (mod, target) in ALLOWED or (mod, dst) in ALLOWED:
                continue
            graph.setdefault(src, set()).add(dst)
            where = f"{path}:{line}: {mod} imports {target}"
            if LAYER_OF[dst] < LAYER_OF[src]:
                problems.append(f"{where} (upward: {src} is below {dst})")
            elif LAYER_OF[dst] == LAYER_OF[src]:
                problems.append(f"{where} (sideways: {src} and {dst} are independent siblings)")
    return problems, graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
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

    for v in list(graph):
        if v not in index:
            visit(v)
    return out


def test_layers_are_one_way() -> None:
    problems, _ = violations(all_modules())
    assert not problems, "import contract broken (docs/architecture.md):\n" + "\n".join(problems)


def test_no_package_cycles() -> None:
    _, graph = violations(all_modules())
    assert cycles(graph) == []


def test_package_inits_have_no_side_effects() -> None:
    # Importing etcdstore.api.v2 (or .h2) runs etcdstore/api/__init__.py: it must pull nothing in.
    for pkg in ("api", "server", "apply", "txn"):
        init = PKG / pkg / "__init__.py"
        assert imports_of(init, f"etcdstore.{pkg}", all_modules()) == [], init


def test_the_api_never_names_the_concrete_server() -> None:
    # The API layer depends on server/api.py's ServerAPI protocol only.
    for path in sorted((PKG / "api").rglob("*.py")):
        mod = module_name(path)
        for target, line in imports_of(path, mod, all_modules()):
            assert target != "etcdstore.server.server", f"{path}:{line}"


def test_the_contract_catches_an_upward_import_and_a_cycle(tmp_path: Path) -> None:
    # The checker itself: a fake tree where mvcc imports the server must fail both ways.
    modules = all_modules()
    bad = tmp_path / "kvstore.py"
    bad.write_text("from etcdstore.server.server import EtcdServer\n")
    modules["etcdstore.mvcc.kvstore"] = bad
    problems, graph = violations(modules)
    assert any(
        "upward" in p and "etcdstore.mvcc.kvstore imports etcdstore.server.server" in p for p in problems
    )
    assert ["etcdstore.mvcc", "etcdstore.server"] in [
        [c for c in comp if c in ("etcdstore.mvcc", "etcdstore.server")] for comp in cycles(graph)
    ]
    sideways = tmp_path / "hooks.py"
    sideways.write_text("def f():\n    from etcdstore.transport import peer\n")
    modules["etcdstore.auth.hooks"] = sideways
    assert any("sideways" in p for p in violations(modules)[0])


@pytest.mark.parametrize("layer", LAYERS, ids=lambda layer: ",".join(layer))
def test_every_component_exists(layer: list[str]) -> None:
    modules = all_modules()
    for comp in layer:
        assert comp in modules, f"{comp} is listed in LAYERS but is no module or package"
