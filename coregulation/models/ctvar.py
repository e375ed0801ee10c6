"""Continuous-time VAR(1) / bivariate Ornstein–Uhlenbeck model (METHODS.md §1.3)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from numpyro.distributions import constraints

from coregulation._annotations import resolved
from coregulation.models._base import ROLE_DIM, CTSystem, LevelModel, log_normal_time_constant


@resolved
@dataclasses.dataclass(frozen=True)
class CTVAR(LevelModel):
    r"""Bivariate continuous-time VAR (multivariate Ornstein–Uhlenbeck) with coupling.

    Notes
    -----
    For the deviations ``x = (x_T, x_C)`` of the two roles from their equilibria::

        dx = (A x + B u(t)) dt + G dW,      y_k = mu + x(t_k) + e_k,  e_k ~ N(0, diag(me_sd^2))

        A = [[-1/tau_T,                      c_CT / sqrt(tau_T tau_C)],
             [c_TC / sqrt(tau_T tau_C),      -1/tau_C               ]]

    where ``c_TC`` = ``therapist_to_client`` is the standardised drift
    ``a_{C<-T} / sqrt(a_TT a_CC)`` (the effect of the therapist's level on the
    client's rate of change) and ``c_CT`` = ``client_to_therapist``.  The diffusion
    ``Sigma = G G^T`` has ``Sigma_ii = 2 latent_sd_i^2 / tau_i`` (so ``latent_sd`` is
    the stationary SD of the uncoupled process) and correlation ``shock_corr``.
    Inputs shift equilibria: ``B_im = input_effect_im / tau_i``.  Stable iff
    ``c_TC c_CT < 1`` (with positive time constants).

    Parameters: ``tau`` (role), ``therapist_to_client``, ``client_to_therapist``,
    plus the common ``mu``, ``latent_sd``, ``shock_corr``, ``me_sd``,
    ``input_effect``, moderation slopes and free initial state.
    """

    family: str = dataclasses.field(default="ctvar", init=False)

    def _declare(self, scales):
        m, s = log_normal_time_constant(scales)
        return [
            ("tau", (ROLE_DIM,), constraints.positive, dist.LogNormal(m, s),
             "self-regulation time constant of each role (s); a_ii = -1/tau_i"),
            ("therapist_to_client", (), constraints.real, dist.Normal(0.0, 0.5),
             "standardised drift of the client's change on the therapist's level"),
            ("client_to_therapist", (), constraints.real, dist.Normal(0.0, 0.5),
             "standardised drift of the therapist's change on the client's level"),
        ]

    def drift(self, params, moderators=None):
        params = self._coupled_params(params, moderators)
        tau = params["tau"]
        cross = 1.0 / jnp.sqrt(tau[0] * tau[1])
        return jnp.array(
            [
                [-1.0 / tau[0], params["client_to_therapist"] * cross],
                [params["therapist_to_client"] * cross, -1.0 / tau[1]],
            ]
        )

    def continuous_system(self, params, moderators=None) -> CTSystem:
        tau = params["tau"]
        sd = jnp.sqrt(2.0 / tau) * params["latent_sd"]
        rho = self._shock_corr(params)
        diffusion = jnp.array([[sd[0] ** 2, rho * sd[0] * sd[1]], [rho * sd[0] * sd[1], sd[1] ** 2]])
        input_matrix = (
            params["input_effect"] / tau[:, None] if self.inputs else jnp.zeros((2, 0))
        )
        return CTSystem(
            drift=self.drift(params, moderators),
            diffusion=diffusion,
            input_matrix=input_matrix,
            emission=jnp.eye(2),
            emission_offset=params["mu"],
            emission_cov=self._measurement(params),
        )

    def is_stable(self, params, moderators=None):
        a = self.drift(self.expand(params), moderators)
        return (jnp.trace(a) < 0) & (jnp.linalg.det(a) > 0)

    def derived(self, params, intervals=None) -> dict:
        """Readable derived quantities (drift entries, half-lives, lag curves, stability)."""
        full = self.expand(params)
        a = self.drift(full)
        t, c = self.roles
        out = {
            f"drift_{c}_from_{t}": a[1, 0],
            f"drift_{t}_from_{c}": a[0, 1],
            "time_constant": full["tau"],
            "half_life": full["tau"] * jnp.log(2.0),
            "stable": self.is_stable(params),
        }
        if intervals is not None:
            out["cross_lag_curve"] = self.cross_lag_curve(params, intervals)
        return out

    def cross_lag_curve(self, params, intervals):
        """Discrete-time coefficients ``[expm(A dt)]`` over ``intervals``: (interval, target, source).

        ``curve[:, 1, 0]`` is therapist->client, ``curve[:, 0, 1]`` client->therapist.
        """
        a = self.drift(self.expand(params))
        return jax.vmap(lambda dt: jax.scipy.linalg.expm(a * dt))(jnp.asarray(intervals, float))
