"""Exact discretisation of linear SDEs (METHODS.md §1.1).

For ``dx = (A x + B u) dt + G dW`` with ``Sigma = G G^T`` and ``u`` constant on a
step of length ``dt``:

* ``Phi = expm(A dt)``;
* ``Gamma = int_0^dt expm(A s) ds``, the top-right block of
  ``expm([[A, I], [0, 0]] dt)`` (valid for singular ``A``), so the step's
  intercept is ``Gamma B u``;
* ``Q = int_0^dt expm(A s) Sigma expm(A s)^T ds`` by Van Loan (1978):
  ``expm([[-A, Sigma], [0, A^T]] dt) = [[E11, E12], [0, E22]]``,
  ``Phi = E22^T``, ``Q = E22^T E12`` (valid for any ``A``).

The stationary covariance solves ``A P + P A^T + Sigma = 0`` (Lyapunov), by the
Kronecker form ``vec P = -(A (+) A)^{-1} vec Sigma``.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax.scipy.linalg import expm
from jaxtyping import Array, Float


def _sym(a: Array) -> Array:
    return 0.5 * (a + a.T)


def van_loan(
    drift: Float[Array, "n n"], diffusion: Float[Array, "n n"], dt: Float[Array, ""]
) -> tuple[Float[Array, "n n"], Float[Array, "n n"]]:
    """Transition ``Phi`` and process covariance ``Q`` of one step (Van Loan 1978)."""
    n = drift.shape[0]
    zeros = jnp.zeros_like(drift)
    block = jnp.block([[-drift, diffusion], [zeros, drift.T]]) * dt
    e = expm(block)
    e12 = e[:n, n:]
    e22 = e[n:, n:]
    transition = e22.T
    return transition, _sym(transition @ e12)


def integrated_transition(drift: Float[Array, "n n"], dt: Float[Array, ""]) -> Float[Array, "n n"]:
    """``Gamma(dt) = int_0^dt expm(A s) ds`` from one augmented matrix exponential."""
    n = drift.shape[0]
    eye = jnp.eye(n, dtype=drift.dtype)
    zeros = jnp.zeros_like(drift)
    e = expm(jnp.block([[drift, eye], [zeros, zeros]]) * dt)
    return e[:n, n:]


def stationary_covariance(
    drift: Float[Array, "n n"], diffusion: Float[Array, "n n"]
) -> Float[Array, "n n"]:
    """Solution of ``A P + P A^T + Sigma = 0`` (meaningful for stable ``A``)."""
    n = drift.shape[0]
    eye = jnp.eye(n, dtype=drift.dtype)
    kron_sum = jnp.kron(drift, eye) + jnp.kron(eye, drift)
    vec = jnp.linalg.solve(kron_sum, -diffusion.reshape(-1))
    return _sym(vec.reshape(n, n))


def discrete_stationary_covariance(
    transition: Float[Array, "n n"], process_cov: Float[Array, "n n"]
) -> Float[Array, "n n"]:
    """Solution of ``P = Phi P Phi^T + Q`` (meaningful for spectral radius < 1)."""
    n = transition.shape[0]
    eye = jnp.eye(n * n, dtype=transition.dtype)
    vec = jnp.linalg.solve(eye - jnp.kron(transition, transition), process_cov.reshape(-1))
    return _sym(vec.reshape(n, n))


def lyapunov_process_cov(
    transition: Float[Array, "n n"], stationary_cov: Float[Array, "n n"]
) -> Float[Array, "n n"]:
    """``Q(dt) = P_inf - Phi P_inf Phi^T``: the Lyapunov route for stable ``A``."""
    return _sym(stationary_cov - transition @ stationary_cov @ transition.T)
