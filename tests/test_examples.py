"""The example scripts run end to end (in their quick mode)."""

import importlib.util
import pathlib

import pytest

EXAMPLES = pathlib.Path(__file__).parent.parent / "examples"


@pytest.mark.parametrize("name,expected", [
    ("reference_models", "Theophylline MLE"),
    ("vae_digits", "IWAE K=50, DReG"),
    ("seed000_gradient", "Fisher, batched HMC"),
    ("theophylline", "| CV ka % |"),
    ("rbm_digits", "final exact average log-likelihood"),
    ("ebm_2d", "KL(target || model)"),
])
def test_example_runs(name, expected, capsys, tmp_path):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if "out" in module.main.__code__.co_varnames:
        module.main(quick=True, out=str(tmp_path))
    else:
        module.main(quick=True)
    assert expected in capsys.readouterr().out
