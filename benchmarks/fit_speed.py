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
``pymc-plain``
    A plain PyMC model as a user would write it: the model's exact
    discretisation (``expm``, Van Loan) and the textbook Kalman filter in PyTensor
    (``scan``; in case (ii) batched over the 40 series, each dyad's parameters
    non-centred around the population on their unconstrained scale), our priors,
    sampled by ``pm.sample`` with PyMC's defaults (its NUTS,
    ``jitter+adapt_diag`` start, its choice of cores).  The row records the
    log-likelihood difference from ours at the truth (the same model).
``numpyro+dynamax``
    What a user writes without us: the same NumPyro model (our priors and
    hierarchy) with dynamax's ``lgssm_filter`` as the likelihood of each series
    (vmapped), sampled by NumPyro NUTS with its default initialisation, its chains
    in parallel on the CPU devices as ours are.
``numpyro+dynamax:our-start``
    The same, but given everything our back end does before sampling: our MAP
    start (and joint start search where ``fit`` runs it), our curvature-scaled
    initial mass matrix and our jittered chain starts from the same seed, with
    NUTS's settings as ``fit`` sets them.  Its chains then follow ours until
    rounding separates them (the two potentials agree to about 1e-14 relative; the
    row records the difference at the start), so the row isolates the cost of a
    gradient: more than a user would get from NumPyro on dynamax.

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
    row = summarise(draws, names, wall, int(fit.idata.sample_stats["diverging"].sum()))
    if "n_steps" in fit.idata.sample_stats:
        row["sampling_leapfrog_steps_per_chain"] = (
            fit.idata.sample_stats["n_steps"].sum("draw").values.astype(int).tolist())
    return row


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


def _chain_method(chains: int) -> str:
    """A chain per CPU device where there are enough, as ``fit`` chooses."""
    return "parallel" if jax.local_device_count() >= chains else "vectorized"


def run_dynamax(model, ds, pooling, settings, seed):
    start = time.perf_counter()
    problem = bayes.build_problem(model, ds, pooling=pooling)
    ll = dynamax_batch_log_likelihood(model, problem.batch)
    numpyro_model = build_numpyro_model(problem.design, ll)
    # NumPyro's default start (uniform on (-2, 2) unconstrained) finds no finite
    # log-density for these models; prior medians are the usual user's fix.
    # the same parallelism as ours: a chain per CPU device where there are enough
    # (numpyro.set_host_device_count is the documented way; importing coregulation
    # has already given this process the devices)
    chains = settings["num_chains"]
    mcmc = MCMC(NUTS(numpyro_model, init_strategy=init_to_median), num_warmup=settings["num_warmup"],
                num_samples=settings["num_samples"], num_chains=chains,
                chain_method=_chain_method(chains), progress_bar=False)
    mcmc.run(jax.random.key(seed), extra_fields=("diverging",))
    # parallel chains return before the draws exist: wait for them before the clock stops
    samples = jax.block_until_ready(mcmc.get_samples(group_by_chain=True))
    wall = time.perf_counter() - start
    names = [n for n in samples if not n.startswith(("series__", "dyad__", "log_lik"))
             and n != "dyad_corr_chol"]
    draws = {n: np.asarray(samples[n]) for n in names}
    divergences = int(np.asarray(mcmc.get_extra_fields()["diverging"]).sum())
    return summarise(draws, names, wall, divergences)


