"""Simulation studies: batched replicate fits, study files, the resumable store, metrics,
SBC statistics, null calibration, power, Dask, CLI (fast smoke tier; the statistical
tier is tests/test_slow_studies.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
import scipy.stats
import xarray as xr

import coregulation as cr
from coregulation.inference.batch import SeriesBatch
from coregulation.inference.replicates import (
    _chains_mixed,
    build_hierarchical_replicate_density,
    build_replicate_density,
    fit_replicates,
    replicate_kalman_method,
)
from coregulation.models import PriorScales
from coregulation.simulate.recovery import (
    DIFFERENCE,
    recovery_metrics,
    run_chunk,
    run_study,
)
from coregulation.simulate.sbc import chi_square_uniformity, ecdf_bands, within_bands
from coregulation.simulate.study import Study

TINY = """
[study]
name = "tiny"
model = "ctvar"
method = "{method}"
replicates = {replicates}
seed = 5
chunk = {chunk}

[truth]
tau = [6.0, 12.0]

[grid]
coupling = ["none", "therapist_led"]
duration = [{duration}]

[fit]
num_samples = 100
"""


def _tiny(tmp_path, method="map", replicates=4, chunk=2, duration=120, name="study.toml"):
    path = tmp_path / name
    path.write_text(TINY.format(method=method, replicates=replicates, chunk=chunk,
                                duration=duration))
    return path


def _replicates(model, num, duration=200, seed=0):
    times = np.arange(1.0, duration + 1.0)
    scales = PriorScales(1.0, float(duration), 1.0)
    space = cr.ParameterSpace(model, scales)
    draws = space.sample_prior(jax.random.key(seed), num)
    ys = [cr.simulate_series(model, {k: np.asarray(v[r]) for k, v in draws.items()}, times,
                             jax.random.key(100 + r)).y for r in range(num)]
    ys[0][10:15] = np.nan  # missing values differ between replicates
    return times, ys, scales, draws


def test_nuts_replicates_count_as_converged_when_their_chains_mix():
    """NUTS's ``converged`` is about its draws (finite, split R-hat < 1.1 by numpyro's
    own diagnostic), not the start search: mixed chains pass, chains stuck apart or
    a non-finite draw fail, one chain needs finite draws only."""
    from numpyro.diagnostics import split_gelman_rubin

    rng = np.random.default_rng(0)
    mixed = rng.standard_normal((2, 500, 3))
    apart = mixed + np.array([0.0, 3.0])[:, None, None]
    broken = mixed.copy()
    broken[1, 7, 2] = np.nan
    z = np.stack([mixed, apart, broken])
    rhat = np.array([np.max(split_gelman_rubin(c)) for c in z])
    assert rhat[0] < 1.1 < rhat[1]
    np.testing.assert_array_equal(_chains_mixed(z, rhat), [True, False, False])
    np.testing.assert_array_equal(_chains_mixed(z[:, :1], np.full(3, np.nan)),
                                  [True, True, True])


def test_batched_modes_and_hessians_equal_independent_fits_of_each_replicate():
    model = cr.CTVAR()
    times, ys, scales, _ = _replicates(model, 4)
    batch = SeriesBatch.from_series([(times, y, None, None) for y in ys])
    fits = fit_replicates(model, batch, scales, method="laplace", num_samples=4000, seed=1)
    assert fits.converged.all()
    log_density, data, space = build_replicate_density(model, batch, scales)

    def potential(theta, own):
        return -log_density(theta, *own)

    value_and_grad = jax.jit(jax.value_and_grad(potential))
    exact_hessian = jax.jit(jax.hessian(potential))
    for r in range(4):
        own = tuple(d[r] for d in data)
        result = scipy.optimize.minimize(
            lambda x: tuple(np.asarray(a, float) for a in value_and_grad(jnp.asarray(x), own)),
            fits.mode[r] + 0.2, jac=True, method="BFGS", options={"gtol": 1e-9})
        np.testing.assert_allclose(fits.mode[r], result.x, atol=1e-5)
        # Laplace draws: covariance = inverse of the exact (autodiff) Hessian
        hessian = np.asarray(exact_hessian(jnp.asarray(fits.mode[r]), own))
        draws = fits.unconstrained[r, 0]
        np.testing.assert_allclose(draws.mean(axis=0), fits.mode[r],
                                   atol=4 * np.sqrt(np.diag(np.linalg.inv(hessian)) / 4000).max())
        sd = np.sqrt(np.diag(np.linalg.inv(hessian)))
        np.testing.assert_allclose(draws.std(axis=0), sd, rtol=0.06)


def test_replicate_fits_with_other_moderator_values_get_their_own_program():
    """The compiled replicate density closes over the batch's distinct steps, moderator
    values included.  A batch with the same step lengths but other moderator values must
    not reuse it: that would score its data under the first batch's z(t)."""
    from conftest import CTVAR_TRUTH

    from coregulation.inference.replicates import _COMPILED

    model = cr.CTVAR(moderators=("speaking",))
    times = np.arange(1.0, 151.0)
    scales = PriorScales(1.0, 150.0, 1.0)
    truth = dict(CTVAR_TRUTH, therapist_to_client_moderation=np.array([0.5]),
                 client_to_therapist_moderation=np.array([0.0]))
    z_a = (times > 75).astype(float)[:, None]
    z_b = 2.0 * z_a  # the same step lengths, other moderator values
    y = cr.simulate_series(model, truth, times, jax.random.key(3), moderators=z_a).y
    batch_a = SeriesBatch.from_series([(times, y, None, z_a)])
    batch_b = SeriesBatch.from_series([(times, y, None, z_b)])
    before = set(_COMPILED)
    mode_a = fit_replicates(model, batch_a, scales, method="map", seed=0).mode
    after_a = fit_replicates(model, batch_b, scales, method="map", seed=0).mode
    for key in set(_COMPILED) - before:  # forget this test's programs only
        del _COMPILED[key]
    alone = fit_replicates(model, batch_b, scales, method="map", seed=0).mode
    np.testing.assert_allclose(after_a, alone, atol=1e-8)
    # the moderator values matter: the first batch's mode is another one
    assert np.max(np.abs(mode_a - alone)) > 1e-3


