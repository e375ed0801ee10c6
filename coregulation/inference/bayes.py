"""Bayesian fits with the NumPyro back end: NUTS, SVI, Laplace and MAP (DESIGN.md §6)."""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Mapping, Sequence

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import numpyro
import scipy.optimize
import xarray as xr
from numpyro.infer import MCMC, NUTS, SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoNormal
from numpyro.infer.initialization import init_to_value
from numpyro.infer.util import ParamInfo

from coregulation import data as data_module
from coregulation.inference import kalman as kalman_module
from coregulation.inference.batch import SeriesBatch, build_batch_log_likelihood
from coregulation.inference.hierarchy import Design, Pooling, build_design, build_numpyro_model
from coregulation.models._base import Model
from coregulation.models.parameters import ParameterSpace

FIT_METHODS = ("nuts", "svi", "laplace", "map")
BACKENDS = ("numpyro", "pymc")
# NUTS gets a dense mass matrix by default up to this many unconstrained coordinates.
DENSE_MASS_MAX_DIM = 40
# draws per device and compiled call when mapping unconstrained draws back to every site
_POSTPROCESS_CHUNK = 64


@dataclasses.dataclass(frozen=True, eq=False)
class Problem:
    """Everything a back end needs: model, data batch, hierarchy and the likelihood."""

    model: Model
    data: xr.Dataset
    batch: SeriesBatch
    design: Design
    batch_log_likelihood: object
    kalman: str
    # The likelihood of the start search (MAP, chain starts, initial mass matrix): a
    # few hundred evaluations, so with ``kalman="auto"`` the filter that is cheaper
    # to compile for that many (``None``: ``batch_log_likelihood`` itself).
    start_log_likelihood: object = None

    def __post_init__(self):
        if self.start_log_likelihood is None:
            object.__setattr__(self, "start_log_likelihood", self.batch_log_likelihood)


def build_problem(
    model: Model,
    data,
    *,
    pooling: Pooling | None = None,
    priors: Mapping | None = None,
    standardise: bool = True,
    therapists: Sequence | None = None,
    session_covariates=None,
    kalman: str = "auto",
    evaluations: int | None = None,
    unbatched_sampler: bool = False,
) -> Problem:
    """Validate inputs and assemble the batch, the design and the batched likelihood.

    ``evaluations``: about how many times the fit will evaluate the likelihood and
    its gradient; with ``kalman="auto"`` it decides between the ``fast`` and the
    ``sequential`` filter (:func:`auto_kalman_method`).  ``unbatched_sampler``: the
    sampler evaluates the likelihood one point at a time (not under ``vmap``); for
    one series the likelihood is then built for such callers, and its ``fast``
    filter stops its covariance recursion at the steady state
    (:func:`~coregulation.inference.batch.build_batch_log_likelihood`).
    """
    if not isinstance(model, Model):
        raise TypeError(
            f"model must be a coregulation model (CTVAR(), CoupledOscillator(), VAR1()); "
            f"got {type(model).__name__}. Did you pass the class instead of an instance?"
            if isinstance(model, type) else
            f"model must be a coregulation model (CTVAR(), CoupledOscillator(), VAR1()); "
            f"got {type(model).__name__}."
        )
    if priors:
        model = dataclasses.replace(model, priors={**model.priors, **dict(priors)})
    if not isinstance(data, xr.Dataset):
        raise TypeError(
            "data must be a data-contract Dataset (coregulation.data.from_long / from_arrays "
            f"/ read_csv / load); got {type(data).__name__}."
        )
    data = data_module.validate(data)
    if len(model.inputs) and ("u" not in data or list(data["input"].values) != list(model.inputs)):
        have = list(data["input"].values) if "u" in data else []
        raise ValueError(f"the model declares inputs {list(model.inputs)}; the data has {have}.")
    if len(model.moderators) and (
        "z" not in data or list(data["moderator"].values) != list(model.moderators)
    ):
        have = list(data["moderator"].values) if "z" in data else []
        raise ValueError(
            f"the model declares moderators {list(model.moderators)}; the data has {have}."
        )
    if standardise and data.attrs.get("scaling") != "zscore_person_session":
        data = data_module.standardise(data)
    batch = SeriesBatch.from_dataset(data)
    if pooling is None:
        pooling = Pooling(levels=("dyad",) if np.unique(batch.dyad_index).size > 1 else ())
    design = build_design(model, batch, pooling, data, therapists, session_covariates)
    requested = kalman
    series_steps = batch.num_series * batch.y.shape[1]
    if kalman == "auto" and evaluations is not None:
        kalman = auto_kalman_method(evaluations, series_steps)
    ll = build_batch_log_likelihood(model, batch, method=kalman,
                                    unbatched_caller=unbatched_sampler)
    start_ll = None
    if requested == "auto" and evaluations is not None:
        start_kalman = auto_kalman_method(expected_evaluations("map", 1, 0, 1, 0), series_steps)
        if start_kalman != kalman:
            # measured on one oscillator dyad, T = 600: the MAP start on the sequential
            # filter compiles in 2.1 s against 5.6 s (and runs its ~200 calls in ~1 s)
            start_ll = build_batch_log_likelihood(model, batch, method=start_kalman)
    return Problem(model, data, batch, design, ll, kalman, start_ll)


# Measured (benchmarks/RESULTS.md, "Kalman method of a whole fit"): the batched ``fast``
# likelihood costs ~0.6 us per series-step for value and gradient against ~1.5 us for the
# sequential filter, but each compiled program that contains it takes 1.5-5 s longer to
# compile, and a fit compiles three to four.  Below this many evaluation-steps the
# sequential filter finishes first.
_FAST_FROM_EVALUATION_STEPS = 1e7