def run_dynamax_our_start(model, ds, pooling, settings, seed):
    start = time.perf_counter()
    chains = settings["num_chains"]
    problem = bayes.build_problem(
        model, ds, pooling=pooling,
        evaluations=bayes.expected_evaluations("nuts", chains, settings["num_warmup"],
                                               settings["num_samples"], 0))
    ours = build_numpyro_model(problem.design, problem.batch_log_likelihood)
    _, info, value_and_grad = bayes._initialise(problem, ours)
    key_init, key_run, _ = jax.random.split(jax.random.key(seed), 3)  # as fit() splits
    begin = bayes.nuts_start(problem.design, info, value_and_grad, key_init,
                             num_chains=chains, num_warmup=settings["num_warmup"])
    theirs = build_numpyro_model(problem.design,
                                 dynamax_batch_log_likelihood(model, problem.batch))
    info = bayes._with_model(begin.info, theirs)
    # the starts' potential energies and gradients come from our likelihood: the
    # same to rounding (start_potential_abs_diff below)
    kernel = NUTS(potential_fn=info.potential_fn, dense_mass=begin.dense_mass,
                  inverse_mass_matrix=begin.inverse_mass_matrix)
    mcmc = MCMC(kernel, num_warmup=settings["num_warmup"], num_samples=settings["num_samples"],
                num_chains=chains, chain_method=_chain_method(chains), progress_bar=False)
    inits = begin.inits if chains > 1 else jax.tree.map(lambda a: a[0], begin.inits)
    mcmc.run(key_run, init_params=inits, extra_fields=("diverging", "num_steps"))
    samples = jax.block_until_ready(mcmc.get_samples(group_by_chain=True))
    wall = time.perf_counter() - start
    # the sampled sites on the unconstrained scale: each site's transform is monotone
    # element by element (the correlation factor aside, left out as in our rows), and
    # rank-normalised ESS and R-hat do not change under such transforms
    names = [n for n in info.z if n != "dyad_corr_chol"]
    draws = {n: np.asarray(samples[n]) for n in names}
    extra = mcmc.get_extra_fields(group_by_chain=True)
    row = summarise(draws, names, wall, int(np.asarray(extra["diverging"]).sum()))
    row["sampling_leapfrog_steps_per_chain"] = np.asarray(extra["num_steps"]).sum(axis=1).tolist()
    row["start_potential_abs_diff"] = float(abs(
        info.potential_fn(begin.info.z) - begin.info.potential_fn(begin.info.z)))
    return row


def oscillator_loglik_pytensor(v, y, dt):
    """Exact log-likelihood of the coupled oscillator in plain PyTensor (a user's own model).

    ``v`` maps parameter names to PyTensor scalars/vectors (constrained values), ``y``
    is the (T, 2) complete series (an array or a PyTensor matrix).  Same maths as
    ``CoupledOscillator.to_lgssm``: drift from periods, damping ratios and couplings;
    exact discretisation by ``expm`` and Van Loan; stationary initial state; then the
    textbook Kalman filter in ``pytensor.scan``.  Returns (log-likelihood, stable flag).
    """
    import pytensor
    import pytensor.tensor as pt
    from pytensor.tensor.slinalg import expm

    omega = 2.0 * np.pi / v["period"]
    xi = v["damping_ratio"]
    eta, zeta = -(omega**2), -2.0 * xi * omega
    g_tc = v["position_therapist_to_client"] * omega[1] ** 2
    g_ct = v["position_client_to_therapist"] * omega[0] ** 2
    d_tc = 2.0 * v["velocity_therapist_to_client"] * omega[1]
    d_ct = 2.0 * v["velocity_client_to_therapist"] * omega[0]
    zero, one = pt.constant(0.0), pt.constant(1.0)
    A = pt.stack([pt.stack([zero, one, zero, zero]),
                  pt.stack([eta[0], zeta[0], g_ct, d_ct]),
                  pt.stack([zero, zero, zero, one]),
                  pt.stack([g_tc, d_tc, eta[1], zeta[1]])])
    g = pt.sqrt(4.0 * xi * omega**3) * v["latent_sd"]
    cross = v["shock_corr"] * g[0] * g[1]
    Sigma = pt.stack([pt.stack([zero, zero, zero, zero]),
                      pt.stack([zero, g[0] ** 2, zero, cross]),
                      pt.stack([zero, zero, zero, zero]),
                      pt.stack([zero, cross, zero, g[1] ** 2])])
    Phi = expm(A * dt)
    block = pt.concatenate([pt.concatenate([-A, Sigma], axis=1),
                            pt.concatenate([pt.zeros((4, 4)), A.T], axis=1)], axis=0)
    F12 = expm(block * dt)[:4, 4:]
    Q = Phi @ F12
    Q = 0.5 * (Q + Q.T)
    eye = pt.eye(4)
    P0 = pt.linalg.solve(pt.linalg.kron(A, eye) + pt.linalg.kron(eye, A),
                         -Sigma.flatten()).reshape((4, 4))
    P0 = 0.5 * (P0 + P0.T)
    H = pt.constant(np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]]))
    R = pt.diag(v["me_sd"] ** 2)
    mu = v["mu"]

    def step(y_t, m, P, Phi, Q, R, mu):
        S = H @ P @ H.T + R
        S_inv = pt.linalg.inv(S)
        e = y_t - H @ m - mu
        K = P @ H.T @ S_inv
        ll = -0.5 * (2.0 * np.log(2.0 * np.pi) + pt.log(pt.linalg.det(S)) + e @ S_inv @ e)
        m_f, P_f = m + K @ e, P - K @ S @ K.T
        return Phi @ m_f, Phi @ P_f @ Phi.T + Q, ll

    (_, _, terms), _ = pytensor.scan(step, sequences=[pt.as_tensor_variable(y)],
                                      outputs_info=[pt.zeros(4), P0, None],
                                      non_sequences=[Phi, Q, R, mu], strict=True)
    # Routh-Hurwitz on the characteristic polynomial, as CoupledOscillator.is_stable
    a3 = -(zeta[0] + zeta[1])
    a2 = zeta[0] * zeta[1] - eta[0] - eta[1] - d_ct * d_tc
    a1 = zeta[0] * eta[1] + zeta[1] * eta[0] - (d_ct * g_tc + g_ct * d_tc)
    a0 = eta[0] * eta[1] - g_ct * g_tc
    stable = ((a3 > 0) & (a2 > 0) & (a1 > 0) & (a0 > 0) & (a3 * a2 > a1)
              & (a3 * a2 * a1 > a1**2 + a3**2 * a0))
    return pt.sum(terms), stable