def _hierarchical_reference(model, ds, scales):
    """``fit``'s hierarchical potential for one dataset, built the way ``fit`` builds it
    (the batch's likelihood closes over its data; the sequential filter)."""
    from numpyro.infer.util import potential_energy

    from coregulation.inference.batch import build_batch_log_likelihood
    from coregulation.inference.hierarchy import Pooling, build_design, build_numpyro_model

    batch = SeriesBatch.from_dataset(ds, scales)
    design = build_design(model, batch, Pooling(levels=("dyad",)), ds)
    numpyro_model = build_numpyro_model(
        design, build_batch_log_likelihood(model, batch, method="sequential"))
    return lambda params: potential_energy(numpyro_model, (), {}, params)


def test_hierarchical_replicates_score_each_replicate_with_its_own_data(tmp_path):
    """Many-dyad cells: one batched program whose replicate r is fit's hierarchical
    posterior of dataset r (value, gradient, and the batched modes against each
    dataset's own optimum); the study path fits a cell's chunks through it."""
    from coregulation.inference.replicates import _COMPILED, fit_hierarchical_replicates

    model = cr.CTVAR()
    truth = {"tau": np.array([5.0, 8.0]), "therapist_to_client": np.array(0.4),
             "client_to_therapist": np.array(0.0), "mu": np.zeros(2),
             "latent_sd": np.ones(2), "shock_corr": np.array(0.2), "me_sd": np.full(2, 0.3)}
    datasets = [cr.simulate_dyads(model, truth, jax.random.key(30 + r), num_dyads=3,
                                  duration=80, missing_rate=0.05 * r)[0] for r in range(3)]
    scales = PriorScales(1.0, 80.0, 1.0)
    log_density, data, start, _, _ = build_hierarchical_replicate_density(model, datasets, scales)
    unravel = jax.flatten_util.ravel_pytree(
        jax.tree.map(jnp.asarray, _structure(model, datasets[0], scales)))[1]
    rng = np.random.default_rng(0)
    fits = fit_hierarchical_replicates(model, datasets, scales, method="map")
    assert fits.converged.all()
    ours = jax.jit(jax.value_and_grad(lambda t, own: -log_density(t, *own)))
    for r, ds in enumerate(datasets):
        reference = _hierarchical_reference(model, ds, scales)
        value_and_grad = jax.jit(jax.value_and_grad(lambda t, f=reference: f(unravel(t))))
        theta = jnp.asarray(start + 0.1 * rng.standard_normal(start.size))
        value, grad = ours(theta, tuple(d[r] for d in data))
        ref_value, ref_grad = value_and_grad(theta)
        np.testing.assert_allclose(value, ref_value, rtol=1e-9)
        np.testing.assert_allclose(grad, ref_grad, rtol=1e-6, atol=1e-6)
        if r == 1:
            continue
        # the batched L-BFGS reaches each dataset's own optimum (scipy on fit's potential)
        result = scipy.optimize.minimize(
            lambda x: tuple(np.asarray(a, float) for a in value_and_grad(jnp.asarray(x))),
            start, jac=True, method="L-BFGS-B", options={"maxiter": 3000, "gtol": 1e-9})
        assert float(value_and_grad(jnp.asarray(fits.mode[r]))[0]) <= result.fun + 1e-6
        np.testing.assert_allclose(fits.draws["therapist_to_client"][r, 0, 0],
                                   _population(model, ds, scales, result.x)["therapist_to_client"],
                                   atol=2e-3)
    # a study's many-dyad cell: every chunk through the same compiled programs
    before = {k for k in _COMPILED if k[0] == "hierarchical"}
    study = Study(name="dyads", model="ctvar", method="map", replicates=4, seed=2, chunk=2,
                  truth={"tau": [5.0, 8.0]},
                  grid={"coupling": ["therapist_led"], "coupling_size": [0.4],
                        "num_dyads": [3], "duration": [80]})
    metrics = recovery_metrics(run_study(study, tmp_path, progress=False)).isel(cell=0)
    assert len({k for k in _COMPILED if k[0] == "hierarchical"} - before) == 1
    assert np.isfinite(float(metrics["rmse"].sel(parameter="therapist_to_client")))
    assert float(metrics["share_converged"]) == 1.0


