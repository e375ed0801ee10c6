"""Model comparison: nested coupling models, PSIS-LOO verdicts, leave-future-out."""

from __future__ import annotations

import warnings

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import logsumexp

import coregulation as cr
from coregulation.inference.compare import _mask_future
from coregulation.models import TimeGrid

STRONG = dict(
    tau=np.array([5.0, 8.0]), therapist_to_client=np.array(0.7),
    client_to_therapist=np.array(0.0), mu=np.zeros(2), latent_sd=np.ones(2),
    shock_corr=np.array(0.0), me_sd=np.array([0.3, 0.3]),
)
FIT = dict(method="laplace", num_samples=1000, pooling=cr.Pooling(levels=()), warn=False,
           progress_bar=False, num_predictive=0)


@pytest.fixture(scope="module")
def coupled_data():
    ds, _ = cr.simulate_dyads(cr.CTVAR(), STRONG, jax.random.key(21), num_dyads=3,
                              num_sessions=2, duration=200.0)
    return ds


@pytest.fixture(scope="module")
def coupling_fits(coupled_data):
    models = cr.coupling_models(cr.CTVAR())
    keep = ["uncoupled", "therapist → client only", "two-way"]
    return {k: cr.fit(models[k], coupled_data, **FIT) for k in keep}


def test_coupling_models_switch_off_each_direction():
    models = cr.coupling_models(cr.CTVAR())
    assert list(models) == ["uncoupled", "therapist → client only", "client → therapist only",
                            "two-way"]
    assert {"therapist_to_client", "client_to_therapist"} <= set(models["uncoupled"].fixed)
    assert "therapist_to_client" in models["therapist → client only"].free_names()
    assert "client_to_therapist" not in models["therapist → client only"].free_names()
    assert "therapist_to_client" not in models["client → therapist only"].free_names()
    osc = cr.coupling_models(cr.CoupledOscillator())["uncoupled"]
    coupled = set(cr.CoupledOscillator().coupling_names)
    assert coupled and not coupled & set(osc.free_names())


def test_loo_prefers_the_true_direction_with_a_verdict(coupling_fits):
    result = cr.compare(coupling_fits)
    table = result.table
    # ranking by the sum of pointwise elpd equals ArviZ's own estimate
    for label, fit in coupling_fits.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pareto k: whole sessions are large units
            expected = az.loo(fit.idata, var_name="y").elpd_loo
        np.testing.assert_allclose(table.loc[label, "elpd"], expected, rtol=1e-12)
    assert table.index[-1] == "uncoupled"
    assert table.loc["uncoupled", "diff_in_se"] > 2
    # therapist -> client only and two-way are nested; the verdict names the simpler
    assert result.verdict.endswith("Preferred: therapist → client only.")
    assert "uncoupled: elpd lower by" in result.verdict and "clearly worse" in result.verdict


def test_compare_input_errors(coupling_fits, coupled_data):
    with pytest.raises(ValueError, match="criterion"):
        cr.compare(coupling_fits, criterion="waic")
    with pytest.raises(ValueError, match="at least two"):
        cr.compare({"one": coupling_fits["two-way"]})
    with pytest.raises(TypeError, match="criterion='lfo'"):
        cr.compare(coupling_fits, horizon=0.1)
    other = coupled_data.isel(dyad=slice(0, 2))
    shorter = cr.fit(cr.CTVAR(), other, **FIT)
    with pytest.raises(ValueError, match="different data"):
        cr.compare({"a": coupling_fits["two-way"], "b": shorter})
    single = cr.fit(cr.CTVAR(), other, **{**FIT, "method": "map"})
    with pytest.raises(ValueError, match="single draw"):
        cr.compare({"a": single, "b": single})
    one_session = cr.fit(cr.CTVAR(), other.isel(dyad=[0], session=[0]), **{**FIT, "method": "map"})
    with pytest.raises(ValueError, match="criterion='lfo'"):
        cr.compare({"a": one_session, "b": one_session})


def test_leave_future_out_one_step_equals_truncated_likelihoods(coupling_fits):
    """One predicted step: log mean over past-only draws of p(y_<=i) / p(y_<i)."""
    fit = coupling_fits["two-way"]
    batch = fit.problem.batch
    result = cr.leave_future_out(fit, horizon=0.004)  # 200 points: 1 step
    assert result.steps.tolist() == [199] and result.refits == [199]
    # reference: refit on the past by hand, then each series' likelihood of its
    # first 200 and first 199 points on its own grid
    past = cr.fit(fit.model, _mask_future(fit.problem.data, 199),
                  **{**FIT, "standardise": True})
    draws = past.parameter_draws(level="series")
    num = next(iter(draws.values())).shape[0]
    # every series has the same time grid, so one compiled reference (the textbook
    # sequential filter, data as arguments) serves them all
    times = batch.times[0]
    assert all(np.array_equal(batch.times[k], times) for k in range(batch.num_series))
    model = fit.model
    grids = [TimeGrid.from_times(times[:n]) for n in (200, 199)]

    def one_step(params, y_full, y_head):
        terms = [cr.log_likelihood(model.to_lgssm(params, grid), y, method="sequential")
                 for grid, y in zip(grids, (y_full, y_head))]
        return jnp.where(model.is_stable(params), terms[0] - terms[1], -jnp.inf)

    diff = jax.jit(jax.vmap(one_step, in_axes=(0, None, None)))
    per_draw = np.zeros(num)
    for k in range(batch.num_series):
        y = jnp.asarray(batch.y[k])
        per_draw += np.asarray(diff({n: jnp.asarray(v[:, k]) for n, v in draws.items()},
                                    y[:200], y[:199]))
    expected = logsumexp(per_draw) - np.log(num)
    np.testing.assert_allclose(result.elpd, expected, rtol=1e-8)


def test_leave_future_out_errors(coupling_fits, tmp_path):
    fit = coupling_fits["two-way"]
    with pytest.raises(ValueError, match="horizon"):
        cr.leave_future_out(fit, horizon=1.5)
    with pytest.raises(ValueError, match="fewer than 10"):
        cr.leave_future_out(fit, horizon=0.99)
    with pytest.raises(ValueError, match="posterior draws"):
        cr.leave_future_out(fit, horizon=0.01, method="map")
    loaded = cr.load_fit(fit.to_netcdf(tmp_path / "fit.nc"))
    with pytest.raises(ValueError, match="refit first"):
        cr.leave_future_out(loaded)
