"""Shared test set-up: float64, a fixed seed and a fresh param store per test, validation on.

Warnings are errors (``filterwarnings = ["error"]`` in pyproject.toml). Tests marked
``cuda`` are skipped on machines without a CUDA device.
"""

import pyro
import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def fresh_state():
    old_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    pyro.enable_validation(True)
    yield
    pyro.clear_param_store()
    torch.set_default_dtype(old_dtype)


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def device(request):
    """Each device the test should run on: the CPU always, CUDA where there is one."""
    return torch.device(request.param)
