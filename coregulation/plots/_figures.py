"""Implementation of the fit figures (matplotlib, Agg-safe)."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib

from coregulation._atomic import atomic_write

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def coupling_forest(fit, prob: float = 0.95, kind: str | None = None):
    """Directed coupling per dyad (both directions) with the population estimate."""
    table = fit.coupling_table(prob)
    kind = kind or table["kind"].iloc[0]
    table = table[(table["kind"] == kind) & ~table["quantity"].str.startswith("difference")]
    lower = [c for c in table.columns if c.startswith("lower_")][0]
    upper = [c for c in table.columns if c.startswith("upper_")][0]
    quantities = list(dict.fromkeys(table["quantity"]))
    units = list(dict.fromkeys(zip(table["level"], table["dyad"])))
    fig, ax = plt.subplots(figsize=(6.5, 0.35 * len(units) + 1.5))
    colours = ["tab:blue", "tab:orange"]
    for q, (quantity, colour) in enumerate(zip(quantities, colours)):
        rows = table[table["quantity"] == quantity]
        for u, (level, dyad) in enumerate(units):
            row = rows[(rows["level"] == level) & (rows["dyad"] == dyad)].iloc[0]
            y = len(units) - 1 - u + (0.15 if q == 0 else -0.15)
            marker = "D" if level == "population" else "o"
            ax.plot([row[lower], row[upper]], [y, y], color=colour, lw=1.5)
            ax.plot(row["mean"], y, marker, color=colour, label=quantity if u == 0 else None)
    ax.axvline(0.0, color="0.5", lw=0.8, ls="--")
    ax.set_yticks(range(len(units)))
    ax.set_yticklabels([("population" if lv == "population" else str(d)) for lv, d in units][::-1])
    ax.set_xlabel(f"{kind} (posterior mean, {prob:.0%} interval)")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    return fig


def cross_lag_curves(fit, max_interval: float | None = None, num: int = 60, prob: float = 0.9):
    """Population cross-lag coefficients over intervals, with credible bands (CT models)."""
    model = fit.model
    if not hasattr(model, "cross_lag_curve"):
        raise ValueError(f"{type(model).__name__} has no continuous-time cross-lag curve.")
    if max_interval is None:
        max_interval = 60.0
    intervals = np.linspace(0.0, max_interval, num)
    draws = fit.parameter_draws("population", max_draws=400)
    curves = np.asarray(jax.vmap(lambda p: model.cross_lag_curve(p, intervals))(draws))
    t, c = model.roles
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for (target, source), label, colour in (((1, 0), f"{t} → {c}", "tab:blue"),
                                            ((0, 1), f"{c} → {t}", "tab:orange")):
        values = curves[:, :, target, source]
        lo, hi = np.quantile(values, [(1 - prob) / 2, (1 + prob) / 2], axis=0)
        ax.fill_between(intervals, lo, hi, color=colour, alpha=0.25)
        ax.plot(intervals, values.mean(axis=0), color=colour, label=label)
    ax.axhline(0.0, color="0.5", lw=0.8, ls="--")
    ax.set_xlabel("interval (s)")
    ax.set_ylabel("cross-lag coefficient")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def flow_field(fit, num_draws: int = 30, extent: float = 2.5, grid: int = 15):
    """Flow field of the deterministic dynamics in the partners' levels (posterior mean),
    with trajectories from one start under ``num_draws`` posterior draws (uncertainty)."""
    model = fit.model
    draws = fit.parameter_draws("population", max_draws=max(num_draws, 200))
    positions = [0, 1] if len(model.state_names) == 2 else [0, 2]
    drifts = np.asarray(jax.vmap(lambda p: model.continuous_system(model.expand(p)).drift)(draws))
    mean_drift = drifts.mean(axis=0)
    axis = np.linspace(-extent, extent, grid)
    xx, yy = np.meshgrid(axis, axis)
    n = mean_drift.shape[0]
    fig, ax = plt.subplots(figsize=(5, 5))
    states = np.zeros((grid * grid, n))
    states[:, positions[0]] = xx.ravel()
    states[:, positions[1]] = yy.ravel()
    flow = states @ mean_drift.T
    ax.quiver(xx, yy, flow[:, positions[0]].reshape(xx.shape), flow[:, positions[1]].reshape(
        xx.shape), color="0.4", angles="xy")
    start = np.zeros(n)
    start[positions[0]] = 0.8 * extent
    times = np.linspace(0.0, 120.0, 200)
    paths = jax.vmap(lambda a: jax.vmap(lambda s: jax.scipy.linalg.expm(a * s) @ start)(times))(
        jnp.asarray(drifts[:num_draws])
    )
    for path in np.asarray(paths):
        ax.plot(path[:, positions[0]], path[:, positions[1]], color="tab:blue", alpha=0.25, lw=1)
    t, c = model.roles
    ax.set_xlabel(f"{t} (deviation from equilibrium, SD)")
    ax.set_ylabel(f"{c} (deviation from equilibrium, SD)")
    ax.set_title(f"{t} displaced: how the pair returns ({num_draws} posterior draws)", fontsize=9)
    fig.tight_layout()
    return fig


def _ccf(y, max_lag):
    """Cross-correlation corr(client(t + lag), therapist(t)) for lags -max_lag..max_lag."""
    a, b = y[:, 0], y[:, 1]
    ok = np.isfinite(a) & np.isfinite(b)
    a = np.where(ok, a - np.nanmean(a[ok]), 0.0)
    b = np.where(ok, b - np.nanmean(b[ok]), 0.0)
    norm = np.sqrt(np.sum(a * a) * np.sum(b * b))
    out = []
    for lag in range(-max_lag, max_lag + 1):
        if lag >= 0:
            out.append(np.sum(b[lag:] * a[: len(a) - lag]) / norm)
        else:
            out.append(np.sum(b[:lag] * a[-lag:]) / norm)
    return np.asarray(out)


def predictive_ccf(fit, max_lag: int = 30, prob: float = 0.9):
    """Observed cross-correlation (mean over series) against the posterior predictive band."""
    if "posterior_predictive" not in fit.idata.groups():
        raise ValueError("this fit has no posterior_predictive group; refit with num_predictive > 0.")
    observed = fit.idata.observed_data["y"].values
    replicated = fit.idata.posterior_predictive["y"].values
    lags = np.arange(-max_lag, max_lag + 1)
    obs = np.mean([_ccf(s, max_lag) for s in observed], axis=0)
    reps = replicated.reshape((-1, *replicated.shape[2:]))
    rep = np.array([np.mean([_ccf(s, max_lag) for s in draw], axis=0) for draw in reps])
    lo, hi = np.quantile(rep, [(1 - prob) / 2, (1 + prob) / 2], axis=0)
    t, c = fit.model.roles
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.fill_between(lags, lo, hi, color="tab:blue", alpha=0.3, label=f"posterior predictive {prob:.0%}")
    ax.plot(lags, obs, color="k", label="observed")
    ax.axvline(0.0, color="0.5", lw=0.8, ls="--")
    ax.set_xlabel(f"lag (steps; positive: {c} follows {t})")
    ax.set_ylabel("cross-correlation")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def save_all(fit, folder) -> list[Path]:
    """Write every applicable figure as PNG into ``folder`` (each file atomically)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    makers = {"coupling_forest": coupling_forest, "flow_field": flow_field}
    if hasattr(fit.model, "cross_lag_curve") and type(fit.model).__name__ != "VAR1":
        makers["cross_lag_curves"] = cross_lag_curves
    if "posterior_predictive" in fit.idata.groups():
        makers["predictive_ccf"] = predictive_ccf
    return [save_figure(make(fit), folder / f"{name}.png") for name, make in makers.items()]


