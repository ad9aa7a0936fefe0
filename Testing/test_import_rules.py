"""The package's layering, read from its imports (``BSAFusionCore/README.md``, "Layout and rules").

* ``inference/`` imports neither ``training/``, ``evaluation/`` nor ``phantom``: what users run
  must not depend on training code, research baselines or demo data;
* ``model/`` imports nothing above it (only the base modules);
* the base modules and ``phantom`` import only base modules;
* no module imports (or reaches through an attribute) a ``_private`` name of another module.

Lazy imports inside functions count like top-level ones.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import bsafusion

PACKAGE = Path(bsafusion.__file__).parent
GROUPS = ("model", "inference", "training", "evaluation", "commands")
TOP = ("cli", "phantom", "slicer_support")  # top-level modules that are not base


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "root"
    if parts[1] in GROUPS or parts[1] in TOP:
        return parts[1]
    return "base"


def _imports(path: Path) -> list[tuple[str, str | None, int]]:
    """``(imported module, imported name or None, line)`` for every bsafusion import in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, None, node.lineno) for alias in node.names if alias.name.startswith("bsafusion")]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("bsafusion"):
            found += [(node.module, alias.name, node.lineno) for alias in node.names]
    return found


def _private_attributes(path: Path) -> list[tuple[str, int]]:
    """``alias._name`` uses where ``alias`` is bound to a bsafusion module by an import."""
    tree = ast.parse(path.read_text(), str(path))
    aliases = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            aliases |= {a.asname for a in node.names if a.name.startswith("bsafusion") and a.asname}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("bsafusion"):
            aliases |= {a.asname or a.name for a in node.names}
    return [(f"{node.value.id}.{node.attr}", node.lineno) for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
            and node.attr.startswith("_") and not node.attr.startswith("__")]


def _edges() -> list[tuple[str, str, str | None, str]]:
    """``(importer, imported module, name, where)``, a name imported from a package resolved to its submodule."""
    edges = []
    for path in sorted(PACKAGE.rglob("*.py")):
        importer = _module_name(path)
        for module, name, line in _imports(path):
            target = module
            if name and (PACKAGE.parent / module.replace(".", "/") / name).with_suffix(".py").exists() or (
                name and (PACKAGE.parent / module.replace(".", "/") / name / "__init__.py").exists()
            ):
                target = f"{module}.{name}"
            edges.append((importer, target, name, f"{path.relative_to(PACKAGE.parent)}:{line}"))
    return edges


FORBIDDEN = {
    "inference": {"training", "evaluation", "phantom", "commands", "cli", "slicer_support"},
    "model": {"inference", "training", "evaluation", "phantom", "commands", "cli", "slicer_support"},
    "base": set(GROUPS) | set(TOP),
    "phantom": set(GROUPS) | set(TOP) - {"phantom"},
}


def test_the_walk_sees_the_package():
    edges = _edges()
    assert len({e[0] for e in edges}) > 40
    assert ("bsafusion.inference.fuser", "bsafusion.model.checkpoint", "checkpoint", ) in {e[:3] for e in edges}


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_nothing_above_it(layer: str):
    broken = [f"{where}: {importer} imports {target}" for importer, target, _, where in _edges()
              if _layer(importer) == layer and _layer(target) in FORBIDDEN[layer] and _layer(target) != layer]
    assert not broken, "\n".join(broken)


def test_no_private_name_crosses_a_module():
    broken = [f"{where}: {importer} imports {name} from {target}" for importer, target, name, where in _edges()
              if name and name.startswith("_") and not name.startswith("__") and target != importer]
    for path in sorted(PACKAGE.rglob("*.py")):
        broken += [f"{path.relative_to(PACKAGE.parent)}:{line}: {use}" for use, line in _private_attributes(path)]
    assert not broken, "\n".join(broken)
