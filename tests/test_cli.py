import csv
import subprocess
import sys

import pytest
from pyro.infer import Trace_ELBO

import pyro_lvmle
from pyro_lvmle import cli

TINY = ["--budget", "0.05", "--max-steps", "2", "--eval-every", "1", "--num-data", "20"]


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"pyro-lvmle {pyro_lvmle.__version__}"


def test_default_run_end_to_end_with_a_tiny_budget(capsys, tmp_path):
    assert cli.main(["compare", *TINY, "--output", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for label in ("Trace_ELBO (Pyro)", "IWAE", "DReG", "STL", "MCMC gradient", "MCEM", "SAEM",
                  "variational EM", "closed-form MLE"):
        assert label in out
    assert "failed" not in out
    with open(tmp_path / "comparison.csv") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 8 and all(1 <= int(row["steps"]) <= 2 for row in rows)
    # no fit beats the closed-form maximum
    best = float(out.split("closed-form MLE): ")[1].split()[0])
    assert all(float(row["final"]) <= best + 1e-6 for row in rows)
    assert (tmp_path / "comparison.png").stat().st_size > 1000


def test_options_without_the_command_and_a_subset_of_methods(capsys, tmp_path):
    argv = ["--model", "ppca", "--methods", "elbo,mcem", *TINY, "--output", str(tmp_path)]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "ppca" in out and "MCEM" in out and "IWAE" not in out


def test_a_budget_of_model_evaluations(capsys, tmp_path):
    argv = ["--methods", "elbo,iwae", "--budget", "60", "--max-evaluations", "3",
            "--eval-every", "1", "--num-data", "20", "--output", str(tmp_path)]
    assert cli.main(argv) == 0
    with open(tmp_path / "comparison.csv") as file:
        rows = {row["method"]: row for row in csv.DictReader(file)}
    assert all(int(row["model_evaluations"]) >= 3 for row in rows.values())
    assert int(rows["Trace_ELBO (Pyro), AutoNormal"]["steps"]) == 3


def test_gmm_uses_enumeration_and_exact_em(capsys, tmp_path):
    assert cli.main(["--model", "gmm", *TINY, "--output", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "exact EM" in out and "TraceEnum_ELBO" in out and "failed" not in out
    assert cli.main(["--model", "gmm", "--methods", "iwae", *TINY, "--output",
                     str(tmp_path)]) == 2
    assert "no method" in capsys.readouterr().err


def test_rbm_runs_contrastive_divergence(capsys, tmp_path):
    assert cli.main(["--model", "rbm", *TINY, "--output", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "CD-1, block Gibbs" in out and "PCD-1, block Gibbs" in out and "failed" not in out


@pytest.mark.parametrize("argv,expected", [
    (["--seed", "-1"], "--seed: must be an integer in [0, 2**32), got '-1'"),
    (["compare", "--num-data", "x"], "--num-data: must be a positive integer, got 'x'"),
    (["--num-data", "0"], "--num-data: must be a positive integer, got '0'"),
    (["--budget", "inf"], "--budget: must be a finite positive number"),
    (["--model", "nonexistent"], "invalid choice: 'nonexistent'"),
    (["--methods", "foo"], "--methods: must be a comma-separated list"),
    (["compare", "extra"], "unrecognized arguments: extra"),
    # found after the whole comparison had run (a traceback, exit 1), or by the model
    (["--output", __file__], "--output: " + __file__ + " exists and is not a directory"),
    (["--output", ""], "--output: give a directory"),
    (["--model", "gmm", "--num-data", "2"], "--num-data: the gmm model needs at least 3 data"),
])
def test_every_argument_error_is_one_line(capsys, argv, expected):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("pyro-lvmle: error:")
    assert expected in err and "_positive" not in err


def test_help_runs_as_a_module():
    result = subprocess.run([sys.executable, "-m", "pyro_lvmle.cli", "--help"],
                            capture_output=True, text=True, check=True)
    assert "compare" in result.stdout


def test_compare_runs_on_each_device(capsys, tmp_path, device):
    argv = ["compare", "--methods", "elbo,iwae,mcem", *TINY, "--device", device.type,
            "--output", str(tmp_path)]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert f", {device.type})" in out
    assert "failed" not in out
    with open(tmp_path / "comparison.csv") as file:
        assert len(list(csv.DictReader(file))) == 3


class _Interrupting(Trace_ELBO):
    """A loss whose second step is interrupted (Ctrl-C), or that fails at once."""

    def __init__(self, error=KeyboardInterrupt):
        super().__init__()
        self.error, self.calls = error, 0

    def loss_and_grads(self, model, guide, *args, **kwargs):
        self.calls += 1
        if self.calls == 2 or self.error is not KeyboardInterrupt:
            raise self.error()
        return super().loss_and_grads(model, guide, *args, **kwargs)


def _with_methods(monkeypatch, methods):
    build = cli._methods

    def patched(name, model, lr):
        _, guide, fitted = build(name, model, lr)
        return methods, guide, fitted

    monkeypatch.setattr(cli, "_methods", patched)


def test_an_interrupted_run_says_so_and_exits_130(capsys, tmp_path, monkeypatch):
    # it printed a table that looked complete and exited 0
    _with_methods(monkeypatch, {"a": ("A", Trace_ELBO()), "b": ("B", _Interrupting()),
                                "c": ("C", Trace_ELBO())})
    assert cli.main(["--max-steps", "3", "--num-data", "20", "--output", str(tmp_path)]) == 130
    err = capsys.readouterr().err
    assert "interrupted during 'B'" in err and "not run: C" in err
    assert (tmp_path / "comparison.json").exists()


def test_a_run_where_every_method_failed_exits_1(capsys, tmp_path, monkeypatch):
    _with_methods(monkeypatch, {"a": ("A", _Interrupting(ZeroDivisionError))})
    assert cli.main(["--max-steps", "3", "--num-data", "20", "--output", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert "every method failed" in captured.err and "ZeroDivisionError" in captured.out
