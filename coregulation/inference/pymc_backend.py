"""The PyMC back end: the same hierarchy as a PyMC model, the likelihood as a JAX Op.

The priors, the pooling structure and the parameter names are those of the NumPyro
model (:func:`coregulation.inference.hierarchy.build_numpyro_model`), written with
PyMC distributions; the batched Kalman log-likelihood enters as one PyTensor ``Op``
whose ``perform`` calls the jitted JAX value and gradient, and which is registered
with PyTensor's JAX linker so that samplers compiling the model to JAX (NumPyro
through PyMC, nutpie's JAX backend) call the JAX function directly.

Samplers: ``"pymc"`` (PyMC's NUTS on its C backend), ``"nutpie"`` (nutpie, JAX
backend) and ``"numpyro"`` (``pm.sample(nuts_sampler="numpyro")``).  The draws come
back under the NumPyro model's site names, so the fit object, the derived quantities
and the checks are shared with the NumPyro back end.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from numpyro.distributions import constraints

from coregulation.inference.hierarchy import Design

SAMPLERS = ("pymc", "nutpie", "numpyro")
_op_ids = itertools.count()


def _import_pymc():
    try:
        import pymc as pm
        import pytensor.tensor as pt
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "backend='pymc' needs PyMC: pip install 'coregulation[pymc]' "
            f"(import failed: {err})."
        ) from err
    return pm, pt


# ----------------------------------------------------------------------------------
# the likelihood Op
# ----------------------------------------------------------------------------------


def _likelihood_op_class():
    """Build (once) the Op class; PyTensor is imported only when the back end is used."""
    global _LIKELIHOOD_OP
    if _LIKELIHOOD_OP is not None:
        return _LIKELIHOOD_OP
    import pytensor.tensor as pt
    from pytensor.graph.basic import Apply
    from pytensor.graph.op import Op
    from pytensor.link.jax.dispatch import jax_funcify

    class BatchLogLikelihood(Op):
        """Summed batch log-likelihood and its gradient in one JAX call.

        Outputs: the value, then one gradient per input.  ``grad`` reuses the
        gradient outputs, so PyTensor's merge pass evaluates the JAX function once
        per log-density evaluation.
        """

        __props__ = ("ident",)

        def __init__(self, value_and_grad, jax_version, ident):
            self.value_and_grad = value_and_grad
            self.jax_version = jax_version
            self.ident = ident

        def make_node(self, *inputs):
            inputs = [pt.as_tensor_variable(x).astype("float64") for x in inputs]
            outputs = [pt.dscalar()] + [x.type() for x in inputs]
            return Apply(self, inputs, outputs)

        def perform(self, node, inputs, outputs):
            result = self.value_and_grad(*inputs)
            for out, value in zip(outputs, result):
                out[0] = np.asarray(value, dtype=np.float64)

        def grad(self, inputs, output_grads):
            gradients = self(*inputs)[1:]
            return [output_grads[0] * g for g in gradients]

    @jax_funcify.register(BatchLogLikelihood)
    def _jax_batch_log_likelihood(op, **kwargs):
        return op.jax_version

    _LIKELIHOOD_OP = BatchLogLikelihood
    return BatchLogLikelihood


_LIKELIHOOD_OP = None


def likelihood_op(design: Design, batch_log_likelihood):
    """An Op of the series-level parameters (table order, each ``(series, *shape)``)."""
    names = [p.name for p in design.table]

    def total(*arrays):
        return jnp.sum(batch_log_likelihood(dict(zip(names, arrays))))

    grad = jax.grad(total, argnums=tuple(range(len(names))))

    def outputs(*arrays):
        value = total(*arrays)
        value = jnp.where(jnp.isnan(value), -jnp.inf, value)
        # outside the support (value -inf) the gradient is irrelevant; keep it finite
        grads = tuple(jnp.where(jnp.isfinite(g), g, 0.0) for g in grad(*arrays))
        return value, grads

    @jax.jit
    def value_and_grad(*arrays):
        value, grads = outputs(*arrays)
        return (value, *grads)

    def jax_version(*arrays):
        # Inside a sampler compiled to JAX the gradient comes from JAX's own autodiff
        # of the value; the gradient outputs are cut from differentiation (else JAX
        # would differentiate the gradient computation too) and, unused, removed by XLA.
        value, grads = outputs(*arrays)
        return (value, *jax.lax.stop_gradient(grads))

    return _likelihood_op_class()(value_and_grad, jax_version, next(_op_ids))


# ----------------------------------------------------------------------------------
# priors and transforms
# ----------------------------------------------------------------------------------


def _unwrap(prior):
    while isinstance(prior, (dist.ExpandedDistribution, dist.Independent)):
        prior = prior.base_dist
    return prior


def pymc_prior(name: str, prior, shape: tuple[int, ...]):
    """A PyMC variable ``name`` (inside a model context) with the numpyro ``prior``.

    Supports the families of the default priors and the common overrides: Normal,
    LogNormal, HalfNormal, Beta, Gamma, Uniform, StudentT, TruncatedNormal, and
    affine or exponential transforms of them (the transformed value is a
    Deterministic called ``name``, its base ``name__base``).  Anything else gets a
    ValueError naming the parameter.
    """
    pm, pt = _import_pymc()
    base = _unwrap(prior)
    kind = type(base).__name__
    arr = np.asarray

    if isinstance(base, dist.Normal):
        return pm.Normal(name, mu=arr(base.loc), sigma=arr(base.scale), shape=shape)
    if isinstance(base, dist.LogNormal):
        return pm.LogNormal(name, mu=arr(base.loc), sigma=arr(base.scale), shape=shape)
    if isinstance(base, dist.HalfNormal):
        return pm.HalfNormal(name, sigma=arr(base.scale), shape=shape)
    if isinstance(base, dist.Beta):
        return pm.Beta(name, alpha=arr(base.concentration1), beta=arr(base.concentration0),
                       shape=shape)
    if isinstance(base, dist.Gamma):
        return pm.Gamma(name, alpha=arr(base.concentration), beta=arr(base.rate), shape=shape)
    if isinstance(base, dist.Uniform):
        return pm.Uniform(name, lower=arr(base.low), upper=arr(base.high), shape=shape)
    if isinstance(base, dist.StudentT):
        return pm.StudentT(name, nu=arr(base.df), mu=arr(base.loc), sigma=arr(base.scale),
                           shape=shape)
    if isinstance(base, dist.TransformedDistribution):
        inner = pymc_prior(f"{name}__base", base.base_dist, shape)
        value = inner
        for transform in base.transforms:
            if isinstance(transform, dist.transforms.AffineTransform):
                value = arr(transform.loc) + arr(transform.scale) * value
            elif isinstance(transform, dist.transforms.ExpTransform):
                value = pt.exp(value)
            else:
                raise ValueError(
                    f"prior of {name!r}: the PyMC back end handles affine and exp transforms "
                    f"of a base distribution; got {type(transform).__name__}."
                )
        return pm.Deterministic(name, value)
    if kind in ("TwoSidedTruncatedDistribution", "LeftTruncatedDistribution",
                "RightTruncatedDistribution") and isinstance(base.base_dist, dist.Normal):
        low = arr(getattr(base, "low", -np.inf))
        high = arr(getattr(base, "high", np.inf))
        return pm.TruncatedNormal(name, mu=arr(base.base_dist.loc),
                                  sigma=arr(base.base_dist.scale), lower=low, upper=high,
                                  shape=shape)
    raise ValueError(
        f"prior of {name!r}: the PyMC back end has no translation of numpyro's {kind}; "
        "use Normal, LogNormal, HalfNormal, Beta, Gamma, Uniform, StudentT or "
        "TruncatedNormal (optionally through affine/exp transforms), or backend='numpyro'."
    )


def _bijection(constraint, value, inverse: bool = False):
    """PyTensor version of numpyro's ``biject_to(constraint)`` (or its inverse)."""
    _, pt = _import_pymc()
    if constraint is constraints.real:
        return value
    if constraint is constraints.positive:
        return pt.log(value) if inverse else pt.exp(value)
    if isinstance(constraint, constraints.interval):
        low, high = float(constraint.lower_bound), float(constraint.upper_bound)
        if not inverse:
            return low + (high - low) * pt.sigmoid(value)
        p = (value - low) / (high - low)
        return pt.log(p) - pt.log1p(-p)
    raise ValueError(f"no PyMC transform for the support {constraint}.")


