"""Bundled real datasets: the loaders return the raw values, documented preprocessing only."""

from __future__ import annotations

import gzip
from importlib import resources

import numpy as np
import pandas as pd
import pytest

import coregulation.datasets as datasets

REAL = resources.files("coregulation.datasets").joinpath("real")


def test_couples_dial_keeps_every_value():
    ds = datasets.couples_dial()
    raw = pd.read_csv(REAL / "rties" / "rties_ExampleDataFull_timeseries.csv.gz")
    assert ds.attrs["excluded_dyads"] == "19"  # the couple whose male series copies the female's
    assert ds.sizes["dyad"] == 79 and list(ds["role"].values) == ["female", "male"]
    assert ds.attrs["sampling"] == "epoch_mean"
    kept = raw[raw["couple"] != 19]
    # every kept rating is in the dataset at its time, and nothing else is observed
    assert int(np.isfinite(ds["y"].values).sum()) == int(kept["dial"].notna().sum())
    for couple in (2, 57, 110):
        for role, flag in (("female", 1), ("male", 0)):
            rows = kept[(kept["couple"] == couple) & (kept["female"] == flag)]
            got = ds["y"].sel(dyad=couple, role=role).isel(session=0).values
            times = ds["time"].sel(dyad=couple).isel(session=0).values
            np.testing.assert_array_equal(times[: len(rows)], 2.0 * (rows["time"].values - 1))
            np.testing.assert_array_equal(got[: len(rows)], rows["dial"].values)
    persons = pd.read_csv(REAL / "rties" / "rties_ExampleDataFull_personvars.csv")
    love = persons[(persons["couple"] == 57) & (persons["female"] == 0)]["love"].item()
    assert float(ds["x"].sel(dyad=57, covariate="love_male")) == love
    kept_all = datasets.couples_dial(drop_duplicated=False)
    assert kept_all.sizes["dyad"] == 80 and kept_all.attrs["excluded_dyads"] == ""


def _raw_motion(name):
    group = "normal" if name.startswith("2") else "dropout"
    with gzip.open(REAL / "rmea" / group / f"{name}.txt.gz", "rt") as handle:
        return pd.read_csv(handle, sep=r"\s+")


def test_motion_energy_raw_frames_match_the_readme_check_values():
    ds = datasets.motion_energy(hz=25, smooth_seconds=0, transform=None)
    assert ds.sizes["dyad"] == 20 and ds.sizes["time"] == 15000
    assert ds.attrs["sampling"] == "point"
    # rMEA's README: % of frames with motion > 0 (patient / therapist)
    for name, patient, therapist in (("200_01", 50.1, 59.5), ("203_01", 97.4, 73.1),
                                     ("100_01", 85.0, 97.2)):
        y = ds["y"].sel(dyad=name).isel(session=0)
        assert 100 * float((y.sel(role="patient") > 0).mean()) == pytest.approx(patient, abs=0.05)
        assert 100 * float((y.sel(role="therapist") > 0).mean()) == pytest.approx(therapist,
                                                                                abs=0.05)
    dropout = ds["x"].sel(covariate="dropout").to_series()
    assert dropout[[d for d in dropout.index if d.startswith("1")]].eq(1).all()
    assert dropout[[d for d in dropout.index if d.startswith("2")]].eq(0).all()


def test_motion_energy_preprocessing_by_hand():
    ds = datasets.motion_energy()  # 2-s centred moving average, 1-Hz block means, log1p
    raw = _raw_motion("205_01")[["th", "pat"]].to_numpy(dtype=float)
    smooth = pd.DataFrame(raw).rolling(50, center=True, min_periods=1).mean().to_numpy()
    second = 37
    expected = np.log1p(smooth[25 * second : 25 * (second + 1)].mean(axis=0))
    got = ds["y"].sel(dyad="205_01").isel(session=0, time=second).values
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert float(ds["time"].sel(dyad="205_01").isel(session=0, time=second)) == second
    with pytest.raises(ValueError, match="hz must divide 25"):
        datasets.motion_energy(hz=3)
    with pytest.raises(ValueError, match="transform must be"):
        datasets.motion_energy(transform="sqrt")
