"""Null calibration of the coupling estimates (METHODS.md §3.4 and §5).

Three ways to see what the coupling posterior looks like when there is no coupling:

* the **shared-drive** scenario (two uncoupled people moved by one common driver):
  a study cell with ``scenario = "shared_drive"`` (see ``coregulation.simulate.study``);
  :func:`recovery_metrics` then reports the false-positive rates;
* **pseudo-dyads** (:func:`pseudo_dyad_null`): each therapist paired with another
  dyad's client, fitted like real dyads; any coupling found there is spurious;
* a **model-based surrogate test** (:func:`surrogate_test`): fit the uncoupled
  model to a series, simulate surrogates from that fit on the same times with the
  same missing values, fit the coupled model to each, and read the observed
  coupling against the surrogates' null distribution (a parametric bootstrap
  p-value).

Every series is z-scored per person-session first and all fits run through one
``vmap`` (:func:`coregulation.inference.replicates.fit_replicates`).
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pandas as pd
import xarray as xr

from coregulation import data as data_module
from coregulation.inference.batch import SeriesBatch
from coregulation.inference.replicates import fit_replicates
from coregulation.models import PriorScales
from coregulation.models._base import Model


def _standardised_series(data: xr.Dataset):
    data = data_module.validate(data)
    if data.attrs.get("scaling") != "zscore_person_session":
        data = data_module.standardise(data)
    series = list(data_module.iter_series(data))
    if any(s.inputs is not None or s.moderators is not None for s in series):
        raise ValueError("null calibration fits series without inputs or moderators; drop u and z.")
    return series


def _scales(series) -> PriorScales:
    interval = float(np.median([np.median(np.diff(s.times)) for s in series]))
    duration = float(np.median([s.times[-1] - s.times[0] + interval for s in series]))
    return PriorScales(interval, max(duration, 10 * interval), 1.0)


def _coupling_rows(model, fits, labels, prob=0.95):
    lo, hi = (1 - prob) / 2, 1 - (1 - prob) / 2
    rows = []
    for name in model.coupling_names:
        if name not in fits.draws:
            continue
        draws = fits.draws[name].reshape(fits.num_replicates, -1)
        for r, label in enumerate(labels):
            lower, upper = np.quantile(draws[r], [lo, hi])
            rows.append({**label, "coupling": name, "mean": float(draws[r].mean()),
                         "sd": float(draws[r].std()), "lower": float(lower),
                         "upper": float(upper), "excludes_zero": bool(lower > 0 or upper < 0)})
    return rows


def pseudo_dyad_null(model: Model, data: xr.Dataset, *, method: str = "laplace",
                     all_pairs: bool = False, seed: int = 0, prob: float = 0.95,
                     **fit_settings) -> pd.DataFrame:
    """Coupling posteriors of real dyads and of pseudo-dyads, side by side.

    Returns one row per (real or pseudo) dyad-session and coupling with the
    posterior mean, sd, central ``prob`` interval and whether it excludes 0, and a
    ``kind`` column (``"real"`` or ``"pseudo"``).  The share of pseudo rows whose
    interval excludes 0 is the false-positive rate under this null.
    """
    from coregulation.synchrony import pseudo_dyads

    pseudo = pseudo_dyads(data, seed=seed, all_pairs=all_pairs)
    rows = []
    for kind, ds in (("real", data), ("pseudo", pseudo)):
        series = _standardised_series(ds)
        batch = SeriesBatch.from_series([(s.times, s.y, None, None) for s in series])
        fits = fit_replicates(model, batch, _scales(series), method=method, seed=seed,
                              **fit_settings)
        labels = [{"kind": kind, "dyad": str(s.dyad), "session": str(s.session)} for s in series]
        rows += _coupling_rows(model, fits, labels, prob)
    return pd.DataFrame(rows)


@dataclasses.dataclass(frozen=True)
class SurrogateTest:
    """Observed couplings against their model-based null distribution, per series."""

    table: pd.DataFrame  # series x coupling: observed, null mean/sd, p_value
    null_draws: dict  # coupling -> (series, surrogate) posterior means under the null


def surrogate_test(model: Model, data: xr.Dataset, *, num_surrogates: int = 200,
                   method: str = "map", seed: int = 0, **fit_settings) -> SurrogateTest:
    """A parametric-bootstrap test of coupling for every dyad-session of ``data``.

    For each series: the uncoupled model (every coupling fixed at 0) is fitted
    (MAP); ``num_surrogates`` series are simulated from that fit on the series' own
    times, with its missing values; the coupled ``model`` is fitted to each.  The
    p-value of coupling ``c`` is ``(1 + #{|c_null| >= |c_obs|}) / (1 + S)`` with
    ``c`` the posterior mean (``method``) of the coupled fit, two-sided.
    """
    from coregulation.inference.compare import coupling_models
    from coregulation.simulate._simulate import simulate_series

    if not isinstance(num_surrogates, (int, np.integer)) or num_surrogates < 1:
        raise ValueError(f"num_surrogates must be a positive integer; got {num_surrogates!r}.")
    series = _standardised_series(data)
    scales = _scales(series)
    null_model = coupling_models(model)["uncoupled"]
    batch = SeriesBatch.from_series([(s.times, s.y, None, None) for s in series])
    observed = fit_replicates(model, batch, scales, method=method, seed=seed, **fit_settings)
    null_fit = fit_replicates(null_model, batch, scales, method="map", seed=seed)
    couplings = [n for n in model.coupling_names if n in observed.draws]
    null_draws = {c: np.empty((len(series), num_surrogates)) for c in couplings}
    rows = []
    for i, s in enumerate(series):
        params = {k: np.asarray(v[i, 0, 0]) for k, v in null_fit.draws.items()}
        keys = jax.random.split(jax.random.fold_in(jax.random.key(seed), i), num_surrogates)
        missing = np.isnan(s.y)
        surrogates = []
        for key in keys:
            y = simulate_series(null_model, params, s.times, key).y
            y[missing] = np.nan
            surrogates.append((s.times, y, None, None))
        fits = fit_replicates(model, SeriesBatch.from_series(surrogates, scales=batch.scales),
                              scales, method=method, seed=seed + i + 1, **fit_settings)
        for c in couplings:
            null = fits.draws[c].reshape(num_surrogates, -1).mean(axis=1)
            null_draws[c][i] = null
            obs = float(observed.draws[c][i].mean())
            rows.append({"dyad": str(s.dyad), "session": str(s.session), "coupling": c,
                         "observed": obs, "null_mean": float(null.mean()),
                         "null_sd": float(null.std()),
                         "p_value": float((1 + np.sum(np.abs(null) >= abs(obs)))
                                          / (1 + num_surrogates))})
    return SurrogateTest(pd.DataFrame(rows), null_draws)
