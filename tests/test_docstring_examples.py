"""The ``Example::`` blocks of the public docstrings run and print what they show."""

import doctest
import importlib

import pytest

MODULES = [
    "pyro_lvmle.models.base",
    "pyro_lvmle.models.linear_gaussian",
    "pyro_lvmle.models.ppca",
    "pyro_lvmle.models.mixture",
    "pyro_lvmle.models.nmixture",
    "pyro_lvmle.models.rbm",
    "pyro_lvmle.models.theophylline",
    "pyro_lvmle.objectives.iwae",
    "pyro_lvmle.objectives.renyi",
    "pyro_lvmle.objectives.stl",
    "pyro_lvmle.objectives.tvo",
    "pyro_lvmle.objectives.rws",
    "pyro_lvmle.traces.prior_guide",
    "pyro_lvmle.traces.potential",
    "pyro_lvmle.samplers.kernels",
    "pyro_lvmle.samplers.pyro_kernel",
    "pyro_lvmle.samplers.discrete",
    "pyro_lvmle.gradients.fisher",
    "pyro_lvmle.gradients.information",
    "pyro_lvmle.traces.enum",
    "pyro_lvmle.traces.vmap",
    "pyro_lvmle.em.history",
    "pyro_lvmle.em.schedules",
    "pyro_lvmle.em.mcem",
    "pyro_lvmle.em.saem",
    "pyro_lvmle.em.variational",
    "pyro_lvmle.em.exact",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0