# ----------------------------------------------------------------------------------
# the model
# ----------------------------------------------------------------------------------


def build_pymc_model(design: Design, batch_log_likelihood):
    """The hierarchy of ``design`` as a ``pm.Model`` with the batched likelihood Op.

    Site names, priors and the non-centred (or centred) level effects follow the
    NumPyro model exactly; correlated dyad effects (LKJ) are not available here.
    """
    pm, pt = _import_pymc()
    pooling = design.pooling
    if pooling.correlated:
        raise ValueError(
            "Pooling(correlated=True) is not available with backend='pymc'; use "
            "backend='numpyro' or correlated=False."
        )
    pooled = set(design.pooled)
    dyad_index = np.asarray(design.dyad_index)
    therapist_index = design.therapist_index
    num_dyads, num_series = design.num_dyads, design.num_series
    op = likelihood_op(design, batch_log_likelihood)
    with pm.Model() as model:
        series = []
        for p in design.table:
            event = len(p.shape)
            pop = pymc_prior(p.name, p.prior, p.shape)
            u_series = pt.broadcast_to(_bijection(p.constraint, pop, inverse=True),
                                       (num_series, *p.shape))
            if p.name in design.covariate_names:
                for c, cov in enumerate(design.covariate_names[p.name]):
                    beta = pm.Normal(f"{p.name}_on_{cov}", 0.0, 0.5, shape=p.shape)
                    column = design.covariate_values[p.name][:, c].reshape((-1,) + (1,) * event)
                    u_series = u_series + column * beta[None]
            if p.name in pooled:
                for level, n in (("dyad", num_dyads), ("therapist", len(design.therapists)),
                                 ("session", num_series)):
                    if level not in pooling.levels:
                        continue
                    sd = pm.HalfNormal(f"{p.name}_sd_{level}", pooling.scale_prior,
                                       shape=p.shape)
                    if pooling.centred and level in ("dyad", "session"):
                        effect = pm.Normal(f"{p.name}_effect_{level}", 0.0, sd[None],
                                           shape=(n, *p.shape))
                    else:
                        effect = sd[None] * pm.Normal(f"{p.name}_z_{level}", 0.0, 1.0,
                                                      shape=(n, *p.shape))
                    if level == "dyad":
                        effect = effect[dyad_index]
                    elif level == "therapist":
                        effect = effect[np.asarray(therapist_index)[dyad_index]]
                    u_series = u_series + effect
            series.append(_bijection(p.constraint, u_series))
        pm.Potential("likelihood", op(*series)[0])
    return model


