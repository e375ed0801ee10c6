"""Coupled damped linear oscillator (METHODS.md §1.2)."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from numpyro.distributions import constraints

from coregulation._annotations import resolved
from coregulation.models._base import ROLE_DIM, CTSystem, Model


@resolved
@dataclasses.dataclass(frozen=True)
class CoupledOscillator(Model):
    r"""Two coupled damped linear oscillators (Helm, Sbarra & Ferrer 2012; rties).

    Notes
    -----
    For deviations ``x_i`` from equilibrium, with ``j`` the partner::

        x_i'' = eta_i x_i + zeta_i x_i' + gamma_{j->i} x_j + delta_{j->i} x_j' + noise_i
        y_k   = mu + (x_T, x_C)(t_k) + e_k

    State ``(x_T, v_T, x_C, v_C)``; noise enters the accelerations with standard
    deviations ``g_i`` and correlation ``shock_corr``.  Parameterised as users read
    it (METHODS.md §3.2):

    * ``period`` ``P_i`` (s): ``omega_i = 2 pi / P_i``, ``eta_i = -omega_i^2``;
    * ``damping_ratio`` ``xi_i``: ``zeta_i = -2 xi_i omega_i``;
    * ``position_therapist_to_client`` = ``kappa^gamma_{T->C}``, the shift of the
      client's equilibrium per unit therapist displacement:
      ``gamma_{T->C} = kappa omega_C^2`` (likewise ``position_client_to_therapist``);
    * ``velocity_therapist_to_client`` = ``kappa^delta_{T->C}``:
      ``delta_{T->C} = 2 kappa omega_C`` (likewise client->therapist);
    * ``latent_sd``: stationary SD of the uncoupled position,
      ``g_i^2 = 4 xi_i omega_i^3 latent_sd_i^2``.

    ``difference_coupling=True`` uses ``gamma'(x_j - x_i)`` instead of
    ``gamma x_j`` (a reparameterisation, ``eta_i <- eta_i - gamma'``).
    Stability by Routh–Hurwitz on the characteristic quartic.
    """

    difference_coupling: bool = False
    period_centre: float | None = None

    family: str = dataclasses.field(default="oscillator", init=False)
    coupling_names: tuple[str, ...] = dataclasses.field(
        default=(
            "position_therapist_to_client",
            "position_client_to_therapist",
            "velocity_therapist_to_client",
            "velocity_client_to_therapist",
        ),
        init=False,
    )
    state_names: tuple[str, ...] = dataclasses.field(default=(), init=False)

    def __post_init__(self):
        t, c = self.roles
        object.__setattr__(self, "state_names", (f"x_{t}", f"v_{t}", f"x_{c}", f"v_{c}"))
        super().__post_init__()

    def period_bounds(self, scales):
        """Identifiable periods: above 4 sampling intervals, below a third of the session."""
        low = 4.0 * scales.sampling_interval
        high = max(scales.duration / 3.0, 2.0 * low)
        return low, high

    def _declare(self, scales):
        low, high = self.period_bounds(scales)
        centre = (
            math.log(self.period_centre)
            if self.period_centre
            else 0.5 * (math.log(low) + math.log(high))
        )
        log_period = dist.TruncatedNormal(centre, 0.5, low=math.log(low), high=math.log(high))
        period_prior = dist.TransformedDistribution(log_period, dist.transforms.ExpTransform())
        return [
            ("period", (ROLE_DIM,), constraints.interval(low, high), period_prior,
             "undamped period of each role's oscillation (s)"),
            ("damping_ratio", (ROLE_DIM,), constraints.positive,
             dist.LogNormal(math.log(0.3), 0.75), "damping ratio xi of each role"),
            ("position_therapist_to_client", (), constraints.real, dist.Normal(0.0, 0.5),
             "client's equilibrium shift per unit therapist displacement (kappa gamma)"),
            ("position_client_to_therapist", (), constraints.real, dist.Normal(0.0, 0.5),
             "therapist's equilibrium shift per unit client displacement (kappa gamma)"),
            ("velocity_therapist_to_client", (), constraints.real, dist.Normal(0.0, 0.5),
             "scale-free coupling of the client's acceleration on therapist velocity"),
            ("velocity_client_to_therapist", (), constraints.real, dist.Normal(0.0, 0.5),
             "scale-free coupling of the therapist's acceleration on client velocity"),
        ]

    def _initial_scale(self, scales):
        low, high = self.period_bounds(scales)
        omega = 2 * math.pi / math.sqrt(low * high)
        ys = scales.y_scale
        return jnp.array([ys, ys * omega, ys, ys * omega])

    def coefficients(self, params, moderators=None) -> dict:
        """Raw ODE coefficients ``eta, zeta`` (role) and ``gamma, delta`` by direction."""
        params = self._coupled_params(params, moderators)
        omega = 2.0 * jnp.pi / params["period"]
        return {
            "eta": -(omega**2),
            "zeta": -2.0 * params["damping_ratio"] * omega,
            "gamma_therapist_to_client": params["position_therapist_to_client"] * omega[1] ** 2,
            "gamma_client_to_therapist": params["position_client_to_therapist"] * omega[0] ** 2,
            "delta_therapist_to_client": 2.0 * params["velocity_therapist_to_client"] * omega[1],
            "delta_client_to_therapist": 2.0 * params["velocity_client_to_therapist"] * omega[0],
        }

    def drift(self, params, moderators=None):
        k = self.coefficients(params, moderators)
        eta_t, eta_c = k["eta"][0], k["eta"][1]
        g_ct, g_tc = k["gamma_client_to_therapist"], k["gamma_therapist_to_client"]
        if self.difference_coupling:
            eta_t, eta_c = eta_t - g_ct, eta_c - g_tc
        zero, one = jnp.zeros(()), jnp.ones(())
        return jnp.array(
            [
                [zero, one, zero, zero],
                [eta_t, k["zeta"][0], g_ct, k["delta_client_to_therapist"]],
                [zero, zero, zero, one],
                [g_tc, k["delta_therapist_to_client"], eta_c, k["zeta"][1]],
            ]
        )

    def continuous_system(self, params, moderators=None) -> CTSystem:
        omega = 2.0 * jnp.pi / params["period"]
        g = jnp.sqrt(4.0 * params["damping_ratio"] * omega**3) * params["latent_sd"]
        rho = self._shock_corr(params)
        diffusion = jnp.zeros((4, 4))
        diffusion = diffusion.at[1, 1].set(g[0] ** 2).at[3, 3].set(g[1] ** 2)
        diffusion = diffusion.at[1, 3].set(rho * g[0] * g[1]).at[3, 1].set(rho * g[0] * g[1])
        if self.inputs:
            effect = params["input_effect"] * (omega**2)[:, None]
            input_matrix = jnp.zeros((4, len(self.inputs))).at[1].set(effect[0]).at[3].set(effect[1])
        else:
            input_matrix = jnp.zeros((4, 0))
        emission = jnp.array([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
        return CTSystem(
            drift=self.drift(params, moderators),
            diffusion=diffusion,
            input_matrix=input_matrix,
            emission=emission,
            emission_offset=params["mu"],
            emission_cov=self._measurement(params),
        )

    def characteristic_coefficients(self, params, moderators=None):
        """``(a3, a2, a1, a0)`` of ``lambda^4 + a3 lambda^3 + a2 lambda^2 + a1 lambda + a0``."""
        a = self.drift(self.expand(params), moderators)
        eta_t, zeta_t, g_ct, d_ct = a[1, 0], a[1, 1], a[1, 2], a[1, 3]
        g_tc, d_tc, eta_c, zeta_c = a[3, 0], a[3, 1], a[3, 2], a[3, 3]
        a3 = -(zeta_t + zeta_c)
        a2 = zeta_t * zeta_c - eta_t - eta_c - d_ct * d_tc
        a1 = zeta_t * eta_c + zeta_c * eta_t - (d_ct * g_tc + g_ct * d_tc)
        a0 = eta_t * eta_c - g_ct * g_tc
        return a3, a2, a1, a0

    def is_stable(self, params, moderators=None):
        a3, a2, a1, a0 = self.characteristic_coefficients(params, moderators)
        return (
            (a3 > 0) & (a2 > 0) & (a1 > 0) & (a0 > 0)
            & (a3 * a2 > a1) & (a3 * a2 * a1 > a1**2 + a3**2 * a0)
        )

    def derived(self, params, intervals=None) -> dict:
        """Periods, damping ratios, damped periods, equilibrium shifts, stability."""
        full = self.expand(params)
        omega = 2.0 * jnp.pi / full["period"]
        xi = full["damping_ratio"]
        k = self.coefficients(full)
        under = xi < 1
        damped = jnp.where(
            under, 2.0 * jnp.pi / jnp.sqrt(jnp.where(under, omega**2 * (1 - xi**2), 1.0)), jnp.inf
        )
        out = {
            "period": full["period"],
            "damped_period": damped,
            "damping_ratio": xi,
            "frequency": omega,
            "stable": self.is_stable(params),
            **{name: v for name, v in k.items() if name.startswith(("gamma", "delta"))},
        }
        if intervals is not None:
            out["cross_lag_curve"] = self.cross_lag_curve(params, intervals)
        return out

    def cross_lag_curve(self, params, intervals):
        """Position-to-position entries of ``expm(A dt)``: (interval, target, source)."""
        a = self.drift(self.expand(params))
        idx = jnp.array([0, 2])
        return jax.vmap(lambda dt: jax.scipy.linalg.expm(a * dt)[idx][:, idx])(
            jnp.asarray(intervals, float)
        )
