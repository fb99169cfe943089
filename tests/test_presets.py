"""The presets package: the registry (vitlab/train/presets/__init__.py) imports the family modules and registers
the presets each declares in its `PRESETS` tuple; no family imports the registry, so importing them runs no
registration through side effects and draws no cycle."""
import ast
import importlib
import inspect
import re
import types
from pathlib import Path

import pytest

import vitlab

VITLAB = Path(vitlab.__file__).resolve().parent
FAMILIES = ("classification", "lm", "segmentation", "clip")


def _module_name(path: Path) -> str:
    parts = path.relative_to(VITLAB.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The modules of `modules` that the file at `path` imports (anywhere in it, relative imports resolved)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]) if node.level else ""
            target = ".".join(p for p in (base, node.module) if p)
            found |= {f"{target}.{alias.name}" if f"{target}.{alias.name}" in modules else target
                      for alias in node.names}
    return found & modules - {name}


def test_preset_modules_import_one_way_without_a_cycle():
    """Every preset module under vitlab/train/ (before: presets.py and {lm,seg,clip}_presets.py, which imported each
    other; now: the presets/ package), as an import graph: no cycle."""
    files = {_module_name(p): p for p in (VITLAB / "train").rglob("*.py") if "presets" in str(p.relative_to(VITLAB))}
    graph = {name: _imports(path, set(files)) for name, path in files.items()}
    assert len(graph) >= 4, sorted(graph)  # the registry and its families

    def cycle_from(start: str, path: tuple[str, ...]) -> tuple[str, ...] | None:
        for nxt in sorted(graph[start]):
            if nxt in path:
                return (*path[path.index(nxt):], nxt)
            if found := cycle_from(nxt, (*path, nxt)):
                return found
        return None

    for name in sorted(graph):
        cycle = cycle_from(name, (name,))
        assert cycle is None, "import cycle: " + " -> ".join(cycle)
    registry = "vitlab.train.presets"
    assert graph[registry] == {f"{registry}.{family}" for family in FAMILIES}
    assert all(registry not in imported for imported in graph.values())


def test_every_preset_function_of_a_family_is_registered_once_under_its_name():
    from vitlab.train.presets import PRESETS

    registered = []
    for family in FAMILIES:
        module = importlib.import_module(f"vitlab.train.presets.{family}")
        defined = {name for name, fn in inspect.getmembers(module, inspect.isfunction)
                   if fn.__module__ == module.__name__ and not name.startswith("_")}
        declared = [fn.__name__ for fn in module.PRESETS]
        assert sorted(declared) == sorted(defined), (family, set(defined) ^ set(declared))
        registered += declared
        source = Path(module.__file__).read_text()
        for name in declared:  # `grep -rn NAME vitlab/` finds the definition
            assert re.search(rf"^def {name}\(\) -> TrainConfig:", source, re.M), (family, name)
            assert PRESETS[name] is getattr(module, name)
    assert len(registered) == len(set(registered)) == len(PRESETS) == 45


def test_a_preset_declared_by_two_families_is_an_error():
    from vitlab.train import presets

    def fashion_mnist_vit():
        """A second preset of that name."""

    twin = types.SimpleNamespace(__name__="vitlab.train.presets.twin", PRESETS=(fashion_mnist_vit,))
    with pytest.raises(ValueError, match="preset 'fashion_mnist_vit' of vitlab.train.presets.twin is already "
                                         "declared by vitlab.train.presets.classification"):
        presets._register(twin)
    assert presets.PRESETS["fashion_mnist_vit"].__module__ == "vitlab.train.presets.classification"
