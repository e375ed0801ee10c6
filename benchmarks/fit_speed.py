"""Bayesian fit speed: wall time, ESS and ESS per second, side by side in one run.

Cases (issue 3):

(i)  one dyad, coupled oscillator, T = 600 (1 s steps);
(ii) 40 dyads, CT-VAR with every parameter pooled across dyads, T = 300 each.

Tools, all on the same simulated data, priors, hierarchy and sampler settings:

``coregulation``
    ``coregulation.fit`` (NumPyro NUTS on our batched Kalman likelihood, MAP
    start, curvature-scaled initial mass matrix).
``coregulation-pymc:nutpie``, ``coregulation-pymc:pymc``
    Our PyMC back end (the same hierarchy in PyMC, the likelihood as a PyTensor Op
    around our JAX likelihood), sampled by nutpie (JAX backend) or PyMC's NUTS.
``numpyro+dynamax``
    What a user writes without us: the same NumPyro model (our priors and
    hierarchy) with dynamax's ``lgssm_filter`` as the likelihood of each series
    (vmapped), sampled by NumPyro NUTS with its default initialisation.

Each row records wall time (including compilation and initialisation), minimum
bulk and tail ESS over the sampled parameters, ESS per second, divergences and
maximum R-hat.  Run ``python benchmarks/fit_speed.py`` (full settings: 4 chains x
1000 warm-up + 1000 draws) or ``--quick``; ``--case i`` / ``--case ii`` for one case.
Rows go to ``benchmarks/results/fit_speed-<commit>.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

import arviz as az  # noqa: E402
from numpyro.infer import MCMC, NUTS, init_to_median  # noqa: E402

import coregulation as cr  # noqa: E402
from coregulation.inference import bayes  # noqa: E402
from coregulation.inference.hierarchy import build_numpyro_model  # noqa: E402
from coregulation.models._base import TimeGrid  # noqa: E402

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from kalman_speed import dynamax_params, environment, write_results  # noqa: E402

OSCILLATOR = dict(
    period=np.array([20.0, 30.0]), damping_ratio=np.array([0.2, 0.3]),
    position_therapist_to_client=np.array(0.3), position_client_to_therapist=np.array(0.0),
    velocity_therapist_to_client=np.array(0.0), velocity_client_to_therapist=np.array(0.0),
    mu=np.zeros(2), latent_sd=np.ones(2), shock_corr=np.array(0.2), me_sd=np.array([0.3, 0.3]),
)
CTVAR = dict(
    tau=np.array([5.0, 8.0]), therapist_to_client=np.array(0.4),
    client_to_therapist=np.array(0.0), mu=np.zeros(2), latent_sd=np.ones(2),
    shock_corr=np.array(0.2), me_sd=np.array([0.3, 0.3]),
)


def case_data(case: str):
    if case == "i":
        model = cr.CoupledOscillator()
        truth = {k: v for k, v in OSCILLATOR.items() if k in model.free_names()}
        ds, _ = cr.simulate_dyads(model, truth, jax.random.key(1), num_dyads=1,
                                  num_sessions=1, duration=600.0)
        return model, ds, cr.Pooling(levels=())
    model = cr.CTVAR()
    ds, _ = cr.simulate_dyads(model, CTVAR, jax.random.key(2), num_dyads=40, num_sessions=1,
                              duration=300.0, dyad_sd={"therapist_to_client": 0.2})
    return model, ds, cr.Pooling()


def summarise(posterior: dict, names, wall: float, divergences: int) -> dict:
    idata = az.from_dict(posterior={k: v for k, v in posterior.items() if k in names})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bulk = az.ess(idata, method="bulk")
        tail = az.ess(idata, method="tail")
        rhat = az.rhat(idata)
    min_bulk = min(float(np.nanmin(bulk[n].values)) for n in bulk.data_vars)
    min_tail = min(float(np.nanmin(tail[n].values)) for n in tail.data_vars)
    return {
        "wall_s": wall, "min_ess_bulk": min_bulk, "min_ess_tail": min_tail,
        "ess_bulk_per_s": min_bulk / wall, "divergences": int(divergences),
        "max_rhat": max(float(np.nanmax(rhat[n].values)) for n in rhat.data_vars),
    }


def run_ours(model, ds, pooling, settings, seed, **backend):
    start = time.perf_counter()
    fit = cr.fit(model, ds, pooling=pooling, seed=seed, warn=False, progress_bar=False,
                 num_predictive=0, **backend, **settings)
    wall = time.perf_counter() - start
    post = fit.idata.posterior
    names = [v for v in fit.sampled_variables() if v != "dyad_corr_chol"]
    draws = {n: post[n].values for n in names}
    return summarise(draws, names, wall, int(fit.idata.sample_stats["diverging"].sum()))


def dynamax_batch_log_likelihood(model, batch):
    """Per-series log-likelihoods by dynamax's sequential filter (complete, regular data)."""
    from dynamax.linear_gaussian_ssm.inference import lgssm_filter

    if not batch.observed.all() or not batch.valid.all():
        raise ValueError("the dynamax comparison needs complete, equally long series.")
    grid = TimeGrid.from_times(batch.times[0])
    y = jnp.asarray(batch.y)
    table = {p.name: p for p in model.parameter_table(batch.scales)}

    def one(params, y_s):
        ssm = model.to_lgssm(params, grid)
        value = lgssm_filter(dynamax_params(ssm), y_s).marginal_loglik
        return jnp.where(model.is_stable(params) & jnp.isfinite(value), value, -jnp.inf)

    def batch_log_likelihood(params):
        axes = {n: (None if jnp.ndim(params[n]) == len(p.shape) else 0) for n, p in table.items()}
        return jax.vmap(one, in_axes=(axes, 0))({n: params[n] for n in table}, y)

    return batch_log_likelihood


