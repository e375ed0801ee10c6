# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Real couples and real therapy dyads
#
# A worked analysis of the two real datasets bundled with coregulation (licences in
# `coregulation/datasets/real/README.md`):
#
# 1. **Couples' emotion dial** (rties): 79 romantic couples rated their own emotional
#    experience every 2 s while re-watching their conversation. We fit one
#    hierarchical CT-VAR across all couples, with the couple's mean love and conflict
#    ratings as moderators of both couplings, and relate each couple's coupling to
#    the couple-level variables.
# 2. **Therapist-patient motion energy** (rMEA): 20 intake interviews, 10 min each;
#    ten patients later dropped out of therapy. We fit one hierarchical CT-VAR with
#    dropout as a moderator of both couplings: is therapist-patient coupling different
#    in the dropout group?
#
# Run it as a script (`python notebooks/06_real_datasets.py`) or as a notebook
# (jupytext). `COREG_SMOKE=1` runs a tiny version (a few dyads, a few draws) that
# only checks that every step works; the numbers it prints mean nothing.
# Figures go to `COREG_OUT` (default `real_data_output/`).

# %%
import os
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import coregulation as cr  # noqa: E402
from coregulation import plots, synchrony  # noqa: E402
from coregulation.datasets import (  # noqa: E402
    COUPLES_ROLES,
    MOTION_ROLES,
    couples_dial,
    motion_energy,
)

SMOKE = os.environ.get("COREG_SMOKE", "0") == "1"
OUT = Path(os.environ.get("COREG_OUT", "real_data_output"))
OUT.mkdir(parents=True, exist_ok=True)
# NUTS settings: the full run is what we report below; smoke mode only exercises the code
SETTINGS = (dict(num_chains=1, num_warmup=10, num_samples=10, warn=False) if SMOKE
            else dict(num_chains=2, num_warmup=400, num_samples=400))
print("smoke mode" if SMOKE else "full run", SETTINGS)

# %% [markdown]
# ## 1. Couples: who carries whose feelings?
#
# The loader returns the data contract: `y(dyad, session, time, role)` with roles
# `female`, `male`, time in seconds, 2-s dial means (`sampling="epoch_mean"`), and the
# partners' person-level variables as `x(dyad, covariate)`. Couple 19, whose male
# series is an exact copy of the female's, is left out (`attrs["excluded_dyads"]`).

# %%
couples = couples_dial()
print(couples.sizes, "excluded:", couples.attrs["excluded_dyads"])
persons = couples["x"].to_pandas()
# couple-level variables: the mean of the two partners' ratings
couple_vars = pd.DataFrame({
    "love": persons[["love_female", "love_male"]].mean(axis=1),
    "conflict": persons[["conflict_female", "conflict_male"]].mean(axis=1),
})
print(couple_vars.describe().round(2))

# %% [markdown]
# Add the two couple-level variables to `x`, so the model can use them as moderators.
# (With custom roles the coupling *parameters* keep their generic names:
# `therapist_to_client` is first role -> second role, here **female -> male**, and
# `client_to_therapist` is **male -> female**. Tables and figures use the labels.)

# %%
couples = couples.drop_vars(["x", "covariate"]).assign(
    x=(("dyad", "covariate"), couple_vars.to_numpy(dtype=float))
).assign_coords(covariate=list(couple_vars.columns))
if SMOKE:
    couples = couples.isel(dyad=slice(0, 3), time=slice(0, 60))
    couple_vars = couple_vars.iloc[:3]

female_to_male, male_to_female = "therapist_to_client", "client_to_therapist"
couples_model = cr.CTVAR(roles=COUPLES_ROLES)
couples_pooling = cr.Pooling(
    parameters=(female_to_male, male_to_female),
    covariates={female_to_male: ["love", "conflict"], male_to_female: ["love", "conflict"]},
)
start = time.perf_counter()
couples_fit = cr.fit(couples_model, couples, pooling=couples_pooling, seed=1,
                     num_predictive=0 if SMOKE else 100, progress_bar=not SMOKE,
                     **SETTINGS)
print(f"couples fit: {time.perf_counter() - start:.0f} s")
couples_fit.to_netcdf(OUT / "couples_fit.nc")

# %% [markdown]
# Sampler health first: a fit whose chains disagree is not a result.

# %%
health = couples_fit.diagnostics()
print({k: health[k] for k in ("max_rhat", "min_ess_bulk", "min_ess_tail", "divergences")
       if k in health})

# %% [markdown]
# ### Population coupling and its moderators
#
# `female → male` is how much the male partner's feeling moves towards the female's
# recent feeling (per unit of her deviation, per second, on the standardised scale);
# `male → female` the reverse. The covariate effects `{coupling}_on_{variable}` are
# per standard deviation of the couple variable.

