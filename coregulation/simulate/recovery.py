"""Parameter-recovery studies and SBC runs: simulate, fit, summarise, store, resume.

A :class:`~coregulation.simulate.study.Study` is a grid of cells x replicates.
Work is cut into *chunks* (``Study.chunk`` replicates of one cell); each chunk is
simulated, fitted and summarised by :func:`run_chunk`, which writes one netCDF
file atomically (temporary name, then rename).  :func:`run_study` runs the chunks
that are not stored yet, locally (in this process, or a process pool) or on a
Dask cluster, so an interrupted study resumes where it stopped and never
recomputes or loses a finished chunk.  Every random path is keyed by
``(seed, cell, replicate)``, so results do not depend on where or in which order
chunks run.

Single-series cells (one dyad, one session) go through one ``vmap``-ed fit per
chunk (:func:`coregulation.inference.replicates.fit_replicates`); many-dyad cells
are fitted one replicate at a time with :func:`coregulation.fit` (hierarchical,
population values compared with the truth).

Per replicate the store keeps, for every free parameter element and the coupling
difference (first -> second minus second -> first): the truth, the posterior mean,
sd and quantiles, P(first-led), sampler health, and for SBC studies the ranks of
the truth among ``rank_draws`` posterior draws (parameters, the coupling
difference and the log-likelihood of the data).  :func:`recovery_metrics` turns
the store into bias, RMSE, coverage, power, error rates and directional accuracy
per cell (METHODS.md §5.3).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import xarray as xr

from coregulation._atomic import atomic_write
from coregulation.simulate.study import PATTERNS, Study

QUANTILES = (0.025, 0.1, 0.25, 0.5, 0.75, 0.9, 0.975)
INTERVALS = (0.5, 0.8, 0.95)
DIFFERENCE = "coupling_difference"
LOGLIK = "log_likelihood"
RANK_DRAWS = 100


# ----------------------------------------------------------------------------------
# one cell: its model, scales, truth and data
# ----------------------------------------------------------------------------------


def primary_couplings(model) -> tuple[str, str]:
    """The directed pair a coupling pattern sets: (first -> second, second -> first)."""
    forward = [n for n in model.coupling_names if n.endswith("therapist_to_client")]
    backward = [n for n in model.coupling_names if n.endswith("client_to_therapist")]
    return forward[0], backward[0]


def cell_scales(cell):
    from coregulation.models import PriorScales

    return PriorScales(cell["sampling_interval"], cell["duration"], 1.0)


def cell_times(cell) -> np.ndarray:
    n = int(round(cell["duration"] / cell["sampling_interval"]))
    return np.arange(1, n + 1) * cell["sampling_interval"]


def cell_truth(study: Study, cell: dict) -> dict:
    """Population values of every free parameter in a recovery cell.

    The prior median under the cell's scales, replaced by ``[truth]``; the primary
    couplings come from the cell's pattern x size (unless ``[truth]`` sets both and
    the grid names neither ``coupling`` nor ``coupling_size``); other couplings are
    0 unless set; ``me_share`` sets ``me_sd = latent_sd * sqrt(s / (1 - s))``.
    """
    from coregulation.models.parameters import ParameterSpace

    model = study.build_model()
    space = ParameterSpace(model, cell_scales(cell))
    truth = {k: np.asarray(v, dtype=float) for k, v in space.prior_median().items()}
    for name in model.coupling_names:
        if name in truth:
            truth[name] = np.zeros_like(truth[name])
    for name, value in study.truth.items():
        truth[name] = np.broadcast_to(np.asarray(value, dtype=float), truth[name].shape).copy()
    forward, backward = primary_couplings(model)
    from_truth = (forward in study.truth and backward in study.truth
                  and "coupling" not in study.grid and "coupling_size" not in study.grid)
    if not from_truth:
        a, b = PATTERNS[cell["coupling"]]
        truth[forward] = np.asarray(a * cell["coupling_size"])
        truth[backward] = np.asarray(b * cell["coupling_size"])
    if cell["me_share"] is not None and "me_sd" in truth:
        share = float(cell["me_share"])
        truth["me_sd"] = truth["latent_sd"] * np.sqrt(share / (1 - share))
        if share == 0:
            raise ValueError("me_share = 0 needs a model without measurement error "
                             "(model_options.measurement_error = false).")
    if not bool(model.is_stable(truth)):
        raise ValueError(f"the truth of cell {cell} is unstable; choose smaller couplings or "
                         "other time constants in [truth].")
    return truth


def _flat(space, params: dict) -> np.ndarray:
    """Free parameters (..., shape) -> (..., k) in the space's flat order."""
    parts = []
    for p in space.table:
        value = np.asarray(params[p.name], dtype=float)
        lead = value.shape[: value.ndim - len(p.shape)]
        parts.append(value.reshape(lead + (p.size,)))
    return np.concatenate(parts, axis=-1)


