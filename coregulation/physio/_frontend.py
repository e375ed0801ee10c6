"""Raw ECG, EDA and respiration -> epoch series of both persons -> the data contract.

Each ``*_epochs`` function takes one person's raw signal and returns a DataFrame on
an epoch grid (``epoch_start`` in seconds from the recording start) with the
feature, its quality measures and ``ok``.  Epochs that fail the quality checks are
NaN in the feature column, never filled in.  :func:`dyad_dataset` puts both persons
on one clock (start offsets, different sampling rates) and returns the data
contract with ``sampling="epoch_mean"``: the values are epoch averages, and the
models treat them so (METHODS.md §1.1).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import scipy.interpolate
import scipy.signal
import xarray as xr

FEATURES = {
    "heart_rate": ("ecg", "bpm"),
    "ibi": ("ecg", "ms"),
    "rsa": ("ecg", "ln(ms^2)"),
    "hf_hrv": ("ecg", "ln(ms^2)"),
    "rsa_p2t": ("ecg", "ms"),  # needs the person's respiration too (spec key "rsp")
    "scl": ("eda", "uS"),
    "phasic": ("eda", "uS"),
    "respiration_rate": ("rsp", "breaths/min"),
    "respiration_amplitude": ("rsp", "a.u."),
}


def _neurokit():
    try:
        import neurokit2 as nk
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the physiology front end needs neurokit2: pip install 'coregulation[physio]' "
            f"(import failed: {err})."
        ) from err
    return nk


def _check_signal(name: str, signal, sampling_rate) -> np.ndarray:
    arr = np.asarray(signal, dtype=float)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional; got shape {arr.shape}.")
    if not (np.isfinite(sampling_rate) and sampling_rate > 0):
        raise ValueError(f"sampling_rate must be positive (Hz); got {sampling_rate!r}.")
    if arr.size < 10 * sampling_rate:
        raise ValueError(
            f"{name} has {arr.size} samples ({arr.size / sampling_rate:.1f} s at "
            f"{sampling_rate} Hz); the front end needs at least 10 s."
        )
    if not np.isfinite(arr).all():
        raise ValueError(
            f"{name} has {int((~np.isfinite(arr)).sum())} missing or infinite samples; the "
            "raw-signal processors need a continuous recording (cut it into pieces first)."
        )
    return arr


def _epoch_grid(num_samples: int, sampling_rate: float, epoch: float,
                starts=None) -> np.ndarray:
    """Epoch starts (s, recording clock): whole epochs from 0, or the given regular grid."""
    if not (np.isfinite(epoch) and epoch > 0):
        raise ValueError(f"epoch must be positive seconds; got {epoch!r}.")
    duration = num_samples / sampling_rate
    if starts is None:
        return np.arange(0.0, duration - epoch + 1e-9, epoch)
    starts = np.asarray(starts, dtype=float)
    if starts.size and (starts[0] < -1e-9 or starts[-1] + epoch > duration + 1e-9):
        raise ValueError(
            f"epoch_starts run from {starts[0]} to {starts[-1] + epoch} s; the recording "
            f"covers 0 to {duration} s."
        )
    return starts


def _epoch_index(times, starts, epoch):
    return np.floor((times - starts[0]) / epoch + 1e-9).astype(int)


def _epoch_means(times, values, starts, epoch):
    """Mean of ``values`` sampled at ``times`` within each epoch [start, start + epoch)."""
    index = _epoch_index(times, starts, epoch)
    keep = (index >= 0) & (index < starts.size) & np.isfinite(values)
    sums = np.bincount(index[keep], weights=values[keep], minlength=starts.size)
    counts = np.bincount(index[keep], minlength=starts.size)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan), counts


# ----------------------------------------------------------------------------------
# ECG
# ----------------------------------------------------------------------------------


def r_peaks(ecg, sampling_rate: float) -> tuple[np.ndarray, np.ndarray]:
    """R-peak sample indices after artefact correction, and which beats were corrected.

    neurokit2's cleaning and peak detection, then Kubios-style correction
    (``signal_fixpeaks``: missed, extra and ectopic beats); a beat counts as
    corrected when its position is not one of the detected peaks.
    """
    nk = _neurokit()
    ecg = _check_signal("ecg", ecg, sampling_rate)
    cleaned = nk.ecg_clean(ecg, sampling_rate=sampling_rate)
    _, info = nk.ecg_peaks(cleaned, sampling_rate=sampling_rate)
    detected = np.asarray(info["ECG_R_Peaks"], dtype=int)
    if detected.size < 3:
        raise ValueError("fewer than 3 R-peaks found in ecg; is it an ECG at this sampling_rate?")
    _, fixed = nk.signal_fixpeaks(detected, sampling_rate=sampling_rate, iterative=True,
                                  method="Kubios")
    fixed = np.unique(np.asarray(fixed, dtype=int))
    corrected = ~np.isin(fixed, detected)
    return fixed, corrected


def ecg_epochs(ecg, sampling_rate: float, *, epoch: float = 1.0, epoch_starts=None,
               max_corrected: float = 0.2, rsa_epoch: float = 30.0,
               rsp=None) -> pd.DataFrame:
    """Heart rate (bpm), inter-beat interval (ms), RSA and HF-HRV per epoch from a raw ECG.

    The instantaneous heart rate ``60 / IBI`` is a step function between beats; each
    epoch gets its time average (so epochs are averages, not point samples).  An
    epoch is bad (NaN) when more than ``max_corrected`` of the beats that touch it
    were corrected, or when it lies before the second or after the last beat.
    ``rsa`` is the Porges-Bohrer estimate (:func:`rsa_porges_bohrer`) of the
    ``rsa_epoch``-long epoch containing it, repeated over its ``epoch``s; ``hf_hrv``
    likewise (:func:`hf_hrv`).  With the same person's raw respiration ``rsp``
    (same sampling rate and clock), ``rsa_p2t`` is the peak-to-trough RSA
    (:func:`rsa_peak_to_trough`) of the ``rsa_epoch`` containing each epoch.
    """
    peaks, corrected = r_peaks(ecg, sampling_rate)
    n = np.asarray(ecg).size
    starts = _epoch_grid(n, sampling_rate, epoch, epoch_starts)
    beat_times = peaks / sampling_rate
    ibi = np.diff(beat_times)  # interval ending at beat k+1
    fine_rate = 20.0
    fine_t = np.arange(0.0, n / sampling_rate, 1.0 / fine_rate)
    k = np.searchsorted(beat_times, fine_t, side="right") - 1  # last beat at or before t
    inside = (k >= 0) & (k < ibi.size)
    ibi_at = np.where(inside, ibi[np.clip(k, 0, ibi.size - 1)], np.nan)
    hr, _ = _epoch_means(fine_t, 60.0 / ibi_at, starts, epoch)
    ibi_mean, _ = _epoch_means(fine_t, 1000.0 * ibi_at, starts, epoch)
    # share of corrected beats among the intervals overlapping each epoch
    bad_interval = (corrected[1:] | corrected[:-1]).astype(float)
    share, _ = _epoch_means(fine_t, np.where(inside, bad_interval[np.clip(k, 0, ibi.size - 1)],
                                             np.nan), starts, epoch)
    ok = np.isfinite(hr) & (share <= max_corrected)
    # only epochs fully covered by intervals between beats
    ok &= (starts >= beat_times[0]) & (starts + epoch <= beat_times[-1])
    rsa = rsa_porges_bohrer(beat_times, epoch=rsa_epoch)
    rsa_at = np.full(starts.size, np.nan)
    idx = np.floor(starts / rsa_epoch + 1e-9).astype(int)
    valid = idx < rsa.size
    rsa_at[valid] = rsa[idx[valid]]
    table = {
        "epoch_start": starts,
        "heart_rate": np.where(ok, hr, np.nan),
        "ibi": np.where(ok, ibi_mean, np.nan),
        "rsa": np.where(ok, rsa_at, np.nan),
        "hf_hrv": np.where(ok, _per_long_epoch(hf_hrv(beat_times, epoch=rsa_epoch), idx), np.nan),
    }
    if rsp is not None:
        rsp = _check_signal("rsp", rsp, sampling_rate)
        if rsp.size != n:
            raise ValueError(
                f"rsp must be recorded with the ecg (same clock and rate): {rsp.size} samples "
                f"against the ecg's {n}."
            )
        onsets, ends = breath_phases(rsp, sampling_rate)
        _, p2t = rsa_peak_to_trough(beat_times, onsets, ends, epoch=rsa_epoch)
        table["rsa_p2t"] = np.where(ok, _per_long_epoch(p2t, idx), np.nan)
    table["corrected_share"] = share
    table["ok"] = ok
    return pd.DataFrame(table)


def _per_long_epoch(values: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``values`` per long epoch, read at the long-epoch index of each short epoch."""
    out = np.full(idx.size, np.nan)
    valid = (idx >= 0) & (idx < values.size)
    out[valid] = values[idx[valid]]
    return out


