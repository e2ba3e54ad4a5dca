"""The examples in the docstrings run and print what they say."""

import doctest
import importlib

import pytest

MODULES = ["mip360cli.model.coord", "mip360cli.model.render", "mip360cli.model.stepfun", "mip360cli.model.model",
           "mip360cli.train.schedule", "mip360cli.data.cameras", "mip360cli.data.images"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"


def test_the_examples_are_there():
    attempted = sum(doctest.testmod(importlib.import_module(n)).attempted for n in MODULES)
    assert attempted >= 6
