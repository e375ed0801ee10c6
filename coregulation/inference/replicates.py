"""Many independent single-series posteriors in one compiled program (simulation studies).

A recovery study or an SBC run fits the same model to hundreds of simulated
series.  Their posteriors are independent, so the potential of replicate ``r`` is
a function of its own unconstrained parameters *and its own data*; :func:`fit_replicates`
puts all replicates through one ``vmap``:

* ``"map"``: the posterior modes, by L-BFGS on the sum of the replicates'
  potentials (separable, so each block's optimum is its replicate's), then damped
  Newton steps per replicate with block Hessians from central differences of the
  gradient (one batched gradient call per coordinate, every replicate at once).
* ``"laplace"``: normal draws around each mode with the inverse block Hessian
  (unconstrained scale).
* ``"nuts"``: NumPyro's NUTS kernel (``numpyro.infer.hmc.hmc``), each chain with
  its own step-size and mass-matrix adaptation, started at its replicate's mode with
  the Laplace diagonal as the initial inverse mass matrix; one compiled program
  serves every replicate (the data are arguments).  On CPU the chains of one
  replicate run in lock-step and replicates follow one another (``nuts_batch=
  "chains"``); on accelerators every chain of every replicate shares one ``vmap``
  (``"replicates"``), where an iteration costs the batch's longest trajectory.

Priors are the model's parameter table under fixed :class:`PriorScales` (no
standardisation: the data are fitted on the scale they were simulated on, as
simulation-based calibration requires), truncated to stable systems through the
stationary likelihood (``-inf`` outside).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import scipy.optimize

from coregulation.inference.batch import SeriesBatch, build_series_log_likelihood
from coregulation.models._base import Model, PriorScales
from coregulation.models.parameters import ParameterSpace

REPLICATE_METHODS = ("map", "laplace", "nuts")


@dataclasses.dataclass(frozen=True, eq=False)
class ReplicateFits:
    """Posterior draws of ``num_replicates`` independent fits.

    ``draws[name]`` has shape (replicate, chain, draw, *parameter shape) on the
    constrained scale; ``unconstrained`` (replicate, chain, draw, k).  ``mode``
    (replicate, k) is each replicate's posterior mode (unconstrained).
    ``converged``: for MAP and Laplace, whether the optimiser reached a finite,
    stationary point (Laplace: with a positive-definite Hessian); for NUTS, whether
    every draw is finite and the chains mixed (split R-hat below 1.1; finer
    health is in ``stats``).  The start search's stationarity does not matter
    to NUTS, which moves on from wherever it starts.
    ``stats`` holds per-replicate sampler health (NUTS): ``divergences``,
    ``max_rhat``, ``min_ess_bulk``, ``min_ess_tail``, ``max_tree_depth_hits``.
    """

    space: ParameterSpace
    method: str
    draws: dict
    unconstrained: np.ndarray
    mode: np.ndarray
    converged: np.ndarray
    stats: dict

    @property
    def num_replicates(self) -> int:
        return int(self.unconstrained.shape[0])


def build_replicate_density(model: Model, batch: SeriesBatch, scales: PriorScales,
                            kalman: str = "sequential"):
    """``(log_density(theta, *data_r), data, space)`` for the series of ``batch``.

    ``log_density`` is the log posterior density (up to a constant) of one series
    at unconstrained ``theta``: its exact Kalman log-likelihood plus the
    log prior of the unconstrained vector.  ``data`` holds the per-series arrays
    (leading axis: replicate).
    """
    space = ParameterSpace(model, scales)
    series_ll, data = build_series_log_likelihood(model, batch, method=kalman)

    def log_density(theta, *data_r):
        value = series_ll(space.constrain(theta), *data_r) + space.log_prior_unconstrained(theta)
        return jnp.where(jnp.isnan(value), -jnp.inf, value)

    return log_density, data, space


# Compiled programs by (model, scales, steps, Kalman method): every chunk of a study
# cell, and every SBC batch of one design, reuses the first chunk's compilation.
_COMPILED: dict = {}


def _cache_key(model, batch, scales, kalman, what):
    from coregulation.inference.results import model_spec

    # everything the programs close over besides the data: the model, the prior scales,
    # the distinct steps (their lengths and their moderator values) and the
    # steady-state hint
    moderators = np.ascontiguousarray(batch.step_moderators, dtype=float)
    return (what, json.dumps(model_spec(model), sort_keys=True, default=str), scales,
            tuple(np.round(batch.step_lengths, 12)), moderators.shape, moderators.tobytes(),
            batch.steady_from, kalman)


def _batched_value_and_grad(log_density):
    def total(thetas, data):
        values = jax.vmap(log_density)(thetas, *data)
        return -jnp.sum(jnp.where(jnp.isfinite(values), values, -1e12)), values

    return jax.jit(jax.value_and_grad(total, has_aux=True))


def find_modes(log_density, data, start: np.ndarray, *, newton_steps: int = 8,
               fd_step: float = 1e-5, maxiter: int = 2000, compiled=None,
               hessian: bool = True):
    """Modes (replicate, k), block Hessians of the potential (replicate, k, k), converged.

    The Hessians cost ``2k`` batched gradient calls each (central differences), as
    does every Newton step: with many coordinates (hierarchical replicates) pass
    ``newton_steps=0`` and ``hessian=False`` where no curvature is needed (``None``
    comes back).
    """
    batched = compiled or _batched_value_and_grad(log_density)

    def value_and_grad(thetas):
        return batched(thetas, data)

    num, k = start.shape

    def fun(x):
        (v, _), g = value_and_grad(jnp.asarray(x.reshape(num, k)))
        return float(v), np.asarray(g).reshape(-1)

    result = scipy.optimize.minimize(fun, start.reshape(-1), jac=True, method="L-BFGS-B",
                                     options={"maxiter": maxiter, "ftol": 1e-14, "gtol": 1e-9,
                                              "maxcor": 20})
    x = result.x.reshape(num, k)
    # the compiled value-and-gradient, not a new jit: that would compile the batched
    # likelihood again on every call, with this chunk's data as constants
    def grad_fn(thetas):
        return value_and_grad(thetas)[1]

    for _ in range(newton_steps):  # damped Newton per replicate (blocks are independent)
        hess = _block_hessians(grad_fn, x, fd_step)
        (_, logp), g = value_and_grad(jnp.asarray(x))
        g, logp = np.asarray(g), np.asarray(logp)
        step = np.zeros_like(x)
        for r in range(num):
            vals, vecs = np.linalg.eigh(hess[r])
            vals = np.maximum(vals, 1e-8 + 1e-6 * np.abs(vals).max())  # positive definite
            step[r] = -(vecs / vals) @ vecs.T @ g[r]
        accepted = np.zeros(num, dtype=bool)
        scale = np.ones(num)
        for _ in range(10):
            trial = x + scale[:, None] * step
            (_, logp_new), _ = value_and_grad(jnp.asarray(trial))
            logp_new = np.asarray(logp_new)
            better = ~accepted & np.isfinite(logp_new) & (logp_new >= logp - 1e-12)
            x[better] = trial[better]
            accepted |= better
            scale = np.where(accepted, scale, scale / 2)
            if accepted.all():
                break
        if np.max(np.abs(step)) < 1e-9:
            break
    hess = _block_hessians(grad_fn, x, fd_step) if hessian else None
    (_, logp), g = value_and_grad(jnp.asarray(x))
    g = np.asarray(g)
    scale = np.maximum(1.0, np.abs(x))
    converged = np.isfinite(np.asarray(logp)) & (np.max(np.abs(g) / scale, axis=1) < 1e-3)
    return x, hess, converged


def _block_hessians(grad_fn, x: np.ndarray, step: float) -> np.ndarray:
    """Per-replicate Hessians of the summed potential by central differences.

    The potential is a sum over replicates, so perturbing coordinate ``j`` of
    every replicate at once and differencing the gradient gives column ``j`` of
    every block: ``2k`` batched gradient calls in all.
    """
    num, k = x.shape
    out = np.empty((num, k, k))
    for j in range(k):
        h = step * np.maximum(1.0, np.abs(x[:, j]))
        up, down = x.copy(), x.copy()
        up[:, j] += h
        down[:, j] -= h
        diff = np.asarray(grad_fn(jnp.asarray(up))) - np.asarray(grad_fn(jnp.asarray(down)))
        out[:, :, j] = diff / (2 * h[:, None])
    return 0.5 * (out + np.swapaxes(out, 1, 2))


def replicate_kalman_method(batch: SeriesBatch, method: str, num_chains: int,
                            num_warmup: int, num_samples: int) -> str:
    """``kalman="auto"`` for :func:`fit_replicates`: the expected likelihood evaluations
    of every replicate against the batch's steps, by the rule of ``fit``."""
    from coregulation.inference.bayes import auto_kalman_method, expected_evaluations

    evaluations = expected_evaluations(method, num_chains, num_warmup, num_samples, 0)
    return auto_kalman_method(evaluations * batch.num_series, int(batch.y.shape[1]))


