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
# # Coupled oscillators: how one partner's arousal moves the other's
#
# For students. No fitting to data yet, only simulation and the model's own maths:
#
# 1. one person's arousal as a **damped oscillator**: what period and damping do;
# 2. a therapist-client session with **coupling**: phase portraits, and how each
#    directed coupling shows up in the cross-lag curves and in the asymmetry of the
#    cross-correlation (the "therapist-led synchrony" of the literature);
# 3. the **shared-drive trap**: the same lead-lag asymmetry with no coupling at all,
#    when both people respond to something in the room at different speeds.
#
# Run it as a script (`python notebooks/01_coupled_oscillators.py`) or as a notebook
# (jupytext). `COREG_SMOKE=1` runs a short version; figures go to `COREG_OUT`
# (default `notebook_output/01_coupled_oscillators/`).

# %%
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import jax  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import coregulation as cr  # noqa: E402
from coregulation import synchrony  # noqa: E402
from coregulation.plots import save_figure  # noqa: E402

SMOKE = os.environ.get("COREG_SMOKE", "0") == "1"
OUT = Path(os.environ.get("COREG_OUT", "notebook_output/01_coupled_oscillators"))
DURATION = 300.0 if SMOKE else 1200.0  # seconds of simulated session, sampled at 1 Hz
print("smoke mode" if SMOKE else "full run", "session length", DURATION, "s")

# %% [markdown]
# ## 1. One person: period and damping
#
# The coupled-oscillator model (`cr.CoupledOscillator`) describes each person's
# deviation `x` from their own set point as a damped spring:
# `x'' = -omega^2 x - 2 xi omega x' + noise`. Two numbers describe it:
#
# * `period` (seconds): how long one swing of arousal takes when nothing damps it;
# * `damping_ratio` `xi`: 0 swings for ever, 1 returns to the set point without
#   overshooting; in between it overshoots and settles.
#
# The deterministic part of the model is a linear system `s' = A s` with state
# `s = (x_T, v_T, x_C, v_C)` (positions and velocities). Its response to a push
# is `expm(A t) s0`; the model gives us `A` (`drift`).

# %%
model = cr.CoupledOscillator()
BASE = dict(
    period=np.array([40.0, 60.0]), damping_ratio=np.array([0.2, 0.2]),
    position_therapist_to_client=0.0, position_client_to_therapist=0.0,
    velocity_therapist_to_client=0.0, velocity_client_to_therapist=0.0,
    mu=np.zeros(2), latent_sd=np.array([1.0, 1.0]), shock_corr=0.0,
    me_sd=np.array([0.3, 0.3]),
)


def response(params, start, times):
    """Noise-free path expm(A t) @ start of the latent state."""
    drift = np.asarray(model.drift(params))
    paths = [np.asarray(jax.scipy.linalg.expm(drift * t)) @ start for t in times]
    return np.array(paths)


t = np.linspace(0.0, 240.0, 241)
push = np.array([1.0, 0.0, 0.0, 0.0])  # displace the therapist by 1, nobody moving
fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), sharey=True)
for period in (30.0, 60.0):
    p = BASE | {"period": np.array([period, 60.0])}
    axes[0].plot(t, response(p, push, t)[:, 0], label=f"period {period:.0f} s")
for xi in (0.05, 0.2, 0.6):
    p = BASE | {"damping_ratio": np.array([xi, 0.2])}
    axes[1].plot(t, response(p, push, t)[:, 0], label=f"damping ratio {xi}")
axes[0].set_title("period sets the pace (damping 0.2)")
axes[1].set_title("damping sets how fast it settles (period 40 s)")
for ax in axes:
    ax.axhline(0, color="0.7", lw=0.8)
    ax.set_xlabel("seconds after the push")
    ax.legend(frameon=False)
axes[0].set_ylabel("therapist's displacement")
fig.tight_layout()
save_figure(fig, OUT / "01_period_and_damping.png")

# %% [markdown]
# The shorter period swings twice as often; the heavier the damping, the sooner the
# swing dies out (ratio 0.6 hardly overshoots at all). With no coupling the client
# (third state entry) never moves:

# %%
print("client's largest displacement without coupling:",
      float(np.abs(response(BASE, push, t)[:, 2]).max()))