def _structure(model, ds, scales):
    """The unconstrained sites of fit's hierarchical model (their shapes and order)."""
    from numpyro.infer.util import unconstrain_fn

    from coregulation.inference.bayes import hierarchy_start_values
    from coregulation.inference.hierarchy import Pooling, build_design, build_numpyro_model

    design = build_design(model, SeriesBatch.from_dataset(ds, scales), Pooling(levels=("dyad",)),
                          ds)
    values = hierarchy_start_values(design, cr.ParameterSpace(model, scales).prior_median())
    return unconstrain_fn(build_numpyro_model(design, None, likelihood=False), (), {},
                          {k: jnp.asarray(v, dtype=float) for k, v in values.items()})


def _population(model, ds, scales, flat):
    from numpyro.infer.util import constrain_fn

    from coregulation.inference.hierarchy import Pooling, build_design, build_numpyro_model

    design = build_design(model, SeriesBatch.from_dataset(ds, scales), Pooling(levels=("dyad",)),
                          ds)
    unravel = jax.flatten_util.ravel_pytree(_structure(model, ds, scales))[1]
    return {k: np.asarray(v) for k, v in constrain_fn(
        build_numpyro_model(design, None, likelihood=False), (), {},
        unravel(jnp.asarray(flat)), return_deterministic=False).items()}