def fit_replicates(
    model: Model,
    batch: SeriesBatch,
    scales: PriorScales,
    *,
    method: str = "laplace",
    num_samples: int = 1000,
    num_warmup: int = 1000,
    num_chains: int = 2,
    seed: int = 0,
    target_accept: float = 0.8,
    max_tree_depth: int = 10,
    start: np.ndarray | None = None,
    kalman: str = "auto",
    nuts_batch: str | None = None,
    devices: int | None = None,
) -> ReplicateFits:
    """Fit every series of ``batch`` on its own, all in one compiled program.

    Parameters
    ----------
    model, batch, scales
        The model, the replicates (one series each; same distinct steps) and the
        fixed prior scales (those the data were simulated under, for SBC).
    method
        ``"map"``, ``"laplace"`` or ``"nuts"`` (see the module docstring).
    num_samples, num_warmup, num_chains, target_accept, max_tree_depth
        Draws per chain (Laplace: ``num_samples`` draws, one chain), NUTS settings.
    seed
        Seeds every random path (Laplace draws, NUTS keys and jitter).
    start
        Unconstrained starting points (replicate, k); default the prior median.
    kalman
        Kalman method of the likelihood; ``"auto"`` weighs the expected likelihood
        evaluations of all replicates against the compile cost, as ``fit`` does
        (:func:`~coregulation.inference.bayes.auto_kalman_method`): ``"fast"`` for
        NUTS on series of hundreds of steps, ``"sequential"`` for Laplace and MAP.
    nuts_batch
        ``"replicates"``: NUTS runs every chain of every replicate in one ``vmap``
        (one program; each iteration costs the longest trajectory of the batch, which
        pays on accelerators); ``"chains"``: the chains of one replicate in lock-step,
        replicate after replicate through the same compiled program (no lock-step
        waste across posteriors of different difficulty; better on CPU).  Default:
        ``"replicates"`` on GPU/TPU, ``"chains"`` on CPU.
    devices
        With ``nuts_batch="chains"``: over how many of JAX's local devices the
        replicates are spread, one replicate per device at a time (default: all of
        them; importing coregulation gives JAX several CPU devices, each run on its
        own thread, so the replicates use every core).  ``1``: replicate after
        replicate on one device.  The draws do not depend on it.
    """
    nuts_batch, devices = _check_settings(method, nuts_batch, devices, num_samples=num_samples,
                                          num_warmup=num_warmup, num_chains=num_chains,
                                          max_tree_depth=max_tree_depth)
    if kalman == "auto":
        kalman = replicate_kalman_method(batch, method, num_chains, num_warmup, num_samples)
    key = _cache_key(model, batch, scales, kalman, "density")
    if key not in _COMPILED:
        log_density, _, space = build_replicate_density(model, batch, scales, kalman)
        _COMPILED[key] = (log_density, space, _batched_value_and_grad(log_density), {})
    log_density, space, batched, nuts_cache = _COMPILED[key]
    data = _data_of(batch)
    num = batch.num_series
    if start is None:
        centre = np.asarray(space.unconstrain(space.prior_median()))
        start = np.broadcast_to(centre, (num, space.size)).copy()
    start = np.asarray(start, dtype=float)
    if start.shape != (num, space.size):
        raise ValueError(f"start must have shape ({num}, {space.size}); got {start.shape}.")
    mode, hess, converged = find_modes(log_density, data, start, compiled=batched)
    unconstrained, converged, stats = _draw(
        method, log_density, data, mode, hess, converged, seed, num_samples=num_samples,
        num_warmup=num_warmup, num_chains=num_chains, target_accept=target_accept,
        max_tree_depth=max_tree_depth, nuts_cache=nuts_cache, nuts_batch=nuts_batch,
        devices=devices)
    draws = _constrained_draws(space.constrain, unconstrained)
    return ReplicateFits(space, method, draws, unconstrained, mode, converged, stats)


