"""Exact tier: discretisation, stability, derived quantities, analytic results (METHODS.md §5.5)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
import scipy.linalg
from conftest import CTVAR_TRUTH, OSCILLATOR_TRUTH

import coregulation as cr
from coregulation.models import _discretise as disc
from coregulation.simulate import shared_drive_system

# Quadrature and matrix exponentials agree to ~1e-12; 1e-8 is METHODS.md's bar.
EXACT = 1e-8


@pytest.mark.parametrize("dt", [0.3, 1.0, 5.0])
def test_van_loan_equals_lyapunov_equals_quadrature(dt, rng):
    model = cr.CoupledOscillator()
    system = model.continuous_system(model.expand(OSCILLATOR_TRUTH))
    A, S = np.asarray(system.drift), np.asarray(system.diffusion)
    phi, q = (np.asarray(m) for m in disc.van_loan(jnp.asarray(A), jnp.asarray(S), dt))
    np.testing.assert_allclose(phi, scipy.linalg.expm(A * dt), atol=EXACT)
    quad, _ = scipy.integrate.quad_vec(
        lambda s: scipy.linalg.expm(A * s) @ S @ scipy.linalg.expm(A * s).T, 0, dt, epsabs=1e-13
    )
    np.testing.assert_allclose(q, quad, atol=EXACT)
    stat = np.asarray(disc.stationary_covariance(jnp.asarray(A), jnp.asarray(S)))
    np.testing.assert_allclose(A @ stat + stat @ A.T + S, 0, atol=EXACT)
    lyap = np.asarray(disc.lyapunov_process_cov(jnp.asarray(phi), jnp.asarray(stat)))
    np.testing.assert_allclose(q, lyap, atol=EXACT)


@pytest.mark.parametrize("n", [1, 2, 4, 8])
def test_expm_equals_scipy_and_its_gradient_equals_jax(n, rng):
    """Our batched Taylor scaling-and-squaring expm against scipy's Pade (values, 1-norms
    1e-3 to 300) and jax.scipy's expm (gradients); NaN beyond its squaring range."""
    for scale in (1e-3, 0.3, 3.0, 30.0, 300.0):
        a = scale * rng.normal(size=(6, n, n)) / np.sqrt(n)
        ours = np.asarray(disc.expm(jnp.asarray(a)))
        for a_k, ours_k in zip(a, ours):
            ref = scipy.linalg.expm(a_k)
            if not np.all(np.isfinite(ref)):
                continue  # scipy overflows where the exponential itself does
            np.testing.assert_allclose(ours_k, ref, rtol=0, atol=1e-10 * np.abs(ref).max())
    a = jnp.asarray(0.8 * rng.normal(size=(5, n, n)))
    weights = jnp.asarray(rng.normal(size=(5, n, n)))
    ours = jax.grad(lambda m: jnp.sum(weights * disc.expm(m)))(a)
    ref = jax.grad(lambda m: jnp.sum(weights * jax.vmap(jax.scipy.linalg.expm)(m)))(a)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12 * float(jnp.max(jnp.abs(ref))))
    assert np.all(np.isnan(disc.expm(jnp.full((n, n), 1e6))))


def test_intercept_integral_equals_inverse_form(rng):
    A = rng.normal(size=(3, 3)) - 2 * np.eye(3)
    gamma = np.asarray(disc.integrated_transition(jnp.asarray(A), 2.5))
    expected = np.linalg.solve(A, scipy.linalg.expm(A * 2.5) - np.eye(3))
    np.testing.assert_allclose(gamma, expected, atol=EXACT)
    # singular drift (a pure integrator) is fine too: Gamma = dt for the integrator
    singular = np.zeros((2, 2))
    np.testing.assert_allclose(disc.integrated_transition(jnp.asarray(singular), 2.5), 2.5 * np.eye(2))


def test_routh_hurwitz_equals_eigenvalues(rng):
    model = cr.CoupledOscillator()
    space = cr.ParameterSpace(model, cr.PriorScales(1.0, 600.0))
    draws = space.sample_prior(jax.random.key(0), 4000, stable=False)
    # widen couplings so both stable and unstable systems occur
    for name in model.coupling_names:
        draws[name] = draws[name] * 4.0
    rh = np.asarray(jax.vmap(model.is_stable)(draws))
    drifts = np.asarray(jax.vmap(lambda p: model.drift(model.expand(p)))(draws))
    eig = np.max(np.linalg.eigvals(drifts).real, axis=-1) < 0
    assert 0.05 < rh.mean() < 0.95
    assert np.array_equal(rh, eig)


