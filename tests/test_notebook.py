"""The example notebook runs top to bottom in a real Jupyter kernel (nbclient + ipykernel): progress is one live
display updated in place, not a stream of lines, and the FitResult displays itself as HTML."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")
pytest.importorskip("ipykernel")
pytest.importorskip("sklearn")

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_notebook(tmp_path: Path):
    shutil.copy(EXAMPLES / "digits.py", tmp_path)  # the notebook imports it, as it does beside it in examples/
    notebook = nbformat.read(EXAMPLES / "notebook.ipynb", as_version=4)
    # ipykernel's own "python3" spec starts this interpreter (jupyter_client puts sys.executable for its
    # "python"), so the kernel imports the converge under test.
    client = nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    return client.execute()


def test_the_example_notebook_runs_with_one_live_display_and_an_inline_result(tmp_path):
    notebook = run_notebook(tmp_path)
    fit_cell = notebook.cells[2]
    outputs = fit_cell.outputs
    streamed = [o for o in outputs if o.output_type == "stream" and o.name == "stdout"]
    assert not streamed, "progress printed as lines: " + "".join(o.text for o in streamed)[:300]
    displays = [o for o in outputs if o.output_type == "display_data"]
    assert len(displays) == 1 and "converge-progress" in displays[0].data["text/html"]
    shown = displays[0].data["text/html"]  # the live display as it was last updated: every epoch in it
    assert "epoch 1 " in shown or "… " in shown
    result = [o for o in outputs if o.output_type == "execute_result"]
    assert len(result) == 1
    page = result[0].data["text/html"]
    for part in ("converge-result", "Diagnosis", "data:image/png;base64,", "runs/notebook-digits"):
        assert part in page
    summary = (tmp_path / "runs" / "notebook-digits" / "summary.json").read_text()
    assert f'"status": "{"converged" if "converged" in page else "max_epochs"}"' in summary
    test_values = notebook.cells[3].outputs[0].data["text/plain"]
    assert "accuracy" in test_values


def test_the_inline_result_styles_only_itself():
    from converge.report.html import _STYLE
    from converge.report.inline import scoped_style

    rules = scoped_style(_STYLE, ".converge-result").splitlines()
    assert len(rules) > 20
    for rule in rules:
        selectors = rule.split("{")[0].split(",")
        assert all(s.strip().startswith(".converge-result") for s in selectors), rule


def test_outside_a_kernel_the_console_is_not_the_notebook_one():
    from converge.console import NotebookConsole, in_jupyter, make_console

    assert not in_jupyter()
    assert not isinstance(make_console(True), NotebookConsole)
