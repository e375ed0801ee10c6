"""Discrete-time bivariate VAR(1) with measurement error (METHODS.md §1.4)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from numpyro.distributions import constraints

from coregulation._annotations import resolved
from coregulation.inference.kalman import LGSSM
from coregulation.models import _discretise as disc
from coregulation.models._base import ROLE_DIM, LevelModel, TimeGrid

# Relative spread of step lengths tolerated as "regular" (clock jitter in exported times).
_REGULAR_RTOL = 1e-6


@resolved
@dataclasses.dataclass(frozen=True)
class VAR1(LevelModel):
    r"""Bivariate VAR(1) state space with measurement error (APIM/DSEM-comparable).

    Notes
    -----
    On a regular grid (one step per observation; missing epochs are NaN rows)::

        x_k = Phi x_{k-1} + B u_k + w_k,   w_k ~ N(0, Psi)
        y_k = mu + x_k + e_k,              e_k ~ N(0, diag(me_sd^2))

        Phi = [[inertia_T,            client_to_therapist],
               [therapist_to_client,  inertia_C          ]]

    ``Psi_ii = latent_sd_i^2 (1 - inertia_i^2)`` (``latent_sd`` is the stationary SD
    of the uncoupled process) with correlation ``shock_corr``; ``B_im =
    (1 - inertia_i) input_effect_im``.  Stable iff the spectral radius of ``Phi`` is
    below one (Jury: ``|det| < 1`` and ``|tr| < 1 + det``).  Cross-lags depend on
    the step length: prefer :class:`CTVAR` for irregular or comparable-across-Delta
    effects.
    """

    family: str = dataclasses.field(default="var1", init=False)

    def _declare(self, scales):
        inertia = dist.TransformedDistribution(
            dist.Beta(4.0, 2.0), dist.transforms.AffineTransform(-1.0, 2.0)
        )
        return [
            ("inertia", (ROLE_DIM,), constraints.interval(-1.0, 1.0), inertia,
             "autoregression of each role (actor effect)"),
            ("therapist_to_client", (), constraints.real, dist.Normal(0.0, 0.2),
             "cross-lag of the client on the therapist's previous state"),
            ("client_to_therapist", (), constraints.real, dist.Normal(0.0, 0.2),
             "cross-lag of the therapist on the client's previous state"),
        ]

    def transition(self, params, moderators=None):
        params = self._coupled_params(params, moderators)
        phi = params["inertia"]
        return jnp.array(
            [[phi[0], params["client_to_therapist"]], [params["therapist_to_client"], phi[1]]]
        )

    def _process_cov(self, params):
        sd = params["latent_sd"] * jnp.sqrt(1.0 - params["inertia"] ** 2)
        rho = self._shock_corr(params)
        return jnp.array([[sd[0] ** 2, rho * sd[0] * sd[1]], [rho * sd[0] * sd[1], sd[1] ** 2]])

    def check_grid(self, grid: TimeGrid) -> None:
        super().check_grid(grid)
        if grid.times is not None and grid.num_timesteps > 1:  # None: checked by the batch
            steps = np.diff(grid.times)
            spread = (steps.max() - steps.min()) / steps.max()
            if spread > _REGULAR_RTOL:
                raise ValueError(
                    "VAR1 needs a regular time grid (one step per observation); got steps from "
                    f"{steps.min():g} to {steps.max():g} s. Put the series on a regular grid "
                    "with NaN rows for missing epochs, or use CTVAR, which is exact for "
                    "irregular times."
                )

    def to_lgssm(self, params, grid: TimeGrid) -> LGSSM:
        """One VAR step into every observation (the initial state is one step before)."""
        self.check_grid(grid)
        params = self.expand(params)
        process_cov = self._process_cov(params)
        transitions = jax.vmap(lambda z: self.transition(params, z if self.moderators else None))(
            jnp.asarray(grid.step_moderators)
        )
        process_covs = jnp.broadcast_to(process_cov, transitions.shape)
        if self.inputs:
            input_matrix = params["input_effect"] * (1.0 - params["inertia"])[:, None]
            offsets = jnp.asarray(grid.inputs) @ input_matrix.T
        else:
            offsets = jnp.zeros((grid.num_timesteps, 2))
        if self.initial == "free":
            mean0, cov0 = params["initial_mean"], jnp.diag(params["initial_sd"] ** 2)
        else:
            mean0 = jnp.zeros(2)
            cov0 = disc.discrete_stationary_covariance(self.transition(params), process_cov)
        return LGSSM(
            transition=transitions,
            process_cov=process_covs,
            step_index=jnp.asarray(grid.step_index),
            state_offset=offsets,
            emission=jnp.eye(2),
            emission_offset=params["mu"],
            emission_cov=self._measurement(params),
            initial_mean=mean0,
            initial_cov=cov0,
        )

    def is_stable(self, params, moderators=None):
        phi = self.transition(self.expand(params), moderators)
        det = jnp.linalg.det(phi)
        return (jnp.abs(det) < 1) & (jnp.abs(jnp.trace(phi)) < 1 + det)

    def stationary_state_cov(self, params, moderators=None):
        full = self.expand(params)
        return disc.discrete_stationary_covariance(
            self.transition(full, moderators), self._process_cov(full)
        )

    def implied_ccf(self, params, lags, moderators=None):
        """``ccf[l, i, j] = corr(y_i(k + lags[l]), y_j(k))`` at integer lags (in steps)."""
        full = self.expand(params)
        phi = self.transition(full, moderators)
        stat = self.stationary_state_cov(params, moderators)
        r = self._measurement(full)
        var = jnp.diag(stat + r)
        norm = jnp.sqrt(var[:, None] * var[None, :])
        lags = np.asarray(lags)
        if not np.all(lags == np.round(lags)):
            raise ValueError(f"VAR1 lags are in steps and must be integers; got {lags}.")
        out = []
        for lag in lags.astype(int):
            if lag == 0:
                cross = stat + r
            else:
                cross = jnp.linalg.matrix_power(phi, abs(lag)) @ stat
                cross = cross if lag > 0 else cross.T
            out.append(cross / norm)
        return jnp.stack(out)

    def derived(self, params, intervals=None) -> dict:
        full = self.expand(params)
        phi = self.transition(full)
        eig = jnp.linalg.eigvals(phi)
        return {
            "transition": phi,
            "spectral_radius": jnp.max(jnp.abs(eig)),
            "stable": self.is_stable(params),
        }
