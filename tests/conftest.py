"""Strict test configuration: CPU, float64, rank promotion raises, fixed seeds."""

import os
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent compilation cache for the whole run, shared by the test processes and
# the notebooks' subprocesses: the same programs (a model's likelihood on the same
# shapes) recur across tests, and compiling dominates the suite's time.  It lives in the
# checkout (git-ignored), so a clean clone starts with it empty.  No size cap: with one,
# JAX locks the folder and scans every entry on each write (measured: the suite took
# 20 min instead of 17).  Without the lock a process can, rarely, read an entry another
# is still writing; JAX then warns and compiles (pyproject.toml lets that warning pass).
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(Path(__file__).parents[1] / ".jax_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import coregulation as cr  # noqa: E402

# Parameter sets used across tests: a coupled, stable example of each family.
CTVAR_TRUTH = dict(
    tau=np.array([10.0, 30.0]), therapist_to_client=0.4, client_to_therapist=-0.1,
    mu=np.array([0.2, -0.1]), latent_sd=np.array([1.0, 0.8]), shock_corr=0.3,
    me_sd=np.array([0.3, 0.4]),
)
OSCILLATOR_TRUTH = dict(
    period=np.array([40.0, 60.0]), damping_ratio=np.array([0.2, 0.3]),
    position_therapist_to_client=0.3, position_client_to_therapist=-0.1,
    velocity_therapist_to_client=0.2, velocity_client_to_therapist=0.05,
    mu=np.array([0.1, 0.0]), latent_sd=np.array([1.0, 0.9]), shock_corr=0.2,
    me_sd=np.array([0.3, 0.3]),
)
VAR1_TRUTH = dict(
    inertia=np.array([0.6, 0.4]), therapist_to_client=0.2, client_to_therapist=-0.1,
    mu=np.array([0.0, 0.3]), latent_sd=np.array([1.0, 1.2]), shock_corr=0.2,
    me_sd=np.array([0.4, 0.4]),
)

MODEL_CASES = {
    "ctvar": (cr.CTVAR, CTVAR_TRUTH),
    "oscillator": (cr.CoupledOscillator, OSCILLATOR_TRUTH),
    "var1": (cr.VAR1, VAR1_TRUTH),
}


@pytest.fixture(params=sorted(MODEL_CASES))
def model_case(request):
    cls, truth = MODEL_CASES[request.param]
    return request.param, cls(), dict(truth)


@pytest.fixture
def rng():
    return np.random.default_rng(20261125)
