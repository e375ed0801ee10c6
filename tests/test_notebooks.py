"""Every notebook runs top to bottom in smoke mode (tiny data and draws), so none can rot.

Each runs as a script in a fresh interpreter (jupytext percent files are plain
Python), with its figures written to a temporary folder.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).parents[1] / "notebooks").glob("[0-9][0-9]_*.py"))


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_smoke_mode(notebook, tmp_path):
    env = {**os.environ, "COREG_SMOKE": "1", "COREG_OUT": str(tmp_path), "MPLBACKEND": "Agg"}
    result = subprocess.run([sys.executable, str(notebook)], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    figures = list(tmp_path.glob("*.png"))
    assert figures, "the notebook wrote no figure"
    assert all(f.stat().st_size > 5_000 for f in figures)  # real plots, not empty canvases


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ holds no NN_*.py notebook"
