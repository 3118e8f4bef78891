"""The ``Example::`` blocks of the public docstrings run and print what they show: every
module of the package is discovered and its doctests run; a module whose docstrings show an
example must run at least one."""

import doctest
import importlib
import pathlib

import pytest

import pyro_lvmle

PACKAGE = pathlib.Path(pyro_lvmle.__file__).parent
MODULES = sorted(
    ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
    for path in PACKAGE.rglob("*.py")
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    tests = doctest.DocTestFinder().find(module)
    shown = sum(1 for test in tests for example in test.examples
                if not example.options.get(doctest.SKIP))
    assert result.attempted >= shown > 0 or shown == 0, f"{name}: examples not run"
    assert result.failed == 0