def _check_settings(method, nuts_batch, devices, **counts):
    """Validated ``(nuts_batch, devices)``; errors name the argument and what came."""
    if method not in REPLICATE_METHODS:
        raise ValueError(f"method must be one of {REPLICATE_METHODS}; got {method!r}.")
    if nuts_batch is None:
        nuts_batch = "chains" if jax.default_backend() == "cpu" else "replicates"
    if nuts_batch not in ("chains", "replicates"):
        raise ValueError(f"nuts_batch must be 'chains' or 'replicates'; got {nuts_batch!r}.")
    available = jax.local_device_count()
    if devices is None:
        devices = available
    if (not isinstance(devices, (int, np.integer)) or isinstance(devices, bool)
            or not 1 <= devices <= available):
        raise ValueError(
            f"devices must be an integer from 1 to the {available} local JAX device(s); "
            f"got {devices!r}."
        )
    lows = {"num_samples": 1, "num_warmup": 0, "num_chains": 1, "max_tree_depth": 1}
    for name, value in counts.items():
        low = lows[name]
        if not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}; got {value!r}.")
    return nuts_batch, devices


def _draw(method, log_density, data, mode, hess, converged, seed, *, num_samples, num_warmup,
          num_chains, target_accept, max_tree_depth, nuts_cache, nuts_batch, devices):
    """Unconstrained draws (replicate, chain, draw, k) by ``method`` from the modes."""
    num, k = mode.shape
    converged = np.array(converged, dtype=bool)
    rng = np.random.default_rng(seed)
    stats: dict = {}
    if method == "map":
        unconstrained = mode[:, None, None, :]
    elif method == "laplace":
        unconstrained = np.empty((num, 1, num_samples, k))
        for r in range(num):
            vals, vecs = np.linalg.eigh(hess[r])
            if np.any(vals <= 0) or not converged[r]:
                converged[r] = False
                vals = np.maximum(vals, 1e-8)
            root = vecs / np.sqrt(vals)
            unconstrained[r, 0] = mode[r] + rng.standard_normal((num_samples, k)) @ root.T
    else:
        unconstrained, stats = _nuts(log_density, data, mode, hess, rng, num_samples=num_samples,
                                     num_warmup=num_warmup, num_chains=num_chains,
                                     target_accept=target_accept, max_tree_depth=max_tree_depth,
                                     cache=nuts_cache, nuts_batch=nuts_batch,
                                     devices=devices)
        converged = _chains_mixed(unconstrained, stats["max_rhat"])
    return unconstrained, converged, stats