def auto_kalman_method(evaluations: int, series_steps: int) -> str:
    """``"fast"`` or ``"sequential"`` for a fit of ``evaluations`` likelihood-and-gradient
    calls on ``series_steps`` series-steps in all (series x padded length)."""
    return "fast" if evaluations * series_steps >= _FAST_FROM_EVALUATION_STEPS else "sequential"


def expected_evaluations(method: str, num_chains: int, num_warmup: int, num_samples: int,
                         svi_steps: int) -> int:
    """About how many likelihood-and-gradient calls a fit makes: NUTS ~30 leapfrog
    steps per iteration (tree depth 4-5: hierarchical posteriors, short warm-ups),
    SVI one per step, MAP and Laplace a few hundred (L-BFGS and the
    finite-difference Hessian)."""
    if method == "nuts":
        return 30 * num_chains * (num_warmup + num_samples)
    if method == "svi":
        return svi_steps
    return 500


def fit(
    model: Model,
    data,
    *,
    method: str = "nuts",
    backend: str = "numpyro",
    sampler: str | None = None,
    pooling: Pooling | None = None,
    priors: Mapping | None = None,
    num_chains: int = 4,
    num_warmup: int = 1000,
    num_samples: int = 1000,
    seed: int = 0,
    chain_method: str | None = None,
    target_accept: float = 0.8,
    max_tree_depth: int = 10,
    dense_mass: bool | None = None,
    svi_steps: int = 5000,
    num_predictive: int = 100,
    standardise: bool = True,
    therapists: Sequence | None = None,
    session_covariates=None,
    kalman: str = "auto",
    progress_bar: bool = True,
    warn: bool = True,
):
    """Fit ``model`` to a data-contract ``data`` set; returns a :class:`~coregulation.Fit`.

    Parameters
    ----------
    model
        ``CTVAR()``, ``CoupledOscillator()`` or ``VAR1()`` with its options.
    data
        The data contract (``coregulation.data``).  With ``standardise=True``
        (default) a z-scored copy is fitted (per person-session, METHODS.md §3.1),
        the user's dataset is untouched and the scale factors are kept in the result.
    method
        ``"nuts"`` (NumPyro NUTS, initialised from the MAP: the complete-pooling one,
        and for hierarchical fits with ``num_warmup >= 1000`` a search for the joint
        mode from there), ``"svi"`` (mean-field normal guide), ``"laplace"`` (normal
        approximation at the MAP, unconstrained scale) or ``"map"`` (posterior mode
        only).
    pooling
        :class:`Pooling`; default: all free parameters pooled across dyads when there
        are several dyads, one shared set of parameters otherwise.
    priors
        Replacement priors by parameter name (numpyro distributions with the same
        support); they also set the population-level priors of pooled parameters.
    num_chains, num_warmup, num_samples, seed, target_accept, max_tree_depth
        NUTS settings.  ``chain_method`` (``"parallel"``, ``"vectorized"`` or
        ``"sequential"``) defaults to ``"parallel"``, one chain per device, when JAX
        has a device per chain (importing coregulation asks for several CPU devices,
        see the package's docstring), and to ``"vectorized"`` (one vmapped program
        for all chains) otherwise.  Measured on one oscillator dyad, T = 600, 4 x
        (1000 + 1000) on 2 cores, the rest of the code the same: parallel 45.8 s
        against vectorised 75.7 s (benchmarks/RESULTS.md).
    dense_mass
        NumPyro NUTS with a dense (``True``) or diagonal (``False``) mass matrix.
        Default: dense for a model without pooled parameters (one dyad, or
        parameters shared by all series) of up to ``DENSE_MASS_MAX_DIM``
        unconstrained coordinates, diagonal otherwise.  Measured on one oscillator
        dyad (benchmarks/RESULTS.md): the same wall time and twice the bulk ESS,
        since periods, damping and couplings are correlated a posteriori.
    svi_steps
        Optimisation steps for ``"svi"``.
    num_predictive
        Posterior draws used for posterior-predictive simulation (0 to skip).
    therapists, session_covariates
        For the ``"therapist"`` pooling level (one label per dyad) and for
        session-level covariates (a table with ``dyad``, ``session`` and covariate
        columns).
    kalman
        Kalman method for the likelihood (``"auto"``, ``"fast"``, ``"sequential"``,
        ``"parallel"``).  ``"auto"`` weighs the expected number of likelihood
        evaluations of ``method`` against the data's size: ``"fast"`` for NUTS and
        long SVI runs, ``"sequential"`` (cheaper to compile) for MAP and Laplace fits
        of short series (:func:`auto_kalman_method`).
    backend, sampler
        ``"numpyro"`` (default) or ``"pymc"``: the same hierarchy as a PyMC model
        whose likelihood is a PyTensor Op around the jitted JAX log-likelihood
        (NUTS only).  ``sampler`` picks PyMC's sampler: ``"pymc"`` (default, PyMC's
        NUTS), ``"nutpie"`` or ``"numpyro"`` (NumPyro through PyMC).
    """
    if method not in FIT_METHODS:
        raise ValueError(f"method must be one of {FIT_METHODS}; got {method!r}.")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}; got {backend!r}.")
    if backend == "pymc":
        from coregulation.inference import pymc_backend

        if method != "nuts":
            raise ValueError(
                f"backend='pymc' samples with NUTS only; got method={method!r} (SVI, Laplace "
                "and MAP run on the NumPyro back end)."
            )
        sampler = "pymc" if sampler is None else sampler
        if sampler not in pymc_backend.SAMPLERS:
            raise ValueError(
                f"sampler must be one of {pymc_backend.SAMPLERS} for backend='pymc'; "
                f"got {sampler!r}."
            )
        if pooling is not None and pooling.correlated:
            raise ValueError(
                "Pooling(correlated=True) is not available with backend='pymc'; use "
                "backend='numpyro' or correlated=False."
            )
    elif sampler is not None:
        raise ValueError(
            f"sampler= chooses among PyMC's samplers and needs backend='pymc'; got "
            f"sampler={sampler!r} with backend={backend!r}."
        )
    for name, value, low in (("num_chains", num_chains, 1), ("num_warmup", num_warmup, 0),
                             ("num_samples", num_samples, 1), ("svi_steps", svi_steps, 1),
                             ("num_predictive", num_predictive, 0),
                             ("max_tree_depth", max_tree_depth, 1)):
        if not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}; got {value!r}.")
    if chain_method not in (None, "vectorized", "parallel", "sequential"):
        raise ValueError(
            "chain_method must be None (choose), 'vectorized', 'parallel' or 'sequential'; "
            f"got {chain_method!r}."
        )
    if not 0 < target_accept < 1:
        raise ValueError(f"target_accept must be in (0, 1); got {target_accept}.")
    if dense_mass is not None and not isinstance(dense_mass, bool):
        raise ValueError(f"dense_mass must be True, False or None; got {dense_mass!r}.")
    if dense_mass is not None and (backend != "numpyro" or method != "nuts"):
        raise ValueError(
            "dense_mass sets the mass matrix of NumPyro's NUTS; it needs method='nuts' and "
            f"backend='numpyro' (got method={method!r}, backend={backend!r})."
        )
    if backend == "numpyro" and method == "nuts" and chain_method is None:
        # one chain per device where there are enough (coregulation asks JAX for
        # several CPU devices on import): chains then run on the cores in parallel,
        # each through the unbatched likelihood, and none waits for another's tree
        chain_method = "vectorized" if jax.local_device_count() < num_chains else "parallel"
    # Thousands of gradients one point at a time: chains on their own devices,
    # PyMC's NUTS and nutpie (the MAP start shares their program).  Vectorised
    # chains (ours, or numpyro's through PyMC) vmap the likelihood; optimisers
    # alone make too few calls to repay the steady-state switch's compile time.
    unbatched_sampler = method == "nuts" and not (
        (backend == "numpyro" and chain_method == "vectorized")
        or (backend == "pymc" and sampler == "numpyro"))
    problem = build_problem(
        model, data, pooling=pooling, priors=priors, standardise=standardise,
        therapists=therapists, session_covariates=session_covariates, kalman=kalman,
        evaluations=expected_evaluations(method, num_chains, num_warmup, num_samples, svi_steps),
        unbatched_sampler=unbatched_sampler,
    )
    numpyro_model = build_numpyro_model(problem.design, problem.batch_log_likelihood)
    key = jax.random.key(seed)
    key_init, key_run, key_pred = jax.random.split(key, 3)
    start = time.perf_counter()
    init_values, info, value_and_grad = _initialise(problem, numpyro_model)
    head = _steady_state_check(problem, init_values) if unbatched_sampler else None
    if head is not None:
        # the sampler's likelihood checks for the steady state where the start reaches it
        problem = dataclasses.replace(problem, batch_log_likelihood=build_batch_log_likelihood(
            problem.model, problem.batch, method="fast", unbatched_caller=True,
            converged_after=head))
        numpyro_model = build_numpyro_model(problem.design, problem.batch_log_likelihood)
        info = _with_model(info, numpyro_model)
    post_info = _postprocessing_info(problem, info)
    stats = {}
    if backend == "pymc":
        latent, stats = pymc_backend.sample(
            problem.design, problem.batch_log_likelihood, init_values, list(info.z),
            sampler=sampler, num_chains=num_chains, num_warmup=num_warmup,
            num_samples=num_samples, seed=seed, target_accept=target_accept,
            max_tree_depth=max_tree_depth, progress_bar=progress_bar,
        )
        chains, draws = next(iter(latent.values())).shape[:2]
        flat = {k: jnp.asarray(v.reshape((chains * draws, *v.shape[2:]))) for k, v in latent.items()}
        unconstrained = jax.tree.map(lambda a: a.reshape((chains, draws, *a.shape[1:])),
                                     _unconstrain(info, flat))
        samples = _postprocess(post_info, unconstrained)
        settings = dict(backend="pymc", sampler=sampler, num_chains=num_chains,
                        num_warmup=num_warmup, num_samples=num_samples,
                        target_accept=target_accept, max_tree_depth=max_tree_depth)
    elif method == "nuts":
        start_point = nuts_start(problem.design, info, value_and_grad, key_init,
                                 num_chains=num_chains, num_warmup=num_warmup,
                                 dense_mass=dense_mass)
        info, dense_mass = start_point.info, start_point.dense_mass
        kernel = NUTS(potential_fn=info.potential_fn, target_accept_prob=target_accept,
                      max_tree_depth=max_tree_depth, dense_mass=dense_mass,
                      inverse_mass_matrix=start_point.inverse_mass_matrix)
        mcmc = MCMC(kernel, num_warmup=num_warmup, num_samples=num_samples,
                    num_chains=num_chains, chain_method=chain_method,
                    progress_bar=progress_bar)
        inits = start_point.inits
        if num_chains == 1:  # numpyro takes a single chain's values without a chain axis
            inits = jax.tree.map(lambda a: a[0], inits)
        # compiled on the other core while the sampler's program compiles
        post_program = _compile_in_background(
            _postprocess_lowered(post_info, num_chains * num_samples))
        mcmc.run(key_run, init_params=inits,
                 extra_fields=("diverging", "num_steps", "accept_prob", "energy",
                               "potential_energy"))
        unconstrained = mcmc.get_samples(group_by_chain=True)
        samples = _postprocess(post_info, unconstrained, post_program)
        extra = mcmc.get_extra_fields(group_by_chain=True)
        stats = {
            "diverging": np.asarray(extra["diverging"]),
            "n_steps": np.asarray(extra["num_steps"]),
            "tree_depth": np.floor(np.log2(np.asarray(extra["num_steps"]) + 1)).astype(int),
            "acceptance_rate": np.asarray(extra["accept_prob"]),
            "energy": np.asarray(extra["energy"]),
            "lp": -np.asarray(extra["potential_energy"]),
        }
        settings = dict(num_chains=num_chains, num_warmup=num_warmup, num_samples=num_samples,
                        chain_method=chain_method, target_accept=target_accept,
                        max_tree_depth=max_tree_depth, dense_mass=dense_mass)
    elif method == "svi":
        # The guide is set up on the likelihood-free model: the same latent sites and
        # supports, without numpyro running the Kalman likelihood eagerly (op by op,
        # with its gradient) to initialise the guide and to constrain its draws.
        priors_only = build_numpyro_model(problem.design, problem.batch_log_likelihood,
                                          likelihood=False)
        guide = AutoNormal(priors_only, init_loc_fn=init_to_value(values=init_values))
        svi = SVI(numpyro_model, guide, numpyro.optim.Adam(0.01), Trace_ELBO())
        result = svi.run(key_run, svi_steps, progress_bar=progress_bar)
        keys = jax.random.split(key_pred, num_samples)
        draws = jax.vmap(lambda k: guide.sample_posterior(k, result.params))(keys)
        latent = {k: v for k, v in draws.items() if k in info.z}
        samples = _postprocess(post_info,
                               jax.tree.map(lambda a: a[None], _unconstrain(info, latent)))
        stats = {"elbo_loss": np.asarray(result.losses)}
        settings = dict(svi_steps=svi_steps, num_samples=num_samples)
    else:
        mode, hessian = _find_mode(info, hessian=method == "laplace",
                                   value_and_grad=value_and_grad)
        if method == "map":
            flat = mode[None]
            settings = {}
        else:
            cov = _inverse_psd(hessian)
            flat = np.random.default_rng(seed).multivariate_normal(
                mode, cov, size=num_samples, method="cholesky"
            )
            settings = dict(num_samples=num_samples)
        _, unflatten = jax.flatten_util.ravel_pytree(info.z)
        samples = _postprocess(
            post_info, jax.tree.map(lambda a: a[None], jax.vmap(unflatten)(jnp.asarray(flat)))
        )
    elapsed = time.perf_counter() - start
    from coregulation.inference.results import Fit

    result = Fit.from_samples(
        problem, samples, stats, method=method, settings=settings, seed=seed,
        elapsed=elapsed, key=key_pred, num_predictive=num_predictive, warn=warn,
    )
    result.fit_options = dict(
        method=method, backend=backend, sampler=sampler, pooling=problem.design.pooling,
        num_chains=num_chains,
        num_warmup=num_warmup, num_samples=num_samples, seed=seed, chain_method=chain_method,
        target_accept=target_accept, max_tree_depth=max_tree_depth, svi_steps=svi_steps,
        therapists=therapists, session_covariates=session_covariates, kalman=kalman,
    )
    return result