def ctvar_loglik_pytensor(v, y, dt):
    """Exact log-likelihoods of many CT-VAR series in plain PyTensor (a user's own model).

    ``v`` maps parameter names to PyTensor tensors with a leading series axis
    (constrained values), ``y`` is ``(series, T, 2)``, complete.  Same maths as
    ``CTVAR.to_lgssm``: drift from time constants and couplings, exact
    discretisation (``expm``, Van Loan), the stationary initial state (a Lyapunov
    solve), then the textbook Kalman filter in ``pytensor.scan`` over time, batched
    over series.  Returns (per-series log-likelihoods, per-series stable flags).
    """
    import pytensor
    import pytensor.tensor as pt
    from pytensor.tensor.linalg import solve_continuous_lyapunov
    from pytensor.tensor.slinalg import expm

    tau = v["tau"]
    cross = 1.0 / pt.sqrt(tau[:, 0] * tau[:, 1])
    A = pt.stack([pt.stack([-1.0 / tau[:, 0], v["client_to_therapist"] * cross], axis=-1),
                  pt.stack([v["therapist_to_client"] * cross, -1.0 / tau[:, 1]], axis=-1)],
                 axis=-2)
    sd = pt.sqrt(2.0 / tau) * v["latent_sd"]
    off = v["shock_corr"] * sd[:, 0] * sd[:, 1]
    Sigma = pt.stack([pt.stack([sd[:, 0] ** 2, off], axis=-1),
                      pt.stack([off, sd[:, 1] ** 2], axis=-1)], axis=-2)
    A_t = pt.swapaxes(A, -1, -2)
    block = pt.concatenate([pt.concatenate([-A, Sigma], axis=-1),
                            pt.concatenate([pt.zeros_like(A), A_t], axis=-1)], axis=-2)
    E = expm(block * dt)
    Phi = pt.swapaxes(E[:, 2:, 2:], -1, -2)
    Q = Phi @ E[:, :2, 2:]
    Q = 0.5 * (Q + pt.swapaxes(Q, -1, -2))
    P0 = solve_continuous_lyapunov(A, -Sigma)
    P0 = 0.5 * (P0 + pt.swapaxes(P0, -1, -2))
    me = v["me_sd"] ** 2
    zero = pt.zeros_like(me[:, 0])
    R = pt.stack([pt.stack([me[:, 0], zero], axis=-1), pt.stack([zero, me[:, 1]], axis=-1)],
                 axis=-2)
    mu = v["mu"]

    def step(y_t, m, P, Phi, Q, R, mu):  # H = I: both roles observed
        S = P + R
        S_inv = pt.linalg.inv(S)
        e = y_t - m - mu
        K = P @ S_inv
        quad = pt.sum(e * (S_inv @ e[:, :, None])[:, :, 0], axis=-1)
        # 2x2 determinant by hand: PyTensor 2.38's log(det) -> slogdet rewrite fails
        # on batched matrices
        det = S[:, 0, 0] * S[:, 1, 1] - S[:, 0, 1] * S[:, 1, 0]
        ll = -0.5 * (2.0 * np.log(2.0 * np.pi) + pt.log(det) + quad)
        m_f = m + (K @ e[:, :, None])[:, :, 0]
        P_f = P - K @ S @ pt.swapaxes(K, -1, -2)
        return ((Phi @ m_f[:, :, None])[:, :, 0],
                Phi @ P_f @ pt.swapaxes(Phi, -1, -2) + Q, ll)

    y_time = pt.as_tensor_variable(np.swapaxes(np.asarray(y, dtype=float), 0, 1))
    (_, _, terms), _ = pytensor.scan(step, sequences=[y_time],
                                      outputs_info=[pt.zeros_like(mu), P0, None],
                                      non_sequences=[Phi, Q, R, mu], strict=True)
    stable = (pt.trace(A, axis1=-2, axis2=-1) < 0) & (pt.linalg.det(A) > 0)
    return pt.sum(terms, axis=0), stable


