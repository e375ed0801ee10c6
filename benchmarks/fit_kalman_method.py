"""Which Kalman method for a whole fit?  ``fast`` against ``sequential``, end to end.

``batch_methods.py`` times one evaluation of the batched likelihood, where ``fast``
wins.  A fit also compiles the likelihood three or four times (initial MAP, the
potential's gradient, the sampler or optimiser, the pointwise terms), and each
program that holds the ``fast`` method takes seconds longer to compile.  For a MAP
or Laplace fit (a few hundred evaluations) or a short SVI run, compiling can outweigh
the faster evaluations.  This script times whole ``coregulation.fit`` calls (fresh
process state per fit is not needed: each fit builds its own programs), CT-VAR,
3 dyads x 2 sessions, complete pooling, of 200 and 3000 steps, with Laplace (1000
draws) and SVI (5000 steps), and records which method ``kalman="auto"`` picks.  It
is the measurement behind ``_FAST_FROM_EVALUATION_STEPS`` in
``coregulation/inference/bayes.py``.

Writes ``benchmarks/results/fit_kalman_method-<commit>.json``.
Usage: ``python benchmarks/fit_kalman_method.py [--quick]`` (quick: 200 steps only).
"""

from __future__ import annotations

import sys
import time

import jax
import numpy as np
from kalman_speed import environment, write_results

import coregulation as cr
from coregulation.inference.bayes import auto_kalman_method, expected_evaluations

TRUTH = dict(tau=np.array([5.0, 8.0]), therapist_to_client=np.array(0.7),
             client_to_therapist=np.array(0.0), mu=np.zeros(2), latent_sd=np.ones(2),
             shock_corr=np.array(0.0), me_sd=np.array([0.3, 0.3]))
FITS = {"laplace": dict(method="laplace", num_samples=1000),
        "svi": dict(method="svi", svi_steps=5000, num_samples=1000)}


def main(quick: bool):
    env = environment()
    rows = []
    # warm-up (excluded): the eager, model-independent compilations of a first fit
    warm, _ = cr.simulate_dyads(cr.CTVAR(), TRUTH, jax.random.key(0), num_dyads=1, duration=50.0)
    cr.fit(cr.CTVAR(), warm, method="map", pooling=cr.Pooling(levels=()), num_predictive=0,
           progress_bar=False, warn=False)
    for duration in (200.0,) if quick else (200.0, 3000.0):
        data, _ = cr.simulate_dyads(cr.CTVAR(), TRUTH, jax.random.key(21), num_dyads=3,
                                    num_sessions=2, duration=duration)
        series_steps = 6 * int(duration)
        for label, options in FITS.items():
            evaluations = expected_evaluations(options["method"], 4, 1000, 1000,
                                               options.get("svi_steps", 1))
            auto = auto_kalman_method(evaluations, series_steps)
            times = {}
            for kalman in ("sequential", "fast"):
                start = time.perf_counter()
                cr.fit(cr.CTVAR(), data, kalman=kalman, pooling=cr.Pooling(levels=()),
                       num_predictive=0, progress_bar=False, warn=False, seed=1, **options)
                times[kalman] = time.perf_counter() - start
                rows.append(dict(benchmark="fit_kalman_method", fit=label, series=6,
                                 T=int(duration), kalman=kalman, wall_s=times[kalman],
                                 auto_picks=auto, evaluation_steps=evaluations * series_steps))
            best = min(times, key=times.get)
            verdict = "right" if auto == best else "WRONG"
            print(f"{label:8s} 6 x {int(duration):5d}: sequential {times['sequential']:6.1f} s, "
                  f"fast {times['fast']:6.1f} s; auto picks {auto} ({verdict})", flush=True)
    write_results(f"fit_kalman_method-{env['commit']}", env, rows)


if __name__ == "__main__":
    main("--quick" in sys.argv[1:])
