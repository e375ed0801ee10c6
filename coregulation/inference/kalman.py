"""Kalman filtering and smoothing for time-varying linear-Gaussian state spaces.

Every model in :mod:`coregulation.models` lowers to an :class:`LGSSM`; this module
is the only place the filtering maths lives.  All functions are pure, jit-able,
``vmap``-able over dyads and sessions, and differentiable.

Notation inside the kernels (METHODS.md §2) ::

    s_k = Phi_k s_{k-1} + c_k + w_k,   w_k ~ N(0, Q_k)      (state, dimension n)
    y_k = H s_k + d + e_k,             e_k ~ N(0, R)        (observation, dimension p)
    s_0 ~ N(m0, P0) at session start; the first observation comes after one step.

Missing values (NaN in ``y``) are handled exactly with the mask trick of
METHODS.md §2.2: for missing components the emission row is zeroed, the
measurement variance set to one and the innovation to zero, so the gain for that
component vanishes and it contributes nothing to the likelihood.

Three methods, which agree to round-off (tested to 1e-8):

``"sequential"``
    The textbook filter with the Joseph-form covariance update (METHODS.md §2.1).
``"parallel"``
    The associative-scan filter of Särkkä & García-Fernández (2021), in the
    form of METHODS.md §2.5 that never inverts the element covariance.
    Logarithmic span; pays off on accelerators and very long series.
``"fast"``
    The covariance recursion depends only on the parameters and on which values
    are missing, not on the data.  It runs first, as a lean scan with no mean
    arithmetic, up to the point from which nothing varies any more (one step
    length, nothing missing: the ``steady_from`` hint).  From there the Riccati
    recursion is solved in closed form around its steady state (METHODS.md §2.4;
    see ``_time_invariant_tail``), as batched matrix operations, exactly.  Once
    the closed form has reached the steady state to rounding (checked at run
    time after 128 steps), the remaining steps are the steady state itself and
    cost one update in all (``_tail_pass``); for many series vmapped over a named
    axis (a hierarchical fit's chains, on CPU), that tail's means and terms also run
    on the steady state's constant matrices (``_fast_to_steady_state``).  The
    steady state itself comes from a doubling loop that stops at convergence and
    is differentiated implicitly (one Stein-equation solve, not back-propagation
    through the loop).  Small batched products are written as fused
    multiply-reduce and small inverses as unrolled Gauss-Jordan elimination: on
    CPU both are several times cheaper than batched LAPACK and dot calls.  The
    filtered means are then the composition of affine maps
    ``m_k = F_k m_{k-1} + g_k``: an associative scan on accelerators, a lean
    sequential scan on CPU (measured faster there), and the log-likelihood
    follows in one vectorised pass.

``"auto"`` picks ``"fast"``.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.scipy.linalg import solve_triangular
from jaxtyping import Array, Float, Int

from coregulation._annotations import resolved

__all__ = [
    "LGSSM",
    "FilterResult",
    "SmootherResult",
    "log_likelihood",
    "kalman_filter",
    "kalman_smoother",
    "METHODS",
]

METHODS = ("sequential", "parallel", "fast", "auto")
_LOG_2PI = math.log(2.0 * math.pi)

# Doublings of the one-step filter element for the steady-state covariance: covers
# 2**40 steps, enough for closed loops with spectral radius up to 1 - 1e-11.
_DOUBLINGS = 40
# Relative change of the filtered covariance below which the doubling has converged.
_DOUBLING_TOL = 1e-15
# A time-invariant, complete tail shorter than this is scanned: the closed form's
# fixed cost (the doubling for the steady state) only pays on longer tails.
_MIN_TAIL = 64
# The closed-form tail is first solved for this many steps; if by then the
# predicted covariance equals the steady state to rounding, the rest of the tail
# *is* the steady state and is not computed step by step (see _tail_pass).
_CONVERGED_AFTER = 128
# "Equals to rounding": the remaining error, amplified by the largest transient of
# the closed loop, below this share of the steady state (relative, max-abs).
_CONVERGED_TOL = 1e-15


@resolved
class LGSSM(NamedTuple):
    """A discrete-time linear-Gaussian state space on one series' time grid.

    Transition matrices and process covariances are stored once per *distinct*
    step (step length, moderator value) and looked up with ``step_index``; a
    regular grid therefore discretises once, however long the series.

    Attributes
    ----------
    transition : (num_distinct, n, n)
        ``Phi`` for each distinct step.
    process_cov : (num_distinct, n, n)
        ``Q`` for each distinct step.
    step_index : (num_timesteps,)
        Which distinct step leads into observation ``k``.
    state_offset : (num_timesteps, n)
        ``c_k``, the intercept of the step into observation ``k`` (known inputs
        included).
    emission : (p, n)
        ``H``.
    emission_offset : (p,)
        ``d``.
    emission_cov : (p, p)
        ``R`` (may be zero when measurement error is switched off).
    initial_mean, initial_cov : (n,), (n, n)
        The state distribution at session start, one step before the first
        observation.
    """

    transition: Float[Array, "u n n"]
    process_cov: Float[Array, "u n n"]
    step_index: Int[Array, " t"]
    state_offset: Float[Array, "t n"]
    emission: Float[Array, "p n"]
    emission_offset: Float[Array, " p"]
    emission_cov: Float[Array, "p p"]
    initial_mean: Float[Array, " n"]
    initial_cov: Float[Array, "n n"]


@resolved
class FilterResult(NamedTuple):
    """Output of :func:`kalman_filter`.

    ``log_likelihood_steps[k]`` is ``log p(y_k | y_1..y_{k-1})`` over the observed
    components of ``y_k`` (zero for a fully missing step); they sum to
    ``log_likelihood``.
    """

    log_likelihood: Float[Array, ""]
    log_likelihood_steps: Float[Array, " t"]
    predicted_means: Float[Array, "t n"]
    predicted_covs: Float[Array, "t n n"]
    filtered_means: Float[Array, "t n"]
    filtered_covs: Float[Array, "t n n"]


@resolved
class SmootherResult(NamedTuple):
    """Output of :func:`kalman_smoother`: the filter plus ``p(s_k | y_1..y_T)``."""

    filter: FilterResult
    smoothed_means: Float[Array, "t n"]
    smoothed_covs: Float[Array, "t n n"]


# ----------------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------------


def _sym(a: Array) -> Array:
    return 0.5 * (a + jnp.swapaxes(a, -1, -2))


def _prepare(ssm: LGSSM, y: Array, observed=None):
    """Validate shapes and split ``y`` into zero-filled values and an observed mask."""
    y = jnp.asarray(y)
    if y.ndim != 2:
        raise ValueError(
            f"y must be 2-D (num_timesteps, p); got shape {y.shape}. "
            "For many dyads, vmap over the leading dimension."
        )
    num_timesteps, p = y.shape
    if ssm.emission.shape[0] != p:
        raise ValueError(
            f"y has {p} columns but the model's emission matrix has "
            f"{ssm.emission.shape[0]} rows; was y transposed?"
        )
    if ssm.step_index.shape[0] != num_timesteps or ssm.state_offset.shape[0] != num_timesteps:
        raise ValueError(
            f"the state space was built for {ssm.step_index.shape[0]} time points but y has "
            f"{num_timesteps}; build it on this series' own time grid."
        )
    if observed is None:
        observed = ~jnp.isnan(y)
    else:
        observed = jnp.asarray(observed, dtype=bool)
        if observed.shape != y.shape:
            raise ValueError(
                f"observed must have y's shape {y.shape}; got {observed.shape}."
            )
    y_filled = jnp.where(observed, y, 0.0)
    return y_filled, observed


def _step_matrices(ssm: LGSSM):
    return ssm.transition[ssm.step_index], ssm.process_cov[ssm.step_index]


def _masked_emission(ssm: LGSSM, observed: Array):
    """``H~``, ``R~``, ``d~`` of the mask trick for one step (or a batch of steps)."""
    mask = observed.astype(ssm.emission.dtype)
    emission = ssm.emission * mask[..., :, None]
    outer = mask[..., :, None] * mask[..., None, :]
    eye = jnp.eye(mask.shape[-1], dtype=mask.dtype)
    emission_cov = ssm.emission_cov * outer + eye * (1.0 - mask)[..., None, :]
    return emission, emission_cov, mask


def _condition(ssm: LGSSM, mean, cov, y, observed):
    """Measurement update (Joseph form). Returns filtered mean, cov and log p(y_k|...)."""
    emission, emission_cov, mask = _masked_emission(ssm, observed)
    innovation = mask * (y - ssm.emission @ mean - ssm.emission_offset)
    cov_ht = cov @ emission.T
    innovation_cov = _sym(emission @ cov_ht + emission_cov)
    chol, inv_chol = _cholesky_and_inverse(innovation_cov)
    gain = (cov_ht @ inv_chol.T) @ inv_chol  # P H^T S^{-1}
    filtered_mean = mean + gain @ innovation
    i_kh = jnp.eye(mean.shape[0], dtype=mean.dtype) - gain @ emission
    filtered_cov = _sym(i_kh @ cov @ i_kh.T + gain @ emission_cov @ gain.T)
    whitened = inv_chol @ innovation
    log_lik = -0.5 * (
        jnp.sum(mask) * _LOG_2PI
        + 2.0 * jnp.sum(jnp.log(jnp.diag(chol)))
        + whitened @ whitened
    )
    return filtered_mean, filtered_cov, log_lik


def _cholesky_and_inverse(a: Array):
    """Lower Cholesky factor ``L`` of a symmetric positive-definite matrix and ``L^{-1}``.

    For the 1x1 and 2x2 innovation covariances of a dyad this is closed-form scalar
    arithmetic, which XLA fuses; on CPU it avoids two LAPACK calls per time step.
    A matrix that is not positive definite gives NaN, as LAPACK's would.
    """
    p = a.shape[-1]
    if p == 1:
        l11 = jnp.sqrt(a[0, 0])
        return l11.reshape(1, 1), (1.0 / l11).reshape(1, 1)
    if p == 2:
        l11 = jnp.sqrt(a[0, 0])
        l21 = a[1, 0] / l11
        l22 = jnp.sqrt(a[1, 1] - l21 * l21)
        zero = jnp.zeros_like(l11)
        chol = jnp.stack([jnp.stack([l11, zero]), jnp.stack([l21, l22])])
        inv = jnp.stack(
            [jnp.stack([1.0 / l11, zero]), jnp.stack([-l21 / (l11 * l22), 1.0 / l22])]
        )
        return chol, inv
    chol = jnp.linalg.cholesky(a)
    inv = solve_triangular(chol, jnp.eye(p, dtype=a.dtype), lower=True)
    return chol, inv


def _bmm(a: Array, b: Array) -> Array:
    """Batched product of small matrices as broadcast-multiply-reduce.

    XLA fuses it on CPU, and it avoids a layout bug of XLA's CPU compiler (jax
    0.10) that rejects dot_general with three batch dimensions, which nested
    ``vmap`` (chains x series x time) produces.
    """
    return jnp.sum(a[..., :, :, None] * b[..., None, :, :], axis=-2)


def _bmv(a: Array, v: Array) -> Array:
    """Batched matrix-vector product ``a @ v`` (see :func:`_bmm`)."""
    return jnp.sum(a * v[..., None, :], axis=-1)


def _solve(a: Array, b: Array) -> Array:
    """``a^{-1} b`` for a (batch of) square ``a``; closed form for 1x1 and 2x2.

    Batched LAPACK solves of tiny matrices cost a library call each on CPU; the
    closed forms are fused elementwise arithmetic.  Larger systems use LU.
    """
    n = a.shape[-1]
    if n == 1:
        return b / a
    if n == 2:
        a11, a12 = a[..., 0, 0], a[..., 0, 1]
        a21, a22 = a[..., 1, 0], a[..., 1, 1]
        det = a11 * a22 - a12 * a21
        inv = jnp.stack([jnp.stack([a22, -a12], -1), jnp.stack([-a21, a11], -1)], -2)
        return (inv / det[..., None, None]) @ b
    return jnp.linalg.solve(a, b)


def _gauss_jordan_inverse(a: Array) -> Array:
    """Inverse of a batch of small square matrices by Gauss-Jordan elimination.

    Partial pivoting, unrolled over the static size: every operation is fused
    elementwise arithmetic over the batch, where a batched LAPACK call costs a
    library call per matrix on CPU.  A singular matrix gives inf/NaN, as LU would.
    """
    n = a.shape[-1]
    rows = jnp.broadcast_to(jnp.arange(n), a.shape[:-1])  # (..., n): explicit ranks
    work = jnp.concatenate([a, jnp.broadcast_to(jnp.eye(n, dtype=a.dtype), a.shape)], axis=-1)
    for j in range(n):
        size = jnp.where(rows >= j, jnp.abs(work[..., :, j]), -1.0)
        is_pivot = rows == jnp.argmax(size, axis=-1)[..., None]  # (..., n)
        is_j = rows == j
        pivot_row = jnp.sum(jnp.where(is_pivot[..., :, None], work, 0.0), axis=-2)
        row_j = work[..., j, :]
        # swap rows j and pivot, normalise the pivot row, eliminate column j elsewhere
        work = jnp.where(is_pivot[..., :, None], row_j[..., None, :], work)
        pivot_row = pivot_row / pivot_row[..., j:j + 1]
        factors = jnp.where(is_j, 0.0, work[..., :, j])
        work = work - factors[..., :, None] * pivot_row[..., None, :]
        work = jnp.where(is_j[..., :, None], pivot_row[..., None, :], work)
    return work[..., :, n:]


@jax.custom_vjp
def _small_inverse(a: Array) -> Array:
    return _gauss_jordan_inverse(a)


def _small_inverse_fwd(a):
    inverse = _gauss_jordan_inverse(a)
    return inverse, inverse


def _small_inverse_bwd(inverse, cotangent):
    # d(A^{-1}) = -A^{-1} dA A^{-1}, so the cotangent of A is -A^{-T} cot A^{-T}
    inv_t = jnp.swapaxes(inverse, -1, -2)
    return (-_bmm(_bmm(inv_t, cotangent), inv_t),)


_small_inverse.defvjp(_small_inverse_fwd, _small_inverse_bwd)


def _guard(value: Array) -> Array:
    """Map NaN (a failed Cholesky: non-positive-definite covariance) to -inf."""
    return jnp.where(jnp.isnan(value), -jnp.inf, value)


def _check_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}.")
    return "fast" if method == "auto" else method


# ----------------------------------------------------------------------------------
# sequential
# ----------------------------------------------------------------------------------


def _sequential(ssm: LGSSM, y, observed, keep_moments: bool):
    transitions, process_covs = _step_matrices(ssm)

    def step(carry, inputs):
        mean, cov = carry
        transition, process_cov, offset, y_k, observed_k = inputs
        pred_mean = transition @ mean + offset
        pred_cov = _sym(transition @ cov @ transition.T + process_cov)
        filt_mean, filt_cov, log_lik = _condition(ssm, pred_mean, pred_cov, y_k, observed_k)
        out = (log_lik, pred_mean, pred_cov, filt_mean, filt_cov) if keep_moments else log_lik
        return (filt_mean, filt_cov), out

    inputs = (transitions, process_covs, ssm.state_offset, y, observed)
    _, out = lax.scan(step, (ssm.initial_mean, ssm.initial_cov), inputs)
    return out


# ----------------------------------------------------------------------------------
# parallel (Särkkä & García-Fernández 2021; METHODS.md §2.5)
# ----------------------------------------------------------------------------------


class _FilterElement(NamedTuple):
    A: Array
    b: Array
    C: Array
    J: Array
    eta: Array
    z: Array


def _parallel_elements(ssm: LGSSM, y, observed) -> _FilterElement:
    transitions, process_covs = _step_matrices(ssm)
    n = ssm.initial_mean.shape[0]
    eye_n = jnp.eye(n, dtype=transitions.dtype)

    def generic(transition, process_cov, offset, y_k, observed_k):
        # products as _bmm/_bmv: under vmap over steps, series and draws, ``@`` becomes
        # a dot_general with three batch dimensions that XLA's CPU compiler rejects
        emission, emission_cov, mask = _masked_emission(ssm, observed_k)
        residual = mask * (y_k - ssm.emission_offset - _bmv(ssm.emission, offset))
        q_ht = _bmm(process_cov, emission.T)
        innovation_cov = _sym(_bmm(emission, q_ht) + emission_cov)
        chol, inv_chol = _cholesky_and_inverse(innovation_cov)
        s_inv = _bmm(inv_chol.T, inv_chol)
        gain = _bmm(q_ht, s_inv)
        i_kh = eye_n - _bmm(gain, emission)
        A = _bmm(i_kh, transition)
        b = offset + _bmv(gain, residual)
        C = _sym(_bmm(_bmm(i_kh, process_cov), i_kh.T)
                 + _bmm(_bmm(gain, emission_cov), gain.T))
        h_phi = _bmm(emission, transition)
        s_inv_h_phi = _bmm(s_inv, h_phi)
        J = _sym(_bmm(h_phi.T, s_inv_h_phi))
        eta = _bmv(s_inv_h_phi.T, residual)
        whitened = _bmv(inv_chol, residual)
        z = 0.5 * (
            jnp.sum(mask) * _LOG_2PI
            + 2.0 * jnp.sum(jnp.log(jnp.diag(chol)))
            + jnp.sum(whitened**2)
        )
        return _FilterElement(A, b, C, J, eta, z)

    elements = jax.vmap(generic)(transitions, process_covs, ssm.state_offset, y, observed)

    # The first element absorbs the prior: one ordinary predict + update.
    pred_mean = transitions[0] @ ssm.initial_mean + ssm.state_offset[0]
    pred_cov = _sym(transitions[0] @ ssm.initial_cov @ transitions[0].T + process_covs[0])
    mean1, cov1, log_lik1 = _condition(ssm, pred_mean, pred_cov, y[0], observed[0])
    zeros = jnp.zeros((n, n), dtype=transitions.dtype)
    first = _FilterElement(zeros, mean1, cov1, zeros, jnp.zeros(n, dtype=mean1.dtype), -log_lik1)
    return jax.tree.map(lambda all_, one: all_.at[0].set(one), elements, first)


def _combine_one(e1: _FilterElement, e2: _FilterElement) -> _FilterElement:
    """``e1`` then ``e2``; METHODS.md §2.5, without inverting ``C1``."""
    eye = jnp.eye(e1.b.shape[-1], dtype=e1.b.dtype)
    i_cj = eye + e1.C @ e2.J  # (I + C1 J2); its transpose is Y^{-1} = (I + J2 C1)
    i_jc = i_cj.T
    u = e1.C @ e2.eta + e1.b  # C1 eta2 + b1
    A = e2.A @ jnp.linalg.solve(i_cj, e1.A)
    b = e2.A @ jnp.linalg.solve(i_cj, u) + e2.b
    C = _sym(e2.A @ jnp.linalg.solve(i_cj, e1.C) @ e2.A.T + e2.C)
    eta = e1.A.T @ jnp.linalg.solve(i_jc, e2.eta - e2.J @ e1.b) + e1.eta
    y_j2 = jnp.linalg.solve(i_jc, e2.J)
    J = _sym(e1.A.T @ y_j2 @ e1.A + e1.J)
    _, logdet = jnp.linalg.slogdet(i_cj)
    t = -e2.eta @ (e1.C @ e2.eta) - 2.0 * (e2.eta @ e1.b) + u @ (y_j2 @ u)
    z = e1.z + e2.z + 0.5 * logdet + 0.5 * t
    return _FilterElement(A, b, C, J, eta, z)


_combine_filter_elements = jax.vmap(_combine_one)


def _parallel(ssm: LGSSM, y, observed, keep_moments: bool):
    elements = _parallel_elements(ssm, y, observed)
    cumulative = lax.associative_scan(_combine_filter_elements, elements)
    neg_cum_z = -cumulative.z
    log_lik_steps = jnp.concatenate([neg_cum_z[:1], jnp.diff(neg_cum_z)])
    if not keep_moments:
        return log_lik_steps
    filt_means, filt_covs = cumulative.b, cumulative.C
    pred_means, pred_covs = _predict_batch(ssm, filt_means, filt_covs)
    return log_lik_steps, pred_means, pred_covs, filt_means, filt_covs


def _predict_batch(ssm: LGSSM, filt_means, filt_covs):
    """Predicted moments for every step from the filtered ones of the step before."""
    transitions, process_covs = _step_matrices(ssm)
    prev_means = jnp.concatenate([ssm.initial_mean[None], filt_means[:-1]])
    prev_covs = jnp.concatenate([ssm.initial_cov[None], filt_covs[:-1]])
    pred_means = jnp.einsum("tij,tj->ti", transitions, prev_means) + ssm.state_offset
    pred_covs = _sym(transitions @ prev_covs @ jnp.swapaxes(transitions, -1, -2) + process_covs)
    return pred_means, pred_covs


# ----------------------------------------------------------------------------------
# fast: covariance pass first, then an associative scan over affine mean maps
# ----------------------------------------------------------------------------------


class _CovariancePass(NamedTuple):
    gain: Array  # (t, n, p)
    inv_chol_innovation: Array  # (t, p, p): L^{-1} with S = L L^T
    log_det_innovation: Array  # (t,)
    pred_cov: Array  # (t, n, n)
    filt_cov: Array  # (t, n, n)


def _covariance_update(ssm: LGSSM, pred_cov, observed_k) -> _CovariancePass:
    """Measurement update of a predicted covariance (Joseph form), no data involved."""
    emission, emission_cov, _ = _masked_emission(ssm, observed_k)
    # products as broadcast-multiply-reduce (_bmm): this runs vmapped over every step
    # of a tail, where batched dot_general is several times slower on CPU
    cov_ht = _bmm(pred_cov, emission.T)
    chol, inv_chol = _cholesky_and_inverse(_sym(_bmm(emission, cov_ht) + emission_cov))
    gain = _bmm(_bmm(cov_ht, inv_chol.T), inv_chol)  # P H^T S^{-1}
    i_kh = jnp.eye(pred_cov.shape[0], dtype=pred_cov.dtype) - _bmm(gain, emission)
    filt_cov = _sym(_bmm(_bmm(i_kh, pred_cov), i_kh.T) + _bmm(_bmm(gain, emission_cov), gain.T))
    log_det = 2.0 * jnp.sum(jnp.log(jnp.diag(chol)))
    return _CovariancePass(gain, inv_chol, log_det, pred_cov, filt_cov)


def _covariance_step(ssm: LGSSM, cov, transition, process_cov, observed_k):
    pred_cov = _sym(transition @ cov @ transition.T + process_cov)
    out = _covariance_update(ssm, pred_cov, observed_k)
    return out.filt_cov, out


def _covariance_scan(ssm, initial_cov, transitions, process_covs, observed):
    def step(cov, inputs):
        return _covariance_step(ssm, cov, *inputs)

    return lax.scan(step, initial_cov, (transitions, process_covs, observed))


def _riccati_map(P, transition, process_cov, emission, emission_cov):
    """One predicted-form Riccati step ``Phi (P - P H^T S^{-1} H P) Phi^T + Q``."""
    S = _sym(emission @ P @ emission.T + emission_cov)
    gain = _solve(S, emission @ P).T  # P H^T S^{-1}
    return _sym(transition @ (P - gain @ emission @ P) @ transition.T + process_cov)


def _dare_doubling(transition, process_cov, emission, emission_cov):
    """Stabilising solution of the predicted-form DARE by doubling (forward only).

    Doubling of the covariance part of the parallel-filter element (METHODS.md
    §2.4-2.5): each pass composes the element with itself, so after ``d`` passes it
    covers ``2**d`` steps of the recursion started from ``Q``.  The loop stops once a
    pass no longer changes the filtered covariance (the closed-loop power ``A`` has
    vanished), or after ``_DOUBLINGS`` passes (``2**40`` steps: spectral radius up to
    ``1 - 1e-11``).  Unlike the textbook structured doubling it never inverts ``R``,
    so it also holds with measurement error switched off.
    """
    n = transition.shape[0]
    eye = jnp.eye(n, dtype=transition.dtype)
    H, R = emission, emission_cov
    S = _sym(H @ process_cov @ H.T + R)
    gain = _solve(S, H @ process_cov).T
    i_kh = eye - gain @ H
    A = i_kh @ transition
    C = _sym(i_kh @ process_cov @ i_kh.T + gain @ R @ gain.T)
    h_phi = H @ transition
    J = _sym(h_phi.T @ _solve(S, h_phi))

    def double(state):
        i, A, C, J, _ = state
        i_cj = eye + C @ J
        A2 = A @ _solve(i_cj, A)
        C2 = _sym(A @ _solve(i_cj, C) @ A.T + C)
        J2 = _sym(A.T @ _solve(i_cj.T, J) @ A + J)
        change = jnp.max(jnp.abs(C2 - C)) / jnp.maximum(jnp.max(jnp.abs(C2)), 1e-300)
        return i + 1, A2, C2, J2, change

    def again(state):
        i, *_, change = state
        # NaN (a diverging recursion) stops the loop; the NaN then reaches the result
        return (i < _DOUBLINGS) & (change > _DOUBLING_TOL)

    state = (0, A, C, J, jnp.asarray(jnp.inf, dtype=transition.dtype))
    _, _, filtered, _, _ = lax.while_loop(again, double, state)
    return _sym(transition @ filtered @ transition.T + process_cov)


def _closed_loop(transition, P, emission, emission_cov):
    """``S^{-1} H`` and the closed loop ``F = Phi (I - P H^T S^{-1} H)``, ``S = H P H^T + R``."""
    S = _sym(emission @ P @ emission.T + emission_cov)
    s_inv_h = _solve(S, emission)
    return s_inv_h, transition - transition @ P @ emission.T @ s_inv_h


@jax.custom_vjp
def _dare(transition, process_cov, emission, emission_cov):
    return _dare_doubling(transition, process_cov, emission, emission_cov)


def _dare_fwd(transition, process_cov, emission, emission_cov):
    P = _dare_doubling(transition, process_cov, emission, emission_cov)
    return P, (P, transition, process_cov, emission, emission_cov)


def _dare_bwd(residuals, cotangent):
    """Implicit differentiation of the fixed point ``P = G(P, theta)``.

    ``dG/dP [X] = F X F^T`` with the closed loop ``F = Phi (I - K H)``, so the
    adjoint ``lam`` solves the Stein equation ``lam = cotangent + F^T lam F`` (one
    ``n^2 x n^2`` solve), and the parameters' cotangents are ``G``'s VJP at ``lam``.
    This replaces back-propagation through the doubling loop.
    """
    P, transition, process_cov, emission, emission_cov = residuals
    n = P.shape[0]
    _, F = _closed_loop(transition, P, emission, emission_cov)
    stein = jnp.eye(n * n, dtype=P.dtype) - jnp.kron(F.T, F.T)
    lam = jnp.linalg.solve(stein, cotangent.reshape(-1)).reshape(n, n)
    _, vjp = jax.vjp(lambda *theta: _riccati_map(P, *theta), transition, process_cov,
                     emission, emission_cov)
    return vjp(lam)


_dare.defvjp(_dare_fwd, _dare_bwd)


def _steady_state_predicted_cov(ssm: LGSSM, transition, process_cov):
    """Stabilising solution ``P`` of the predicted-form discrete Riccati equation.

    Computed by doubling (:func:`_dare_doubling`) and differentiated implicitly
    (:func:`_dare_bwd`): the gradient costs one small linear solve, whatever the
    number of doublings.
    """
    return _dare(transition, process_cov, ssm.emission, ssm.emission_cov)


def _matrix_powers(F, num: int):
    """``[I, F, F^2, ..., F^(num-1)]`` by repeated doubling of the list (log depth)."""
    powers = jnp.eye(F.shape[0], dtype=F.dtype)[None]
    current = F  # F^(len(powers))
    while powers.shape[0] < num:
        powers = jnp.concatenate([powers, _bmm(powers, current[None])])
        current = current @ current
    return powers[:num]


def _time_invariant_tail(ssm: LGSSM, steady, s_inv_h, F, initial_pred_cov, num: int):
    """Predicted covariances of ``num`` time-invariant, complete steps, in closed form.

    With ``P`` the steady state, ``S = H P H^T + R``, the closed loop
    ``F = Phi - Phi P H^T S^{-1} H`` and ``E_0`` the first predicted covariance
    minus ``P``, the Riccati recursion is solved exactly by ::

        P_k - P = F^k E_0 (I + O_k E_0)^{-1} (F^k)^T,
        O_k = sum_{j<k} (F^j)^T H^T S^{-1} H F^j

    (the Riccati difference equation of the error; checked against the recursion
    to 1e-15).  Every step is then a batched matrix operation: no sequential scan.

    Returns the predicted covariances and the largest squared norm of ``F^k``
    (``k < num``), the closed loop's transient amplification.
    """
    n = F.shape[0]
    M = _sym(ssm.emission.T @ s_inv_h)
    powers = _matrix_powers(F, num)
    powers_t = jnp.swapaxes(powers, -1, -2)
    terms = _bmm(_bmm(powers_t, M[None]), powers)
    gramians = jnp.cumsum(terms, axis=0) - terms  # exclusive: sum over j < k
    error0 = initial_pred_cov - steady
    eye = jnp.eye(n, dtype=F.dtype)
    inner = _bmm(_small_inverse(eye[None] + _bmm(gramians, error0[None])), powers_t)
    errors = _bmm(_bmm(powers, error0[None]), inner)
    amplification = jnp.max(jnp.sum(powers**2, axis=(-2, -1)))
    return _sym(steady[None] + errors), amplification


def _head_to_check(ssm: LGSSM, steady, s_inv_h, F, first_pred, head: int,
                   stop: bool | str):
    """The tail's first ``head`` predicted covariances in closed form, and whether the
    steady state is reached by their last (to rounding, after the closed loop's largest
    transient amplification); for ``stop`` naming a ``vmap`` axis, whether every series
    of the axis has reached it (an unbatched predicate, so ``lax.cond`` stays a branch).
    """
    head_covs, amplification = _time_invariant_tail(ssm, steady, s_inv_h, F, first_pred, head)
    left = jnp.max(jnp.abs(head_covs[-1] - steady)) * jnp.maximum(amplification, 1.0)
    converged = left <= _CONVERGED_TOL * jnp.max(jnp.abs(steady))
    if isinstance(stop, str):
        converged = lax.psum(jnp.where(converged, 0, 1), stop) == 0
    return head_covs, converged


def _tail_pass(ssm: LGSSM, transition, process_cov, first_pred, observed_k, num: int,
               stop: bool | str = True, converged_after: int | None = None):
    """Covariance pass of ``num`` time-invariant steps with the same missing pattern.

    The closed form (:func:`_time_invariant_tail`) runs for the first
    ``converged_after`` steps (default ``_CONVERGED_AFTER``; a fit chooses it from its
    start point, :func:`steps_to_steady_state`).  If the error left at the last of them, times the
    closed loop's largest transient amplification, is below rounding
    (``_CONVERGED_TOL``), every later step is the steady state: one measurement
    update, broadcast.  Otherwise the Riccati recursion continues from there, step
    by step (a ``lax.cond``, so a single series computes only the branch it takes; under
    ``vmap`` both run, so batched callers pass ``stop=False`` for the plain
    closed form).

    ``stop`` may also name a ``vmap`` axis (over series): the series of that axis
    then switch together, once every one of them has converged.  The predicate is
    reduced over the axis, so it is not batched and the ``lax.cond`` stays a real
    branch (measured in RESULTS.md, "Case (ii)").
    """
    steady = _steady_state_predicted_cov(ssm, transition, process_cov)
    s_inv_h, F = _closed_loop(transition, steady, ssm.emission, ssm.emission_cov)
    update = jax.vmap(lambda pred_cov: _covariance_update(ssm, pred_cov, observed_k))
    head = _CONVERGED_AFTER if converged_after is None else converged_after
    if not stop or num <= head + _MIN_TAIL:
        pred_covs, _ = _time_invariant_tail(ssm, steady, s_inv_h, F, first_pred, num)
        return update(pred_covs)
    head_covs, converged = _head_to_check(ssm, steady, s_inv_h, F, first_pred, head, stop)
    rest = num - head
    last = head_covs[-1]

    def at_steady_state(last):
        one = update(steady[None])
        return jax.tree.map(lambda a: jnp.broadcast_to(a, (rest, *a.shape[1:])), one)

    def continued(last):
        # the Riccati recursion itself from the last covariance of the head: this
        # branch rarely runs, and a scan compiles in less time than the closed form
        # over the rest (measured: case (i)'s value and gradient compile 2.7 s sooner
        # and trace 1 s sooner; RESULTS.md)
        return update(_riccati_steps(ssm, transition, process_cov, last, rest))

    # ``continued`` is rematerialised: differentiating a ``cond`` keeps residuals for
    # both branches; with ``jax.checkpoint`` this one keeps only its input, and
    # recomputes itself in the backward pass in the rare case it ran.  Same values
    # and gradients; measured about 10% less per value and gradient (case (ii) and
    # case (i) likelihoods).
    out_rest = lax.cond(converged, at_steady_state, jax.checkpoint(continued), last)
    return jax.tree.map(lambda a, b: jnp.concatenate([a, b]), update(head_covs), out_rest)


def _varying_head(ssm: LGSSM, transitions, process_covs, observed, steady_from: int):
    """The sequential covariance pass up to ``steady_from`` (steps or missing pattern
    vary there) and the time-invariant tail's first predicted covariance.

    Returns ``(first_pred, out_head)``, ``out_head`` None where ``steady_from`` is 0.
    """
    head_cov = ssm.initial_cov
    out_head = None
    if steady_from > 0:
        head_cov, out_head = _covariance_scan(
            ssm, ssm.initial_cov, transitions[:steady_from], process_covs[:steady_from],
            observed[:steady_from],
        )
    transition, process_cov = transitions[-1], process_covs[-1]
    return _sym(transition @ head_cov @ transition.T + process_cov), out_head


def _riccati_steps(ssm: LGSSM, transition, process_cov, last, num: int):
    """``num`` predicted covariances of the Riccati recursion itself after ``last``."""
    def step(pred_cov, _):
        pred_cov = _riccati_map(pred_cov, transition, process_cov, ssm.emission,
                                ssm.emission_cov)
        return pred_cov, pred_cov

    return lax.scan(step, last, None, length=num)[1]


def _covariance_pass(ssm: LGSSM, observed, steady_from: int | None,
                     stop: bool | str = True,
                     converged_after: int | None = None) -> _CovariancePass:
    transitions, process_covs = _step_matrices(ssm)
    num_timesteps = transitions.shape[0]
    if steady_from is None or num_timesteps - steady_from < _MIN_TAIL:
        _, out = _covariance_scan(ssm, ssm.initial_cov, transitions, process_covs, observed)
        return out

    # Up to ``steady_from`` the steps or the missing pattern vary: sequential scan.
    # From there on nothing varies, and the Riccati recursion has a closed form.
    first_pred, out_head = _varying_head(ssm, transitions, process_covs, observed, steady_from)
    transition, process_cov = transitions[-1], process_covs[-1]
    tail = num_timesteps - steady_from
    out_tail = _tail_pass(ssm, transition, process_cov, first_pred, observed[-1], tail, stop,
                          converged_after)
    if out_head is None:
        return out_tail
    return jax.tree.map(lambda a, b: jnp.concatenate([a, b]), out_head, out_tail)


def _affine_one(e1, e2):
    (F1, g1), (F2, g2) = e1, e2
    return F2 @ F1, F2 @ g1 + g2


_affine_combine = jax.vmap(_affine_one)


def _mean_pass(ssm: LGSSM, transitions, state_offset, cp: _CovariancePass, y, observed,
               initial_mean):
    """The means and per-step log-likelihood terms, given the covariance pass.

    Returns ``(log_lik_steps, pred_means, filt_means)``.
    """
    emission, _, mask = jax.vmap(lambda o: _masked_emission(ssm, o))(observed)
    n = initial_mean.shape[0]
    i_kh = jnp.eye(n, dtype=transitions.dtype)[None] - _bmm(cp.gain, emission)
    # m_k = (I - K H~)(Phi m_{k-1} + c_k) + K o(y_k - d)
    F = _bmm(i_kh, transitions)
    g = _bmv(i_kh, state_offset) + _bmv(cp.gain, mask * (y - ssm.emission_offset[None]))
    # Fold the initial mean into the first map, so the scan yields the means directly.
    g = g.at[0].add(F[0] @ initial_mean)
    F = F.at[0].set(jnp.zeros_like(F[0]))
    if jax.default_backend() == "cpu":
        # Measured: on CPU a sequential scan over the affine maps is ~4x cheaper
        # (value and gradient) than the associative scan, whose span only pays on
        # accelerators (a two-level blocked scan was no faster either).  Same maps.
        def compose(mean, inputs):
            F_k, g_k = inputs
            mean = F_k @ mean + g_k
            return mean, mean

        _, filt_means = lax.scan(compose, jnp.zeros_like(initial_mean), (F, g))
    else:
        _, filt_means = lax.associative_scan(_affine_combine, (F, g))
    prev_means = jnp.concatenate([initial_mean[None], filt_means[:-1]])
    pred_means = _bmv(transitions, prev_means) + state_offset
    innovation = mask * (y - pred_means @ ssm.emission.T - ssm.emission_offset[None])
    whitened = _bmv(cp.inv_chol_innovation, innovation)
    log_lik_steps = -0.5 * (
        jnp.sum(mask, axis=-1) * _LOG_2PI + cp.log_det_innovation + jnp.sum(whitened**2, axis=-1)
    )
    return log_lik_steps, pred_means, filt_means


def _steady_mean_pass(ssm: LGSSM, transition, state_offset, steady_update: _CovariancePass,
                      y, observed_k, initial_mean):
    """Per-step log-likelihood terms of a tail at the steady state.

    Every step has the same transition, gain and innovation covariance
    (``steady_update``, one step's), so the per-step matrix products of
    :func:`_mean_pass` become products of each step's vectors with constant
    matrices, and only the mean recursion itself stays sequential.
    """
    emission, _, mask = _masked_emission(ssm, observed_k)
    gain = steady_update.gain
    i_kh = jnp.eye(initial_mean.shape[0], dtype=transition.dtype) - gain @ emission
    F = i_kh @ transition
    g = state_offset @ i_kh.T + (mask[None] * (y - ssm.emission_offset[None])) @ gain.T

    def compose(mean, g_k):
        mean = F @ mean + g_k
        return mean, mean

    _, filt_means = lax.scan(compose, initial_mean, g)
    prev_means = jnp.concatenate([initial_mean[None], filt_means[:-1]])
    pred_means = prev_means @ transition.T + state_offset
    innovation = mask[None] * (y - pred_means @ ssm.emission.T - ssm.emission_offset[None])
    whitened = innovation @ steady_update.inv_chol_innovation.T
    return -0.5 * (jnp.sum(mask) * _LOG_2PI + steady_update.log_det_innovation
                   + jnp.sum(whitened**2, axis=-1))


def _fast_to_steady_state(ssm: LGSSM, y, observed, steady_from: int, stop: bool | str,
                          head: int):
    """Log-likelihood terms of :func:`_fast` where the tail may stop at the steady state.

    The same filter as :func:`_covariance_pass` then :func:`_mean_pass`, but the
    switch of :func:`_tail_pass` decides the rest of the tail's means and terms
    too, not only its covariances: at the steady state (the branch a fit's draws
    take) they run on constant matrices (:func:`_steady_mean_pass`) instead of
    per-step copies of them.  Same values; measured in RESULTS.md ("The steady
    tail's means on constant matrices").
    """
    transitions, process_covs = _step_matrices(ssm)
    num_timesteps = transitions.shape[0]
    split = steady_from + head
    first_pred, out_varying = _varying_head(ssm, transitions, process_covs, observed,
                                            steady_from)
    transition, process_cov = transitions[-1], process_covs[-1]
    observed_k = observed[-1]
    steady = _steady_state_predicted_cov(ssm, transition, process_cov)
    s_inv_h, F = _closed_loop(transition, steady, ssm.emission, ssm.emission_cov)
    update = jax.vmap(lambda pred_cov: _covariance_update(ssm, pred_cov, observed_k))
    head_covs, converged = _head_to_check(ssm, steady, s_inv_h, F, first_pred, head, stop)
    last = head_covs[-1]
    cp_head = update(head_covs)
    if out_varying is not None:
        cp_head = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), out_varying, cp_head)
    terms_head, _, filt_head = _mean_pass(
        ssm, transitions[:split], ssm.state_offset[:split], cp_head, y[:split],
        observed[:split], ssm.initial_mean)
    offsets, y_rest = ssm.state_offset[split:], y[split:]
    rest = num_timesteps - split

    entering_mean = filt_head[-1]
    one = jax.tree.map(lambda a: a[0], update(steady[None]))
    steady_terms = _steady_mean_pass(ssm, transition, offsets, one, y_rest, observed_k,
                                     entering_mean)

    def steady_kept(entering_mean, last):
        return jnp.zeros_like(steady_terms)  # not used: ``where`` keeps the steady terms

    def continued(entering_mean, last):
        # the Riccati recursion itself from the last covariance of the head (this
        # branch rarely runs; see _tail_pass)
        cp = update(_riccati_steps(ssm, transition, process_cov, last, rest))
        return _mean_pass(ssm, transitions[split:], offsets, cp, y_rest, observed[split:],
                          entering_mean)[0]

    # The steady state's terms are computed outside the ``cond``, whose other branch
    # (rematerialised, as in _tail_pass) replaces them where the tail has not
    # converged: a ``cond`` around the steady pass itself cost about 20% of case
    # (ii)'s value and gradient (its residuals pass through the ``cond``).
    other = lax.cond(converged, steady_kept, jax.checkpoint(continued), entering_mean, last)
    terms_rest = jnp.where(converged, steady_terms, other)
    return jnp.concatenate([terms_head, terms_rest])


def _fast(ssm: LGSSM, y, observed, keep_moments: bool, steady_from: int | None,
          stop: bool | str = True, converged_after: int | None = None):
    head = _CONVERGED_AFTER if converged_after is None else converged_after
    # Series vmapped over a named axis (a fit's many dyad-sessions): their per-step
    # arrays are as many times larger, and running the steady tail on constant
    # matrices paid (case (ii), 40 series: 18-23% less per value and gradient).  A
    # single series gained nothing (case (i): 11% more, the fixed cost of a second
    # scan).  Measured on CPU only, where the tail's mean recursion is a sequential scan.
    if (not keep_moments and isinstance(stop, str) and steady_from is not None
            and jax.default_backend() == "cpu"
            and ssm.step_index.shape[0] - steady_from > head + _MIN_TAIL):
        return _fast_to_steady_state(ssm, y, observed, steady_from, stop, head)
    cp = _covariance_pass(ssm, observed, steady_from, stop, converged_after)
    transitions, _ = _step_matrices(ssm)
    log_lik_steps, pred_means, filt_means = _mean_pass(
        ssm, transitions, ssm.state_offset, cp, y, observed, ssm.initial_mean)
    if not keep_moments:
        return log_lik_steps
    return log_lik_steps, pred_means, cp.pred_cov, filt_means, cp.filt_cov


# ----------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------


def steady_from_hint(step_index, y) -> int | None:
    """The first step after which neither the step nor the missing pattern changes.

    Computed in numpy from concrete data (not inside ``jit``); pass the result as
    ``steady_from`` to :func:`log_likelihood` to let the ``fast`` method stop its
    covariance recursion at the steady state.  Returns ``None`` when the tail is
    not time-invariant and complete (the last step is missing, say).
    """
    import numpy as np

    step_index = np.asarray(step_index)
    y = np.asarray(y)
    if y.ndim != 2 or step_index.shape[0] != y.shape[0] or y.shape[0] == 0:
        return None
    complete = ~np.isnan(y).any(axis=1)
    varying = (step_index != step_index[-1]) | ~complete
    if varying[-1]:
        return None
    idx = np.nonzero(varying)[0]
    return int(idx[-1] + 1) if idx.size else 0


def log_likelihood(
    ssm: LGSSM,
    y: Float[Array, "t p"],
    method: str = "auto",
    steady_from: int | None = None,
    observed=None,
) -> Float[Array, ""]:
    """Exact Gaussian log-likelihood ``log p(y_1, ..., y_T)``.

    Parameters
    ----------
    ssm
        The discrete state space on ``y``'s time grid (``model.to_lgssm``).
    y
        Observations, NaN where missing (whole rows or single components).
    method
        ``"sequential"``, ``"parallel"``, ``"fast"`` or ``"auto"``.
    steady_from
        Optional static hint for ``"fast"``: from this step on the step length and
        the missing pattern no longer change (see :func:`steady_from_hint`).
        The result is exact either way; the hint only saves work.
    observed
        Optional boolean mask of observed values (default ``~isnan(y)``).  Pass it
        when many series share one missing pattern (complete data, say) and ``y``
        is batched with ``vmap`` while the mask is not: the covariance recursion,
        which depends on the mask but not on the data, is then computed once for
        the whole batch.  Values of ``y`` where the mask is False are ignored.

    Returns
    -------
    The log-likelihood, or ``-inf`` when a covariance is not positive definite
    (for instance a stationary initial state requested for unstable dynamics).
    """
    steps = log_likelihood_terms(ssm, y, method=method, steady_from=steady_from,
                                 observed=observed)
    return _guard(jnp.sum(steps))


def log_likelihood_terms(
    ssm: LGSSM,
    y: Float[Array, "t p"],
    method: str = "auto",
    steady_from: int | None = None,
    observed=None,
    *,
    stop_at_steady_state: bool | str = True,
    converged_after: int | None = None,
) -> Float[Array, " t"]:
    """Per-step terms ``log p(y_k | y_1, ..., y_{k-1})`` (0 where nothing is observed).

    Same arguments as :func:`log_likelihood`, whose value is their sum.  Use it for
    pointwise model comparison, or to drop trailing padding of a batch of ragged
    series: rows past a series' end, marked observed (with any finite value),
    keep the covariance recursion time-invariant there, and their terms are
    simply not summed.  Terms are NaN (not ``-inf``) where a covariance fails.

    ``stop_at_steady_state`` (``fast`` only): stop the closed-form tail once it
    has reached the steady state, a run-time switch (``lax.cond``).  Under
    ``vmap`` the switch becomes a select that computes both branches, so a
    caller that vmaps over series passes False: the same values, less compile
    and run time.  A caller that vmaps over series with an ``axis_name``, and is
    itself never vmapped, passes that name instead: the series then switch
    together once all of them have converged (a real branch again).

    ``converged_after``: where the switch checks for the steady state (steps into
    the time-invariant tail; default 128).  The closed form runs that far in any
    case, so a check at the earliest step where the steady state is reached saves
    closed-form work; a later convergence is still exact (the closed form then
    continues).  :func:`steps_to_steady_state` tells where it is reached.
    """
    stop = (stop_at_steady_state if isinstance(stop_at_steady_state, str)
            else bool(stop_at_steady_state))
    if converged_after is not None and (isinstance(converged_after, bool)
                                        or int(converged_after) != converged_after
                                        or converged_after < 1):
        raise ValueError(f"converged_after must be a whole number >= 1 or None; "
                         f"got {converged_after!r}.")
    return _terms(ssm, jnp.asarray(y), _mask_or_none(observed), _check_method(method),
                  _static_hint(steady_from), stop,
                  None if converged_after is None else int(converged_after))


def steps_to_steady_state(ssm: LGSSM, limit: int = 4096) -> int:
    """Steps until the covariance recursion of a time-invariant tail equals its steady
    state to rounding, by the ``fast`` filter's own test (:func:`_tail_pass`).

    The recursion starts from the initial covariance, predicted one step, with the
    model's last step (transition and process covariance) and every value observed;
    the steady state is where the same recursion stops changing.  Plain numpy, for
    concrete parameter values: a fit asks it at its start point where to check for
    the steady state (``converged_after`` of :func:`log_likelihood_terms`).  Returns
    ``limit + 1`` if the recursion has not converged within ``limit`` steps.
    """
    transitions, process_covs = _step_matrices(ssm)
    A = np.asarray(transitions[-1], dtype=float)
    Q = np.asarray(process_covs[-1], dtype=float)
    H = np.asarray(ssm.emission, dtype=float)
    R = np.asarray(ssm.emission_cov, dtype=float)

    def riccati(P):
        S = H @ P @ H.T + R
        gain = np.linalg.solve(S, H @ P).T
        out = A @ (P - gain @ H @ P) @ A.T + Q
        return 0.5 * (out + out.T)

    first = A @ np.asarray(ssm.initial_cov, dtype=float) @ A.T + Q
    preds = [0.5 * (first + first.T)]
    while len(preds) <= limit:
        nxt = riccati(preds[-1])
        if not np.all(np.isfinite(nxt)):
            return limit + 1
        if np.max(np.abs(nxt - preds[-1])) <= 4 * np.finfo(float).eps * np.max(np.abs(nxt)):
            break
        preds.append(nxt)
    else:
        return limit + 1
    steady = preds[-1]
    S = H @ steady @ H.T + R
    closed_loop = A - A @ steady @ H.T @ np.linalg.solve(S, H)
    power, amplification = np.eye(A.shape[0]), 1.0
    for _ in range(_CONVERGED_AFTER):
        amplification = max(amplification, float(np.sum(power**2)))
        power = closed_loop @ power
    tol = _CONVERGED_TOL * np.max(np.abs(steady))
    for k, pred in enumerate(preds):
        if np.max(np.abs(pred - steady)) * amplification <= tol:
            return k
    return len(preds)


def _static_hint(steady_from) -> int | None:
    return None if steady_from is None else int(steady_from)


def _mask_or_none(observed):
    return None if observed is None else jnp.asarray(observed)


# The public functions run as one compiled program per method and shapes, also when
# called eagerly: op by op, the parallel and fast methods dispatch (and compile) hundreds
# of small operations.  Inside a caller's jit or vmap the inner jit is simply inlined.
@functools.partial(jax.jit, static_argnames=("method", "steady_from", "stop", "converged_after"))
def _terms(ssm, y, observed, method, steady_from, stop, converged_after=None):
    y, observed = _prepare(ssm, y, observed)
    if method == "sequential":
        return _sequential(ssm, y, observed, keep_moments=False)
    if method == "parallel":
        return _parallel(ssm, y, observed, keep_moments=False)
    return _fast(ssm, y, observed, keep_moments=False, steady_from=steady_from, stop=stop,
                 converged_after=converged_after)


def kalman_filter(
    ssm: LGSSM,
    y: Float[Array, "t p"],
    method: str = "auto",
    steady_from: int | None = None,
    observed=None,
) -> FilterResult:
    """Filtered and one-step-predicted moments and the log-likelihood.

    See :func:`log_likelihood` for the arguments.
    """
    return _filter(ssm, jnp.asarray(y), _mask_or_none(observed), _check_method(method),
                   _static_hint(steady_from))


@functools.partial(jax.jit, static_argnames=("method", "steady_from"))
def _filter(ssm, y, observed, method, steady_from):
    y, observed = _prepare(ssm, y, observed)
    if method == "sequential":
        out = _sequential(ssm, y, observed, keep_moments=True)
    elif method == "parallel":
        out = _parallel(ssm, y, observed, keep_moments=True)
    else:
        out = _fast(ssm, y, observed, keep_moments=True, steady_from=steady_from)
    steps, pred_means, pred_covs, filt_means, filt_covs = out
    return FilterResult(_guard(jnp.sum(steps)), steps, pred_means, pred_covs, filt_means, filt_covs)


def kalman_smoother(
    ssm: LGSSM,
    y: Float[Array, "t p"],
    method: str = "auto",
) -> SmootherResult:
    """Rauch–Tung–Striebel smoother on top of :func:`kalman_filter`.

    The forward pass uses ``method``; the backward pass is the sequential RTS
    recursion ``G_k = P_k Phi_{k+1}^T (P^-_{k+1})^{-1}``.
    """
    return _smoother(ssm, jnp.asarray(y), _check_method(method))


@functools.partial(jax.jit, static_argnames=("method",))
def _smoother(ssm, y, method):
    filt = _filter(ssm, y, None, method, None)
    transitions, _ = _step_matrices(ssm)

    def step(carry, inputs):
        smooth_mean, smooth_cov = carry
        filt_mean, filt_cov, next_pred_mean, next_pred_cov, next_transition = inputs
        # G = P Phi^T (P^-)^{-1}, via a solve with the symmetric predicted covariance.
        gain = jnp.linalg.solve(next_pred_cov, next_transition @ filt_cov).T
        mean = filt_mean + gain @ (smooth_mean - next_pred_mean)
        cov = _sym(filt_cov + gain @ (smooth_cov - next_pred_cov) @ gain.T)
        return (mean, cov), (mean, cov)

    last = (filt.filtered_means[-1], filt.filtered_covs[-1])
    inputs = (
        filt.filtered_means[:-1],
        filt.filtered_covs[:-1],
        filt.predicted_means[1:],
        filt.predicted_covs[1:],
        transitions[1:],
    )
    _, (means, covs) = lax.scan(step, last, inputs, reverse=True)
    means = jnp.concatenate([means, last[0][None]])
    covs = jnp.concatenate([covs, last[1][None]])
    return SmootherResult(filt, means, covs)
