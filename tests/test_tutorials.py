"""Every notebook in ``tutorials/`` runs from top to bottom in smoke mode.

The notebooks read ``SMOKE = bool(os.environ.get("CI"))`` (Pyro's convention) and then use few
steps and particles; the kernel inherits this process's environment, so ``CI=1`` set here
reaches them. The ``python3`` kernel is started with this interpreter (jupyter_client replaces a
kernelspec's bare ``python`` by ``sys.executable``), so the notebooks import the package under
test. A cell that raises fails the test with the cell's traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
import pytest
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

TUTORIALS = Path(__file__).resolve().parents[1] / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("*.ipynb"))


def test_python3_kernel_is_this_interpreter():
    cmd = KernelManager(kernel_name="python3").format_kernel_cmd()
    assert Path(cmd[0]).parent == Path(sys.executable).parent, (
        f"the python3 kernel would run {cmd[0]}, not this environment's {sys.executable}"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_tutorial_runs(path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CI", "1")
    # These models are tiny: one BLAS/OpenMP thread is faster, and far faster on a busy machine.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(TUTORIALS)}},
    )
    client.execute()  # its time is --durations' business, not an assert's
