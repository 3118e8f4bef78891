"""The tutorial notebooks run top to bottom: their code cells executed in order, in one
namespace, with plain Python (no Jupyter needed) and matplotlib's Agg backend."""

import json
import pathlib

import matplotlib
import matplotlib.pyplot as plt
import pytest

matplotlib.use("Agg")

TUTORIALS = pathlib.Path(__file__).parent.parent / "docs" / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("*.ipynb"))


def code_cells(path):
    """The source of each code cell of a notebook, in order."""
    notebook = json.loads(path.read_text())
    return ["".join(cell["source"]) for cell in notebook["cells"]
            if cell["cell_type"] == "code"]


def test_there_is_a_notebook():
    assert NOTEBOOKS, f"no notebook in {TUTORIALS}"


@pytest.mark.integration
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(path):
    namespace = {"__name__": "__main__"}
    try:
        for index, source in enumerate(code_cells(path)):
            exec(compile(source, f"{path.name}[cell {index}]", "exec"), namespace)
    finally:
        plt.close("all")
    assert "comparison" in namespace and namespace["comparison"].records
