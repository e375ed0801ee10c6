"""Raw ECG, EDA and respiration from latent coupled states (neurokit2's simulators).

A person's latent arousal ``a(t)`` (for example one role of a simulated dyad,
standardised) drives

* heart rate ``HR(t) = hr_mean + hr_sd * a(t)`` (bpm): a 60-bpm ECG from
  ``neurokit2.ecg_simulate`` is time-warped by the phase ``int_0^t HR(s)/60 ds``, so
  beat k falls where the phase passes k and each beat interval follows HR;
* skin conductance: tonic ``SCL(t) = scl_mean + scl_sd * a(t)`` (uS) plus the skin
  conductance responses of ``neurokit2.eda_simulate`` (its own level removed);
* respiration: ``neurokit2.rsp_simulate`` at 15 breaths/min, time-warped to the rate
  ``rsp_mean + rsp_sd * a(t)``.

Returns the raw signals and the generating HR and SCL on the signal's clock, so a
front end can be checked against the truth.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class RawRecording:
    """One person's raw signals at ``sampling_rate`` and the series that generated them."""

    sampling_rate: float
    ecg: np.ndarray
    eda: np.ndarray
    rsp: np.ndarray
    heart_rate: np.ndarray  # bpm, per sample
    scl: np.ndarray  # uS, per sample
    respiration_rate: np.ndarray  # breaths/min, per sample

    @property
    def times(self) -> np.ndarray:
        return np.arange(self.ecg.size) / self.sampling_rate


def _warp(base: np.ndarray, phase_seconds: np.ndarray, sampling_rate: float) -> np.ndarray:
    """``base`` (sampled at ``sampling_rate``) read at the times ``phase_seconds``."""
    grid = np.arange(base.size) / sampling_rate
    return np.interp(phase_seconds, grid, base)


def raw_recording(
    arousal_times,
    arousal,
    *,
    seed: int,
    sampling_rate: float = 250.0,
    hr_mean: float = 70.0,
    hr_sd: float = 6.0,
    scl_mean: float = 5.0,
    scl_sd: float = 1.0,
    rsp_mean: float = 15.0,
    rsp_sd: float = 1.5,
    scr_per_minute: float = 2.0,
    noise: float = 0.01,
) -> RawRecording:
    """Raw signals of one person whose arousal is ``arousal`` at ``arousal_times`` (s).

    ``arousal`` is interpolated linearly to the signal clock (from the first to the
    last arousal time); missing values are not allowed (simulate them later, on the
    raw signal or the epochs).  ``seed`` makes every random path reproducible.
    """
    import neurokit2 as nk

    t_a = np.asarray(arousal_times, dtype=float)
    a = np.asarray(arousal, dtype=float)
    if t_a.ndim != 1 or t_a.shape != a.shape:
        raise ValueError(
            f"arousal_times and arousal must be 1-D of equal length; got {t_a.shape} and {a.shape}."
        )
    if not (np.isfinite(a).all() and np.isfinite(t_a).all()):
        raise ValueError("arousal has missing values; pass a complete latent series.")
    if np.any(np.diff(t_a) <= 0):
        raise ValueError("arousal_times must be strictly increasing.")
    duration = t_a[-1] - t_a[0]
    if duration < 10:
        raise ValueError(f"the arousal series spans {duration} s; at least 10 s are needed.")
    rng = np.random.default_rng(seed)
    n = int(np.floor(duration * sampling_rate))
    t = np.arange(n) / sampling_rate
    level = np.interp(t + t_a[0], t_a, a)
    heart_rate = hr_mean + hr_sd * level
    scl = scl_mean + scl_sd * level
    resp_rate = rsp_mean + rsp_sd * level
    if heart_rate.min() < 30 or heart_rate.max() > 200:
        raise ValueError("hr_mean + hr_sd * arousal leaves 30-200 bpm; rescale the arousal.")
    if scl.min() <= 0:
        raise ValueError("scl_mean + scl_sd * arousal goes below 0 uS; rescale the arousal.")
    if resp_rate.min() < 4:
        raise ValueError("rsp_mean + rsp_sd * arousal goes below 4 breaths/min.")
    seeds = rng.integers(0, 2**31 - 1, size=3)
    # ECG: a steady 60-bpm recording read at the heart-rate phase
    beat_phase = np.concatenate([[0.0], np.cumsum(heart_rate / 60.0) / sampling_rate])[:n]
    base_ecg = nk.ecg_simulate(duration=int(np.ceil(beat_phase[-1])) + 3,
                               sampling_rate=int(sampling_rate), heart_rate=60,
                               heart_rate_std=0, noise=0.0, method="simple",
                               random_state=int(seeds[0]))
    ecg = _warp(np.asarray(base_ecg), beat_phase + 1.0, sampling_rate)
    ecg = ecg + noise * np.std(ecg) * rng.standard_normal(n)
    # EDA: our tonic level plus neurokit2's responses (their baseline removed)
    scr = nk.eda_simulate(length=n, sampling_rate=int(sampling_rate),
                          scr_number=max(int(round(scr_per_minute * duration / 60)), 0),
                          drift=0.0, noise=0.0, random_state=int(seeds[1]))
    scr = np.asarray(scr)[:n]
    scr = scr - np.min(scr)
    eda = scl + 0.3 * scr / max(np.max(scr), 1e-12) + noise * 0.05 * rng.standard_normal(n)
    # respiration: a 15-breaths/min recording read at the respiration phase
    breath_phase = np.concatenate([[0.0], np.cumsum(resp_rate / 15.0) / sampling_rate])[:n]
    base_rsp = nk.rsp_simulate(duration=int(np.ceil(breath_phase[-1])) + 3,
                               sampling_rate=int(sampling_rate), respiratory_rate=15,
                               noise=0.0, method="sinusoidal", random_state=int(seeds[2]))
    rsp = _warp(np.asarray(base_rsp), breath_phase + 1.0, sampling_rate)
    rsp = rsp + noise * np.std(rsp) * rng.standard_normal(n)
    return RawRecording(sampling_rate, ecg, eda, rsp, heart_rate, scl, resp_rate)
