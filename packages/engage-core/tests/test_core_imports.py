"""What importing ENGAGE costs: Hydra loads every plugin to compose any config, and each job of a
sweep starts a Python process, so neither may pull in SciPy, pandas, SALib or scikit-image."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import engage.core
from engage.core.lazy import lazy_exports

HEAVY = ("scipy", "pandas", "SALib", "skimage", "torch", "lightning", "mlflow")


def imported_after(code: str) -> list[str]:
    script = f"import sys\n{code}\nimport json\nprint(json.dumps(sorted(set(m.split('.')[0] for m in sys.modules))))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    return [name for name in json.loads(out.splitlines()[-1]) if name in HEAVY]


def test_loading_every_plugin_imports_no_heavy_library():
    assert imported_after("from engage.core.plugins import get_plugin_manager; get_plugin_manager()") == []


@pytest.mark.parametrize("module", ["engage.core", "engage.deploy.runner", "engage.deploy.tracking"])
def test_light_modules_stay_light(module: str):
    assert imported_after(f"import {module}") == []


def test_lazy_names_resolve_on_first_use_and_are_listed():
    assert engage.core.ParameterSpace.__name__ == "ParameterSpace"
    assert "UniformSampler" in dir(engage.core)
    with pytest.raises(AttributeError, match="has no attribute 'Nope'"):
        engage.core.Nope  # noqa: B018

    namespace: dict = {}
    getattr_, dir_ = lazy_exports("example", {"sqrt": "math"}, namespace)
    assert getattr_("sqrt")(16.0) == 4.0 and "sqrt" in namespace and dir_() == ["sqrt"]
