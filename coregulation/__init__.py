"""coregulation: Bayesian dynamical-systems models of physiological coregulation in dyads.

Importing the package switches JAX to float64 (every likelihood here is float64).
It warns if jaxlib is 0.10.0-0.10.2, whose batched CPU LAPACK kernels can deadlock
(see README, "A note on JAX on CPU").
"""

import warnings as _warnings

import jax as _jax
import jaxlib as _jaxlib

_jax.config.update("jax_enable_x64", True)

if _jaxlib.__version__.startswith("0.10."):
    _warnings.warn(
        f"jaxlib {_jaxlib.__version__} can hang for good on batched linear algebra on CPU "
        "(its LAPACK kernels wait on XLA's thread pool from inside it); install "
        "jaxlib<0.10 or >=0.11 (coregulation's requirements exclude 0.10.*)",
        RuntimeWarning, stacklevel=2,
    )

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
