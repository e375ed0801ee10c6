"""Bayesian layer: batched likelihood, hierarchy, fits, InferenceData, errors, CLI smoke."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import numpyro.distributions
import pytest
import scipy.optimize
import scipy.stats
from typer.testing import CliRunner

import coregulation as cr
from coregulation.inference.batch import SeriesBatch, build_batch_log_likelihood
from coregulation.inference.hierarchy import Pooling, build_design, build_numpyro_model
from coregulation.models.parameters import ParameterSpace
from tests.conftest import CTVAR_TRUTH, MODEL_CASES

# Batched and one-series likelihoods run the same float64 arithmetic in another order.
BATCH_RTOL = 1e-10


def _free(model, truth):
    return {k: jnp.asarray(v) for k, v in truth.items() if k in model.free_names()}


@pytest.fixture(scope="module")
def small_study():
    model = cr.CTVAR()
    ds, _ = cr.simulate_dyads(model, CTVAR_TRUTH, jax.random.key(11), num_dyads=3,
                              num_sessions=2, duration=120, sampling_interval=1.0,
                              missing_rate=0.05)
    return model, ds


@pytest.mark.parametrize("name", sorted(MODEL_CASES))
@pytest.mark.parametrize("method", ["fast", "sequential"])
def test_batch_matches_series_likelihood_ragged_and_missing(name, method):
    """Padded, pooled-step batch == each series on its own grid, with ragged lengths."""
    cls, truth = MODEL_CASES[name]
    model = cls()
    key = jax.random.key(3)
    series = []
    for k, n in enumerate((90, 130, 75)):
        times = np.arange(1.0, n + 1.0) * (5.0 if name == "var1" else 1.0)
        sim = cr.simulate_series(model, truth, times, jax.random.fold_in(key, k))
        y = np.array(sim.y)
        y[10 + k : 14 + k, 0] = np.nan  # partial
        y[40:44] = np.nan  # whole rows
        series.append((times, y, None, None))
    batch = SeriesBatch.from_series(series)
    assert batch.y.shape == (3, 130, 2)
    values = build_batch_log_likelihood(model, batch, method=method)(_free(model, truth))
    for k, (times, y, _, _) in enumerate(series):
        ref = cr.SeriesLikelihood.build(model, times, y, scales=batch.scales)
        np.testing.assert_allclose(values[k], ref.log_likelihood(_free(model, truth)),
                                   rtol=BATCH_RTOL)


def test_one_series_build_for_unbatched_callers_matches_the_batched_build():
    """What parallel chains evaluate (one series, no vmap, the fast tail stopping at the
    steady state) == the vmapped build (itself checked against the one-series filter
    above), value and gradient; missing values in the head; with the measurement error
    300x the tail is far from its steady state after the first block (the continued
    branch)."""
    model, truth = cr.CoupledOscillator(), MODEL_CASES["oscillator"][1]
    times = np.arange(1.0, 401.0)
    y = np.array(cr.simulate_series(model, truth, times, jax.random.key(8)).y)
    y[20:25, 1] = np.nan
    batch = SeriesBatch.from_series([(times, y, None, None)])
    batched = build_batch_log_likelihood(model, batch, method="fast")
    single = build_batch_log_likelihood(model, batch, method="fast", unbatched_caller=True)
    value_and_grad = jax.jit(jax.value_and_grad(lambda p: jnp.sum(single(p))))
    value_and_grad_b = jax.jit(jax.value_and_grad(lambda p: jnp.sum(batched(p))))
    assert jax.eval_shape(single, _free(model, truth)).shape == (1,)
    for scale in (1.0, 300.0):
        params = dict(_free(model, truth))
        params["me_sd"] = params["me_sd"] * scale
        value, grad = value_and_grad(params)
        value_b, grad_b = value_and_grad_b(params)
        np.testing.assert_allclose(value, value_b, rtol=BATCH_RTOL)
        for key in params:
            np.testing.assert_allclose(grad[key], grad_b[key], rtol=1e-8,
                                       atol=1e-8 * float(jnp.max(jnp.abs(grad_b[key]))))


def test_many_series_for_unbatched_callers_switch_together():
    """Many series for an unbatched caller (parallel chains of a hierarchical fit): the
    series are vmapped over a named axis and leave the covariance recursion together,
    once all have reached the steady state.  Same values and gradients as the plain
    vmapped build, with per-series parameters, when every series has converged and
    when one has not (its measurement error 300x: the continued branch for all).
    Their tails' means and terms then run on the steady state's constant matrices
    (``kalman._fast_to_steady_state``); a burst of missing values in one series puts
    the tail's start past the first steps."""
    model, truth = cr.CTVAR(), MODEL_CASES["ctvar"][1]
    times = np.arange(1.0, 401.0)
    series = [(times, np.array(cr.simulate_series(model, truth, times, jax.random.key(k)).y),
               None, None) for k in range(3)]
    series[0][1][30:34, 0] = np.nan
    batch = SeriesBatch.from_series(series)
    assert batch.steady_from == 34
    plain = build_batch_log_likelihood(model, batch, method="fast")
    unbatched = build_batch_log_likelihood(model, batch, method="fast", unbatched_caller=True)
    value_and_grad = jax.jit(jax.value_and_grad(lambda p: jnp.sum(unbatched(p))))
    value_and_grad_p = jax.jit(jax.value_and_grad(lambda p: jnp.sum(plain(p))))
    free = _free(model, truth)
    per = {k: jnp.broadcast_to(v, (3, *jnp.shape(v))) * (1.0 + 0.05 * jnp.arange(3.0)).reshape(
        (3,) + (1,) * jnp.ndim(v)) for k, v in free.items()}
    for scale in (1.0, 300.0):
        params = dict(per)
        params["me_sd"] = params["me_sd"].at[1].multiply(scale)
        np.testing.assert_allclose(unbatched(params), plain(params), rtol=BATCH_RTOL)
        value, grad = value_and_grad(params)
        value_p, grad_p = value_and_grad_p(params)
        np.testing.assert_allclose(value, value_p, rtol=BATCH_RTOL)
        for key in params:
            np.testing.assert_allclose(grad[key], grad_p[key], rtol=1e-8,
                                       atol=1e-8 * float(jnp.max(jnp.abs(grad_p[key]))))