def initial_point(design: Design, model, values: dict) -> dict:
    """Constrained start values by site name -> PyMC initvals.

    A parameter whose prior is a transformed distribution is a Deterministic of
    its ``__base`` variable; its start value is mapped back through the inverse
    transforms.
    """
    free = {v.name for v in model.free_RVs}
    priors = {p.name: p.prior for p in design.table}
    out = {}
    for name, value in values.items():
        value = np.asarray(value, dtype=float)
        prior, target = _unwrap(priors.get(name)), name
        while target not in free and isinstance(prior, dist.TransformedDistribution):
            for transform in reversed(prior.transforms):
                value = np.asarray(transform.inv(value))
            prior, target = _unwrap(prior.base_dist), f"{target}__base"
        if target in free:
            out[target] = value
    return out


def sample(
    design: Design,
    batch_log_likelihood,
    init_values: dict,
    latent_names,
    *,
    sampler: str,
    num_chains: int,
    num_warmup: int,
    num_samples: int,
    seed: int,
    target_accept: float,
    max_tree_depth: int,
    progress_bar: bool,
):
    """Run ``sampler`` on the PyMC model; returns (latent draws by site, sampler stats).

    Latent draws are constrained values with a (chain, draw) leading shape, named
    as in the NumPyro model, ready for :func:`coregulation.inference.bayes._postprocess`.
    """
    pm, _ = _import_pymc()
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS} for backend='pymc'; got {sampler!r}.")
    model = build_pymc_model(design, batch_log_likelihood)
    initvals = initial_point(design, model, init_values)
    if sampler == "pymc":
        with model:
            step = pm.NUTS(target_accept=target_accept, max_treedepth=max_tree_depth)
            idata = pm.sample(
                draws=num_samples, tune=num_warmup, chains=num_chains, cores=1, step=step,
                random_seed=seed, initvals=initvals, progressbar=progress_bar,
                compute_convergence_checks=False, return_inferencedata=True,
            )
        names = {"diverging": "diverging", "tree_depth": "tree_depth", "n_steps": "n_steps",
                 "acceptance_rate": "acceptance_rate", "energy": "energy", "lp": "lp"}
    elif sampler == "numpyro":
        with model:
            idata = pm.sample(
                draws=num_samples, tune=num_warmup, chains=num_chains, random_seed=seed,
                initvals=initvals, target_accept=target_accept, progressbar=progress_bar,
                nuts_sampler="numpyro", compute_convergence_checks=False,
                nuts_sampler_kwargs={"chain_method": "vectorized",
                                     "nuts_kwargs": {"max_tree_depth": max_tree_depth}},
            )
        names = {"diverging": "diverging", "tree_depth": "tree_depth", "n_steps": "n_steps",
                 "acceptance_rate": "acceptance_rate", "energy": "energy", "lp": "lp"}
    else:
        import nutpie

        compiled = nutpie.compile_pymc_model(model, backend="jax", gradient_backend="jax",
                                             initial_points=initvals)
        idata = nutpie.sample(compiled, draws=num_samples, tune=num_warmup, chains=num_chains,
                              seed=seed, progress_bar=progress_bar, save_warmup=False,
                              target_accept=target_accept, maxdepth=max_tree_depth)
        names = {"diverging": "diverging", "tree_depth": "depth", "n_steps": "n_steps",
                 "acceptance_rate": "mean_tree_accept", "energy": "energy", "lp": "logp"}
    post = idata.posterior
    missing = [n for n in latent_names if n not in post]
    if missing:  # pragma: no cover - a translation error, not a user error
        raise RuntimeError(f"PyMC posterior lacks the sites {missing}.")
    latent = {n: np.asarray(post[n].values, dtype=float) for n in latent_names}
    stats = {}
    for ours, theirs in names.items():
        if theirs in idata.sample_stats:
            stats[ours] = np.asarray(idata.sample_stats[theirs].values)
    return latent, stats
