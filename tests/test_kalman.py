"""Exact tier: every Kalman method against independent references and each other."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from reference import dense_log_likelihood, dense_smoother, textbook_filter

import coregulation as cr
from coregulation.inference.kalman import LGSSM, steady_from_hint
from coregulation.models import TimeGrid

# All methods must agree to this (DESIGN.md §4); observed agreement is ~1e-12.
AGREE = 1e-8
METHODS = ("sequential", "parallel", "fast")


def _series(model, truth, rng, num_timesteps=40, irregular=False, missing=True):
    if irregular:
        times = np.cumsum(rng.uniform(0.5, 2.5, num_timesteps))
    else:
        times = np.arange(1, num_timesteps + 1, dtype=float)
    sim = cr.simulate_series(model, truth, times, jax.random.key(int(rng.integers(1 << 30))))
    y = sim.y.copy()
    if missing:
        y[3] = np.nan  # a whole row
        y[7, 0] = np.nan  # partial rows
        y[12, 1] = np.nan
        y[20:24] = np.nan  # a burst
    return times, y


@pytest.mark.parametrize("missing", [False, True])
def test_methods_match_dense_joint_gaussian(model_case, rng, missing):
    name, model, truth = model_case
    irregular = name != "var1"
    times, y = _series(model, truth, rng, irregular=irregular, missing=missing)
    ssm = model.to_lgssm(truth, TimeGrid.from_times(times))
    reference = dense_log_likelihood(ssm, y)
    textbook, _ = textbook_filter(ssm, y)
    assert abs(textbook - reference) < AGREE
    for method in METHODS:
        value = float(cr.log_likelihood(ssm, y, method=method))
        assert abs(value - reference) < AGREE, (method, value, reference)


def test_filter_moments_agree_across_methods(model_case, rng):
    _, model, truth = model_case
    times, y = _series(model, truth, rng)
    ssm = model.to_lgssm(truth, TimeGrid.from_times(times))
    ref = cr.kalman_filter(ssm, y, method="sequential")
    _, textbook_means = textbook_filter(ssm, y)
    np.testing.assert_allclose(ref.filtered_means, textbook_means, atol=AGREE)
    for method in ("parallel", "fast"):
        out = cr.kalman_filter(ssm, y, method=method)
        for a, b in zip(ref, out):
            np.testing.assert_allclose(a, b, atol=AGREE, rtol=0)


@pytest.mark.parametrize("method", METHODS)
def test_smoother_matches_dense_conditional(model_case, rng, method):
    _, model, truth = model_case
    times, y = _series(model, truth, rng, num_timesteps=30)
    ssm = model.to_lgssm(truth, TimeGrid.from_times(times))
    mean, cov = dense_smoother(ssm, y)
    out = cr.kalman_smoother(ssm, y, method=method)
    np.testing.assert_allclose(out.smoothed_means, mean, atol=1e-7)
    np.testing.assert_allclose(out.smoothed_covs, cov, atol=1e-7)


@pytest.mark.parametrize("method", METHODS)
def test_gradients_match_finite_differences(model_case, rng, method):
    _, model, truth = model_case
    times, y = _series(model, truth, rng, num_timesteps=30)
    scales = cr.PriorScales(1.0, 600.0)  # admits the oscillator's 60 s period
    lik = cr.SeriesLikelihood.build(model, times, y, method=method, scales=scales)
    x = np.asarray(lik.space.unconstrain(truth))
    grad = np.asarray(jax.grad(lik.log_density)(jnp.asarray(x)))
    f = jax.jit(lik.log_density)
    step = 1e-6
    for i in range(x.size):
        up, down = x.copy(), x.copy()
        up[i] += step
        down[i] -= step
        numeric = (float(f(up)) - float(f(down))) / (2 * step)
        assert abs(grad[i] - numeric) < 1e-5 * max(1.0, abs(numeric)), (i, grad[i], numeric)


def test_steady_state_shortcut_is_exact_on_long_series(rng):
    model = cr.CoupledOscillator()
    from conftest import OSCILLATOR_TRUTH

    times = np.arange(1, 3001, dtype=float)
    sim = cr.simulate_series(model, OSCILLATOR_TRUTH, times, jax.random.key(3))
    y = sim.y.copy()
    y[100:130] = np.nan  # a burst early on; complete and regular afterwards
    grid = TimeGrid.from_times(times)
    hint = steady_from_hint(grid.step_index, y)
    assert hint == 130
    ssm = model.to_lgssm(OSCILLATOR_TRUTH, grid)
    seq = float(cr.log_likelihood(ssm, y, "sequential"))
    fast = float(cr.log_likelihood(ssm, y, "fast", steady_from=hint))
    assert abs(seq - fast) < AGREE * abs(seq)
    def grads(method, steady_from=None):
        # every input of the steady state (its gradient is implicit, not unrolled)
        def f(transition, process_cov, emission, emission_cov):
            s = ssm._replace(transition=transition, process_cov=process_cov, emission=emission,
                             emission_cov=emission_cov)
            return cr.log_likelihood(s, y, method, steady_from=steady_from)

        return jax.grad(f, argnums=(0, 1, 2, 3))(ssm.transition, ssm.process_cov, ssm.emission,
                                                 ssm.emission_cov)

    g_seq, g_fast = grads("sequential"), grads("fast", hint)
    for a, b in zip(g_seq, g_fast):
        np.testing.assert_allclose(b, a, rtol=1e-7, atol=1e-7 * float(jnp.max(jnp.abs(a))))


@pytest.mark.parametrize("measurement_scale", [1.0, 300.0])
def test_tail_at_steady_state_and_continued_tail_are_exact(measurement_scale):
    """Both branches of the tail: steady state reached after the first closed-form block
    (fast closed loop) and not reached (measurement error 300x, closed loop near Phi)."""
    from conftest import OSCILLATOR_TRUTH

    from coregulation.inference import kalman

    model = cr.CoupledOscillator()
    times = np.arange(1, 1001, dtype=float)
    y = np.array(cr.simulate_series(model, OSCILLATOR_TRUTH, times, jax.random.key(5)).y)
    grid = TimeGrid.from_times(times)
    ssm = model.to_lgssm(OSCILLATOR_TRUTH, grid)
    ssm = ssm._replace(emission_cov=ssm.emission_cov * measurement_scale)
    # which branch: the closed loop's decay over the first block
    P = scipy.linalg.solve_discrete_are(np.asarray(ssm.transition[0]).T, np.asarray(ssm.emission).T,
                                        np.asarray(ssm.process_cov[0]), np.asarray(ssm.emission_cov))
    H, Phi = np.asarray(ssm.emission), np.asarray(ssm.transition[0])
    F = Phi - Phi @ P @ H.T @ np.linalg.solve(H @ P @ H.T + np.asarray(ssm.emission_cov), H)
    decay = max(abs(np.linalg.eigvals(F))) ** kalman._CONVERGED_AFTER
    assert (decay < 1e-10) if measurement_scale == 1.0 else (decay > 1e-3)

    def f(transition, process_cov, emission_cov, method, steady_from=None):
        s = ssm._replace(transition=transition, process_cov=process_cov, emission_cov=emission_cov)
        return cr.log_likelihood(s, y, method, steady_from=steady_from)

    args = (ssm.transition, ssm.process_cov, ssm.emission_cov)
    seq, g_seq = jax.value_and_grad(f, argnums=(0, 1, 2))(*args, "sequential")
    fast, g_fast = jax.value_and_grad(f, argnums=(0, 1, 2))(*args, "fast", 0)
    assert abs(float(seq) - float(fast)) < AGREE * abs(float(seq))
    for a, b in zip(g_seq, g_fast):
        np.testing.assert_allclose(b, a, rtol=1e-7, atol=1e-7 * float(jnp.max(jnp.abs(a))))
    out = cr.kalman_filter(ssm, y, "fast", steady_from=0)
    ref = cr.kalman_filter(ssm, y, "sequential")
    np.testing.assert_allclose(out.predicted_covs, ref.predicted_covs, rtol=1e-10, atol=1e-12)
    # the plain closed form (what batched callers run) gives the same terms
    plain = kalman.log_likelihood_terms(ssm, y, "fast", steady_from=0, stop_at_steady_state=False)
    np.testing.assert_allclose(plain, kalman.log_likelihood_terms(ssm, y, "fast", steady_from=0),
                               rtol=1e-12, atol=1e-12)


def test_steps_to_steady_state_and_an_earlier_check_are_exact():
    """``steps_to_steady_state`` finds where the plain Riccati recursion reaches the
    scipy DARE solution to rounding (and not long before), and a steady-state check at
    32 or 64 steps (this oscillator needs 77: the recursion continues past the
    check) gives the sequential filter's value and gradient, as the default check at
    128 (converged there) does."""
    from conftest import OSCILLATOR_TRUTH

    from coregulation.inference import kalman

    model = cr.CoupledOscillator()
    times = np.arange(1, 601, dtype=float)
    y = np.array(cr.simulate_series(model, OSCILLATOR_TRUTH, times, jax.random.key(6)).y)
    ssm = model.to_lgssm(OSCILLATOR_TRUTH, TimeGrid.from_times(times))
    Phi, Q = np.asarray(ssm.transition[0]), np.asarray(ssm.process_cov[0])
    H, R = np.asarray(ssm.emission), np.asarray(ssm.emission_cov)
    P = scipy.linalg.solve_discrete_are(Phi.T, H.T, Q, R)
    pred = Phi @ np.asarray(ssm.initial_cov) @ Phi.T + Q
    errors = []
    for _ in range(200):
        errors.append(np.max(np.abs(pred - P)) / np.max(np.abs(P)))
        gain = np.linalg.solve(H @ pred @ H.T + R, H @ pred).T
        pred = Phi @ (pred - gain @ H @ pred) @ Phi.T + Q
    k = kalman.steps_to_steady_state(ssm)
    assert 64 < k < 128
    assert errors[k] < 1e-13 and errors[k - 1] > 1e-16  # reached at k, not long before
    assert kalman.steps_to_steady_state(ssm, limit=k - 5) == k - 4  # not within the limit

    def f(transition, process_cov, emission_cov, method, converged_after=None):
        s = ssm._replace(transition=transition, process_cov=process_cov, emission_cov=emission_cov)
        if method == "sequential":
            return cr.log_likelihood(s, y, method)
        return jnp.sum(kalman.log_likelihood_terms(s, y, method, steady_from=0,
                                                   converged_after=converged_after))

    args = (ssm.transition, ssm.process_cov, ssm.emission_cov)
    seq, g_seq = jax.value_and_grad(f, argnums=(0, 1, 2))(*args, "sequential")
    for check in (32, 64, None):
        fast, g_fast = jax.value_and_grad(f, argnums=(0, 1, 2))(*args, "fast", check)
        assert abs(float(seq) - float(fast)) < AGREE * abs(float(seq))
        for a, b in zip(g_seq, g_fast):
            np.testing.assert_allclose(b, a, rtol=1e-7, atol=1e-7 * float(jnp.max(jnp.abs(a))))
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="converged_after"):
            kalman.log_likelihood_terms(ssm, y, "fast", converged_after=bad)


def test_steady_state_equals_scipy_dare_and_its_implicit_gradient_is_right(rng):
    """The doubling DARE equals scipy's solver; its implicit VJP equals finite differences."""
    from scipy.linalg import solve_discrete_are

    from coregulation.inference.kalman import _dare

    n, p = 4, 2
    phi = rng.normal(size=(n, n))
    phi *= 0.95 / np.max(np.abs(np.linalg.eigvals(phi)))
    g = rng.normal(size=(n, n))
    q = g @ g.T + 0.1 * np.eye(n)
    h = rng.normal(size=(p, n))
    r = np.diag([0.3, 0.5])
    P = np.asarray(_dare(jnp.asarray(phi), jnp.asarray(q), jnp.asarray(h), jnp.asarray(r)))
    # scipy's control form with a = Phi^T, b = H^T is the filter's predicted form
    np.testing.assert_allclose(P, solve_discrete_are(phi.T, h.T, q, r), rtol=1e-9, atol=1e-10)

    weights = jnp.asarray(rng.normal(size=(n, n)))

    def f(phi, q, h, r):
        # covariances enter through their symmetric part (perturbing one off-diagonal
        # entry of a covariance alone is not a covariance)
        return jnp.sum(weights * _dare(phi, 0.5 * (q + q.T), h, 0.5 * (r + r.T)))

    args = [jnp.asarray(a) for a in (phi, q, h, r)]
    grads = jax.grad(f, argnums=(0, 1, 2, 3))(*args)
    eps = 1e-6
    for arg_index, grad in enumerate(grads):
        fd = np.zeros(grad.shape)
        for idx in np.ndindex(grad.shape):
            up = [a for a in args]
            down = [a for a in args]
            up[arg_index] = up[arg_index].at[idx].add(eps)
            down[arg_index] = down[arg_index].at[idx].add(-eps)
            fd[idx] = (float(f(*up)) - float(f(*down))) / (2 * eps)
        np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-6 * np.max(np.abs(fd)))


