"""Lagged and windowed cross-correlation, SUSY and pseudo-dyads (METHODS.md §1.5).

Lag convention, everywhere in this module: at lag ``k`` the therapist at time ``t``
is paired with the client at ``t + k``.  Positive lags are therapist-led (the
client follows), negative lags client-led.  (R's ``ccf(a, b)`` uses the opposite
sign: its negative lags are where the first series leads.)
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pandas as pd
import xarray as xr

_R_CLIP = 1.0 - 1e-12


def _series(name: str, values) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional (one value per time step); "
                         f"got shape {arr.shape}.")
    return arr


def _pair(therapist, client) -> tuple[np.ndarray, np.ndarray]:
    x, y = _series("therapist", therapist), _series("client", client)
    if x.shape != y.shape:
        raise ValueError(
            f"therapist and client must have the same length (one shared time grid); got "
            f"{x.size} and {y.size}."
        )
    return x, y


def _lag_count(name: str, value, n: int) -> int:
    if not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer number of samples; got {value!r}.")
    if value > n - 3:
        raise ValueError(f"{name}={value} leaves fewer than 3 overlapping pairs in {n} samples.")
    return int(value)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r over the pairs where both are observed; NaN below 3 pairs or no variance."""
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3:
        return np.nan
    a, b = a[ok] - a[ok].mean(), b[ok] - b[ok].mean()
    denom = np.sqrt(np.dot(a, a) * np.dot(b, b))
    return float(np.dot(a, b) / denom) if denom > 0 else np.nan


