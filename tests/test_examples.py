"""The example scripts run end to end (in their quick mode)."""

import importlib.util
import pathlib

import pytest

EXAMPLES = pathlib.Path(__file__).parent.parent / "examples"


@pytest.mark.parametrize("name,expected", [
    ("reference_models", "Theophylline MLE"),
    ("vae_digits", "IWAE K=50, DReG"),
])
def test_example_runs(name, expected, capsys):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(quick=True)
    assert expected in capsys.readouterr().out
