"""Partial pooling across dyads, sessions and therapists (METHODS.md §3.3).

For each pooled parameter, on its unconstrained scale ``u`` (log for positive
parameters, logit for intervals)::

    u[d, s] = u_pop + beta . x[d, s]
              + sd_dyad * z_dyad[d] + sd_therapist * z_therapist[ther(d)]
              + sd_session * z_session[d, s],              z ~ N(0, 1)

``u_pop`` is the unconstrained image of the population value, whose prior is the
model's own parameter-table prior; ``sd_* ~ HalfNormal(scale_prior)``; covariates
are centred and scaled internally, so ``u_pop`` is the population value at the
covariate means and ``beta`` the change per covariate standard deviation (the
results report it per original unit too).  Non-centred by default; ``centred=True``
draws dyad (and session) values around their means instead.  With
``correlated=True`` the dyad effects of all pooled parameters share an
``LKJCholesky(2)`` correlation.  Parameters not pooled are shared by all series.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import xarray as xr

from coregulation.inference.batch import SeriesBatch
from coregulation.models._base import Model, Parameter

LEVELS = ("dyad", "session", "therapist")


@dataclasses.dataclass(frozen=True)
class Pooling:
    """Which parameters vary across which units, and how.

    Parameters
    ----------
    levels
        Any of ``"dyad"``, ``"session"`` (sessions within dyads) and ``"therapist"``
        (crossed with clients: one therapist sees many dyads).  ``()`` fits one
        set of parameters to every series (complete pooling).
    parameters
        Free parameter names that vary; ``None`` means all of them.
    centred
        Centred parameterisation of the dyad and session levels (non-centred if False).
    correlated
        Correlated dyad effects (``LKJCholesky(2)`` over all pooled elements).
    covariates
        Parameter name -> covariate names shifting its mean: dyad-level covariates
        from the dataset's ``x`` or session-level ones from ``session_covariates``
        (e.g. ``{"therapist_to_client": ["alliance"]}``).
    scale_prior
        Scale of the half-normal prior on each level's standard deviation
        (unconstrained scale; METHODS.md §3.3 suggests 0.3-0.5).
    """

    levels: tuple[str, ...] = ("dyad",)
    parameters: tuple[str, ...] | None = None
    centred: bool = False
    correlated: bool = False
    covariates: Mapping[str, Sequence[str]] = dataclasses.field(default_factory=dict)
    scale_prior: float = 0.4

    def __post_init__(self):
        levels = (self.levels,) if isinstance(self.levels, str) else tuple(self.levels)
        unknown = [lv for lv in levels if lv not in LEVELS]
        if unknown or len(set(levels)) != len(levels):
            raise ValueError(f"levels must be distinct names from {LEVELS}; got {self.levels!r}.")
        object.__setattr__(self, "levels", levels)
        if self.parameters is not None:
            object.__setattr__(self, "parameters", tuple(self.parameters))
        object.__setattr__(
            self, "covariates", {k: tuple(v) for k, v in dict(self.covariates).items()}
        )
        if not (np.isfinite(self.scale_prior) and self.scale_prior > 0):
            raise ValueError(f"scale_prior must be positive; got {self.scale_prior}.")
        if self.correlated and "dyad" not in levels:
            raise ValueError("correlated=True needs the 'dyad' level in levels.")


@dataclasses.dataclass(frozen=True, eq=False)
class Design:
    """Pooling resolved against a model and a batch: indices and covariate matrices."""

    pooling: Pooling
    table: tuple[Parameter, ...]
    pooled: tuple[str, ...]
    dyad_index: np.ndarray
    series_index: np.ndarray  # position of each series among dyad-sessions (for session level)
    therapist_index: np.ndarray | None  # per dyad
    therapists: tuple
    num_dyads: int
    num_series: int
    covariate_names: Mapping[str, tuple[str, ...]]
    covariate_values: Mapping[str, np.ndarray]  # name -> (num_series, num_covariates), scaled
    covariate_centre: Mapping[str, np.ndarray]
    covariate_scale: Mapping[str, np.ndarray]

    @property
    def levels(self) -> tuple[str, ...]:
        return self.pooling.levels

    def pooled_size(self) -> int:
        return int(sum(p.size for p in self.table if p.name in self.pooled))


def build_design(
    model: Model,
    batch: SeriesBatch,
    pooling: Pooling,
    data: xr.Dataset | None = None,
    therapists: Sequence | None = None,
    session_covariates=None,
) -> Design:
    """Resolve ``pooling`` for ``model`` on ``batch``; errors name what is wrong."""
    table = tuple(model.parameter_table(batch.scales))
    free = [p.name for p in table]
    pooled = tuple(free if pooling.parameters is None else pooling.parameters)
    unknown = sorted(set(pooled) - set(free))
    if unknown:
        raise ValueError(
            f"Pooling.parameters names {unknown}, which are not free parameters of "
            f"{type(model).__name__}; free: {free}."
        )
    num_dyads = len(batch.dyads)
    present_dyads = np.unique(batch.dyad_index)
    if "dyad" in pooling.levels and present_dyads.size < 2:
        raise ValueError(
            "pooling across dyads needs at least 2 dyads; this data has "
            f"{present_dyads.size}. Use Pooling(levels=()) (or levels=('session',) for "
            "one dyad's many sessions)."
        )
    if "session" in pooling.levels and batch.num_series < 2:
        raise ValueError("pooling across sessions needs at least 2 dyad-sessions.")
    therapist_index, therapist_labels = None, ()
    if "therapist" in pooling.levels:
        if therapists is None and data is not None and "therapist" in data:
            therapists = [_plain(v) for v in data["therapist"].values]
        if therapists is None:
            raise ValueError(
                "the 'therapist' level needs therapists=: one therapist label per dyad "
                f"({num_dyads} dyads), or a 'therapist' variable (dyad,) in the dataset."
            )
        therapists = list(therapists)
        if len(therapists) != num_dyads:
            raise ValueError(
                f"therapists must have one label per dyad ({num_dyads}); got {len(therapists)}."
            )
        therapist_labels = tuple(dict.fromkeys(therapists))
        therapist_index = np.array([therapist_labels.index(t) for t in therapists])
    names, values, centres, scales = {}, {}, {}, {}
    for name, covs in pooling.covariates.items():
        if name not in free:
            raise ValueError(f"covariates names {name!r}, not a free parameter; free: {free}.")
        columns = []
        for cov in covs:
            columns.append(_covariate_column(cov, batch, data, session_covariates))
        matrix = np.column_stack(columns) if columns else np.zeros((batch.num_series, 0))
        centre = matrix.mean(axis=0)
        scale = matrix.std(axis=0)
        for cov, sd in zip(covs, scale):
            if not sd > 0:
                raise ValueError(f"covariate {cov!r} does not vary across the series; drop it.")
        names[name] = tuple(covs)
        values[name] = (matrix - centre) / scale
        centres[name], scales[name] = centre, scale
    return Design(
        pooling=pooling,
        table=table,
        pooled=tuple(n for n in free if n in pooled) if pooling.levels else (),
        dyad_index=batch.dyad_index,
        series_index=np.arange(batch.num_series),
        therapist_index=therapist_index,
        therapists=therapist_labels,
        num_dyads=num_dyads,
        num_series=batch.num_series,
        covariate_names=names,
        covariate_values=values,
        covariate_centre=centres,
        covariate_scale=scales,
    )


def _plain(v):
    return v.item() if hasattr(v, "item") else v


def _covariate_column(name, batch: SeriesBatch, data, session_covariates) -> np.ndarray:
    if data is not None and "x" in data and name in list(data["covariate"].values):
        x = data["x"].sel(covariate=name).values.astype(float)
        column = x[batch.dyad_index]
    elif session_covariates is not None and name in session_covariates:
        table = session_covariates
        for col in ("dyad", "session"):
            if col not in table:
                raise ValueError(f"session_covariates needs a {col!r} column; got {list(table)}.")
        lookup = {
            (_plain(d), _plain(s)): float(v)
            for d, s, v in zip(table["dyad"], table["session"], table[name])
        }
        column = []
        for d, s in zip(batch.dyad_index, batch.session_index):
            key = (batch.dyads[d], batch.sessions[s])
            if key not in lookup:
                raise ValueError(
                    f"session_covariates has no row for dyad {key[0]!r}, session {key[1]!r}."
                )
            column.append(lookup[key])
        column = np.asarray(column)
    else:
        raise ValueError(
            f"covariate {name!r} not found: expected it in the dataset's x(dyad, covariate) "
            "or as a column of session_covariates (with dyad and session columns)."
        )
    if not np.all(np.isfinite(column)):
        raise ValueError(f"covariate {name!r} has missing or infinite values for some series.")
    return column


# ----------------------------------------------------------------------------------
# the numpyro model
# ----------------------------------------------------------------------------------


def build_numpyro_model(design: Design, batch_log_likelihood, likelihood: bool = True):
    """A numpyro model (no arguments) of the hierarchy and the batched likelihood.

    Sites: each free parameter by its own name (the population value, with the
    table prior); ``{name}_sd_{level}`` and ``{name}_z_{level}`` for pooled ones
    (``dyad_z`` and ``dyad_corr_chol`` when correlated); ``{name}_on_{covariate}``
    for covariate effects; deterministic ``series__{name}`` (per series),
    ``dyad__{name}`` (per dyad, no session effect) and ``log_lik`` (per series).
    ``likelihood=False`` leaves the data out (same latent sites): tracing it
    eagerly to find the sites and their supports is cheap.
    """
    pooling = design.pooling
    table = design.table
    pooled = set(design.pooled)
    dyad_index = jnp.asarray(design.dyad_index)
    therapist_index = (
        None if design.therapist_index is None else jnp.asarray(design.therapist_index)
    )
    num_dyads, num_series = design.num_dyads, design.num_series
    k_pooled = design.pooled_size()
    counts = np.zeros((num_dyads, num_series))
    counts[design.dyad_index, np.arange(num_series)] = 1.0
    dyad_average = jnp.asarray(counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0))

    def model():
        series_params, dyad_params = {}, {}
        corr_effects = None
        if pooling.correlated and k_pooled:
            sd_all = []
            chol = numpyro.sample("dyad_corr_chol", dist.LKJCholesky(k_pooled, 2.0))
            for p in table:
                if p.name in pooled:
                    sd_all.append(
                        numpyro.sample(
                            f"{p.name}_sd_dyad",
                            dist.HalfNormal(pooling.scale_prior).expand(p.shape).to_event(len(p.shape)),
                        ).reshape(-1)
                    )
            sd_all = jnp.concatenate(sd_all)
            scale_tril = sd_all[:, None] * chol
            if pooling.centred:
                effects = numpyro.sample(
                    "dyad_effect",
                    dist.MultivariateNormal(jnp.zeros(k_pooled), scale_tril=scale_tril)
                    .expand((num_dyads,)).to_event(1),
                )
            else:
                z = numpyro.sample("dyad_z", dist.Normal().expand((num_dyads, k_pooled)).to_event(2))
                effects = z @ scale_tril.T
            corr_effects, offset = {}, 0
            for p in table:
                if p.name in pooled:
                    corr_effects[p.name] = effects[:, offset : offset + p.size].reshape(
                        (num_dyads, *p.shape)
                    )
                    offset += p.size
        for p in table:
            transform = p.transform()
            event = len(p.shape)
            prior = _OnConstraint(p.prior, p.constraint)
            pop = numpyro.sample(p.name, prior.to_event(event) if event else prior)
            u_pop = transform.inv(pop)
            u_dyad = jnp.broadcast_to(u_pop, (num_dyads, *p.shape))
            u_series = jnp.broadcast_to(u_pop, (num_series, *p.shape))
            if p.name in design.covariate_names:
                shift = 0.0
                for c, cov in enumerate(design.covariate_names[p.name]):
                    beta = numpyro.sample(
                        f"{p.name}_on_{cov}", dist.Normal(0.0, 0.5).expand(p.shape).to_event(event)
                    )
                    column = jnp.asarray(design.covariate_values[p.name][:, c])
                    shift = shift + column.reshape((-1,) + (1,) * event) * beta[None]
                u_series = u_series + shift
                # a dyad's value: its series' covariate shifts averaged (exact for
                # dyad-level covariates; session-level ones at the dyad's mean)
                u_dyad = u_dyad + jnp.tensordot(dyad_average, shift, axes=1)
            if p.name in pooled:
                series_dyad = _level_effect(p, "dyad", num_dyads, pooling, corr_effects)
                if series_dyad is not None:
                    u_dyad = u_dyad + series_dyad
                    u_series = u_series + series_dyad[dyad_index]
                if "therapist" in pooling.levels:
                    eff = _non_centred(p, "therapist", len(design.therapists), pooling)
                    u_dyad = u_dyad + eff[therapist_index]
                    u_series = u_series + eff[therapist_index][dyad_index]
                if "session" in pooling.levels:
                    u_series = u_series + _non_centred(p, "session", num_series, pooling)
            series_params[p.name] = numpyro.deterministic(f"series__{p.name}", transform(u_series))
            dyad_params[p.name] = numpyro.deterministic(f"dyad__{p.name}", transform(u_dyad))
        if not likelihood:
            return
        log_lik = batch_log_likelihood(series_params)
        numpyro.deterministic("log_lik", log_lik)
        numpyro.factor("likelihood", jnp.sum(log_lik))

    return model


class _OnConstraint(dist.Distribution):
    """``base`` with its support declared as the parameter's ``constraint``.

    numpyro samples a site on the unconstrained image of its distribution's support.
    A prior built by transforming another (``shock_corr``: an affinely moved Beta;
    ``period``: the exponential of a truncated normal) reports the transform's
    codomain (the real line; the positive half-line) instead of its true support, so
    the sampler would step outside it and meet a log-density of NaN or ``-inf``.
    With the declared constraint every site lives on the same unconstrained scale as
    :class:`~coregulation.ParameterSpace` (MAP, Laplace, the replicate fits).
    """

    arg_constraints = {}
    pytree_data_fields = ("base",)
    pytree_aux_fields = ("constraint",)

    def __init__(self, base: dist.Distribution, constraint):
        self.base = base
        self.constraint = constraint
        super().__init__(base.batch_shape, base.event_shape)

    @property
    def support(self):
        return self.constraint

    def sample(self, key, sample_shape=()):
        return self.base.sample(key, sample_shape)

    def log_prob(self, value):
        return self.base.log_prob(value)


def _level_effect(p: Parameter, level, n, pooling: Pooling, corr_effects):
    if level not in pooling.levels:
        return None
    if corr_effects is not None:
        return corr_effects[p.name]
    return _non_centred(p, level, n, pooling)


def _non_centred(p: Parameter, level: str, n: int, pooling: Pooling):
    """Level effects ``sd * z`` (non-centred) or drawn around 0 with sd (centred)."""
    event = len(p.shape)
    sd = numpyro.sample(
        f"{p.name}_sd_{level}",
        dist.HalfNormal(pooling.scale_prior).expand(p.shape).to_event(event),
    )
    if pooling.centred and level in ("dyad", "session"):
        return numpyro.sample(
            f"{p.name}_effect_{level}",
            dist.Normal(jnp.zeros((n, *p.shape)), sd).to_event(event + 1),
        )
    z = numpyro.sample(
        f"{p.name}_z_{level}", dist.Normal().expand((n, *p.shape)).to_event(event + 1)
    )
    return sd[None] * z
