"""coregulation: Bayesian dynamical-systems models of physiological coregulation in dyads.

Importing the package switches JAX to float64 (every likelihood here is float64).
It warns if jaxlib is 0.10.0-0.10.2, whose batched CPU LAPACK kernels can deadlock
(see README, "A note on JAX on CPU").

If JAX has not started yet, importing the package also asks it for several CPU
devices (``max(4, min(cores, 16))``; set ``COREGULATION_CPU_DEVICES`` to choose,
``1`` to keep one), so that ``fit`` runs NUTS chains side by side on the cores
(``chain_method="parallel"``).  A device count the user set (``XLA_FLAGS``,
``jax_num_cpu_devices``) is left alone, and so is a JAX that is already running.

It also asks XLA to compile CPU programs with its elemental emitters rather than its
fusion emitters (``--xla_cpu_use_fusion_emitters=false`` in ``XLA_FLAGS``, for jaxlib
0.6-0.9, if JAX has not started and the flag is not set already): fits compile about
a third faster and run as fast or faster (measured in benchmarks/RESULTS.md).
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

# jaxlib releases whose XLA takes ``--xla_cpu_use_fusion_emitters`` (checked: 0.6.2,
# 0.7.0, 0.8.0, 0.9.2).  XLA aborts at start-up on a flag it does not know, so the flag
# is only ever added for these.
_FUSION_EMITTER_FLAG_RELEASES = ("0.6.", "0.7.", "0.8.", "0.9.")


def _cpu_codegen_flag() -> None:
    """Compile CPU programs with XLA's elemental emitters, not its newer fusion emitters.

    Measured on this project's 2-core machine, jaxlib 0.9.2 (benchmarks/RESULTS.md,
    "XLA's CPU emitters"): the oscillator's fast likelihood (T = 600, value and
    gradient) compiles in 5.7 s instead of 8.0 s and runs as fast; a whole NUTS fit of
    case (i) took 36 s instead of 44-47 s; the 40-series hierarchical likelihood of
    case (ii) compiles about 30% faster and, vmapped, runs in 4.3 instead of 7.0 ms.
    Only while JAX has not started, only for the releases above, and never when
    ``XLA_FLAGS`` already names the flag (set it to ``true`` to keep XLA's default).
    """
    from jax._src import xla_bridge

    flags = _os.environ.get("XLA_FLAGS", "")
    if ("xla_cpu_use_fusion_emitters" in flags
            or not _jaxlib.__version__.startswith(_FUSION_EMITTER_FLAG_RELEASES)
            or xla_bridge.backends_are_initialized()):
        return
    _os.environ["XLA_FLAGS"] = f"{flags} --xla_cpu_use_fusion_emitters=false".strip()


_cpu_codegen_flag()

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
