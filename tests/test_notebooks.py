"""The three notebooks execute top to bottom (nbclient, the venv's python3 kernel); a cell that errors fails."""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from synthetic_run import SyntheticMethod, write_run_dir

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
sys.path.insert(0, str(NOTEBOOK_DIR))
import make_notebooks  # noqa: E402


def test_committed_notebooks_match_their_generator() -> None:
    for name, build in make_notebooks.NOTEBOOKS.items():
        committed = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
        generated = build()
        assert [cell.source for cell in committed.cells] == [cell.source for cell in generated.cells], (
            f"{name} is stale: run .venv/bin/python notebooks/make_notebooks.py"
        )


@pytest.mark.parametrize("name", sorted(make_notebooks.NOTEBOOKS))
def test_notebook_executes(name: str, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HESSIAN_LORA_THREADS", "1")
    monkeypatch.setenv("HESSIAN_LORA_MODEL", "tiny-llama")
    if name.startswith("02"):
        # A run directory with every optional part, so every figure cell runs; the demo itself is tested in
        # test_demo.py.
        run_dir = write_run_dir(
            tmp_path / "run",
            {
                "lora": SyntheticMethod(eta_star=3e-4, lambda_init=1.5),
                "pissa": SyntheticMethod(eta_star=3e-5, lambda_init=15.0, module_ratio=10.0),
                "milora": SyntheticMethod(eta_star=1e-4, lambda_init=4.0, module_ratio=2.0),
            },
            seeds=(0, 1),
            seed_shift=0.1,
        )
        monkeypatch.setenv("HESSIAN_LORA_RUN_DIR", str(run_dir))
    notebook = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
    client = NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK_DIR)}}
    )
    client.execute()
    errors = [
        output
        for cell in notebook.cells
        for output in cell.get("outputs", [])
        if output.get("output_type") == "error"
    ]
    assert errors == []
    images = [
        output
        for cell in notebook.cells
        for output in cell.get("outputs", [])
        if "image/png" in output.get("data", {})
    ]
    assert images, "every notebook shows at least one figure"