def test_batched_nuts_runs_and_reports_health_per_replicate():
    """Fast tier: the batched sampler's output structure; the statistical agreement
    with NumPyro's own NUTS is the slow test below."""
    model = cr.CTVAR()
    times, ys, scales, _ = _replicates(model, 3, duration=60, seed=4)
    batch = SeriesBatch.from_series([(times, y, None, None) for y in ys])
    settings = dict(method="nuts", num_chains=2, num_warmup=15, num_samples=10, seed=2)
    # replicates spread over JAX's devices (several, asked for on import): two
    # devices for three replicates, so the last group is padded; the draws are those
    # of one replicate after another
    assert jax.local_device_count() > 1
    fit = fit_replicates(model, batch, scales, devices=2, **settings)
    one_device = fit_replicates(model, batch, scales, devices=1, **settings)
    np.testing.assert_allclose(fit.unconstrained, one_device.unconstrained, rtol=1e-9,
                               atol=1e-12)
    _, _, space = build_replicate_density(model, batch, scales)
    assert fit.unconstrained.shape[0] == 3 and fit.unconstrained.shape[-1] == space.size
    assert fit.unconstrained[0].reshape(-1, space.size).shape[0] == 2 * 10
    assert np.all(np.isfinite(fit.unconstrained))
    assert fit.stats["divergences"].shape == (3,) and fit.stats["max_rhat"].shape == (3,)
    with pytest.raises(ValueError, match="nuts_batch must be"):
        fit_replicates(model, batch, scales, method="nuts", nuts_batch="all")
    with pytest.raises(ValueError, match="devices must be an integer from 1"):
        fit_replicates(model, batch, scales, method="nuts", devices=0)


def test_replicate_fits_pick_the_kalman_method_by_cost():
    """NUTS on replicates of hundreds of steps runs the fast filter (measured: ~7x
    cheaper per gradient at T = 600); Laplace, MAP and tiny NUTS runs compile the
    cheaper sequential one."""
    model = cr.CTVAR()
    times, ys, _, _ = _replicates(model, 8, duration=600, seed=1)
    long = SeriesBatch.from_series([(times, y, None, None) for y in ys])
    assert replicate_kalman_method(long, "nuts", 2, 200, 200) == "fast"
    assert replicate_kalman_method(long, "laplace", 2, 200, 200) == "sequential"
    assert replicate_kalman_method(long, "map", 2, 200, 200) == "sequential"
    assert replicate_kalman_method(long, "nuts", 2, 15, 10) == "sequential"


@pytest.mark.slow
def test_batched_nuts_agrees_with_numpyro_on_the_same_posterior():
    from numpyro.infer import MCMC, NUTS

    model = cr.CTVAR()
    times, ys, scales, _ = _replicates(model, 2, duration=150, seed=3)
    batch = SeriesBatch.from_series([(times, y, None, None) for y in ys])
    fits = {mode: fit_replicates(model, batch, scales, method="nuts", num_chains=2,
                                 num_warmup=200, num_samples=300, seed=2, nuts_batch=mode)
            for mode in ("chains", "replicates")}
    log_density, data, space = build_replicate_density(model, batch, scales)
    for r in range(2):
        own = [d[r] for d in data]
        mcmc = MCMC(NUTS(potential_fn=lambda th, own=own: -log_density(th, *own)), num_warmup=200,
                    num_samples=300, num_chains=2, chain_method="vectorized",
                    progress_bar=False)
        start = jnp.tile(jnp.asarray(fits["chains"].mode[r]), (2, 1))
        mcmc.run(jax.random.key(9 + r), init_params=start)
        reference = np.asarray(mcmc.get_samples())
        for mode, fit in fits.items():
            ours = fit.unconstrained[r].reshape(-1, space.size)
            # Monte Carlo error of both means (ESS ~ a quarter of the draws, conservatively)
            se = np.sqrt(ours.var(axis=0) / (ours.shape[0] / 4) + reference.var(axis=0)
                         / (reference.shape[0] / 4))
            assert np.all(np.abs(ours.mean(axis=0) - reference.mean(axis=0)) < 4 * se), mode
            np.testing.assert_allclose(ours.std(axis=0), reference.std(axis=0), rtol=0.3)
    for fit in fits.values():
        assert fit.stats["divergences"].shape == (2,) and np.all(fit.stats["max_rhat"] < 1.1)
    with pytest.raises(ValueError, match="nuts_batch must be"):
        fit_replicates(model, batch, scales, method="nuts", nuts_batch="all")


