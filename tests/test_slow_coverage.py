"""Statistical tier (``make test-slow``): coverage of MLE intervals over replicates."""

import jax
import numpy as np
import pytest
from conftest import CTVAR_TRUTH

import coregulation as cr

NUM_REPLICATES = 60
# Binomial Monte Carlo SE of a 95% coverage over 60 replicates is 0.028; the band
# [0.83, 1.0] is ~4 SE below nominal, a false-alarm rate well under 0.1%.
COVERAGE_LOW = 0.83


@pytest.mark.slow
def test_wald_interval_coverage_of_couplings_ctvar():
    model = cr.CTVAR()
    times = np.arange(1.0, 2001.0)
    hits = {"therapist_to_client": 0, "client_to_therapist": 0}
    for r in range(NUM_REPLICATES):
        sim = cr.simulate_series(model, CTVAR_TRUTH, times, jax.random.key(1000 + r))
        fit = cr.fit_mle(model, times, sim.y, init=CTVAR_TRUTH)
        for name in hits:
            est, se = float(fit.params[name]), float(fit.se[name])
            hits[name] += abs(est - CTVAR_TRUTH[name]) < 1.96 * se
    for name, count in hits.items():
        assert count / NUM_REPLICATES >= COVERAGE_LOW, (name, count)