def _replicate_key(study: Study, cell_index: int, replicate: int):
    key = jax.random.fold_in(jax.random.key(study.seed), cell_index)
    return jax.random.fold_in(key, replicate)


def simulate_replicate(study: Study, cell_index: int, replicate: int, truth: dict | None):
    """One replicate's data: ``(times, y)`` for single series, else the data contract."""
    from coregulation.simulate._simulate import (
        add_missing,
        simulate_dyads,
        simulate_series,
        simulate_shared_drive,
    )

    cell = study.cells()[cell_index]
    model = study.build_model()
    key = _replicate_key(study, cell_index, replicate)
    key_sim, key_miss = jax.random.split(key)
    times = cell_times(cell)
    if cell["num_dyads"] * cell["num_sessions"] > 1:
        ds, _ = simulate_dyads(model, truth, key_sim, num_dyads=cell["num_dyads"],
                               num_sessions=cell["num_sessions"], duration=cell["duration"],
                               sampling_interval=cell["sampling_interval"],
                               dyad_sd=dict(study.dyad_sd), missing_rate=cell["missing_rate"],
                               burst_rate=cell["burst_rate"])
        return ds
    if cell["scenario"] == "shared_drive":
        me_sd = (0.0, 0.0)
        if cell["me_share"] is not None:
            me_sd = (np.sqrt(cell["me_share"] / (1 - cell["me_share"])),) * 2
        y = simulate_shared_drive(key_sim, times, me_sd=me_sd).y
    else:
        y = simulate_series(model, truth, times, key_sim).y
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key_miss)).ravel()[-1])
    y = add_missing(y, times, rng, cell["missing_rate"], cell["burst_rate"])
    return times, y


# ----------------------------------------------------------------------------------
# one chunk: simulate, fit, summarise, store
# ----------------------------------------------------------------------------------


def chunk_path(out, cell_index: int, start: int, stop: int) -> Path:
    return Path(out) / "cells" / f"cell-{cell_index:04d}" / f"rep-{start:05d}-{stop:05d}.nc"


def run_chunk(study_spec: dict, cell_index: int, start: int, stop: int, out=None) -> xr.Dataset:
    """Simulate and fit replicates ``start..stop-1`` of one cell; store them if ``out``.

    ``study_spec`` is ``Study.to_dict()`` (plain data, so the call can travel to a
    Dask worker or another process).  Returns the chunk's summary dataset.
    """
    study = Study.from_dict(study_spec)
    cell = study.cells()[cell_index]
    model = study.build_model()
    from coregulation.models.parameters import ParameterSpace

    space = ParameterSpace(model, cell_scales(cell))
    replicates = list(range(start, stop))
    began = time.perf_counter()
    if study.kind == "sbc":
        keys = [jax.random.fold_in(_replicate_key(study, cell_index, r), 7) for r in replicates]
        truths = [{k: np.asarray(v) for k, v in space.sample_prior(k_).items()} for k_ in keys]
    else:
        truths = [cell_truth(study, cell)] * len(replicates)
    single = cell["num_dyads"] * cell["num_sessions"] == 1
    if single:
        summary = _fit_single(study, cell, model, space, replicates, truths, cell_index)
    else:
        summary = _fit_many(study, cell, model, space, replicates, truths, cell_index)
    summary.attrs.update({
        "cell": json.dumps(cell), "cell_index": cell_index, "fingerprint": study.fingerprint(),
        "method": study.method, "kind": study.kind, "seconds": time.perf_counter() - began,
    })
    if out is not None:
        _atomic_netcdf(summary, chunk_path(out, cell_index, start, stop))
    return summary


