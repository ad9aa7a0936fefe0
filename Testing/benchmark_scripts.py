"""Test helper: import a script of ``Testing/benchmarks/`` (not a package) as a module.

Shared by the tests of those scripts (pytest puts this folder on ``sys.path``: it holds the root
conftest.py).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def load_benchmark(name: str) -> ModuleType:
    """``Testing/benchmarks/<name>.py`` as a fresh module."""
    path = Path(__file__).parent / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bsafusion_benchmark_{name}", path)
    module = importlib.util.module_from_spec(spec)
    # registered before it runs: dataclasses look their module up in sys.modules
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