# Split R-hat above this is a gross failure to mix (stuck or separated chains), the
# classic bar; finer health (R-hat > 1.01, ESS, divergences) is reported on its own.
_MIXED_RHAT = 1.1


def _chains_mixed(unconstrained: np.ndarray, max_rhat: np.ndarray) -> np.ndarray:
    """Per replicate: every draw finite, and split R-hat below ``_MIXED_RHAT`` (one
    chain has no R-hat: finite draws suffice)."""
    finite = np.isfinite(unconstrained).all(axis=tuple(range(1, unconstrained.ndim)))
    rhat = np.asarray(max_rhat, dtype=float)
    return finite & (np.isnan(rhat) | (rhat < _MIXED_RHAT))


def _constrained_draws(constrain, unconstrained: np.ndarray) -> dict:
    """``constrain`` over every draw: name -> (replicate, chain, draw, *shape)."""
    flat = unconstrained.reshape(-1, unconstrained.shape[-1])
    constrained = jax.jit(jax.vmap(constrain))(jnp.asarray(flat))
    return {name: np.asarray(v).reshape(unconstrained.shape[:3] + np.shape(v)[1:])
            for name, v in constrained.items()}


def _nuts(log_density, data, mode, hess, rng, *, num_samples, num_warmup, num_chains,
          target_accept, max_tree_depth, cache=None, nuts_batch="chains", devices=1):
    from numpyro.diagnostics import effective_sample_size, split_gelman_rubin
    from numpyro.infer.hmc import hmc

    num, k = mode.shape
    inverse_mass = np.ones((num, k))  # without curvature (hess None): unit, as numpyro's
    for r in range(num if hess is not None else 0):
        diag = np.diag(hess[r])
        good = np.isfinite(diag) & (diag > 0)
        inverse_mass[r] = np.clip(np.where(good, 1.0 / np.where(good, diag, 1.0), 1.0), 1e-8, 10.0)

    def potential_gen(*data_r):
        return lambda theta: -log_density(theta, *data_r)

    init_kernel, sample_kernel = hmc(potential_fn_gen=potential_gen, algo="NUTS")
    total = num_warmup + num_samples
    cache = {} if cache is None else cache
    settings = (num_warmup, num_samples, float(target_accept), int(max_tree_depth))

    def run_chain(key, theta0, inv_mass, *data_r):
        state = init_kernel(theta0, num_warmup, inverse_mass_matrix=inv_mass,
                            target_accept_prob=target_accept, max_tree_depth=max_tree_depth,
                            model_args=data_r, rng_key=key)

        def body(state, _):
            state = sample_kernel(state, model_args=data_r)
            return state, (state.z, state.diverging, state.num_steps)

        _, (z, diverging, steps) = jax.lax.scan(body, state, None, length=total)
        return z[num_warmup:], diverging[num_warmup:], steps[num_warmup:]

    seeds = rng.integers(0, 2**31 - 1, size=num * num_chains)
    keys = jax.vmap(jax.random.key)(jnp.asarray(seeds))
    theta0 = np.repeat(mode, num_chains, axis=0)
    theta0 = theta0 + 0.05 * rng.standard_normal(theta0.shape) * np.sqrt(
        np.repeat(inverse_mass, num_chains, axis=0))
    inv_mass = np.repeat(inverse_mass, num_chains, axis=0)
    if settings not in cache:
        cache[settings] = jax.jit(jax.vmap(run_chain))
    if nuts_batch == "replicates":  # every chain of every replicate in one lock-step vmap
        repeated = tuple(jnp.repeat(d, num_chains, axis=0) for d in data)
        z, diverging, steps = cache[settings](keys, jnp.asarray(theta0), jnp.asarray(inv_mass),
                                              *repeated)
    elif min(devices, num) > 1:
        # Replicates side by side on the devices (on CPU, each runs on its own
        # thread): one pmapped program, each device's chains in lock-step, each
        # device on its own replicate; a group of ``devices`` replicates per call,
        # the last group padded with the last replicate (results dropped).  No more
        # devices than replicates: a padded slot is wasted work.
        devices = min(devices, num)
        if ("pmap", devices, settings) not in cache:
            cache[("pmap", devices, settings)] = jax.pmap(
                jax.vmap(run_chain), devices=jax.local_devices()[:devices])
        program = cache[("pmap", devices, settings)]
        parts = []
        for first in range(0, num, devices):
            group = np.minimum(np.arange(first, first + devices), num - 1)
            rows = (group[:, None] * num_chains + np.arange(num_chains)).ravel()

            def grouped(a, rows=rows):
                return a[rows].reshape((devices, num_chains, *a.shape[1:]))

            own = tuple(jnp.repeat(d[group], num_chains, axis=0) for d in data)
            out = program(grouped(keys), grouped(jnp.asarray(theta0)),
                          grouped(jnp.asarray(inv_mass)),
                          *(d.reshape((devices, num_chains, *d.shape[1:])) for d in own))
            keep = min(devices, num - first)
            parts.append(tuple(np.asarray(a)[:keep].reshape((keep * num_chains, *a.shape[2:]))
                               for a in out))
        z, diverging, steps = (np.concatenate([p[i] for p in parts]) for i in range(3))
    else:  # one compiled program (chains in lock-step), replicate after replicate
        parts = []
        for r in range(num):
            rows = slice(r * num_chains, (r + 1) * num_chains)
            own = tuple(jnp.repeat(d[r : r + 1], num_chains, axis=0) for d in data)
            parts.append(cache[settings](keys[rows], jnp.asarray(theta0[rows]),
                                         jnp.asarray(inv_mass[rows]), *own))
        z, diverging, steps = (np.concatenate([np.asarray(p[i]) for p in parts])
                               for i in range(3))
    z = np.asarray(z).reshape(num, num_chains, num_samples, k)
    diverging = np.asarray(diverging).reshape(num, num_chains, num_samples)
    steps = np.asarray(steps).reshape(num, num_chains, num_samples)
    rhat = np.full(num, np.nan)
    ess_bulk = np.empty(num)
    for r in range(num):
        if num_chains > 1:
            rhat[r] = float(np.max(split_gelman_rubin(z[r])))
        ess_bulk[r] = float(np.min(effective_sample_size(z[r])))
    stats = {
        "divergences": diverging.sum(axis=(1, 2)),
        "max_rhat": rhat,
        "min_ess_bulk": ess_bulk,
        "max_tree_depth_hits": (steps >= 2**max_tree_depth - 1).sum(axis=(1, 2)),
    }
    return z, stats


