"""The ``normlab`` command."""

from __future__ import annotations

import sys
from typing import Annotated

import torch
import typer
from rich.console import Console
from rich.table import Table

from normlab.norms.registry import available, spec
from normlab.parity import run_parity

app = typer.Typer(
    help="normlab: activation normalization for PyTorch — the techniques, and why they help.",
    no_args_is_help=True,
    add_completion=False,
)
# Wide enough for the tables when the output is piped (Rich assumes 80 columns).
console = Console(width=None if sys.stdout.isatty() else 140)

_DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}


def technique_rows() -> list[dict[str, str]]:
    """The registry as rows of text: what ``normlab list`` prints and docs/techniques.md holds."""
    rows = []
    for name in available():
        s = spec(name)
        rows.append(
            {
                "name": name,
                "class": s.cls.__name__,
                "(N, C, H, W) over": s.axes,
                "(N, F) over": s.axes_features,
                "batch-dependent": "yes" if s.batch_dependent else "no",
                "train != eval": "yes" if s.train_eval_differ else "no",
                "parameters": ", ".join(s.parameters) or "-",
                "paper": s.paper,
            }
        )
    return rows


@app.command("list")
def list_techniques() -> None:
    """Table of the techniques: what each normalizes over, and where it comes from."""
    rows = technique_rows()
    table = Table(title="normlab techniques: the axes one statistic is taken over")
    for column in rows[0]:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*row.values())
    console.print(table)


@app.command("check")
def check(
    dtype: Annotated[
        list[str] | None,
        typer.Option(
            help=f"dtype to check, repeatable: {', '.join(_DTYPES)} [default: float32, float64]"
        ),
    ] = None,
) -> None:
    """Check every layer against its torch.nn twin on every backend (train steps, then eval)."""
    dtype = dtype or ["float32", "float64"]
    unknown = [d for d in dtype if d not in _DTYPES]
    if unknown:
        raise typer.BadParameter(f"unknown dtype {unknown[0]!r}; choose from {', '.join(_DTYPES)}")
    with console.status("training normlab and torch.nn layers side by side..."):
        results = run_parity(dtypes=tuple(_DTYPES[d] for d in dtype))
    table = Table(title="parity with torch.nn: largest relative difference")
    for column in ("layer", "backend", "dtype"):
        table.add_column(column)
    for column in ("output", "grad input", "grad params", "buffers"):
        table.add_column(column, justify="right")
    table.add_column("ok")
    for r in results:
        table.add_row(
            r.label,
            r.backend,
            str(r.dtype).removeprefix("torch."),
            *(f"{v:.1e}" for v in (r.output, r.grad_input, r.grad_params, r.buffers)),
            "[green]yes[/green]" if r.ok else f"[red]no (tol {r.tolerance:.0e})[/red]",
        )
    console.print(table)
    failed = [r for r in results if not r.ok]
    if failed:
        console.print(f"[red]{len(failed)} of {len(results)} checks exceed their tolerance[/red]")
        raise typer.Exit(1)
    console.print(f"[green]all {len(results)} checks within tolerance[/green]")