# ----------------------------------------------------------------------------------
# initialisation and modes
# ----------------------------------------------------------------------------------


def map_initial_values(problem: Problem) -> dict:
    """Population values at the complete-pooling MAP; level scales small, effects 0.

    Starting every chain at the mode of the pooled model (then jittered) keeps
    warm-up out of the far tails, where stationary covariances and
    discretisations are poorly conditioned.
    """
    numpyro_model = build_numpyro_model(problem.design, problem.batch_log_likelihood)
    return _initialise(problem, numpyro_model)[0]


def _hierarchy_start(problem: Problem, population: Mapping) -> dict:
    """Start values of every latent site: ``population`` for the population values,
    level scales 0.1, and every unit at the population value (standardised and
    centred effects and covariate slopes 0; left to numpyro's default they would start
    at random values in (-2, 2), far into the tails of a level whose scale starts at 0.1)."""
    return hierarchy_start_values(problem.design, population)


def hierarchy_start_values(design: Design, population: Mapping) -> dict:
    """:func:`_hierarchy_start` for a design (no data needed: only the sites' shapes)."""
    values = {k: np.asarray(v) for k, v in population.items()}
    for p in design.table:
        if p.name not in design.pooled:
            continue
        for level in design.levels:
            values[f"{p.name}_sd_{level}"] = np.full(p.shape, 0.1)
    priors_only = build_numpyro_model(design, None, likelihood=False)

    def sample_sites():
        trace = numpyro.handlers.trace(numpyro.handlers.seed(priors_only, 0)).get_trace()
        return {name: site["value"] for name, site in trace.items() if site["type"] == "sample"}

    # only the sites' shapes are needed: trace abstractly, nothing is drawn or compiled
    for name, shape in jax.eval_shape(sample_sites).items():
        if name in values:
            continue
        if name == "dyad_corr_chol":
            values[name] = np.eye(shape.shape[-1])
        else:
            values[name] = np.zeros(shape.shape)
    return values


