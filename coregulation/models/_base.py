"""What every model family shares: the parameter table, the time grid, the lowering.

A model is declared once: a table of :class:`Parameter` rows (name, dims,
constraint, default prior) and one pure lowering ``to_lgssm(params, grid)`` to the
discrete state space that the Kalman engine, the simulator and every back end
consume.  Model objects hold structure only (switches, labels, which parameters
are fixed or tied), never parameter values.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from jaxtyping import Array, Float
from numpyro.distributions import constraints
from numpyro.distributions.transforms import biject_to

from coregulation._annotations import resolved
from coregulation.inference.kalman import LGSSM
from coregulation.models import _discretise as disc

ROLE_DIM = "role"
DEFAULT_ROLES = ("therapist", "client")


# ----------------------------------------------------------------------------------
# time grid
# ----------------------------------------------------------------------------------


@resolved
class TimeGrid(NamedTuple):
    """A series' time grid, reduced to its distinct steps (built in numpy, not traced).

    Attributes
    ----------
    step_index : (num_timesteps,) int
        Which distinct step leads into each observation.
    step_lengths : (num_distinct,)
        Length in seconds of each distinct step.
    step_moderators : (num_distinct, num_moderators)
        Moderator values ``z`` on each distinct step (constant on the step).
    inputs : (num_timesteps, num_inputs)
        Known inputs ``u_k``, constant on the step into observation ``k``.
    times : (num_timesteps,)
        The observation times themselves, seconds from session start.
    """

    step_index: np.ndarray
    step_lengths: np.ndarray
    step_moderators: np.ndarray
    inputs: np.ndarray
    times: np.ndarray

    @property
    def num_timesteps(self) -> int:
        return int(self.step_index.shape[0])

    @classmethod
    def from_times(
        cls,
        times,
        inputs=None,
        moderators=None,
        start: float = 0.0,
    ) -> TimeGrid:
        """Build the grid for observations at ``times`` (seconds from session start).

        The state distribution at ``start`` is the model's initial state; the first
        observation comes one step (``times[0] - start``) later.  ``inputs`` (time,
        input) and ``moderators`` (time, moderator) apply on the step *into* each
        observation, so the discretisation stays exact (METHODS.md §1.1, §1.6).
        """
        times = np.asarray(times, dtype=float)
        if times.ndim != 1 or times.size == 0:
            raise ValueError(f"times must be a non-empty 1-D array; got shape {times.shape}.")
        if not np.all(np.isfinite(times)):
            raise ValueError("times must be finite; trim NaN padding before building a grid.")
        steps = np.diff(np.concatenate([[start], times]))
        if steps[0] < 0:
            raise ValueError(
                f"the first time ({times[0]}) is before the session start ({start})."
            )
        if np.any(steps[1:] <= 0):
            k = int(np.nonzero(steps[1:] <= 0)[0][0]) + 1
            raise ValueError(
                f"times must be strictly increasing; times[{k - 1}]={times[k - 1]} and "
                f"times[{k}]={times[k]}."
            )
        num_timesteps = times.size
        inputs = _as_2d(inputs, num_timesteps, "inputs")
        moderators = _as_2d(moderators, num_timesteps, "moderators")
        # Steps equal up to floating-point noise in the times share one discretisation.
        key_steps = np.round(steps, 9)
        keys = np.column_stack([key_steps, moderators])
        unique, index = np.unique(keys, axis=0, return_inverse=True)
        index = index.reshape(-1)
        step_lengths = np.array([steps[index == u].mean() for u in range(unique.shape[0])])
        return cls(
            step_index=index.astype(np.int32),
            step_lengths=step_lengths,
            step_moderators=unique[:, 1:],
            inputs=inputs,
            times=times,
        )

    @property
    def sampling_interval(self) -> float:
        """Median step between observations (the ``Delta`` of the default priors)."""
        if self.times.size < 2:
            return float(self.times[0]) if self.times[0] > 0 else 1.0
        return float(np.median(np.diff(self.times)))

    @property
    def duration(self) -> float:
        return float(self.times[-1])


def _as_2d(values, num_timesteps: int, name: str) -> np.ndarray:
    if values is None:
        return np.zeros((num_timesteps, 0))
    values = np.asarray(values, dtype=float)
    if values.ndim == 1:
        values = values[:, None]
    if values.ndim != 2 or values.shape[0] != num_timesteps:
        raise ValueError(
            f"{name} must be ({num_timesteps}, num_{name}) to match the times; "
            f"got shape {values.shape}."
        )
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{name} must be finite at every time point (no NaN).")
    return values


# ----------------------------------------------------------------------------------
# parameters and priors
# ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PriorScales:
    """What the default priors are scaled to (METHODS.md §3.2).

    ``sampling_interval`` (Delta, s), ``duration`` (session length, s) and
    ``y_scale`` (standard deviation of the data; 1 for standardised series).
    """

    sampling_interval: float = 1.0
    duration: float = 600.0
    y_scale: float = 1.0

    def __post_init__(self):
        for name in ("sampling_interval", "duration", "y_scale"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value > 0):
                raise ValueError(f"PriorScales.{name} must be positive and finite; got {value}.")

    @classmethod
    def from_grid(cls, grid: TimeGrid, y_scale: float = 1.0) -> PriorScales:
        return cls(grid.sampling_interval, max(grid.duration, 10 * grid.sampling_interval), y_scale)


@dataclasses.dataclass(frozen=True)
class Parameter:
    """One row of a model's parameter table.

    ``dims`` names the axes (``"role"``, ``"input"``, ``"moderator"``, ``"state"``);
    ``constraint`` is the support (a numpyro constraint), which also fixes the
    unconstrained transform; ``prior`` is a numpyro distribution of the value with
    that support, batched to the parameter's shape.
    """

    name: str
    dims: tuple[str, ...]
    shape: tuple[int, ...]
    constraint: Any
    prior: dist.Distribution
    description: str = ""

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=int))

    def transform(self):
        return biject_to(self.constraint)


def log_normal_time_constant(scales: PriorScales) -> tuple[float, float]:
    """``(m, s)`` putting ~95% of ``log tau`` on ``[2 Delta, T/5]`` (METHODS.md §3.2)."""
    low = math.log(2 * scales.sampling_interval)
    high = math.log(scales.duration / 5)
    if high <= low:
        high = low + 1.0
    return 0.5 * (low + high), max((high - low) / 4, 0.25)


def shock_correlation_prior() -> dist.Distribution:
    """LKJ(2) on a 2x2 correlation: ``(r + 1) / 2 ~ Beta(2, 2)``."""
    return dist.TransformedDistribution(
        dist.Beta(2.0, 2.0), dist.transforms.AffineTransform(-1.0, 2.0)
    )


def _broadcast_prior(prior: dist.Distribution, shape: tuple[int, ...]) -> dist.Distribution:
    if tuple(prior.batch_shape) == tuple(shape):
        return prior
    return prior.expand(shape)


# ----------------------------------------------------------------------------------
# model base
# ----------------------------------------------------------------------------------


@resolved
class CTSystem(NamedTuple):
    """A continuous-time system ``dx = (A x + B u) dt + G dW``, ``y = H x + d + e``."""

    drift: Float[Array, "n n"]
    diffusion: Float[Array, "n n"]
    input_matrix: Float[Array, "n m"]
    emission: Float[Array, "p n"]
    emission_offset: Float[Array, " p"]
    emission_cov: Float[Array, "p p"]


@dataclasses.dataclass(frozen=True)
class Model:
    """Structure shared by the three families.  Subclasses declare the table and lowering.

    Parameters
    ----------
    roles
        The two role labels, in state order (default ``("therapist", "client")``).
        Labels flow into state names, coordinates and derived quantities; the
        coupling *parameters* keep their names, where "therapist" means the first
        role and "client" the second (``therapist_to_client`` = first -> second).
    measurement_error
        Estimate a measurement-error standard deviation per role; ``False`` fixes
        it to zero.
    shock_correlation
        Estimate the correlation of the two partners' process shocks (a shared,
        non-directional drive; METHODS.md §3.4.6a).  ``False`` fixes it to zero.
    initial
        ``"stationary"`` (state at session start drawn from the stationary
        distribution of the baseline dynamics) or ``"free"`` (free mean and
        standard deviations, for panels that do not start at equilibrium).
    inputs
        Names of known inputs ``u(t)``; each shifts each role's equilibrium.
    moderators
        Names of time-varying moderators ``z(t)``; each coupling parameter gets a
        slope per moderator, ``coupling(t) = coupling + slope . z(t)``.
    fixed
        Parameter values to hold fixed, by name (e.g. ``{"client_to_therapist": 0}``).
    tied
        Names of role-indexed parameters shared by both roles (indistinguishable
        partners).
    priors
        Replacement priors by name (numpyro distributions with the same support).
    """

    roles: tuple[str, str] = DEFAULT_ROLES
    measurement_error: bool = True
    shock_correlation: bool = True
    initial: str = "stationary"
    inputs: tuple[str, ...] = ()
    moderators: tuple[str, ...] = ()
    fixed: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    tied: tuple[str, ...] = ()
    priors: Mapping[str, dist.Distribution] = dataclasses.field(default_factory=dict)

    # set by subclasses
    family: str = dataclasses.field(default="", init=False)
    coupling_names: tuple[str, ...] = dataclasses.field(default=(), init=False)
    state_names: tuple[str, ...] = dataclasses.field(default=(), init=False)

    def __post_init__(self):
        roles = tuple(self.roles)
        if len(roles) != 2 or len(set(roles)) != 2 or not all(isinstance(r, str) for r in roles):
            raise ValueError(f"roles must be two distinct labels; got {self.roles!r}.")
        object.__setattr__(self, "roles", roles)
        if self.initial not in ("stationary", "free"):
            raise ValueError(f"initial must be 'stationary' or 'free'; got {self.initial!r}.")
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "moderators", tuple(self.moderators))
        object.__setattr__(self, "tied", tuple(self.tied))
        object.__setattr__(self, "fixed", dict(self.fixed))
        object.__setattr__(self, "priors", dict(self.priors))
        for name in (*self.inputs, *self.moderators):
            if not isinstance(name, str) or not name:
                raise ValueError("inputs and moderators must be non-empty names (strings).")
        full = {p.name: p for p in self._full_table(PriorScales())}
        for group, names in (("fixed", self.fixed), ("tied", self.tied), ("priors", self.priors)):
            unknown = sorted(set(names) - set(full))
            if unknown:
                raise ValueError(
                    f"{group} names unknown parameter(s) {unknown} for {type(self).__name__}; "
                    f"known: {sorted(full)}."
                )
        if self.moderators:
            # A coupling fixed to a value (0 for an uncoupled direction) does not vary
            # with the moderators either, unless its slopes are fixed explicitly.
            fixed = dict(self.fixed)
            for name in self.coupling_names:
                if name in fixed and f"{name}_moderation" not in fixed:
                    fixed[f"{name}_moderation"] = 0.0
            object.__setattr__(self, "fixed", fixed)
        for name in self.tied:
            if ROLE_DIM not in full[name].dims:
                raise ValueError(
                    f"tied={name!r}: only role-indexed parameters can be tied across roles; "
                    f"{name!r} has dims {full[name].dims}."
                )
            if name in self.fixed:
                raise ValueError(f"{name!r} is both fixed and tied; choose one.")

    # --- the table ---------------------------------------------------------------

    def _declare(self, scales: PriorScales) -> list[tuple[str, tuple[str, ...], Any, Any, str]]:
        """Family-specific rows ``(name, dims, constraint, prior, description)``."""
        raise NotImplementedError

    def _common_rows(self, scales: PriorScales):
        ys = scales.y_scale
        rows = [
            ("mu", (ROLE_DIM,), constraints.real, dist.Normal(0.0, 0.5 * ys),
             "equilibrium level of each role's signal"),
            ("latent_sd", (ROLE_DIM,), constraints.positive,
             dist.LogNormal(math.log(0.8 * ys), 0.5),
             "stationary standard deviation of each role's latent process, uncoupled"),
        ]
        if self.shock_correlation:
            rows.append(("shock_corr", (), constraints.interval(-1.0, 1.0),
                         shock_correlation_prior(),
                         "correlation of the two roles' process shocks (shared drive)"))
        if self.measurement_error:
            rows.append(("me_sd", (ROLE_DIM,), constraints.positive,
                         dist.LogNormal(math.log(0.5 * ys), 0.5),
                         "measurement-error standard deviation per role"))
        if self.inputs:
            rows.append(("input_effect", (ROLE_DIM, "input"), constraints.real,
                         dist.Normal(0.0, 0.5 * ys),
                         "shift of a role's equilibrium per unit input, partner held fixed"))
        if self.moderators:
            for name in self.coupling_names:
                rows.append((f"{name}_moderation", ("moderator",), constraints.real,
                             dist.Normal(0.0, 0.25),
                             f"change in {name} per unit of each moderator"))
        if self.initial == "free":
            n = len(self.state_names)
            rows.append(("initial_mean", ("state",), constraints.real,
                         dist.Normal(jnp.zeros(n), self._initial_scale(scales)),
                         "state mean at session start (deviation from equilibrium)"))
            rows.append(("initial_sd", ("state",), constraints.positive,
                         dist.LogNormal(jnp.log(self._initial_scale(scales)), 1.0),
                         "state standard deviation at session start"))
        return rows

    def _initial_scale(self, scales: PriorScales):
        return jnp.full(len(self.state_names), scales.y_scale)

    def _dim_size(self, dim: str) -> int:
        return {
            ROLE_DIM: 2,
            "input": len(self.inputs),
            "moderator": len(self.moderators),
            "state": len(self.state_names),
        }[dim]

    def _full_table(self, scales: PriorScales) -> list[Parameter]:
        table = []
        for name, dims, constraint, prior, description in self._declare(scales) + self._common_rows(
            scales
        ):
            shape = tuple(self._dim_size(d) for d in dims)
            table.append(
                Parameter(name, dims, shape, constraint, _broadcast_prior(prior, shape), description)
            )
        return table

    def parameter_table(self, scales: PriorScales | None = None) -> list[Parameter]:
        """The free parameters: fixed ones removed, tied ones reduced to one value."""
        scales = scales or PriorScales()
        table = []
        for p in self._full_table(scales):
            if p.name in self.fixed:
                continue
            prior = self.priors.get(p.name, p.prior)
            dims, shape = p.dims, p.shape
            if p.name in self.tied:
                axis = p.dims.index(ROLE_DIM)
                dims = p.dims[:axis] + p.dims[axis + 1 :]
                shape = p.shape[:axis] + p.shape[axis + 1 :]
                if p.name not in self.priors:
                    prior = _drop_role_axis(p.prior, axis)
            table.append(dataclasses.replace(
                p, dims=dims, shape=shape, prior=_broadcast_prior(prior, shape)
            ))
        return table

    def expand(self, params: Mapping[str, Array]) -> dict[str, Array]:
        """Free parameters -> the full set: fixed values added, tied values broadcast."""
        full = {}
        for p in self._full_table(PriorScales()):
            if p.name in self.fixed:
                value = jnp.broadcast_to(jnp.asarray(self.fixed[p.name], dtype=float), p.shape)
            else:
                if p.name not in params:
                    raise KeyError(
                        f"parameter {p.name!r} is missing; expected {sorted(self.free_names())}."
                    )
                value = jnp.asarray(params[p.name], dtype=float)
                if p.name in self.tied:
                    axis = p.dims.index(ROLE_DIM)
                    value = jnp.broadcast_to(jnp.expand_dims(value, axis), p.shape)
                elif value.shape != p.shape:
                    value = jnp.broadcast_to(value, p.shape)
            full[p.name] = value
        return full

    def free_names(self) -> list[str]:
        return [p.name for p in self.parameter_table()]

    # --- lowering -----------------------------------------------------------------

    def continuous_system(self, params: Mapping[str, Array], moderators=None) -> CTSystem:
        """The continuous-time system at moderator values ``moderators`` (default 0)."""
        raise NotImplementedError

    def is_stable(self, params: Mapping[str, Array], moderators=None) -> Array:
        """Whether the baseline dynamics are mean-reverting (closed form per family)."""
        raise NotImplementedError

    def check_grid(self, grid: TimeGrid) -> None:
        """Raise if this family cannot use ``grid`` (VAR1 needs a regular grid)."""
        if grid.inputs.shape[1] != len(self.inputs):
            raise ValueError(
                f"the model declares inputs {list(self.inputs)} but the grid carries "
                f"{grid.inputs.shape[1]} input column(s)."
            )
        if grid.step_moderators.shape[1] != len(self.moderators):
            raise ValueError(
                f"the model declares moderators {list(self.moderators)} but the grid carries "
                f"{grid.step_moderators.shape[1]} moderator column(s)."
            )

    def _coupled_params(self, params, moderators):
        """Apply the moderation slopes: coupling + slope . z."""
        if not self.moderators or moderators is None:
            return params
        z = jnp.asarray(moderators, dtype=float)
        out = dict(params)
        for name in self.coupling_names:
            out[name] = params[name] + params[f"{name}_moderation"] @ z
        return out

    def _initial_moments(self, params, baseline: CTSystem):
        n = baseline.drift.shape[0]
        if self.initial == "free":
            return params["initial_mean"], jnp.diag(params["initial_sd"] ** 2)
        return jnp.zeros(n), disc.stationary_covariance(baseline.drift, baseline.diffusion)

    def to_lgssm(self, params: Mapping[str, Array], grid: TimeGrid) -> LGSSM:
        """Exact discrete-time state space on ``grid`` (one expm pair per distinct step)."""
        params = self.expand(params)
        baseline = self.continuous_system(params)

        def per_step(dt, z):
            system = self.continuous_system(params, z if self.moderators else None)
            transition, process_cov = disc.van_loan(system.drift, system.diffusion, dt)
            if system.input_matrix.shape[1] == 0:  # no inputs: no intercept to integrate
                return transition, process_cov, system.input_matrix
            gamma = disc.integrated_transition(system.drift, dt)
            return transition, process_cov, gamma @ system.input_matrix

        transitions, process_covs, input_maps = jax.vmap(per_step)(
            jnp.asarray(grid.step_lengths), jnp.asarray(grid.step_moderators)
        )
        offsets = jnp.einsum(
            "tnm,tm->tn", input_maps[grid.step_index], jnp.asarray(grid.inputs)
        )
        mean0, cov0 = self._initial_moments(params, baseline)
        return LGSSM(
            transition=transitions,
            process_cov=process_covs,
            step_index=jnp.asarray(grid.step_index),
            state_offset=offsets,
            emission=baseline.emission,
            emission_offset=baseline.emission_offset,
            emission_cov=baseline.emission_cov,
            initial_mean=mean0,
            initial_cov=cov0,
        )

    # --- shared pieces for the families -----------------------------------------------

    def _measurement(self, params):
        if self.measurement_error:
            return jnp.diag(params["me_sd"] ** 2)
        return jnp.zeros((2, 2))

    def _shock_corr(self, params):
        return params["shock_corr"] if self.shock_correlation else jnp.asarray(0.0)

    # --- derived quantities -------------------------------------------------------

    def stationary_state_cov(self, params, moderators=None) -> Array:
        system = self.continuous_system(self.expand(params), moderators)
        return disc.stationary_covariance(system.drift, system.diffusion)

    def implied_ccf(self, params, lags, moderators=None) -> Array:
        """Model-implied cross-correlation ``ccf[l, i, j] = corr(y_i(t + lags[l]), y_j(t))``.

        ``lags`` in seconds, negative allowed (METHODS.md §1.5).  Includes the
        measurement error in the variances; ``lag = 0`` has ones on the diagonal.
        """
        params = self.expand(params)
        system = self.continuous_system(params, moderators)
        stat = disc.stationary_covariance(system.drift, system.diffusion)
        H = system.emission
        var = jnp.diag(H @ stat @ H.T + system.emission_cov)
        norm = jnp.sqrt(var[:, None] * var[None, :])

        def one(lag):
            lag_abs = jnp.abs(lag)
            cross = H @ jax.scipy.linalg.expm(system.drift * lag_abs) @ stat @ H.T
            cross = jnp.where(lag >= 0, cross, cross.T)
            cross = jnp.where(lag == 0, H @ stat @ H.T + system.emission_cov, cross)
            return cross / norm

        return jax.vmap(one)(jnp.asarray(lags, dtype=float))


@dataclasses.dataclass(frozen=True)
class LevelModel(Model):
    """Families whose state is one level per role (CT-VAR, VAR1): coupling acts on levels."""

    coupling_names: tuple[str, ...] = dataclasses.field(
        default=("therapist_to_client", "client_to_therapist"), init=False
    )

    def __post_init__(self):
        object.__setattr__(self, "state_names", tuple(f"x_{r}" for r in self.roles))
        super().__post_init__()


def _drop_role_axis(prior: dist.Distribution, axis: int) -> dist.Distribution:
    """A tied parameter takes the first role's prior (defaults are role-symmetric)."""
    batch = tuple(prior.batch_shape)
    shape = batch[:axis] + batch[axis + 1 :]
    if isinstance(prior, dist.ExpandedDistribution):
        return prior.base_dist.expand(shape) if shape else prior.base_dist
    return prior  # already scalar per role


def role_label(model: Model, index: int) -> str:
    return model.roles[index]