def _pytensor_bijection(constraint):
    """numpyro's maps for ``constraint`` in PyTensor: (unconstrained -> constrained,
    constrained -> unconstrained)."""
    import pytensor.tensor as pt
    from numpyro.distributions import constraints

    if constraint is constraints.real:
        return (lambda u: u), (lambda x: x)
    if constraint is constraints.positive:
        return pt.exp, pt.log
    if isinstance(constraint, constraints.interval):
        low, high = float(constraint.lower_bound), float(constraint.upper_bound)
        def to_unconstrained(x):
            share = (x - low) / (high - low)
            return pt.log(share) - pt.log1p(-share)  # logit (PyTensor has no pt.logit)

        return (lambda u: low + (high - low) * pt.sigmoid(u)), to_unconstrained
    raise NotImplementedError(f"no PyTensor transform written for {constraint}.")


def _plain_hierarchical_ctvar(problem):
    """Case (ii) as a PyMC user writes it: every parameter pooled across dyads,
    non-centred on its unconstrained scale (log, logit), our priors and level scales;
    returns the per-series parameter tensors (call inside a ``pm.Model``)."""
    import pymc as pm

    from coregulation.inference.pymc_backend import pymc_prior

    design = problem.design
    dyad_index = np.asarray(design.dyad_index)
    series = {}
    for p in design.table:
        pop = pymc_prior(p.name, p.prior, p.shape)
        sd = pm.HalfNormal(f"{p.name}_sd_dyad", sigma=design.pooling.scale_prior, shape=p.shape)
        z = pm.Normal(f"{p.name}_z_dyad", 0.0, 1.0, shape=(design.num_dyads, *p.shape))
        to_constrained, to_unconstrained = _pytensor_bijection(p.constraint)
        series[p.name] = to_constrained(to_unconstrained(pop) + sd * z)[dyad_index]
    return series