def test_batch_per_series_parameters_and_errors(small_study):
    model, ds = small_study
    batch = SeriesBatch.from_dataset(ds)
    ll = build_batch_log_likelihood(model, batch)
    free = _free(model, CTVAR_TRUTH)
    shared = ll(free)
    per = {k: jnp.broadcast_to(v, (batch.num_series, *jnp.shape(v))) for k, v in free.items()}
    np.testing.assert_allclose(ll(per), shared, rtol=BATCH_RTOL)
    # changing one series' coupling changes that series only
    per["therapist_to_client"] = per["therapist_to_client"].at[2].set(-0.3)
    changed = np.asarray(ll(per)) != np.asarray(shared)
    assert changed.tolist() == [False, False, True, False, False, False]
    with pytest.raises(ValueError, match="therapist_to_client must have shape"):
        ll({**free, "therapist_to_client": jnp.zeros(4)})
    with pytest.raises(KeyError, match="missing parameter"):
        ll({k: v for k, v in free.items() if k != "tau"})


def test_parallel_filter_vmapped_over_draws_with_per_series_parameters(small_study):
    """Draws x series x steps: the pointwise log-likelihood of a fit's draws.

    XLA's CPU compiler (jaxlib 0.9.2) rejected this program when the parallel filter's
    elements used ``@`` ("Expected instruction to have shape ..."); a Laplace fit with
    kalman="parallel" failed in its post-processing.
    """
    model, ds = small_study
    batch = SeriesBatch.from_dataset(ds)
    free = _free(model, CTVAR_TRUTH)
    shift = jnp.outer(jnp.linspace(-0.2, 0.2, 3), jnp.arange(1.0, batch.num_series + 1))
    draws = {k: jnp.broadcast_to(v, (3, batch.num_series, *jnp.shape(v))) for k, v in free.items()}
    draws["therapist_to_client"] = draws["therapist_to_client"] + shift
    parallel = jax.jit(jax.vmap(build_batch_log_likelihood(model, batch, method="parallel")))
    sequential = build_batch_log_likelihood(model, batch, method="sequential")
    expected = [sequential(jax.tree.map(lambda a, d=d: a[d], draws)) for d in range(3)]
    np.testing.assert_allclose(parallel(draws), np.stack(expected), rtol=1e-8)


