"""Regenerate the bundled synthetic demo data: ``python -m coregulation.datasets._make``."""

import json
from pathlib import Path

import jax
import numpy as np
import pandas as pd

import coregulation as cr

DEMO_TRUTH = dict(
    tau=[8.0, 20.0], therapist_to_client=0.5, client_to_therapist=0.0,
    mu=[0.0, 0.0], latent_sd=[1.0, 1.0], shock_corr=0.2, me_sd=[0.3, 0.3],
)
HEART_RATE = {"therapist": (72.0, 4.0), "client": (84.0, 6.0)}  # mean, SD in bpm


def make_demo_data(folder: Path) -> None:
    times = np.arange(1.0, 1201.0)
    truth = {k: np.asarray(v) for k, v in DEMO_TRUTH.items()}
    sim = cr.simulate_series(cr.CTVAR(), truth, times, jax.random.key(20261125))
    rows = []
    for r, role in enumerate(("therapist", "client")):
        mean, sd = HEART_RATE[role]
        values = np.round(mean + sd * sim.y[:, r], 3)
        rows.append(pd.DataFrame({"dyad": "demo", "session": 1, "time": times, "role": role,
                                  "value": values}))
    pd.concat(rows).to_csv(folder / "demo_dyad.csv", index=False)
    (folder / "demo_dyad_truth.json").write_text(json.dumps(DEMO_TRUTH, indent=1))


# The demo study: 20 therapist-client dyads x 2 sessions of 5 min heart rate at 1 s,
# with mixed, known coupling (standardised CT-VAR drift; the rest as STUDY_BASE).
STUDY_PATTERNS = {
    "therapist-led": (0.5, 0.0),
    "client-led": (0.0, 0.5),
    "mutual": (0.35, 0.35),
    "uncoupled": (0.0, 0.0),
}
# Time constants of 5 and 8 s: heart-rate fluctuations at the scale of the
# baroreflex, so that a 5-minute session spans dozens of time constants and each
# dyad's coupling is identified well enough to compare with the truth.
STUDY_BASE = {**DEMO_TRUTH, "tau": [5.0, 8.0]}
STUDY_DYADS = 20
STUDY_SESSIONS = 2
STUDY_DURATION = 300.0


def study_truth() -> pd.DataFrame:
    """Per-dyad true couplings of the demo study (patterns in turn, 5 dyads each)."""
    names = list(STUDY_PATTERNS)
    rows = []
    for i in range(STUDY_DYADS):
        pattern = names[i % len(names)]
        t_to_c, c_to_t = STUDY_PATTERNS[pattern]
        rows.append({"dyad": f"D{i + 1:02d}", "pattern": pattern,
                     "therapist_to_client": t_to_c, "client_to_therapist": c_to_t,
                     "tau_therapist": STUDY_BASE["tau"][0], "tau_client": STUDY_BASE["tau"][1]})
    return pd.DataFrame(rows)


def make_study_data(folder: Path) -> None:
    truth = study_truth()
    times = np.arange(1.0, STUDY_DURATION + 1.0)
    key = jax.random.key(20261126)
    rows = []
    for _, row in truth.iterrows():
        params = {k: np.asarray(v) for k, v in STUDY_BASE.items()}
        params["therapist_to_client"] = np.asarray(row.therapist_to_client)
        params["client_to_therapist"] = np.asarray(row.client_to_therapist)
        for session in range(1, STUDY_SESSIONS + 1):
            key, sub = jax.random.split(key)
            sim = cr.simulate_series(cr.CTVAR(), params, times, sub)
            for r, role in enumerate(("therapist", "client")):
                mean, sd = HEART_RATE[role]
                values = np.round(mean + sd * sim.y[:, r], 3)
                rows.append(pd.DataFrame({"dyad": row.dyad, "session": session, "time": times,
                                          "role": role, "value": values}))
    pd.concat(rows).to_csv(folder / "demo_study.csv.gz", index=False)
    truth.to_csv(folder / "demo_study_truth.csv", index=False)


if __name__ == "__main__":
    make_demo_data(Path(__file__).parent)
    make_study_data(Path(__file__).parent)
