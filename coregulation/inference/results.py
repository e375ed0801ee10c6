"""Fit results: ArviZ InferenceData with named dims, coupling tables, health checks, I/O."""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import warnings
from pathlib import Path

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import xarray as xr

from coregulation.models._base import Model

# Sampler-health thresholds (Vehtari et al. 2021; Stan's defaults).
RHAT_MAX = 1.01
ESS_MIN = 400
# Share of posterior draws that may be unstable or near the aliasing bound before we warn.
UNSTABLE_MAX = 0.01
ALIAS_SHARE_MAX = 0.05


class SamplerWarning(UserWarning):
    """A sampler-health or identifiability problem in a fit, with what to do about it."""


def _series_labels(batch) -> list[str]:
    return [f"{batch.dyads[d]}/{batch.sessions[s]}"
            for d, s in zip(batch.dyad_index, batch.session_index)]


def _param_dims(p) -> list[str]:
    return list(p.dims)


def _coords(model: Model, batch, design) -> dict:
    coords = {
        "dyad": [str(d) for d in batch.dyads],
        "session": [str(s) for s in batch.sessions],
        "role": list(model.roles),
        "source": list(model.roles),
        "target": list(model.roles),
        "series": _series_labels(batch),
        "time_index": np.arange(batch.num_timesteps),
        "state": list(model.state_names),
    }
    if model.inputs:
        coords["input"] = list(model.inputs)
    if model.moderators:
        coords["moderator"] = list(model.moderators)
    if design.therapists:
        coords["therapist"] = [str(t) for t in design.therapists]
    return coords


def coupling_pairs(model: Model) -> list[tuple[str, str, str]]:
    """``(label prefix, first->second name, second->first name)`` for each coupling kind."""
    names = model.coupling_names
    pairs = []
    for name in names:
        if name.endswith("therapist_to_client"):
            prefix = name[: -len("therapist_to_client")]
            other = prefix + "client_to_therapist"
            if other in names:
                pairs.append((prefix.replace("_", " ").strip(), name, other))
    return pairs


def model_spec(model: Model) -> dict:
    """JSON-able description of a model (custom priors recorded by repr only)."""
    spec = {"family": type(model).__name__}
    for field in dataclasses.fields(model):
        if not field.init:
            continue
        value = getattr(model, field.name)
        if field.name == "priors":
            spec["priors_repr"] = {k: repr(v) for k, v in value.items()}
            continue
        if field.name == "fixed":
            value = {k: np.asarray(v).tolist() for k, v in value.items()}
        elif isinstance(value, tuple):
            value = list(value)
        spec[field.name] = value
    return spec


def model_from_spec(spec: dict) -> Model:
    import coregulation.models as models

    spec = dict(spec)
    family = spec.pop("family")
    spec.pop("priors_repr", None)
    cls = getattr(models, family)
    kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in spec.items()}
    return cls(**kwargs)


