"""The ``Example::`` blocks of the public docstrings run and print what they show."""

import doctest
import importlib

import pytest

MODULES = [
    "pyro_lvmle.models.base",
    "pyro_lvmle.models.linear_gaussian",
    "pyro_lvmle.models.ppca",
    "pyro_lvmle.models.mixture",
    "pyro_lvmle.models.rbm",
    "pyro_lvmle.models.theophylline",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0
