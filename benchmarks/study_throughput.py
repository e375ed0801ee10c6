"""Fits per minute of a single-dyad oscillator recovery/SBC study (issue 4's benchmark).

Tools, same model (CoupledOscillator, T = 600 at 1 s, default priors), same NUTS
settings, wall time including compilation:

* ``coregulation (batched)``: one ``vmap``-ed NUTS over all replicates x chains in
  one process (``run_study`` with one chunk);
* ``coregulation (Dask LocalCluster, 2 workers)``: the same study as two chunks on
  a local Dask cluster of two single-threaded worker processes;
* ``coregulation Laplace``: the same study with the Laplace approximation (not NUTS;
  for scale only, ``--tools laplace``);
* ``dyads`` / ``dyads-fit-loop`` (not in the default run): a many-dyad cell
  (hierarchical CT-VAR, 5 dyads x 300 s, NUTS) through the study runner's one
  compiled program, against a loop over ``coregulation.fit``;
* ``simuk-pymc``: simuk's SBC loop over the same model written in PyMC, as the
  issue names it: the plain PyMC model of ``fit_speed.py`` (exact discretisation
  and a textbook Kalman filter in PyTensor ``scan``) as a ``pm.CustomDist`` whose
  draws come from our exact simulator, sampled by ``pm.sample`` with its defaults
  (one fit per simulated dataset; ``--simuk-replicates`` of them, this loop takes
  about 20 minutes per fit on 2 cores);
* ``simuk``: simuk's SBC loop over the same model written as a NumPyro model whose
  observation is a distribution with our exact Kalman log-likelihood (its default
  method) and our exact simulator, chains in parallel on the CPU devices as ours: a
  stronger baseline than the issue asks for (it borrows our likelihood).

Only throughput is compared with simuk: simuk draws from the untruncated prior, so
some of its datasets come from unstable systems (those start at 0 with unit
covariance and are clipped, see ``_simulate_clipped``), and their posteriors are
hard for NUTS.

Run: ``python benchmarks/study_throughput.py [--replicates 8] [--simuk-replicates 2] [--quick]``; writes
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


def _simulate_clipped(model, params, grid, key):
    """Our exact simulator for any prior draw: an unstable draw has no stationary
    start, so it starts at 0 with unit covariance, and its series is clipped."""
    from coregulation.simulate import sample_lgssm

    ssm = model.to_lgssm(params, grid)
    stable = model.is_stable(params)
    ssm = ssm._replace(initial_cov=jnp.where(stable, ssm.initial_cov,
                                             jnp.eye(ssm.initial_cov.shape[0])))
    _, y = sample_lgssm(key, ssm)
    return jnp.clip(jnp.nan_to_num(y), -1e3, 1e3)


class _OverBudget(BaseException):  # not swallowed by a library's `except Exception`
    pass


def _run_with_budget(sbc, budget: float) -> dict:
    """Run simuk's loop for at most ``budget`` seconds (0: no limit).

    simuk keeps the simulations that finished when its loop is interrupted.  A row
    stopped at the budget has ``replicates`` = finished fits and ``stopped_at_budget``
    set, and ``fits_per_minute_bound`` = (finished + 1) per ``seconds``: the unfinished
    fit would have needed at least the time that was left, so simuk's rate is below it.
    """
    import signal

    fired = []

    def stop(signum, frame):
        fired.append(True)
        raise _OverBudget

    previous = signal.signal(signal.SIGALRM, stop)
    if budget:
        signal.setitimer(signal.ITIMER_REAL, budget)
    start = time.perf_counter()
    stopped = False
    try:
        sbc.run_simulations()
    except (_OverBudget, ValueError):
        # simuk's own clean-up fails with a ValueError when no fit had finished
        if not fired:
            raise
        stopped = True
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    elapsed = time.perf_counter() - start
    row = {"seconds": elapsed, "replicates": int(sbc._simulations_complete),
           "stopped_at_budget": stopped}
    if stopped:
        row["fits_per_minute_bound"] = 60.0 * (row["replicates"] + 1) / elapsed
    return row


def _simuk():
    try:
        import simuk
    except ImportError:
        print("simuk is not installed (pip install simuk): its row is skipped")
        return None
    return simuk


def _oscillator_problem():
    """The study's model, times, time grid and parameter table (default priors)."""
    model = cr.CoupledOscillator()
    times = np.arange(1.0, DURATION + 1.0)
    return (model, times, TimeGrid.from_times(times),
            model.parameter_table(PriorScales(1.0, DURATION, 1.0)))


