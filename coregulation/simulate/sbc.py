"""Simulation-based calibration (Talts et al. 2018; Modrák et al. 2023; METHODS.md §5.4).

An SBC run is a study of ``kind = "sbc"``: each replicate draws its truth from the
prior (truncated to stable systems, as the fit's prior is), simulates a series,
fits it, and stores the rank of the truth among ``rank_draws`` evenly thinned
posterior draws, for every parameter, the coupling difference and the
log-likelihood of the simulated data (a data-dependent quantity that catches
errors parameter ranks miss).  If the fit is calibrated every rank is uniform on
``0..L``.  This module judges that:

* :func:`chi_square_uniformity`: Pearson's chi-square over equal-width rank bins;
* :func:`ecdf_bands`: simultaneous bands for the ECDF of the scaled ranks
  (Säilynoja, Bürkner & Vehtari 2022, the simulation-adjusted gamma), and
  :func:`ecdf_difference_plot` draws ECDF minus identity with those bands.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import scipy.stats
import xarray as xr

from coregulation.simulate.recovery import run_study
from coregulation.simulate.study import Study


def run_sbc(model: str = "ctvar", *, replicates: int = 200, duration: float = 600.0,
            sampling_interval: float = 1.0, method: str = "nuts", seed: int = 0,
            chunk: int = 50, out, fit: dict | None = None, model_options: dict | None = None,
            scheduler=None, processes: int = 1, progress: bool = True) -> xr.Dataset:
    """An SBC run of ``model`` on one design; results under ``out`` (resumable)."""
    study = Study(name=f"sbc-{model}", kind="sbc", model=model, method=method,
                  replicates=replicates, seed=seed, chunk=chunk,
                  model_options=dict(model_options or {}), fit=dict(fit or {}),
                  grid={"duration": [duration], "sampling_interval": [sampling_interval]})
    return run_study(study, out, scheduler=scheduler, processes=processes, progress=progress)


def _ranks(results: xr.Dataset) -> tuple[np.ndarray, int, list[str]]:
    if "rank" not in results:
        raise ValueError("these results hold no ranks: run a study with kind = 'sbc'.")
    ranks = results["rank"]
    if "cell" in ranks.dims:
        ranks = ranks.stack(unit=("cell", "replicate")).transpose("unit", "rank_quantity")
    values = np.asarray(ranks.values)
    num_draws = int(results["num_rank_draws"].max()) if "num_rank_draws" in results else None
    if num_draws is None:
        num_draws = int(results.attrs.get("rank_draws", values.max()))
    return values, num_draws, [str(q) for q in results["rank_quantity"].values]


def chi_square_uniformity(results: xr.Dataset, bins: int = 20) -> pd.DataFrame:
    """Chi-square test of rank uniformity per quantity.

    Ranks ``0..L`` are put into ``bins`` bins of (nearly) equal width (fewer bins
    when ``L + 1 < bins``); the expected count of each bin is proportional to the
    number of rank values it holds, so unequal bins are handled exactly.  Returns
    the statistic, degrees of freedom and p-value per quantity.
    """
    values, num_draws, names = _ranks(results)
    values = values[np.all(values >= 0, axis=1)]
    levels = num_draws + 1
    bins = int(min(bins, levels))
    edges = np.linspace(0, levels, bins + 1).round().astype(int)
    width = np.diff(edges)
    rows = []
    for k, name in enumerate(names):
        counts = np.histogram(values[:, k], bins=edges - 0.5)[0]
        expected = values.shape[0] * width / levels
        stat = float(np.sum((counts - expected) ** 2 / expected))
        rows.append({"quantity": name, "chi_square": stat, "df": bins - 1,
                     "p_value": float(scipy.stats.chi2.sf(stat, bins - 1)),
                     "num_replicates": int(values.shape[0])})
    return pd.DataFrame(rows)


def ecdf_bands(num_ranks: int, num_draws: int, *, prob: float = 0.95, num_points: int | None = None,
               num_simulations: int = 2000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Simultaneous ``prob`` bands for the ECDF of ``num_ranks`` uniform scaled ranks.

    The ECDF is evaluated at ``z_i = i / (L + 1)``, ``i = 1..L`` (``L`` =
    ``num_draws``; fewer points with ``num_points``).  Pointwise the count below
    ``z_i`` is Binomial(N, z_i); the simultaneous level gamma is adjusted by
    simulation so that a uniform sample stays inside all pointwise
    ``gamma``-intervals with probability ``prob`` (Säilynoja et al. 2022, Alg. 1).
    Returns ``z`` and the lower and upper ECDF bands.
    """
    n = int(num_ranks)
    levels = int(num_draws) + 1
    z = np.arange(1, levels) / levels
    if num_points is not None and num_points < z.size:
        z = z[np.linspace(0, z.size - 1, num_points).astype(int)]
    rng = np.random.default_rng(seed)
    sims = rng.integers(0, levels, size=(num_simulations, n))
    # ECDF of discrete ranks at z: share of ranks < z * levels
    counts = (sims[:, :, None] < (z * levels)[None, None, :]).sum(axis=1)
    cdf = scipy.stats.binom.cdf(counts, n, z[None, :])
    cdf_below = scipy.stats.binom.cdf(counts - 1, n, z[None, :])
    tail = np.minimum(cdf, 1 - cdf_below)  # two-sided pointwise tail probability
    gamma = 2 * np.quantile(tail.min(axis=1), 1 - prob)
    lower = scipy.stats.binom.ppf(gamma / 2, n, z) / n
    upper = scipy.stats.binom.ppf(1 - gamma / 2, n, z) / n
    return z, lower, upper


