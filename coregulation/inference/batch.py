"""Many dyad-sessions as one padded batch, and their log-likelihoods in one ``vmap``.

Every present dyad-session of a dataset becomes one row of a :class:`SeriesBatch`.
Series of different lengths are padded at the end; the padding is marked
*observed* (with value 0) so that each series' covariance recursion stays
time-invariant to the end of the batch and the ``fast`` method can still solve
its tail in closed form, and the padded terms are then left out of the sum
(``valid``).  The distinct steps (step length x moderator values) of all series
are pooled, so each series is discretised once per distinct step of the study:
once in all for a regular grid without moderators.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from coregulation import data as data_module
from coregulation.inference.kalman import METHODS, log_likelihood_terms, steady_from_hint
from coregulation.inference.likelihood import MIN_OBSERVED
from coregulation.models._base import Model, PriorScales, TimeGrid


class SeriesBatch(NamedTuple):
    """Padded arrays of ``num_series`` dyad-sessions (numpy; built once, outside ``jit``).

    Attributes
    ----------
    y : (num_series, num_timesteps, 2)
        Observations; NaN where missing, 0 in the padding.
    observed : (num_series, num_timesteps, 2) bool
        Observed values, padding included (see the module docstring).
    valid : (num_series, num_timesteps) bool
        True on a series' own time points, False on its padding.
    step_index : (num_series, num_timesteps) int
        Index into ``step_lengths`` / ``step_moderators`` of the step into each point.
    step_lengths, step_moderators : (num_steps,), (num_steps, num_moderators)
        The distinct steps of the whole batch.
    inputs : (num_series, num_timesteps, num_inputs)
    times : (num_series, num_timesteps)
        Observation times, NaN in the padding.
    dyad_index, session_index : (num_series,) int
        Position of each series' dyad and session in ``dyads`` / ``sessions``.
    dyads, sessions : tuple
        Labels, in dataset order.
    steady_from : int or None
        From this step on no series changes step or missing pattern.
    scales : PriorScales
        Sampling interval, session length and data scale for the default priors.
    """

    y: np.ndarray
    observed: np.ndarray
    valid: np.ndarray
    step_index: np.ndarray
    step_lengths: np.ndarray
    step_moderators: np.ndarray
    inputs: np.ndarray
    times: np.ndarray
    dyad_index: np.ndarray
    session_index: np.ndarray
    dyads: tuple
    sessions: tuple
    steady_from: int | None
    scales: PriorScales

    @property
    def num_series(self) -> int:
        return int(self.y.shape[0])

    @property
    def num_timesteps(self) -> int:
        return int(self.y.shape[1])

    @property
    def num_observed(self) -> np.ndarray:
        """Observed values per series (both roles counted)."""
        return (~np.isnan(self.y) & self.valid[..., None]).sum(axis=(1, 2))

    def grid(self, i: int) -> TimeGrid:
        """Series ``i``'s own time grid (no padding), for simulation and smoothing."""
        n = int(self.valid[i].sum())
        steps = np.asarray(self.step_index[i, :n])
        used, local = np.unique(steps, return_inverse=True)
        return TimeGrid(
            step_index=local.reshape(-1).astype(np.int32),
            step_lengths=self.step_lengths[used],
            step_moderators=self.step_moderators[used],
            inputs=self.inputs[i, :n],
            times=self.times[i, :n],
        )

    @classmethod
    def from_dataset(cls, ds: xr.Dataset, scales: PriorScales | None = None) -> SeriesBatch:
        """All present dyad-sessions of a data-contract dataset, in dataset order."""
        if not isinstance(ds, xr.Dataset):
            raise TypeError(
                f"data must be an xarray Dataset from coregulation.data (from_long, "
                f"from_arrays, read_csv, load); got {type(ds).__name__}."
            )
        ds = data_module.validate(ds)
        dyads = tuple(data_module._plain(d) for d in ds["dyad"].values)
        sessions = tuple(data_module._plain(s) for s in ds["session"].values)
        series = list(data_module.iter_series(ds))
        index = {(d, s): (i, j) for i, d in enumerate(dyads) for j, s in enumerate(sessions)}
        return cls.from_series(
            [(s.times, s.y, s.inputs, s.moderators) for s in series],
            dyad_index=[index[(s.dyad, s.session)][0] for s in series],
            session_index=[index[(s.dyad, s.session)][1] for s in series],
            dyads=dyads,
            sessions=sessions,
            scales=scales,
        )

    @classmethod
    def from_series(
        cls,
        series,
        dyad_index=None,
        session_index=None,
        dyads=None,
        sessions=None,
        scales: PriorScales | None = None,
    ) -> SeriesBatch:
        """From ``(times, y, inputs, moderators)`` tuples (inputs/moderators may be None)."""
        series = list(series)
        if not series:
            raise ValueError("no series to fit: the dataset has no present dyad-session.")
        grids, ys = [], []
        for k, (times, y, inputs, moderators) in enumerate(series):
            y = np.asarray(y, dtype=float)
            if y.ndim != 2 or y.shape[1] != 2:
                raise ValueError(f"series {k}: y must be (time, role=2); got shape {y.shape}.")
            observed = int((~np.isnan(y)).any(axis=1).sum())
            if observed < MIN_OBSERVED:
                raise ValueError(
                    f"series {k} has {observed} observed time points; at least "
                    f"{MIN_OBSERVED} are needed."
                )
            grids.append(TimeGrid.from_times(times, inputs=inputs, moderators=moderators))
            ys.append(y)
        widths = {(g.inputs.shape[1], g.step_moderators.shape[1]) for g in grids}
        if len(widths) > 1:
            raise ValueError(f"all series must carry the same inputs and moderators; got {widths}.")
        num_inputs, num_moderators = widths.pop()
        # Pool the distinct steps: same rounding as TimeGrid.from_times.
        keys = np.concatenate(
            [np.column_stack([np.round(g.step_lengths, 9), g.step_moderators]) for g in grids]
        )
        lengths = np.concatenate([g.step_lengths for g in grids])
        unique, inverse = np.unique(keys, axis=0, return_inverse=True)
        inverse = inverse.reshape(-1)
        step_lengths = np.array([lengths[inverse == u].mean() for u in range(unique.shape[0])])
        num_series = len(series)
        num_timesteps = max(g.num_timesteps for g in grids)
        y_out = np.zeros((num_series, num_timesteps, 2))
        valid = np.zeros((num_series, num_timesteps), dtype=bool)
        step_index = np.zeros((num_series, num_timesteps), dtype=np.int32)
        inputs = np.zeros((num_series, num_timesteps, num_inputs))
        times = np.full((num_series, num_timesteps), np.nan)
        offset = 0
        hints = []
        for k, (g, y) in enumerate(zip(grids, ys)):
            n = g.num_timesteps
            local = inverse[offset : offset + g.step_lengths.shape[0]]
            offset += g.step_lengths.shape[0]
            y_out[k, :n] = y
            valid[k, :n] = True
            step_index[k, :n] = local[g.step_index]
            step_index[k, n:] = step_index[k, n - 1]
            inputs[k, :n] = g.inputs
            if n < num_timesteps and num_inputs:
                inputs[k, n:] = g.inputs[-1]
            times[k, :n] = g.times
            hints.append(steady_from_hint(step_index[k], y_out[k]))
        steady = None if any(h is None for h in hints) else max(hints)
        observed = ~np.isnan(y_out)
        if scales is None:
            scales = _scales(grids, ys)
        return cls(
            y=y_out,
            observed=observed | ~valid[..., None],
            valid=valid,
            step_index=step_index,
            step_lengths=step_lengths,
            step_moderators=unique[:, 1:].reshape(unique.shape[0], num_moderators),
            inputs=inputs,
            times=times,
            dyad_index=np.asarray(
                np.arange(num_series) if dyad_index is None else dyad_index, dtype=int
            ),
            session_index=np.asarray(
                np.zeros(num_series) if session_index is None else session_index, dtype=int
            ),
            dyads=tuple(range(num_series)) if dyads is None else tuple(dyads),
            sessions=(0,) if sessions is None else tuple(sessions),
            steady_from=steady,
            scales=scales,
        )


