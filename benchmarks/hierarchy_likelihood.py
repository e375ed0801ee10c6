"""The likelihood of a hierarchical fit: its pieces, and the matrix exponential.

A hierarchical NUTS fit (``benchmarks/fit_speed.py`` case (ii): 40 dyads, CT-VAR,
T = 300, every parameter pooled) evaluates the batched likelihood with one set of
parameters *per series*, thousands of times, one point at a time per chain.  This
script times value + gradient of that likelihood (median of repeated calls of one
compiled program; compile time separately):

``lowering``
    parameters -> discrete state spaces (``model.to_lgssm``: Van Loan's matrix
    exponential, the stationary covariance), with our batched expm
    (``coregulation.models._discretise.expm``) and with ``jax.scipy.linalg.expm``
    swapped in;
``fast, plain vmap``
    the ``fast`` filter vmapped over series, its closed-form tail solved for
    every step (what a vmapped caller gets);
``fast, series stop together``
    what an unbatched caller gets (``unbatched_caller=True``): the series are
    vmapped over a named axis and leave the closed form together once every one
    has reached the steady state;
``fast, stop together, check 32``
    the same, checking for the steady state after 32 steps instead of 128 (what a
    fit's chains get for this case: its start point converges in 12 steps);
``sequential``
    the textbook filter, vmapped;
``plain PyMC, whole log-density``
    value and gradient of the plain PyMC model of ``fit_speed.py --tools pymc-plain``
    (PyTensor ``scan`` filter, priors and non-centred dyads included) at its
    initial point, as PyMC's NUTS calls it: what a user's own model costs per
    gradient.

and, on its own, the matrix exponential of 1 and 40 batched n x n matrices
(n = 2, 4, 8: the CT-VAR's drift, its Van Loan block, the oscillator's Van Loan
block), ours against ``jax.scipy.linalg.expm`` (and scipy's, one matrix at a time,
for the values).  Writes ``benchmarks/results/hierarchy_likelihood-<commit>.json``.
Usage: ``python benchmarks/hierarchy_likelihood.py``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
from fit_speed import CTVAR, case_data
from kalman_speed import environment, timed, write_results

from coregulation.inference import bayes
from coregulation.inference.batch import build_batch_log_likelihood
from coregulation.models import _discretise as disc
from coregulation.models.parameters import ParameterSpace


def per_series_params(problem, values=None):
    """Prior medians (or ``values``), perturbed per series (1% steps) so no two series
    share values."""
    median = (ParameterSpace(problem.model, problem.batch.scales).prior_median()
              if values is None else values)
    num = problem.batch.num_series
    return {
        k: jnp.asarray(np.broadcast_to(np.asarray(v, float), (num, *np.shape(v)))
                       * (1.0 + 0.01 * np.arange(num)).reshape((num,) + (1,) * np.ndim(v)))
        for k, v in median.items()
    }


def likelihood_rows(env):
    model, ds, pooling = case_data("ii")
    problem = bayes.build_problem(model, ds, pooling=pooling)
    batch = problem.batch
    params = per_series_params(problem)
    rows = []

    def lowering(p):
        grids = [batch.grid(0)] * batch.num_series  # regular, complete: one grid for all
        ssm = jax.vmap(lambda q: model.to_lgssm(q, grids[0]))(p)
        return sum(jnp.sum(leaf) for leaf in jax.tree.leaves(ssm)
                   if jnp.issubdtype(leaf.dtype, jnp.floating))

    variants = {
        "fast, plain vmap": build_batch_log_likelihood(model, batch, method="fast"),
        "fast, series stop together": build_batch_log_likelihood(
            model, batch, method="fast", unbatched_caller=True),
        # what a fit's chains get here: the start reaches the steady state in 12 steps
        "fast, stop together, check 32": build_batch_log_likelihood(
            model, batch, method="fast", unbatched_caller=True, converged_after=32),
        "sequential": build_batch_log_likelihood(model, batch, method="sequential"),
    }
    jax_expm = jax.scipy.linalg.expm
    ours_expm = disc.expm
    for label, expm in (("ours", ours_expm), ("jax.scipy", jax_expm)):
        disc.expm = expm  # van_loan looks the exponential up in its module
        try:
            _, compile_s, run_s, _ = timed(jax.value_and_grad(lowering), params, repeats=50)
        finally:
            disc.expm = ours_expm
        rows.append(dict(benchmark="hierarchy_likelihood", piece="lowering", expm=label,
                         series=batch.num_series, T=batch.num_timesteps,
                         value_grad_s=run_s, compile_s=compile_s))
    # Near the truth (where the posterior is), every series reaches the steady state
    # within 32 steps; at the perturbed prior medians the slowest series does not.
    near_truth = per_series_params(problem, {k: v for k, v in CTVAR.items()
                                             if k in model.free_names()})
    for label, loglik in variants.items():
        total = jax.value_and_grad(lambda p, f=loglik: jnp.sum(f(p)))
        points = {"prior medians": params}
        if "together" in label:
            points["near the truth"] = near_truth
        for at, point in points.items():
            value, compile_s, run_s, _ = timed(total, point, repeats=50)
            rows.append(dict(benchmark="hierarchy_likelihood", piece=label, expm="ours",
                             series=batch.num_series, T=batch.num_timesteps, at=at,
                             value_grad_s=run_s, compile_s=compile_s,
                             log_likelihood=float(value[0])))
    rows += interleaved_rows(variants["fast, series stop together"],
                             variants["fast, stop together, check 32"],
                             {"prior medians": params, "near the truth": near_truth}, batch)
    rows.append(plain_pymc_row(problem))
    for r in rows:
        print(f"{r['piece']:30s} {r.get('at', ''):15s} expm={r['expm']:9s} "
              f"value+grad {r['value_grad_s'] * 1e3:7.3f} ms"
              f"  compile {r['compile_s']:5.1f} s", flush=True)
    return rows


def interleaved_rows(first, second, points, batch, rounds=8, calls=20):
    """Two builds of one likelihood timed in alternating rounds (this machine's
    timings drift by tens of percent within minutes; alternating puts both under
    the same drift): median over rounds of the mean time per value + gradient."""
    import time

    rows = []
    for at, point in points.items():
        programs = [jax.jit(jax.value_and_grad(lambda p, f=f: jnp.sum(f(p))))
                    for f in (first, second)]
        for program in programs:
            jax.block_until_ready(program(point))
        runs = [[], []]
        for _ in range(rounds):
            for i, program in enumerate(programs):
                t = time.perf_counter()
                for _ in range(calls):
                    out = program(point)
                jax.block_until_ready(out)
                runs[i].append((time.perf_counter() - t) / calls)
        for label, r in zip(("check 128, interleaved", "check 32, interleaved"), runs):
            rows.append(dict(benchmark="hierarchy_likelihood", piece=label, expm="ours",
                             series=batch.num_series, T=batch.num_timesteps, at=at,
                             value_grad_s=float(np.median(r)), compile_s=float("nan")))
    return rows


def plain_pymc_row(problem):
    """The plain PyMC model of case (ii) (``fit_speed.py --tools pymc-plain``: PyTensor
    ``scan`` Kalman filter over the 40 series, non-centred dyads): value and gradient
    of its whole log-density at its initial point, as PyMC's NUTS calls it."""
    import time

    import pymc as pm
    import pytensor.tensor as pt
    from fit_speed import _plain_hierarchical_ctvar, ctvar_loglik_pytensor

    batch = problem.batch
    start = time.perf_counter()
    with pm.Model() as plain:
        v = _plain_hierarchical_ctvar(problem)
        per_series, stable = ctvar_loglik_pytensor(v, batch.y, float(batch.step_lengths[0]))
        pm.Potential("likelihood", pt.switch(pt.all(stable), pt.sum(per_series), -np.inf))
        value_and_grad = plain.logp_dlogp_function(ravel_inputs=True)
    value_and_grad.set_extra_values({})
    point = plain.initial_point()
    x = np.concatenate([np.ravel(point[v.name]) for v in value_and_grad._grad_vars])
    value, _ = value_and_grad(x)
    compile_s = time.perf_counter() - start
    runs = []
    began = time.perf_counter()
    while len(runs) < 20 or time.perf_counter() - began < 2.0:
        t = time.perf_counter()
        value_and_grad(x)
        runs.append(time.perf_counter() - t)
    return dict(benchmark="hierarchy_likelihood", piece="plain PyMC, whole log-density",
                expm="pytensor", series=batch.num_series, T=batch.num_timesteps,
                value_grad_s=float(np.median(runs)), compile_s=compile_s,
                log_density=float(value), dimension=int(x.size))


