"""The data contract: one xarray Dataset per study (DESIGN.md §3).

Layout ::

    y(dyad, session, time, role)     signals; ragged sessions NaN-padded at the end
    time(dyad, session, time)        seconds from session start (a coordinate);
                                     strictly increasing, NaN only in the padding
    u(dyad, session, time, input)    optional known inputs
    z(dyad, session, time, moderator) optional time-varying moderators of coupling
    x(dyad, covariate)               optional dyad-level covariates
    attrs: signal, unit, sampling ("point" or "epoch_mean"), scaling

Builders validate and raise errors that name the column, dyad and session.
Nothing is dropped or reordered: dyads and sessions keep their order of first
appearance, and rows out of time order are an error, not silently sorted.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import xarray as xr

from coregulation._annotations import resolved

DEFAULT_ROLES = ("therapist", "client")
MIN_OBSERVED = 10
SAMPLING_KINDS = ("point", "epoch_mean")

__all__ = [
    "from_arrays",
    "from_long",
    "read_csv",
    "read_parquet",
    "validate",
    "standardise",
    "unstandardise",
    "to_netcdf",
    "load",
    "iter_series",
    "Series",
]


class DataError(ValueError):
    """Bad input to the data contract (subclass of ValueError)."""


# ----------------------------------------------------------------------------------
# builders
# ----------------------------------------------------------------------------------


def from_arrays(
    y,
    time,
    *,
    roles: Sequence[str] = DEFAULT_ROLES,
    dyads: Sequence | None = None,
    sessions: Sequence | None = None,
    u=None,
    inputs: Sequence[str] | None = None,
    z=None,
    moderators: Sequence[str] | None = None,
    x=None,
    covariates: Sequence[str] | None = None,
    signal: str = "signal",
    unit: str = "",
    sampling: str = "point",
) -> xr.Dataset:
    """Build the contract from arrays.

    ``y`` is (dyad, session, time, role) or (time, role) for one dyad-session;
    ``time`` is (dyad, session, time) or (time,).  ``u``/``z`` follow ``y`` with a
    last axis of inputs/moderators; ``x`` is (dyad, covariate).
    """
    y = np.asarray(y, dtype=float)
    time = np.asarray(time, dtype=float)
    if y.ndim == 2:
        y = y[None, None]
        time = time[None, None] if time.ndim == 1 else time
        u = None if u is None else np.asarray(u, dtype=float)[None, None]
        z = None if z is None else np.asarray(z, dtype=float)[None, None]
    if y.ndim != 4:
        raise DataError(f"y must be (dyad, session, time, role) or (time, role); got {y.shape}.")
    if y.shape[-1] != len(roles):
        hint = " Transposed?" if y.shape[-2] == len(roles) else ""
        raise DataError(
            f"y's last axis must be role (size {len(roles)}: {list(roles)}); got shape "
            f"{y.shape}.{hint}"
        )
    if time.shape != y.shape[:3]:
        raise DataError(f"time must be (dyad, session, time) = {y.shape[:3]}; got {time.shape}.")
    num_dyads, num_sessions = y.shape[:2]
    dyads = list(range(num_dyads)) if dyads is None else list(dyads)
    sessions = list(range(num_sessions)) if sessions is None else list(sessions)
    if len(dyads) != num_dyads or len(sessions) != num_sessions:
        raise DataError(
            f"dyads/sessions labels ({len(dyads)}, {len(sessions)}) do not match y's shape "
            f"({num_dyads}, {num_sessions})."
        )
    arrays = {}
    for var, dim, names, values in (("u", "input", inputs, u), ("z", "moderator", moderators, z)):
        if values is None:
            arrays[var] = (None, ())
            continue
        values = np.asarray(values, dtype=float)
        if values.ndim != 4 or values.shape[:3] != y.shape[:3]:
            raise DataError(
                f"{var} must be (dyad, session, time, {dim}) with the first three axes "
                f"{y.shape[:3]}; got {values.shape}."
            )
        names = list(names) if names is not None else [f"{dim}_{i}" for i in range(values.shape[3])]
        arrays[var] = (values, names)
    present = ~np.all(np.isnan(time), axis=2)
    ds = _assemble(
        y, time, roles, dyads, sessions, *arrays["u"], *arrays["z"], signal, unit, sampling,
        present,
    )
    if x is not None:
        x = np.asarray(x, dtype=float)
        if x.ndim != 2 or x.shape[0] != num_dyads:
            raise DataError(f"x must be (dyad={num_dyads}, covariate); got {x.shape}.")
        names = list(covariates) if covariates is not None else [f"x_{i}" for i in range(x.shape[1])]
        ds["x"] = (("dyad", "covariate"), x)
        ds = ds.assign_coords(covariate=names)
    return ds


def from_long(
    df: pd.DataFrame,
    *,
    dyad: str = "dyad",
    session: str | None = "session",
    time: str = "time",
    role: str = "role",
    value: str = "value",
    roles: Sequence[str] = DEFAULT_ROLES,
    inputs: Sequence[str] = (),
    moderators: Sequence[str] = (),
    signal: str | None = None,
    unit: str = "",
    sampling: str = "point",
) -> xr.Dataset:
    """Build the contract from a long (tidy) table, one row per dyad, session, time, role.

    ``session=None`` means one session per dyad.  ``inputs`` and ``moderators`` are
    further columns, which must agree between the two roles' rows at the same time.
    Within each dyad, session and role the rows must be in increasing time order.

    Examples
    --------
    >>> import numpy as np
    >>> import pandas as pd
    >>> from coregulation import data
    >>> time = np.arange(1.0, 13.0)
    >>> table = pd.DataFrame({
    ...     "dyad": "D1", "session": 1, "time": np.tile(time, 2),
    ...     "role": ["therapist"] * 12 + ["client"] * 12,
    ...     "value": np.r_[np.linspace(70, 75, 12), np.linspace(80, 78, 12)]})
    >>> table.loc[14, "value"] = np.nan  # the client's third sample is missing
    >>> ds = data.from_long(table)
    >>> ds.y.dims, ds.y.shape
    (('dyad', 'session', 'time', 'role'), (1, 1, 12, 2))
    >>> ds.y.sel(role="client").values.ravel()[:4].round(2)  # it stays missing
    array([80.  , 79.82,   nan, 79.45])
    """
    if not isinstance(df, pd.DataFrame):
        raise DataError(f"expected a pandas DataFrame; got {type(df).__name__}.")
    columns = [dyad, time, role, value, *inputs, *moderators] + ([session] if session else [])
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(f"column(s) {missing} not in the table; it has {list(df.columns)}.")
    df = df.copy()
    if session is None:
        session = "__session__"
        df[session] = 0
    for col in (time, value, *inputs, *moderators):
        numeric = pd.to_numeric(df[col], errors="coerce")
        bad = numeric.isna() & df[col].notna()
        if bad.any():
            row = df.loc[bad].iloc[0]
            raise DataError(
                f"column {col!r} has non-numeric value {row[col]!r} (dyad {row[dyad]!r}, "
                f"session {row[session]!r}, row {bad.idxmax()}); convert or set it to NaN."
            )
        df[col] = numeric.astype(float)
    if df[time].isna().any():
        row = df.loc[df[time].isna()].iloc[0]
        raise DataError(
            f"column {time!r} has a missing time (dyad {row[dyad]!r}, session {row[session]!r}); "
            "every row needs a time."
        )
    roles = list(roles)
    unknown = sorted(set(df[role].astype(str)) - set(roles))
    if unknown:
        row = df.loc[~df[role].astype(str).isin(roles)].iloc[0]
        raise DataError(
            f"column {role!r} has unknown role label(s) {unknown} (first in dyad {row[dyad]!r}, "
            f"session {row[session]!r}); expected {roles}. Pass roles=[...] to use other labels."
        )
    df[role] = df[role].astype(str)

    dyad_labels = list(pd.unique(df[dyad]))
    session_labels = list(pd.unique(df[session]))
    groups = {key: g for key, g in df.groupby([dyad, session], sort=False)}
    lengths = {}
    for (d, s), g in groups.items():
        d, s = _plain(d), _plain(s)  # numpy scalars under pandas < 3: plain in messages
        for r, gr in g.groupby(role, sort=False):
            t = gr[time].to_numpy()
            steps = np.diff(t)
            if np.any(steps == 0):
                k = int(np.nonzero(steps == 0)[0][0])
                raise DataError(
                    f"duplicated time {t[k]} for dyad {d!r}, session {s!r}, role {r!r} in "
                    f"column {time!r}."
                )
            if np.any(steps < 0):
                k = int(np.nonzero(steps < 0)[0][0])
                raise DataError(
                    f"times decrease ({t[k]} then {t[k + 1]}) for dyad {d!r}, session {s!r}, "
                    f"role {r!r} in column {time!r}; sort the rows by time first."
                )
        lengths[(d, s)] = len(pd.unique(g[time]))
    num_times = max(lengths.values())
    shape = (len(dyad_labels), len(session_labels), num_times)
    y = np.full(shape + (len(roles),), np.nan)
    t_arr = np.full(shape, np.nan)
    u = np.full(shape + (len(inputs),), np.nan) if inputs else None
    z = np.full(shape + (len(moderators),), np.nan) if moderators else None
    for (d, s), g in groups.items():
        i, j = dyad_labels.index(d), session_labels.index(s)
        times = np.sort(pd.unique(g[time]))
        t_arr[i, j, : times.size] = times
        pos = np.searchsorted(times, g[time].to_numpy())
        ridx = np.array([roles.index(r) for r in g[role]])
        y[i, j, pos, ridx] = g[value].to_numpy()
        for arr, cols, kind in ((u, inputs, "input"), (z, moderators, "moderator")):
            if arr is None:
                continue
            for c, col in enumerate(cols):
                vals = g[col].to_numpy()
                table = pd.DataFrame({"pos": pos, "v": vals}).groupby("pos")["v"]
                if (table.nunique(dropna=False) > 1).any():
                    raise DataError(
                        f"{kind} column {col!r} differs between the roles' rows at the same "
                        f"time (dyad {d!r}, session {s!r})."
                    )
                arr[i, j, pos, c] = vals
    present = np.zeros((len(dyad_labels), len(session_labels)), dtype=bool)
    for (d, s) in groups:
        present[dyad_labels.index(d), session_labels.index(s)] = True
    return _assemble(
        y, t_arr, roles, dyad_labels, session_labels, u, inputs, z, moderators,
        signal or value, unit, sampling, present,
    )


def _assemble(y, t_arr, roles, dyads, sessions, u, inputs, z, moderators, signal, unit,
              sampling, present):
    ds = xr.Dataset(
        {"y": (("dyad", "session", "time", "role"), y)},
        coords={"dyad": dyads, "session": sessions, "role": list(roles),
                "time": (("dyad", "session", "time"), t_arr)},
        attrs={"signal": signal, "unit": unit, "sampling": sampling, "scaling": "none"},
    )
    ds["time"].attrs["units"] = "s"
    if u is not None:
        ds["u"] = (("dyad", "session", "time", "input"), u)
        ds = ds.assign_coords(input=list(inputs))
    if z is not None:
        ds["z"] = (("dyad", "session", "time", "moderator"), z)
        ds = ds.assign_coords(moderator=list(moderators))
    # Sessions absent from a dyad (unbalanced designs) are all-NaN and marked as such.
    ds["session_present"] = (("dyad", "session"), present)
    return validate(ds)


def read_csv(path, **kwargs) -> xr.Dataset:
    """Read a long table from CSV and build the contract (keywords as :func:`from_long`)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    # round-trip float parsing: pandas < 3 otherwise parses some decimals 1 ulp off
    return from_long(pd.read_csv(path, float_precision="round_trip"), **kwargs)