def _scales(grids, ys) -> PriorScales:
    interval = float(np.median([g.sampling_interval for g in grids]))
    duration = float(np.median([g.duration for g in grids]))
    sds = []
    for y in ys:
        sd = np.nanstd(y, axis=0)
        sds.extend(sd[np.isfinite(sd) & (sd > 0)])
    y_scale = float(np.mean(sds)) if sds else 1.0
    return PriorScales(interval, max(duration, 10 * interval), y_scale)


def _series_grid(batch: SeriesBatch, step_index, inputs) -> TimeGrid:
    return TimeGrid(
        step_index=step_index,
        step_lengths=batch.step_lengths,
        step_moderators=batch.step_moderators,
        inputs=inputs,
        times=None,
    )


def build_series_log_likelihood(model: Model, batch: SeriesBatch, method: str = "auto",
                                per_step: bool = False,
                                stop_at_steady_state: bool | str = False,
                                converged_after: int | None = None):
    """One series' log-likelihood as a pure function of its parameters *and its data*.

    Returns ``(log_likelihood, data)``: ``data`` is a tuple of per-series arrays
    (leading axis ``num_series``: observations, observed mask, valid mask, step
    index, inputs) and ``log_likelihood(params, *data_s)`` scores one series from
    its slice ``data_s``.  The series share the batch's distinct steps and its
    steady-state hint; anything else may differ, so one compiled function serves
    every replicate of a simulation study (``vmap`` over the data too).

    ``stop_at_steady_state`` is the ``fast`` method's run-time switch
    (:func:`~coregulation.inference.kalman.log_likelihood_terms`): it pays only where
    nothing ``vmap``s the function, since under ``vmap`` both its branches run;
    or the name of the ``vmap`` axis over series that the caller (never vmapped
    itself) uses, so that the series switch together.  ``converged_after``: where
    that switch checks for the steady state (see ``log_likelihood_terms``).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}.")
    if method == "auto":
        # Measured (benchmarks/batch_methods.py, RESULTS.md): vmapped over 1, 8 and
        # 40 series, with or without missing values, ``fast`` takes 0.1-0.9x the
        # sequential filter's time for value and gradient (one tie, 1.02x).
        method = "fast"
    for i in range(batch.num_series):
        model.check_grid(batch.grid(i))
    data = (
        jnp.asarray(np.where(batch.observed, np.nan_to_num(batch.y), 0.0)),
        jnp.asarray(batch.observed),
        jnp.asarray(batch.valid),
        jnp.asarray(batch.step_index),
        jnp.asarray(batch.inputs),
    )
    steady = batch.steady_from
    stationary = model.initial == "stationary"

    def one(params, y_s, observed_s, valid_s, step_index_s, inputs_s):
        ssm = model.to_lgssm(params, _series_grid(batch, step_index_s, inputs_s))
        terms = log_likelihood_terms(ssm, y_s, method=method, steady_from=steady,
                                     observed=observed_s,
                                     stop_at_steady_state=stop_at_steady_state,
                                     converged_after=converged_after)
        if per_step:
            terms = jnp.where(valid_s, jnp.where(jnp.isnan(terms), -jnp.inf, terms), 0.0)
            if stationary:
                terms = jnp.where(model.is_stable(params), terms,
                                  jnp.where(valid_s, -jnp.inf, 0.0))
            return terms
        value = jnp.sum(jnp.where(valid_s, terms, 0.0))
        value = jnp.where(jnp.isnan(value), -jnp.inf, value)
        if stationary:
            value = jnp.where(model.is_stable(params), value, -jnp.inf)
        return value

    # jit-wrapped so that its trace is cached: a fit evaluates the likelihood in
    # several programs (MAP, Hessian, initial values, NUTS, pointwise terms), and
    # tracing the Kalman code in Python costs seconds each time.
    return jax.jit(one), data


_SERIES_AXIS = "series"


def build_batch_log_likelihood(model: Model, batch: SeriesBatch, method: str = "auto",
                               per_step: bool = False, unbatched_caller: bool = False,
                               converged_after: int | None = None):
    """A pure function ``params -> (num_series,)`` log-likelihoods, one per series.

    With ``per_step=True`` it returns ``(num_series, num_timesteps)``: the terms
    ``log p(y_t | y_<t)`` of each series (0 in the padding), whose sums are the
    series' log-likelihoods.

    ``params`` maps each free parameter of ``model`` to either its own shape (shared
    by all series) or ``(num_series, *shape)`` (one value per series).  Series run
    through one ``vmap``; the result is ``-inf`` for a series whose covariance
    fails or, with a stationary initial state, whose dynamics are unstable.

    ``unbatched_caller``: the caller evaluates the function one point at a time
    (an optimiser, chains on their own devices), never under ``vmap``.  A batch of
    one series then skips the ``vmap`` over series, and the ``fast`` filter stops
    its covariance recursion once it reaches the steady state (a run-time branch
    that ``vmap`` would turn into computing both sides).  Measured on one
    oscillator series, T = 600: 0.47 against 0.83 ms per value and gradient.
    Many series are vmapped over a named axis and stop together, once every one
    has reached the steady state.  ``converged_after``: how many steps into the
    time-invariant tail that check comes (default 128; a fit picks it from its start
    point with :func:`~coregulation.inference.kalman.steps_to_steady_state`); it
    changes the cost, never the values.
    """
    single = unbatched_caller and batch.num_series == 1
    # an unbatched caller of many series vmaps them over a named axis, and their
    # filters leave the closed form together once all have reached the steady state
    stop = True if single else (_SERIES_AXIS if unbatched_caller else False)
    one, data = build_series_log_likelihood(model, batch, method, per_step,
                                            stop_at_steady_state=stop,
                                            converged_after=converged_after)
    table = {p.name: p for p in model.parameter_table(batch.scales)}

    def batch_log_likelihood(params: Mapping[str, jax.Array]) -> jax.Array:
        missing = sorted(set(table) - set(params))
        if missing:
            raise KeyError(f"missing parameter(s) {missing}; expected {sorted(table)}.")
        axes = {}
        for name, p in table.items():
            ndim = jnp.ndim(params[name])
            if ndim == len(p.shape):
                axes[name] = None
            elif ndim == len(p.shape) + 1 and jnp.shape(params[name])[0] == batch.num_series:
                axes[name] = 0
            else:
                raise ValueError(
                    f"{name} must have shape {p.shape} (shared) or "
                    f"({batch.num_series}, *{p.shape}) (per series); got {jnp.shape(params[name])}."
                )
        free = {name: params[name] for name in table}
        if single:
            first = {n: (v if axes[n] is None else v[0]) for n, v in free.items()}
            return one(first, *(d[0] for d in data))[None]
        return jax.vmap(one, in_axes=(axes, 0, 0, 0, 0, 0), axis_name=_SERIES_AXIS)(
            free, *data)

    return batch_log_likelihood
