"""Who leads? The model's directional posterior against the field's synchrony indices.

Scenarios (simulated, one 10-minute session per dyad at 1 s, known truth):

``therapist_led``   CT-VAR, therapist->client 0.4, client->therapist 0;
``client_led``      CT-VAR, client->therapist 0.4, therapist->client 0;
``uncoupled``       CT-VAR, no coupling, correlated shocks (0.3);
``shared_drive``    no coupling at all; both persons follow one slow common driver
                    with unequal time constants (5 s, 30 s; METHODS.md §1.5): the
                    lagged CCF then shows a "therapist-led" asymmetry.

Methods and their decisions (therapist-led / client-led / none):

``model``   a hierarchical CT-VAR fit of the scenario's dyads (couplings pooled,
            correlated shocks estimated), NUTS; per dyad, P(T->C > C->T) above 0.975
            says therapist-led, below 0.025 client-led;
``ccf``     lagged cross-correlation asymmetry (therapist-led minus client-led mean
            Fisher z over lags 1-10 s): a direction when |asymmetry| exceeds the 95%
            quantile over all pseudo-dyads of the scenario (the field's surrogate
            test), its sign gives the direction;
``susy``    SUSY's lead effect sizes (30-s segments, lags up to 10 s): the same
            pseudo-dyad rule on ES(therapist leads) - ES(client leads).

Rows: accuracy (decision equals the truth; "none" is right in the two null
scenarios), the share of each decision, and the false-positive rate (any direction
declared) in the null scenarios.  ``--dyads`` per scenario (default 20).
JSON rows go to ``benchmarks/results/directionality-<commit>.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)

import coregulation as cr  # noqa: E402
from coregulation.simulate import simulate_shared_drive_dyads  # noqa: E402
from coregulation.synchrony import lead_lag, pseudo_dyads, susy  # noqa: E402

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from kalman_speed import environment, write_results  # noqa: E402

BASE = dict(tau=np.array([10.0, 20.0]), mu=np.zeros(2), latent_sd=np.ones(2),
            me_sd=np.array([0.3, 0.3]))
SCENARIOS = {
    "therapist_led": ("therapist", dict(BASE, therapist_to_client=0.4, client_to_therapist=0.0,
                                        shock_corr=0.0)),
    "client_led": ("client", dict(BASE, therapist_to_client=0.0, client_to_therapist=0.4,
                                  shock_corr=0.0)),
    "uncoupled": ("none", dict(BASE, therapist_to_client=0.0, client_to_therapist=0.0,
                               shock_corr=0.3)),
    "shared_drive": ("none", None),
}
MAX_LAG = 10


def simulate(name: str, dyads: int, seed: int):
    _, params = SCENARIOS[name]
    key = jax.random.key(seed)
    if params is None:
        ds, _ = simulate_shared_drive_dyads(key, num_dyads=dyads, duration=600,
                                            tau=(5.0, 30.0), drive_tau=60.0, me_sd=(0.3, 0.3))
        return ds
    ds, _ = cr.simulate_dyads(cr.CTVAR(), params, key, num_dyads=dyads, duration=600)
    return ds


def model_decisions(ds, seed: int, settings: dict) -> list[str]:
    pooling = cr.Pooling(parameters=("therapist_to_client", "client_to_therapist"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = cr.fit(cr.CTVAR(), ds, pooling=pooling, seed=seed, num_predictive=0,
                     progress_bar=False, warn=False, **settings)
    post = fit.idata.posterior
    diff = post["therapist_to_client_by_dyad"] - post["client_to_therapist_by_dyad"]
    p_t_led = (diff > 0).mean(("chain", "draw")).values
    return ["therapist" if p > 0.975 else "client" if p < 0.025 else "none" for p in p_t_led]


def _index_pairs(ds):
    for i in range(ds.sizes["dyad"]):
        y = ds["y"].values[i, 0]
        ok = np.isfinite(ds["time"].values[i, 0])
        yield y[ok, 0], y[ok, 1]


def index_decisions(ds, seed: int) -> dict[str, list[str]]:
    """CCF and SUSY decisions by the pseudo-dyad surrogate rule."""
    def ccf(x, y):
        return float(lead_lag(x, y, MAX_LAG)["asymmetry"])

    def susy_asym(x, y):
        s = susy(x, y, segment=30.0, hz=1.0, max_lag=float(MAX_LAG)).summary()
        return float(s["ES_therapist_leads"] - s["ES_client_leads"])

    pseudo = pseudo_dyads(ds, all_pairs=True)
    out = {}
    for name, index in (("ccf", ccf), ("susy", susy_asym)):
        real = np.array([index(x, y) for x, y in _index_pairs(ds)])
        null = np.abs([index(x, y) for x, y in _index_pairs(pseudo)])
        cut = np.quantile(null, 0.95)
        out[name] = ["none" if abs(v) <= cut else "therapist" if v > 0 else "client"
                     for v in real]
    return out


def score(truth: str, decisions: list[str]) -> dict:
    d = np.asarray(decisions)
    row = {
        "accuracy": float(np.mean(d == truth)),
        "share_therapist_led": float(np.mean(d == "therapist")),
        "share_client_led": float(np.mean(d == "client")),
        "share_none": float(np.mean(d == "none")),
    }
    if truth == "none":
        row["false_positive_rate"] = float(np.mean(d != "none"))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dyads", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="2 chains x 200 + 200")
    args = parser.parse_args()
    settings = (dict(num_chains=2, num_warmup=200, num_samples=200) if args.quick
                else dict(num_chains=2, num_warmup=500, num_samples=500))
    env = environment()
    rows = []
    for s, (name, (truth, _)) in enumerate(SCENARIOS.items()):
        ds = simulate(name, args.dyads, args.seed + s)
        start = time.perf_counter()
        decisions = {"model": model_decisions(ds, args.seed + s, settings)}
        fit_s = time.perf_counter() - start
        decisions.update(index_decisions(ds, args.seed + s))
        for method, d in decisions.items():
            row = {"benchmark": "directionality", "scenario": name, "truth": truth,
                   "method": method, "dyads": args.dyads, **score(truth, d),
                   **({"fit_s": fit_s, **settings} if method == "model" else {})}
            rows.append(row)
            print(json.dumps(row), flush=True)
    write_results(f"directionality-{env['commit']}{'-quick' if args.quick else ''}", env, rows)


if __name__ == "__main__":
    main()