def test_small_inverse_pivots_and_its_gradient_is_right(rng):
    """Gauss-Jordan inverse (batched, pivoting) against numpy, VJP against LAPACK's."""
    from coregulation.inference.kalman import _small_inverse

    a = rng.normal(size=(6, 4, 4)) + 2 * np.eye(4)
    a[0] = np.eye(4)[[1, 0, 3, 2]]  # a zero leading entry: only pivoting gets it
    a[1, 0, 0] = 1e-14
    np.testing.assert_allclose(_small_inverse(jnp.asarray(a)), np.linalg.inv(a), rtol=1e-10,
                               atol=1e-10)
    weights = jnp.asarray(rng.normal(size=a.shape))
    mine = jax.grad(lambda m: jnp.sum(weights * _small_inverse(m)))(jnp.asarray(a))
    lapack = jax.grad(lambda m: jnp.sum(weights * jnp.linalg.inv(m)))(jnp.asarray(a))
    np.testing.assert_allclose(mine, lapack, rtol=1e-9, atol=1e-9)


def test_generic_dimensions_and_vmap(rng):
    """The engine is generic (n=3, p=3) and batches over series with vmap."""
    n, p, T = 3, 3, 25
    a = rng.normal(size=(n, n)) * 0.3
    q = rng.normal(size=(n, n))
    ssm = LGSSM(
        jnp.asarray(a)[None], jnp.asarray(q @ q.T + np.eye(n))[None], jnp.zeros(T, int),
        jnp.asarray(rng.normal(size=(T, n))), jnp.asarray(np.eye(p)), jnp.zeros(p),
        jnp.eye(p) * 0.5, jnp.zeros(n), jnp.eye(n),
    )
    ys = rng.normal(size=(4, T, p))
    ys[1, 5] = np.nan
    ys[2, :, 1] = np.nan
    batched = jax.vmap(lambda y: cr.log_likelihood(ssm, y, "fast"))(jnp.asarray(ys))
    for i in range(4):
        assert abs(float(batched[i]) - dense_log_likelihood(ssm, ys[i])) < AGREE