def rsa_porges_bohrer(beat_times, *, epoch: float = 30.0) -> np.ndarray:
    """Porges-Bohrer RSA, ln(ms^2), per ``epoch`` from R-peak times (s).

    The IBI series (ms) is sampled every 500 ms (linear interpolation between
    beats), detrended by a 21-point moving cubic polynomial (Savitzky-Golay; at 2 Hz
    it removes periods above ~8 s and keeps the respiratory band), band-passed to
    0.12-0.40 Hz (4th-order Butterworth, zero phase), and the natural log of its
    variance is taken within each epoch.  Epochs not fully
    covered by beats are NaN.
    """
    beat_times = np.asarray(beat_times, dtype=float)
    if beat_times.size < 3:
        raise ValueError("RSA needs at least 3 beats.")
    ibi = 1000.0 * np.diff(beat_times)
    t_ibi = beat_times[1:]
    rate = 2.0
    t = np.arange(t_ibi[0], t_ibi[-1], 1.0 / rate)
    if t.size < 64:
        return np.full(int(beat_times[-1] // epoch), np.nan)
    series = np.interp(t, t_ibi, ibi)
    trend = scipy.signal.savgol_filter(series, 21, 3)
    sos = scipy.signal.butter(4, [0.12, 0.40], btype="bandpass", fs=rate, output="sos")
    band = scipy.signal.sosfiltfilt(sos, series - trend)
    num_epochs = int(beat_times[-1] // epoch)
    out = np.full(num_epochs, np.nan)
    for e in range(num_epochs):
        lo, hi = e * epoch, (e + 1) * epoch
        if lo < t[0] or hi > t[-1]:
            continue
        seg = band[(t >= lo) & (t < hi)]
        out[e] = np.log(np.var(seg)) if seg.size > 4 and np.var(seg) > 0 else np.nan
    return out


# ----------------------------------------------------------------------------------
# EDA and respiration
# ----------------------------------------------------------------------------------


def eda_epochs(eda, sampling_rate: float, *, epoch: float = 1.0, epoch_starts=None,
               flat_tolerance: float = 1e-4, clip_share: float = 0.5) -> pd.DataFrame:
    """Tonic skin-conductance level (SCL) and phasic activity per epoch from raw EDA.

    neurokit2's cleaning and tonic/phasic decomposition.  An epoch is bad (NaN) when
    the raw signal is flat in it (range below ``flat_tolerance``) or when more than
    ``clip_share`` of its samples sit at the recording's maximum or minimum
    (amplifier clipping).
    """
    nk = _neurokit()
    eda = _check_signal("eda", eda, sampling_rate)
    signals, _ = nk.eda_process(eda, sampling_rate=sampling_rate)
    t = np.arange(eda.size) / sampling_rate
    starts = _epoch_grid(eda.size, sampling_rate, epoch, epoch_starts)
    tonic, _ = _epoch_means(t, signals["EDA_Tonic"].to_numpy(), starts, epoch)
    phasic, _ = _epoch_means(t, signals["EDA_Phasic"].to_numpy(), starts, epoch)
    index = _epoch_index(t, starts, epoch)
    keep = (index >= 0) & (index < starts.size)
    high = np.full(starts.size, -np.inf)
    low = np.full(starts.size, np.inf)
    np.maximum.at(high, index[keep], eda[keep])
    np.minimum.at(low, index[keep], eda[keep])
    flat = (high - low) < flat_tolerance
    at_edge = (eda >= eda.max()) | (eda <= eda.min())
    clipped_share, _ = _epoch_means(t, at_edge.astype(float), starts, epoch)
    clipped = clipped_share > clip_share
    ok = ~flat & ~clipped
    return pd.DataFrame({
        "epoch_start": starts,
        "scl": np.where(ok, tonic, np.nan),
        "phasic": np.where(ok, phasic, np.nan),
        "flat": flat,
        "clipped": clipped,
        "ok": ok,
    })


def rsp_epochs(rsp, sampling_rate: float, *, epoch: float = 1.0,
               epoch_starts=None) -> pd.DataFrame:
    """Respiration rate (breaths/min) and amplitude per epoch from a raw respiration signal."""
    nk = _neurokit()
    rsp = _check_signal("rsp", rsp, sampling_rate)
    signals, _ = nk.rsp_process(rsp, sampling_rate=sampling_rate)
    t = np.arange(rsp.size) / sampling_rate
    starts = _epoch_grid(rsp.size, sampling_rate, epoch, epoch_starts)
    rate, _ = _epoch_means(t, signals["RSP_Rate"].to_numpy(), starts, epoch)
    amplitude, _ = _epoch_means(t, signals["RSP_Amplitude"].to_numpy(), starts, epoch)
    ok = np.isfinite(rate) & np.isfinite(amplitude)
    return pd.DataFrame({"epoch_start": starts, "respiration_rate": rate,
                         "respiration_amplitude": amplitude, "ok": ok})


_PROCESSORS = {"ecg": ecg_epochs, "eda": eda_epochs, "rsp": rsp_epochs}


# ----------------------------------------------------------------------------------
# both persons on one clock
# ----------------------------------------------------------------------------------


def dyad_dataset(
    therapist: Mapping[str, object],
    client: Mapping[str, object],
    *,
    feature: str = "heart_rate",
    epoch: float = 1.0,
    roles: tuple[str, str] = ("therapist", "client"),
    dyad="dyad",
    session="session",
) -> xr.Dataset:
    """One dyad-session of ``feature`` for both persons, on one clock, as the data contract.

    ``therapist`` and ``client`` are mappings with the raw ``signal`` (array),
    its ``sampling_rate`` (Hz) and optionally ``start`` (s, the recording's start on
    the shared session clock; default 0).  The persons may have different sampling
    rates and starts; the epoch grid is anchored at the later start and ends at the
    earlier end, so every epoch holds data of both.  ``feature``: one of
    ``heart_rate``, ``ibi``, ``rsa``, ``hf_hrv`` (from ECG), ``rsa_p2t`` (ECG plus
    the person's respiration under the key ``rsp``), ``scl``, ``phasic`` (EDA),
    ``respiration_rate``, ``respiration_amplitude`` (respiration).
    """
    from coregulation import data as data_module

    if feature not in FEATURES:
        raise ValueError(f"feature must be one of {sorted(FEATURES)}; got {feature!r}.")
    kind, unit = FEATURES[feature]
    specs = {}
    specs_rsp = {}
    for role, spec in zip(roles, (therapist, client)):
        if not isinstance(spec, Mapping) or "signal" not in spec or "sampling_rate" not in spec:
            raise ValueError(
                f"{role} must be a mapping with 'signal' and 'sampling_rate' (and optional "
                f"'start'); got {type(spec).__name__} with keys "
                f"{sorted(spec) if isinstance(spec, Mapping) else '-'}."
            )
        signal = np.asarray(spec["signal"], dtype=float)
        rate = float(spec["sampling_rate"])
        specs[role] = (signal, rate, float(spec.get("start", 0.0)))
        specs_rsp[role] = {"rsp": spec["rsp"]} if "rsp" in spec else {}
    begin = max(start for _, _, start in specs.values())
    end = min(start + signal.size / rate for signal, rate, start in specs.values())
    grid = np.arange(begin, end - epoch + 1e-9, epoch)
    if grid.size < 10:
        raise ValueError(
            f"the two recordings overlap for {max(end - begin, 0):.1f} s: fewer than 10 epochs "
            f"of {epoch} s on the shared clock."
        )
    y = np.full((grid.size, 2), np.nan)
    for r, role in enumerate(roles):
        signal, rate, start = specs[role]
        # the whole recording goes to the processor (filters need the context); the
        # epochs are the shared grid in this person's own clock
        extra = {}
        if feature == "rsa_p2t":
            if "rsp" not in specs_rsp[role]:
                raise ValueError(
                    f"feature 'rsa_p2t' needs each person's respiration: add 'rsp' (raw "
                    f"respiration at the ecg's sampling rate) to the {role} mapping."
                )
            extra["rsp"] = specs_rsp[role]["rsp"]
        table = _PROCESSORS[kind](signal, rate, epoch=epoch, epoch_starts=grid - start, **extra)
        y[:, r] = table[feature].to_numpy()
    return data_module.from_arrays(
        y, grid - begin, roles=roles, dyads=[dyad], sessions=[session], signal=feature,
        unit=unit, sampling="epoch_mean",
    )


# ----------------------------------------------------------------------------------
# HF-HRV and peak-to-trough RSA
# ----------------------------------------------------------------------------------


def hf_hrv(beat_times, *, epoch: float = 30.0, band: tuple[float, float] = (0.15, 0.40),
           resample_rate: float = 4.0) -> np.ndarray:
    """High-frequency heart-rate variability, ln(ms^2), per ``epoch`` from R-peak times (s).

    The IBI series (ms) is resampled at ``resample_rate`` Hz by a cubic spline
    through the beats (linear interpolation would damp a 0.25-Hz modulation by a
    quarter at 75 bpm), and each epoch's power in ``band`` (Task Force 1996: 0.15-0.40 Hz)
    is read off its periodogram (linear detrend, Hann window, density scaled so that
    a sinusoid of amplitude A in the band has power A^2 / 2).  Epochs not fully
    covered by beats, or shorter than two cycles of the band's lower edge, are NaN.

    Examples
    --------
    Beats whose interval swings by 50 ms at 0.25 Hz (a breathing rhythm) have HF power
    50**2 / 2 ms**2:

    >>> import numpy as np
    >>> from coregulation import physio
    >>> beats = [-2.0]  # the recording starts a little before the first epoch
    >>> while beats[-1] < 122.0:
    ...     beats.append(beats[-1] + 0.8 + 0.05 * np.sin(2 * np.pi * 0.25 * beats[-1]))
    >>> values = physio.hf_hrv(np.array(beats), epoch=60.0)
    >>> np.round(values, 1), round(float(np.log(50.0**2 / 2)), 1)
    (array([7.1, 7.1]), 7.1)
    """
    beat_times = np.asarray(beat_times, dtype=float)
    if beat_times.ndim != 1 or beat_times.size < 3 or np.any(np.diff(beat_times) <= 0):
        raise ValueError("beat_times must be 1-D, strictly increasing, with at least 3 beats.")
    low, high = band
    if not (0 < low < high < resample_rate / 2):
        raise ValueError(
            f"band must satisfy 0 < low < high < resample_rate / 2 = {resample_rate / 2}; "
            f"got {band!r}."
        )
    if epoch * low < 2:
        raise ValueError(
            f"epoch ({epoch} s) must hold at least two cycles of the band's lower edge "
            f"({low} Hz): at least {2 / low:.0f} s."
        )
    ibi = 1000.0 * np.diff(beat_times)
    t_ibi = beat_times[1:]
    spline = scipy.interpolate.CubicSpline(t_ibi, ibi)
    num_epochs = int(beat_times[-1] // epoch)
    out = np.full(num_epochs, np.nan)
    step = 1.0 / resample_rate
    for e in range(num_epochs):
        lo, hi = e * epoch, (e + 1) * epoch
        if lo < t_ibi[0] or hi > t_ibi[-1]:
            continue
        t = np.arange(lo, hi - 1e-9, step)
        freqs, power = scipy.signal.periodogram(spline(t), fs=resample_rate,
                                                window="hann", detrend="linear")
        inside = (freqs >= low) & (freqs <= high)
        total = np.trapezoid(power[inside], freqs[inside]) if inside.sum() > 1 else 0.0
        out[e] = np.log(total) if total > 0 else np.nan
    return out


def breath_phases(rsp, sampling_rate: float) -> tuple[np.ndarray, np.ndarray]:
    """Inspiration onsets (troughs) and ends (peaks) of a raw respiration signal, in s.

    neurokit2's cleaning and extrema detection; returns the troughs and peaks ordered
    so that each trough is followed by its peak and the next trough.
    """
    nk = _neurokit()
    rsp = _check_signal("rsp", rsp, sampling_rate)
    cleaned = nk.rsp_clean(rsp, sampling_rate=sampling_rate)
    _, info = nk.rsp_peaks(cleaned, sampling_rate=sampling_rate)
    troughs = np.asarray(info["RSP_Troughs"], dtype=float) / sampling_rate
    peaks = np.asarray(info["RSP_Peaks"], dtype=float) / sampling_rate
    return troughs, peaks


def rsa_peak_to_trough(beat_times, inspiration_onsets, inspiration_ends, *,
                       epoch: float = 30.0) -> tuple[np.ndarray, np.ndarray]:
    """Peak-to-trough RSA (Grossman), ms, per breath and per ``epoch``.

    For each complete breath (inspiration onset -> end of inspiration -> next onset),
    RSA is the longest IBI during expiration minus the shortest IBI during
    inspiration, or 0 when that difference is negative (no respiratory modulation,
    Grossman's convention).  An IBI belongs to the phase in which its closing beat
    falls.  Returns the per-breath values (with the breath's onset time as first
    column) and the per-epoch mean of the breaths whose onset lies in each epoch
    (NaN where none does).
    """
    beat_times = np.asarray(beat_times, dtype=float)
    onsets = np.asarray(inspiration_onsets, dtype=float)
    ends = np.asarray(inspiration_ends, dtype=float)
    if beat_times.ndim != 1 or beat_times.size < 3 or np.any(np.diff(beat_times) <= 0):
        raise ValueError("beat_times must be 1-D, strictly increasing, with at least 3 beats.")
    ibi = 1000.0 * np.diff(beat_times)
    closing = beat_times[1:]
    rows = []
    for start, stop in zip(onsets[:-1], onsets[1:]):
        inside = ends[(ends > start) & (ends < stop)]
        if inside.size != 1:
            continue  # not a clean trough -> peak -> trough cycle
        peak = inside[0]
        inspiration = ibi[(closing >= start) & (closing < peak)]
        expiration = ibi[(closing >= peak) & (closing < stop)]
        if inspiration.size == 0 or expiration.size == 0:
            continue
        rows.append((start, max(expiration.max() - inspiration.min(), 0.0)))
    per_breath = np.asarray(rows, dtype=float).reshape(-1, 2)
    num_epochs = int(beat_times[-1] // epoch)
    starts = np.arange(num_epochs) * epoch
    per_epoch, _ = _epoch_means(per_breath[:, 0], per_breath[:, 1], starts, epoch) \
        if num_epochs else (np.zeros(0), None)
    return per_breath, per_epoch


# ----------------------------------------------------------------------------------
# CSV input
# ----------------------------------------------------------------------------------


def _read_signal_table(path, columns: list[str], time_column: str, sep: str) -> pd.DataFrame:
    try:
        table = pd.read_csv(path, sep=sep, float_precision="round_trip")
    except FileNotFoundError:
        raise FileNotFoundError(f"no such recording file: {str(path)!r}.") from None
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(
            f"{path}: no column {missing[0]!r}; the file has {list(table.columns)}. Pass "
            "columns={'therapist': ..., 'client': ...} to name the signal columns."
        )
    for column in [*columns, *([time_column] if time_column in table.columns else [])]:
        values = pd.to_numeric(table[column], errors="coerce")
        bad = values.isna() & table[column].notna()
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise ValueError(
                f"{path}: column {column!r} has a non-numeric value {table[column].iloc[row]!r} "
                f"in data row {row + 1}."
            )
        table[column] = values.astype(float)
    return table


def _recording_from_column(path, table, column, time_column, sampling_rate, start):
    """One person's continuous recording: leading and trailing blanks trimmed, no gaps."""
    values = table[column].to_numpy()
    present = np.flatnonzero(np.isfinite(values))
    if present.size == 0:
        raise ValueError(f"{path}: column {column!r} holds no values.")
    first, last = present[0], present[-1]
    gaps = np.flatnonzero(~np.isfinite(values[first : last + 1]))
    if gaps.size:
        raise ValueError(
            f"{path}: column {column!r} has {gaps.size} empty cells inside the recording "
            f"(first at data row {first + gaps[0] + 1}); the raw-signal processors need a "
            "continuous recording: split it into pieces or mark the epochs bad afterwards."
        )
    signal = values[first : last + 1]
    if time_column in table.columns:
        times = table[time_column].to_numpy()[first : last + 1]
        if not np.isfinite(times).all():
            raise ValueError(f"{path}: column {time_column!r} is empty where {column!r} is not.")
        steps = np.diff(times)
        if np.any(steps <= 0):
            row = int(np.flatnonzero(steps <= 0)[0]) + first + 2
            raise ValueError(f"{path}: column {time_column!r} does not increase at data row {row}.")
        step = np.median(steps)
        if np.max(np.abs(steps - step)) > 1e-3 * step:
            raise ValueError(
                f"{path}: column {time_column!r} is not regularly spaced (steps from "
                f"{steps.min()} to {steps.max()} s); raw signals need one sampling rate."
            )
        # the mean step over the whole recording, to 9 significant digits (a time
        # column written to CSV carries rounding that should not move the rate)
        mean_step = (times[-1] - times[0]) / (times.size - 1)
        rate = float(f"{1.0 / mean_step:.9g}") if sampling_rate is None else float(sampling_rate)
        if sampling_rate is not None and abs(rate * step - 1.0) > 1e-3:
            raise ValueError(
                f"{path}: sampling_rate={sampling_rate} Hz disagrees with column "
                f"{time_column!r} (step {step} s, {1 / step:.6g} Hz)."
            )
        begin = times[0] if start is None else float(start)
    else:
        if sampling_rate is None:
            raise ValueError(
                f"{path}: no {time_column!r} column, so pass sampling_rate= (Hz) for {column!r}."
            )
        rate = float(sampling_rate)
        begin = (0.0 if start is None else float(start)) + first / rate
    return {"signal": signal, "sampling_rate": rate, "start": begin}


def read_dyad_csv(
    source,
    *,
    feature: str = "heart_rate",
    columns: Mapping[str, str] | None = None,
    sampling_rate: float | Mapping[str, float] | None = None,
    time_column: str = "time",
    starts: Mapping[str, float] | None = None,
    epoch: float = 1.0,
    roles: tuple[str, str] = ("therapist", "client"),
    dyad="dyad",
    session="session",
    sep: str = ",",
    respiration_columns: Mapping[str, str] | None = None,
) -> xr.Dataset:
    """One dyad-session of ``feature`` from raw signals in CSV files, as the data contract.

    ``source`` is either one file with a column per person and signal (default
    columns ``{signal}_{role}``, e.g. ``ecg_therapist`` and ``ecg_client``) or a
    mapping ``{role: path}`` with one file per person (default column: the signal,
    ``ecg``, ``eda`` or ``rsp``).  ``columns`` names the columns per role.

    Timing: a ``time_column`` (seconds on the shared session clock) gives each
    recording's sampling rate and start; it must be regular.  Without one, pass
    ``sampling_rate`` (Hz, one number or one per role) and optionally ``starts``
    (s per role, default 0).  In a one-file table a person whose recording starts
    later or ends earlier has empty cells before or after it; those are trimmed,
    but empty cells inside a recording are an error (nothing is filled in).  For
    ``feature="rsa_p2t"`` each person's respiration is read too, from
    ``respiration_columns`` (default ``rsp_{role}``, or ``rsp`` in per-person files),
    and must cover the same samples as the ECG.  The rest is :func:`dyad_dataset`.
    """
    if feature not in FEATURES:
        raise ValueError(f"feature must be one of {sorted(FEATURES)}; got {feature!r}.")
    kind = FEATURES[feature][0]
    if isinstance(source, Mapping):
        unknown = sorted(set(source) - set(roles))
        if unknown or len(source) != 2:
            raise ValueError(
                f"source as a mapping needs one file per role {list(roles)}; got keys "
                f"{sorted(source)}."
            )
        paths = {role: source[role] for role in roles}
        default_columns = {role: kind for role in roles}
    else:
        paths = {role: source for role in roles}
        default_columns = {role: f"{kind}_{role}" for role in roles}
    columns = dict(default_columns if columns is None else columns)
    if sorted(columns) != sorted(roles):
        raise ValueError(f"columns must name one column per role {list(roles)}; got {columns!r}.")
    rsp_columns = {}
    if feature == "rsa_p2t":  # the respiration of each person rides along with the ECG
        rsp_columns = {role: ("rsp" if isinstance(source, Mapping) else f"rsp_{role}")
                       for role in roles}
        rsp_columns.update(dict(respiration_columns or {}))
    rates = dict(sampling_rate) if isinstance(sampling_rate, Mapping) else {
        role: sampling_rate for role in roles}
    starts = dict(starts or {})
    tables: dict = {}
    specs = []
    for role in roles:
        path = paths[role]
        key = str(path)
        if key not in tables:
            wanted = [c for r in roles if str(paths[r]) == key
                      for c in (columns[r], *([rsp_columns[r]] if rsp_columns else []))]
            tables[key] = _read_signal_table(path, wanted, time_column, sep)
        spec = _recording_from_column(path, tables[key], columns[role], time_column,
                                      rates.get(role), starts.get(role))
        if rsp_columns:
            breathing = _recording_from_column(path, tables[key], rsp_columns[role], time_column,
                                               rates.get(role), starts.get(role))
            if (breathing["signal"].size != spec["signal"].size
                    or breathing["start"] != spec["start"]):
                raise ValueError(
                    f"{path}: {rsp_columns[role]!r} and {columns[role]!r} must cover the same "
                    "samples (peak-to-trough RSA pairs each beat with the breath around it)."
                )
            spec["rsp"] = breathing["signal"]
        specs.append(spec)
    return dyad_dataset(*specs, feature=feature, epoch=epoch, roles=roles, dyad=dyad,
                        session=session)
