"""Model comparison: PSIS-LOO over dyad-sessions and leave-future-out within sessions.

The question researchers ask is which coupling structure the data support:
none, one direction, or both.  :func:`coupling_models` builds the nested
alternatives of a model, :func:`compare` ranks fitted models by expected log
predictive density (elpd) and writes a verdict.

Two criteria:

``"loo"``
    Pareto-smoothed importance-sampling leave-one-out cross-validation (Vehtari,
    Gelman & Gabry 2017) with one *dyad-session* as the unit left out: how well the
    model predicts a whole new session of a dyad.  Computed by ArviZ from the
    pointwise log-likelihood stored in every fit.
``"lfo"``
    Leave-future-out (Bürkner, Gabry & Vehtari 2020): one-step-ahead predictions of
    the last part of every session from its past, ``sum_i log p(y_i | y_<i)`` with
    the posterior refitted on the past only.  PSIS re-weights the draws as the
    past grows and a new fit is made whenever the Pareto ``k`` of the weights
    passes a threshold.  Joint over series: at step ``i`` every session's value
    is predicted from every session's past (the chain rule over the step index
    keeps this an exact log predictive density).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Mapping

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from scipy.special import logsumexp

from coregulation.inference.batch import build_batch_log_likelihood
from coregulation.models._base import Model

CRITERIA = ("loo", "lfo")
# Differences below this many standard errors are not taken as evidence.
DECISIVE_SE = 2.0
PARETO_K_MAX = 0.7


def coupling_models(model: Model) -> dict[str, Model]:
    """The model with no coupling, each one-way coupling, and two-way coupling.

    Every coupling parameter of a direction (position and velocity coupling for
    the oscillator) is fixed at 0 to switch that direction off; all else is
    unchanged.  Keys are readable labels, simplest first.
    """
    t, c = model.roles
    forward = [n for n in model.coupling_names if n.endswith("therapist_to_client")]
    backward = [n for n in model.coupling_names if n.endswith("client_to_therapist")]
    if not forward or not backward:
        raise ValueError(
            f"{type(model).__name__} has no coupling in both directions to switch off "
            f"(coupling parameters: {list(model.coupling_names)})."
        )

    def without(names):
        fixed = {**model.fixed, **{n: 0.0 for n in names}}
        return dataclasses.replace(model, fixed=fixed)

    return {
        "uncoupled": without(forward + backward),
        f"{t} → {c} only": without(backward),
        f"{c} → {t} only": without(forward),
        "two-way": model,
    }


@dataclasses.dataclass
class Comparison:
    """Ranked models: ``table`` (one row per model, best first) and a ``verdict``."""

    criterion: str
    table: pd.DataFrame
    verdict: str
    details: dict = dataclasses.field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.table.to_string()}\n\n{self.verdict}"


def compare(fits: Mapping, criterion: str = "loo", **lfo_options) -> Comparison:
    """Rank fits of the same data by expected log predictive density.

    Parameters
    ----------
    fits
        ``{label: Fit}``, all fitted to the same data set (e.g. from
        :func:`coupling_models`).  Labels should be listed simplest first: among
        models the data cannot tell apart, the verdict names the first.
    criterion
        ``"loo"`` (PSIS-LOO over dyad-sessions) or ``"lfo"`` (leave-future-out
        within sessions; refits, so it takes as long as a few fits).
    lfo_options
        For ``"lfo"``: passed to :func:`leave_future_out` (``horizon``,
        ``threshold``, fit settings for the refits).
    """
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}; got {criterion!r}.")
    if not isinstance(fits, Mapping) or len(fits) < 2:
        raise ValueError(f"fits must be a mapping of at least two labelled fits; got {fits!r}.")
    labels = list(fits)
    _check_same_data(fits)
    if criterion == "loo":
        if lfo_options:
            raise TypeError(f"options {sorted(lfo_options)} apply to criterion='lfo' only.")
        num_series = fits[labels[0]].idata.observed_data.sizes["series"]
        if num_series < 2:
            raise ValueError(
                "PSIS-LOO leaves out one dyad-session at a time and the data have "
                f"{num_series}; use criterion='lfo' (leave-future-out within the session)."
            )
        for label, f in fits.items():
            if f.idata.posterior.sizes["chain"] * f.idata.posterior.sizes["draw"] < 2:
                raise ValueError(
                    f"fit {label!r} has a single draw ({f.method}); PSIS-LOO needs posterior "
                    "draws: use method='nuts', 'svi' or 'laplace'."
                )
        for label, f in fits.items():
            values = np.asarray(f.idata.log_likelihood["y"].values)
            bad = ~np.isfinite(values)
            if bad.any():
                raise ValueError(
                    f"fit {label!r}: {bad.mean():.1%} of the pointwise log-likelihoods are not "
                    "finite (draws with unstable dynamics or failed covariances); PSIS-LOO "
                    "is undefined. Refit with method='nuts' (Laplace draws can leave the "
                    "stable region) or check the model."
                )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loos = {label: az.loo(f.idata, pointwise=True, var_name="y")
                    for label, f in fits.items()}
        pointwise = {label: np.asarray(l.loo_i.values) for label, l in loos.items()}
        bad_k = {label: int((np.asarray(l.pareto_k.values) > PARETO_K_MAX).sum())
                 for label, l in loos.items()}
        notes = [
            f"Unreliable for {label}: {n} of {pointwise[label].size} dyad-sessions have "
            f"Pareto k > {PARETO_K_MAX} (leaving one out moves the posterior too far for "
            "importance sampling, typically when a dyad has one session and its own "
            "parameters); do not rely on this verdict: use criterion='lfo', or pool the "
            "parameters more."
            for label, n in bad_k.items() if n
        ]
        details = {"loo": loos, "pareto_k_bad": bad_k}
    else:
        results = {label: leave_future_out(f, **lfo_options) for label, f in fits.items()}
        pointwise = {label: r.pointwise for label, r in results.items()}
        notes = [
            f"{label}: the Pareto k of the PSIS weights stayed at or below the refit "
            f"threshold; {len(r.refits)} fit(s) on the past were made."
            for label, r in results.items()
        ]
        details = {"lfo": results}
    table = _rank(pointwise, labels)
    verdict = _verdict(table, labels, criterion, notes)
    return Comparison(criterion, table, verdict, details)


def _check_same_data(fits: Mapping) -> None:
    labels = list(fits)
    first = fits[labels[0]].idata.observed_data["y"]
    for label in labels[1:]:
        other = fits[label].idata.observed_data["y"]
        same = (first.shape == other.shape
                and list(first["series"].values) == list(other["series"].values)
                and np.array_equal(np.isnan(first.values), np.isnan(other.values))
                and np.allclose(np.nan_to_num(first.values), np.nan_to_num(other.values)))
        if not same:
            raise ValueError(
                f"fits {labels[0]!r} and {label!r} were made on different data (series, "
                "values or missingness differ); predictive densities are comparable only "
                "on the same data."
            )


def _rank(pointwise: dict, labels: list) -> pd.DataFrame:
    elpd = {label: float(np.sum(v)) for label, v in pointwise.items()}
    order = sorted(labels, key=lambda k: -elpd[k])
    best = order[0]
    rows = []
    for rank, label in enumerate(order):
        values = pointwise[label]
        diff = pointwise[best] - values
        rows.append({
            "model": label, "rank": rank, "elpd": elpd[label],
            "se": float(math.sqrt(values.size * np.var(values))),
            "elpd_diff": float(np.sum(diff)),
            "dse": float(math.sqrt(diff.size * np.var(diff))),
        })
    table = pd.DataFrame(rows).set_index("model")
    with np.errstate(divide="ignore", invalid="ignore"):
        table["diff_in_se"] = np.where(table["dse"] > 0, table["elpd_diff"] / table["dse"], 0.0)
    return table


def _verdict(table: pd.DataFrame, labels: list, criterion: str, notes: list) -> str:
    name = {"loo": "PSIS-LOO over dyad-sessions",
            "lfo": "leave-future-out one-step-ahead predictions"}[criterion]
    best = table.index[0]
    # the simplest model (earliest label) the data cannot tell apart from the best
    tied = [m for m in labels if table.loc[m, "diff_in_se"] < DECISIVE_SE]
    choice = tied[0]
    lines = []
    for m in table.index[1:]:
        row = table.loc[m]
        strength = ("clearly worse" if row["diff_in_se"] >= DECISIVE_SE
                    else "not distinguishable")
        lines.append(f"  {m}: elpd lower by {row['elpd_diff']:.1f} (SE {row['dse']:.1f}, "
                     f"{row['diff_in_se']:.1f} SE): {strength}")
    if choice == best:
        head = (f"By {name}, {best!r} predicts best, and every other model is worse by at "
                f"least {DECISIVE_SE:g} standard errors of the difference.")
        if len(tied) > 1:
            head = f"By {name}, {best!r} predicts best."
    else:
        head = (f"By {name}, {best!r} predicts best, but the data do not distinguish it from "
                f"the simpler {choice!r} (difference {table.loc[choice, 'elpd_diff']:.1f}, "
                f"SE {table.loc[choice, 'dse']:.1f}); prefer {choice!r}.")
    return "\n".join([head, *lines, *notes, f"Preferred: {choice}."])


# ----------------------------------------------------------------------------------
# leave-future-out
# ----------------------------------------------------------------------------------


@dataclasses.dataclass
class LeaveFutureOut:
    """PSIS-LFO result: ``elpd`` and its ``se``; per predicted step the joint
    ``pointwise`` log predictive density and the ``pareto_k`` of its weights;
    ``refits``: the steps at which the posterior was refitted on the past."""

    elpd: float
    se: float
    pointwise: np.ndarray
    pareto_k: np.ndarray
    steps: np.ndarray
    refits: list


def leave_future_out(fit, *, horizon: float = 0.2, threshold: float = PARETO_K_MAX,
                     max_draws: int = 1000, **fit_overrides) -> LeaveFutureOut:
    """One-step-ahead leave-future-out elpd of the last ``horizon`` of every session.

    The posterior is refitted with the future of every session masked (the same
    settings as ``fit``, changed by ``fit_overrides``, e.g. ``method="laplace"``
    for speed); PSIS weights then carry it forward step by step and it is refitted
    whenever their Pareto ``k`` exceeds ``threshold`` (Bürkner et al. 2020).  The
    fits run on the standardised data of ``fit`` (scale factors from the whole
    session, as in the original fit).
    """
    from coregulation.inference.bayes import fit as fit_model

    if fit.problem is None or not fit.fit_options:
        raise ValueError(
            "leave_future_out refits the model, so it needs a fit made by coregulation.fit "
            "in this session (a fit loaded from netCDF has no data batch); refit first."
        )
    if not 0 < horizon < 1:
        raise ValueError(f"horizon must be a fraction in (0, 1); got {horizon}.")
    if not threshold > 0:
        raise ValueError(f"threshold must be positive; got {threshold}.")
    problem = fit.problem
    batch = problem.batch
    lengths = batch.valid.sum(axis=1)
    first = int(np.min(lengths - np.ceil(horizon * lengths)))
    last = int(batch.num_timesteps)
    if first < 10:
        raise ValueError(
            f"horizon={horizon} leaves fewer than 10 points of the shortest session to fit "
            "the past on; use a smaller horizon."
        )
    options = {**fit.fit_options, **fit_overrides}
    options.update(num_predictive=0, warn=False, progress_bar=False, standardise=True)
    if options.get("method") == "map":
        raise ValueError("leave-future-out needs posterior draws; use method='nuts', 'svi' or "
                         "'laplace' for the refits (fit_overrides).")
    terms_fn = jax.jit(jax.vmap(build_batch_log_likelihood(
        fit.model, batch, method=problem.kalman,
        per_step=True)))

    def refit_terms(cut: int) -> np.ndarray:
        data = _mask_future(problem.data, cut)
        past = fit_model(fit.model, data, **options)
        draws = past.parameter_draws(level="series", max_draws=max_draws)
        terms = np.asarray(terms_fn({k: jnp.asarray(v) for k, v in draws.items()}))
        return terms.sum(axis=1)  # (draw, time): joint over series

    refits = [first]
    step_terms = refit_terms(first)
    anchor = first
    pointwise, ks = [], []
    for i in range(first, last):
        log_ratio = step_terms[:, anchor:i].sum(axis=1)
        k = 0.0
        if i > anchor:
            log_weights, k = _psis(log_ratio)
            if k > threshold:
                refits.append(i)
                step_terms = refit_terms(i)
                anchor = i
                k = 0.0
        if i == anchor:
            log_weights = np.full(step_terms.shape[0], -np.log(step_terms.shape[0]))
        pointwise.append(float(logsumexp(log_weights + step_terms[:, i])))
        ks.append(float(k))
    pointwise = np.asarray(pointwise)
    return LeaveFutureOut(
        elpd=float(pointwise.sum()), se=float(math.sqrt(pointwise.size * np.var(pointwise))),
        pointwise=pointwise, pareto_k=np.asarray(ks), steps=np.arange(first, last),
        refits=refits,
    )


def _psis(log_ratio: np.ndarray) -> tuple[np.ndarray, float]:
    """Pareto-smoothed, normalised log weights and the shape estimate ``k``."""
    log_ratio = np.where(np.isfinite(log_ratio), log_ratio, -np.inf)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        smoothed, k = az.psislw(log_ratio - np.max(log_ratio))
    return np.asarray(smoothed), float(k)


def _mask_future(data, cut: int):
    """A copy of ``data`` with every series' values from time index ``cut`` on missing."""
    masked = data.copy(deep=True)
    y = masked["y"].values
    y[:, :, cut:, :] = np.nan
    masked["y"].values = y
    return masked