def read_parquet(path, **kwargs) -> xr.Dataset:
    """Read a long table from Parquet and build the contract (keywords as :func:`from_long`)."""
    return from_long(pd.read_parquet(path), **kwargs)


# ----------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------


def _present(ds: xr.Dataset) -> np.ndarray:
    if "session_present" in ds:
        return np.asarray(ds["session_present"].values, dtype=bool)
    return np.ones((ds.sizes["dyad"], ds.sizes["session"]), dtype=bool)


def _plain(value):
    """numpy scalar -> Python scalar, so messages read 'D1', not np.str_('D1')."""
    return value.item() if isinstance(value, np.generic) else value


def validate(ds: xr.Dataset) -> xr.Dataset:
    """Check a dataset against the contract; return it unchanged or raise ``DataError``."""
    if "y" not in ds or ds["y"].dims != ("dyad", "session", "time", "role"):
        raise DataError("the dataset needs y with dims (dyad, session, time, role).")
    if "time" not in ds.coords or ds["time"].dims != ("dyad", "session", "time"):
        raise DataError("the dataset needs a time coordinate with dims (dyad, session, time).")
    if ds.sizes["role"] != 2:
        raise DataError(f"role must have exactly two labels; got {list(ds['role'].values)}.")
    if ds.attrs.get("sampling", "point") not in SAMPLING_KINDS:
        raise DataError(
            f"attrs['sampling'] must be one of {SAMPLING_KINDS}; got {ds.attrs.get('sampling')!r}."
        )
    y = ds["y"].values
    t = ds["time"].values
    roles = list(ds["role"].values)
    if np.isinf(y).any():
        d, s = np.argwhere(np.isinf(y).any(axis=(2, 3)))[0]
        raise DataError(
            f"y has infinite values in dyad {_plain(ds.dyad.values[d])!r}, session "
            f"{_plain(ds.session.values[s])!r}; use NaN for missing values."
        )
    present = _present(ds)
    dyads = [_plain(v) for v in ds["dyad"].values]
    sessions = [_plain(v) for v in ds["session"].values]
    roles = [_plain(v) for v in roles]
    for i, d in enumerate(dyads):
        for j, s in enumerate(sessions):
            if not present[i, j]:
                if not np.all(np.isnan(y[i, j])):
                    raise DataError(f"dyad {d!r}, session {s!r} is marked absent but has data.")
                continue
            ti = t[i, j]
            finite = np.isfinite(ti)
            n = int(finite.sum())
            if n and not np.all(finite[:n]):
                raise DataError(
                    f"time has NaN inside dyad {d!r}, session {s!r}; NaN time is only allowed "
                    "as padding at the end."
                )
            steps = np.diff(ti[:n])
            if np.any(steps == 0):
                k = int(np.nonzero(steps == 0)[0][0])
                raise DataError(f"duplicated time {ti[k]} in dyad {d!r}, session {s!r}.")
            if np.any(steps < 0):
                k = int(np.nonzero(steps < 0)[0][0])
                raise DataError(
                    f"times decrease ({ti[k]} then {ti[k + 1]}) in dyad {d!r}, session {s!r}."
                )
            if np.any(~np.isnan(y[i, j, n:])):
                raise DataError(
                    f"dyad {d!r}, session {s!r} has values where time is NaN (padding)."
                )
            for r, role in enumerate(roles):
                if n and np.all(np.isnan(y[i, j, :n, r])):
                    raise DataError(
                        f"role {role!r} has no observed value in dyad {d!r}, session {s!r}."
                    )
            observed = int((~np.isnan(y[i, j, :n])).any(axis=1).sum())
            if observed < MIN_OBSERVED:
                raise DataError(
                    f"dyad {d!r}, session {s!r} has {observed} observed time points; at least "
                    f"{MIN_OBSERVED} are needed."
                )
            for var in ("u", "z"):
                if var in ds and np.isnan(ds[var].values[i, j, :n]).any():
                    raise DataError(
                        f"{var} has missing values in dyad {d!r}, session {s!r}; inputs and "
                        "moderators must be known at every observed time."
                    )
    return ds