# %% [markdown]
# ## 2. A session with coupling
#
# Four coupling parameters join the two oscillators. `position_therapist_to_client`
# is how far the client's set point shifts per unit of the therapist's displacement
# (a unitless gain: 0.5 means the client settles half-way towards the therapist's
# state); `velocity_therapist_to_client` is the same for the therapist's rate of
# change. The other two are the client-to-therapist direction.
#
# We simulate three sessions from the same random shocks: uncoupled, therapist-led
# (therapist -> client 0.6) and mutual (0.6 both ways), and draw the phase
# portrait (position against velocity) of each person and the series themselves.

# %%
times = np.arange(1.0, DURATION + 1.0)
SCENARIOS = {
    "uncoupled": BASE,
    "therapist-led": BASE | {"position_therapist_to_client": 0.6},
    "mutual": BASE | {"position_therapist_to_client": 0.6,
                      "position_client_to_therapist": 0.6},
}
key = jax.random.key(1)
sims = {name: cr.simulate_series(model, p, times, key) for name, p in SCENARIOS.items()}

fig, axes = plt.subplots(2, 3, figsize=(13, 6.5))
for col, (name, sim) in enumerate(sims.items()):
    states, y = np.asarray(sim.states), np.asarray(sim.y)
    ax = axes[0, col]
    ax.plot(times, y[:, 0], lw=0.8, label="therapist")
    ax.plot(times, y[:, 1], lw=0.8, label="client")
    ax.set_xlim(0, min(DURATION, 300))
    ax.set_title(name)
    ax.set_xlabel("time (s)")
    ax = axes[1, col]
    first = times <= 300.0  # the first 5 minutes, so single loops stay visible
    ax.plot(states[first, 0], states[first, 1], lw=0.5, alpha=0.8, label="therapist")
    ax.plot(states[first, 2], states[first, 3], lw=0.5, alpha=0.8, label="client")
    ax.set_xlabel("position")
    ax.set_ylabel("velocity")
axes[0, 0].set_ylabel("observed signal")
axes[0, 0].legend(frameon=False)
axes[1, 0].set_title("phase portraits, first 5 min", loc="left")
fig.tight_layout()
save_figure(fig, OUT / "02_sessions_and_phase_portraits.png")

# %% [markdown]
# Each phase portrait is a noisy spiral: the shocks push the person out, damping
# pulls them back round towards the origin, one loop per period (the therapist's
# 40-s loops are tighter than the client's 60-s ones). With therapist -> client
# coupling the client's series starts to follow the therapist's swings; with mutual
# coupling the two series move together for much of the session.
#
# ## Cross-lag curves and the asymmetry of the cross-correlation
#
# Two ways to see direction:
#
# * the model's **cross-lag curve**: the effect of the therapist's position now on
#   the client's position `dt` seconds later (an entry of `expm(A dt)`), and the
#   other way round (`model.cross_lag_curve`);
# * the **cross-correlation** of the two observed series at each lag `k`:
#   `corr(therapist(t), client(t + k))`. Positive lags are the client following the
#   therapist. Its asymmetry (mean over positive lags minus mean over negative lags,
#   `synchrony.lead_lag`) is the field's "therapist-led synchrony".
#
# We vary the therapist -> client position coupling, and draw the model's own
# (population) cross-correlation, `model.implied_ccf`, next to the one computed from
# one simulated session of each.

# %%
MAX_LAG = 40
lags = np.arange(-MAX_LAG, MAX_LAG + 1.0)
intervals = np.linspace(0.0, 80.0, 81)
fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
print(f"{'T->C coupling':>14} {'asymmetry (model)':>18} {'asymmetry (one session)':>24}")
for kappa in (0.0, 0.3, 0.6):
    p = BASE | {"position_therapist_to_client": kappa}
    curve = np.asarray(model.cross_lag_curve(p, intervals))  # (interval, target, source)
    line, = axes[0].plot(intervals, curve[:, 1, 0], label=f"T->C {kappa}")
    axes[0].plot(intervals, curve[:, 0, 1], ls=":", color=line.get_color())
    # implied_ccf[l, i, j] = corr(y_i(t + l), y_j(t)): client (1) after therapist (0)
    ccf = np.asarray(model.implied_ccf(p, lags))[:, 1, 0]
    axes[1].plot(lags, ccf, color=line.get_color(), label=f"T->C {kappa}")
    sim = cr.simulate_series(model, p, times, jax.random.key(2))
    y = np.asarray(sim.y)
    r = synchrony.cross_correlation(y[:, 0], y[:, 1], MAX_LAG)
    axes[2].plot(r.index, r.to_numpy(), color=line.get_color(), label=f"T->C {kappa}")
    model_asym = np.mean(np.arctanh(ccf[lags > 0])) - np.mean(np.arctanh(ccf[lags < 0]))
    session_asym = synchrony.lead_lag(y[:, 0], y[:, 1], MAX_LAG)["asymmetry"]
    print(f"{kappa:>14.1f} {model_asym:>18.3f} {session_asym:>24.3f}")