@dataclasses.dataclass(eq=False)
class Fit:
    """A Bayesian fit: ``idata`` (ArviZ InferenceData) and the model that made it.

    Posterior variables: each free parameter by name (the population value when
    pooled), ``{name}_by_dyad`` (dyad, ...) for pooled parameters, ``{name}_by_series``
    (series, ...) with sessions, level scales ``{name}_sd_{level}``, covariate
    effects ``{name}_on_{covariate}`` (per covariate SD; ``..._per_unit`` per original
    unit), and the directed coupling as a matrix ``coupling`` (source, target) with
    NaN on the diagonal (self-regulation is not a coupling).
    """

    idata: az.InferenceData
    model: Model
    problem: object = None
    # the options of the ``fit`` call that made it (for refits: leave-future-out)
    fit_options: dict = dataclasses.field(default_factory=dict)

    # ------------------------------------------------------------------ building

    @classmethod
    def from_samples(cls, problem, samples, stats, *, method, settings, seed, elapsed, key,
                     num_predictive, warn):
        model, batch, design = problem.model, problem.batch, problem.design
        coords = _coords(model, batch, design)
        table = {p.name: p for p in design.table}
        posterior, dims = {}, {}
        for name, value in samples.items():
            value = np.asarray(value)
            if name == "log_lik":
                continue
            if name.startswith("series__") or name.startswith("dyad__"):
                level, base = name.split("__", 1)
                p = table[base]
                if base not in design.pooled and not design.covariate_names.get(base):
                    continue
                if level == "dyad":
                    if not (set(design.levels) & {"dyad", "therapist"}):
                        continue
                    posterior[f"{base}_by_dyad"] = value
                    dims[f"{base}_by_dyad"] = ["dyad", *p.dims]
                else:
                    if not ("session" in design.levels or design.covariate_names.get(base)):
                        continue
                    posterior[f"{base}_by_series"] = value
                    dims[f"{base}_by_series"] = ["series", *p.dims]
                continue
            posterior[name] = value
            dims[name] = _site_dims(name, table, design)
        # covariate effects per original unit
        for base, covs in design.covariate_names.items():
            for c, cov in enumerate(covs):
                per_sd = posterior[f"{base}_on_{cov}"]
                posterior[f"{base}_on_{cov}_per_unit"] = per_sd / design.covariate_scale[base][c]
                dims[f"{base}_on_{cov}_per_unit"] = dims[f"{base}_on_{cov}"]
        # coupling matrices
        for prefix, forward, backward in coupling_pairs(model):
            var = (prefix + "_coupling") if prefix else "coupling"
            posterior[var] = _coupling_matrix(_value(posterior, forward, model),
                                              _value(posterior, backward, model))
            dims[var] = ["source", "target"]
            if f"{forward}_by_dyad" in posterior or f"{backward}_by_dyad" in posterior:
                fw = posterior.get(f"{forward}_by_dyad")
                bw = posterior.get(f"{backward}_by_dyad")
                nd = len(batch.dyads)
                fw = fw if fw is not None else _broadcast_dyad(_value(posterior, forward, model), nd)
                bw = bw if bw is not None else _broadcast_dyad(_value(posterior, backward, model), nd)
                posterior[var + "_by_dyad"] = _coupling_matrix(fw, bw)
                dims[var + "_by_dyad"] = ["dyad", "source", "target"]
        log_lik = np.asarray(samples["log_lik"])
        groups = {
            "posterior": posterior,
            "log_likelihood": {"y": log_lik},
            "observed_data": {"y": np.where(batch.valid[..., None], batch.y, np.nan)},
            "constant_data": {
                "time": batch.times,
                "y_center": _scale_factor(problem.data, batch, "y_center", 0.0),
                "y_scale": _scale_factor(problem.data, batch, "y_scale", 1.0),
                "series_dyad": np.asarray([str(batch.dyads[d]) for d in batch.dyad_index]),
                "series_session": np.asarray([str(batch.sessions[s]) for s in batch.session_index]),
            },
        }
        dims.update({
            "y": ["series"],
        })
        if stats:
            groups["sample_stats"] = {k: v if v.ndim >= 2 else v[None] for k, v in stats.items()}
        attrs = {
            "coregulation_model": json.dumps(model_spec(model)),
            "coregulation_pooling": json.dumps(_pooling_spec(design.pooling)),
            "coregulation_method": method,
            "coregulation_settings": json.dumps(settings),
            "coregulation_kalman": problem.kalman,
            "coregulation_seed": int(seed),
            "coregulation_scales": json.dumps(dataclasses.asdict(batch.scales)),
            "sampling_time": float(elapsed),
            "created_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "inference_library": "numpyro",
        }
        idata = _to_idata(groups, dims, coords, attrs)
        if num_predictive and method != "map":
            idata.add_groups(
                {"posterior_predictive": _posterior_predictive(problem, samples, key,
                                                               num_predictive, coords)}
            )
        fit = cls(idata=idata, model=model, problem=problem)
        if warn:
            for message in fit.diagnostics()["messages"]:
                warnings.warn(message, SamplerWarning, stacklevel=3)
        return fit

    # ------------------------------------------------------------------ summaries

    @property
    def method(self) -> str:
        return self.idata.posterior.attrs.get("coregulation_method", "nuts")

    def sampled_variables(self) -> list[str]:
        post = self.idata.posterior
        derived_suffix = ("_by_dyad", "_by_series", "_per_unit", "coupling")
        return [v for v in post.data_vars if not v.endswith(derived_suffix)]

    def diagnostics(self) -> dict:
        """Sampler health and identifiability checks; ``messages`` say what to do."""
        post = self.idata.posterior
        messages = []
        out = {"messages": messages}
        method = self.method
        if method == "nuts":
            names = [v for v in self.sampled_variables() if v != "dyad_corr_chol"]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                rhat = az.rhat(post[names])
                bulk = az.ess(post[names], method="bulk")
                tail = az.ess(post[names], method="tail")
            if post.sizes["chain"] > 1:
                worst = {n: float(np.nanmax(rhat[n].values)) for n in names}
            else:  # R-hat needs several chains
                worst = {}
            max_rhat = max(worst.values()) if worst else float("nan")
            min_bulk = min(float(np.nanmin(bulk[n].values)) for n in names)
            min_tail = min(float(np.nanmin(tail[n].values)) for n in names)
            stats = self.idata.sample_stats
            divergences = int(stats["diverging"].values.sum())
            settings = json.loads(post.attrs.get("coregulation_settings", "{}"))
            depth = settings.get("max_tree_depth", 10)
            saturated = float((stats["tree_depth"].values >= depth).mean())
            out.update(max_rhat=max_rhat, min_ess_bulk=min_bulk, min_ess_tail=min_tail,
                       divergences=divergences, tree_depth_saturation=saturated)
            if post.sizes["chain"] > 1 and max_rhat > RHAT_MAX:
                bad = sorted(worst, key=worst.get, reverse=True)[:3]
                messages.append(
                    f"R-hat up to {max_rhat:.3f} > {RHAT_MAX} (worst: {', '.join(bad)}): the "
                    "chains disagree. Run longer (num_warmup, num_samples), or simplify the "
                    "hierarchy; do not interpret these estimates yet."
                )
            if min_bulk < ESS_MIN or min_tail < ESS_MIN:
                messages.append(
                    f"effective sample size is low (bulk {min_bulk:.0f}, tail {min_tail:.0f} < "
                    f"{ESS_MIN}): interval ends are unreliable. Draw more samples "
                    "(num_samples) or more chains."
                )
            if divergences:
                messages.append(
                    f"{divergences} divergent transitions: the posterior has regions NUTS "
                    "cannot explore, and estimates may be biased. Raise target_accept (e.g. "
                    "0.95), try Pooling(centred=...) the other way, or fix weakly identified "
                    "parameters."
                )
            if saturated > 0.01:
                messages.append(
                    f"{saturated:.0%} of iterations hit the maximum tree depth ({depth}): "
                    "sampling is inefficient. Raise max_tree_depth or reparameterise."
                )
        messages.extend(self._identifiability_messages())
        return out

    def _identifiability_messages(self) -> list[str]:
        messages = []
        post = self.idata.posterior
        scales = json.loads(post.attrs.get("coregulation_scales", "{}"))
        if "period" in post:
            delta = scales.get("sampling_interval", 1.0)
            for var in ("period", "period_by_dyad", "period_by_series"):
                if var in post:
                    share = float((post[var].values < 1.1 * 4 * delta).mean())
                    if share > ALIAS_SHARE_MAX:
                        messages.append(
                            f"{share:.0%} of {var} draws lie near the aliasing bound 4 x "
                            f"{delta:g} s: periods this short are not identified at this "
                            "sampling interval (METHODS.md §3.4.1). Sample faster or use a "
                            "non-oscillating model."
                        )
        unstable = self.unstable_share()
        if unstable > UNSTABLE_MAX:
            messages.append(
                f"{unstable:.1%} of posterior draws have unstable (non-mean-reverting) "
                "dynamics: coupling and self-regulation are not separately identified here. "
                "Check for trends (detrend or add inputs) and inspect the pairs plot."
            )
        return messages

    def unstable_share(self) -> float:
        """Share of population and per-dyad posterior draws whose dynamics are unstable."""
        draws = self.parameter_draws(level="population", max_draws=400)
        stable = [np.asarray(jax.vmap(self.model.is_stable)(draws))]
        if self.has_dyad_level():
            per_dyad = self.parameter_draws(level="dyad", max_draws=400)
            stable.append(np.asarray(jax.vmap(jax.vmap(self.model.is_stable))(per_dyad)))
        return float(1 - np.mean(np.concatenate([s.reshape(-1) for s in stable])))

    def has_dyad_level(self) -> bool:
        return any(v.endswith("_by_dyad") and not v.endswith("coupling_by_dyad")
                   for v in self.idata.posterior.data_vars)

    def free_names(self) -> list[str]:
        return self.model.free_names()

    def parameter_draws(self, level: str = "population", max_draws: int | None = None) -> dict:
        """Free parameters as arrays (draw, ...), (draw, dyad, ...) or (draw, series, ...).

        ``level="series"`` gives each dyad-session its own values (session effects and
        covariates included) as the likelihood saw them; ``level="dyad"`` uses each
        dyad's values where pooled and the shared value elsewhere (broadcast).  ``max_draws`` thins evenly.
        """
        post = self.idata.posterior
        stacked = post.stack(sample=("chain", "draw"))
        num = stacked.sizes["sample"]
        idx = np.arange(num) if not max_draws or num <= max_draws else np.linspace(
            0, num - 1, max_draws).astype(int)
        out = {}
        num_dyads = post.sizes.get("dyad", 0)
        if level == "series":
            return self._series_draws(stacked, idx)
        if level not in ("population", "dyad"):
            raise ValueError(f"level must be 'population', 'dyad' or 'series'; got {level!r}.")
        for name in self.free_names():
            if level == "dyad" and f"{name}_by_dyad" in post:
                da = stacked[f"{name}_by_dyad"]
                out[name] = np.moveaxis(da.values, -1, 0)[idx]
            else:
                da = stacked[name]
                value = np.moveaxis(da.values, -1, 0)[idx]
                if level == "dyad":
                    value = np.broadcast_to(value[:, None], (value.shape[0], num_dyads,
                                                             *value.shape[1:]))
                out[name] = value
        return out

    def _series_draws(self, stacked, idx) -> dict:
        """Each series' own values (draw, series, ...): its session's, else its dyad's."""
        series_dyad = [str(d) for d in self.idata.constant_data["series_dyad"].values]
        dyads = [str(d) for d in stacked["dyad"].values] if "dyad" in stacked.dims else []
        position = np.asarray([dyads.index(d) for d in series_dyad]) if dyads else None
        num_series = len(series_dyad)
        out = {}
        for name in self.free_names():
            if f"{name}_by_series" in stacked:
                out[name] = np.moveaxis(stacked[f"{name}_by_series"].values, -1, 0)[idx]
            elif f"{name}_by_dyad" in stacked:
                out[name] = np.moveaxis(stacked[f"{name}_by_dyad"].values, -1, 0)[idx][:, position]
            else:
                value = np.moveaxis(stacked[name].values, -1, 0)[idx]
                out[name] = np.broadcast_to(value[:, None], (value.shape[0], num_series,
                                                             *value.shape[1:]))
        return out

    def summary(self, var_names=None, hdi_prob: float = 0.95) -> pd.DataFrame:
        """ArviZ summary of the sampled (and any requested) variables."""
        names = var_names or [v for v in self.sampled_variables()
                              if "_z_" not in v and v not in ("dyad_z", "dyad_corr_chol")]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return az.summary(self.idata, var_names=names, hdi_prob=hdi_prob)

    def coupling_table(self, prob: float = 0.95) -> pd.DataFrame:
        """Directed coupling per dyad and for the population, with credible intervals.

        One row per unit and quantity: first -> second role, second -> first, their
        difference, with posterior mean, sd and the central ``prob`` interval, and
        ``p_first_led`` = P(first -> second > second -> first): for the default
        roles, P(therapist-led > client-led).
        """
        post = self.idata.posterior
        t, c = self.model.roles
        lo, hi = (1 - prob) / 2, 1 - (1 - prob) / 2
        rows = []
        units = [("population", "", None)]
        if self.has_dyad_level():
            units += [("dyad", d, i) for i, d in enumerate(post["dyad"].values)]
        for prefix, forward, backward in coupling_pairs(self.model):
            kind = (prefix + " coupling") if prefix else "coupling"
            for level, dyad, i in units:
                fw = _draws(post, forward, i)
                bw = _draws(post, backward, i)
                p_led = float(np.mean(fw > bw))
                for label, values in ((f"{t} → {c}", fw), (f"{c} → {t}", bw),
                                      (f"difference ({t} → {c} minus {c} → {t})", fw - bw)):
                    rows.append({
                        "level": level, "dyad": dyad, "kind": kind, "quantity": label,
                        "mean": float(np.mean(values)), "sd": float(np.std(values)),
                        f"lower_{prob:.0%}": float(np.quantile(values, lo)),
                        f"upper_{prob:.0%}": float(np.quantile(values, hi)),
                        f"p_{t}_led": p_led,
                    })
        return pd.DataFrame(rows)

    def derived(self, level: str = "population", intervals=None, max_draws: int = 1000) -> dict:
        """The model's derived quantities over posterior draws (draw, [dyad,] ...)."""
        draws = self.parameter_draws(level=level, max_draws=max_draws)

        def one(params):
            out = self.model.derived(params, intervals)
            return {k: jnp.asarray(v, dtype=float) for k, v in out.items()}

        fn = jax.vmap(one) if level == "population" else jax.vmap(jax.vmap(one))
        return {k: np.asarray(v) for k, v in fn(draws).items()}

    # ------------------------------------------------------------------ I/O

    def to_netcdf(self, path) -> Path:
        """Write the InferenceData atomically (temporary file, then rename)."""
        from coregulation._atomic import atomic_write

        return atomic_write(path, lambda tmp: self.idata.to_netcdf(tmp, engine="h5netcdf"))