def _data_of(batch: SeriesBatch) -> tuple:
    """The per-series arrays the series log-likelihood reads (as in the batch module)."""
    return (
        jnp.asarray(np.where(batch.observed, np.nan_to_num(batch.y), 0.0)),
        jnp.asarray(batch.observed),
        jnp.asarray(batch.valid),
        jnp.asarray(batch.step_index),
        jnp.asarray(batch.inputs),
    )


def batch_from_arrays(times: np.ndarray, ys: Sequence[np.ndarray]) -> SeriesBatch:
    """A batch of replicate series sharing one time grid (``ys``: (time, 2) each)."""
    return SeriesBatch.from_series([(times, y, None, None) for y in ys])


# ----------------------------------------------------------------------------------
# replicates of many dyads: the hierarchical model, one compiled program per design
# ----------------------------------------------------------------------------------


def _design_of(model, datasets, scales, pooling):
    """The batches of every replicate, the pooled batch of all their series, and the
    design they share (errors name the first replicate that differs)."""
    import xarray as xr

    from coregulation import data as data_module
    from coregulation.inference.hierarchy import Pooling, build_design

    datasets = list(datasets)
    if not datasets:
        raise ValueError("datasets is empty: give at least one replicate's Dataset.")
    for i, ds in enumerate(datasets):
        if not isinstance(ds, xr.Dataset):
            raise TypeError(f"datasets[{i}] must be a data-contract Dataset; got "
                            f"{type(ds).__name__}.")
    batches = [SeriesBatch.from_dataset(ds, scales) for ds in datasets]
    if pooling is None:
        pooling = Pooling(levels=("dyad",) if np.unique(batches[0].dyad_index).size > 1 else ())
    designs = [build_design(model, b, pooling, ds) for b, ds in zip(batches, datasets)]
    first = designs[0]
    for i, (b, d) in enumerate(zip(batches[1:], designs[1:]), start=1):
        same = (b.num_series == batches[0].num_series
                and np.array_equal(d.dyad_index, first.dyad_index)
                and np.array_equal(b.session_index, batches[0].session_index)
                and d.num_dyads == first.num_dyads and d.therapists == first.therapists
                and all(np.array_equal(d.covariate_values[n], first.covariate_values[n])
                        for n in first.covariate_values))
        if not same:
            raise ValueError(
                f"datasets[{i}] has another design than datasets[0] (dyads, sessions, "
                "therapists or covariates): replicates fitted together must share it."
            )
    series = [(s.times, s.y, s.inputs, s.moderators) for ds in datasets
              for s in data_module.iter_series(data_module.validate(ds))]
    pooled = SeriesBatch.from_series(series, scales=scales)
    return batches, pooled, first


