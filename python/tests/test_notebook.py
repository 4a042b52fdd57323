"""docs/notebook.ipynb runs from top to bottom against the installed package, so it cannot
rot: its code cells execute in order in one namespace (matplotlib without a display), and the
assertions in its cells (the direct part equals the top gradient bit for bit, prod lambda to
1e-12, every check passes) hold."""

import json
import pathlib

import matplotlib
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

NOTEBOOK = pathlib.Path(__file__).resolve().parents[2] / "docs" / "notebook.ipynb"


def code_cells():
    nb = json.loads(NOTEBOOK.read_text())
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


def test_the_notebook_is_stored_without_outputs():
    # Outputs are made by running it; stored ones could describe an older engine.
    for c in code_cells():
        assert c["outputs"] == [] and c["execution_count"] is None


def test_the_notebook_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__notebook__"}
    for i, cell in enumerate(code_cells()):
        source = "".join(cell["source"])
        try:
            exec(compile(source, f"docs/notebook.ipynb, code cell {i + 1}", "exec"), namespace)
        except Exception as e:
            pytest.fail(f"code cell {i + 1} failed: {e!r}\n{source}")
    figures = len(plt.get_fignums())
    plt.close("all")
    assert figures >= 6, figures