@pytest.mark.parametrize("name", sorted(MODEL_CASES))
def test_prior_draws_are_the_prior_truncated_to_stability(name):
    """METHODS.md §3.2-3.3: no unstable prior draws; the truncation is exact rejection.

    The untruncated product of the default marginals is unstable in ~29% of draws for
    the oscillator (measured), ~1% for VAR1; the truncated sampler returns only stable
    draws, distributed as untruncated draws conditioned on stability (two-sample KS
    against the stable subset of an independent untruncated sample).
    """
    model = MODEL_CASES[name][0]()
    space = ParameterSpace(model, cr.PriorScales(1.0, 600.0))
    accept = space.stable_fraction(jax.random.key(2), 8000)
    draws = space.sample_prior(jax.random.key(5), 4000)
    assert bool(jnp.all(jax.vmap(model.is_stable)(draws)))
    if accept > 0.99:
        return
    reference = space.sample_prior(jax.random.key(6), 12000, stable=False)
    keep = np.asarray(jax.vmap(model.is_stable)(reference))
    assert 0.3 < keep.mean() == pytest.approx(accept, abs=0.03)
    for coupling in model.coupling_names:
        p_value = scipy.stats.ks_2samp(np.asarray(draws[coupling]),
                                       np.asarray(reference[coupling])[keep]).pvalue
        assert p_value > 1e-3, (coupling, p_value)
    # and the test has power: where truncation bites, untruncated draws differ
    assert accept > 0.9 or min(
        scipy.stats.ks_2samp(np.asarray(draws[c]), np.asarray(reference[c])).pvalue
        for c in model.coupling_names
    ) < 1e-3


@pytest.mark.parametrize("name", sorted(MODEL_CASES))
def test_prior_median_is_each_marginals_median(name):
    """The closed-form start point equals the medians of many untruncated prior draws
    (within 5 standard errors of a sample median); a prior without a closed form
    falls back to the medians of the stable prior draws."""
    model = MODEL_CASES[name][0]()
    space = ParameterSpace(model, cr.PriorScales(1.0, 600.0))
    median = space.prior_median()
    n = 20001
    draws = space.sample_prior(jax.random.key(12), n, stable=False)
    for key, value in median.items():
        sample = np.asarray(draws[key])
        se = 1.2533 * sample.std(axis=0) / np.sqrt(n)
        assert np.all(np.abs(np.asarray(value) - np.median(sample, axis=0)) < 5 * se), key
    gamma = cr.CTVAR(priors={"tau": numpyro.distributions.Gamma(4.0, 0.25).expand((2,))})
    fallback = ParameterSpace(gamma, cr.PriorScales(1.0, 600.0))
    stable = fallback.sample_prior(jax.random.key(0), 4001)
    for key, value in fallback.prior_median().items():
        np.testing.assert_allclose(value, np.median(np.asarray(stable[key]), axis=0))


def test_prior_that_is_almost_never_stable_is_refused():
    model = cr.CTVAR(priors={"therapist_to_client": numpyro.distributions.Normal(30.0, 0.1),
                             "client_to_therapist": numpyro.distributions.Normal(30.0, 0.1)})
    space = ParameterSpace(model, cr.PriorScales(1.0, 600.0))
    with pytest.raises(ValueError, match="still unstable after 5 rounds"):
        space.sample_prior(jax.random.key(0), 10, max_rounds=5)


def test_hierarchy_sites_and_pooled_values(small_study):
    model, ds = small_study
    batch = SeriesBatch.from_dataset(cr.data.standardise(ds))
    pooling = Pooling(levels=("dyad", "session"), parameters=("therapist_to_client", "tau"))
    design = build_design(model, batch, pooling, ds)
    numpyro_model = build_numpyro_model(design, build_batch_log_likelihood(model, batch))
    from numpyro import handlers

    trace = handlers.trace(handlers.seed(numpyro_model, 0)).get_trace()
    assert trace["therapist_to_client_z_dyad"]["value"].shape == (3,)
    assert trace["tau_z_session"]["value"].shape == (6, 2)
    assert "client_to_therapist_sd_dyad" not in trace
    series = trace["series__therapist_to_client"]["value"]
    pop = trace["therapist_to_client"]["value"]
    sd_d = trace["therapist_to_client_sd_dyad"]["value"]
    sd_s = trace["therapist_to_client_sd_session"]["value"]
    z_d = trace["therapist_to_client_z_dyad"]["value"]
    z_s = trace["therapist_to_client_z_session"]["value"]
    # the coupling lives on (-1, 1)?  no: it is real-valued; identity transform
    expected = pop + sd_d * z_d[batch.dyad_index] + sd_s * z_s
    np.testing.assert_allclose(series, expected, rtol=1e-12)
    # the unpooled parameter is shared by all series
    shared = trace["series__client_to_therapist"]["value"]
    np.testing.assert_allclose(shared, trace["client_to_therapist"]["value"])