axes[0].set_title("cross-lag effect (solid T->C, dotted C->T)")
axes[0].set_xlabel("interval dt (s)")
axes[1].set_title("model-implied cross-correlation")
axes[2].set_title(f"one simulated session ({DURATION:.0f} s)")
for ax in axes[1:]:
    ax.axvline(0, color="0.7", lw=0.8)
    ax.set_xlabel("lag k (s): client k s after therapist")
for ax in axes:
    ax.axhline(0, color="0.7", lw=0.8)
    ax.legend(frameon=False, fontsize=8)
fig.tight_layout()
save_figure(fig, OUT / "03_cross_lag_and_ccf.png")

# %% [markdown]
# As the therapist -> client coupling grows, the solid cross-lag curve moves away
# from zero and the dotted one stays at zero: the direction is in the model. For
# oscillators the effect itself oscillates (a push now raises the client a quarter
# period later and lowers them half a period after that). The
# cross-correlation tilts towards positive lags (the client follows), so the
# asymmetry grows. The single session's curve follows the model's but is noisy:
# one session is a small sample of a slow process.
#
# ## 3. The shared-drive trap
#
# Now no coupling at all. Both people respond to a common slow drive (the topic of
# the conversation, the room's temperature), but the therapist responds fast
# (time constant 5 s) and the client slowly (30 s). `cr.simulate_shared_drive`
# simulates exactly that. Look at the cross-correlation:

# %%
drive_times = np.arange(1.0, 4 * DURATION + 1.0)
shared = cr.simulate_shared_drive(jax.random.key(3), drive_times, tau=(5.0, 30.0),
                                  drive_tau=60.0, me_sd=(0.2, 0.2))
ys = np.asarray(shared.y)
r_shared = synchrony.cross_correlation(ys[:, 0], ys[:, 1], 90)
asym = synchrony.lead_lag(ys[:, 0], ys[:, 1], 60)
print("shared drive, no coupling: peak lag", int(r_shared.idxmax()), "s;",
      f"asymmetry {asym['asymmetry']:.3f} (therapist-led {asym['therapist_led']:.3f},",
      f"client-led {asym['client_led']:.3f})")

# %% [markdown]
# The cross-correlation peaks at a positive lag: by the field's index this dyad is
# "therapist-led", yet neither person affects the other. A bivariate model without
# the drive is fooled too: a CT-VAR fitted by maximum likelihood explains the common
# drive as coupling, with both couplings positive and therapist -> client well away
# from zero (estimate and standard error below), where the truth is 0 both ways.

# %%
mle = cr.fit_mle(cr.CTVAR(), drive_times, ys)
table = mle.table().set_index("parameter")
print(table.loc[["therapist_to_client", "client_to_therapist"]].round(3))

fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
axes[0].plot(drive_times[:300], ys[:300, 0], lw=0.8, label="therapist (tau 5 s)")
axes[0].plot(drive_times[:300], ys[:300, 1], lw=0.8, label="client (tau 30 s)")
axes[0].set_title("no coupling, one shared drive")
axes[0].set_xlabel("time (s)")
axes[0].legend(frameon=False)
axes[1].plot(r_shared.index, r_shared.to_numpy(), color="C3")
axes[1].axvline(0, color="0.7", lw=0.8)
axes[1].axvline(int(r_shared.idxmax()), color="C3", ls=":", lw=0.8)
axes[1].set_title("cross-correlation: a lead with no coupling")
axes[1].set_xlabel("lag k (s): client k s after therapist")
fig.tight_layout()
save_figure(fig, OUT / "04_shared_drive_trap.png")

# %% [markdown]
# What protects you: measure the drive when you can and enter it as an input
# (`inputs=` on the models), compare against pseudo-dyads (partners who never met,
# `synchrony.pseudo_dyads`), and read notebook 04 on what a study design can and
# cannot tell apart. The simulation-study tools
# (`coreg recover` with `scenario = "shared_drive"`) measure how often this trap
# produces a "significant" coupling for your design.
