import subprocess
import sys

import pytest

import pyro_lvmle
from pyro_lvmle import cli


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"pyro-lvmle {pyro_lvmle.__version__}"


@pytest.mark.parametrize("model", ["linear-gaussian", "ppca"])
def test_compare_prints_a_table_no_method_beats_the_mle(capsys, model):
    argv = ["compare", "--model", model, "--num-data", "60", "--num-steps", "30"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "closed-form MLE" in out
    for name in cli._METHODS:
        assert name in out
    rows = cli.compare(model, num_data=60, num_steps=30, lr=0.05, seed=0)
    assert rows[0]["gap"] == 0.0
    # the closed-form MLE is the maximum: every fitted method's gap is non-negative
    assert all(r["gap"] >= -1e-9 for r in rows[1:])


def test_more_steps_close_the_gap():
    short = cli.compare("linear-gaussian", num_data=100, num_steps=20, lr=0.05, seed=0)
    long = cli.compare("linear-gaussian", num_data=100, num_steps=400, lr=0.05, seed=0)
    for a, b in zip(short[1:], long[1:], strict=True):
        assert b["gap"] < a["gap"]


def test_bad_arguments_exit_with_usage(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["compare", "--num-data", "0"])
    assert exit_info.value.code == 2
    assert "positive" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["compare", "--model", "nonexistent"])


def test_help_runs_as_a_module():
    result = subprocess.run([sys.executable, "-m", "pyro_lvmle.cli", "--help"],
                            capture_output=True, text=True, check=True)
    assert "compare" in result.stdout
