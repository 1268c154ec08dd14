"""The examples in the docstrings of engage-deploy's placement engine and of the launcher's parts run
and give what they show."""

import doctest
import importlib
import pkgutil

import pytest

import engage.deploy.placement

MODULES = sorted(
    name
    for _, name, _ in pkgutil.walk_packages(engage.deploy.placement.__path__, "engage.deploy.placement.")
    if "._" not in name
)


LAUNCHER = [
    f"engage.deploy.{name}"
    for name in ("options", "job", "experiment", "report", "processes", "providers.slurm", "slurm.executor",
                 "slurm.requeue", "callbacks.slurm_requeue")
]  # fmt: skip


@pytest.mark.parametrize("name", ["engage.deploy.placement", *MODULES, *LAUNCHER])
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} docstring example(s) of {name} failed"
