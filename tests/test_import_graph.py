"""Imports flow one way (issue 24): the package import graph of vitlab/, read with `ast` (module-level and
function-level imports, relative and absolute), has no cycle, each package imports only packages of a lower layer,
and no package imports another package's private `_name`. Inside each package, modules import one another without
a cycle."""
import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1] / "vitlab"

# The layers, bottom to top: a package imports only packages of a LOWER layer (same-layer siblings never import each
# other). The root modules `vitlab/_x.py` are vitlab-wide helpers any package may import; they import no subpackage
# (`_files` uses `_download`, so it sits above it). text sits below data: data's unknown-dataset message lists the text
# datasets, and text needs nothing of data (the file helpers both use live in the root modules).
LAYERS = {
    "_download": -2, "_archive": -2, "_version": -2, "_profile": -2, "_figures": -2,
    "_files": -1, "_calibrate": -1,  # _calibrate reads the CPU's name with _profile
    "models": 0,
    "init": 1, "convert": 1,
    "text": 2,
    "data": 3,
    "train": 4,
    "interpret": 5,
    "compare": 6,  # its studies train, then draw with interpret's figures
    "cli": 7,  # vitlab/cli.py, vitlab/_cli_commands.py, vitlab/_cli_errors.py, vitlab/__main__.py
}
CLI_MODULES = {"cli", "_cli_commands", "_cli_errors", "__main__"}
FACADE = "vitlab"  # vitlab/__init__.py: the public facade may import anything; packages take only __version__ from it
FROM_FACADE = {"__version__"}


def _module_name(path: Path) -> str:
    parts = ["vitlab", *path.relative_to(SOURCE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(SOURCE.rglob("*.py"))}


def _is_package(module: str) -> bool:
    return MODULES.get(module, Path()).name == "__init__.py"


def node_of(module: str) -> str:
    """The package (or root module, or 'cli') that `module` belongs to; FACADE for vitlab/__init__.py."""
    parts = module.split(".")
    if len(parts) == 1:
        return FACADE
    return "cli" if parts[1] in CLI_MODULES else parts[1]


def _imports(module: str):
    """(line, target module, imported name or None) of every vitlab import anywhere in `module`'s file."""
    tree = ast.parse(MODULES[module].read_text(), str(MODULES[module]))
    package = module if _is_package(module) else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "vitlab":
                    yield node.lineno, alias.name, None
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "vitlab":
                continue
            for alias in node.names:
                if f"{target}.{alias.name}" in MODULES:  # `from . import submodule`
                    yield node.lineno, f"{target}.{alias.name}", None
                else:
                    yield node.lineno, target, alias.name


def _where(module: str, line: int) -> str:
    return f"{MODULES[module].relative_to(SOURCE.parent)}:{line}"


def _shown(target: str, name: str | None) -> str:
    return f"from {target} import {name}" if name else f"import {target}"


IMPORTS = [(module, line, target, name) for module in MODULES for line, target, name in _imports(module)]
CROSS = [(m, line, t, n) for m, line, t, n in IMPORTS if node_of(m) != node_of(t) and node_of(m) != FACADE]


def test_the_layer_table_covers_every_package_and_root_module():
    nodes = {node_of(m) for m in MODULES} - {FACADE}
    assert nodes == set(LAYERS), f"not in LAYERS: {sorted(nodes - set(LAYERS))}; gone: {sorted(set(LAYERS) - nodes)}"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
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
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _cycle_report(edges, node) -> str:
    """The cycles of the graph of `edges` (module, line, target, name) under `node`, each edge inside one shown as
    file:line and the import."""
    graph: dict[str, set[str]] = {}
    for module, _, target, _ in edges:
        if node(module) != node(target):
            graph.setdefault(node(module), set()).add(node(target))
    lines = []
    for component in _cycles(graph):
        lines.append(f"cycle {' <-> '.join(component)}:")
        lines += [f"  {_where(m, line)}: {_shown(t, n)}" for m, line, t, n in edges
                  if node(m) != node(t) and node(m) in component and node(t) in component]
    return "\n".join(lines)


def test_no_cycle_between_packages():
    report = _cycle_report([e for e in CROSS if node_of(e[2]) != FACADE], node_of)
    assert not report, "the package import graph has cycles:\n" + report


def test_each_package_imports_only_lower_layers():
    bad = [f"{_where(m, line)}: {_shown(t, n)}  ({node_of(m)}, layer {LAYERS[node_of(m)]}, imports "
           f"{node_of(t)}, layer {LAYERS[node_of(t)]})"
           for m, line, t, n in CROSS if node_of(t) != FACADE and LAYERS[node_of(t)] >= LAYERS[node_of(m)]]
    assert not bad, "imports that do not flow down the layers:\n" + "\n".join(bad)


def test_packages_take_only_the_version_from_the_facade():
    bad = [f"{_where(m, line)}: {_shown(t, n)}" for m, line, t, n in CROSS
           if node_of(t) == FACADE and n not in FROM_FACADE]
    assert not bad, (f"vitlab/__init__.py is the public facade; inside vitlab import from the module that defines "
                     "the name:\n" + "\n".join(bad))


def _private(target: str, name: str | None) -> bool:
    def is_private(part: str) -> bool:
        return part.startswith("_") and not (part.startswith("__") and part.endswith("__"))

    parts = target.split(".")[2:]  # a root module `vitlab._x` is vitlab-wide itself; `vitlab.pkg._x` is pkg's own
    return any(map(is_private, parts)) or (name is not None and is_private(name))


def test_no_import_of_another_packages_private_name():
    bad = [f"{_where(m, line)}: {_shown(t, n)}" for m, line, t, n in CROSS if _private(t, n)]
    assert not bad, ("private names imported across packages (make them public in the package that owns them, or "
                     "move them there):\n" + "\n".join(bad))


PACKAGES = sorted(node for node in LAYERS if _is_package(f"vitlab.{node}"))
# Imports inside a package that are late-bound on purpose: function-level imports of mutually recursive code, each
# with its reason. Nothing else may close a circle (test_the_late_bound_imports_are_function_level_and_still_there).
LATE_BOUND = {
    ("vitlab.models._hub", "vitlab.models._registry"): "HubMixin.from_pretrained / vitlab.load build the model "
                                                       "through create_model, which builds the HubMixin classes",
    ("vitlab.models._hub", "vitlab.models.segmentation"): "a Hub file may hold a segmentation model (backbone + head)",
    ("vitlab.models._registry", "vitlab.models.segmentation"): "create_model builds the registered segmentation "
                                                               "models, whose backbone comes from create_model",
}


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycle_between_the_modules_of_a_package(package):
    inside = [(m, line, t, n) for m, line, t, n in IMPORTS
              if node_of(m) == package and node_of(t) == package and m != t and (m, t) not in LATE_BOUND]
    report = _cycle_report(inside, lambda module: module)
    assert not report, f"vitlab/{package}: its modules import one another in a circle:\n" + report


def _module_level_imports(module: str) -> set[str]:
    tree = ast.parse(MODULES[module].read_text())
    package = module if _is_package(module) else module.rpartition(".")[0]
    found = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".")[:len(package.split(".")) - node.level + 1]
            found.add(".".join(base + ([node.module] if node.module else [])))
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_the_late_bound_imports_are_function_level_and_still_there():
    edges = {(m, t) for m, _, t, _ in IMPORTS}
    for (module, target), reason in LATE_BOUND.items():
        assert (module, target) in edges, f"LATE_BOUND lists {module} -> {target}, which is gone: remove the entry"
        assert target not in _module_level_imports(module), (
            f"{module} imports {target} at module level; LATE_BOUND is for function-level imports ({reason})")


