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
import scipy.signal

FEATURES = {
    "heart_rate": ("ecg", "bpm"),
    "ibi": ("ecg", "ms"),
    "rsa": ("ecg", "ln(ms^2)"),
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
               max_corrected: float = 0.2, rsa_epoch: float = 30.0) -> pd.DataFrame:
    """Heart rate (bpm), inter-beat interval (ms) and RSA per epoch from a raw ECG.

    The instantaneous heart rate ``60 / IBI`` is a step function between beats; each
    epoch gets its time average (so epochs are averages, not point samples).  An
    epoch is bad (NaN) when more than ``max_corrected`` of the beats that touch it
    were corrected, or when it lies before the second or after the last beat.
    ``rsa`` is the Porges-Bohrer estimate (:func:`rsa_porges_bohrer`) of the
    ``rsa_epoch``-long epoch containing it, repeated over its ``epoch``s.
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
    return pd.DataFrame({
        "epoch_start": starts,
        "heart_rate": np.where(ok, hr, np.nan),
        "ibi": np.where(ok, ibi_mean, np.nan),
        "rsa": np.where(ok, rsa_at, np.nan),
        "corrected_share": share,
        "ok": ok,
    })


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
) -> "xr.Dataset":  # noqa: F821
    """One dyad-session of ``feature`` for both persons, on one clock, as the data contract.

    ``therapist`` and ``client`` are mappings with the raw ``signal`` (array),
    its ``sampling_rate`` (Hz) and optionally ``start`` (s, the recording's start on
    the shared session clock; default 0).  The persons may have different sampling
    rates and starts; the epoch grid is anchored at the later start and ends at the
    earlier end, so every epoch holds data of both.  ``feature``: one of
    ``heart_rate``, ``ibi``, ``rsa`` (from ECG), ``scl``, ``phasic`` (EDA),
    ``respiration_rate``, ``respiration_amplitude`` (respiration).
    """
    from coregulation import data as data_module

    if feature not in FEATURES:
        raise ValueError(f"feature must be one of {sorted(FEATURES)}; got {feature!r}.")
    kind, unit = FEATURES[feature]
    specs = {}
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
        table = _PROCESSORS[kind](signal, rate, epoch=epoch, epoch_starts=grid - start)
        y[:, r] = table[feature].to_numpy()
    return data_module.from_arrays(
        y, grid - begin, roles=roles, dyads=[dyad], sessions=[session], signal=feature,
        unit=unit, sampling="epoch_mean",
    )