@pytest.mark.parametrize("pooling, therapists", [
    (Pooling(levels=("dyad", "session")), None),
    (Pooling(levels=("dyad", "therapist")), ["a", "b", "a"]),
    (Pooling(levels=("dyad",), centred=True), None),
    (Pooling(levels=("dyad",), correlated=True), None),
])
def test_grouped_curvature_equals_the_per_coordinate_diagonal(small_study, pooling, therapists):
    """The initial mass matrix moves the same coordinate of every unit (dyad, session,
    therapist) at once to difference the gradient; its diagonal must equal the one
    from moving each coordinate alone, away from the start (where all units agree)."""
    from coregulation.inference import bayes

    model, ds = small_study
    problem = bayes.build_problem(model, ds, pooling=pooling, therapists=therapists,
                                  kalman="sequential")
    numpyro_model = build_numpyro_model(problem.design, problem.batch_log_likelihood)
    _, info, value_and_grad = bayes._initialise(problem, numpyro_model)
    flat, unravel = jax.flatten_util.ravel_pytree(info.z)
    groups = bayes._separable_groups(info.z, unravel)
    assert sorted(np.concatenate(groups).tolist()) == list(range(flat.size))
    assert len(groups) < flat.size  # some coordinates do move together
    x = np.asarray(flat) + 0.3 * np.random.default_rng(2).standard_normal(flat.size)

    def grad(v):
        return value_and_grad(jnp.asarray(v))[1]

    grouped = bayes._fd_hessian_diagonal(grad, x, groups)
    alone = bayes._fd_hessian_diagonal(grad, x, [np.array([i]) for i in range(flat.size)])
    np.testing.assert_allclose(grouped, alone, rtol=1e-7, atol=1e-9 * np.max(np.abs(alone)))
    full = np.diag(bayes._fd_hessian(grad, x, 1e-4))  # the plain Hessian's diagonal
    np.testing.assert_allclose(alone, full, rtol=1e-12)


@pytest.mark.parametrize("pooling, therapists", [
    (Pooling(levels=("dyad", "session")), None),
    (Pooling(levels=("dyad", "therapist")), ["a", "b", "a"]),
    (Pooling(levels=("dyad",), correlated=True), None),
])
def test_joint_start_reaches_the_joint_mode(small_study, pooling, therapists):
    """NUTS starts hierarchical fits from a joint search over every coordinate (units
    included); run to convergence it must find the mode that an independent optimiser
    (BFGS, from another point) finds, and cut short it must still lower the potential."""
    from coregulation.inference import bayes

    model, ds = small_study
    problem = bayes.build_problem(model, ds, pooling=pooling, therapists=therapists,
                                  kalman="sequential")
    assert bayes._units_start_at_population(problem.design)
    numpyro_model = build_numpyro_model(problem.design, problem.batch_log_likelihood)
    _, info, value_and_grad = bayes._initialise(problem, numpyro_model)
    flat, unravel = jax.flatten_util.ravel_pytree(info.z)

    def potential(x):
        return float(value_and_grad(jnp.asarray(x))[0])

    short = bayes._joint_start(info, value_and_grad, iterations=5)
    assert potential(jax.flatten_util.ravel_pytree(short.z)[0]) < potential(flat)
    mode = jax.flatten_util.ravel_pytree(bayes._joint_start(info, value_and_grad, 2000).z)[0]
    effects = [name for name in info.z if "_z_" in name or name == "dyad_z"]
    assert effects and all(np.ptp(np.asarray(unravel(mode)[name])) > 1e-3 for name in effects)

    x = np.asarray(flat) + 0.1 * np.random.default_rng(5).standard_normal(flat.size)
    other = scipy.optimize.minimize(
        lambda v: tuple(np.asarray(a, dtype=float) for a in value_and_grad(jnp.asarray(v))),
        x, jac=True, method="BFGS", options={"gtol": 1e-8, "maxiter": 5000})
    assert abs(potential(mode) - other.fun) < 1e-6 * abs(other.fun)
    # L-BFGS-B stops on its default tolerances: flat directions agree less closely
    np.testing.assert_allclose(np.asarray(mode), other.x, atol=1e-2)


def test_no_joint_start_for_centred_or_single_level_designs(small_study):
    """Centred levels have no joint mode (the density grows as a scale shrinks) and a
    design without levels has no units: their start stays the pooled MAP."""
    from coregulation.inference import bayes

    model, ds = small_study
    for pooling in (Pooling(levels=("dyad",), centred=True), Pooling(levels=())):
        problem = bayes.build_problem(model, ds, pooling=pooling, kalman="sequential")
        assert not bayes._units_start_at_population(problem.design)


