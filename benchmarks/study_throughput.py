"""Fits per minute of a single-dyad oscillator recovery/SBC study (issue 4's benchmark).

Tools, same model (CoupledOscillator, T = 600 at 1 s, default priors), same NUTS
settings, wall time including compilation:

* ``coregulation (batched)``: one ``vmap``-ed NUTS over all replicates x chains in
  one process (``run_study`` with one chunk);
* ``coregulation (Dask LocalCluster, 2 workers)``: the same study as two chunks on
  a local Dask cluster of two single-threaded worker processes;
* ``coregulation Laplace``: the same study with the Laplace approximation (not NUTS;
  for scale only, ``--tools laplace``);
* ``simuk``: simuk's SBC loop (one NumPyro MCMC per simulated dataset) over the
  same model written as a NumPyro model whose observation is a distribution with
  our exact Kalman log-likelihood (its default method) and our exact simulator,
  chains in parallel on the CPU devices as ours; only its throughput is
  compared (simuk draws from the untruncated prior, so some of its datasets come
  from unstable systems: those start at 0 with unit covariance and are clipped, see
  ``_KalmanSeries``, and their posteriors are hard for NUTS).

Run: ``python benchmarks/study_throughput.py [--replicates 20] [--quick]``; writes
``benchmarks/results/study_throughput-<commit>.json`` and prints a table for RESULTS.md.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from kalman_speed import environment, write_results  # noqa: E402

import coregulation as cr  # noqa: E402
from coregulation.models import PriorScales, TimeGrid  # noqa: E402
from coregulation.simulate.recovery import run_study  # noqa: E402
from coregulation.simulate.study import Study  # noqa: E402

DURATION = 600.0


def study(replicates: int, chunk: int, warmup: int, samples: int, chains: int,
          method: str = "nuts") -> Study:
    fit = ({"num_warmup": warmup, "num_samples": samples, "num_chains": chains}
           if method == "nuts" else {"num_samples": samples * chains})
    return Study(name="throughput", kind="sbc", model="oscillator", method=method,
                 replicates=replicates, seed=3, chunk=chunk, grid={"duration": [DURATION]},
                 fit=fit)


def ours_batched(args) -> dict:
    out = Path(tempfile.mkdtemp())
    start = time.perf_counter()
    run_study(study(args.replicates, args.replicates, args.warmup, args.samples, args.chains),
              out, progress=False)
    elapsed = time.perf_counter() - start
    shutil.rmtree(out)
    return {"tool": "coregulation (batched, 1 process)", "seconds": elapsed}


def ours_laplace(args) -> dict:
    """The Laplace approximation instead of NUTS (a different method: fast, but the
    SBC tier shows it miscalibrated for time constants and latent SDs)."""
    out = Path(tempfile.mkdtemp())
    start = time.perf_counter()
    run_study(study(args.replicates, args.replicates, args.warmup, args.samples, args.chains,
                    method="laplace"), out, progress=False)
    elapsed = time.perf_counter() - start
    shutil.rmtree(out)
    return {"tool": "coregulation Laplace (batched, 1 process; not NUTS)", "seconds": elapsed}


def ours_dask(args) -> dict:
    from distributed import Client, LocalCluster

    out = Path(tempfile.mkdtemp())
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        client.run(lambda: __import__("coregulation"))  # workers import before the clock
        start = time.perf_counter()
        run_study(study(args.replicates, max(args.replicates // 2, 1), args.warmup,
                        args.samples, args.chains), out, scheduler=client, progress=False)
        elapsed = time.perf_counter() - start
    shutil.rmtree(out)
    return {"tool": "coregulation (Dask LocalCluster, 2 workers)", "seconds": elapsed}


def simuk_loop(args) -> dict | None:
    try:
        import simuk
    except ImportError:
        print("simuk is not installed (pip install simuk): its row is skipped")
        return None
    import numpyro
    import numpyro.distributions as dist
    from numpyro.distributions import constraints
    from numpyro.infer import NUTS
    from numpyro.infer.initialization import init_to_median

    from coregulation.inference.kalman import log_likelihood
    from coregulation.simulate import sample_lgssm

    model = cr.CoupledOscillator()
    times = np.arange(1.0, DURATION + 1.0)
    grid = TimeGrid.from_times(times)
    table = model.parameter_table(PriorScales(1.0, DURATION, 1.0))

    class _KalmanSeries(dist.Distribution):
        """The series' exact Gaussian: our Kalman log-likelihood and our simulator."""

        support = constraints.real
        reparametrized_params = []

        def __init__(self, params):
            self.params = params
            super().__init__(batch_shape=(), event_shape=(times.size, 2))

        def sample(self, key, sample_shape=()):
            ssm = model.to_lgssm(self.params, grid)
            # an unstable draw has no stationary start: start at 0 with unit covariance
            stable = model.is_stable(self.params)
            ssm = ssm._replace(initial_cov=jnp.where(stable, ssm.initial_cov,
                                                     jnp.eye(ssm.initial_cov.shape[0])))
            _, y = sample_lgssm(key, ssm)
            return jnp.clip(jnp.nan_to_num(y), -1e3, 1e3)

        def log_prob(self, value):
            value = jnp.asarray(value)
            ll = log_likelihood(model.to_lgssm(self.params, grid), value)  # method "auto"
            return jnp.where(model.is_stable(self.params) & jnp.isfinite(ll), ll, -jnp.inf)

    def numpyro_model(y=None):
        params = {p.name: numpyro.sample(p.name, p.prior) for p in table}
        numpyro.sample("y", _KalmanSeries(params), obs=y)

    # chains on their own CPU devices, as ours (the process has them: coregulation asked
    # JAX for them on import; numpyro.set_host_device_count is a NumPyro user's way)
    chain_method = "parallel" if jax.local_device_count() >= args.chains else "sequential"
    # NumPyro's default uniform start finds no finite density for these models: start at
    # the prior median, as a user would
    sbc = simuk.SBC(NUTS(numpyro_model, init_strategy=init_to_median),
                    num_simulations=args.replicates, data_dir={"y": np.zeros((times.size, 2))},
                    sample_kwargs={"num_warmup": args.warmup, "num_samples": args.samples,
                                   "num_chains": args.chains, "chain_method": chain_method,
                                   "progress_bar": False},
                    seed=3)
    start = time.perf_counter()
    sbc.run_simulations()
    elapsed = time.perf_counter() - start
    return {"tool": f"simuk {simuk.__version__} (NumPyro NUTS loop)", "seconds": elapsed}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicates", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--chains", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="4 replicates, 100 + 100 draws")
    parser.add_argument("--tools", default="batched,dask,simuk")
    args = parser.parse_args()
    if args.quick:
        args.replicates, args.warmup, args.samples = 4, 100, 100
    env = environment()
    rows = []
    stem = (f"study_throughput-{env['commit']}" + ("-quick" if args.quick else "")
            + ("" if args.tools == "batched,dask,simuk" else "-" + args.tools.replace(",", "-")))
    runners = {"batched": ours_batched, "dask": ours_dask, "simuk": simuk_loop,
               "laplace": ours_laplace}
    for name in args.tools.split(","):
        row = runners[name](args)
        if row is None:
            continue
        row.update(benchmark="study_throughput", model="oscillator", T=int(DURATION),
                   replicates=args.replicates, chains=args.chains, warmup=args.warmup,
                   samples=args.samples, fits_per_minute=60.0 * args.replicates / row["seconds"])
        print(f"{row['tool']}: {row['seconds']:.0f} s, {row['fits_per_minute']:.2f} fits/min",
              flush=True)
        rows.append(row)
        write_results(stem, env, rows)  # after every tool: a later failure loses nothing
    print("\n| tool | replicates | chains x (warm-up + draws) | wall (s) | fits per minute |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['tool']} | {r['replicates']} | {r['chains']} x ({r['warmup']} + "
              f"{r['samples']}) | {r['seconds']:.0f} | {r['fits_per_minute']:.2f} |")


if __name__ == "__main__":
    main()