def _initialise(problem: Problem, numpyro_model):
    """Start values (constrained, by site), the model info at them and the compiled
    ``value_and_grad`` of the potential on the flat unconstrained vector (with
    ``problem.start_log_likelihood``: the same values as ``info.potential_fn``, the
    sampler's, possibly by another Kalman method).

    The population values are the complete-pooling MAP (L-BFGS from the prior
    medians); the hierarchy's sites stay at :func:`_hierarchy_start`.  Every unit then
    carries the population value, so the potential restricted to the population
    coordinates is the complete-pooling posterior up to a constant: the optimiser
    runs on the same compiled program that NUTS (start checks, mass matrix) and
    Laplace/MAP (mode, Hessian) use, instead of compiling a likelihood of its own.
    """
    space = ParameterSpace(problem.model, problem.batch.scales)
    values = _hierarchy_start(problem, space.prior_median())
    info = _model_info(problem, numpyro_model, values)
    start_info = info
    if problem.start_log_likelihood is not problem.batch_log_likelihood:
        start_model = build_numpyro_model(problem.design, problem.start_log_likelihood)
        start_info = dataclasses.replace(info, potential_fn=functools.partial(_potential,
                                                                              start_model))
    base, unravel, value_and_grad = _flat_value_and_grad(start_info)
    base = np.asarray(base, dtype=float)
    positions = unravel(jnp.arange(base.size, dtype=float))  # each site's flat indices
    population = np.concatenate([np.ravel(positions[name]).astype(int)
                                 for name in space.names])

    def fun(x):
        full = base.copy()
        full[population] = x
        v, g = value_and_grad(jnp.asarray(full))
        v = float(v)
        if not np.isfinite(v):
            return 1e300, np.zeros_like(x)
        return v, np.asarray(g)[population]

    start = base[population]
    result = scipy.optimize.minimize(fun, start, jac=True, method="L-BFGS-B",
                                     options={"maxiter": 500})
    best = result.x if np.isfinite(result.fun) and result.fun < 1e299 else start
    full = base.copy()
    full[population] = best
    z = unravel(jnp.asarray(full))
    for p in space.table:
        values[p.name] = np.asarray(p.transform()(z[p.name]))
    return values, dataclasses.replace(info, z=z), value_and_grad


