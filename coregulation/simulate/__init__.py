"""Exact simulation: single series, many dyads and sessions, the shared-drive scenario."""

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

__all__ = [
    "Simulation",
    "add_missing",
    "sample_lgssm",
    "shared_drive_system",
    "simulate_series",
    "simulate_dyads",
    "simulate_shared_drive",
    "simulate_shared_drive_dyads",
]