def test_ctvar_stability_and_var1_stability(rng):
    for model in (cr.CTVAR(), cr.VAR1()):
        space = cr.ParameterSpace(model, cr.PriorScales(1.0, 600.0))
        draws = space.sample_prior(jax.random.key(1), 4000, stable=False)
        for name in model.coupling_names:
            draws[name] = draws[name] * 6.0
        stable = np.asarray(jax.vmap(model.is_stable)(draws))
        if isinstance(model, cr.VAR1):
            mats = np.asarray(jax.vmap(lambda p: model.transition(model.expand(p)))(draws))
            truth = np.max(np.abs(np.linalg.eigvals(mats)), axis=-1) < 1
        else:
            mats = np.asarray(jax.vmap(lambda p: model.drift(model.expand(p)))(draws))
            truth = np.max(np.linalg.eigvals(mats).real, axis=-1) < 0
        assert 0.05 < stable.mean() < 0.99
        assert np.array_equal(stable, truth)


def test_unidirectional_coupling_keeps_eigenvalues():
    model = cr.CoupledOscillator()
    base = dict(OSCILLATOR_TRUTH, position_client_to_therapist=0.0, velocity_client_to_therapist=0.0)
    uncoupled = dict(base, position_therapist_to_client=0.0, velocity_therapist_to_client=0.0)
    def eig(p):
        values = np.linalg.eigvals(np.asarray(model.drift(model.expand(p))))
        return values[np.lexsort((values.imag, np.round(values.real, 9)))]

    np.testing.assert_allclose(eig(base), eig(uncoupled), atol=1e-12)


def test_unidirectional_lag_curve_peaks_at_analytic_interval():
    """tau_T = 5 s, tau_C = 30 s: the T->C cross-lag peaks at ln(q/p)/(p-q) = 10.75 s."""
    model = cr.CTVAR()
    params = dict(CTVAR_TRUTH, tau=np.array([5.0, 30.0]), client_to_therapist=0.0)
    intervals = np.linspace(0.01, 40, 40001)
    curve = np.asarray(model.cross_lag_curve(params, intervals))[:, 1, 0]
    p, q = -1 / 30.0, -1 / 5.0
    assert abs(intervals[np.argmax(curve)] - np.log(q / p) / (p - q)) < 1e-3
    assert abs(np.log(q / p) / (p - q) - 10.75) < 0.01
    a = np.asarray(model.drift(model.expand(params)))[1, 0]
    closed = a * (np.exp(p * intervals) - np.exp(q * intervals)) / (p - q)
    np.testing.assert_allclose(curve, closed, atol=1e-10)


def test_shared_drive_ccf_asymmetry_without_coupling():
    """METHODS.md §1.5: no coupling, one common driver, unequal time constants ->
    a 'therapist-led' CCF asymmetry.  Analytic (Lyapunov) vs a long exact simulation."""
    A, S = shared_drive_system(tau=(5.0, 30.0), drive_tau=60.0, latent_sd=(0.0, 0.0))
    stat = scipy.linalg.solve_continuous_lyapunov(A, -S)
    cross = scipy.linalg.expm(A * 10.0) @ stat
    sd = np.sqrt(np.diag(stat))
    client_follows = cross[1, 0] / (sd[1] * sd[0])  # corr(C(t+10), T(t))
    therapist_follows = cross[0, 1] / (sd[0] * sd[1])  # corr(T(t+10), C(t))
    assert client_follows - therapist_follows > 0.15
    times = np.arange(1, 200_001, dtype=float)
    sim = cr.simulate_shared_drive(jax.random.key(11), times, latent_sd=(0.0, 0.0))
    y = sim.y
    emp_c = np.corrcoef(y[10:, 1], y[:-10, 0])[0, 1]
    emp_t = np.corrcoef(y[10:, 0], y[:-10, 1])[0, 1]
    # the drive's 60 s memory makes these noisy: SE ~0.02 over 2e5 s
    assert abs(emp_c - client_follows) < 0.06
    assert abs(emp_t - therapist_follows) < 0.06


