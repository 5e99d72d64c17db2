"""Import a script of ``bench/`` or ``tools/`` (folders of scripts, not packages) by file."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from tests.support.paths import ROOT


def load_module(path: Path) -> ModuleType:
    name = f"{path.parent.name}_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def load_bench_module(name: str) -> ModuleType:
    return load_module(ROOT / "bench" / f"{name}.py")
