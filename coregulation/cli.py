"""The ``coreg`` command line: simulate, fit, demo; recover, sbc, report, power."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

app = typer.Typer(help="coregulation: dynamical-systems models of dyadic coregulation.",
                  no_args_is_help=True)
console = Console()

MODELS = {"ctvar": "CTVAR", "oscillator": "CoupledOscillator", "var1": "VAR1"}


@app.callback()
def main() -> None:
    """Bayesian dynamical-systems models of physiological coregulation in dyads."""


def _model(name: str):
    import coregulation as cr

    key = name.lower()
    if key not in MODELS:
        raise typer.BadParameter(f"--model must be one of {sorted(MODELS)}; got {name!r}.")
    return getattr(cr, MODELS[key])()


def _atomic_write(path: Path, write) -> Path:
    """Call ``write(tmp_path)`` then rename onto ``path``: no half-written file is left."""
    from coregulation._atomic import atomic_write

    return atomic_write(path, write)


def _read_data(path: Path):
    from coregulation import data

    if not path.exists():
        raise typer.BadParameter(f"DATA file {path} does not exist.")
    suffixes = "".join(path.suffixes).lower()
    try:
        if suffixes.endswith((".csv", ".csv.gz")):
            return data.read_csv(path)
        if suffixes.endswith((".parquet", ".pq")):
            return data.read_parquet(path)
        if suffixes.endswith((".nc", ".nc4", ".netcdf")):
            return data.load(path)
    except ValueError as err:
        raise typer.BadParameter(f"DATA {path}: {err}") from err
    raise typer.BadParameter(
        f"DATA must be .csv, .csv.gz, .parquet or .nc (netCDF); got {path.name!r}."
    )


@app.command()
def simulate(
    out: Path = typer.Option(..., help="Output file: .csv, .parquet or .nc."),
    model: str = typer.Option("ctvar", help="ctvar, oscillator or var1."),
    dyads: int = typer.Option(10, min=1), sessions: int = typer.Option(1, min=1),
    duration: float = typer.Option(600.0, help="Session length (s)."),
    interval: float = typer.Option(1.0, help="Sampling interval (s)."),
    therapist_to_client: float = typer.Option(0.4), client_to_therapist: float = typer.Option(0.0),
    missing_rate: float = typer.Option(0.0, min=0.0, max=0.9),
    seed: int = typer.Option(0),
):
    """Simulate a study with known coupling; writes the data and a truth JSON beside it."""
    import jax

    import coregulation as cr
    from coregulation.models.parameters import ParameterSpace

    m = _model(model)
    params = {k: np.asarray(v) for k, v in ParameterSpace(m).prior_median().items()}
    names = [n for n in m.coupling_names]
    for name in names:
        if name.endswith("therapist_to_client"):
            params[name] = np.asarray(therapist_to_client)
        elif name.endswith("client_to_therapist"):
            params[name] = np.asarray(client_to_therapist)
    ds, _ = cr.simulate_dyads(m, params, jax.random.key(seed), num_dyads=dyads,
                              num_sessions=sessions, duration=duration,
                              sampling_interval=interval, missing_rate=missing_rate)
    suffix = out.suffix.lower()
    if suffix == ".nc":
        _atomic_write(out, lambda tmp: cr.data.to_netcdf(ds, tmp))
    elif suffix in (".csv", ".parquet"):
        df = _to_long(ds)
        _atomic_write(out, (lambda tmp: df.to_csv(tmp, index=False)) if suffix == ".csv"
                      else (lambda tmp: df.to_parquet(tmp, index=False)))
    else:
        raise typer.BadParameter(f"--out must end in .csv, .parquet or .nc; got {out.name!r}.")
    truth = {k: np.asarray(v).tolist() for k, v in params.items()}
    truth_path = out.with_name(out.stem + "_truth.json")
    _atomic_write(truth_path, lambda tmp: Path(tmp).write_text(json.dumps(truth, indent=1)))
    console.print(f"wrote {out} ({dyads} dyads x {sessions} sessions) and {truth_path}")


def _to_long(ds):
    import pandas as pd

    rows = []
    for i, d in enumerate(ds["dyad"].values):
        for j, s in enumerate(ds["session"].values):
            t = ds["time"].values[i, j]
            keep = np.isfinite(t)
            for r, role in enumerate(ds["role"].values):
                rows.append(pd.DataFrame({"dyad": d, "session": s, "time": t[keep], "role": role,
                                          "value": ds["y"].values[i, j, keep, r]}))
    return pd.concat(rows, ignore_index=True)


def _write_outputs(fit, out: Path, figures: bool = True) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = [fit.to_netcdf(out / "fit.nc")]
    table = fit.coupling_table()
    written.append(_atomic_write(out / "coupling_table.csv",
                                 lambda tmp: table.to_csv(tmp, index=False)))
    if figures:
        from coregulation.plots import save_all

        written.extend(save_all(fit, out / "figures"))
    return written


def _print_health(fit) -> None:
    diag = fit.diagnostics()
    if "max_rhat" in diag:
        console.print(
            f"sampler: max R-hat {diag['max_rhat']:.3f}, min bulk ESS {diag['min_ess_bulk']:.0f}, "
            f"min tail ESS {diag['min_ess_tail']:.0f}, divergences {diag['divergences']}"
        )
    for message in diag["messages"]:
        console.print(f"[yellow]warning:[/] {escape(message)}")


@app.command()
def fit(
    data_path: Path = typer.Argument(..., metavar="DATA", help="CSV/Parquet long table or netCDF."),
    out: Path = typer.Option(..., help="Output folder."),
    model: str = typer.Option("ctvar", help="ctvar, oscillator or var1."),
    method: str = typer.Option("nuts", help="nuts, svi, laplace or map."),
    backend: str = typer.Option("numpyro", help="numpyro or pymc (NUTS only)."),
    sampler: str = typer.Option(None, help="With --backend pymc: pymc, nutpie or numpyro."),
    chains: int = typer.Option(4, min=1), warmup: int = typer.Option(1000, min=0),
    samples: int = typer.Option(1000, min=1), seed: int = typer.Option(0),
    pool: bool = typer.Option(True, help="Partially pool parameters across dyads."),
    figures: bool = typer.Option(True, help="Write figures."),
):
    """Fit a model; writes fit.nc (InferenceData), coupling_table.csv and figures/ to OUT."""
    import coregulation as cr

    m = _model(model)
    ds = _read_data(data_path)
    pooling = None if pool else cr.Pooling(levels=())
    try:
        result = cr.fit(m, ds, method=method, backend=backend, sampler=sampler,
                        num_chains=chains, num_warmup=warmup, num_samples=samples, seed=seed,
                        pooling=pooling, warn=False)
    except (ValueError, TypeError) as err:
        raise typer.BadParameter(str(err)) from err
    written = _write_outputs(result, out, figures)
    _print_health(result)
    console.print("wrote " + ", ".join(str(p) for p in written))


@app.command()
def demo(
    out: Path = typer.Option(Path("demo_output"), help="Folder for the fit, table and figures."),
    chains: int = typer.Option(2, min=1), warmup: int = typer.Option(200, min=0),
    samples: int = typer.Option(200, min=1), seed: int = typer.Option(0),
    dyads: int = typer.Option(20, min=2, max=20, help="Use the first N dyads of the study."),
):
    """Hierarchical Bayesian fit of the bundled study (20 dyads x 2 sessions), vs the truth."""
    import time

    import coregulation as cr
    from coregulation.datasets import demo_study

    ds, truth = demo_study()
    truth = truth.iloc[:dyads]
    ds = ds.isel(dyad=slice(0, dyads))
    console.print(
        f"[bold]Demo:[/] {ds.sizes['dyad']} therapist-client dyads x {ds.sizes['session']} "
        f"sessions of {ds.attrs['signal']} at 1 s; CT-VAR with couplings and time constants "
        "pooled across dyads; NumPyro NUTS."
    )
    start = time.perf_counter()
    pooling = cr.Pooling(parameters=("therapist_to_client", "client_to_therapist"))
    result = cr.fit(cr.CTVAR(), ds, num_chains=chains, num_warmup=warmup, num_samples=samples,
                    seed=seed, pooling=pooling, warn=False)
    elapsed = time.perf_counter() - start
    table = result.coupling_table()
    rows = table[table["level"] == "dyad"].set_index(["dyad", "quantity"])
    t_c, c_t = "therapist → client", "client → therapist"
    view = Table(title="Directed coupling per dyad: posterior mean [95% interval] vs truth")
    for col in ("dyad", "pattern", "T→C truth", "T→C estimate", "C→T truth", "C→T estimate",
                "P(T-led)"):
        view.add_column(col, justify="right")
    hits = 0
    for _, row in truth.iterrows():
        a, b = rows.loc[(row.dyad, t_c)], rows.loc[(row.dyad, c_t)]
        for est, true in ((a, row.therapist_to_client), (b, row.client_to_therapist)):
            hits += est["lower_95%"] <= true <= est["upper_95%"]
        view.add_row(row.dyad, row.pattern, f"{row.therapist_to_client:.2f}",
                     f"{a['mean']:.2f} [{a['lower_95%']:.2f}, {a['upper_95%']:.2f}]",
                     f"{row.client_to_therapist:.2f}",
                     f"{b['mean']:.2f} [{b['lower_95%']:.2f}, {b['upper_95%']:.2f}]",
                     f"{a['p_therapist_led']:.2f}")
    console.print(view)
    console.print(f"{hits} of {2 * len(truth)} true couplings inside their 95% intervals; "
                  f"fit took {elapsed:.0f} s.")
    _print_health(result)
    console.print(
        f"(The demo draws {chains} chains x {samples} samples after {warmup} warm-up "
        "iterations to finish in minutes; for results you report, use the defaults of "
        "`coreg fit` / `coregulation.fit`: 4 chains x 1000 + 1000.)"
    )
    written = _write_outputs(result, out)
    console.print("wrote " + ", ".join(str(p) for p in written))


# ----------------------------------------------------------------------------------
# simulation studies
# ----------------------------------------------------------------------------------


def _load_study(path: Path, kind: str):
    from coregulation.simulate.study import Study

    try:
        study = Study.from_file(path)
    except (ValueError, FileNotFoundError) as err:
        raise typer.BadParameter(str(err)) from err
    if study.kind != kind:
        other = "sbc" if kind == "recovery" else "recover"
        raise typer.BadParameter(
            f"{path} declares kind = {study.kind!r}; `coreg {'recover' if kind == 'recovery' else 'sbc'}`"
            f" runs kind = {kind!r} studies (use `coreg {other}`)."
        )
    return study


def _run(study, out: Path, scheduler: str | None, processes: int, progress: bool):
    from coregulation.simulate.recovery import run_study

    try:
        return run_study(study, out, scheduler=scheduler, processes=processes, progress=progress)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from err


_SCHEDULER = typer.Option(None, help="Dask scheduler address (tcp://host:8786); local if unset.")
_PROCESSES = typer.Option(1, min=1, help="Local worker processes (without --scheduler).")
_PROGRESS = typer.Option(True, help="Progress bar with an ETA.")


@app.command()
def recover(
    study_file: Path = typer.Argument(..., metavar="STUDY", help="Study file (.toml or .yaml)."),
    out: Path = typer.Option(..., help="Results folder (an interrupted run resumes here)."),
    scheduler: str = _SCHEDULER, processes: int = _PROCESSES, progress: bool = _PROGRESS,
):
    """Run a parameter-recovery study; then writes the report (as `coreg report OUT`)."""
    study = _load_study(study_file, "recovery")
    _run(study, out, scheduler, processes, progress)
    report(out)


@app.command()
def sbc(
    study_file: Path = typer.Argument(..., metavar="STUDY", help="Study file with kind = 'sbc'."),
    out: Path = typer.Option(..., help="Results folder (an interrupted run resumes here)."),
    scheduler: str = _SCHEDULER, processes: int = _PROCESSES, progress: bool = _PROGRESS,
):
    """Run simulation-based calibration; then writes the report (as `coreg report OUT`)."""
    study = _load_study(study_file, "sbc")
    _run(study, out, scheduler, processes, progress)
    report(out)


@app.command()
def report(
    folder: Path = typer.Argument(..., metavar="DIR", help="A study's results folder."),
):
    """Tables and figures of a study: coverage, bias, power (recovery) or rank uniformity (SBC)."""
    from coregulation.plots import save_figure, study_metric_plot
    from coregulation.simulate.recovery import load_study, recovery_metrics

    try:
        results = load_study(folder)
    except FileNotFoundError as err:
        raise typer.BadParameter(str(err)) from err
    metrics = recovery_metrics(results)
    table = metrics.to_dataframe().reset_index()
    written = [_atomic_write(folder / "metrics.csv", lambda tmp: table.to_csv(tmp, index=False))]
    figures = folder / "figures"
    couplings = [p for p in results["parameter"].values if "_to_" in str(p)
                 or str(p) == "coupling_difference"]
    for metric in ("coverage_95", "bias", "power", "false_positive_rate"):
        if bool(metrics[metric].sel(parameter=couplings).notnull().any()):
            written.append(save_figure(study_metric_plot(metrics, metric, couplings),
                                       figures / f"{metric}.png"))
    view = Table(title=f"{results.attrs['kind']} study, {results.attrs['method']} fits "
                       f"({'complete' if results.attrs['complete'] else 'INCOMPLETE'})")
    for col in ("cell", "parameter", "replicates", "bias", "rmse", "coverage 95%", "power", "FPR"):
        view.add_column(col, justify="right")
    for c in range(metrics.sizes["cell"]):
        for p in couplings:
            row = metrics.isel(cell=c).sel(parameter=p)

            def fmt(v):
                return "-" if not np.isfinite(float(v)) else f"{float(v):.3f}"

            view.add_row(str(int(row["cell"])), escape(str(p)), str(int(row["num_replicates"])),
                         fmt(row["bias"]), fmt(row["rmse"]), fmt(row["coverage_95"]),
                         fmt(row["power"]), fmt(row["false_positive_rate"]))
    console.print(view)
    if "rank" in results:
        from coregulation.simulate.sbc import chi_square_uniformity, ecdf_difference_plot

        chi = chi_square_uniformity(results)
        written.append(_atomic_write(folder / "sbc_uniformity.csv",
                                     lambda tmp: chi.to_csv(tmp, index=False)))
        written.append(save_figure(ecdf_difference_plot(results), figures / "sbc_ecdf.png"))
        worst = chi.sort_values("p_value").iloc[0]
        console.print(f"SBC: smallest chi-square p-value {worst['p_value']:.3g} "
                      f"({escape(str(worst['quantity']))}) over {int(worst['num_replicates'])} "
                      "replicates.")
    console.print("wrote " + ", ".join(str(p) for p in written))


def _numbers(text: str, kind=float) -> list:
    try:
        return [kind(v) for v in text.split(",") if v.strip()]
    except ValueError as err:
        raise typer.BadParameter(f"expected comma-separated numbers; got {text!r}.") from err


@app.command()
def power(
    out: Path = typer.Option(..., help="Results folder (resumable)."),
    model: str = typer.Option("ctvar", help="ctvar, oscillator or var1."),
    effect: float = typer.Option(0.3, help="Target coupling."),
    pattern: str = typer.Option("therapist_led", help="therapist_led or client_led, ..."),
    dyads: str = typer.Option("1", help="Numbers of dyads, comma-separated."),
    durations: str = typer.Option("300,600,1200", help="Session lengths (s), comma-separated."),
    interval: float = typer.Option(1.0, help="Sampling interval (s)."),
    replicates: int = typer.Option(100, min=1), method: str = typer.Option("laplace"),
    seed: int = typer.Option(0),
    scheduler: str = _SCHEDULER, processes: int = _PROCESSES, progress: bool = _PROGRESS,
):
    """Power curve of a coupling over the number of dyads and the session length."""
    from coregulation.plots import power_curve_plot, save_figure
    from coregulation.simulate.power import power_curve

    if model.lower() not in MODELS:
        raise typer.BadParameter(f"--model must be one of {sorted(MODELS)}; got {model!r}.")
    try:
        table, metrics = power_curve(
            model.lower(), effect=effect, pattern=pattern, num_dyads=_numbers(dyads, int),
            durations=_numbers(durations), sampling_interval=interval, replicates=replicates,
            method=method, seed=seed, out=out, scheduler=scheduler, processes=processes,
            progress=progress)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from err
    view = Table(title=f"Power to detect {table['coupling'].iloc[0]} = {effect} "
                       f"({replicates} replicates per design, {method})")
    for col in ("dyads", "duration (s)", "power", "± MC SE", "directional accuracy"):
        view.add_column(col, justify="right")
    for _, row in table.iterrows():
        view.add_row(str(row.num_dyads), f"{row.duration:.0f}", f"{row.power:.2f}",
                     f"{row.power_mc_se:.2f}", f"{row.directional_accuracy:.2f}")
    console.print(view)
    written = [_atomic_write(out / "power.csv", lambda tmp: table.to_csv(tmp, index=False))]
    x, by = ("duration", "num_dyads") if len(set(table.num_dyads)) == 1 else ("num_dyads",
                                                                            "duration")
    written.append(save_figure(power_curve_plot(metrics, x=x, parameter=table["coupling"].iloc[0],
                                                by=by), out / "power.png"))
    console.print("wrote " + ", ".join(str(p) for p in written))


if __name__ == "__main__":
    app()
