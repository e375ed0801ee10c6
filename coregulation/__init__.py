"""coregulation: Bayesian dynamical-systems models of physiological coregulation in dyads.

Importing the package switches JAX to float64 (every likelihood here is float64).

It also turns off XLA-CPU's multi-threaded Eigen pool (``XLA_FLAGS``
``--xla_cpu_multi_thread_eigen=false``) unless the flag is already set or
``COREG_XLA_MULTI_THREAD_EIGEN=1``: with jaxlib 0.10 on small machines that pool
was seen to wedge for good while materialising wide ``vmap`` results (all threads
idle, the caller blocked in ``BlockUntilReady``), which is what simulation studies
and prior-draw checks run.  The models' small matrices gain nothing from it.  The
flag only takes effect if the package is imported before JAX first computes.
"""

import os as _os

if _os.environ.get("COREG_XLA_MULTI_THREAD_EIGEN") != "1":
    _flags = _os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_multi_thread_eigen" not in _flags:
        _os.environ["XLA_FLAGS"] = (_flags + " --xla_cpu_multi_thread_eigen=false").strip()

import jax as _jax  # noqa: E402

_jax.config.update("jax_enable_x64", True)

from coregulation import data, simulate  # noqa: E402  (simulate: the subpackage)
from coregulation.inference.bayes import fit  # noqa: E402
from coregulation.inference.compare import (  # noqa: E402
    Comparison,
    LeaveFutureOut,
    compare,
    coupling_models,
    leave_future_out,
)
from coregulation.inference.hierarchy import Pooling  # noqa: E402
from coregulation.inference.kalman import (  # noqa: E402
    LGSSM,
    kalman_filter,
    kalman_smoother,
    log_likelihood,
)
from coregulation.inference.likelihood import SeriesLikelihood  # noqa: E402
from coregulation.inference.mle import MLEResult, fit_mle  # noqa: E402
from coregulation.inference.results import Fit, SamplerWarning, load_fit  # noqa: E402
from coregulation.models import (  # noqa: E402
    CTVAR,
    VAR1,
    CoupledOscillator,
    ParameterSpace,
    PriorScales,
    TimeGrid,
)
from coregulation.simulate import (  # noqa: E402
    simulate_dyads,
    simulate_series,
    simulate_shared_drive,
)

__version__ = "0.1.0"

__all__ = [
    "CTVAR",
    "Comparison",
    "VAR1",
    "CoupledOscillator",
    "Fit",
    "LGSSM",
    "LeaveFutureOut",
    "MLEResult",
    "ParameterSpace",
    "Pooling",
    "PriorScales",
    "SamplerWarning",
    "SeriesLikelihood",
    "TimeGrid",
    "compare",
    "coupling_models",
    "data",
    "fit",
    "fit_mle",
    "kalman_filter",
    "kalman_smoother",
    "leave_future_out",
    "load_fit",
    "log_likelihood",
    "simulate",
    "simulate_dyads",
    "simulate_series",
    "simulate_shared_drive",
]
