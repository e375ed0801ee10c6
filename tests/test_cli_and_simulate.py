"""CLI smoke test, bundled data, simulator contracts and reproducibility."""

from pathlib import Path

import jax
import numpy as np
import pandas as pd
import pytest
from conftest import CTVAR_TRUTH
from typer.testing import CliRunner

import coregulation as cr
from coregulation.cli import app
from coregulation.datasets import demo_dyad


def test_demo_command_prints_the_table_against_truth_and_writes_outputs(tmp_path):
    out = tmp_path / "demo"
    args = ["demo", "--dyads", "3", "--chains", "1", "--warmup", "30", "--samples", "30",
            "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    for dyad in ("D01", "D02", "D03"):
        assert dyad in result.output
    assert "D04" not in result.output
    assert "true couplings inside their 95% intervals" in result.output
    table = pd.read_csv(out / "coupling_table.csv")
    assert set(table["dyad"].dropna()) >= {"D01", "D02", "D03"}
    fit = cr.load_fit(out / "fit.nc")
    assert fit.idata.posterior.sizes["draw"] == 30
    assert (out / "figures" / "coupling_forest.png").stat().st_size > 0


def test_bundled_demo_data_is_valid():
    ds, truth = demo_dyad()
    assert ds.sizes["time"] == 1200 and list(ds.role.values) == ["therapist", "client"]
    assert truth["client_to_therapist"] == 0.0


def test_same_key_same_bits_and_different_key_differs():
    times = np.arange(1.0, 101.0)
    a = cr.simulate_series(cr.CTVAR(), CTVAR_TRUTH, times, jax.random.key(4))
    b = cr.simulate_series(cr.CTVAR(), CTVAR_TRUTH, times, jax.random.key(4))
    c = cr.simulate_series(cr.CTVAR(), CTVAR_TRUTH, times, jax.random.key(5))
    np.testing.assert_array_equal(a.y, b.y)
    assert not np.allclose(a.y, c.y)


def test_simulated_variance_matches_stationary_covariance():
    model = cr.CTVAR()
    times = np.cumsum(np.random.default_rng(0).uniform(0.5, 3.0, 50_000))  # irregular
    sim = cr.simulate_series(model, CTVAR_TRUTH, times, jax.random.key(9))
    stat = np.asarray(model.stationary_state_cov(CTVAR_TRUTH))
    np.testing.assert_allclose(np.cov(sim.states.T), stat, atol=0.06)


def test_simulate_dyads_contract_truth_and_missingness():
    model = cr.CTVAR(inputs=("speaking",))
    params = dict(CTVAR_TRUTH, input_effect=np.array([[0.5], [0.0]]))
    ds, truth = cr.simulate_dyads(
        model, params, jax.random.key(0), num_dyads=3, num_sessions=2, duration=1800.0,
        dyad_sd={"therapist_to_client": 0.3}, missing_rate=0.05, burst_rate=4.0,
    )
    assert ds.y.shape == (3, 2, 1800, 2) and ds.u.shape == (3, 2, 1800, 1)
    share = float(np.isnan(ds.y.values).mean())
    assert 0.05 < share < 0.35
    assert np.unique(truth.therapist_to_client.values).size == 3
    assert np.all(truth.client_to_therapist.values == CTVAR_TRUTH["client_to_therapist"])
    assert set(np.unique(ds.u.values)) == {0.0, 1.0}


def test_simulate_rejects_unstable_stationary():
    bad = dict(CTVAR_TRUTH, therapist_to_client=2.0, client_to_therapist=2.0)
    with pytest.raises(ValueError, match="unstable"):
        cr.simulate_series(cr.CTVAR(), bad, np.arange(1.0, 50.0), jax.random.key(0))


def test_fit_mle_bad_input_errors():
    with pytest.raises(ValueError, match="Transposed"):
        cr.fit_mle(cr.CTVAR(), np.arange(1.0, 3.0), np.zeros((2, 40)))
    with pytest.raises(ValueError, match="at least 10"):
        cr.fit_mle(cr.CTVAR(), np.arange(1.0, 6.0), np.zeros((5, 2)))


def test_shared_drive_study_returns_contract_and_null_truth():
    from coregulation.simulate import simulate_shared_drive_dyads

    ds, truth = simulate_shared_drive_dyads(
        jax.random.key(3), num_dyads=2, num_sessions=2, duration=300.0, missing_rate=0.02,
        me_sd=(0.2, 0.2),
    )
    assert ds.y.shape == (2, 2, 300, 2)
    assert list(truth.state.values) == ["x_therapist", "x_client", "drive"]
    assert float(abs(truth.therapist_to_client).sum() + abs(truth.client_to_therapist).sum()) == 0.0
    # the roles share the drive: lag-0 correlation as the Lyapunov solution says
    import scipy.linalg

    from coregulation.simulate import shared_drive_system

    (long, _) = simulate_shared_drive_dyads(jax.random.key(4), duration=20_000.0, me_sd=(0.2, 0.2))
    A, S = shared_drive_system()
    stat = scipy.linalg.solve_continuous_lyapunov(A, -S)
    analytic = stat[0, 1] / np.sqrt((stat[0, 0] + 0.04) * (stat[1, 1] + 0.04))
    y = long.y.values[0, 0]
    assert analytic > 0.3
    # 20,000 s is ~330 drive time constants: SE of the correlation ~0.05
    assert abs(np.corrcoef(y[:, 0], y[:, 1])[0, 1] - analytic) < 0.15


def test_atomic_write_keeps_old_file_on_failure_and_uses_umask_permissions(tmp_path):
    from coregulation._atomic import _UMASK, atomic_write

    target = tmp_path / "result.txt"
    atomic_write(target, lambda tmp: Path(tmp).write_text("first"))
    assert target.read_text() == "first"
    assert (target.stat().st_mode & 0o777) == (0o666 & ~_UMASK)

    def broken(tmp):
        Path(tmp).write_text("half")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError, match="killed mid-write"):
        atomic_write(target, broken)
    assert target.read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.txt"]  # no .partial left