# L-BFGS iterations of the joint start search (:func:`_joint_start`).  Case (ii) of
# benchmarks/fit_speed.py (40 dyads, 462 coordinates): the potential falls from 22340
# to 21912 in 80 iterations and to 21903 at convergence (462 iterations, 25 s on the
# start's sequential filter); NUTS warm-up from there took 12-17% fewer leapfrog steps
# (benchmarks/RESULTS.md).
_JOINT_START_ITERATIONS = 100
# ... and only for warm-ups of at least this many iterations: in 1000-iteration
# warm-ups (case (ii), 12 chains) it saved 12-17% of the slowest chain's warm-up steps
# and every chain ended on a step size like those from the old start; in 200-iteration
# warm-ups (case (ii) and the demo, 24 chains each way) it saved early steps too, but
# 6 chains against 2 ended on clearly smaller step sizes (1.5-4 times the other
# chains' sampling steps).  Lengths in between were not measured.
_JOINT_START_MIN_WARMUP = 1000


def _scipy_objective(value_and_grad):
    """The flat potential's compiled ``value_and_grad`` as a scipy objective (float,
    float array); a non-finite value reads as 1e300 with a zero gradient, so L-BFGS
    backs off instead of stopping."""
    def fun(x):
        v, g = value_and_grad(jnp.asarray(x))
        v = float(v)
        return (v, np.asarray(g, dtype=float)) if np.isfinite(v) else (1e300, np.zeros_like(x))

    return fun


def _units_start_at_population(design) -> bool:
    """Whether the design has unit sites (dyad, session or therapist effects) that
    :func:`_initialise` leaves at the population value, non-centred."""
    return bool(design.levels) and bool(design.pooled) and not design.pooling.centred


def _joint_start(info: ModelInfo, value_and_grad,
                 iterations: int = _JOINT_START_ITERATIONS) -> ModelInfo:
    """``info`` with every coordinate, the units' included, moved towards the joint mode.

    :func:`_initialise` fits the population values with every unit at them and the
    level scales at 0.1.  NUTS started there spends its first warm-up window carrying
    each unit to where its series put it, with a mass matrix that knows nothing of the
    level scales (no curvature along a scale while every effect is 0).  Here a bounded
    L-BFGS run moves all unconstrained coordinates at once.  With non-centred effects
    the joint mode exists: the standardised effects' N(0, 1) prior and the log scale's
    Jacobian keep the scales off zero (centred levels have no joint mode, their
    density grows without bound as a scale shrinks: not called for them).  The run is
    cut at ``iterations``: the start only has to be near, not exact.  ``info`` comes
    back unchanged if the search does not lower the potential.
    """
    x0, unravel = jax.flatten_util.ravel_pytree(info.z)
    x0 = np.asarray(x0, dtype=float)
    fun = _scipy_objective(value_and_grad)
    start = fun(x0)[0]
    result = scipy.optimize.minimize(fun, x0, jac=True, method="L-BFGS-B",
                                     options={"maxiter": iterations})
    if not (np.isfinite(result.fun) and result.fun < start):
        return info
    return dataclasses.replace(info, z=unravel(jnp.asarray(result.x)))


@dataclasses.dataclass(frozen=True, eq=False)
class NutsStart:
    """Where :func:`fit`'s NUTS chains start: ``info`` (its ``z`` moved by the joint
    start search where that runs), the initial inverse mass matrix (a matrix when
    ``dense_mass``, else its diagonal) and the chains' starts as numpyro's
    ``ParamInfo`` (chain, ...)."""

    info: ModelInfo
    inverse_mass_matrix: jax.Array
    dense_mass: bool
    inits: ParamInfo