def test_population_sites_live_on_the_parameter_space_scale():
    """numpyro's unconstrained image of each population value is ParameterSpace's (the
    parameter's constraint, not the support its prior reports: ``period`` and
    ``shock_corr`` have transformed priors), so with every unit at the population value
    the potential is the complete-pooling posterior up to a constant."""
    model = cr.CoupledOscillator()
    ds, _ = cr.simulate_dyads(model, dict(MODEL_CASES["oscillator"][1]), jax.random.key(4),
                              num_dyads=2, num_sessions=1, duration=60, sampling_interval=1.0)
    problem = cr.inference.bayes.build_problem(
        model, ds, pooling=Pooling(parameters=("position_therapist_to_client",)),
        kalman="sequential")
    numpyro_model = build_numpyro_model(problem.design, problem.batch_log_likelihood)
    _, info, value_and_grad = cr.inference.bayes._initialise(problem, numpyro_model)
    space = ParameterSpace(model, problem.batch.scales)
    flat, unravel = jax.flatten_util.ravel_pytree(info.z)

    @jax.jit
    def pooled_objective(u):
        ll = problem.batch_log_likelihood(space.constrain(u))
        return -(jnp.sum(ll) + space.log_prior_unconstrained(u))

    def potential(u):
        z = dict(unravel(flat))
        for name, part in zip(space.names, space._split(jnp.asarray(u))):
            z[name] = part
        return float(value_and_grad(jax.flatten_util.ravel_pytree(z)[0])[0])

    u0 = np.concatenate([np.ravel(info.z[name]) for name in space.names])
    rng = np.random.default_rng(0)
    points = [u0] + [u0 + 0.2 * rng.standard_normal(u0.size) for _ in range(3)]
    gaps = [potential(u) - float(pooled_objective(u)) for u in points]
    np.testing.assert_allclose(gaps, gaps[0], rtol=0, atol=1e-8)


def test_import_asks_jax_for_a_cpu_device_per_chain():
    """Importing coregulation gives JAX several CPU devices (parallel chains), unless the
    user chose a count or JAX already runs; COREGULATION_CPU_DEVICES sets it."""
    def devices(env=None, before=""):
        environ = {k: v for k, v in os.environ.items()
                   if k not in ("XLA_FLAGS", "COREGULATION_CPU_DEVICES")}
        out = subprocess.run(
            [sys.executable, "-c",
             before + "import coregulation, jax; print(jax.local_device_count())"],
            env={**environ, **(env or {})}, capture_output=True, text=True, check=True)
        return int(out.stdout.split()[-1])

    assert devices() == max(4, min(os.cpu_count(), 16))
    assert devices({"COREGULATION_CPU_DEVICES": "2"}) == 2
    assert devices({"XLA_FLAGS": "--xla_force_host_platform_device_count=3"}) == 3
    assert devices(before="import jax; jax.numpy.zeros(1); ") == 1


def test_import_sets_the_cpu_emitter_flag_only_where_xla_knows_it(monkeypatch):
    """Importing coregulation adds --xla_cpu_use_fusion_emitters=false to XLA_FLAGS in a
    fresh process (and the installed XLA accepts it: an unknown flag aborts XLA), but
    never over the user's own setting, for an unchecked jaxlib or once JAX runs."""
    import jaxlib
    from jax._src import xla_bridge

    import coregulation

    environ = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    script = ("import os, coregulation, jax; jax.numpy.ones(2).block_until_ready(); "
              "print(repr(os.environ.get('XLA_FLAGS')))")
    if jaxlib.__version__.startswith(coregulation._FUSION_EMITTER_FLAG_RELEASES):
        out = subprocess.run([sys.executable, "-c", script], env=environ,
                             capture_output=True, text=True, check=True)
        assert out.stdout.split()[-1] == "'--xla_cpu_use_fusion_emitters=false'"

    def flags_after(env_flags, version="0.9.2", running=False):
        monkeypatch.setattr(jaxlib, "__version__", version)
        monkeypatch.setattr(xla_bridge, "backends_are_initialized", lambda: running)
        if env_flags is None:
            monkeypatch.delenv("XLA_FLAGS", raising=False)
        else:
            monkeypatch.setenv("XLA_FLAGS", env_flags)
        coregulation._cpu_codegen_flag()
        return os.environ.get("XLA_FLAGS")

    assert flags_after(None) == "--xla_cpu_use_fusion_emitters=false"
    assert flags_after("--xla_force_host_platform_device_count=3") == (
        "--xla_force_host_platform_device_count=3 --xla_cpu_use_fusion_emitters=false")
    assert flags_after("--xla_cpu_use_fusion_emitters=true") == (
        "--xla_cpu_use_fusion_emitters=true")
    assert flags_after(None, version="0.5.3") is None
    assert flags_after(None, version="0.11.0") is None
    assert flags_after(None, running=True) is None