# ----------------------------------------------------------------------------------
# scaling and I/O
# ----------------------------------------------------------------------------------


def standardise(ds: xr.Dataset) -> xr.Dataset:
    """z-score each person-session; keep ``y_center`` and ``y_scale`` to back-transform."""
    if ds.attrs.get("scaling", "none") != "none":
        raise DataError(f"the data are already scaled ({ds.attrs['scaling']!r}).")
    center = ds["y"].mean("time", skipna=True)
    scale = ds["y"].std("time", skipna=True, ddof=1)
    if bool(((scale == 0) & _present_da(ds)).any()):
        raise DataError("a person-session is constant (standard deviation 0); cannot z-score it.")
    out = ds.copy()
    out["y"] = (ds["y"] - center) / scale
    out["y_center"] = center
    out["y_scale"] = scale
    out.attrs["scaling"] = "zscore_person_session"
    return out


def _present_da(ds):
    return xr.DataArray(_present(ds), dims=("dyad", "session"))


def unstandardise(ds: xr.Dataset) -> xr.Dataset:
    """Undo :func:`standardise` (exactly, up to floating point)."""
    if ds.attrs.get("scaling") != "zscore_person_session":
        raise DataError("the data were not standardised by coregulation.data.standardise.")
    out = ds.drop_vars(["y_center", "y_scale"])
    out["y"] = ds["y"] * ds["y_scale"] + ds["y_center"]
    out.attrs["scaling"] = "none"
    return out