def test_study_files_are_validated_with_specific_errors(tmp_path):
    study = Study.from_file(_tiny(tmp_path))
    assert len(study.cells()) == 2 and study.chunks()[:2] == [(0, 0, 2), (0, 2, 4)]
    yaml_path = tmp_path / "s.yaml"
    yaml_path.write_text("study:\n  model: oscillator\n  replicates: 3\ngrid:\n"
                         "  coupling: [client_led]\n")
    assert Study.from_file(yaml_path).model == "oscillator"
    cases = [
        ({"grid": {"coupling": ["sideways"]}}, r"\[grid\] coupling: levels must be among"),
        ({"grid": {"dyads": [1]}}, r"unknown factor\(s\) \['dyads'\]"),
        ({"study": {"replicates": 0}}, r"\[study\] replicates: must be a positive integer"),
        ({"study": {"model": "lstm"}}, r"\[study\] model: must be one of"),
        ({"truth": {"tau_x": 1.0}}, r"\[truth\]: unknown parameter\(s\) \['tau_x'\]"),
        ({"fit": {"num_warmup": 1.5}}, r"\[fit\] num_warmup: must be an integer"),
        ({"study": {"kind": "sbc"}, "truth": {"tau": [5.0, 5.0]}}, r"draws every truth"),
        ({"grid": {"duration": [-5]}}, r"\[grid\] duration: levels must be positive"),
        ({"surprise": {}}, r"unknown section\(s\) \['surprise'\]"),
    ]
    for spec, message in cases:
        with pytest.raises(ValueError, match=message):
            Study.from_dict(spec)
    bad = tmp_path / "bad.toml"
    bad.write_text("[study\nname=")
    with pytest.raises(ValueError, match="not valid TOML"):
        Study.from_file(bad)


def test_recovery_store_summaries_and_metrics_are_right(tmp_path):
    study = Study.from_file(_tiny(tmp_path, method="laplace", replicates=4, chunk=4))
    results = run_study(study, tmp_path / "out", progress=False)
    assert results.sizes["cell"] == 2 and results.sizes["replicate"] == 4
    # a chunk re-run from scratch gives the same numbers (keys from seed, cell, replicate)
    again = run_chunk(study.to_dict(), 1, 0, 4)
    np.testing.assert_array_equal(again["mean"].values, results["mean"].isel(cell=1).values)
    truth = results["truth"].sel(parameter="therapist_to_client").values
    np.testing.assert_array_equal(truth, [[0.0] * 4, [0.5] * 4])
    np.testing.assert_array_equal(results["truth"].sel(parameter="tau[therapist]").values, 6.0)
    # the metrics, by hand from the stored summaries
    metrics = recovery_metrics(results)
    for cell in range(2):
        for name in ("therapist_to_client", DIFFERENCE, "tau[client]"):
            one = results.isel(cell=cell).sel(parameter=name)
            mean, true = one["mean"].values, one["truth"].values
            q = one["quantiles"]
            lo, hi = q.sel(quantile=0.025).values, q.sel(quantile=0.975).values
            m = metrics.isel(cell=cell).sel(parameter=name)
            assert float(m["bias"]) == pytest.approx(np.mean(mean - true))
            assert float(m["rmse"]) == pytest.approx(np.sqrt(np.mean((mean - true) ** 2)))
            assert float(m["coverage_95"]) == pytest.approx(np.mean((lo <= true) & (true <= hi)))
            excludes = (lo > 0) | (hi < 0)
            if true[0] == 0:
                assert float(m["false_positive_rate"]) == pytest.approx(excludes.mean())
                assert np.isnan(float(m["power"]))
            else:
                assert float(m["power"]) == pytest.approx(excludes.mean())
    p = results["p_first_led"].isel(cell=1).values
    assert float(metrics["directional_accuracy"].isel(cell=1)) == pytest.approx(np.mean(p > 0.975))
    # another study in the same folder is refused, not mixed in
    other = Study.from_dict({**study.to_dict(), "study": {**study.to_dict()["study"], "seed": 6}})
    with pytest.raises(ValueError, match="holds results of a different study"):
        run_study(other, tmp_path / "out", progress=False)


