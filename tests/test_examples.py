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


def test_distributed_example_runs_on_two_processes(tmp_path):
    """``torchrun --standalone --nproc_per_node=2 examples/distributed_fit.py --quick``: SVI +
    IWAE, SGD + MCMCGradient and SAEM each within 0.02 per datum of the closed-form MLE."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(EXAMPLES.parent) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", str(EXAMPLES / "distributed_fit.py"), "--quick"]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "2 process(es)" in result.stdout
    rows = [line for line in result.stdout.splitlines() if line.startswith("| S")]
    gaps = [float(row.split("|")[3]) for row in rows]
    assert len(gaps) == 3 and all(0 <= gap < 0.02 for gap in gaps), result.stdout
