"""notebooks/demo.ipynb runs top to bottom on CPU (tiny model, random weights)."""
from pathlib import Path

import nbformat
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]


def test_demo_notebook_executes():
    nb = nbformat.read(REPO / "notebooks" / "demo.ipynb", as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 2  # the object strip and the generated strip
    text = "".join(o.get("text", "") for o in outputs)
    assert "torch.Size([1, 16, 4, 8, 8]) torch.Size([16, 3, 64, 64])" in text