def test_a_killed_study_resumes_without_recomputing_or_losing_chunks(tmp_path):
    path = _tiny(tmp_path, method="map", replicates=6, chunk=2, duration=100)
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "coregulation.cli", "recover", str(path),
                             "--out", str(out), "--no-progress"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = out / "cells" / "cell-0000" / "rep-00000-00002.nc"
    deadline = time.time() + 300
    while not first.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert first.exists(), "the first chunk was never written"
    stored = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.rglob("rep-*.nc")}
    assert 1 <= len(stored) < 6
    assert not list(out.rglob("*.partial")) or all(
        p.name.startswith(".") for p in out.rglob("*.partial"))  # never looks finished
    study = Study.from_file(path)
    resumed = run_study(study, out, progress=False)
    for p, (mtime, content) in stored.items():  # finished chunks untouched
        assert p.stat().st_mtime_ns == mtime and p.read_bytes() == content
    clean = run_study(study, tmp_path / "clean", progress=False)
    for name in ("mean", "quantiles", "truth", "p_first_led"):
        np.testing.assert_array_equal(resumed[name].values, clean[name].values)


def test_dask_local_cluster_runs_the_same_study(tmp_path):
    distributed = pytest.importorskip("distributed")
    study = Study.from_file(_tiny(tmp_path, method="map", replicates=2, chunk=1, duration=100))
    local = run_study(study, tmp_path / "local", progress=False)
    # an in-process worker: the same scheduler, task and store path, without the
    # ~20 s of a worker process importing JAX (the benchmark uses worker processes)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        remote = run_study(study, tmp_path / "dask", scheduler=client, progress=False)
    # same numbers up to the last bits (a worker may compile its own program)
    np.testing.assert_allclose(remote["mean"].values, local["mean"].values, rtol=1e-10)
    with pytest.raises(TypeError, match="scheduler must be a distributed.Client"):
        run_study(study, tmp_path / "x", scheduler=42, progress=False)


def test_a_local_process_pool_runs_the_same_study(tmp_path):
    study = Study.from_file(_tiny(tmp_path, method="map", replicates=2, chunk=1, duration=100))
    pooled = run_study(study, tmp_path / "pool", processes=2, progress=False)
    local = run_study(study, tmp_path / "local", progress=False)
    np.testing.assert_allclose(pooled["mean"].values, local["mean"].values, rtol=1e-10)


def test_chi_square_and_simultaneous_ecdf_bands():
    rng = np.random.default_rng(0)
    num_draws = 99

    def results(ranks):
        return xr.Dataset({"rank": (("replicate", "rank_quantity"), ranks)},
                          coords={"rank_quantity": [f"q{k}" for k in range(ranks.shape[1])]},
                          attrs={"rank_draws": num_draws})

    uniform = rng.integers(0, num_draws + 1, size=(300, 2))
    skewed = np.minimum(rng.integers(0, num_draws + 1, size=(300, 1)),
                        rng.integers(0, num_draws + 1, size=(300, 1)))
    table = chi_square_uniformity(results(np.hstack([uniform, skewed])), bins=20)
    # 100 rank values into 20 bins of 5: Pearson's statistic, as scipy computes it
    counts = np.histogram(uniform[:, 0], bins=np.arange(0, 101, 5) - 0.5)[0]
    stat, p = scipy.stats.chisquare(counts)
    assert table.loc[0, "chi_square"] == pytest.approx(stat)
    assert table.loc[0, "p_value"] == pytest.approx(p)
    assert table.loc[2, "p_value"] < 1e-6  # min of two uniforms is far from uniform
    # simultaneous bands hold ~95% of uniform samples (independent draws, MC SE ~0.01)
    z, lower, upper = ecdf_bands(200, num_draws, prob=0.95, seed=1)
    inside = 0
    for _ in range(400):
        r = rng.integers(0, num_draws + 1, size=200)
        ecdf = (r[:, None] < (z * (num_draws + 1))[None]).mean(axis=0)
        inside += np.all((ecdf >= lower) & (ecdf <= upper))
    assert 0.91 <= inside / 400 <= 0.99
    flags = within_bands(results(np.hstack([uniform, skewed])))
    assert not flags["q2"]