def _fit_single(study, cell, model, space, replicates, truths, cell_index):
    from coregulation.inference.batch import SeriesBatch
    from coregulation.inference.replicates import fit_replicates

    series = [simulate_replicate(study, cell_index, r, t) for r, t in zip(replicates, truths)]
    batch = SeriesBatch.from_series([(times, y, None, None) for times, y in series],
                                    scales=cell_scales(cell))
    settings = study.fit_settings()
    settings.pop("svi_steps", None)
    seed = int(np.asarray(jax.random.key_data(
        _replicate_key(study, cell_index, replicates[0]))).ravel()[-1])
    fits = fit_replicates(model, batch, cell_scales(cell), method=study.method, seed=seed,
                          **settings)
    draws = fits.unconstrained.reshape(fits.num_replicates, -1, space.size)
    constrained = {k: v.reshape((fits.num_replicates, -1) + v.shape[3:])
                   for k, v in fits.draws.items()}
    flat_draws = _flat(space, constrained)  # (replicate, draw, k)
    truth = np.stack([_flat(space, t) for t in truths])
    if cell["scenario"] == "shared_drive":  # only the couplings have a truth: zero
        names = space.flat_names()
        truth = np.where(np.isin(names, list(model.coupling_names)), 0.0, np.nan)
        truth = np.broadcast_to(truth, (len(replicates), space.size)).copy()
    summary = _summarise(space, model, replicates, flat_draws, truth, _health(fits))
    if study.kind == "sbc":
        summary = _add_ranks(summary, space, model, flat_draws, draws, truth, truths,
                             *_rank_log_likelihoods(model, batch, space))
    return summary


def _health(fits) -> dict:
    """Per-replicate sampler health of :class:`ReplicateFits`."""
    num = fits.num_replicates
    return {
        "converged": fits.converged.astype(bool),
        "divergences": np.asarray(fits.stats.get("divergences", np.zeros(num)), dtype=float),
        "max_rhat": np.asarray(fits.stats.get("max_rhat", np.full(num, np.nan)), dtype=float),
        "min_ess_bulk": np.asarray(fits.stats.get("min_ess_bulk", np.full(num, np.nan)),
                                   dtype=float),
    }


def _fit_many(study, cell, model, space, replicates, truths, cell_index):
    """Many dyads or sessions per replicate: the hierarchical model (population values
    scored), every replicate of the chunk through one compiled program
    (:func:`~coregulation.inference.replicates.fit_hierarchical_replicates`, priors
    under the cell's scales); SVI, which has no batched form, fits one by one."""
    from coregulation.inference.replicates import REPLICATE_METHODS, fit_hierarchical_replicates

    datasets = [simulate_replicate(study, cell_index, r, t) for r, t in zip(replicates, truths)]
    truth = np.stack([_flat(space, t) for t in truths])
    if study.method in REPLICATE_METHODS:
        settings = study.fit_settings()
        settings.pop("svi_steps", None)
        seed = int(np.asarray(jax.random.key_data(
            _replicate_key(study, cell_index, replicates[0]))).ravel()[-1])
        fits = fit_hierarchical_replicates(model, datasets, cell_scales(cell),
                                           method=study.method, seed=seed, **settings)
        constrained = {k: v.reshape((fits.num_replicates, -1) + v.shape[3:])
                       for k, v in fits.draws.items()}
        return _summarise(space, model, replicates, _flat(space, constrained), truth,
                          _health(fits))
    return _fit_many_svi(study, model, space, replicates, datasets, truth)