def to_netcdf(ds: xr.Dataset, path) -> Path:
    """Write the dataset to netCDF4 (via h5netcdf), atomically."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    out = ds.copy()
    if "session_present" in out:
        out["session_present"] = out["session_present"].astype("int8")
    out.to_netcdf(tmp, engine="h5netcdf")
    tmp.replace(path)
    return path


def load(path) -> xr.Dataset:
    """Read a dataset written by :func:`to_netcdf` and validate it."""
    with xr.open_dataset(path, engine="h5netcdf") as f:
        ds = f.load()
    if "session_present" in ds:
        ds["session_present"] = ds["session_present"].astype(bool)
    return validate(ds)


# ----------------------------------------------------------------------------------
# iteration
# ----------------------------------------------------------------------------------


@resolved
class Series(NamedTuple):
    """One dyad-session, trimmed of its padding."""

    dyad: object
    session: object
    times: np.ndarray
    y: np.ndarray
    inputs: np.ndarray | None
    moderators: np.ndarray | None


def iter_series(ds: xr.Dataset) -> Iterator[Series]:
    """Each present dyad-session in dataset order."""
    present = _present(ds)
    t = ds["time"].values
    for i, d in enumerate(ds["dyad"].values):
        for j, s in enumerate(ds["session"].values):
            if not present[i, j]:
                continue
            n = int(np.isfinite(t[i, j]).sum())
            u = ds["u"].values[i, j, :n] if "u" in ds else None
            z = ds["z"].values[i, j, :n] if "z" in ds else None
            yield Series(_plain(d), _plain(s), t[i, j, :n], ds["y"].values[i, j, :n], u, z)