def test_bad_input_errors():
    model = cr.CTVAR()
    from conftest import CTVAR_TRUTH

    ssm = model.to_lgssm(CTVAR_TRUTH, TimeGrid.from_times(np.arange(1.0, 21.0)))
    with pytest.raises(ValueError, match="Transposed|transposed"):
        cr.log_likelihood(ssm, np.zeros((2, 20)))
    with pytest.raises(ValueError, match="method must be one of"):
        cr.log_likelihood(ssm, np.zeros((20, 2)), method="fastest")
    with pytest.raises(ValueError, match="built for 20 time points"):
        cr.log_likelihood(ssm, np.zeros((19, 2)))


def test_not_positive_definite_gives_minus_inf():
    model = cr.CTVAR(measurement_error=False)
    from conftest import CTVAR_TRUTH

    truth = {k: v for k, v in CTVAR_TRUTH.items() if k != "me_sd"}
    ssm = model.to_lgssm(truth, TimeGrid.from_times(np.arange(1.0, 21.0)))
    bad = ssm._replace(initial_cov=-jnp.eye(2), process_cov=-ssm.process_cov)
    for method in METHODS:
        assert float(cr.log_likelihood(bad, np.ones((20, 2)), method)) == -np.inf


def test_shared_observed_mask_equals_default(rng):
    """An explicit mask gives the same result as the NaN-derived one, batched or not."""
    from conftest import CTVAR_TRUTH

    model = cr.CTVAR()
    times = np.arange(1.0, 61.0)
    ssm = model.to_lgssm(CTVAR_TRUTH, TimeGrid.from_times(times))
    ys = np.stack([cr.simulate_series(model, CTVAR_TRUTH, times, jax.random.key(i)).y for i in range(3)])
    ys[:, 10] = np.nan
    ys[:, 20, 1] = np.nan
    mask = ~np.isnan(ys[0])
    for method in METHODS:
        shared = jax.vmap(lambda y: cr.log_likelihood(ssm, y, method, observed=mask))(ys)
        default = jax.vmap(lambda y: cr.log_likelihood(ssm, y, method))(ys)
        np.testing.assert_allclose(shared, default, rtol=1e-12)
    with pytest.raises(ValueError, match="observed must have"):
        cr.log_likelihood(ssm, ys[0], observed=mask[:10])


def test_closed_form_tail_matches_dense_joint_gaussian(model_case, rng):
    """The fast method's closed-form Riccati tail (hint given, tail >= 64 steps)."""
    _, model, truth = model_case
    times = np.arange(1.0, 121.0)
    y = np.array(cr.simulate_series(model, truth, times, jax.random.key(8)).y)
    y[4] = np.nan
    y[11, 0] = np.nan
    grid = TimeGrid.from_times(times)
    hint = steady_from_hint(grid.step_index, y)
    assert hint == 12 and len(times) - hint >= 64
    ssm = model.to_lgssm(truth, grid)
    reference = dense_log_likelihood(ssm, y)
    assert abs(float(cr.log_likelihood(ssm, y, "fast", steady_from=hint)) - reference) < AGREE
    out = cr.kalman_filter(ssm, y, "fast", steady_from=hint)
    ref = cr.kalman_filter(ssm, y, "sequential")
    np.testing.assert_allclose(out.filtered_covs, ref.filtered_covs, atol=1e-10)
    np.testing.assert_allclose(out.filtered_means, ref.filtered_means, atol=1e-9)
