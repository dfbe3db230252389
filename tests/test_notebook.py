"""examples/compare_methods.ipynb runs top to bottom and shows the comparison table (so it never rots)."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import REPO, builtin_model

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("notebook")]


def test_example_notebook_runs_and_shows_the_table(tmp_path):
    nbformat = pytest.importorskip("nbformat", reason="nbformat is a dev dependency (make install)")
    nbclient = pytest.importorskip("nbclient", reason="nbclient is a dev dependency (make install)")
    builtin_model("smollm2-135m")
    nb = nbformat.read(REPO / "examples" / "compare_methods.ipynb", as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    html = "".join(o.get("data", {}).get("text/html", "") for o in outputs)
    assert "base (untouched)" in html and "lora r=16" in html and "qlora r=16" in html
    assert "execution_accuracy" in html                       # the table of the comparison
    assert any("image/png" in o.get("data", {}) for o in outputs)  # the trade-off plot
    texts = "".join(o.get("data", {}).get("text/plain", "") for o in outputs)
    assert "MemoryEstimate" in texts or "peak" in html
    assert (Path(tmp_path) / "runs" / "notebook-demo" / "results.jsonl").is_file()