def _shifted(x: np.ndarray, y: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (x[t], y[t + k]) over the overlap."""
    n = x.size
    return (x[: n - k], y[k:]) if k >= 0 else (x[-k:], y[: n + k])


def _fisher(r):
    return np.arctanh(np.clip(r, -_R_CLIP, _R_CLIP))


# ----------------------------------------------------------------------------------
# lagged cross-correlation
# ----------------------------------------------------------------------------------


def cross_correlation(therapist, client, max_lag: int) -> pd.Series:
    """Pearson correlation of therapist(t) with client(t + k) for k = -max_lag ... max_lag.

    Each lag uses the overlapping pairs where both values are observed (its own
    means and SDs); NaN where fewer than 3 pairs remain or a side is constant.
    ``max_lag`` is in samples.  Returns a Series indexed by ``lag``.

    Examples
    --------
    >>> import numpy as np
    >>> from coregulation import synchrony
    >>> rng = np.random.default_rng(0)
    >>> therapist = rng.standard_normal(600)
    >>> client = np.roll(therapist, 3) + 0.5 * rng.standard_normal(600)  # 3 samples behind
    >>> r = synchrony.cross_correlation(therapist, client, max_lag=5)
    >>> int(r.idxmax()), round(float(r.max()), 1)
    (3, 0.9)
    """
    x, y = _pair(therapist, client)
    max_lag = _lag_count("max_lag", max_lag, x.size)
    lags = np.arange(-max_lag, max_lag + 1)
    values = [_pearson(*_shifted(x, y, int(k))) for k in lags]
    return pd.Series(values, index=pd.Index(lags, name="lag"), name="r")


def lead_lag(therapist, client, max_lag: int, *, fisher: bool = True,
             absolute: bool = False) -> pd.Series:
    """Therapist-led and client-led synchrony from the lagged cross-correlation.

    ``therapist_led``: mean over lags 1 ... max_lag (client follows the therapist);
    ``client_led``: mean over lags -max_lag ... -1; ``concurrent``: lag 0;
    ``asymmetry`` = therapist_led - client_led.  Correlations are Fisher-z
    transformed before averaging (``fisher=True``) and taken in absolute value
    with ``absolute=True`` (as in SUSY's default).

    Examples
    --------
    >>> import numpy as np
    >>> from coregulation import synchrony
    >>> rng = np.random.default_rng(0)
    >>> therapist = rng.standard_normal(600)
    >>> client = np.roll(therapist, 3) + 0.5 * rng.standard_normal(600)
    >>> index = synchrony.lead_lag(therapist, client, max_lag=5)
    >>> bool(index["asymmetry"] > 0)  # therapist-led: the client follows
    True
    """
    r = cross_correlation(therapist, client, max_lag)
    if max_lag < 1:
        raise ValueError("max_lag must be at least 1 to separate therapist-led from client-led lags.")
    values = r.to_numpy()
    values = _fisher(values) if fisher else values
    values = np.abs(values) if absolute else values
    lags = r.index.to_numpy()
    t_led = float(np.nanmean(values[lags > 0]))
    c_led = float(np.nanmean(values[lags < 0]))
    return pd.Series({
        "therapist_led": t_led,
        "client_led": c_led,
        "concurrent": float(values[lags == 0][0]),
        "asymmetry": t_led - c_led,
    })


# ----------------------------------------------------------------------------------
# windowed cross-correlation (Boker et al. 2002)
# ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class WindowedCrossCorrelation:
    """Correlations per window and lag, and the peak picked in each window."""

    r: xr.DataArray  # (window_start, lag)
    peak_r: np.ndarray  # per window; NaN where no local peak
    peak_lag: np.ndarray  # per window (samples); NaN where no local peak

    def summary(self) -> pd.Series:
        """Mean and SD of the peak correlation and of the peak lag; share of windows with a peak."""
        found = np.isfinite(self.peak_r)
        return pd.Series({
            "mean_peak_r": float(np.nanmean(self.peak_r)) if found.any() else np.nan,
            "sd_peak_r": float(np.nanstd(self.peak_r, ddof=1)) if found.sum() > 1 else np.nan,
            "mean_peak_lag": float(np.nanmean(self.peak_lag)) if found.any() else np.nan,
            "sd_peak_lag": float(np.nanstd(self.peak_lag, ddof=1)) if found.sum() > 1 else np.nan,
            "share_with_peak": float(found.mean()),
            "windows": int(found.size),
        })


def windowed_cross_correlation(
    therapist, client, *, window: int, max_lag: int, window_step: int | None = None,
    lag_step: int = 1,
) -> WindowedCrossCorrelation:
    """Windowed cross-correlation ``r(t, k) = corr(T[t : t+w], C[t+k : t+k+w])``.

    Boker, Rotondo, Xu & King (2002): window size ``window`` (w_max), window
    increment ``window_step`` (w_inc, default ``window // 2``), maximum lag
    ``max_lag`` (tau_max) and lag increment ``lag_step`` (tau_inc), all in samples.
    Window starts run from ``max_lag`` so that every lag of every window lies inside
    the series.  Missing values are dropped pairwise within each window.  Peaks:
    :func:`pick_peaks`.
    """
    x, y = _pair(therapist, client)
    n = x.size
    for name, value in (("window", window), ("lag_step", lag_step)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer number of samples; got {value!r}.")
    if window < 3:
        raise ValueError(f"window must be at least 3 samples; got {window}.")
    window_step = max(window // 2, 1) if window_step is None else window_step
    if not isinstance(window_step, (int, np.integer)) or window_step < 1:
        raise ValueError(f"window_step must be a positive integer; got {window_step!r}.")
    if not isinstance(max_lag, (int, np.integer)) or max_lag < 0:
        raise ValueError(f"max_lag must be a non-negative integer; got {max_lag!r}.")
    if window + 2 * max_lag > n:
        raise ValueError(
            f"window ({window}) + 2 * max_lag ({max_lag}) exceeds the series length ({n})."
        )
    lags = np.arange(-(max_lag // lag_step) * lag_step, max_lag + 1, lag_step)
    starts = np.arange(max_lag, n - window - max_lag + 1, window_step)
    r = np.full((starts.size, lags.size), np.nan)
    for i, t in enumerate(starts):
        xs = x[t : t + window]
        for j, k in enumerate(lags):
            r[i, j] = _pearson(xs, y[t + k : t + k + window])
    da = xr.DataArray(r, dims=("window_start", "lag"),
                      coords={"window_start": starts, "lag": lags}, name="r")
    peak_r, peak_lag = pick_peaks(r, lags)
    return WindowedCrossCorrelation(da, peak_r, peak_lag)


def pick_peaks(r, lags) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``r`` (window, lag): the local maximum nearest lag 0.

    A local maximum is an interior lag whose r is at least that of both neighbours
    and above at least one of them (an edge value is not a peak: the true peak may
    lie beyond the searched range).  Equally near peaks on both sides: the larger r.
    Rows without a peak give NaN.
    """
    r = np.atleast_2d(np.asarray(r, dtype=float))
    lags = np.asarray(lags, dtype=float)
    if r.shape[-1] != lags.size:
        raise ValueError(f"r has {r.shape[-1]} lags per row but lags has {lags.size}.")
    peak_r = np.full(r.shape[0], np.nan)
    peak_lag = np.full(r.shape[0], np.nan)
    for i, row in enumerate(r):
        mid, left, right = row[1:-1], row[:-2], row[2:]
        with np.errstate(invalid="ignore"):
            is_peak = (mid >= left) & (mid >= right) & ((mid > left) | (mid > right))
        is_peak &= np.isfinite(mid) & np.isfinite(left) & np.isfinite(right)
        idx = np.flatnonzero(is_peak) + 1
        if idx.size == 0:
            continue
        order = np.lexsort((-row[idx], np.abs(lags[idx])))
        best = idx[order[0]]
        peak_r[i], peak_lag[i] = row[best], lags[best]
    return peak_r, peak_lag


# ----------------------------------------------------------------------------------
# SUSY (surrogate synchrony)
# ----------------------------------------------------------------------------------


def _ccf_biased(a: np.ndarray, b: np.ndarray, max_lag: int) -> np.ndarray:
    """R's ``ccf`` estimate (1/n normalisation, whole-segment means), in our lag convention.

    Entry for lag k (k = -max_lag ... max_lag) pairs therapist a[t] with client b[t+k].
    """
    n = a.size
    a = a - a.mean()
    b = b - b.mean()
    denom = np.sqrt(np.dot(a, a) * np.dot(b, b))
    if not denom > 0:
        return np.full(2 * max_lag + 1, np.nan)
    out = np.empty(2 * max_lag + 1)
    for j, k in enumerate(range(-max_lag, max_lag + 1)):
        out[j] = np.dot(a[: n - k], b[k:]) if k >= 0 else np.dot(a[-k:], b[: n + k])
    return out / denom


@dataclasses.dataclass(frozen=True)
class SusyResult:
    """SUSY profiles (per lag) and indices; lags in samples, our lag convention."""

    profiles: pd.DataFrame  # index lag; z_real, z_pseudo, z_real_signed, z_pseudo_signed
    num_segments: int
    num_surrogates: int
    n: int

    def _es(self, real, pseudo):
        sd = np.std(pseudo, ddof=1)
        return float((np.mean(real) - np.mean(pseudo)) / sd) if sd > 0 else np.nan

    def summary(self) -> pd.Series:
        """The SUSY indices: Z, Z_pseudo, ES, lead versions, signed (no-abs) versions."""
        p = self.profiles
        lag = p.index.to_numpy()
        real, pseudo = p["z_real"].to_numpy(), p["z_pseudo"].to_numpy()
        real_s, pseudo_s = p["z_real_signed"].to_numpy(), p["z_pseudo_signed"].to_numpy()
        t_led, c_led = lag > 0, lag < 0
        return pd.Series({
            "Z": float(np.mean(real)),
            "Z_pseudo": float(np.mean(pseudo)),
            "ES": self._es(real, pseudo),
            "Z_therapist_leads": float(np.mean(real[t_led])),
            "Z_client_leads": float(np.mean(real[c_led])),
            "ES_therapist_leads": self._es(real[t_led], pseudo[t_led]),
            "ES_client_leads": self._es(real[c_led], pseudo[c_led]),
            "percent_above_pseudo": float(100 * np.mean(real > pseudo)),
            "Z_signed": float(np.mean(real_s)),
            "Z_pseudo_signed": float(np.mean(pseudo_s)),
            "ES_signed": self._es(real_s, pseudo_s),
            "in_phase": float(np.mean(real_s[real_s >= 0])) if (real_s >= 0).any() else np.nan,
            "anti_phase": float(np.mean(real_s[real_s < 0])) if (real_s < 0).any() else np.nan,
            "segments": self.num_segments,
            "surrogates": self.num_surrogates,
            "n": self.n,
        })


def susy(therapist, client, *, segment: float, hz: float, max_lag: float = 3.0,
         surrogates: int | None = None, seed: int | None = None) -> SusyResult:
    """Surrogate synchrony by segment shuffling (Tschacher & Meier 2020).

    Rows where either series is missing are dropped (as SUSY does); the rest is cut
    into ``K = n // (segment * hz)`` segments (the remainder is discarded).  Each
    segment pair (therapist segment i, client segment h) gets the cross-correlation
    at lags -max_lag ... max_lag seconds (R's ``ccf`` estimator), Fisher-z
    transformed.  Real pairs are i = h; surrogate pairs i != h: all K(K-1) of them,
    or ``surrogates`` of them drawn without replacement (then ``seed`` is required).
    Profiles average |z| (and signed z) over pairs per lag; ``ES = (mean Z_real -
    mean Z_pseudo) / SD(Z_pseudo)``, mean and SD over the lag profile.  Unlike R,
    pairs with a constant segment (undefined correlation) are left out of the
    averages rather than counted as zero.
    """
    x, y = _pair(therapist, client)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    n = x.size
    for name, value in (("segment", segment), ("hz", hz)):
        if not (np.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be positive; got {value!r}.")
    if not (np.isfinite(max_lag) and max_lag >= 0):
        raise ValueError(f"max_lag must be non-negative seconds; got {max_lag!r}.")
    seg_len = int(round(segment * hz))
    lag_len = int(round(max_lag * hz))
    if segment < 2 * max_lag:
        raise ValueError(f"segment ({segment} s) must be at least 2 * max_lag ({2 * max_lag} s).")
    if lag_len < 1:
        raise ValueError(f"max_lag * hz must be at least one sample; got {max_lag} * {hz}.")
    num_segments = n // seg_len if seg_len else 0
    if num_segments < 2:
        raise ValueError(
            f"{n} complete rows make {num_segments} segment(s) of {seg_len} samples; SUSY needs "
            "at least 2 (shorten segment= or pass longer series)."
        )
    a = x[: num_segments * seg_len].reshape(num_segments, seg_len)
    b = y[: num_segments * seg_len].reshape(num_segments, seg_len)
    pairs = [(i, h) for i, h in itertools.product(range(num_segments), repeat=2) if i != h]
    if surrogates is not None:
        if not isinstance(surrogates, (int, np.integer)) or surrogates < 2:
            raise ValueError(f"surrogates must be an integer >= 2 or None; got {surrogates!r}.")
        if seed is None:
            raise ValueError("surrogates= draws a random subset of segment pairs: pass seed=.")
        if surrogates < len(pairs):
            chosen = np.random.default_rng(seed).choice(len(pairs), surrogates, replace=False)
            pairs = [pairs[c] for c in np.sort(chosen)]
    real = np.array([_fisher(_ccf_biased(a[i], b[i], lag_len)) for i in range(num_segments)])
    pseudo = np.array([_fisher(_ccf_biased(a[i], b[h], lag_len)) for i, h in pairs])
    lags = np.arange(-lag_len, lag_len + 1)
    profiles = pd.DataFrame(
        {
            "z_real": np.nanmean(np.abs(real), axis=0),
            "z_pseudo": np.nanmean(np.abs(pseudo), axis=0),
            "z_real_signed": np.nanmean(real, axis=0),
            "z_pseudo_signed": np.nanmean(pseudo, axis=0),
        },
        index=pd.Index(lags, name="lag"),
    )
    return SusyResult(profiles, num_segments, len(pairs), n)


# ----------------------------------------------------------------------------------
# pseudo-dyads
# ----------------------------------------------------------------------------------


def pseudo_dyads(data: xr.Dataset, *, seed: int | None = None,
                 all_pairs: bool = False) -> xr.Dataset:
    """Therapists paired with other dyads' clients (METHODS.md §3.4 d).

    With ``all_pairs=False`` each dyad's therapist gets the client of another dyad by
    a random derangement (``seed`` required); with ``all_pairs=True`` every ordered
    pair of different dyads appears (for a permutation distribution).  Sessions are
    matched by label, aligned at session start and cut to the shorter of the two;
    times are the therapist's.  Dyad labels read ``"{therapist dyad}|{client dyad}"``;
    ``x`` (dyad covariates) is not carried over.  Returns the data contract.
    """
    from coregulation import data as data_module

    if not isinstance(data, xr.Dataset) or "y" not in data:
        raise TypeError("data must be a data-contract Dataset with y(dyad, session, time, role).")
    dyads = list(data["dyad"].values)
    if len(dyads) < 2:
        raise ValueError(f"pseudo-dyads need at least 2 dyads; this data has {len(dyads)}.")
    num = len(dyads)
    if all_pairs:
        pairing = [(i, j) for i in range(num) for j in range(num) if i != j]
    else:
        if seed is None:
            raise ValueError("pseudo_dyads draws a random pairing: pass seed= (or all_pairs=True).")
        rng = np.random.default_rng(seed)
        while True:
            perm = rng.permutation(num)
            if np.all(perm != np.arange(num)):
                break
        pairing = [(i, int(perm[i])) for i in range(num)]
    y = data["y"].values
    t = data["time"].values
    sessions = list(data["session"].values)
    length = y.shape[2]
    out_y = np.full((len(pairing), len(sessions), length, 2), np.nan)
    out_t = np.full((len(pairing), len(sessions), length), np.nan)
    for p, (i, j) in enumerate(pairing):
        for s in range(len(sessions)):
            n_i = int(np.isfinite(t[i, s]).sum())
            n_j = int(np.isfinite(t[j, s]).sum())
            n = min(n_i, n_j)
            if n == 0:
                continue
            out_y[p, s, :n, 0] = y[i, s, :n, 0]
            out_y[p, s, :n, 1] = y[j, s, :n, 1]
            out_t[p, s, :n] = t[i, s, :n]
    labels = [f"{_plain(dyads[i])}|{_plain(dyads[j])}" for i, j in pairing]
    # a session present for one partner only leaves an empty pseudo-session: drop
    # sessions that are empty for every pseudo-dyad, keep the rest NaN-padded
    present = np.isfinite(out_t).any(axis=2)
    if not present.any():
        raise ValueError("no session label is shared by any two dyads; nothing to pair.")
    attrs = {k: v for k, v in data.attrs.items() if k in ("signal", "unit", "sampling")}
    fill_t = np.where(np.isfinite(out_t), out_t, np.nan)
    return data_module.from_arrays(
        out_y, fill_t, roles=tuple(str(r) for r in data["role"].values), dyads=labels,
        sessions=[_plain(s) for s in sessions], **attrs,
    )


def _plain(value):
    return value.item() if hasattr(value, "item") else value