def nuts_start(design: Design, info: ModelInfo, value_and_grad, key, num_chains: int,
               num_warmup: int, dense_mass: bool | None = None) -> NutsStart:
    """The start of :func:`fit`'s NUTS chains from its MAP start (:func:`_initialise`).

    For a hierarchy of non-centred units with a warm-up of at least
    ``_JOINT_START_MIN_WARMUP`` iterations, first the joint start search
    (:func:`_joint_start`); then the diagonal inverse mass from the curvature there
    (:func:`initial_inverse_mass`) and ``num_chains`` jittered starts drawn with
    ``key``.  ``dense_mass=None`` picks the metric: dense for a model without pooled
    parameters of up to ``DENSE_MASS_MAX_DIM`` coordinates, diagonal otherwise.
    benchmarks/fit_speed.py gives another likelihood of the same model this start.
    """
    if _units_start_at_population(design) and num_warmup >= _JOINT_START_MIN_WARMUP:
        info = _joint_start(info, value_and_grad)
    inverse_mass = jnp.asarray(initial_inverse_mass(info, value_and_grad=value_and_grad))
    if dense_mass is None:
        # measured gain on single-level models; a hierarchy's funnel is not helped
        # by a dense metric, and short warm-ups estimate it poorly
        dense_mass = not design.pooled and inverse_mass.shape[0] <= DENSE_MASS_MAX_DIM
    inits = _chain_starts(info, _jitter(key, info.z, num_chains), value_and_grad)
    return NutsStart(info=info,
                     inverse_mass_matrix=jnp.diag(inverse_mass) if dense_mass else inverse_mass,
                     dense_mass=bool(dense_mass), inits=inits)


def _jitter(key, z: dict, num_chains: int) -> dict:
    """``num_chains`` copies of unconstrained values ``z``, each perturbed by N(0, 0.1^2).

    Drawn with numpy from a generator seeded by ``key``'s bits: a handful of normals,
    for which a compiled JAX program cost about a second of XLA compile per fit.
    """
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel())
    leaves, treedef = jax.tree.flatten(z)
    out = [
        jnp.asarray(np.asarray(leaf)[None]
                    + 0.1 * rng.standard_normal((num_chains, *np.shape(leaf))))
        for leaf in leaves
    ]
    return jax.tree.unflatten(treedef, out)


@dataclasses.dataclass(frozen=True, eq=False)
class ModelInfo:
    """Unconstrained initial values ``z``, the potential and the map back to all sites."""

    z: dict
    potential_fn: object
    postprocess_fn: object
    unconstrain_fn: object


def _potential(numpyro_model, params):
    from numpyro.infer.util import potential_energy

    return potential_energy(numpyro_model, (), {}, params)


# Where the sampler's fast filter checks for the steady state (steps into the
# time-invariant tail): twice the steps the start point needs, as a power of two, at
# least this many.  Measured on case (ii) of benchmarks/fit_speed.py (40 CT-VAR
# series, T = 300; the start reaches the steady state in 12 steps), the two builds
# timed in alternating rounds (benchmarks/hierarchy_likelihood.py): value and gradient
# 3.55-3.87 ms with the check at 32 steps against 4.68-4.95 ms at 128.
_STEADY_CHECK_MIN = 32


def _steady_state_check(problem: Problem, values: Mapping) -> int | None:
    """``converged_after`` for the sampler's likelihood, or None for the default.

    The population values at the start (every unit carries them) give one state
    space, on the first series' grid; :func:`~coregulation.inference.kalman.steps_to_steady_state`
    counts the steps its covariance recursion needs.  Twice that (room for units and
    draws away from the start), rounded up to a power of two, between
    ``_STEADY_CHECK_MIN`` and the default.  Where a draw converges later, the filter
    simply continues in closed form: only the cost changes, never the values.
    """
    if problem.kalman not in ("fast", "auto") or problem.batch.steady_from is None:
        return None
    table = problem.model.parameter_table(problem.batch.scales)
    if any(p.name not in values or np.shape(values[p.name]) != tuple(p.shape) for p in table):
        return None  # population values that are not one unit's (moderated parameters)
    params = {p.name: jnp.asarray(values[p.name], dtype=float) for p in table}
    ssm = problem.model.to_lgssm(params, problem.batch.grid(0))
    steps = kalman_module.steps_to_steady_state(ssm, limit=kalman_module._CONVERGED_AFTER)
    head = max(_STEADY_CHECK_MIN, 1 << max(2 * steps - 1, 1).bit_length())
    return head if head < kalman_module._CONVERGED_AFTER else None


def _with_model(info: ModelInfo, numpyro_model) -> ModelInfo:
    """``info`` with the potential and the post-processing of another numpyro model
    (the same sites, another likelihood)."""
    from numpyro.infer.util import constrain_fn

    return dataclasses.replace(
        info,
        # jitted: numpyro's NUTS traces the potential's gradient twice (the chain's
        # initial state and the tree's leapfrog); a jitted function's trace and its
        # derivatives are cached, so the likelihood is traced once, not twice
        potential_fn=jax.jit(functools.partial(_potential, numpyro_model)),
        postprocess_fn=lambda params: constrain_fn(numpyro_model, (), {}, params,
                                                   return_deterministic=True),
    )


def _postprocessing_info(problem: Problem, info: ModelInfo) -> ModelInfo:
    """``info`` whose post-processing (every deterministic, each series' log-likelihood)
    runs on the sequential filter: draws are post-processed under ``vmap``, where the
    ``fast`` filter's steady-state switch would compute both of its branches.  Same
    values to rounding (the filters are compared in tests/test_kalman.py).  Measured
    (RESULTS.md): the program traces and compiles about twice as fast in cases (i)
    and (ii); it runs faster in case (ii) (40 series) and slower in case (i)."""
    sequential = build_batch_log_likelihood(problem.model, problem.batch, method="sequential")
    return _with_model(info, build_numpyro_model(problem.design, sequential))


