"""Maximum-likelihood and MAP fits of one dyad-session (scipy L-BFGS-B on JAX gradients)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import scipy.optimize

from coregulation.inference.likelihood import SeriesLikelihood
from coregulation.models._base import Model, PriorScales

# Objective returned to the optimiser where the likelihood is -inf (unstable or
# invalid parameters): large enough to be rejected by the line search, finite so
# L-BFGS-B's arithmetic stays defined.
_INVALID_OBJECTIVE = 1e25


@dataclasses.dataclass
class MLEResult:
    """A point fit: estimates, standard errors from the Hessian, and diagnostics.

    ``cov_unconstrained`` is the inverse Hessian of the negative objective in the
    unconstrained space; ``se`` maps it to the constrained parameters by the delta
    method.  ``converged`` is False when the optimiser stopped without meeting its
    tolerance or the Hessian was not positive definite.
    """

    params: dict
    se: dict
    log_likelihood: float
    objective: float
    unconstrained: np.ndarray
    cov_unconstrained: np.ndarray
    converged: bool
    message: str
    num_iterations: int
    map: bool
    likelihood: SeriesLikelihood = dataclasses.field(repr=False)

    def table(self) -> pd.DataFrame:
        """One row per scalar parameter: estimate, standard error, 95% Wald interval."""
        rows = []
        space = self.likelihood.space
        labels = space.flat_names()
        est = np.concatenate([np.asarray(self.params[n]).reshape(-1) for n in space.names])
        se = np.concatenate([np.asarray(self.se[n]).reshape(-1) for n in space.names])
        for label, e, s in zip(labels, est, se):
            rows.append({"parameter": label, "estimate": e, "se": s,
                         "lower_95": e - 1.96 * s, "upper_95": e + 1.96 * s})
        return pd.DataFrame(rows)


# Central-difference step for the Hessian, relative to max(1, |x|): the gradient is
# exact, so the O(h^2) truncation error is ~1e-10 relative, well below what a
# standard error needs.
_HESSIAN_STEP = 1e-5


def _hessian_by_gradient_differences(value_and_grad, x: np.ndarray) -> np.ndarray:
    """Hessian from central differences of the exact (compiled) gradient.

    Reuses the compiled gradient: no second compilation, 2k gradient evaluations.
    """
    k = x.size
    hessian = np.empty((k, k))
    for i in range(k):
        h = _HESSIAN_STEP * max(1.0, abs(x[i]))
        up, down = x.copy(), x.copy()
        up[i] += h
        down[i] -= h
        hessian[:, i] = (
            np.asarray(value_and_grad(jnp.asarray(up))[1])
            - np.asarray(value_and_grad(jnp.asarray(down))[1])
        ) / (2 * h)
    return 0.5 * (hessian + hessian.T)


def fit_mle(
    model: Model,
    times,
    y,
    inputs=None,
    moderators=None,
    *,
    map: bool = False,
    init: dict | None = None,
    num_starts: int = 4,
    seed: int = 0,
    method: str = "auto",
    scales: PriorScales | None = None,
    max_iterations: int = 1000,
) -> MLEResult:
    """Fit ``model`` to one series by maximum likelihood (or MAP with ``map=True``).

    Starts from ``init`` (free parameters by name) if given, else from the prior
    median and ``num_starts - 1`` prior draws (seeded by ``seed``); the best
    optimum is kept.

    Examples
    --------
    >>> import jax
    >>> import numpy as np
    >>> import coregulation as cr
    >>> truth = dict(tau=np.array([5.0, 10.0]), therapist_to_client=0.5,
    ...              client_to_therapist=0.0, mu=np.zeros(2), latent_sd=np.ones(2),
    ...              shock_corr=0.0, me_sd=np.array([0.2, 0.2]))
    >>> sim = cr.simulate_series(cr.CTVAR(), truth, np.arange(1.0, 601.0), jax.random.key(0))
    >>> fit = cr.fit_mle(cr.CTVAR(), sim.times, sim.y)
    >>> fit.converged
    True
    >>> est, se = fit.params["therapist_to_client"], fit.se["therapist_to_client"]
    >>> bool(abs(est - 0.5) < 3 * se)  # the truth within three standard errors
    True
    """
    lik = SeriesLikelihood.build(model, times, y, inputs, moderators, method=method, scales=scales)
    space = lik.space

    def objective(vector):
        return -lik.log_density(vector, prior=map)

    value_and_grad = jax.jit(jax.value_and_grad(objective))

    def scipy_fun(x):
        value, grad = value_and_grad(jnp.asarray(x))
        value, grad = float(value), np.asarray(grad, dtype=float)
        if not np.isfinite(value) or not np.all(np.isfinite(grad)):
            return _INVALID_OBJECTIVE, np.zeros_like(x)
        return value, grad

    if init is not None:
        starts = [np.asarray(space.unconstrain(init))]
    else:
        starts = [np.asarray(space.unconstrain(space.prior_median()))]
        draws = space.sample_prior(jax.random.key(seed), max(num_starts - 1, 0))
        for i in range(max(num_starts - 1, 0)):
            draw = {k: v[i] for k, v in draws.items()}
            starts.append(np.asarray(space.unconstrain(draw)))

    best = None
    for x0 in starts:
        if not np.all(np.isfinite(x0)):
            continue
        res = scipy.optimize.minimize(
            scipy_fun, x0, jac=True, method="L-BFGS-B",
            # ftol is relative to |f| (~1e4 for long series): the default would stop
            # while well-identified parameters are still a few SEs from the optimum.
            options={"maxiter": max_iterations, "maxfun": 2 * max_iterations,
                     "ftol": 1e-15, "gtol": 1e-8},
        )
        if best is None or res.fun < best.fun:
            best = res
    if best is None or best.fun >= _INVALID_OBJECTIVE:
        raise RuntimeError(
            "no start gave a finite likelihood; pass init= with plausible values or check "
            "the data scale."
        )

    x = jnp.asarray(best.x)
    # The Hessian comes from differences of the same compiled gradient.  (The fast
    # method's closed-form tail and its steady-state switch are exact to rounding on
    # either side of the switch, so central differences do not see it.)
    hessian_grad = value_and_grad
    hessian = _hessian_by_gradient_differences(hessian_grad, np.asarray(best.x))
    # Newton polish: the objective is near-quadratic at the optimum; keep improving
    # steps (one Hessian for the steps, recomputed once at the end if x moved).
    moved = False
    for _ in range(3):
        value, grad = hessian_grad(x)
        try:
            step = np.linalg.solve(hessian, np.asarray(grad))
        except np.linalg.LinAlgError:
            break
        candidate = x - jnp.asarray(step)
        new_value = float(hessian_grad(candidate)[0])
        if not np.isfinite(new_value) or new_value > float(value):
            break
        x, moved = candidate, True
    if moved:
        hessian = _hessian_by_gradient_differences(hessian_grad, np.asarray(x))
    converged = bool(best.success) or bool(np.max(np.abs(np.asarray(hessian_grad(x)[1]))) < 1e-4)
    try:
        cov = np.linalg.inv(0.5 * (hessian + hessian.T))
        if not np.all(np.linalg.eigvalsh(cov) > 0):
            raise np.linalg.LinAlgError
    except np.linalg.LinAlgError:
        cov = np.full_like(hessian, np.nan)
        converged = False
    flat_constrain = lambda v: jnp.concatenate(  # noqa: E731
        [jnp.reshape(a, -1) for a in space.constrain(v).values()]
    )
    jac = np.asarray(jax.jacfwd(flat_constrain)(x))
    se_flat = np.sqrt(np.clip(np.einsum("ij,jk,ik->i", jac, cov, jac), 0, None))
    params = {k: np.asarray(v) for k, v in space.constrain(x).items()}
    se = {}
    for i, p in enumerate(space.table):
        se[p.name] = se_flat[space.offsets[i] : space.offsets[i + 1]].reshape(p.shape)
    loglik = float(lik.log_density(x, prior=False))
    return MLEResult(
        params=params, se=se, log_likelihood=loglik, objective=float(objective(x)),
        unconstrained=np.asarray(x), cov_unconstrained=cov, converged=converged,
        message=str(best.message), num_iterations=int(best.nit), map=map, likelihood=lik,
    )
