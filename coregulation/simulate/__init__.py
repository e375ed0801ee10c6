"""Exact simulation, and simulation studies built on it.

* single series, many dyads and sessions, the shared-drive scenario
  (``simulate_series``, ``simulate_dyads``, ``simulate_shared_drive``);
* recovery studies and SBC from a study file, local or on Dask, resumable
  (``Study``, ``run_study``, ``load_study``, ``recovery_metrics``; ``sbc``);
* null calibration (``null``: pseudo-dyads, model-based surrogates) and power
  planning (``power_curve``).
"""

from coregulation.simulate._simulate import (
    Simulation,
    add_missing,
    sample_lgssm,
    shared_drive_system,
    simulate_dyads,
    simulate_series,
    simulate_shared_drive,
    simulate_shared_drive_dyads,
)
from coregulation.simulate.power import power_curve, power_table
from coregulation.simulate.recovery import (
    load_study,
    metrics_table,
    recovery_metrics,
    run_chunk,
    run_study,
)
from coregulation.simulate.study import Study

__all__ = [
    "Simulation",
    "Study",
    "add_missing",
    "load_study",
    "metrics_table",
    "power_curve",
    "power_table",
    "recovery_metrics",
    "run_chunk",
    "run_study",
    "sample_lgssm",
    "shared_drive_system",
    "simulate_series",
    "simulate_dyads",
    "simulate_shared_drive",
    "simulate_shared_drive_dyads",
]
