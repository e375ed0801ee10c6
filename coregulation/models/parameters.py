"""Constrained <-> unconstrained parameter vectors, priors and prior draws."""

from __future__ import annotations

import functools
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from coregulation.models._base import Model, Parameter, PriorScales


@functools.partial(jax.jit, static_argnums=2)
def _sample_priors(priors, key, n: int):
    """``n`` draws of each prior, in one compiled program.

    The distributions are arguments (numpyro distributions are pytrees), so every
    parameter space with priors of the same kinds and shapes shares the program;
    op by op, sampling compiles dozens of tiny programs (about 3 s per process).
    """
    keys = jax.random.split(key, len(priors))
    return [d.sample(k, (n,)) for d, k in zip(priors, keys)]


class ParameterSpace:
    """The free parameters of ``model`` under ``scales``, as one flat unconstrained vector.

    Each parameter is mapped to the real line by numpyro's ``biject_to`` of its
    support; the order is the parameter table's.  Used by the optimiser, the
    samplers and the robustness tests.
    """

    def __init__(self, model: Model, scales: PriorScales | None = None):
        self.model = model
        self.scales = scales or PriorScales()
        self.table: list[Parameter] = model.parameter_table(self.scales)
        sizes = [p.size for p in self.table]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
        self.size = int(self.offsets[-1])

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.table]

    def flat_names(self) -> list[str]:
        """One readable label per vector element, e.g. ``tau[client]``."""
        labels = []
        for p in self.table:
            if not p.shape:
                labels.append(p.name)
                continue
            coords = [self._coords(d) for d in p.dims]
            for idx in np.ndindex(*p.shape):
                labels.append(p.name + "[" + ",".join(c[i] for c, i in zip(coords, idx)) + "]")
        return labels

    def _coords(self, dim):
        m = self.model
        return {
            "role": list(m.roles),
            "input": list(m.inputs),
            "moderator": list(m.moderators),
            "state": list(m.state_names),
        }[dim]

    def _split(self, vector):
        return [
            vector[..., self.offsets[i] : self.offsets[i + 1]].reshape(vector.shape[:-1] + p.shape)
            for i, p in enumerate(self.table)
        ]

    def constrain(self, vector: Float[Array, " k"]) -> dict[str, Array]:
        """Unconstrained vector -> free parameters (by name)."""
        vector = jnp.asarray(vector, dtype=float)
        if vector.shape[-1] != self.size:
            raise ValueError(
                f"expected an unconstrained vector of length {self.size} "
                f"({', '.join(self.names)}); got shape {vector.shape}."
            )
        return {p.name: p.transform()(v) for p, v in zip(self.table, self._split(vector))}

    def unconstrain(self, params: Mapping[str, Array]) -> Array:
        """Free parameters (by name) -> unconstrained vector; checks names and supports."""
        missing = [p.name for p in self.table if p.name not in params]
        if missing:
            raise KeyError(f"missing parameter(s) {missing}; expected {self.names}.")
        parts = []
        for p in self.table:
            value = jnp.broadcast_to(jnp.asarray(params[p.name], dtype=float), p.shape)
            if not isinstance(value, jax.core.Tracer) and not np.all(p.constraint.check(value)):
                raise ValueError(
                    f"{p.name}={np.asarray(value)} is outside its support {p.constraint} "
                    f"under these prior scales ({self.scales}); pass scales= that admit it "
                    "or a value inside."
                )
            parts.append(p.transform().inv(value).reshape(-1))
        return jnp.concatenate(parts) if parts else jnp.zeros(0)

    def log_abs_det_jacobian(self, vector) -> Array:
        total = 0.0
        for p, v in zip(self.table, self._split(jnp.asarray(vector, dtype=float))):
            t = p.transform()
            total = total + jnp.sum(t.log_abs_det_jacobian(v, t(v)))
        return total

    def log_prior(self, params: Mapping[str, Array]) -> Array:
        """Sum of the parameters' prior log-densities (constrained scale)."""
        return sum(jnp.sum(p.prior.log_prob(jnp.asarray(params[p.name]))) for p in self.table)

    def log_prior_unconstrained(self, vector) -> Array:
        """Prior log-density of the unconstrained vector (includes the Jacobian)."""
        return self.log_prior(self.constrain(vector)) + self.log_abs_det_jacobian(vector)

    def sample_prior(
        self, key, num_draws: int | None = None, *, stable: bool = True, max_rounds: int = 100
    ) -> dict[str, Array]:
        """Draws from the priors: one set, or ``num_draws`` stacked along axis 0.

        The joint prior is truncated to the stable region (METHODS.md §3.2: reject
        unstable draws): with ``stable=True`` (default) unstable draws are replaced
        by fresh ones, round by round, until every draw is stable; each kept draw is
        then an exact draw from the truncated prior.  ``stable=False`` gives the
        untruncated product of the marginal priors (robustness tests use it to
        reach unstable systems on purpose).
        """
        single = num_draws is None
        n = 1 if single else int(num_draws)
        if n < 0:
            raise ValueError(f"num_draws must be a non-negative integer; got {num_draws!r}.")
        key, sub = jax.random.split(key)
        draws = self._sample_untruncated(sub, n)
        if stable and n:
            is_stable = self._batched_is_stable()
            bad = ~np.asarray(is_stable(draws))
            rounds = 0
            while bad.any():
                rounds += 1
                if rounds > max_rounds:
                    raise ValueError(
                        f"{int(bad.sum())} of {n} prior draws still unstable after "
                        f"{max_rounds} rounds of rejection: the priors put almost no mass on "
                        "stable systems. Narrow the coupling priors (priors=) or pass "
                        "stable=False."
                    )
                key, sub = jax.random.split(key)
                fresh = self._sample_untruncated(sub, n)
                replace = jnp.asarray(bad)
                draws = {
                    k: jnp.where(replace.reshape((-1,) + (1,) * (v.ndim - 1)), fresh[k], v)
                    for k, v in draws.items()
                }
                bad = bad & ~np.asarray(is_stable(fresh))
        if single:
            draws = {k: v[0] for k, v in draws.items()}
        return draws

    def _batched_is_stable(self):
        """``jit(vmap(model.is_stable))``, built once per space (SBC draws one truth per
        replicate: a fresh ``jit`` per call would recompile every time)."""
        if getattr(self, "_is_stable_jit", None) is None:
            self._is_stable_jit = jax.jit(jax.vmap(self.model.is_stable))
        return self._is_stable_jit

    def _sample_untruncated(self, key, n: int) -> dict[str, Array]:
        draws = _sample_priors([p.prior for p in self.table], key, n)
        return dict(zip([p.name for p in self.table], draws))

    def stable_fraction(self, key, num_draws: int = 4000) -> float:
        """Share of untruncated prior draws that are stable (the rejection acceptance rate)."""
        draws = self._sample_untruncated(key, num_draws)
        return float(np.mean(np.asarray(self._batched_is_stable()(draws))))

    def prior_median(self) -> dict[str, Array]:
        """A central point of the prior: each marginal's median.

        In closed form where every prior is one of the package's kinds (normal,
        log-normal, beta, truncated normal, and these under exp/affine/sigmoid maps)
        and the point is stable; otherwise the medians of 4001 draws of the prior
        truncated to stability (fixed key).
        """
        exact = {p.name: _closed_form_median(p.prior) for p in self.table}
        if all(v is not None for v in exact.values()):
            point = {name: jnp.asarray(np.broadcast_to(v, p.shape), dtype=float)
                     for (name, v), p in zip(exact.items(), self.table)}
            if bool(self.model.is_stable(point)):
                return point
        draws = self.sample_prior(jax.random.key(0), 4001)
        return {name: jnp.asarray(np.median(np.asarray(v), axis=0)) for name, v in draws.items()}


