"""Every notebook in notebooks/ runs as committed, top to bottom, in a fresh kernel.

Each notebook sets its small parameters in its first code cell and starts (and shuts
down) its own embedded cluster in the kernel's process, so it never shares Ray with the
test session. The committed files carry the outputs of such a run.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("*.ipynb"))


def _execute(path: Path, workdir: Path):
    import nbformat
    from nbclient import NotebookClient

    book = nbformat.read(path, as_version=4)
    NotebookClient(
        book, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}
    ).execute()  # raises CellExecutionError naming the cell and its traceback
    return book


def _outputs(book, kind: str) -> list:
    return [
        out
        for cell in book.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if out.get("output_type") == kind
    ]


def test_there_are_notebooks():
    assert {p.name for p in NOTEBOOKS} >= {"quickstart.ipynb", "analytics.ipynb"}


# Figures each notebook must draw (matplotlib, inline PNG in the committed outputs).
FIGURES = {"analytics.ipynb": 1, "latency_vs_cost.ipynb": 1}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_without_error(path, tmp_path):
    book = _execute(path, tmp_path)
    assert _outputs(book, "error") == []
    assert _outputs(book, "execute_result"), "a notebook shows results"
    images = [out for out in _outputs(book, "display_data") if "image/png" in out.get("data", {})]
    assert len(images) == FIGURES.get(path.name, 0)