def run_plain_pymc(model, ds, pooling, settings, seed):
    """A plain PyMC model (PyTensor Kalman filter in ``scan``), PyMC's default NUTS."""
    import pymc as pm
    import pytensor.tensor as pt

    from coregulation.inference.pymc_backend import pymc_prior

    start = time.perf_counter()
    problem = bayes.build_problem(model, ds, pooling=pooling)
    batch = problem.batch
    dt = float(batch.step_lengths[0])
    with pm.Model():
        if isinstance(model, cr.CoupledOscillator) and not pooling.levels:
            v = {p.name: pymc_prior(p.name, p.prior, p.shape) for p in problem.design.table}
            loglik, stable = oscillator_loglik_pytensor(v, np.asarray(batch.y[0], float), dt)
        elif (isinstance(model, cr.CTVAR) and pooling.levels == ("dyad",)
              and not pooling.correlated and not pooling.centred
              and set(problem.design.pooled) == set(model.free_names())):
            v = _plain_hierarchical_ctvar(problem)
            per_series, stable_series = ctvar_loglik_pytensor(v, batch.y, dt)
            loglik, stable = pt.sum(per_series), pt.all(stable_series)
        else:
            raise NotImplementedError("the plain PyMC model is written for cases (i) and (ii).")
        pm.Potential("likelihood", pt.switch(stable, loglik, -np.inf))
        idata = pm.sample(draws=settings["num_samples"], tune=settings["num_warmup"],
                          chains=settings["num_chains"], random_seed=seed, progressbar=False)
    wall = time.perf_counter() - start
    # every sampled site (population values, dyad SDs, standardised dyad effects), as
    # for the other tools: the minimum ESS is taken over the same quantities
    names = [n for n in idata.posterior.data_vars if not n.endswith("__")]
    draws = {n: idata.posterior[n].values for n in names}
    return summarise(draws, names, wall, int(idata.sample_stats["diverging"].sum()))


def check_plain_pymc(model, ds, pooling, truth) -> float:
    """|plain PyTensor log-likelihood - ours| at the truth (every series at the
    truth, 1% apart from series to series in case (ii)), on the same data."""
    import pytensor.tensor as pt

    problem = bayes.build_problem(model, ds, pooling=pooling)
    batch = problem.batch
    dt = float(batch.step_lengths[0])
    if isinstance(model, cr.CoupledOscillator):
        values = {k: np.asarray(val, dtype=float) for k, val in truth.items()}
        v = {k: pt.constant(val) for k, val in values.items()}
        value, _ = oscillator_loglik_pytensor(v, np.asarray(batch.y[0], dtype=float), dt)
    else:
        num = batch.num_series
        values = {k: np.broadcast_to(np.asarray(val, float), (num, *np.shape(val)))
                  * (1.0 + 0.01 * np.arange(num)).reshape((num,) + (1,) * np.ndim(val))
                  for k, val in truth.items()}
        per_series, _ = ctvar_loglik_pytensor({k: pt.constant(val) for k, val in values.items()},
                                              batch.y, dt)
        value = pt.sum(per_series)
    ours = float(jnp.sum(problem.batch_log_likelihood(
        {k: jnp.asarray(val) for k, val in values.items()})))
    return abs(float(value.eval()) - ours)


def _pymc_tool(sampler):
    def run(model, ds, pooling, settings, seed):
        return run_ours(model, ds, pooling, settings, seed, backend="pymc", sampler=sampler)
    return run


TOOLS = {
    "coregulation": run_ours,
    "coregulation-pymc:nutpie": _pymc_tool("nutpie"),
    "coregulation-pymc:pymc": _pymc_tool("pymc"),
    "numpyro+dynamax": run_dynamax,
    "numpyro+dynamax:our-start": run_dynamax_our_start,
    "pymc-plain": run_plain_pymc,
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
            try:
                result = TOOLS[tool](model, ds, pooling, settings, args.seed)
            except NotImplementedError as err:
                print(f"{tool}: {err}", flush=True)
                continue
            if tool == "pymc-plain":
                # the same model: its log-likelihood equals ours at the truth
                truth = {k: v for k, v in (OSCILLATOR if case == "i" else CTVAR).items()
                         if k in model.free_names()}
                result["loglik_abs_diff_vs_ours"] = check_plain_pymc(model, ds, pooling, truth)
            row = {"benchmark": "fit_speed", "case": case, "model": type(model).__name__,
                   "dyads": int(ds.sizes["dyad"]), "T": int(ds.sizes["time"]), "tool": tool,
                   **settings, **result}
            rows.append(row)
            print(json.dumps(row), flush=True)
            # after every tool: a long run stopped part-way keeps the rows it has
            write_results(f"fit_speed-{env['commit']}{'-quick' if args.quick else ''}", env, rows)


if __name__ == "__main__":
    main()