def _fit_many_svi(study, model, space, replicates, datasets, truth):
    import warnings

    import coregulation as cr

    flat_draws, health_rows = [], []
    settings = study.fit_settings()
    for r, ds in zip(replicates, datasets):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = cr.fit(model, ds, method=study.method, seed=study.seed + r, num_predictive=0,
                         progress_bar=False, warn=False, standardise=False, **settings)
        draws = fit.parameter_draws("population")
        flat_draws.append(_flat(space, draws))
        diag = fit.diagnostics()
        divergences = float(np.sum(fit.idata.sample_stats["diverging"].values)) \
            if "sample_stats" in fit.idata and "diverging" in fit.idata.sample_stats else 0.0
        health_rows.append((True, divergences, diag.get("max_rhat", np.nan),
                            diag.get("min_ess_bulk", np.nan)))
    size = min(d.shape[0] for d in flat_draws)
    flat_draws = np.stack([d[:size] for d in flat_draws])
    health = {name: np.asarray([row[i] for row in health_rows], dtype=bool if i == 0 else float)
              for i, name in enumerate(("converged", "divergences", "max_rhat", "min_ess_bulk"))}
    return _summarise(space, model, replicates, flat_draws, truth, health)


def _summarise(space, model, replicates, flat_draws, truth, health) -> xr.Dataset:
    names = space.flat_names()
    forward, backward = primary_couplings(model)
    i, j = names.index(forward), names.index(backward)
    difference = flat_draws[..., i] - flat_draws[..., j]
    values = np.concatenate([flat_draws, difference[..., None]], axis=-1)
    true = np.concatenate([truth, (truth[:, i] - truth[:, j])[:, None]], axis=-1)
    # a failed fit (e.g. a degenerate Laplace covariance) can leave non-finite draws:
    # its summaries stay non-finite (it covers nothing) and it is marked not converged
    finite = np.isfinite(values).all(axis=(1, 2))
    health = {**health, "converged": np.asarray(health["converged"], bool) & finite}
    with np.errstate(invalid="ignore", over="ignore"):
        return _summary_dataset(replicates, names, values, true, difference, health)


def _summary_dataset(replicates, names, values, true, difference, health) -> xr.Dataset:
    ds = xr.Dataset(
        {
            "truth": (("replicate", "parameter"), true),
            "mean": (("replicate", "parameter"), values.mean(axis=1)),
            "sd": (("replicate", "parameter"), values.std(axis=1)),
            "quantiles": (("replicate", "parameter", "quantile"),
                          np.moveaxis(np.quantile(values, QUANTILES, axis=1), 0, -1)),
            "p_first_led": (("replicate",), (difference > 0).mean(axis=1)),
            "num_draws": (("replicate",), np.full(len(replicates), values.shape[1])),
            **{k: (("replicate",), v) for k, v in health.items()},
        },
        coords={"replicate": replicates, "parameter": [*names, DIFFERENCE],
                "quantile": list(QUANTILES)},
    )
    return ds


def _rank_log_likelihoods(model, batch, space):
    """Compiled log-likelihoods of draws (replicate, draw, k) and of truths (replicate, k),
    with the replicates' data as arguments, and those data.  Built once per model,
    scales and steps (like the fits' programs), not once per chunk."""
    from coregulation.inference.batch import build_series_log_likelihood
    from coregulation.inference.replicates import _COMPILED, _cache_key, _data_of

    key = _cache_key(model, batch, space.scales, "auto", "ranks")
    if key not in _COMPILED:
        series_ll, data = build_series_log_likelihood(model, batch)

        def loglik(theta_flat, *data_r):
            return series_ll(space.constrain(theta_flat), *data_r)

        per_draw = jax.vmap(loglik, in_axes=(0,) + (None,) * len(data))
        _COMPILED[key] = (jax.jit(jax.vmap(per_draw, in_axes=(0,) + (0,) * len(data))),
                          jax.jit(jax.vmap(loglik)))
    return (*_COMPILED[key], _data_of(batch))


