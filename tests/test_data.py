"""The data contract: builders, round trips, standardisation and every listed error."""

import numpy as np
import pandas as pd
import pytest

from coregulation import data


def _long(num_dyads=2, num_sessions=2, num_times=30, rng=None):
    rng = rng or np.random.default_rng(0)
    rows = []
    for d in range(num_dyads):
        for s in range(num_sessions):
            n = num_times - 3 * d  # ragged lengths
            for k in range(n):
                for role in ("therapist", "client"):
                    rows.append(dict(dyad=f"D{d}", session=s + 1, time=2.0 * (k + 1),
                                     role=role, value=rng.normal(), speaking=float(k % 5 == 0)))
    return pd.DataFrame(rows)


def test_from_long_builds_contract_without_reordering(rng):
    df = _long(rng=rng)
    df = pd.concat([df[df.dyad == "D1"], df[df.dyad == "D0"]])  # D1 first in the file
    ds = data.from_long(df, moderators=["speaking"])
    assert list(ds.dyad.values) == ["D1", "D0"]
    assert ds.y.dims == ("dyad", "session", "time", "role")
    assert ds.sizes["time"] == 30
    # D1 is 3 steps shorter: NaN padded at the end, times NaN there too
    assert np.isnan(ds.y.sel(dyad="D1").values[:, 27:]).all()
    assert np.isnan(ds.time.sel(dyad="D1").values[:, 27:]).all()
    # every value lands where it came from
    row = df[(df.dyad == "D0") & (df.session == 2) & (df.time == 8.0) & (df.role == "client")]
    assert ds.y.sel(dyad="D0", session=2, role="client").values[3] == row.value.item()
    assert ds.z.sel(moderator="speaking").values.shape == (2, 2, 30)


def test_csv_parquet_netcdf_round_trips(tmp_path, rng):
    df = _long(rng=rng)
    df.to_csv(tmp_path / "d.csv", index=False)
    df.to_parquet(tmp_path / "d.parquet")
    a = data.read_csv(tmp_path / "d.csv")
    b = data.read_parquet(tmp_path / "d.parquet")
    np.testing.assert_array_equal(a.y.values, b.y.values)
    data.to_netcdf(a, tmp_path / "d.nc")
    c = data.load(tmp_path / "d.nc")
    np.testing.assert_array_equal(a.y.values, c.y.values)
    np.testing.assert_array_equal(a.time.values, c.time.values)
    assert list(c.dyad.values) == list(a.dyad.values)
    assert not (tmp_path / "d.nc.tmp").exists()


def test_standardise_keeps_scales_and_inverts(rng):
    ds = data.from_long(_long(rng=rng))
    z = data.standardise(ds)
    np.testing.assert_allclose(z.y.mean("time").values, 0, atol=1e-12)
    np.testing.assert_allclose(z.y.std("time", ddof=1).values, 1, atol=1e-12)
    back = data.unstandardise(z)
    np.testing.assert_allclose(back.y.values, ds.y.values, atol=1e-12)
    with pytest.raises(data.DataError, match="already scaled"):
        data.standardise(z)


def test_from_arrays_single_series_and_iteration(rng):
    y = rng.normal(size=(50, 2))
    ds = data.from_arrays(y, np.arange(1.0, 51.0))
    (series,) = list(data.iter_series(ds))
    np.testing.assert_array_equal(series.y, y)
    with pytest.raises(data.DataError, match="Transposed"):
        data.from_arrays(y.T, np.arange(1.0, 51.0))


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda df: df.assign(role=df.role.replace("client", "patient")), "unknown role label.*patient"),
        (lambda df: pd.concat([df.iloc[[0]], df]), "duplicated time 2.0 for dyad 'D0', session 1"),
        (lambda df: df.iloc[::-1], "times decrease .* dyad 'D1', session 2"),
        (lambda df: df[~((df.dyad == "D1") & (df.session == 2) & (df.time > 16))],
         "dyad 'D1', session 2 has 8 observed time points"),
        (lambda df: df.assign(value=df.value.astype(object).where(df.index != 5, "n/a")),
         "column 'value' has non-numeric value 'n/a'"),
        (lambda df: df.assign(value=df.value.where(~((df.dyad == "D0") & (df.session == 2)
                                                     & (df.role == "client")))),
         "role 'client' has no observed value in dyad 'D0', session 2"),
        (lambda df: df.drop(columns="time"), r"column\(s\) \['time'\] not in the table"),
    ],
)
def test_bad_input_errors_name_column_dyad_session(mutate, message, rng):
    df = _long(rng=rng)
    with pytest.raises(data.DataError, match=message):
        data.from_long(mutate(df))


def test_nan_values_are_missing_not_dropped(rng):
    df = _long(rng=rng)
    df.loc[3, "value"] = np.nan
    ds = data.from_long(df)
    assert np.isnan(ds.y.values).sum() > 0
    total = ds.y.notnull().sum().item()
    assert total == df.value.notna().sum()
