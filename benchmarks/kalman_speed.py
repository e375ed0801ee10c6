"""Kalman engine speed: value and value+gradient per evaluation, against dynamax and statsmodels.

For the coupled oscillator and the CT-VAR at T in {300, 600, 3000, 36000}, one dyad and
50 dyads batched (vmap), each of our methods is timed side by side with dynamax's
``lgssm_filter`` (sequential and parallel) and statsmodels' Kalman filter on the same
matrices and data.  Compile time is recorded separately from run time; memory is XLA's
compiled-memory estimate (arguments + outputs + temporaries).  The likelihoods of all
tools are compared in the same run (they must agree; dynamax is fed the state advanced
one step, since its first observation is taken at the initial state).

Writes JSON rows to ``benchmarks/results/kalman_speed-<commit>.json`` and prints a table.
Usage: ``python benchmarks/kalman_speed.py [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import coregulation as cr
from coregulation.models import TimeGrid

HERE = Path(__file__).parent
OSCILLATOR = dict(
    period=np.array([40.0, 60.0]), damping_ratio=np.array([0.2, 0.3]),
    position_therapist_to_client=0.3, position_client_to_therapist=-0.1,
    velocity_therapist_to_client=0.2, velocity_client_to_therapist=0.05,
    mu=np.zeros(2), latent_sd=np.ones(2), shock_corr=0.2, me_sd=np.array([0.3, 0.3]),
)
CTVAR = dict(
    tau=np.array([10.0, 30.0]), therapist_to_client=0.4, client_to_therapist=-0.1,
    mu=np.zeros(2), latent_sd=np.ones(2), shock_corr=0.3, me_sd=np.array([0.3, 0.4]),
)
CASES = {"oscillator": (cr.CoupledOscillator(), OSCILLATOR), "ctvar": (cr.CTVAR(), CTVAR)}


def reference_timings() -> dict:
    """A fixed workload that does not touch coregulation, timed in every run: this
    machine's speed varies between days (1.9x seen), so rows from different days are
    compared through these.  Medians of 5: a pure-Python loop (tracing and
    orchestration are Python-bound) and small numpy linear algebra."""
    def median_ms(work):
        runs = []
        for _ in range(5):
            t = time.perf_counter()
            work()
            runs.append(time.perf_counter() - t)
        return 1e3 * float(np.median(runs))

    rng = np.random.default_rng(0)
    a = rng.standard_normal((64, 64)) + 64 * np.eye(64)
    b = rng.standard_normal((64, 8))

    def python_loop():
        total = 0
        for i in range(1_000_000):
            total += i * i
        return total

    def linear_algebra():
        for _ in range(300):
            np.linalg.solve(a @ a.T, b)

    return {"python_loop_ms": median_ms(python_loop),
            "numpy_linalg_ms": median_ms(linear_algebra)}


def environment() -> dict:
    def version(name):
        try:
            return __import__(name).__version__
        except Exception:
            return None

    try:
        commit = subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=HERE,
                                         text=True).strip()
    except Exception:
        commit = "unknown"
    return {
        "commit": commit,
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "backend": jax.default_backend(),
        "device": str(jax.devices()[0]),
        "local_devices": jax.local_device_count(),
        "python": sys.version.split()[0],
        "versions": {n: version(n) for n in ("jax", "jaxlib", "numpy", "dynamax",
                                              "statsmodels", "coregulation")},
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "reference": reference_timings(),
    }


def timed(fn, *args, repeats: int, min_seconds: float = 2.0):
    """Compile time (first call) and median run time of later calls."""
    compiled = jax.jit(fn)
    t0 = time.perf_counter()
    lowered = compiled.lower(*args)
    exe = lowered.compile()
    compile_s = time.perf_counter() - t0
    try:
        mem = exe.memory_analysis()
        memory = int(mem.argument_size_in_bytes + mem.output_size_in_bytes
                     + mem.temp_size_in_bytes)
    except Exception:
        memory = None
    out = jax.block_until_ready(exe(*args))
    runs = []
    start = time.perf_counter()
    while len(runs) < repeats or (time.perf_counter() - start < min_seconds and len(runs) < 200):
        t = time.perf_counter()
        jax.block_until_ready(exe(*args))
        runs.append(time.perf_counter() - t)
    return out, compile_s, float(np.median(runs)), memory


def dynamax_params(ssm):
    from dynamax.linear_gaussian_ssm.inference import (
        ParamsLGSSM,
        ParamsLGSSMDynamics,
        ParamsLGSSMEmissions,
        ParamsLGSSMInitial,
    )

    phi, q = ssm.transition[0], ssm.process_cov[0]
    n, p = phi.shape[0], ssm.emission.shape[0]
    m1 = phi @ ssm.initial_mean
    p1 = phi @ ssm.initial_cov @ phi.T + q
    return ParamsLGSSM(
        initial=ParamsLGSSMInitial(m1, p1),
        dynamics=ParamsLGSSMDynamics(phi, jnp.zeros(n), jnp.zeros((n, 0)), q),
        emissions=ParamsLGSSMEmissions(ssm.emission, ssm.emission_offset, jnp.zeros((p, 0)),
                                       ssm.emission_cov),
    )


def statsmodels_loglik(ssm, y):
    from statsmodels.tsa.statespace.mlemodel import MLEModel

    n = ssm.initial_mean.shape[0]
    mod = MLEModel(np.asarray(y), k_states=n)
    phi, q = np.asarray(ssm.transition[0]), np.asarray(ssm.process_cov[0])
    mod["design"], mod["obs_intercept"] = np.asarray(ssm.emission), np.asarray(ssm.emission_offset)[:, None]
    mod["obs_cov"], mod["transition"] = np.asarray(ssm.emission_cov), phi
    mod["selection"], mod["state_cov"] = np.eye(n), q
    mod.ssm.initialize_known(phi @ np.asarray(ssm.initial_mean),
                             phi @ np.asarray(ssm.initial_cov) @ phi.T + q)
    return mod


def run(lengths, batches, quick: bool):
    rows = []
    from dynamax.linear_gaussian_ssm import inference as dyn_seq
    from dynamax.linear_gaussian_ssm import parallel_inference as dyn_par

    for model_name, (model, truth) in CASES.items():
        space = cr.ParameterSpace(model, cr.PriorScales(1.0, 36000.0))
        x0 = space.unconstrain(truth)
        for T in lengths:
            times = np.arange(1.0, T + 1.0)
            grid = TimeGrid.from_times(times)
            for batch in batches:
                keys = jax.random.split(jax.random.key(T), batch)
                ys = jnp.stack([jnp.asarray(cr.simulate_series(model, truth, times, k).y) for k in keys])
                hint = 0  # complete, regular data: steady state from the start

                # Complete data, one pattern for every dyad: pass the mask unbatched
                # (what dynamax, which has no missing-data handling, assumes).
                observed = np.ones((T, 2), dtype=bool)

                def ours(method):
                    def loglik(x, y):
                        ssm = model.to_lgssm(space.constrain(x), grid)
                        return cr.log_likelihood(ssm, y, method, observed=observed,
                                                 steady_from=hint if method == "fast" else None)
                    return loglik

                def peer(kind):
                    fn = dyn_seq.lgssm_filter if kind == "sequential" else dyn_par.lgssm_filter

                    def loglik(x, y):
                        ssm = model.to_lgssm(space.constrain(x), grid)
                        return fn(dynamax_params(ssm), y).marginal_loglik
                    return loglik

                tools = [(f"coregulation:{m}", ours(m)) for m in ("fast", "sequential", "parallel")]
                tools += [("dynamax:sequential", peer("sequential")),
                          ("dynamax:parallel", peer("parallel"))]
                reference = None
                for tool, loglik in tools:
                    # Associative scans are for accelerators: on this CPU their compile
                    # time explodes under vmap, so they run for one series, T <= 3000.
                    if "parallel" in tool and (T > 3000 or batch > 1):
                        continue
                    if batch == 1:  # one dyad: the plain function, as a single-dyad fit runs it
                        total = lambda x, ys, f=loglik: f(x, ys[0])  # noqa: E731
                    else:
                        total = lambda x, ys, f=loglik: jnp.sum(jax.vmap(f, (None, 0))(x, ys))  # noqa: E731
                    value, c_val, t_val, mem_val = timed(total, x0, ys, repeats=5)
                    (_, _), c_vg, t_vg, mem_vg = timed(jax.value_and_grad(total), x0, ys, repeats=5)
                    value = float(value)
                    reference = value if reference is None else reference
                    rows.append(dict(
                        benchmark="kalman_speed", model=model_name, T=T, dyads=batch, tool=tool,
                        value_s=t_val, value_grad_s=t_vg, compile_value_s=c_val,
                        compile_value_grad_s=c_vg, memory_value_grad_bytes=mem_vg,
                        memory_value_bytes=mem_val, loglik=value,
                        loglik_abs_diff_vs_fast=abs(value - reference),
                    ))
                    print(f"{model_name:10s} T={T:6d} dyads={batch:3d} {tool:24s} "
                          f"value {t_val * 1e3:9.3f} ms  value+grad {t_vg * 1e3:9.3f} ms  "
                          f"compile {c_vg:6.1f} s  |dll| {abs(value - reference):.1e}",
                          flush=True)
                if batch == 1 and T <= 3000:
                    mod = statsmodels_loglik(model.to_lgssm(truth, grid), ys[0])
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        t = time.perf_counter()
                        n_rep = 5
                        for _ in range(n_rep):
                            ll = mod.loglike([])
                        t_sm = (time.perf_counter() - t) / n_rep
                    rows.append(dict(
                        benchmark="kalman_speed", model=model_name, T=T, dyads=1,
                        tool="statsmodels:filter", value_s=t_sm, value_grad_s=None,
                        compile_value_s=0.0, compile_value_grad_s=None,
                        memory_value_grad_bytes=None, memory_value_bytes=None, loglik=float(ll),
                        loglik_abs_diff_vs_fast=abs(float(ll) - reference),
                    ))
                    print(f"{model_name:10s} T={T:6d} dyads=  1 statsmodels:filter       "
                          f"value {t_sm * 1e3:9.3f} ms  (no gradient)  |dll| "
                          f"{abs(float(ll) - reference):.1e}", flush=True)
    return rows


def memory_scaling(lengths):
    """Compiled memory of value+grad (fast method, oscillator, one series) versus T."""
    model, truth = CASES["oscillator"]
    space = cr.ParameterSpace(model, cr.PriorScales(1.0, 36000.0))
    x0 = space.unconstrain(truth)
    rows = []
    for T in lengths:
        times = np.arange(1.0, T + 1.0)
        grid = TimeGrid.from_times(times)
        y = jnp.asarray(cr.simulate_series(model, truth, times, jax.random.key(1)).y)

        def loglik(x, y):
            return cr.log_likelihood(model.to_lgssm(space.constrain(x), grid), y, "fast",
                                     steady_from=0)

        _, c, t, mem = timed(jax.value_and_grad(loglik), x0, y, repeats=3)
        rows.append(dict(benchmark="kalman_memory", model="oscillator", T=T, dyads=1,
                         tool="coregulation:fast", value_grad_s=t, compile_value_grad_s=c,
                         memory_value_grad_bytes=mem, bytes_per_step=mem / T))
        print(f"memory T={T:7d}: {mem / 2**20:8.2f} MiB ({mem / T:7.1f} B/step), "
              f"value+grad {t * 1e3:.2f} ms", flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="T <= 3000, one dyad only")
    args = parser.parse_args()
    env = environment()
    print(json.dumps(env))
    lengths = [300, 600, 3000] if args.quick else [300, 600, 3000, 36000]
    batches = [1] if args.quick else [1, 50]
    rows = run(lengths, batches, args.quick)
    rows += memory_scaling([10_000, 30_000, 100_000])
    write_results(f"kalman_speed-{env['commit']}", env, rows)


def write_results(stem: str, env: dict, rows: list) -> Path:
    """``benchmarks/results/<stem>.json``: the environment and the rows."""
    out = HERE / "results" / f"{stem}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"environment": env, "rows": rows}, indent=1))
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
