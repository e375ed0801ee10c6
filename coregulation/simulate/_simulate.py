"""Exact simulation from any model on any time grid (METHODS.md §5.1)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from coregulation import data as _data
from coregulation._annotations import resolved
from coregulation.inference.kalman import LGSSM
from coregulation.models import _discretise as disc
from coregulation.models._base import Model, TimeGrid
from coregulation.models.parameters import ParameterSpace


@resolved
class Simulation(NamedTuple):
    """One simulated series: observations ``y`` (time, role) and latent ``states``."""

    times: np.ndarray
    y: np.ndarray
    states: np.ndarray


def _chol_psd(cov):
    """A square root ``L`` (``L L^T = cov``) of a PSD matrix that may be singular.

    Eigen-decomposition rather than Cholesky: a zero-length step has ``Q = 0`` and
    the oscillator's position block of ``Q`` is nearly singular for short steps.
    """
    eigval, eigvec = jnp.linalg.eigh(cov)
    return eigvec * jnp.sqrt(jnp.clip(eigval, 0.0, None))[..., None, :]


def sample_lgssm(key, ssm: LGSSM) -> tuple[jax.Array, jax.Array]:
    """Draw (states, observations) from a discrete state space, exactly."""
    n = ssm.initial_mean.shape[0]
    p = ssm.emission.shape[0]
    num_timesteps = ssm.step_index.shape[0]
    key0, key_state, key_obs = jax.random.split(key, 3)
    root0 = _chol_psd(ssm.initial_cov)
    state0 = ssm.initial_mean + root0 @ jax.random.normal(key0, (n,))
    roots = jax.vmap(_chol_psd)(ssm.process_cov)
    noise = jax.random.normal(key_state, (num_timesteps, n))

    def step(state, inputs):
        idx, offset, eps = inputs
        state = ssm.transition[idx] @ state + offset + roots[idx] @ eps
        return state, state

    _, states = jax.lax.scan(step, state0, (ssm.step_index, ssm.state_offset, noise))
    obs_root = _chol_psd(ssm.emission_cov)
    obs_noise = jax.random.normal(key_obs, (num_timesteps, p)) @ obs_root.T
    y = states @ ssm.emission.T + ssm.emission_offset[None] + obs_noise
    return states, y


def simulate_series(
    model: Model,
    params: Mapping,
    times,
    key,
    inputs=None,
    moderators=None,
) -> Simulation:
    """Simulate ``model`` at free parameters ``params`` on observation ``times`` (s).

    Exact for any grid (the discretisation is exact); ``key`` is a JAX PRNG key.

    Examples
    --------
    >>> import jax
    >>> import numpy as np
    >>> import coregulation as cr
    >>> truth = dict(tau=np.array([5.0, 10.0]), therapist_to_client=0.5,
    ...              client_to_therapist=0.0, mu=np.zeros(2), latent_sd=np.ones(2),
    ...              shock_corr=0.0, me_sd=np.array([0.2, 0.2]))
    >>> sim = cr.simulate_series(cr.CTVAR(), truth, np.arange(1.0, 601.0), jax.random.key(0))
    >>> sim.y.shape, sim.states.shape
    ((600, 2), (600, 2))
    """
    grid = TimeGrid.from_times(times, inputs=inputs, moderators=moderators)
    model.check_grid(grid)
    if model.initial == "stationary" and not bool(model.is_stable(params)):
        raise ValueError(
            "the parameters give unstable dynamics, which have no stationary initial state; "
            "use initial='free' or stable parameters."
        )
    states, y = sample_lgssm(key, model.to_lgssm(params, grid))
    return Simulation(np.array(times, float), np.array(y), np.array(states))


# ----------------------------------------------------------------------------------
# missingness
# ----------------------------------------------------------------------------------


def add_missing(
    y: np.ndarray,
    times: np.ndarray,
    rng: np.random.Generator,
    missing_rate: float = 0.0,
    burst_rate: float = 0.0,
    burst_duration: tuple[float, float] = (30.0, 120.0),
) -> np.ndarray:
    """Copy of ``y`` with values set to NaN: at random (per value) and in artefact bursts.

    ``burst_rate`` is the expected number of bursts per hour and role; each burst
    lasts a uniform draw from ``burst_duration`` seconds.
    """
    if not 0.0 <= missing_rate < 1.0:
        raise ValueError(f"missing_rate must be in [0, 1); got {missing_rate}.")
    if burst_rate < 0:
        raise ValueError(f"burst_rate must be >= 0; got {burst_rate}.")
    y = np.array(y, dtype=float, copy=True)
    y[rng.random(y.shape) < missing_rate] = np.nan
    duration = times[-1] - times[0]
    for role in range(y.shape[1]):
        for _ in range(rng.poisson(burst_rate * duration / 3600.0)):
            start = rng.uniform(times[0], times[-1])
            length = rng.uniform(*burst_duration)
            y[(times >= start) & (times < start + length), role] = np.nan
    return y


# ----------------------------------------------------------------------------------
# many dyads and sessions
# ----------------------------------------------------------------------------------


def simulate_dyads(
    model: Model,
    params: Mapping,
    key,
    *,
    num_dyads: int = 1,
    num_sessions: int = 1,
    duration: float = 600.0,
    sampling_interval: float = 1.0,
    dyad_sd: Mapping[str, float] | None = None,
    missing_rate: float = 0.0,
    burst_rate: float = 0.0,
    inputs: Sequence[str] | np.ndarray | None = None,
    signal: str = "simulated",
) -> tuple[xr.Dataset, xr.Dataset]:
    """Simulate a study: ``num_dyads`` x ``num_sessions`` sessions of ``duration`` seconds.

    ``params`` are the population values of the free parameters.  ``dyad_sd`` gives,
    per parameter name, the standard deviation of dyad-level variation on the
    unconstrained scale (log for positive parameters, logit for intervals).
    ``inputs``: for a model with inputs, alternating speech-turn indicators are
    drawn (turns of 5-60 s, METHODS.md §5.1).

    Returns ``(data, truth)``: the data contract, and a dataset with each dyad's
    true parameters (``dyad`` dim) and latent states.
    """
    if num_dyads < 1 or num_sessions < 1:
        raise ValueError(f"num_dyads and num_sessions must be >= 1; got {num_dyads}, {num_sessions}.")
    if sampling_interval <= 0 or duration <= sampling_interval:
        raise ValueError(
            f"need 0 < sampling_interval < duration; got {sampling_interval}, {duration}."
        )
    space = ParameterSpace(model)
    dyad_sd = dict(dyad_sd or {})
    unknown = sorted(set(dyad_sd) - set(space.names))
    if unknown:
        raise ValueError(f"dyad_sd names unknown parameter(s) {unknown}; known: {space.names}.")
    times = np.arange(1, int(round(duration / sampling_interval)) + 1) * sampling_interval
    num_times = times.size
    key_params, key_series = jax.random.split(key)
    seed = int(jax.random.randint(key_params, (), 0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    base = space.unconstrain(params)
    dyad_params = []
    for _ in range(num_dyads):
        for _attempt in range(1000):
            vec = np.array(base)
            for i, p in enumerate(space.table):
                sd = dyad_sd.get(p.name, 0.0)
                sl = slice(space.offsets[i], space.offsets[i + 1])
                vec[sl] = vec[sl] + sd * rng.standard_normal(p.size)
            draw = {k: np.asarray(v) for k, v in space.constrain(vec).items()}
            if model.initial != "stationary" or bool(model.is_stable(draw)):
                break
        else:
            raise RuntimeError("could not draw stable dyad parameters; reduce dyad_sd.")
        dyad_params.append(draw)

    y = np.full((num_dyads, num_sessions, num_times, 2), np.nan)
    states = np.full((num_dyads, num_sessions, num_times, len(model.state_names)), np.nan)
    u = np.zeros((num_dyads, num_sessions, num_times, len(model.inputs))) if model.inputs else None
    keys = jax.random.split(key_series, num_dyads * num_sessions)
    for d in range(num_dyads):
        for s in range(num_sessions):
            u_ds = None
            if model.inputs:
                u_ds = np.column_stack([_speech_turns(times, rng) for _ in model.inputs])
                u[d, s] = u_ds
            sim = simulate_series(
                model, dyad_params[d], times, keys[d * num_sessions + s], inputs=u_ds
            )
            y[d, s] = add_missing(sim.y, times, rng, missing_rate, burst_rate)
            states[d, s] = sim.states
    time = np.broadcast_to(times, (num_dyads, num_sessions, num_times))
    ds = _data.from_arrays(
        y, time, roles=model.roles, u=u, inputs=list(model.inputs) or None, signal=signal,
    )
    truth = xr.Dataset(coords={"dyad": ds["dyad"].values})
    for p in space.table:
        values = np.stack([dp[p.name] for dp in dyad_params])
        truth[p.name] = (("dyad",) + tuple(f"{p.name}_{d}" if d != "role" else "role"
                                           for d in p.dims), values)
    if "role" in truth.dims:
        truth = truth.assign_coords(role=list(model.roles))
    truth["states"] = (("dyad", "session", "time", "state"), states)
    truth = truth.assign_coords(state=list(model.state_names))
    truth.attrs["model"] = type(model).__name__
    return ds, truth


def _speech_turns(times, rng, turn_range=(5.0, 60.0)):
    """0/1 indicator alternating at turn boundaries drawn uniform in ``turn_range`` s."""
    out = np.zeros(times.size)
    t, value = times[0], float(rng.integers(0, 2))
    while t <= times[-1]:
        length = rng.uniform(*turn_range)
        out[(times >= t) & (times < t + length)] = value
        t, value = t + length, 1.0 - value
    return out


# ----------------------------------------------------------------------------------
# shared drive, no coupling (METHODS.md §1.5 and §3.4.6)
# ----------------------------------------------------------------------------------


def simulate_shared_drive(
    key,
    times,
    *,
    tau=(5.0, 30.0),
    drive_tau: float = 60.0,
    loading=(1.0, 1.0),
    latent_sd=(1.0, 1.0),
    me_sd=(0.0, 0.0),
    mu=(0.0, 0.0),
) -> Simulation:
    """Two uncoupled OU processes driven by one common OU driver (no coupling at all).

    State ``(x_T, x_C, drive)``::

        dx_i = (-x_i / tau_i + loading_i * drive / tau_i) dt + s_i dW_i
        d drive = -drive / drive_tau dt + s_D dW_D

    with ``s_i`` and ``s_D`` set so each process alone has SD ``latent_sd_i`` (the
    drive has SD 1).  Lead-lag asymmetry in the cross-correlation then comes from
    unequal time constants, not from coupling: the trap of METHODS.md §1.5.
    Returns the observations, and the three latent states.
    """
    drift, diffusion = (
        jnp.asarray(m) for m in shared_drive_system(tau, drive_tau, loading, latent_sd)
    )
    me_sd = np.asarray(me_sd, float)
    grid = TimeGrid.from_times(times)
    steps = jax.vmap(lambda dt: disc.van_loan(drift, diffusion, dt))(jnp.asarray(grid.step_lengths))
    ssm = LGSSM(
        transition=steps[0],
        process_cov=steps[1],
        step_index=jnp.asarray(grid.step_index),
        state_offset=jnp.zeros((grid.num_timesteps, 3)),
        emission=jnp.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]),
        emission_offset=jnp.asarray(mu, float),
        emission_cov=jnp.diag(jnp.asarray(me_sd**2)),
        initial_mean=jnp.zeros(3),
        initial_cov=disc.stationary_covariance(drift, diffusion),
    )
    states, y = sample_lgssm(key, ssm)
    return Simulation(np.array(times, float), np.array(y), np.array(states))


def shared_drive_system(tau=(5.0, 30.0), drive_tau=60.0, loading=(1.0, 1.0), latent_sd=(1.0, 1.0)):
    """The (drift, diffusion) of :func:`simulate_shared_drive`, for analytic checks."""
    tau = np.asarray(tau, float)
    drift = np.array(
        [
            [-1 / tau[0], 0.0, loading[0] / tau[0]],
            [0.0, -1 / tau[1], loading[1] / tau[1]],
            [0.0, 0.0, -1 / drive_tau],
        ]
    )
    diffusion = np.diag([*(2 * np.asarray(latent_sd, float) ** 2 / tau), 2.0 / drive_tau])
    return drift, diffusion


def simulate_shared_drive_dyads(
    key,
    *,
    num_dyads: int = 1,
    num_sessions: int = 1,
    duration: float = 600.0,
    sampling_interval: float = 1.0,
    missing_rate: float = 0.0,
    burst_rate: float = 0.0,
    roles: Sequence[str] = ("therapist", "client"),
    **drive,
) -> tuple[xr.Dataset, xr.Dataset]:
    """A study under the null of no coupling with a shared drive (METHODS.md §3.4.6f).

    Each session is an independent draw of :func:`simulate_shared_drive` (keywords in
    ``drive``: ``tau``, ``drive_tau``, ``loading``, ``latent_sd``, ``me_sd``, ``mu``).
    Returns the data contract and the truth: zero coupling both ways, and the latent
    states including the drive.
    """
    if num_dyads < 1 or num_sessions < 1:
        raise ValueError(f"num_dyads and num_sessions must be >= 1; got {num_dyads}, {num_sessions}.")
    times = np.arange(1, int(round(duration / sampling_interval)) + 1) * sampling_interval
    keys = jax.random.split(key, num_dyads * num_sessions + 1)
    rng = np.random.default_rng(int(jax.random.randint(keys[-1], (), 0, 2**31 - 1)))
    y = np.empty((num_dyads, num_sessions, times.size, 2))
    states = np.empty((num_dyads, num_sessions, times.size, 3))
    for d in range(num_dyads):
        for s in range(num_sessions):
            sim = simulate_shared_drive(keys[d * num_sessions + s], times, **drive)
            y[d, s] = add_missing(sim.y, times, rng, missing_rate, burst_rate)
            states[d, s] = sim.states
    ds = _data.from_arrays(
        y, np.broadcast_to(times, y.shape[:3]), roles=tuple(roles), signal="simulated_shared_drive"
    )
    truth = xr.Dataset(
        {
            "therapist_to_client": (("dyad",), np.zeros(num_dyads)),
            "client_to_therapist": (("dyad",), np.zeros(num_dyads)),
            "states": (("dyad", "session", "time", "state"), states),
        },
        coords={"dyad": ds["dyad"].values,
                "state": [f"x_{roles[0]}", f"x_{roles[1]}", "drive"]},
        attrs={"scenario": "shared_drive_no_coupling", **{k: str(v) for k, v in drive.items()}},
    )
    return ds, truth
