"""Synchrony baselines against small cases computed by hand and independent references."""

from __future__ import annotations

import jax
import numpy as np
import pandas as pd
import pytest
from statsmodels.tsa.stattools import ccf as statsmodels_ccf

import coregulation as cr
from coregulation.synchrony import (
    cross_correlation,
    lead_lag,
    pick_peaks,
    pseudo_dyads,
    susy,
    windowed_cross_correlation,
)
from tests.conftest import CTVAR_TRUTH


def test_cross_correlation_follower_and_pandas_reference(rng):
    wave = np.array([0.0, 1.0, 0.0, -1.0] * 6)
    client = np.r_[np.nan, wave[:-1]]  # the client repeats the therapist one step later
    r = cross_correlation(wave, client, 3)
    assert list(r.index) == [-3, -2, -1, 0, 1, 2, 3]
    assert r.loc[1] == pytest.approx(1.0)  # lag +1: therapist-led, exact copy
    assert r.loc[3] == pytest.approx(-1.0)  # a full half period further on
    assert r.loc[0] == pytest.approx(0.0, abs=1e-12)
    # any series with gaps: pandas' pairwise-complete correlation of shifted columns
    x, y = rng.normal(size=80), rng.normal(size=80)
    x[[3, 40]] = np.nan
    y[[7, 8, 60]] = np.nan
    got = cross_correlation(x, y, 5)
    for k in range(-5, 6):
        expected = pd.Series(x).corr(pd.Series(y).shift(-k))
        assert got.loc[k] == pytest.approx(expected, rel=1e-12)


def test_lead_lag_by_hand(rng):
    wave = np.array([0.0, 1.0, 0.0, -1.0] * 6)
    client = np.r_[np.nan, wave[:-1]]
    r = cross_correlation(wave, client, 2).to_numpy()
    raw = lead_lag(wave, client, 2, fisher=False)
    assert raw["therapist_led"] == pytest.approx((r[3] + r[4]) / 2)
    assert raw["client_led"] == pytest.approx((r[0] + r[1]) / 2)
    assert raw["concurrent"] == pytest.approx(r[2], abs=1e-12)
    assert raw["asymmetry"] == pytest.approx(raw["therapist_led"] - raw["client_led"])
    noisy = client + 0.5 * rng.normal(size=client.size)
    r = cross_correlation(wave, noisy, 2).to_numpy()
    z = lead_lag(wave, noisy, 2, absolute=True)
    assert z["client_led"] == pytest.approx(np.mean(np.abs(np.arctanh(r[:2]))))
    with pytest.raises(ValueError, match="max_lag must be at least 1"):
        lead_lag(wave, client, 0)
    with pytest.raises(ValueError, match="same length"):
        lead_lag(wave, client[:-1], 2)


def test_pick_peaks_by_hand():
    lags = np.array([-2, -1, 0, 1, 2])
    rows = np.array([
        [0.1, 0.5, 0.2, 0.6, 0.3],    # peaks at -1 and +1, equally near: the larger
        [0.1, 0.2, 0.3, 0.4, 0.5],    # monotone: the maximum is at the edge, no peak
        [0.0, 0.3, 0.9, 0.3, 0.0],    # peak at 0
        [0.2, 0.9, 0.1, 0.8, 0.95],   # -1 is a peak, +1 is not (0.8 < 0.95), +2 is an edge
        [0.4, 0.4, 0.4, 0.4, 0.4],    # flat: no peak
    ])
    peak_r, peak_lag = pick_peaks(rows, lags)
    np.testing.assert_array_equal(peak_lag, [1, np.nan, 0, -1, np.nan])
    np.testing.assert_array_equal(peak_r, [0.6, np.nan, 0.9, 0.9, np.nan])
    with pytest.raises(ValueError, match="lags has 4"):
        pick_peaks(rows, lags[:4])


def test_windowed_cross_correlation_equals_explicit_slices(rng):
    x = rng.normal(size=60)
    y = np.r_[rng.normal(size=2), x[:-2]] + 0.3 * rng.normal(size=60)
    w = windowed_cross_correlation(x, y, window=12, max_lag=4, window_step=5)
    assert list(w.r["window_start"].values) == list(range(4, 60 - 12 - 4 + 1, 5))
    assert list(w.r["lag"].values) == list(range(-4, 5))
    for t in w.r["window_start"].values:
        for k in w.r["lag"].values:
            expected = np.corrcoef(x[t : t + 12], y[t + k : t + k + 12])[0, 1]
            assert float(w.r.sel(window_start=t, lag=k)) == pytest.approx(expected, rel=1e-12)
    # the client follows at lag 2: that is where most windows peak
    assert np.nanmedian(w.peak_lag) == 2
    summary = w.summary()
    assert summary["windows"] == w.r.sizes["window_start"]
    assert summary["mean_peak_r"] == pytest.approx(np.nanmean(w.peak_r))
    with pytest.raises(ValueError, match="exceeds the series length"):
        windowed_cross_correlation(x, y, window=50, max_lag=6)


