"""The ``coreg`` command line."""

from __future__ import annotations

import numpy as np
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

app = typer.Typer(help="coregulation: dynamical-systems models of dyadic coregulation.",
                  no_args_is_help=True)
console = Console()


@app.callback()
def main() -> None:
    """Bayesian dynamical-systems models of physiological coregulation in dyads."""


@app.command()
def demo(method: str = typer.Option("auto", help="Kalman method: sequential, parallel, fast, auto.")):
    """Fit the bundled demo dyad by maximum likelihood and show couplings next to the truth."""
    import coregulation as cr
    from coregulation import data
    from coregulation.datasets import demo_dyad

    ds, truth = demo_dyad()
    ds = data.standardise(ds)
    (series,) = list(data.iter_series(ds))
    console.print(
        f"[bold]Demo:[/] dyad {str(series.dyad)!r}, {series.y.shape[0]} s of "
        f"{ds.attrs['signal']} at 1 s, CT-VAR fitted by maximum likelihood ({method} filter)."
    )
    fit = cr.fit_mle(cr.CTVAR(), series.times, series.y, method=method)
    table = Table(title="Directed coupling (standardised drift), estimate vs truth")
    for col in ("parameter", "truth", "estimate", "95% interval"):
        table.add_column(col, justify="right")
    rows = fit.table().set_index("parameter")
    for name in ("therapist_to_client", "client_to_therapist", "tau[therapist]", "tau[client]",
                 "shock_corr"):
        base = name.split("[")[0]
        true = np.asarray(truth[base])
        true = true[0 if "therapist]" in name else 1] if true.ndim else true
        r = rows.loc[name]
        table.add_row(escape(name), f"{float(true):.3f}", f"{r.estimate:.3f}",
                      f"[{r.lower_95:.3f}, {r.upper_95:.3f}]")
    console.print(table)
    console.print(f"log-likelihood {fit.log_likelihood:.2f}; converged: {fit.converged}")


if __name__ == "__main__":
    app()
