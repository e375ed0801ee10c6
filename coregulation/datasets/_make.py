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


if __name__ == "__main__":
    make_demo_data(Path(__file__).parent)
