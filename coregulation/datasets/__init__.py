"""Bundled example data (each file with its origin and licence in README.md here)."""

from __future__ import annotations

import json
from importlib import resources

import numpy as np
import pandas as pd
import xarray as xr

from coregulation import data as _data


def demo_dyad() -> tuple[xr.Dataset, dict]:
    """The synthetic demo session: one therapist-client dyad, 20 min of heart rate at 1 s.

    Simulated from a CT-VAR with therapist->client coupling only (``make_demo_data``
    in ``coregulation.datasets._make`` regenerates it bit for bit).  Returns the data
    contract and the true parameters (standardised scale).
    """
    folder = resources.files(__name__)
    ds = _data.read_csv(folder / "demo_dyad.csv", signal="heart_rate", unit="bpm")
    truth = json.loads((folder / "demo_dyad_truth.json").read_text())
    return ds, {k: np.asarray(v) if isinstance(v, list) else v for k, v in truth.items()}


def demo_study() -> tuple[xr.Dataset, pd.DataFrame]:
    """The synthetic demo study: 20 therapist-client dyads x 2 sessions, 5 min each.

    Heart rate at 1 s from a CT-VAR with mixed, known coupling: five dyads each
    therapist-led (therapist->client 0.5), client-led (client->therapist 0.5),
    mutual (0.35 both ways) and uncoupled.  Regenerate with
    ``python -m coregulation.datasets._make``.  Returns the data contract and the
    per-dyad truth.
    """
    folder = resources.files(__name__)
    df = pd.read_csv(folder / "demo_study.csv.gz")
    ds = _data.from_long(df, signal="heart_rate", unit="bpm")
    truth = pd.read_csv(folder / "demo_study_truth.csv")
    return ds, truth