def run_dynamax(model, ds, pooling, settings, seed):
    start = time.perf_counter()
    problem = bayes.build_problem(model, ds, pooling=pooling)
    ll = dynamax_batch_log_likelihood(model, problem.batch)
    numpyro_model = build_numpyro_model(problem.design, ll)
    # NumPyro's default start (uniform on (-2, 2) unconstrained) finds no finite
    # log-density for these models; prior medians are the usual user's fix.
    mcmc = MCMC(NUTS(numpyro_model, init_strategy=init_to_median), num_warmup=settings["num_warmup"],
                num_samples=settings["num_samples"], num_chains=settings["num_chains"],
                chain_method="vectorized", progress_bar=False)
    mcmc.run(jax.random.key(seed), extra_fields=("diverging",))
    samples = mcmc.get_samples(group_by_chain=True)
    wall = time.perf_counter() - start
    names = [n for n in samples if not n.startswith(("series__", "dyad__", "log_lik"))
             and n != "dyad_corr_chol"]
    draws = {n: np.asarray(samples[n]) for n in names}
    divergences = int(np.asarray(mcmc.get_extra_fields()["diverging"]).sum())
    return summarise(draws, names, wall, divergences)


def _pymc_tool(sampler):
    def run(model, ds, pooling, settings, seed):
        return run_ours(model, ds, pooling, settings, seed, backend="pymc", sampler=sampler)
    return run


TOOLS = {
    "coregulation": run_ours,
    "coregulation-pymc:nutpie": _pymc_tool("nutpie"),
    "coregulation-pymc:pymc": _pymc_tool("pymc"),
    "numpyro+dynamax": run_dynamax,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 chains x 200 + 200")
    parser.add_argument("--case", choices=["i", "ii", "both"], default="both")
    parser.add_argument("--tools", default=",".join(TOOLS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    settings = (dict(num_chains=2, num_warmup=200, num_samples=200) if args.quick
                else dict(num_chains=4, num_warmup=1000, num_samples=1000))
    env = environment()
    rows = []
    cases = ["i", "ii"] if args.case == "both" else [args.case]
    for case in cases:
        model, ds, pooling = case_data(case)
        for tool in args.tools.split(","):
            result = TOOLS[tool](model, ds, pooling, settings, args.seed)
            row = {"benchmark": "fit_speed", "case": case, "model": type(model).__name__,
                   "dyads": int(ds.sizes["dyad"]), "T": int(ds.sizes["time"]), "tool": tool,
                   **settings, **result}
            rows.append(row)
            print(json.dumps(row), flush=True)
    write_results(f"fit_speed-{env['commit']}{'-quick' if args.quick else ''}", env, rows)


if __name__ == "__main__":
    main()
