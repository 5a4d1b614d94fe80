"""scripts/deploy_check.py as a module: the tests run the same checks as `make deploy-check`."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "deploy_check.py"


def _load() -> ModuleType:
    if "deploy_check" in sys.modules:
        return sys.modules["deploy_check"]
    spec = importlib.util.spec_from_file_location("deploy_check", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Registered before running: dataclasses look their module up by name.
    sys.modules["deploy_check"] = module
    spec.loader.exec_module(module)
    return module


dc = _load()