def build_hierarchical_replicate_density(model: Model, datasets, scales: PriorScales, *,
                                         pooling=None, kalman: str = "fast"):
    """``(log_density(theta, *data_r), data, flat_start, constrain, design)`` for replicates
    of a many-dyad design.

    ``log_density`` is the hierarchical model's log posterior density (the same
    numpyro model as ``fit``'s: population values, level scales, non-centred or
    centred unit effects, covariate slopes) on its flat unconstrained vector
    ``theta``, with the likelihood of one replicate's series read from ``data_r``:
    the per-series arrays of that replicate (``data`` stacks them: replicate,
    series, ...).  ``flat_start`` is ``fit``'s start (population values at the prior
    medians, level scales 0.1, unit effects 0); ``constrain(theta)`` gives the
    population values by name.
    """
    batches, pooled, design = _design_of(model, datasets, scales, pooling)
    density, flat_start, constrain = _hierarchical_density(model, pooled, design, scales, kalman)
    return density, _stacked_data(pooled, len(batches)), flat_start, constrain, design


def _stacked_data(pooled: SeriesBatch, num: int) -> tuple:
    return tuple(d.reshape((num, pooled.num_series // num) + d.shape[1:])
                 for d in _data_of(pooled))


def _hierarchical_density(model, pooled: SeriesBatch, design, scales, kalman):
    from numpyro.infer.util import constrain_fn, potential_energy, unconstrain_fn

    from coregulation.inference.bayes import hierarchy_start_values
    from coregulation.inference.hierarchy import build_numpyro_model

    series_ll, _ = build_series_log_likelihood(model, pooled, method=kalman)
    space = ParameterSpace(model, scales)
    priors_only = build_numpyro_model(design, None, likelihood=False)
    start = hierarchy_start_values(design, space.prior_median())
    z = unconstrain_fn(priors_only, (), {},
                       {k: jnp.asarray(v, dtype=float) for k, v in start.items()})
    flat_start, unravel = jax.flatten_util.ravel_pytree(z)

    def log_density(theta, *data_r):
        def batch_log_likelihood(series_params):
            return jax.vmap(series_ll)(series_params, *data_r)

        numpyro_model = build_numpyro_model(design, batch_log_likelihood)
        value = -potential_energy(numpyro_model, (), {}, unravel(theta))
        return jnp.where(jnp.isnan(value), -jnp.inf, value)

    names = [p.name for p in design.table]

    def constrain(theta):
        values = constrain_fn(priors_only, (), {}, unravel(theta), return_deterministic=False)
        return {name: values[name] for name in names}

    return log_density, np.asarray(flat_start, dtype=float), constrain


def fit_hierarchical_replicates(
    model: Model,
    datasets,
    scales: PriorScales,
    *,
    pooling=None,
    method: str = "laplace",
    num_samples: int = 1000,
    num_warmup: int = 1000,
    num_chains: int = 2,
    seed: int = 0,
    target_accept: float = 0.8,
    max_tree_depth: int = 10,
    kalman: str = "auto",
    nuts_batch: str | None = None,
    devices: int | None = None,
) -> ReplicateFits:
    """Fit the hierarchical model to every replicate of a many-dyad design at once.

    ``datasets``: one data-contract Dataset per replicate, all with the same dyads,
    sessions (and therapists, covariates); their series may differ in values and
    missingness.  ``pooling``: as ``fit``'s (default: every parameter pooled across
    dyads).  Priors are the model's table under the fixed ``scales`` (no
    standardisation), as in :func:`fit_replicates`, whose settings the others share.

    The replicates' posteriors are independent, so their potentials are summed and
    put through one ``vmap``: one compiled program for the whole set (and for later
    sets of the same design) instead of a ``fit``, with its compilations, per
    replicate.  The start search is L-BFGS from ``fit``'s start, without Newton
    refinement (block Hessians cost ``2k`` batched gradient calls, and the
    hierarchical vector has hundreds of coordinates); the Hessian at the mode is
    computed once for ``"laplace"`` and ``"nuts"``.  NUTS starts at each replicate's
    mode with the inverse of the Hessian's diagonal as its initial inverse mass
    matrix (a unit one left the population coordinates, whose posterior scales are
    far below 1, to long trajectories through warm-up).

    ``draws`` hold the population values by name; ``unconstrained`` and ``mode``
    the full hierarchical vector.
    """
    nuts_batch, devices = _check_settings(method, nuts_batch, devices, num_samples=num_samples,
                                          num_warmup=num_warmup, num_chains=num_chains,
                                          max_tree_depth=max_tree_depth)
    batches, pooled, design = _design_of(model, datasets, scales, pooling)
    if kalman == "auto":
        kalman = replicate_kalman_method(batches[0], method, num_chains, num_warmup,
                                         num_samples)
    # the programs close over the design, the pooled steps and the steady-state hint;
    # the data are arguments: every chunk of a cell with the same key reuses them
    key = ("hierarchical", _cache_key(model, pooled, scales, kalman, "density"),
           repr(design.pooling), tuple(design.dyad_index), design.num_dyads,
           design.therapists,
           tuple((n, v.tobytes()) for n, v in sorted(design.covariate_values.items())))
    if key not in _COMPILED:
        log_density, flat_start, constrain = _hierarchical_density(model, pooled, design,
                                                                   scales, kalman)
        _COMPILED[key] = (log_density, flat_start, constrain,
                          _batched_value_and_grad(log_density), {})
    log_density, flat_start, constrain, batched, nuts_cache = _COMPILED[key]
    num = len(batches)
    data = _stacked_data(pooled, num)
    start = np.broadcast_to(flat_start, (num, flat_start.size)).copy()
    mode, hess, converged = find_modes(log_density, data, start, compiled=batched,
                                       newton_steps=0, hessian=method != "map")
    unconstrained, converged, stats = _draw(
        method, log_density, data, mode, hess, converged, seed, num_samples=num_samples,
        num_warmup=num_warmup, num_chains=num_chains, target_accept=target_accept,
        max_tree_depth=max_tree_depth, nuts_cache=nuts_cache, nuts_batch=nuts_batch,
        devices=devices)
    draws = _constrained_draws(constrain, unconstrained)
    return ReplicateFits(ParameterSpace(model, scales), method, draws, unconstrained, mode,
                         converged, stats)