def expm_rows():
    rng = np.random.default_rng(0)
    rows = []
    for n in (2, 4, 8):
        for batch in (1, 40):
            a = jnp.asarray(-0.3 * np.eye(n) + 0.5 * rng.normal(size=(batch, n, n)))
            reference = np.stack([scipy.linalg.expm(m) for m in np.asarray(a)])
            for label, fn in (("ours", disc.expm),
                              ("jax.scipy", jax.vmap(jax.scipy.linalg.expm))):
                loss = jax.value_and_grad(lambda m, f=fn: jnp.sum(f(m) ** 2))
                _, compile_s, run_s, _ = timed(loss, a, repeats=100, min_seconds=1.0)
                error = float(np.max(np.abs(np.asarray(jax.jit(fn)(a)) - reference)))
                rows.append(dict(benchmark="expm", n=n, batch=batch, expm=label,
                                 value_grad_s=run_s, compile_s=compile_s,
                                 max_abs_error_vs_scipy=error))
                print(f"expm n={n} batch={batch:2d} {label:9s} value+grad {run_s * 1e3:7.3f} ms "
                      f"compile {compile_s:4.2f} s  |error| {error:.1e}", flush=True)
    return rows


def main():
    env = environment()
    rows = likelihood_rows(env) + expm_rows()
    write_results(f"hierarchy_likelihood-{env['commit']}", env, rows)


if __name__ == "__main__":
    main()