def ecdf_difference(results: xr.Dataset) -> tuple[np.ndarray, dict, int]:
    """``z`` and, per quantity, ECDF(z) - z of the scaled ranks; and the rank count."""
    values, num_draws, names = _ranks(results)
    levels = num_draws + 1
    z = np.arange(1, levels) / levels
    out = {name: (values[:, k][:, None] < (z * levels)[None, :]).mean(axis=0) - z
           for k, name in enumerate(names)}
    return z, out, values.shape[0]


def ecdf_difference_plot(results: xr.Dataset, quantities=None, prob: float = 0.95):
    """ECDF-difference plots with simultaneous ``prob`` bands, one panel per quantity."""
    import matplotlib.pyplot as plt

    z, diffs, n = ecdf_difference(results)
    names = list(quantities) if quantities is not None else list(diffs)
    _, num_draws, _ = _ranks(results)
    zb, lower, upper = ecdf_bands(n, num_draws, prob=prob)
    cols = min(4, len(names))
    rows = int(np.ceil(len(names) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False,
                             sharex=True, sharey=True)
    for ax, name in zip(axes.ravel(), names):
        ax.fill_between(zb, lower - zb, upper - zb, color="0.85", step="mid",
                        label=f"{prob:.0%} simultaneous")
        ax.plot(z, diffs[name], color="tab:blue", lw=1.2, drawstyle="steps-mid")
        ax.axhline(0, color="grey", lw=0.6)
        ax.set_title(name, fontsize=9)
    for ax in axes.ravel()[len(names):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("fractional rank")
    for ax in axes[:, 0]:
        ax.set_ylabel("ECDF - uniform")
    fig.suptitle(f"SBC: {n} replicates, ranks among {num_draws} draws")
    fig.tight_layout()
    return fig


def within_bands(results: xr.Dataset, prob: float = 0.95) -> pd.Series:
    """Whether each quantity's ECDF stays inside the simultaneous ``prob`` bands."""
    z, diffs, n = ecdf_difference(results)
    _, num_draws, _ = _ranks(results)
    zb, lower, upper = ecdf_bands(n, num_draws, prob=prob)
    inside = {}
    for name, d in diffs.items():
        ecdf = d + z
        inside[name] = bool(np.all((ecdf >= lower - 1e-12) & (ecdf <= upper + 1e-12)))
    return pd.Series(inside, name=f"inside_{prob:.0%}_bands")


def save_sbc_figure(results: xr.Dataset, path, quantities=None) -> Path:
    from coregulation.plots._figures import save_figure

    return save_figure(ecdf_difference_plot(results, quantities), Path(path))