def test_design_errors(small_study):
    model, ds = small_study
    batch = SeriesBatch.from_dataset(ds)
    with pytest.raises(ValueError, match="not free parameters"):
        build_design(model, batch, Pooling(parameters=("period",)), ds)
    with pytest.raises(ValueError, match="therapists="):
        build_design(model, batch, Pooling(levels=("dyad", "therapist")), ds)
    with pytest.raises(ValueError, match="covariate 'alliance' not found"):
        build_design(model, batch, Pooling(covariates={"therapist_to_client": ["alliance"]}), ds)
    with pytest.raises(ValueError, match="levels must be"):
        Pooling(levels=("clinic",))
    one = ds.isel(dyad=[0])
    with pytest.raises(ValueError, match="at least 2 dyads"):
        build_design(model, SeriesBatch.from_dataset(one), Pooling(), one)


def test_fit_input_errors(small_study):
    model, ds = small_study
    with pytest.raises(TypeError, match="instead of an instance"):
        cr.fit(cr.CTVAR, ds)
    with pytest.raises(TypeError, match="data-contract Dataset"):
        cr.fit(model, np.zeros((100, 2)))
    with pytest.raises(ValueError, match="method must be one of"):
        cr.fit(model, ds, method="hmc")
    with pytest.raises(ValueError, match="num_chains must be an integer"):
        cr.fit(model, ds, num_chains=0)
    with pytest.raises(ValueError, match="declares inputs"):
        cr.fit(cr.CTVAR(inputs=("speech",)), ds)
    with pytest.raises(ValueError, match="dense_mass must be True, False or None"):
        cr.fit(model, ds, dense_mass="yes")
    with pytest.raises(ValueError, match="dense_mass sets the mass matrix"):
        cr.fit(model, ds, method="map", dense_mass=True)
    with pytest.raises(ValueError, match="chain_method must be None"):
        cr.fit(model, ds, chain_method="threads")


@pytest.mark.slow  # statistical (NUTS against Laplace), 75 s
def test_single_dyad_nuts_uses_a_dense_mass_matrix_and_agrees_with_laplace():
    """No pooled parameters: dense metric by default, posterior close to the Laplace one."""
    model = cr.CTVAR()
    ds, _ = cr.simulate_dyads(model, CTVAR_TRUTH, jax.random.key(5), num_dyads=1,
                              num_sessions=1, duration=400, sampling_interval=1.0)
    common = dict(num_samples=200, seed=3, num_predictive=0, progress_bar=False, warn=False)
    nuts = cr.fit(model, ds, num_chains=2, num_warmup=200, **common)
    laplace = cr.fit(model, ds, method="laplace", **common)
    settings = json.loads(nuts.idata.posterior.attrs["coregulation_settings"])
    assert settings["dense_mass"] is True
    for name in ("therapist_to_client", "client_to_therapist"):
        a, b = nuts.idata.posterior[name], laplace.idata.posterior[name]
        assert abs(float(a.mean()) - float(b.mean())) < 0.5 * float(b.std()), name
        assert 0.6 < float(a.std()) / float(b.std()) < 1.6, name


@pytest.fixture(scope="module")
def nuts_fit():
    """A small hierarchical NUTS fit on strongly therapist-led dyads (sign recovery)."""
    model = cr.CTVAR()
    truth = dict(CTVAR_TRUTH, therapist_to_client=0.6, client_to_therapist=0.0)
    ds, _ = cr.simulate_dyads(model, truth, jax.random.key(21), num_dyads=4, num_sessions=1,
                              duration=400, sampling_interval=1.0)
    ds["x"] = (("dyad", "covariate"), np.array([[0.1], [0.5], [0.2], [0.9]]))
    ds = ds.assign_coords(covariate=["alliance"])
    pooling = Pooling(parameters=("therapist_to_client", "client_to_therapist"),
                      covariates={"therapist_to_client": ["alliance"]})
    with pytest.warns(cr.SamplerWarning):  # short chains: low ESS is reported, not hidden
        fit = cr.fit(model, ds, num_chains=2, num_warmup=150, num_samples=150, seed=1,
                     pooling=pooling, num_predictive=8, progress_bar=False)
    return fit, ds