def _closed_form_median(prior):
    """The median of a numpyro distribution of the kinds the models use (numpy), or
    ``None``: no numerical work, so no compilation (a fit's start needs it)."""
    import numpyro.distributions as dist
    import scipy.special
    import scipy.stats

    if isinstance(prior, dist.ExpandedDistribution):
        base = _closed_form_median(prior.base_dist)
        return None if base is None else np.broadcast_to(base, prior.batch_shape)
    if isinstance(prior, dist.Normal):
        return np.broadcast_to(np.asarray(prior.loc, dtype=float), prior.batch_shape)
    if isinstance(prior, dist.LogNormal):
        return np.broadcast_to(np.exp(np.asarray(prior.loc, dtype=float)), prior.batch_shape)
    if isinstance(prior, dist.Beta):
        return scipy.stats.beta(np.asarray(prior.concentration1),
                                np.asarray(prior.concentration0)).median()
    if (isinstance(prior, dist.TwoSidedTruncatedDistribution)
            and isinstance(prior.base_dist, dist.Normal)):
        loc, scale = np.asarray(prior.base_dist.loc), np.asarray(prior.base_dist.scale)
        low, high = (np.asarray(prior.low) - loc) / scale, (np.asarray(prior.high) - loc) / scale
        return scipy.stats.truncnorm(low, high, loc=loc, scale=scale).median()
    if isinstance(prior, dist.TransformedDistribution):
        value = _closed_form_median(prior.base_dist)
        for t in prior.transforms:  # monotone increasing maps carry the median over
            if value is None:
                return None
            if isinstance(t, dist.transforms.ExpTransform):
                value = np.exp(value)
            elif isinstance(t, dist.transforms.SigmoidTransform):
                value = scipy.special.expit(value)
            elif (isinstance(t, dist.transforms.AffineTransform)
                  and np.all(np.asarray(t.scale) > 0)):
                value = np.asarray(t.loc) + np.asarray(t.scale) * value
            else:
                return None
        return value
    return None