def _add_ranks(summary, space, model, flat_draws, unconstrained, truth, truths,
               draw_log_likelihood, true_log_likelihood, data):
    """Ranks of the truth among ``RANK_DRAWS`` evenly thinned draws (SBC)."""
    num, total, _ = flat_draws.shape
    keep = np.linspace(0, total - 1, min(RANK_DRAWS, total)).astype(int)
    thinned = flat_draws[:, keep]
    names = space.flat_names()
    forward, backward = primary_couplings(model)
    i, j = names.index(forward), names.index(backward)
    diff_draws = thinned[..., i] - thinned[..., j]
    ranks = np.concatenate([
        (thinned < truth[:, None, :]).sum(axis=1),
        (diff_draws < (truth[:, i] - truth[:, j])[:, None]).sum(axis=1)[:, None],
    ], axis=-1)

    draw_ll = draw_log_likelihood(jnp.asarray(unconstrained[:, keep]), *data)
    true_ll = true_log_likelihood(
        jnp.asarray(np.stack([np.asarray(space.unconstrain(t)) for t in truths])), *data)
    ll_rank = (np.asarray(draw_ll) < np.asarray(true_ll)[:, None]).sum(axis=1)
    summary["rank"] = (("replicate", "rank_quantity"),
                       np.concatenate([ranks, ll_rank[:, None]], axis=-1).astype(int))
    summary = summary.assign_coords(rank_quantity=[*names, DIFFERENCE, LOGLIK])
    summary.attrs["rank_draws"] = int(keep.size)
    return summary


def _atomic_netcdf(ds: xr.Dataset, path: Path) -> Path:
    return atomic_write(path, lambda tmp: ds.to_netcdf(tmp, engine="h5netcdf"))


# ----------------------------------------------------------------------------------
# a whole study: local, process pool or Dask; resumable
# ----------------------------------------------------------------------------------


def pending_chunks(study: Study, out) -> list[tuple[int, int, int]]:
    return [c for c in study.chunks() if not chunk_path(out, *c).exists()]


def _prepare(study: Study, out) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    marker = out / "study.json"
    spec = {"fingerprint": study.fingerprint(), **study.to_dict()}
    if marker.exists():
        stored = json.loads(marker.read_text())
        if stored.get("fingerprint") != study.fingerprint():
            raise ValueError(
                f"{out} holds results of a different study (fingerprint "
                f"{stored.get('fingerprint')}, this one {study.fingerprint()}); use a new "
                "--out folder, or the same study file to resume."
            )
    else:
        tmp = out / ".study.json.partial"
        tmp.write_text(json.dumps(spec, indent=2))
        os.replace(tmp, marker)
    return out


def run_study(study: Study, out, *, scheduler=None, processes: int = 1,
              progress: bool = True) -> xr.Dataset:
    """Run every chunk of ``study`` not yet stored under ``out``; return all results.

    ``scheduler``: ``None`` runs locally (in this process, or in a pool of
    ``processes`` worker processes); a ``distributed.Client`` or a scheduler
    address (``"tcp://host:8786"``) runs the chunks as Dask tasks, each writing its
    own file.  ``progress`` shows a progress bar with an ETA.
    """
    out = _prepare(study, out)
    todo = pending_chunks(study, out)
    spec = study.to_dict()
    total = len(study.chunks())
    with _progress(progress, total, total - len(todo), study.name) as advance:
        if scheduler is not None:
            client, own = _client(scheduler)
            try:
                from distributed import as_completed

                futures = [client.submit(run_chunk, spec, *c, str(out), pure=False) for c in todo]
                for future in as_completed(futures):
                    future.result()
                    advance()
            finally:
                if own:
                    client.close()
        elif processes > 1:
            import concurrent.futures
            import multiprocessing

            context = multiprocessing.get_context("spawn")  # JAX does not survive fork
            with concurrent.futures.ProcessPoolExecutor(processes, mp_context=context) as pool:
                futures = [pool.submit(run_chunk, spec, *c, str(out)) for c in todo]
                for future in concurrent.futures.as_completed(futures):
                    future.result()
                    advance()
        else:
            for c in todo:
                run_chunk(spec, *c, out)
                advance()
    return load_study(out)


