"""The examples in the docstrings of engage-core run and give what they show."""

import doctest
import importlib
import pkgutil

import pytest

import engage.core

MODULES = sorted(name for _, name, _ in pkgutil.walk_packages(engage.core.__path__, "engage.core.") if "._" not in name)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} docstring example(s) of {name} failed"