def simuk_pymc_loop(args) -> dict | None:
    """simuk's SBC loop over the oscillator written in plain PyMC (what the issue names)."""
    simuk = _simuk()
    if simuk is None:
        return None
    import pymc as pm
    import pytensor.tensor as pt
    from fit_speed import OSCILLATOR, oscillator_loglik_pytensor

    from coregulation.inference.pymc_backend import pymc_prior

    model, times, grid, table = _oscillator_problem()
    names = [p.name for p in table]
    simulate = jax.jit(lambda params, key: _simulate_clipped(model, params, grid, key))

    # the last parameter is a (time, role) template: it gives PyMC the series' shape
    def logp(value, *params):
        loglik, stable = oscillator_loglik_pytensor(dict(zip(names, params[:-1])), value, 1.0)
        return pt.switch(stable, loglik, -np.inf)

    def random(*params, rng=None, size=None):
        key = jax.random.key(int(rng.integers(2**31)))
        values = {n: jnp.asarray(v, dtype=float) for n, v in zip(names, params[:-1])}
        return np.asarray(simulate(values, key))

    with pm.Model() as pymc_model:
        v = {p.name: pymc_prior(p.name, p.prior, p.shape) for p in table}
        # core shapes: vectors are per role, the series is (time, role)
        signature = ",".join("(r)" if p.shape else "()" for p in table) + ",(t,r)->(t,r)"
        pm.CustomDist("y", *[v[n] for n in names], pt.zeros((times.size, 2)), logp=logp,
                      random=random, signature=signature,
                      observed=np.zeros((times.size, 2)))  # simuk replaces it per dataset
    # the same model: its log-density of a simulated series equals ours at the truth
    from coregulation.inference.kalman import log_likelihood
    truth = {n: jnp.asarray(OSCILLATOR[n], dtype=float) for n in names}
    series = simulate(truth, jax.random.key(99))
    theirs = float(logp(pt.as_tensor_variable(np.asarray(series)),
                        *[pt.as_tensor_variable(np.asarray(truth[n])) for n in names],
                        None).eval())
    ours = float(log_likelihood(model.to_lgssm(truth, grid), series))
    replicates = args.simuk_replicates or args.replicates
    # pm.sample with its defaults (cores, init, target_accept); simuk turns off the
    # progress bar and convergence checks
    sbc = simuk.SBC(pymc_model, num_simulations=replicates,
                    sample_kwargs={"draws": args.samples, "tune": args.warmup,
                                   "chains": args.chains},
                    seed=3)
    return {"tool": f"simuk {simuk.__version__} (plain PyMC model, pm.sample loop)",
            **_run_with_budget(sbc, args.simuk_budget), "loglik_abs_diff_vs_ours": abs(theirs - ours)}


def _dyads_study(args, method):
    fit = ({"num_warmup": args.warmup, "num_samples": args.samples, "num_chains": args.chains}
           if method == "nuts" else {"num_samples": args.samples * args.chains})
    return Study(name="dyads", model="ctvar", method=method, replicates=args.replicates,
                 seed=4, chunk=args.replicates, truth={"tau": [5.0, 8.0]}, fit=fit,
                 grid={"coupling": ["therapist_led"], "coupling_size": [0.3],
                       "num_dyads": [DYADS], "duration": [300.0]})


DYADS = 5


def ours_dyads(args) -> dict:
    """A many-dyad cell (CT-VAR, 5 dyads x 300 s, every parameter pooled): all
    replicates through one compiled hierarchical program (``run_study``)."""
    out = Path(tempfile.mkdtemp())
    start = time.perf_counter()
    run_study(_dyads_study(args, "nuts"), out, progress=False)
    elapsed = time.perf_counter() - start
    shutil.rmtree(out)
    return {"tool": f"coregulation, {DYADS}-dyad hierarchical CT-VAR cell (batched)",
            "seconds": elapsed}


