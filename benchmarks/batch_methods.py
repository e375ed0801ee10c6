"""Which Kalman method for a batch of series? ``fast`` against ``sequential`` and ``parallel``.

The likelihood of a study runs every dyad-session through one ``vmap``
(``coregulation.inference.batch``).  Under ``vmap`` the ``fast`` method's run-time
switch (stop the closed-form tail at the steady state) becomes a select that
computes both branches, and missing values move or remove its steady tail, so its
advantage over the sequential filter is not the single-series one.  This script
times value + gradient of the summed batch log-likelihood, 1, 8 and 40 series of
T = 300 at 1 s, for the oscillator and the CT-VAR, with complete data, 5% values
missing at random, and artefact bursts (20 per hour and role).  It is the
measurement behind ``method="auto"`` for batches.

Writes ``benchmarks/results/batch_methods-<commit>.json``.
Usage: ``python benchmarks/batch_methods.py``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from kalman_speed import CASES, environment, timed, write_results

import coregulation as cr
from coregulation.inference.batch import SeriesBatch, build_batch_log_likelihood

METHODS = ("fast", "sequential", "parallel")
MISSING = {"complete": (0.0, 0.0), "5% at random": (0.05, 0.0), "bursts 20/h": (0.0, 20.0)}


def main():
    env = environment()
    rows = []
    for model_name, (model, truth) in CASES.items():
        params = {k: jnp.asarray(v) for k, v in truth.items() if k in model.free_names()}
        for num in (1, 8, 40):
            for pattern, (rate, bursts) in MISSING.items():
                data, _ = cr.simulate_dyads(model, params, jax.random.key(2), num_dyads=num,
                                            duration=300.0, missing_rate=rate, burst_rate=bursts)
                batch = SeriesBatch.from_dataset(data)
                times = {}
                for method in METHODS:
                    loglik = build_batch_log_likelihood(model, batch, method=method)
                    total = jax.value_and_grad(lambda p, f=loglik: jnp.sum(f(p)))
                    _, compile_s, run_s, _ = timed(total, params, repeats=20)
                    times[method] = run_s
                    rows.append(dict(benchmark="batch_methods", model=model_name, series=num,
                                     T=300, missing=pattern, steady_from=batch.steady_from,
                                     method=method, value_grad_s=run_s, compile_s=compile_s))
                print(f"{model_name:10s} series={num:3d} {pattern:13s} steady_from="
                      f"{batch.steady_from!s:5s} " + "  ".join(
                          f"{m} {t * 1e3:7.2f} ms" for m, t in times.items()), flush=True)
    write_results(f"batch_methods-{env['commit']}", env, rows)


if __name__ == "__main__":
    main()