def test_the_graph_reader_sees_relative_function_level_and_facade_imports():
    """The reader itself: a function-level relative import, `from .. import name` and `from . import submodule`."""
    found = {(m, t, n) for m, _, t, n in IMPORTS}
    assert ("vitlab._cli_commands", "vitlab.models", "list_models") in found  # inside a function, relative
    assert ("vitlab.cli", "vitlab", "__version__") in found  # `from . import __version__`: the facade
    assert ("vitlab.__main__", "vitlab.cli", "main") in found
    assert node_of("vitlab._cli_errors") == node_of("vitlab.cli") == "cli" and node_of("vitlab") == FACADE
    assert _private("vitlab.data._locate", "search_places") and _private("vitlab.data", "_x")
    assert not _private("vitlab._download", "download") and not _private("vitlab.models", "__version__")


def test_the_facade_wires_the_plugins_of_the_models_layer():
    """vitlab.init and vitlab.convert sit above vitlab.models and register with it (the 'mimetic' init, the official
    checkpoint layouts); `vitlab.create_model` imports them, so a fresh process needs nothing else."""
    code = ("import vitlab\nm = vitlab.create_model('vit_tiny_patch4_32', depth=1, init='mimetic', "
            "init_kwargs={'seed': 0})\nfrom vitlab.models import weights\nprint(' '.join(weights.LAYOUTS))")
    env = {**os.environ, "PYTHONPATH": str(SOURCE.parent), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=SOURCE.parent)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["crate_alpha_clipa_official", "crate_official", "crate_alpha_official", "hf_vit",
                                     "gpt2_hf", "nanogpt"]
