"""The log-likelihood of a model on one dyad-session, as a function of parameters."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from coregulation.inference.kalman import METHODS, log_likelihood, steady_from_hint
from coregulation.models._base import Model, PriorScales, TimeGrid
from coregulation.models.parameters import ParameterSpace

# Fewer observed time points than this cannot inform a bivariate dynamic model.
MIN_OBSERVED = 10


@dataclasses.dataclass(frozen=True, eq=False)
class SeriesLikelihood:
    """``model`` on one series: ``times`` (s), ``y`` (time, role), optional inputs/moderators.

    Call :meth:`log_likelihood` with free parameters (by name) or
    :meth:`log_density` with an unconstrained vector (``prior=True`` adds the
    log-prior and Jacobian: the MAP / posterior target).  Both are pure, jit-able
    and differentiable; ``-inf`` marks parameters with no valid likelihood (a
    stationary initial state for unstable dynamics, a non-positive-definite
    covariance).
    """

    model: Model
    grid: TimeGrid
    y: np.ndarray
    space: ParameterSpace
    method: str = "auto"
    steady_from: int | None = None

    @classmethod
    def build(
        cls,
        model: Model,
        times,
        y,
        inputs=None,
        moderators=None,
        method: str = "auto",
        scales: PriorScales | None = None,
    ) -> SeriesLikelihood:
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}; got {method!r}.")
        y = np.asarray(y, dtype=float)
        times = np.asarray(times, dtype=float)
        if y.ndim != 2 or y.shape[1] != 2:
            hint = " Transposed?" if y.ndim == 2 and y.shape[0] == 2 else ""
            raise ValueError(f"y must be (time, role=2); got shape {y.shape}.{hint}")
        if times.shape != (y.shape[0],):
            raise ValueError(
                f"times must have one entry per row of y ({y.shape[0]}); got shape {times.shape}."
            )
        if np.isinf(y).any():
            raise ValueError("y contains infinite values; use NaN for missing observations.")
        observed = (~np.isnan(y)).any(axis=1).sum()
        if observed < MIN_OBSERVED:
            raise ValueError(
                f"the series has {observed} observed time points; at least {MIN_OBSERVED} "
                "are needed."
            )
        grid = TimeGrid.from_times(times, inputs=inputs, moderators=moderators)
        model.check_grid(grid)
        if scales is None:
            scales = PriorScales.from_grid(grid, y_scale=_y_scale(y))
        steady = steady_from_hint(grid.step_index, y)
        return cls(model, grid, y, ParameterSpace(model, scales), method, steady)

    def log_likelihood(self, params):
        ssm = self.model.to_lgssm(params, self.grid)
        value = log_likelihood(ssm, self.y, method=self.method, steady_from=self.steady_from)
        if self.model.initial == "stationary":
            value = jnp.where(self.model.is_stable(params), value, -jnp.inf)
        return value

    def log_density(self, vector, prior: bool = False):
        params = self.space.constrain(vector)
        value = self.log_likelihood(params)
        if prior:
            value = value + self.space.log_prior_unconstrained(vector)
        return value


def _y_scale(y: np.ndarray) -> float:
    sd = np.nanstd(y, axis=0)
    sd = sd[np.isfinite(sd) & (sd > 0)]
    return float(np.mean(sd)) if sd.size else 1.0