def test_nuts_recovers_sign_and_builds_inferencedata(nuts_fit, tmp_path):
    fit, ds = nuts_fit
    post = fit.idata.posterior
    assert float((post["therapist_to_client"] > 0).mean()) > 0.95
    table = fit.coupling_table()
    pop = table[(table["level"] == "population")].set_index("quantity")
    assert pop.loc["therapist → client", "lower_95%"] > 0
    assert pop.loc["therapist → client", "p_therapist_led"] > 0.95
    assert set(table["level"]) == {"population", "dyad"}
    assert (table["level"] == "dyad").sum() == 4 * 3
    # dims and coords
    assert post["tau"].dims == ("chain", "draw", "role")
    assert list(post["role"].values) == ["therapist", "client"]
    # pooled parameters: NUTS kept a diagonal mass matrix by default
    settings = json.loads(post.attrs["coregulation_settings"])
    assert settings["dense_mass"] is False and settings["num_chains"] == 2
    # a device per chain (coregulation asked JAX for them on import): parallel chains
    assert settings["chain_method"] == (
        "parallel" if jax.local_device_count() >= 2 else "vectorized")
    assert post["therapist_to_client_by_dyad"].dims == ("chain", "draw", "dyad")
    assert post["coupling"].dims == ("chain", "draw", "source", "target")
    np.testing.assert_allclose(post["coupling"].sel(source="therapist", target="client"),
                               post["therapist_to_client"])
    assert np.isnan(post["coupling"].sel(source="client", target="client")).all()
    assert post["therapist_to_client_on_alliance"].dims == ("chain", "draw")
    ll = fit.idata.log_likelihood["y"]
    assert ll.dims == ("chain", "draw", "series") and ll.sizes["series"] == 4
    pp = fit.idata.posterior_predictive["y"]
    assert pp.dims[2:] == ("series", "time_index", "role")
    assert fit.idata.observed_data["y"].shape == (4, 400, 2)
    # the recorded per-series log-likelihood is the batched likelihood at the draw
    series = {k: post[f"{k}_by_dyad"].values[0, 0] if f"{k}_by_dyad" in post else
              np.broadcast_to(post[k].values[0, 0], (4, *post[k].shape[2:]))
              for k in fit.free_names()}
    batch = SeriesBatch.from_dataset(cr.data.standardise(ds))
    ref = build_batch_log_likelihood(fit.model, batch)(series)
    np.testing.assert_allclose(ll.values[0, 0], ref, rtol=1e-9)
    # round trip through netCDF, without pickle
    path = fit.to_netcdf(tmp_path / "fit.nc")
    back = cr.load_fit(path)
    assert back.model == fit.model
    np.testing.assert_allclose(back.coupling_table()["mean"], table["mean"])
    assert not list(tmp_path.glob("*.partial"))


def test_health_messages_name_the_fix(nuts_fit):
    fit, _ = nuts_fit
    diag = fit.diagnostics()
    assert diag["min_ess_bulk"] < 400
    assert any("num_samples" in m for m in diag["messages"])


def test_derived_and_plots(nuts_fit, tmp_path):
    fit, _ = nuts_fit
    derived = fit.derived(intervals=np.array([1.0, 5.0]))
    assert derived["half_life"].shape[1:] == (2,)
    np.testing.assert_allclose(derived["half_life"], derived["time_constant"] * np.log(2))
    from coregulation.plots import save_all

    written = save_all(fit, tmp_path)
    assert {p.name for p in written} == {"coupling_forest.png", "flow_field.png",
                                         "cross_lag_curves.png", "predictive_ccf.png"}
    assert all(p.stat().st_size > 1000 for p in written)


@pytest.mark.parametrize("method", ["map", "laplace", "svi"])
def test_fast_first_looks_agree_in_sign(method):
    model = cr.CTVAR()
    truth = dict(CTVAR_TRUTH, therapist_to_client=0.6, client_to_therapist=0.0)
    ds, _ = cr.simulate_dyads(model, truth, jax.random.key(8), num_dyads=1, duration=600)
    fit = cr.fit(model, ds, method=method, num_samples=200, svi_steps=1500,
                 num_predictive=0, progress_bar=False, warn=False)
    draws = fit.idata.posterior["therapist_to_client"].values
    assert np.mean(draws) > 0.2
    # kalman="auto": a few hundred to 1500 evaluations of 600 steps compile the cheaper
    # sequential filter, and the result records the method that ran
    assert fit.idata.posterior.attrs["coregulation_kalman"] == "sequential"
    if method != "map":
        assert draws.size == 200 and np.std(draws) > 0


