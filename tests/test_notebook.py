"""The quick-start notebook runs top to bottom on the tiny model (train, test, predict, pictures, reload)."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient


def test_quickstart_notebook_executes(repo_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENAU_NOTEBOOK_DIR", str(tmp_path))
    monkeypatch.setenv("PYTHONWARNINGS", "ignore")
    notebook = nbformat.read(repo_root / "notebooks" / "quickstart.ipynb", as_version=4)
    NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = {
        index: "".join(output.get("text", "") for output in cell.get("outputs", []))
        for index, cell in enumerate(notebook.cells)
        if cell.cell_type == "code"
    }
    text = "\n".join(outputs.values())
    assert "type_WeightedF1" in text
    assert "| visa | candle |" in text
    assert "pictures; the first:" in text
    assert any(
        output.get("output_type") == "display_data" for cell in notebook.cells for output in cell.get("outputs", [])
    )
    assert (tmp_path / "results").is_dir()
    assert list((tmp_path / "predictions").rglob("predictions.jsonl"))