def _model_info(problem, numpyro_model, init_values) -> ModelInfo:
    """Sites and transforms from a cheap trace of the model without its likelihood.

    ``init_values`` holds a value of every latent site (:func:`_hierarchy_start`).
    numpyro's ``initialize_model`` would run the model and the gradient of its
    potential eagerly, op by op; the latent sites do not depend on the data, so
    their unconstrained values come from the likelihood-free model's transforms,
    and the potential is only ever traced under ``jit``.
    """
    from numpyro.infer.util import unconstrain_fn

    priors_only = build_numpyro_model(problem.design, problem.batch_log_likelihood,
                                      likelihood=False)
    z = unconstrain_fn(priors_only, (), {},
                       {k: jnp.asarray(v, dtype=float) for k, v in init_values.items()})
    info = ModelInfo(z=z, potential_fn=None, postprocess_fn=None,
                     unconstrain_fn=lambda values: unconstrain_fn(priors_only, (), {}, values))
    return _with_model(info, numpyro_model)


def _flat_value_and_grad(info: ModelInfo):
    """``jit(value_and_grad)`` of the potential on the flat unconstrained vector, and
    the flattening of ``info.z``: one compiled program for the start checks and the
    curvature (compiling the Kalman likelihood costs seconds per program)."""
    flat, unravel = jax.flatten_util.ravel_pytree(info.z)
    return flat, unravel, jax.jit(jax.value_and_grad(lambda x: info.potential_fn(unravel(x))))


def _chain_starts(info: ModelInfo, inits: dict, value_and_grad) -> ParamInfo:
    """Chain starts (chain, ...) as numpyro's ``ParamInfo``: values, potential energy and
    its gradient, each chain evaluated once by the compiled flat ``value_and_grad`` (left
    to numpyro, they would be evaluated op by op under an eager ``vmap``, which compiles
    the likelihood twice more).  A jittered start whose potential is not finite is
    replaced by the unjittered one."""
    num_chains = jnp.shape(jax.tree.leaves(inits)[0])[0]
    centre, unravel = jax.flatten_util.ravel_pytree(info.z)
    values, energies, grads = [], [], []
    for c in range(num_chains):
        start = jax.tree.map(lambda a, c=c: a[c], inits)
        energy, grad = value_and_grad(jax.flatten_util.ravel_pytree(start)[0])
        if not np.isfinite(float(energy)):
            start = info.z
            energy, grad = value_and_grad(centre)
            if not np.isfinite(float(energy)):
                raise FloatingPointError(
                    "the log-density is not finite at the initial values from the MAP fit; "
                    "check the data for extreme values or trends, or pass priors= that fit "
                    "the data's scale."
                )
        values.append(start)
        energies.append(energy)
        grads.append(unravel(grad))

    def stack(parts):
        return jax.tree.map(lambda *a: jnp.stack([jnp.asarray(x) for x in a]), *parts)

    return ParamInfo(stack(values), jnp.stack(energies), stack(grads))


def initial_inverse_mass(info: ModelInfo, ceiling: float = 1.0, step: float = 1e-4,
                         value_and_grad=None) -> np.ndarray:
    """Diagonal inverse mass matrix from the curvature of the potential at the start.

    NUTS adapts the mass matrix only after its first warm-up window; with the
    identity until then, the step size must suit the best-identified parameter
    (population values informed by every series, posterior SD ~0.01) while the
    standardised dyad effects have SD ~1, and trajectories hit the maximum tree
    depth.  ``1 / H_ii`` at the MAP start (capped at ``ceiling``, the prior scale
    of the standardised effects; ``ceiling`` where the curvature is not positive)
    gives the sampler the right scales from the first iteration; adaptation
    refines it.  ``H_ii`` comes from central differences of the gradient, far
    cheaper to compile than a forward-over-reverse Hessian: two gradient calls per
    group of coordinates without cross-curvature (:func:`_separable_groups`).
    """
    flat, unravel = jax.flatten_util.ravel_pytree(info.z)
    if value_and_grad is None:
        value_and_grad = _flat_value_and_grad(info)[2]

    def grad(x):
        return value_and_grad(x)[1]

    curvature = _fd_hessian_diagonal(grad, np.asarray(flat, dtype=float),
                                     _separable_groups(info.z, unravel), step)
    good = np.isfinite(curvature) & (curvature > 0)
    inverse = np.where(good, 1.0 / np.where(good, curvature, 1.0), ceiling)
    return np.clip(inverse, 1e-8, ceiling)


def _separable_groups(z: dict, unravel) -> list[np.ndarray]:
    """Flat coordinates of ``z`` in groups whose Hessian block is diagonal.

    A level's effects (``{name}_z_{level}``, ``{name}_effect_{level}``, ``dyad_z``)
    carry one row per unit (dyad, session, therapist).  Two units of one level never
    share a series, and their priors are independent given the population sites,
    so the same coordinate of different units has no cross-curvature: those
    coordinates form one group.  Every other coordinate is a group of its own.
    """
    from coregulation.inference.hierarchy import LEVELS

    positions = unravel(jnp.arange(sum(np.size(v) for v in jax.tree.leaves(z)), dtype=float))
    groups = []
    for name, index in positions.items():
        index = np.asarray(index, dtype=int)
        units = name == "dyad_z" or any(name.endswith((f"_z_{level}", f"_effect_{level}"))
                                        for level in LEVELS)
        if units and index.ndim >= 1 and index.shape[0] > 1:
            groups.extend(index.reshape(index.shape[0], -1).T)  # a column: every unit
        else:
            groups.extend(index.reshape(-1, 1))
    return groups


def _fd_hessian_diagonal(grad, x: np.ndarray, groups, step: float = 1e-4) -> np.ndarray:
    """Diagonal of the Hessian by central differences of an exact gradient, the
    coordinates of each group (:func:`_separable_groups`) moved together.

    Within a group the Hessian is diagonal, so each moved coordinate's gradient
    change is its own curvature times its own step: 2 gradient calls per group
    instead of per coordinate (case (ii): 33 groups for 462 coordinates).
    """
    x = np.asarray(x, dtype=float)
    diagonal = np.empty(x.size)
    for index in groups:
        h = step * np.maximum(1.0, np.abs(x[index]))
        up, down = x.copy(), x.copy()
        up[index] += h
        down[index] -= h
        diagonal[index] = (np.asarray(grad(up))[index] - np.asarray(grad(down))[index]) / (2 * h)
    return diagonal


