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


# ----------------------------------------------------------------------------------
# real data (licences and origins in real/README.md)
# ----------------------------------------------------------------------------------

COUPLES_ROLES = ("female", "male")
MOTION_ROLES = ("therapist", "patient")


def _real(*parts):
    return resources.files(__name__).joinpath("real", *parts)


def couples_dial(*, drop_duplicated: bool = True) -> xr.Dataset:
    """Couples' emotional experience by rating dial (rties, 80 couples, 2-s units; real).

    Each partner rated their own emotional experience while re-watching the couple's
    conversation; the values are 2-second aggregates, so the dataset is marked
    ``sampling="epoch_mean"``.  Roles ``("female", "male")``: fit with
    ``CTVAR(roles=COUPLES_ROLES)``.  Time is seconds from the start, ``2 * (step - 1)``.
    Partners' series of unequal length are aligned by step and NaN-padded; the 24
    missing dial values stay NaN.  ``x(dyad, covariate)`` holds the person-level
    variables of both partners as ``{variable}_{role}`` (e.g. ``love_female``).

    In couple 19 the male partner's series is an exact copy of the female's (the
    rties vignette removes this couple as having one partner missing): it carries no
    second person.  ``drop_duplicated=True`` (default) leaves out every couple whose
    two series are identical and lists them in ``attrs["excluded_dyads"]``;
    ``False`` keeps them.
    """
    df = pd.read_csv(_real("rties", "rties_ExampleDataFull_timeseries.csv.gz"))
    df["role"] = np.where(df["female"] == 1, "female", "male")
    df["seconds"] = 2.0 * (df["time"] - 1.0)
    excluded = []
    if drop_duplicated:
        for couple, rows in df.groupby("couple", sort=False):
            female = rows.loc[rows["role"] == "female", "dial"].to_numpy()
            male = rows.loc[rows["role"] == "male", "dial"].to_numpy()
            if female.shape == male.shape and np.array_equal(female, male, equal_nan=True):
                excluded.append(int(couple))
        df = df[~df["couple"].isin(excluded)]
    ds = _data.from_long(df, dyad="couple", session=None, time="seconds", role="role",
                         value="dial", roles=COUPLES_ROLES, signal="emotional_experience",
                         unit="dial rating", sampling="epoch_mean")
    persons = pd.read_csv(_real("rties", "rties_ExampleDataFull_personvars.csv"))
    persons["role"] = np.where(persons["female"] == 1, "female", "male")
    variables = [c for c in persons.columns if c not in ("couple", "person", "female", "role")]
    wide = persons.pivot(index="couple", columns="role", values=variables)
    wide.columns = [f"{var}_{role}" for var, role in wide.columns]
    wide = wide.reindex([int(d) for d in ds["dyad"].values])
    ds["x"] = (("dyad", "covariate"), wide.to_numpy(dtype=float))
    ds = ds.assign_coords(covariate=list(wide.columns))
    ds.attrs["excluded_dyads"] = ",".join(str(c) for c in excluded)
    ds.attrs["source"] = "rties 5.0.0 rties_ExampleDataFull (GPL-3); see datasets/real/README.md"
    return ds


def motion_energy(*, hz: float = 1.0, smooth_seconds: float = 2.0,
                  transform: str | None = "log1p") -> xr.Dataset:
    """Patient-therapist motion energy of 20 intake interviews (rMEA, 25 Hz, 10 min; real).

    Preprocessing, in order (each step documented so results can be reproduced):

    1. a centred moving average over ``smooth_seconds`` (0 skips it), as rMEA's
       smoothing step does, to damp frame-to-frame jitter of frame differencing;
    2. downsampling to ``hz`` by averaging non-overlapping blocks of ``25 / hz``
       frames (so the dataset is ``sampling="epoch_mean"``; ``hz=25`` keeps frames);
    3. ``transform="log1p"`` (default) for the heavy right tail and the many exact
       zeros; ``None`` keeps motion-energy units.

    Roles ``("therapist", "patient")``; dyads ``"200_01"`` etc.; the dyad covariate
    ``dropout`` is 1 for the ten patients who dropped out of therapy (files 1xx),
    0 for those who continued (2xx).
    """
    frames_per_block = 25.0 / hz if hz > 0 else np.nan
    if not (np.isfinite(frames_per_block) and frames_per_block >= 1
            and abs(frames_per_block - round(frames_per_block)) < 1e-9):
        raise ValueError(f"hz must divide 25 (e.g. 25, 5, 1, 0.5); got {hz!r}.")
    frames_per_block = int(round(frames_per_block))
    if not (np.isfinite(smooth_seconds) and smooth_seconds >= 0):
        raise ValueError(f"smooth_seconds must be >= 0; got {smooth_seconds!r}.")
    if transform not in (None, "log1p"):
        raise ValueError(f"transform must be 'log1p' or None; got {transform!r}.")
    window = int(round(smooth_seconds * 25.0))
    series, labels, dropout = [], [], []
    for group, flag in (("normal", 0.0), ("dropout", 1.0)):
        folder = _real("rmea", group)
        for entry in sorted(folder.iterdir(), key=lambda p: p.name):
            if not entry.name.endswith(".txt.gz"):
                continue
            table = pd.read_csv(entry, sep=r"\s+", compression="gzip")
            raw = table[["th", "pat"]].to_numpy(dtype=float)
            if window > 1:
                raw = (pd.DataFrame(raw).rolling(window, center=True, min_periods=1)
                       .mean().to_numpy())
            blocks = raw.shape[0] // frames_per_block
            raw = raw[: blocks * frames_per_block].reshape(blocks, frames_per_block, 2)
            values = raw.mean(axis=1)
            series.append(np.log1p(values) if transform == "log1p" else values)
            labels.append(entry.name.removesuffix(".txt.gz"))
            dropout.append(flag)
    length = max(s.shape[0] for s in series)
    y = np.full((len(series), 1, length, 2), np.nan)
    t = np.full((len(series), 1, length), np.nan)
    for i, s in enumerate(series):
        y[i, 0, : s.shape[0]] = s
        t[i, 0, : s.shape[0]] = np.arange(s.shape[0]) / hz
    ds = _data.from_arrays(
        y, t, roles=MOTION_ROLES, dyads=labels, x=np.asarray(dropout)[:, None],
        covariates=["dropout"], signal="motion_energy",
        unit="log1p(motion energy)" if transform == "log1p" else "motion energy",
        sampling="epoch_mean" if frames_per_block > 1 else "point",
    )
    ds.attrs["preprocessing"] = (
        f"moving average {smooth_seconds} s; block means to {hz} Hz; transform {transform}"
    )
    ds.attrs["source"] = "rMEA 1.3.0 inst/extdata (GPL-3); see datasets/real/README.md"
    return ds