# %%
table = couples_fit.coupling_table()
print(table[table["level"] == "population"].round(3).to_string(index=False))
post = couples_fit.idata.posterior
moderators = []
for coupling, label in ((female_to_male, "female → male"), (male_to_female, "male → female")):
    for variable in ("love", "conflict"):
        draws = post[f"{coupling}_on_{variable}"].values.ravel()
        lo, hi = np.quantile(draws, [0.025, 0.975])
        moderators.append({"coupling": label, "moderator": variable,
                           "mean": draws.mean(), "lower_95%": lo, "upper_95%": hi,
                           "P(> 0)": (draws > 0).mean()})
moderators = pd.DataFrame(moderators)
print(moderators.round(3).to_string(index=False))
moderators.to_csv(OUT / "couples_moderators.csv", index=False)

# %% [markdown]
# ### Each couple's coupling against the couple variables
#
# The per-couple couplings are partially pooled towards the regression on love and
# conflict. Besides the model's moderator effects above, we can ask how the couples'
# couplings correlate with each variable *across couples*, with the posterior
# uncertainty of every couple carried along: one correlation per posterior draw.

# %%
draws = couples_fit.parameter_draws(level="dyad", max_draws=400)
correlations = []
for coupling, label in ((female_to_male, "female → male"), (male_to_female, "male → female")):
    per_couple = draws[coupling]  # (draw, couple)
    for variable in ("love", "conflict"):
        v = couple_vars[variable].to_numpy()
        r = np.array([np.corrcoef(d, v)[0, 1] for d in per_couple])
        lo, hi = np.quantile(r, [0.025, 0.975])
        correlations.append({"coupling": label, "variable": variable, "r": r.mean(),
                             "lower_95%": lo, "upper_95%": hi})
correlations = pd.DataFrame(correlations)
print(correlations.round(3).to_string(index=False))

# %%
fig, axes = plt.subplots(2, 2, figsize=(9, 7), sharey="row")
for row, (coupling, label) in enumerate(((female_to_male, "female → male"),
                                         (male_to_female, "male → female"))):
    mean = draws[coupling].mean(axis=0)
    lo, hi = np.quantile(draws[coupling], [0.05, 0.95], axis=0)
    for col, variable in enumerate(("love", "conflict")):
        ax = axes[row, col]
        v = couple_vars[variable].to_numpy()
        ax.errorbar(v, mean, yerr=[mean - lo, hi - mean], fmt="o", ms=3, alpha=0.6,
                    elinewidth=0.6)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xlabel(f"couple mean {variable}")
        if col == 0:
            ax.set_ylabel(f"{label} coupling\n(posterior mean, 90% interval)")
fig.suptitle("Per-couple coupling against couple-level variables")
fig.tight_layout()
fig.savefig(OUT / "couples_coupling_vs_variables.png", dpi=120)

fig = plots.coupling_forest(couples_fit)
fig.savefig(OUT / "couples_coupling_forest.png", dpi=120)

# %% [markdown]
# ## 2. Therapist and patient: coupling and dropout
#
# Motion energy from frame differencing, smoothed over 2 s, averaged to 1 Hz and
# log1p-transformed (the loader documents each step in `attrs["preprocessing"]`).
# The dyad covariate `dropout` is 1 for the ten patients who dropped out.
# `therapist_to_client` is therapist -> patient.

# %%
motion = motion_energy()
print(motion.sizes, motion.attrs["preprocessing"])
if SMOKE:
    motion = motion.isel(dyad=[0, 1, 10, 11], time=slice(0, 60))
group = motion["x"].sel(covariate="dropout").to_pandas()
motion_model = cr.CTVAR(roles=MOTION_ROLES)
couplings = ("therapist_to_client", "client_to_therapist")
motion_pooling = cr.Pooling(parameters=couplings,
                            covariates={c: ["dropout"] for c in couplings})
start = time.perf_counter()
motion_fit = cr.fit(motion_model, motion, pooling=motion_pooling, seed=2,
                    num_predictive=0 if SMOKE else 100, progress_bar=not SMOKE, **SETTINGS)
print(f"motion fit: {time.perf_counter() - start:.0f} s")
motion_fit.to_netcdf(OUT / "motion_fit.nc")
health = motion_fit.diagnostics()
print({k: health[k] for k in ("max_rhat", "min_ess_bulk", "min_ess_tail", "divergences")
       if k in health})

# %% [markdown]
# The covariate effect per unit of `dropout` is the difference in coupling between
# the dropout and the continuing group (`..._on_dropout_per_unit`): the group
# contrast with its full posterior.