def load_fit(path) -> Fit:
    """Load a fit written by :meth:`Fit.to_netcdf` (netCDF; no pickle)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no fit at {path}.")
    idata = az.from_netcdf(path, engine="h5netcdf")
    spec = idata.posterior.attrs.get("coregulation_model")
    if spec is None:
        raise ValueError(f"{path} is not a coregulation fit (no coregulation_model attribute).")
    model = model_from_spec(json.loads(spec))
    return Fit(idata=idata, model=model, problem=None)


# ----------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------


def _site_dims(name, table, design) -> list[str]:
    if name in table:
        return _param_dims(table[name])
    for base, p in table.items():
        for level in ("dyad", "session", "therapist"):
            unit = {"dyad": "dyad", "session": "series", "therapist": "therapist"}[level]
            if name == f"{base}_sd_{level}":
                return _param_dims(p)
            if name in (f"{base}_z_{level}", f"{base}_effect_{level}"):
                return [unit, *_param_dims(p)]
        for cov in design.covariate_names.get(base, ()):
            if name == f"{base}_on_{cov}":
                return _param_dims(p)
    if name in ("dyad_z", "dyad_effect"):
        return ["dyad", "pooled_element"]
    if name == "dyad_corr_chol":
        return ["pooled_element", "pooled_element_bis"]
    return []


def _pooling_spec(pooling) -> dict:
    spec = dataclasses.asdict(pooling)
    spec["covariates"] = {k: list(v) for k, v in pooling.covariates.items()}
    return spec


def _value(posterior, name, model):
    if name in posterior:
        return posterior[name]
    fixed = model.fixed.get(name)
    shape = next(iter(posterior.values())).shape[:2]
    return np.full(shape, float(np.asarray(fixed if fixed is not None else 0.0)))


def _broadcast_dyad(value, num_dyads):
    return np.broadcast_to(value[:, :, None], (*value.shape[:2], num_dyads))


def _coupling_matrix(forward, backward):
    """(..., source, target) with forward = source 0 -> target 1; NaN on the diagonal."""
    forward, backward = np.broadcast_arrays(np.asarray(forward, float), np.asarray(backward, float))
    out = np.full(forward.shape + (2, 2), np.nan)
    out[..., 0, 1] = forward
    out[..., 1, 0] = backward
    return out


def _draws(post, name, dyad_index):
    if dyad_index is not None and f"{name}_by_dyad" in post:
        return post[f"{name}_by_dyad"].isel(dyad=dyad_index).values.reshape(-1)
    if name in post:
        return post[name].values.reshape(-1)
    return np.zeros(post.sizes["chain"] * post.sizes["draw"])


def _scale_factor(ds, batch, name, default):
    out = np.full((batch.num_series, 2), default, dtype=float)
    if ds is None or name not in ds:
        return out
    values = ds[name].values
    for k, (d, s) in enumerate(zip(batch.dyad_index, batch.session_index)):
        out[k] = values[d, s]
    return out


def _to_idata(groups, dims, coords, attrs) -> az.InferenceData:
    datasets = {}
    for group, variables in groups.items():
        data_vars = {}
        for name, value in variables.items():
            value = np.asarray(value)
            if group in ("posterior", "log_likelihood", "sample_stats"):
                var_dims = ["chain", "draw", *dims.get(name, [])]
            elif group == "observed_data":
                var_dims = ["series", "time_index", "role"]
            else:
                var_dims = {"time": ["series", "time_index"], "y_center": ["series", "role"],
                            "y_scale": ["series", "role"], "series_dyad": ["series"],
                            "series_session": ["series"]}[name]
            extra = value.ndim - len(var_dims)
            if extra > 0:
                var_dims = var_dims + [f"{name}_dim_{i}" for i in range(extra)]
            var_dims = var_dims[: value.ndim]
            data_vars[name] = (var_dims, value)
        ds = xr.Dataset(data_vars)
        used = {k: v for k, v in coords.items() if k in ds.dims}
        ds = ds.assign_coords(used)
        if "chain" in ds.dims:
            ds = ds.assign_coords(chain=np.arange(ds.sizes["chain"]), draw=np.arange(ds.sizes["draw"]))
        ds.attrs.update(attrs)
        datasets[group] = ds
    return az.InferenceData(**datasets)


def _posterior_predictive(problem, samples, key, num_predictive, coords) -> xr.Dataset:
    """Replicated series simulated at thinned posterior draws (NaN where data are missing)."""
    from coregulation.inference.batch import _series_grid
    from coregulation.simulate._simulate import sample_lgssm

    model, batch = problem.model, problem.batch
    names = [p.name for p in problem.design.table]
    first = np.asarray(samples[f"series__{names[0]}"]) if names else None
    num_chains, num_draws = first.shape[:2]
    per_chain = max(1, math.ceil(num_predictive / num_chains))
    draw_idx = np.unique(np.linspace(0, num_draws - 1, min(per_chain, num_draws)).astype(int))
    params = {n: jnp.asarray(np.asarray(samples[f"series__{n}"])[:, draw_idx]) for n in names}
    step_index = jnp.asarray(batch.step_index)
    inputs = jnp.asarray(batch.inputs)

    def one(key, p, si, inp):
        ssm = model.to_lgssm(p, _series_grid(batch, si, inp))
        _, y = sample_lgssm(key, ssm)
        return y

    def draw(key, p):
        keys = jax.random.split(key, batch.num_series)
        return jax.vmap(one)(keys, p, step_index, inputs)

    flat = {n: v.reshape((-1, *v.shape[2:])) for n, v in params.items()}
    keys = jax.random.split(key, flat[names[0]].shape[0])
    sims = np.asarray(jax.lax.map(lambda a: draw(*a), (keys, flat)))
    sims = sims.reshape((num_chains, draw_idx.size, *sims.shape[1:]))
    mask = batch.valid[..., None] & ~np.isnan(batch.y)
    sims = np.where(mask[None, None], sims, np.nan)
    ds = xr.Dataset(
        {"y": (("chain", "draw", "series", "time_index", "role"), sims)},
        coords={"chain": np.arange(num_chains), "draw": draw_idx, "series": coords["series"],
                "role": coords["role"], "time_index": coords["time_index"]},
    )
    return ds