def test_sbc_study_stores_ranks_of_parameters_difference_and_log_likelihood(tmp_path):
    study = Study.from_dict({"study": {"kind": "sbc", "model": "ctvar", "method": "laplace",
                                       "replicates": 3, "chunk": 3, "seed": 2},
                             "grid": {"duration": [100]}, "fit": {"num_samples": 50}})
    results = run_study(study, tmp_path / "sbc", progress=False)
    ranks = results["rank"].isel(cell=0)
    assert list(ranks["rank_quantity"].values[-2:]) == [DIFFERENCE, "log_likelihood"]
    assert ranks.values.min() >= 0 and ranks.values.max() <= 50
    # the truth was drawn from the prior per replicate: it differs between replicates
    assert np.unique(results["truth"].sel(parameter="tau[client]").values).size == 3
    # a rank is the number of the 50 draws below the truth: recompute one
    assert chi_square_uniformity(results, bins=10).shape[0] == ranks.sizes["rank_quantity"]


def test_null_calibration_surrogates_and_pseudo_dyads():
    from coregulation.simulate.null import pseudo_dyad_null, surrogate_test

    model = cr.CTVAR()
    truth = dict(tau=np.array([5.0, 8.0]), therapist_to_client=0.9, client_to_therapist=0.0,
                 mu=np.zeros(2), latent_sd=np.ones(2), shock_corr=0.0, me_sd=np.full(2, 0.2))
    ds, _ = cr.simulate_dyads(model, truth, jax.random.key(4), num_dyads=3, duration=400)
    test = surrogate_test(model, ds.isel(dyad=[0]), num_surrogates=19, method="map", seed=1)
    row = test.table.set_index("coupling").loc["therapist_to_client"]
    assert row["p_value"] == pytest.approx(0.05)  # stronger than every surrogate: 1 / 20
    assert test.null_draws["therapist_to_client"].shape == (1, 19)
    assert abs(row["null_mean"]) < 0.3 * row["observed"]
    table = pseudo_dyad_null(model, ds, method="map", seed=0)
    assert set(table["kind"]) == {"real", "pseudo"} and len(table) == 2 * 3 * 2
    real = table[(table["kind"] == "real") & (table["coupling"] == "therapist_to_client")]
    pseudo = table[(table["kind"] == "pseudo") & (table["coupling"] == "therapist_to_client")]
    assert real["mean"].mean() > 3 * abs(pseudo["mean"].mean())


def _flat(text: str) -> str:
    """CLI output without rich's box drawing and line wrapping."""
    return " ".join(text.replace("│", " ").split())


def test_power_cli_and_report(tmp_path):
    from typer.testing import CliRunner

    from coregulation.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["power", "--out", str(tmp_path / "p"), "--effect", "0.6",
                                 "--durations", "80,200", "--replicates", "3", "--method", "map",
                                 "--no-progress"])
    assert result.exit_code == 0, result.output
    table = __import__("pandas").read_csv(tmp_path / "p" / "power.csv")
    assert list(table["duration"]) == [80.0, 200.0] and table["power"].between(0, 1).all()
    assert (tmp_path / "p" / "power.png").exists()
    sbc_file = _tiny(tmp_path)
    result = runner.invoke(app, ["sbc", str(sbc_file), "--out", str(tmp_path / "s")])
    assert result.exit_code != 0 and "declares kind = 'recovery'" in _flat(result.output)
    result = runner.invoke(app, ["report", str(tmp_path / "p")])
    assert result.exit_code == 0 and (tmp_path / "p" / "metrics.csv").exists()
    spec = json.loads((tmp_path / "p" / "study.json").read_text())
    assert spec["study"]["replicates"] == 3
    result = runner.invoke(app, ["report", str(tmp_path / "nothing")])
    assert result.exit_code != 0 and "holds no study" in _flat(result.output)


def test_shared_drive_cells_have_zero_coupling_truth_only(tmp_path):
    study = Study.from_dict({"study": {"model": "ctvar", "method": "map", "replicates": 2,
                                       "chunk": 2},
                             "grid": {"scenario": ["shared_drive"], "duration": [150]}})
    results = run_study(study, Path(tmp_path) / "sd", progress=False)
    truth = results["truth"].isel(cell=0, replicate=0).to_series()
    assert truth[["therapist_to_client", "client_to_therapist", DIFFERENCE]].eq(0).all()
    assert truth.drop(["therapist_to_client", "client_to_therapist", DIFFERENCE]).isna().all()