def test_susy_profiles_by_hand_against_statsmodels(rng):
    hz, segment, max_lag = 2.0, 10.0, 2.0  # 20 samples per segment, lags -4..4
    x = rng.normal(size=65)  # 3 segments of 20, 5 left over
    y = 0.6 * np.r_[0.0, x[:-1]] + rng.normal(size=65)
    x[30] = np.nan  # a missing row is dropped from both series before segmenting
    result = susy(x, y, segment=segment, hz=hz, max_lag=max_lag)
    keep = np.isfinite(x)
    a, b = x[keep][:60].reshape(3, 20), y[keep][:60].reshape(3, 20)

    def profile(i, h):
        # statsmodels' ccf(u, v)[k] pairs u[t + k] with v[t] (1/n normalisation)
        ahead = statsmodels_ccf(b[h], a[i], adjusted=False, fft=False)[:5]   # lags 0..4
        behind = statsmodels_ccf(a[i], b[h], adjusted=False, fft=False)[:5]  # lags 0..-4
        return np.arctanh(np.r_[behind[:0:-1], ahead])

    real = np.array([profile(i, i) for i in range(3)])
    pseudo = np.array([profile(i, h) for i in range(3) for h in range(3) if i != h])
    p = result.profiles
    np.testing.assert_allclose(p["z_real"], np.abs(real).mean(axis=0), rtol=1e-10)
    np.testing.assert_allclose(p["z_pseudo"], np.abs(pseudo).mean(axis=0), rtol=1e-10)
    np.testing.assert_allclose(p["z_real_signed"], real.mean(axis=0), rtol=1e-10)
    s = result.summary()
    zr, zp = np.abs(real).mean(axis=0), np.abs(pseudo).mean(axis=0)
    assert s["ES"] == pytest.approx((zr.mean() - zp.mean()) / zp.std(ddof=1))
    assert s["Z_therapist_leads"] == pytest.approx(zr[5:].mean())
    assert s["ES_client_leads"] == pytest.approx(
        (zr[:4].mean() - zp[:4].mean()) / zp[:4].std(ddof=1))
    assert (s["segments"], s["surrogates"], s["n"]) == (3, 6, 64)
    # the client follows by one sample: the signed profile peaks at lag +1
    assert p["z_real_signed"].idxmax() == 1


def test_susy_surrogate_subset_and_errors(rng):
    x, y = rng.normal(size=200), rng.normal(size=200)
    sub = susy(x, y, segment=10, hz=1, surrogates=30, seed=4)
    assert sub.num_surrogates == 30
    again = susy(x, y, segment=10, hz=1, surrogates=30, seed=4)
    pd.testing.assert_frame_equal(sub.profiles, again.profiles)
    with pytest.raises(ValueError, match="pass seed"):
        susy(x, y, segment=10, hz=1, surrogates=30)
    with pytest.raises(ValueError, match="at least 2 \\* max_lag"):
        susy(x, y, segment=4, hz=1, max_lag=3)
    with pytest.raises(ValueError, match="at least 2"):
        susy(x[:15], y[:15], segment=10, hz=1)


def test_pseudo_dyads_pair_other_dyads_clients():
    ds, _ = cr.simulate_dyads(cr.CTVAR(), CTVAR_TRUTH, jax.random.key(3), num_dyads=4,
                              num_sessions=2, duration=60)
    y, t = ds["y"].values.copy(), ds["time"].values.copy()
    y[2, 1, 40:], t[2, 1, 40:] = np.nan, np.nan  # dyad 2's second session is shorter
    short = cr.data.from_arrays(y, t, dyads=list(ds["dyad"].values))
    pseudo = pseudo_dyads(short, seed=7)
    assert pseudo.sizes["dyad"] == 4
    for label in pseudo["dyad"].values:
        i, j = (int(v) for v in str(label).split("|"))
        assert i != j
        for s in range(2):
            n = min(np.isfinite(t[i, s]).sum(), np.isfinite(t[j, s]).sum())
            got = pseudo["y"].sel(dyad=label).values[s]
            np.testing.assert_array_equal(got[:n, 0], y[i, s, :n, 0])
            np.testing.assert_array_equal(got[:n, 1], y[j, s, :n, 1])
            assert np.isnan(got[n:]).all()
    assert list(pseudo_dyads(short, seed=7)["dyad"].values) == list(pseudo["dyad"].values)
    every = pseudo_dyads(short, all_pairs=True)
    assert every.sizes["dyad"] == 12
    with pytest.raises(ValueError, match="pass seed"):
        pseudo_dyads(short)
    with pytest.raises(ValueError, match="at least 2 dyads"):
        pseudo_dyads(short.isel(dyad=[0]))
