"""Imports run one way (docs/architecture.md): no cycles, and no module imports from a layer above
its own. Function-local imports count too: they are dependencies all the same."""

import ast
from pathlib import Path

import mmrl_cli

PACKAGE = Path(mmrl_cli.__file__).resolve().parent

# Bottom to top; a module may import from its own layer or below. A name is a module or a
# package (its modules belong to it unless listed on their own).
LAYERS = [
    ("foundations", {"errors", "distributions", "rng", "signals", "exits", "distributed", "monitor", "tables", "text"}),
    ("envs and models", {"envs", "models"}),
    ("config", {"config", "compose"}),
    ("building blocks", {"checkpoint", "gif", "preflight", "rollout", "evaluation", "runs", "builders", "levels", "demos.dataset",
                         "demos.planner", "demos.babyai", "demos.settings", "compress.structure", "compress.structured",
                         "compress.unstructured", "compress.lowrank", "compress.measure"}),
    ("algorithms and training-time methods", {"algos", "compress.kickstart", "compress.teacher", "compress.setup"}),
    ("trainer", {"trainer"}),
    ("command work", {"compat", "launcher", "sweep", "compress", "demos", "demos.command"}),
    ("commands", {"commands"}),
    ("entrypoint", {"cli", ""}),
]


def module_names() -> dict[str, Path]:
    """Every module of the package by dotted name relative to it ('' is the package itself)."""
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules `name` imports (relative or absolute, anywhere in the file)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    package = [p for p in package if p]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            elif (node.module or "").startswith("mmrl_cli"):
                target = node.module.removeprefix("mmrl_cli").lstrip(".")
            else:
                continue
            for alias in node.names:
                full = f"{target}.{alias.name}".lstrip(".")
                found.add(full if full in modules else target)
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix("mmrl_cli").lstrip(".") for a in node.names if a.name.startswith("mmrl_cli")}
    found.discard(name)
    return found


def layer_of(name: str) -> int:
    """The index in LAYERS of the longest name that is `name` or a package above it."""
    best, best_length = None, -1
    for index, (_, members) in enumerate(LAYERS):
        for member in members:
            if (name == member or name.startswith(member + ".") or member == "") and len(member) > best_length:
                best, best_length = index, len(member)
    return best


def test_every_module_has_a_layer_and_imports_only_from_its_layer_or_below():
    modules = module_names()
    upward = []
    for name, path in modules.items():
        for target in imports_of(name, path, modules):
            if layer_of(target) > layer_of(name):
                upward.append(f"{name or 'mmrl_cli'} ({LAYERS[layer_of(name)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})")
    assert not upward, "imports that run upwards:\n" + "\n".join(sorted(upward))


def test_there_are_no_import_cycles():
    modules = module_names()
    graph = {name: imports_of(name, path, modules) & modules.keys() for name, path in modules.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in graph[node]:
            if state.get(target) == 1:
                cycles.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target, path + [target])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)