# %%
post = motion_fit.idata.posterior
contrast = []
for coupling, label in zip(couplings, ("therapist → patient", "patient → therapist")):
    diff = post[f"{coupling}_on_dropout_per_unit"].values.ravel()
    lo, hi = np.quantile(diff, [0.025, 0.975])
    contrast.append({"coupling": label, "dropout minus continuing": diff.mean(),
                     "lower_95%": lo, "upper_95%": hi, "P(dropout lower)": (diff < 0).mean()})
contrast = pd.DataFrame(contrast)
print(contrast.round(3).to_string(index=False))
contrast.to_csv(OUT / "motion_dropout_contrast.csv", index=False)

# %% [markdown]
# For comparison, the field's usual index: SUSY (surrogate synchrony, 30-s segments,
# lags up to 5 s) per dyad, averaged by group. SUSY is undirected in its main form;
# its lead variants split the lags by who moves first.

# %%
rows = []
for d in motion["dyad"].values:
    one = motion.sel(dyad=d).isel(session=0)
    y = one["y"].values
    keep = np.isfinite(y).all(axis=1)
    res = synchrony.susy(y[keep, 0], y[keep, 1], segment=30 if not SMOKE else 12, hz=1.0,
                         max_lag=5).summary()
    rows.append({"dyad": str(d), "dropout": float(group[d]), "susy_es": res["ES"],
                 "therapist_lead_es": res["ES_therapist_leads"],
                 "patient_lead_es": res["ES_client_leads"]})
susy = pd.DataFrame(rows)
print(susy.groupby("dropout")[["susy_es", "therapist_lead_es", "patient_lead_es"]]
      .mean().round(3))

# %%
draws = motion_fit.parameter_draws(level="dyad", max_draws=400)
labels = [str(d) for d in motion["dyad"].values]
fig, axes = plt.subplots(1, 2, figsize=(10, 5), sharey=True)
for ax, coupling, label in zip(axes, couplings, ("therapist → patient", "patient → therapist")):
    mean = draws[coupling].mean(axis=0)
    lo, hi = np.quantile(draws[coupling], [0.05, 0.95], axis=0)
    order = np.argsort(group.to_numpy(), kind="stable")
    for rank, i in enumerate(order):
        colour = "tab:red" if group.iloc[i] == 1 else "tab:blue"
        ax.plot([lo[i], hi[i]], [rank, rank], color=colour, lw=1.5)
        ax.plot(mean[i], rank, "o", color=colour, ms=4)
    ax.axvline(0, color="grey", lw=0.8)
    ax.set_title(label)
    ax.set_xlabel("coupling (posterior mean, 90% interval)")
axes[0].set_yticks(range(len(labels)), [labels[i] for i in order])
axes[0].plot([], [], "o-", color="tab:blue", label="continued")
axes[0].plot([], [], "o-", color="tab:red", label="dropped out")
axes[0].legend(loc="lower left")
fig.suptitle("Therapist-patient coupling in motion energy, by later dropout")
fig.tight_layout()
fig.savefig(OUT / "motion_coupling_by_group.png", dpi=120)
print("figures in", OUT.resolve())

# %% [markdown]
# ## What the full run shows
#
# Full run of 2026-11-30 (2 chains x 400 + 400 on a 2-core CPU shared with other work:
# couples 36 min, motion 9 min; numbers will differ a little between runs):
#
# * **Couples.** Both partners carry each other's feelings: female -> male 0.34
#   [0.28, 0.41] and male -> female 0.27 [0.22, 0.32] per second (standardised
#   dial), P(female-led) = 0.96, difference 0.07 [-0.01, 0.16]. Neither love nor
#   conflict moderates either coupling clearly (all four 95% intervals cover 0, e.g.
#   female -> male on love +0.04 [-0.03, 0.11] per SD), and the per-couple couplings
#   correlate only weakly with them (|r| <= 0.15, intervals covering 0). Sampler:
#   max R-hat 1.03, min bulk ESS 255, no divergences: longer chains before reporting.
# * **Therapy dyads.** Therapist -> patient coupling in motion energy is higher in the
#   interviews of patients who later dropped out: dropout minus continuing +0.25
#   [+0.01, +0.49] (P = 0.98); patient -> therapist differs less (-0.11 [-0.35, 0.14]).
#   In the continuing group therapist -> patient is mostly negative (the patient moves
#   less after the therapist moved), in the dropout group around zero or positive.
#   SUSY's effect size is lower in the dropout group (0.48 against 1.00), and its
#   therapist-lead variant changes sign (-0.78 against +1.49): the undirected index
#   sees "less synchrony", the model says which direction changed. Sampler: max R-hat
#   1.016, min bulk ESS 232, no divergences.
#
# These are observational data from 20 interviews: a coupling difference between the
# groups describes the interviews; it does not say that coupling causes dropout.
