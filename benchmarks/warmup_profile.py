"""Where a fit's leapfrog steps go: warm-up window by window, then sampling.

Wall time on this 2-core machine drifts by tens of per cent within an hour, so two
fits run an hour apart cannot be compared by their wall times.  The number of
leapfrog steps (each one value and gradient of the potential) does not drift: for the
same seed it is a property of the code.  This script fits case (i) or (ii) of
``fit_speed.py`` (4 chains x (1000 + 1000), seed 0) and records every chain's tree
size at each warm-up iteration, averaged over numpyro's adaptation windows
(initial fast window 0-75, slow windows 75-100, 100-150, 150-250, 250-450, 450-950,
final fast window 950-1000), with the step size at the end of each, and the steps
of the sampling phase.

numpyro's ``MCMC.run`` keeps no statistics of the warm-up, so this script wraps it:
``warmup(collect_warmup=True)`` first, then ``run`` from the warmed-up state.  The
warm-up is the same as in one ``run`` (same key, same states); the sampling phase
draws from another key, and the program compiles twice, so the wall times here are
not a fit's (``fit_speed.py`` measures those).

    python benchmarks/warmup_profile.py --case ii
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

import jax  # noqa: E402
import numpyro.infer.mcmc as numpyro_mcmc  # noqa: E402
from fit_speed import case_data  # noqa: E402
from kalman_speed import environment, write_results  # noqa: E402
from numpyro.infer.hmc_util import build_adaptation_schedule  # noqa: E402

import coregulation as cr  # noqa: E402


def profiled_fit(case: str, seed: int, num_warmup: int, num_samples: int) -> dict:
    record: dict = {}
    original = numpyro_mcmc.MCMC.run

    def run(self, key, *args, init_params=None, extra_fields=(), **kwargs):
        if record.get("inside"):  # ``warmup`` itself calls ``run``
            return original(self, key, *args, init_params=init_params,
                            extra_fields=extra_fields, **kwargs)
        record["inside"] = True
        start = time.perf_counter()
        self.warmup(key, init_params=init_params, collect_warmup=True,
                    extra_fields=("num_steps", "adapt_state.step_size"))
        fields = self.get_extra_fields(group_by_chain=True)
        record["steps"] = np.asarray(fields["num_steps"])
        record["step_size"] = np.asarray(fields["adapt_state.step_size"])
        record["warmup_s"] = time.perf_counter() - start
        record["inside"] = False
        start = time.perf_counter()
        out = original(self, key, *args, init_params=init_params, extra_fields=extra_fields,
                       **kwargs)
        jax.block_until_ready(self._states)
        record["sampling_s"] = time.perf_counter() - start
        return out

    model, ds, pooling = case_data(case)
    numpyro_mcmc.MCMC.run = run
    try:
        fit = cr.fit(model, ds, pooling=pooling, seed=seed, warn=False, progress_bar=False,
                     num_predictive=0, num_chains=4, num_warmup=num_warmup,
                     num_samples=num_samples)
    finally:
        numpyro_mcmc.MCMC.run = original
    steps, step_size = record["steps"], record["step_size"]
    windows = []
    for window in build_adaptation_schedule(num_warmup):
        first, last = int(window.start), int(window.end) + 1
        windows.append({
            "iterations": [first, last],
            "mean_steps": float(steps[:, first:last].mean()),
            "steps_per_chain": steps[:, first:last].sum(axis=1).tolist(),
            "step_size_at_end": step_size[:, last - 1].tolist(),
        })
    sampling = fit.idata.sample_stats["n_steps"].values
    return {
        "benchmark": "warmup_profile", "case": case, "seed": seed, "num_chains": 4,
        "num_warmup": num_warmup, "num_samples": num_samples,
        "warmup_steps_per_chain": steps.sum(axis=1).tolist(),
        "sampling_steps_per_chain": sampling.sum(axis=1).tolist(),
        "sampling_mean_steps": float(sampling.mean()),
        "windows": windows,
        "warmup_wall_s_with_compile": record["warmup_s"],
        "sampling_wall_s_with_compile": record["sampling_s"],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=("i", "ii"), default="ii")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-warmup", type=int, default=1000)
    parser.add_argument("--num-samples", type=int, default=1000)
    args = parser.parse_args()
    row = profiled_fit(args.case, args.seed, args.num_warmup, args.num_samples)
    for w in row["windows"]:
        first, last = w["iterations"]
        print(f"warm-up {first:4d}-{last:4d}: {w['mean_steps']:6.1f} steps per iteration, "
              f"step size at end {np.round(w['step_size_at_end'], 3)}")
    print("warm-up steps per chain", row["warmup_steps_per_chain"])
    print("sampling steps per chain", row["sampling_steps_per_chain"])
    env = environment()
    write_results(f"warmup_profile-{env['commit']}-case-{args.case}", env, [row])


if __name__ == "__main__":
    main()