def save_figure(fig, path) -> Path:
    """Write ``fig`` as PNG to ``path`` atomically (temporary file, then rename); close it."""
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    finally:
        plt.close(fig)


# ----------------------------------------------------------------------------------
# simulation studies
# ----------------------------------------------------------------------------------

_STUDY_METRICS = {
    "coverage_95": ("95% interval coverage", 0.95),
    "bias": ("bias (posterior mean - truth)", 0.0),
    "power": ("power (95% interval excludes 0)", None),
    "false_positive_rate": ("false-positive rate", 0.05),
}


def _cell_labels(metrics) -> list[str]:
    factors = [f for f in ("coupling", "coupling_size", "num_dyads", "num_sessions", "duration",
                           "sampling_interval", "me_share", "missing_rate", "burst_rate",
                           "scenario") if f in metrics.coords]
    varying = [f for f in factors if len({str(v) for v in metrics[f].values}) > 1]
    labels = []
    for c in range(metrics.sizes["cell"]):
        parts = [f"{f}={metrics[f].values[c]}" for f in varying]
        labels.append(", ".join(parts) if parts else f"cell {int(metrics['cell'].values[c])}")
    return labels


def study_metric_plot(metrics, metric: str = "coverage_95", parameters=None):
    """One metric per cell (rows) and parameter (points), with its target line."""
    if metric not in metrics:
        raise ValueError(f"metric must be one of {sorted(metrics.data_vars)}; got {metric!r}.")
    title, target = _STUDY_METRICS.get(metric, (metric, None))
    params = list(parameters) if parameters is not None else [
        str(p) for p in metrics["parameter"].values]
    labels = _cell_labels(metrics)
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(labels) + 1.6))
    share = metric.startswith("coverage") or metric in ("power", "false_positive_rate")
    for k, name in enumerate(params):
        values = metrics[metric].sel(parameter=name).values
        rows = np.arange(len(labels)) + (k - len(params) / 2) * 0.08
        # a share over R replicates: +-1.96 binomial Monte Carlo standard errors
        err = (1.96 * np.sqrt(values * (1 - values) / metrics["num_replicates"].values)
               if share and "num_replicates" in metrics else None)
        ax.errorbar(values, rows, xerr=err, fmt="o", ms=4, capsize=2, label=name)
    if target is not None:
        ax.axvline(target, color="grey", lw=0.8, ls="--")
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_xlabel(title)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def power_curve_plot(metrics, x: str = "num_dyads", parameter: str = "therapist_to_client",
                     by: str | None = "duration"):
    """Power of ``parameter`` against the design factor ``x``, one line per ``by`` level."""
    if x not in metrics.coords:
        raise ValueError(f"x must be a design factor of the study; got {x!r}.")
    power = metrics["power"].sel(parameter=parameter)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    groups = sorted({v for v in metrics[by].values}) if by in metrics.coords else [None]
    for level in groups:
        mask = np.ones(metrics.sizes["cell"], bool) if level is None else (
            metrics[by].values == level)
        xs = metrics[x].values[mask].astype(float)
        order = np.argsort(xs)
        ax.plot(xs[order], power.values[mask][order], "o-",
                label=None if level is None else f"{by} = {level}")
    ax.axhline(0.8, color="grey", lw=0.8, ls="--")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel(x.replace("_", " "))
    ax.set_ylabel(f"power: 95% interval of {parameter} excludes 0")
    if groups != [None]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