def test_implied_ccf_matches_long_simulation():
    model = cr.CTVAR()
    times = np.arange(1, 100_001, dtype=float)
    sim = cr.simulate_series(model, CTVAR_TRUTH, times, jax.random.key(7))
    lags = np.array([-10.0, -3.0, 0.0, 3.0, 10.0])
    implied = np.asarray(model.implied_ccf(CTVAR_TRUTH, lags))
    y = sim.y
    for li, lag in enumerate(lags.astype(int)):
        a, b = (y[lag:, 1], y[: len(y) - lag, 0]) if lag >= 0 else (y[:lag, 1], y[-lag:, 0])
        empirical = np.corrcoef(a, b)[0, 1]
        # Monte Carlo SE of a correlation over 1e5 autocorrelated points is ~0.01
        assert abs(empirical - implied[li, 1, 0]) < 0.04, (lag, empirical, implied[li, 1, 0])


def test_aliased_oscillator_has_identical_transition_eigenvalues():
    """METHODS.md §3.4.1: omega_d and omega_d + 2 pi / Delta give the same eig(Phi)."""
    dt, zeta = 5.0, -0.02
    eig = []
    for omega_d in (2 * np.pi / 60, 2 * np.pi / 60 + 2 * np.pi / dt):
        eta = -(omega_d**2 + zeta**2 / 4)
        A = np.array([[0, 1], [eta, zeta]])
        eig.append(np.sort_complex(np.linalg.eigvals(scipy.linalg.expm(A * dt))))
    np.testing.assert_allclose(eig[0], eig[1], atol=1e-10)


def test_fixed_and_tied_parameters():
    model = cr.CTVAR(fixed={"client_to_therapist": 0.0}, tied=("latent_sd",))
    space = cr.ParameterSpace(model)
    assert "client_to_therapist" not in space.names
    tied = next(p for p in space.table if p.name == "latent_sd")
    assert tied.shape == ()
    free = {k: v for k, v in CTVAR_TRUTH.items() if k != "client_to_therapist"}
    free["latent_sd"] = 0.7
    full = model.expand(free)
    assert float(full["client_to_therapist"]) == 0.0
    np.testing.assert_array_equal(full["latent_sd"], [0.7, 0.7])
    assert float(model.drift(full)[0, 1]) == 0.0


def test_moderated_coupling_is_exact_piecewise():
    """With z switching mid-series, the lowering equals the two constant-z systems glued."""
    model = cr.CTVAR(moderators=("speaking",))
    params = dict(CTVAR_TRUTH, therapist_to_client_moderation=np.array([0.5]),
                  client_to_therapist_moderation=np.array([-0.2]))
    times = np.arange(1.0, 21.0)
    z = (times > 10).astype(float)[:, None]
    ssm = model.to_lgssm(params, cr.TimeGrid.from_times(times, moderators=z))
    for k in (3, 15):
        drift = np.asarray(model.drift(model.expand(params), z[k]))
        np.testing.assert_allclose(ssm.transition[ssm.step_index[k]], scipy.linalg.expm(drift), atol=1e-12)
    coupled = np.asarray(model.drift(model.expand(params), np.array([1.0])))
    assert abs(coupled[1, 0] - (0.4 + 0.5) / np.sqrt(10 * 30)) < 1e-12


def test_model_configuration_errors():
    with pytest.raises(ValueError, match="unknown parameter"):
        cr.CTVAR(fixed={"a21": 0.0})
    with pytest.raises(ValueError, match="only role-indexed"):
        cr.CTVAR(tied=("shock_corr",))
    with pytest.raises(ValueError, match="roles must be two distinct"):
        cr.CTVAR(roles=("mother", "mother"))
    with pytest.raises(ValueError, match="initial must be"):
        cr.CTVAR(initial="equilibrium")
    with pytest.raises(ValueError, match="regular time grid"):
        cr.VAR1().to_lgssm(dict(CTVAR_TRUTH, inertia=np.array([0.5, 0.5])),
                           cr.TimeGrid.from_times(np.array([1.0, 2.0, 4.0, 5.0])))
    with pytest.raises(ValueError, match="outside its support"):
        cr.ParameterSpace(cr.CoupledOscillator(), cr.PriorScales(1.0, 30.0)).unconstrain(OSCILLATOR_TRUTH)


def test_custom_role_labels_flow_through():
    model = cr.CoupledOscillator(roles=("mother", "infant"))
    assert model.state_names == ("x_mother", "v_mother", "x_infant", "v_infant")
    labels = cr.ParameterSpace(model, cr.PriorScales(1.0, 600.0)).flat_names()
    assert "period[infant]" in labels