def test_auto_kalman_method_weighs_evaluations_against_size():
    from coregulation.inference.bayes import (
        auto_kalman_method,
        build_problem,
        expected_evaluations,
    )

    nuts = expected_evaluations("nuts", num_chains=4, num_warmup=1000, num_samples=1000,
                                svi_steps=1)
    laplace = expected_evaluations("laplace", 4, 1000, 1000, svi_steps=1)
    assert nuts > 100 * laplace
    # one dyad, T = 600, NUTS: fast (benchmarks/fit_speed.py case i)
    assert auto_kalman_method(nuts, 600) == "fast"
    assert auto_kalman_method(laplace, 6 * 200) == "sequential"
    assert auto_kalman_method(laplace, 40 * 36000) == "fast"
    model = cr.CTVAR()
    ds, _ = cr.simulate_dyads(model, CTVAR_TRUTH, jax.random.key(8), num_dyads=1, duration=60)
    explicit = build_problem(model, ds, kalman="fast", evaluations=laplace)
    assert explicit.kalman == "fast"
    assert explicit.start_log_likelihood is explicit.batch_log_likelihood
    # NUTS on one short series: the sampler compiles fast only if the run repays it,
    # and the start search (a few hundred calls) takes the sequential filter; both
    # give the same values
    long, _ = cr.simulate_dyads(model, CTVAR_TRUTH, jax.random.key(8), num_dyads=1,
                                duration=600)
    sampled = build_problem(model, long, evaluations=nuts)
    assert sampled.kalman == "fast"
    assert sampled.start_log_likelihood is not sampled.batch_log_likelihood
    free = _free(model, CTVAR_TRUTH)
    np.testing.assert_allclose(sampled.start_log_likelihood(free),
                               sampled.batch_log_likelihood(free), rtol=BATCH_RTOL)


def test_cli_simulate_and_fit(tmp_path):
    from coregulation.cli import app

    runner = CliRunner()
    data = tmp_path / "study.csv"
    result = runner.invoke(app, ["simulate", "--out", str(data), "--dyads", "2",
                                 "--duration", "120", "--seed", "3"])
    assert result.exit_code == 0, result.output
    truth = json.loads((tmp_path / "study_truth.json").read_text())
    assert truth["therapist_to_client"] == pytest.approx(0.4)
    out = tmp_path / "fit"
    result = runner.invoke(app, ["fit", str(data), "--out", str(out), "--method", "map",
                                 "--no-figures"])
    assert result.exit_code == 0, result.output
    assert (out / "fit.nc").exists() and (out / "coupling_table.csv").exists()
    def flat(text):  # rich wraps errors in a box
        return " ".join(text.replace("│", " ").split())

    bad = runner.invoke(app, ["fit", str(tmp_path / "nope.csv"), "--out", str(out)])
    assert bad.exit_code != 0 and "does not exist" in flat(bad.output)
    bad = runner.invoke(app, ["fit", str(data), "--out", str(out), "--model", "arima"])
    assert bad.exit_code != 0 and "--model must be one of" in flat(bad.output)
    bad = runner.invoke(app, ["fit", str(data), "--out", str(out), "--backend", "pymc",
                              "--method", "map"])
    assert bad.exit_code != 0 and "NUTS only" in flat(bad.output)


def test_steady_state_check_comes_where_the_start_converges():
    """A fit's sampler checks for the steady state at twice the steps its start point
    needs (a power of two, at least 32), or at the default 128 when that is later."""
    from coregulation.inference import kalman
    from coregulation.inference.bayes import _steady_state_check, build_problem

    model = cr.CTVAR()
    truth = {k: v for k, v in CTVAR_TRUTH.items() if k in model.free_names()}
    ds, _ = cr.simulate_dyads(model, truth, jax.random.key(0), num_dyads=2, num_sessions=1,
                              duration=200.0)
    problem = build_problem(model, ds, pooling=cr.Pooling(), evaluations=10**6,
                            unbatched_sampler=True)
    values = {k: np.asarray(v, dtype=float) for k, v in truth.items()}
    for tau, expected_check in (([3.0, 4.0], 32), ([5.0, 8.0], 64), ([10.0, 30.0], None)):
        point = {**values, "tau": np.array(tau)}
        ssm = model.to_lgssm({k: jnp.asarray(v) for k, v in point.items()}, problem.batch.grid(0))
        steps = kalman.steps_to_steady_state(ssm)
        expected = max(32, 2 ** int(np.ceil(np.log2(2 * steps))))
        assert (expected if expected < 128 else None) == expected_check, steps
        assert _steady_state_check(problem, point) == expected_check
    # moderated or otherwise non-unit population values: no guess, the default
    assert _steady_state_check(problem, {k: v for k, v in values.items() if k != "tau"}) is None