def fit_loop_dyads(args) -> dict:
    """The same cell as a loop over ``coregulation.fit`` (what the study runner did
    before, and what a user's own loop does): one fit, with its compilations, per
    replicate."""
    import warnings

    from coregulation.simulate.recovery import cell_truth, simulate_replicate

    study = _dyads_study(args, "nuts")
    truth = cell_truth(study, study.cells()[0])
    model = study.build_model()
    datasets = [simulate_replicate(study, 0, r, truth) for r in range(args.replicates)]
    start = time.perf_counter()
    for r, ds in enumerate(datasets):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cr.fit(model, ds, method="nuts", seed=r, num_predictive=0, progress_bar=False,
                   warn=False, standardise=False, num_warmup=args.warmup,
                   num_samples=args.samples, num_chains=args.chains)
    elapsed = time.perf_counter() - start
    return {"tool": f"coregulation.fit in a loop, same {DYADS}-dyad cell", "seconds": elapsed}


def simuk_loop(args) -> dict | None:
    simuk = _simuk()
    if simuk is None:
        return None
    import numpyro
    import numpyro.distributions as dist
    from numpyro.distributions import constraints
    from numpyro.infer import NUTS
    from numpyro.infer.initialization import init_to_median

    from coregulation.inference.kalman import log_likelihood

    model, times, grid, table = _oscillator_problem()

    class _KalmanSeries(dist.Distribution):
        """The series' exact Gaussian: our Kalman log-likelihood and our simulator."""

        support = constraints.real
        reparametrized_params = []

        def __init__(self, params):
            self.params = params
            super().__init__(batch_shape=(), event_shape=(times.size, 2))

        def sample(self, key, sample_shape=()):
            return _simulate_clipped(model, self.params, grid, key)

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
    replicates = args.simuk_replicates or args.replicates
    sbc = simuk.SBC(NUTS(numpyro_model, init_strategy=init_to_median),
                    num_simulations=replicates, data_dir={"y": np.zeros((times.size, 2))},
                    sample_kwargs={"num_warmup": args.warmup, "num_samples": args.samples,
                                   "num_chains": args.chains, "chain_method": chain_method,
                                   "progress_bar": False},
                    seed=3)
    return {"tool": f"simuk {simuk.__version__} (NumPyro NUTS loop, our likelihood)",
            **_run_with_budget(sbc, args.simuk_budget)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicates", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--chains", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="4 replicates, 100 + 100 draws")
    parser.add_argument("--simuk-replicates", type=int, default=2,
                        help="datasets for the simuk loops (0: --replicates); the plain-"
                             "PyMC loop takes about 20 min per dataset on 2 cores")
    parser.add_argument("--simuk-budget", type=float, default=0.0,
                        help="seconds for each simuk loop (0: no limit); a loop stopped "
                             "there records its finished fits and a rate bound")
    parser.add_argument("--tools", default="batched,dask,simuk-pymc,simuk")
    args = parser.parse_args()
    if args.quick:
        args.replicates, args.warmup, args.samples = 4, 100, 100
    env = environment()
    rows = []
    stem = (f"study_throughput-{env['commit']}" + ("-quick" if args.quick else "")
            + ("" if args.tools == "batched,dask,simuk-pymc,simuk" else "-" + args.tools.replace(",", "-")))
    runners = {"batched": ours_batched, "dask": ours_dask, "simuk-pymc": simuk_pymc_loop,
               "simuk": simuk_loop, "laplace": ours_laplace, "dyads": ours_dyads,
               "dyads-fit-loop": fit_loop_dyads}
    for name in args.tools.split(","):
        row = runners[name](args)
        if row is None:
            continue
        row.setdefault("replicates", args.replicates)
        dyads = name.startswith("dyads")
        row.update(benchmark="study_throughput", model="ctvar" if dyads else "oscillator",
                   T=300 if dyads else int(DURATION), dyads=DYADS if dyads else 1,
                   chains=args.chains, warmup=args.warmup, samples=args.samples,
                   fits_per_minute=60.0 * row["replicates"] / row["seconds"])
        if row.get("stopped_at_budget"):
            print(f"{row['tool']}: stopped at the budget after {row['replicates']} fit(s); "
                  f"its rate is below {row['fits_per_minute_bound']:.3f} fits/min", flush=True)
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