def _client(scheduler):
    try:
        from distributed import Client
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "running a study on Dask needs the dask extra: pip install 'coregulation[dask]'."
        ) from err
    if isinstance(scheduler, str):
        return Client(scheduler), True
    if not hasattr(scheduler, "submit"):
        raise TypeError(
            f"scheduler must be a distributed.Client or an address string; got "
            f"{type(scheduler).__name__}."
        )
    return scheduler, False


class _progress:
    def __init__(self, show, total, done, name):
        self.show, self.total, self.done, self.name = show, total, done, name

    def __enter__(self):
        if not self.show:
            return lambda: None
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress("[progress.description]{task.description}", BarColumn(),
                            MofNCompleteColumn(), TimeElapsedColumn(), "ETA",
                            TimeRemainingColumn())
        self.bar.start()
        task = self.bar.add_task(f"{self.name}: chunks", total=self.total, completed=self.done)
        return lambda: self.bar.advance(task)

    def __exit__(self, *exc):
        if self.show:
            self.bar.stop()
        return False


def load_study(out) -> xr.Dataset:
    """All stored chunks as one dataset (cell, replicate, ...), cells with their factors."""
    out = Path(out)
    marker = out / "study.json"
    if not marker.exists():
        raise FileNotFoundError(f"{out} holds no study (no study.json); run one with run_study.")
    spec = json.loads(marker.read_text())
    study = Study.from_dict({k: v for k, v in spec.items() if k != "fingerprint"})
    cells = study.cells()
    per_cell = []
    done = []
    for c in range(len(cells)):
        files = sorted((out / "cells" / f"cell-{c:04d}").glob("rep-*.nc"))
        if not files:
            continue
        parts = []
        for f in files:
            with xr.open_dataset(f, engine="h5netcdf") as part:
                parts.append(part.load())
        ds = xr.concat(parts, dim="replicate", combine_attrs="drop_conflicts")
        per_cell.append(ds.drop_attrs() if hasattr(ds, "drop_attrs") else ds)
        done.append(c)
    if not per_cell:
        raise FileNotFoundError(f"{out} holds no finished chunk yet.")
    ds = xr.concat(per_cell, dim="cell", join="outer")
    ds = ds.assign_coords(cell=done)
    for factor in cells[0]:
        values = [cells[c][factor] for c in done]
        values = ["none" if v is None else v for v in values]
        if any(isinstance(v, str) for v in values):
            dtype = object
        elif all(isinstance(v, (int, np.integer)) for v in values):
            dtype = int
        else:
            dtype = float
        ds = ds.assign_coords({factor: ("cell", np.asarray(values, dtype=dtype))})
    ds.attrs.update({"study": json.dumps(study.to_dict()), "kind": study.kind,
                     "method": study.method, "model": study.model,
                     "complete": int(not pending_chunks(study, out))})
    return ds


# ----------------------------------------------------------------------------------
# metrics (METHODS.md §5.3)
# ----------------------------------------------------------------------------------


