"""The examples in the docstrings run and print what they say: every module's."""

import doctest
import importlib
import pkgutil

import pytest

import mip360cli

MODULES = sorted(m.name for m in pkgutil.walk_packages(mip360cli.__path__, "mip360cli.")
                 if not m.name.endswith("__main__"))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"


def test_the_examples_are_there():
    attempted = sum(doctest.testmod(importlib.import_module(n)).attempted for n in MODULES)
    assert attempted >= 20 and "mip360cli.core.files" in MODULES and "mip360cli.data.cache.format" in MODULES
