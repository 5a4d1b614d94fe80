"""The shape of ``src/lodestar``, read from its source with ``ast``.

- Its modules import each other without cycles, counting every import: at module
  level, under ``TYPE_CHECKING`` and inside functions (a cycle hidden in a
  function is still a cycle in the design).
- It uses its dependencies through their public APIs: no name starting with
  ``_`` imported from another package, no private module (a path component
  starting with ``_``, or a framework's internals listed below), and no write to
  a private attribute of an object that is not the writer's own (``self``/``cls``).
- ``lodestar token`` does not load the web server.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
ROOT_PACKAGE = "lodestar"

# Packages of dependencies that are internals even though no part of their name
# starts with an underscore.
INTERNAL_MODULES = (
    "uvicorn.protocols",
    "uvicorn.lifespan",
    "uvicorn.loops",
    "starlette.middleware.errors",
)

# Generated protobuf and gRPC code (protoc's output uses protobuf's internals).
GENERATED = ("lodestar.inference.v1", "lodestar.embedding.v1", "lodestar.vector.v1")

# Private attributes set outside the gateway, to be removed by the change that
# owns their area: (file, attribute).
KNOWN_PRIVATE_WRITES: set[tuple[str, str]] = set()

# Import cycles outside the gateway, each listed as the sorted modules of one
# strongly connected component; every one is to be broken by the change that owns
# its area, and this list then shrinks. A cycle not listed here fails the test.
KNOWN_CYCLES: list[frozenset[str]] = []


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted((SRC / ROOT_PACKAGE).rglob("*.py"))}


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _imports(name: str, path: Path) -> Iterator[tuple[str, tuple[str, ...], int]]:
    """(module, imported names, line) of every import in the file, relative ones resolved."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if _is_package(path) else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, (), node.lineno
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join([*base, module] if module else base)
            yield module, tuple(a.name for a in node.names), node.lineno


def import_graph() -> dict[str, set[str]]:
    """Module → the lodestar modules it imports (``from pkg import mod`` counts as
    importing ``pkg.mod``; ``from mod import name`` as importing ``mod``)."""
    sources = _sources()
    graph: dict[str, set[str]] = {name: set() for name in sources}
    for name, path in sources.items():
        for module, names, _ in _imports(name, path):
            if module.split(".")[0] != ROOT_PACKAGE:
                continue
            targets = [f"{module}.{n}" for n in names if f"{module}.{n}" in sources]
            if len(targets) < len(names) or not names:
                # Some names are attributes of ``module`` itself (or the module
                # is imported whole); its longest existing prefix is what runs.
                parts = module.split(".")
                while parts and ".".join(parts) not in sources:
                    parts.pop()
                if parts:
                    targets.append(".".join(parts))
            graph[name].update(t for t in targets if t != name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []
    counter = 0

    def visit(start: str) -> None:
        nonlocal counter
        # Iterative depth-first search: (node, iterator over its successors).
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            advanced = False
            for succ in successors:
                if succ not in index:
                    index[succ] = low[succ] = counter
                    counter += 1
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, iter(sorted(graph[succ]))))
                    advanced = True
                    break
                if succ in on_stack:
                    low[node] = min(low[node], index[succ])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(frozenset(component))

    for name in sorted(graph):
        if name not in index:
            visit(name)
    return found


def test_the_graph_sees_type_checking_and_function_imports() -> None:
    graph = import_graph()
    # (A check that finds nothing must be shown able to find something.)
    assert "lodestar.services.gateway.pipeline" in graph["lodestar.services.gateway.flows.usage"]
    assert "lodestar.services.gateway.app" in graph["lodestar.services.gateway.server"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [frozenset("abc")]


def test_no_import_cycles() -> None:
    found = cycles(import_graph())
    unexpected = [sorted(c) for c in found if c not in KNOWN_CYCLES]
    assert unexpected == []
    gateway = "lodestar.services.gateway"
    assert not [sorted(c) for c in found if any(m.startswith(gateway) for m in c)]


def _hand_written() -> dict[str, Path]:
    return {n: p for n, p in _sources().items() if not n.startswith(GENERATED)}


def _private_imports() -> list[str]:
    problems = []
    for name, path in _hand_written().items():
        for module, names, line in _imports(name, path):
            if module.split(".")[0] in (ROOT_PACKAGE, "__future__"):
                continue
            where = f"{path.relative_to(SRC)}:{line}"
            if any(part.startswith("_") for part in module.split(".")) or any(
                module == m or module.startswith(m + ".") for m in INTERNAL_MODULES
            ):
                problems.append(f"{where} imports the private module {module}")
            for imported in names:
                if imported.startswith("_"):
                    problems.append(f"{where} imports the private name {module}.{imported}")
    return problems


def test_no_private_imports_from_dependencies() -> None:
    assert _private_imports() == []


def _private_writes() -> list[str]:
    problems = []
    for path in _hand_written().values():
        tree = ast.parse(path.read_text(), str(path))
        where = str(path.relative_to(SRC))
        for node in ast.walk(tree):
            targets: list[ast.expr] = []
            if isinstance(node, ast.Assign):
                targets = node.targets
            elif isinstance(node, ast.AugAssign | ast.AnnAssign):
                targets = [node.target]
            for target in targets:
                if (
                    isinstance(target, ast.Attribute)
                    and target.attr.startswith("_")
                    and not target.attr.startswith("__")
                    and not (
                        isinstance(target.value, ast.Name) and target.value.id in ("self", "cls")
                    )
                    and (where, target.attr) not in KNOWN_PRIVATE_WRITES
                ):
                    problems.append(f"{where}:{node.lineno} sets .{target.attr}")
    return problems


def test_no_writes_to_private_attributes_of_other_objects() -> None:
    assert _private_writes() == []


def test_the_token_command_does_not_load_the_web_server() -> None:
    code = (
        "import sys, contextlib, io\n"
        "from lodestar.cli import main\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out):\n"
        "    assert main(['token', '--sub', 'alice', '--role', 'user']) == 0\n"
        "assert out.getvalue().count('.') == 2, out.getvalue()  # a JWT\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('fastapi', 'starlette', 'uvicorn'))\n"
        "print(loaded)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"


def test_no_hand_written_module_is_over_600_lines() -> None:
    long = {
        str(path.relative_to(SRC)): lines
        for path in _hand_written().values()
        if (lines := len(path.read_text(encoding="utf-8").splitlines())) > 600
    }
    assert long == {}