def recovery_metrics(results: xr.Dataset) -> xr.Dataset:
    """Per cell and parameter: bias, relative bias, RMSE, coverage, width, power, errors.

    * ``bias`` = mean(posterior mean - truth); ``relative_bias`` = bias / |truth|
      (NaN where the truth is 0 or differs across replicates); ``rmse``.
    * ``coverage_50/80/95``: share of replicates whose central interval holds the
      truth; ``width_95``: mean width of the 95% interval.
    * ``power``: share whose 95% interval excludes 0, where the truth is not 0;
      ``false_positive_rate``: the same where the truth is 0.
    * ``type_s``: among replicates whose interval excludes 0 (truth not 0), the
      share with the wrong sign; ``type_m``: their mean |estimate| / |truth|.
    * per cell: ``directional_accuracy`` (the decision "first-led" when
      P(first-led) > 0.975, "second-led" below 0.025, else "none", against the
      truth's direction), ``directional_false_positive_rate`` (a direction declared
      when the truth has none), and sampler health: ``share_converged`` (MAP,
      Laplace: the optimiser reached a stationary point; NUTS: finite draws and
      split R-hat < 1.1; SVI: finite draws), ``share_divergent``,
      ``share_rhat_high`` (> 1.01), ``share_ess_low`` (< 400).
    """
    q = results["quantiles"]
    truth, mean = results["truth"], results["mean"]
    err = mean - truth
    out = xr.Dataset()
    out["bias"] = err.mean("replicate")
    const_truth = truth.max("replicate") == truth.min("replicate")
    out["relative_bias"] = xr.where(const_truth & (truth.mean("replicate") != 0),
                                    out["bias"] / abs(truth.mean("replicate")), np.nan)
    out["rmse"] = np.sqrt((err**2).mean("replicate"))
    for level in INTERVALS:
        lo, hi = (1 - level) / 2, 1 - (1 - level) / 2
        lower = q.sel(quantile=lo, method="nearest")
        upper = q.sel(quantile=hi, method="nearest")
        inside = (lower <= truth) & (truth <= upper)
        out[f"coverage_{int(round(level * 100))}"] = inside.where(truth.notnull()).mean("replicate")
    lower = q.sel(quantile=0.025, method="nearest")
    upper = q.sel(quantile=0.975, method="nearest")
    out["width_95"] = (upper - lower).mean("replicate")
    excludes = (lower > 0) | (upper < 0)
    nonzero = truth.notnull() & (truth != 0)
    zero = truth == 0
    out["power"] = excludes.where(nonzero).mean("replicate")
    out["false_positive_rate"] = excludes.where(zero).mean("replicate")
    significant = excludes & nonzero
    wrong_sign = np.sign(mean) != np.sign(truth)
    out["type_s"] = wrong_sign.where(significant).mean("replicate")
    out["type_m"] = (abs(mean) / abs(truth)).where(significant).mean("replicate")
    diff = truth.sel(parameter=DIFFERENCE)
    true_dir = np.sign(diff)
    p = results["p_first_led"]
    decision = xr.where(p > 0.975, 1.0, xr.where(p < 0.025, -1.0, 0.0))
    out["directional_accuracy"] = (decision == true_dir).where(diff.notnull()).mean("replicate")
    out["directional_false_positive_rate"] = (decision != 0).where(true_dir == 0).mean("replicate")
    out["share_converged"] = results["converged"].astype(float).mean("replicate")
    out["share_divergent"] = (results["divergences"] > 0).astype(float).mean("replicate")
    out["share_rhat_high"] = (results["max_rhat"] > 1.01).where(
        results["max_rhat"].notnull()).mean("replicate")
    out["share_ess_low"] = (results["min_ess_bulk"] < 400).where(
        results["min_ess_bulk"].notnull()).mean("replicate")
    out["num_replicates"] = results["mean"].isel(parameter=0).notnull().sum("replicate")
    out.attrs = dict(results.attrs)
    return out


def metrics_table(metrics: xr.Dataset, parameters=None) -> pd.DataFrame:
    """The metrics as a flat table: one row per cell and parameter, factors as columns."""
    ds = metrics if parameters is None else metrics.sel(parameter=list(parameters))
    frame = ds.to_dataframe().reset_index()
    return pd.DataFrame(frame)