def _fd_hessian(grad, x: np.ndarray, step: float = 1e-5) -> np.ndarray:
    """Hessian by central differences of an exact (jitted) gradient, symmetrised.

    2n gradient calls on an already compiled gradient: for the few dozen to few
    hundred coordinates of these models far cheaper than compiling a
    forward-over-reverse Hessian of a Kalman filter, and accurate to ~step^2.
    """
    x = np.asarray(x, dtype=float)
    rows = np.empty((x.size, x.size))
    for i in range(x.size):
        h = step * max(1.0, abs(x[i]))
        up, down = x.copy(), x.copy()
        up[i] += h
        down[i] -= h
        rows[i] = (np.asarray(grad(up)) - np.asarray(grad(down))) / (2 * h)
    return 0.5 * (rows + rows.T)


def _unconstrain(info: ModelInfo, latent: dict) -> dict:
    """Constrained draws (draw, ...) -> unconstrained (draw, ...)."""
    return jax.vmap(info.unconstrain_fn)(latent)


def _postprocess_layout(total: int):
    """Draws per compiled call and their sharding over the local devices.

    Each device takes up to ``_POSTPROCESS_CHUNK`` draws of a call: the chunk's
    draws are split over the devices (the CPU devices that parallel chains run on,
    one per core or more), so the post-processing runs on every core.  Measured on
    case (i), 4000 draws: 2.47 s on one device, 1.32 s on two (RESULTS.md).
    """
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    devices = jax.local_devices()
    per_device = min(_POSTPROCESS_CHUNK, -(-total // len(devices)))
    sharding = NamedSharding(Mesh(np.array(devices), ("draws",)), PartitionSpec("draws"))
    return per_device * len(devices), sharding


def _postprocess_lowered(info: ModelInfo, total: int):
    """The post-processing of a chunk of draws (``total`` draws in all), traced and
    lowered, ready for XLA to compile."""
    chunk, sharding = _postprocess_layout(total)
    shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct((chunk, *jnp.shape(a)), jnp.result_type(a),
                                                         sharding=sharding), info.z)
    return jax.jit(jax.vmap(info.postprocess_fn)).lower(shapes)


def _compile_in_background(lowered):
    """XLA-compile a lowered program on a worker thread; returns a future.

    XLA compiles on one core: while the sampler's program compiles, the other core
    can compile the next one.  Only the compile runs there: tracing stays on the
    caller's thread, since numpyro's effect handlers live on one global stack that
    two threads tracing models at once would share.  ``result()`` re-raises any
    error of the compile.
    """
    import concurrent.futures

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    future = pool.submit(lowered.compile)
    pool.shutdown(wait=False)
    return future


def _postprocess(info: ModelInfo, unconstrained: dict, program=None) -> dict:
    """Unconstrained draws (chain, draw, ...) -> every site incl. deterministics (numpy).

    ``program``: the compiled :func:`_postprocess_lowered` (or a future of it), if the
    caller compiled it ahead of time."""
    leaves = jax.tree.leaves(unconstrained)
    chains, draws = leaves[0].shape[:2]
    total = chains * draws
    # on the host first: parallel chains leave the draws spread over devices, and
    # slicing chunks out of such arrays gathers across devices every time
    flat = jax.tree.map(lambda a: np.asarray(a).reshape((total, *a.shape[2:])), unconstrained)
    # Fixed chunks of draws through one compiled vmap, looped in Python; the last chunk
    # is padded with copies of the last draw, so every chunk has the same shape.
    chunk, sharding = _postprocess_layout(total)
    if program is not None and hasattr(program, "result"):
        program = program.result()
    run = _postprocess_lowered(info, total).compile() if program is None else program
    pieces = []
    for start in range(0, total, chunk):
        index = np.minimum(np.arange(start, start + chunk), total - 1)
        keep = min(chunk, total - start)
        out = run(jax.device_put(jax.tree.map(lambda a, index=index: a[index], flat), sharding))
        pieces.append(jax.tree.map(lambda a, keep=keep: np.asarray(a)[:keep], out))
    out = jax.tree.map(lambda *a: np.concatenate(a), *pieces)
    return {k: np.asarray(v).reshape((chains, draws, *np.shape(v)[1:])) for k, v in out.items()}


def _find_mode(info: ModelInfo, hessian: bool, value_and_grad=None):
    """Posterior mode on the unconstrained scale (L-BFGS) and optionally the Hessian
    there, from ``info.z``; ``value_and_grad`` is :func:`_flat_value_and_grad`'s."""
    x0 = jax.flatten_util.ravel_pytree(info.z)[0]
    potential = _flat_value_and_grad(info)[2] if value_and_grad is None else value_and_grad
    result = scipy.optimize.minimize(_scipy_objective(potential), np.asarray(x0, dtype=float),
                                     jac=True, method="L-BFGS-B",
                                     options={"maxiter": 5000, "ftol": 1e-12})
    mode = result.x
    if not hessian:
        return mode, None
    return mode, _fd_hessian(lambda x: potential(jnp.asarray(x))[1], mode)


def _inverse_psd(hessian):
    h = 0.5 * (hessian + hessian.T)
    vals, vecs = np.linalg.eigh(h)
    if np.any(vals <= 0):
        raise FloatingPointError(
            "the Hessian at the posterior mode is not positive definite "
            f"(smallest eigenvalue {vals.min():.3g}); the Laplace approximation does not exist "
            "here. Use method='nuts' or method='svi'."
        )
    return (vecs / vals) @ vecs.T
