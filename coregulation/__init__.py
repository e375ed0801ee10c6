"""coregulation: Bayesian dynamical-systems models of physiological coregulation in dyads.

Importing the package switches JAX to float64 (every likelihood here is float64).
It warns if jaxlib is 0.10.0-0.10.2, whose batched CPU LAPACK kernels can deadlock
(see README, "A note on JAX on CPU").

If JAX has not started yet, importing the package also asks it for several CPU
devices (``max(4, min(cores, 16))``; set ``COREGULATION_CPU_DEVICES`` to choose,
``1`` to keep one), so that ``fit`` runs NUTS chains side by side on the cores
(``chain_method="parallel"``).  A device count the user set (``XLA_FLAGS``,
``jax_num_cpu_devices``) is left alone, and so is a JAX that is already running.
"""

import os as _os
import warnings as _warnings

import jax as _jax
import jaxlib as _jaxlib

_jax.config.update("jax_enable_x64", True)


def _ask_for_cpu_devices() -> None:
    if ("xla_force_host_platform_device_count" in _os.environ.get("XLA_FLAGS", "")
            or _jax.config.jax_num_cpu_devices != -1):
        return
    wanted = _os.environ.get("COREGULATION_CPU_DEVICES", "").strip()
    if wanted:
        if not wanted.isdigit() or int(wanted) < 1:
            _warnings.warn(
                f"COREGULATION_CPU_DEVICES must be a whole number >= 1; got {wanted!r}. "
                "JAX's CPU devices are left as they are.", RuntimeWarning, stacklevel=3,
            )
            return
        count = int(wanted)
    else:
        count = max(4, min(_os.cpu_count() or 1, 16))
    try:
        _jax.config.update("jax_num_cpu_devices", count)
    except RuntimeError:  # JAX already runs: its devices can no longer change
        pass


_ask_for_cpu_devices()

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
