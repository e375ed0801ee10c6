"""statsmodels as an oracle: exact log-likelihoods on real data and with missing values."""

import warnings
from pathlib import Path

import jax
import numpy as np
import pandas as pd
import pytest

import coregulation as cr
from coregulation.models import TimeGrid

sm = pytest.importorskip("statsmodels.api")
from statsmodels.tsa.statespace.mlemodel import MLEModel  # noqa: E402
from statsmodels.tsa.statespace.varmax import VARMAX  # noqa: E402

DATA = Path(__file__).parent / "data" / "lutkepohl_e1.csv"
AGREE = 1e-8


def _e1_diff_log():
    df = pd.read_csv(DATA)
    # Lütkepohl's sample 1960Q1-1978Q4 (statsmodels' VARMAX tests use the same span)
    df = df.iloc[:76]
    return np.diff(np.log(df[["income", "cons"]].to_numpy()), axis=0)


def test_var1_loglik_equals_varmax_on_lutkepohl_e1():
    y = _e1_diff_log()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = VARMAX(y, order=(1, 0), trend="c").fit(disp=False, maxiter=200)
    p = dict(zip(res.model.param_names, res.params))
    phi = np.array([[p["L1.y1.y1"], p["L1.y2.y1"]], [p["L1.y1.y2"], p["L1.y2.y2"]]])
    intercept = np.array([p["intercept.y1"], p["intercept.y2"]])
    chol = np.array([[p["sqrt.var.y1"], 0.0], [p["sqrt.cov.y1.y2"], p["sqrt.var.y2"]]])
    psi = chol @ chol.T
    # VARMAX (stationary start) in our parameterisation: mean, stationary SDs, shock corr
    mu = np.linalg.solve(np.eye(2) - phi, intercept)
    model = cr.VAR1(measurement_error=False)
    params = dict(
        inertia=np.diag(phi), therapist_to_client=phi[1, 0], client_to_therapist=phi[0, 1],
        mu=mu, latent_sd=np.sqrt(np.diag(psi) / (1 - np.diag(phi) ** 2)),
        shock_corr=psi[0, 1] / np.sqrt(psi[0, 0] * psi[1, 1]),
    )
    times = np.arange(1.0, y.shape[0] + 1)
    ssm = model.to_lgssm(params, TimeGrid.from_times(times))
    for method in ("sequential", "parallel", "fast"):
        assert abs(float(cr.log_likelihood(ssm, y, method)) - res.llf) < AGREE


class _FixedStateSpace(MLEModel):
    """A statsmodels state space with the matrices of one of our lowered models."""

    def __init__(self, y, ssm):
        n = ssm.initial_mean.shape[0]
        super().__init__(y, k_states=n)
        phi = np.asarray(ssm.transition[0])
        self["design"] = np.asarray(ssm.emission)
        self["obs_intercept"] = np.asarray(ssm.emission_offset)[:, None]
        self["obs_cov"] = np.asarray(ssm.emission_cov)
        self["transition"] = phi
        self["selection"] = np.eye(n)
        self["state_cov"] = np.asarray(ssm.process_cov[0])
        # statsmodels' initial state is at the first observation: push ours one step.
        m1 = phi @ np.asarray(ssm.initial_mean)
        p1 = phi @ np.asarray(ssm.initial_cov) @ phi.T + np.asarray(ssm.process_cov[0])
        self.ssm.initialize_known(m1, p1)


def test_oscillator_loglik_equals_statsmodels_with_missing_values():
    from conftest import OSCILLATOR_TRUTH

    model = cr.CoupledOscillator()
    times = np.arange(1.0, 401.0)
    y = np.array(cr.simulate_series(model, OSCILLATOR_TRUTH, times, jax.random.key(5)).y)
    y[10] = np.nan
    y[50:80, 0] = np.nan
    y[200, 1] = np.nan
    ssm = model.to_lgssm(OSCILLATOR_TRUTH, TimeGrid.from_times(times))
    expected = _FixedStateSpace(y, ssm).loglike([])
    # statsmodels switches to a steady-state gain once its covariance changes by
    # < 1e-19 in its own norm; that costs ~1e-9 relative.  (Ours match the dense
    # joint Gaussian to ~1e-13: test_kalman.)
    for method in ("sequential", "parallel", "fast"):
        value = float(cr.log_likelihood(ssm, y, method))
        assert abs(value - expected) < 1e-8 * abs(expected)
