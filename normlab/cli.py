"""The ``normlab`` command."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
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


def technique_rows(costs: dict[str, float] | None = None) -> list[dict[str, str]]:
    """The registry as rows of text, with a cost column when ``costs`` (technique ->
    fwd+bwd time relative to BatchNorm2d, from benchmarks/cpu_norms.py) is given."""
    rows = []
    for name in available():
        s = spec(name)
        row = {
            "name": name,
            "class": s.cls.__name__,
            "formula": s.formula,
            "(N, C, H, W) over": s.axes,
            "(N, F) over": s.axes_features,
            "batch-dep.": "yes" if s.batch_dependent else "no",
            "train≠eval": "yes" if s.train_eval_differ else "no",
            "parameters": ", ".join(s.parameters) or "-",
        }
        if costs is not None:
            row["cost (x BN)"] = f"{costs[name]:.2f}" if name in costs else "-"
        row["paper"] = s.paper
        rows.append(row)
    return rows


def technique_markdown(costs: dict[str, float] | None = None) -> str:
    """The technique table as Markdown (what docs/techniques.md holds)."""
    rows = technique_rows(costs)
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(r.values()) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def read_costs(path: Path) -> dict[str, float]:
    """technique -> cost relative to BatchNorm2d, from a benchmarks/cpu_norms.py JSON file."""
    try:
        rows = json.loads(path.read_text())["rows"]
        return {r["technique"]: r["cost_vs_batchnorm"] for r in rows}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise typer.BadParameter(f"cannot read costs from {path}: {e}") from e


@app.command("list")
def list_techniques(
    markdown: Annotated[bool, typer.Option(help="print a Markdown table instead")] = False,
    costs: Annotated[
        Path | None,
        typer.Option(help="JSON from benchmarks/cpu_norms.py: adds a cost column"),
    ] = None,
) -> None:
    """Table of the techniques: formula, axes of the statistics, parameters, paper."""
    cost_map = read_costs(costs) if costs is not None else None
    if markdown:
        typer.echo(technique_markdown(cost_map), nl=False)
        return
    rows = technique_rows(cost_map)
    for row in rows:  # formulas and titles are in `--markdown` (docs/techniques.md)
        del row["formula"]
        row["paper"] = re.sub(r"^(.*?\d{4}).*", r"\1", row["paper"])
    table = Table(title="normlab techniques: the axes one statistic is taken over")
    min_width = {"parameters": 18, "paper": 24, "(N, C, H, W) over": 12, "(N, F) over": 10}
    for column in rows[0]:
        table.add_column(column, min_width=min_width.get(column), no_wrap=column not in min_width)
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


def _sweep_progress(description_width: int | None = None):
    """The progress bar of a sweep: what finished last, bar, runs done, ETA."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    width = f":<{description_width}" if description_width else ""
    return Progress(
        TextColumn("{task.description" + width + "}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
    )


EXECUTORS = ("local", "ray")


def _executor(name: str, jobs: int, address: str | None):
    """The sweep executor the options ask for."""
    from normlab import experiments

    if name not in EXECUTORS:
        raise typer.BadParameter(
            f"unknown executor {name!r}; choose {' or '.join(EXECUTORS)}", param_hint="--executor"
        )
    if name == "local":
        if address is not None:
            raise typer.BadParameter("--address needs --executor ray", param_hint="--address")
        return experiments.LocalExecutor(jobs or None)
    if jobs:
        raise typer.BadParameter(
            "--jobs is for --executor local; Ray runs as many at once as the cluster has CPUs",
            param_hint="--jobs",
        )
    return experiments.RayExecutor(address)


_EXECUTOR_HELP = "local (worker processes here) or ray (a Ray cluster; pip install 'normlab[ray]')"
_ADDRESS_HELP = (
    "Ray cluster address: auto (the cluster this machine is in), ray://HEAD:10001 "
    "(Ray Client); default: $RAY_ADDRESS, else a new local Ray instance"
)


def _parse_overrides(items: list[str]) -> dict:
    """``field=value`` strings as a dict; values read as Python literals when they parse."""
    import ast

    from normlab.experiments.config import RUN_FIELDS, ConfigError

    overrides = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or name not in RUN_FIELDS:
            raise ConfigError(
                f"--set {item!r}: expected FIELD=VALUE with FIELD one of {', '.join(RUN_FIELDS)}"
            )
        try:
            overrides[name] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            overrides[name] = text
    return overrides


@app.command("run")
def run_experiment(
    experiment: Annotated[
        str, typer.Argument(help="ics, batch-size, lr, init, depth, cost, train-eval")
    ],
    norms: Annotated[
        list[str] | None,
        typer.Option("--norms", help="norm names (repeatable; default: the experiment's)"),
    ] = None,
    dataset: Annotated[
        str | None, typer.Option(help="data set (default: the experiment's)")
    ] = None,
    seeds: Annotated[int, typer.Option(min=1, help="seeds per configuration")] = 1,
    jobs: Annotated[int, typer.Option(min=0, help="worker processes (0: one per core)")] = 0,
    executor: Annotated[str, typer.Option(help=_EXECUTOR_HELP)] = "local",
    address: Annotated[str | None, typer.Option(help=_ADDRESS_HELP)] = None,
    out: Annotated[Path, typer.Option(help="results directory")] = Path("normlab-results"),
    quick: Annotated[bool, typer.Option(help="tiny sizes: a smoke test")] = False,
    nproc: Annotated[
        int, typer.Option(min=0, help="data-parallel processes per run (0: the experiment's)")
    ] = 0,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="override a run field, e.g. --set steps=500 (repeatable)"),
    ] = None,
) -> None:
    """Run an experiment's sweep (resuming a finished part) and print its headline table."""
    from normlab import experiments
    from normlab.experiments.config import ConfigError

    try:
        exp = experiments.get(experiment)
        overrides = {"dataset": dataset} if dataset else {}
        if nproc:
            overrides["nproc"] = nproc
        overrides.update(_parse_overrides(set_ or []))
        sweep = exp.sweep(tuple(norms) if norms else None, seeds, quick, **overrides)
        configs = sweep.configs()
    except (KeyError, ConfigError, TypeError) as e:
        raise typer.BadParameter(str(e.args[0] if isinstance(e, KeyError) else e)) from e
    pool = _executor(executor, jobs, address)
    root = out / experiment
    store = experiments.ResultsStore(root)
    todo = sum(not store.has(c) for c in configs)
    console.print(
        f"[bold]{experiment}[/bold]: {len(configs)} runs, {len(configs) - todo} already done, "
        f"results in {root}"
    )
    with _sweep_progress() as progress:
        task = progress.add_task("runs", total=todo)

        def advance(config, summary) -> None:
            progress.update(task, advance=1, description=f"{config.norm} done")

        experiments.run_sweep(sweep, root, pool, advance)
    headline = exp.headline(store)
    table = Table(title=f"{experiment}: {exp.description}")
    for column in headline.columns:
        table.add_column(
            str(column), justify="left" if headline[column].dtype == object else "right"
        )
    for row in headline.itertuples(index=False):
        table.add_row(*(f"{v:.3g}" if isinstance(v, float) else str(v) for v in row))
    console.print(table)
    headline.to_csv(root / "headline.csv", index=False)
    console.print(f"headline written to {root / 'headline.csv'}")


SUITE = ("ics", "batch-size", "lr", "init", "depth", "cost")


@app.command("compare")
def compare(
    out: Annotated[Path, typer.Option(help="report directory (results in OUT/results)")] = Path(
        "normlab-report"
    ),
    quick: Annotated[bool, typer.Option(help="CI-sized: every experiment tiny")] = False,
    norms: Annotated[
        list[str] | None,
        typer.Option("--norms", help="norms (repeatable; default: each experiment's)"),
    ] = None,
    dataset: Annotated[str | None, typer.Option(help="data set (default: mnist)")] = None,
    seeds: Annotated[int, typer.Option(min=1, help="seeds per configuration")] = 1,
    jobs: Annotated[int, typer.Option(min=0, help="worker processes (0: one per core)")] = 0,
    executor: Annotated[str, typer.Option(help=_EXECUTOR_HELP)] = "local",
    address: Annotated[str | None, typer.Option(help=_ADDRESS_HELP)] = None,
    experiments_: Annotated[
        list[str] | None,
        typer.Option("--experiments", help=f"experiments to run (default: {', '.join(SUITE)})"),
    ] = None,
) -> None:
    """Train and measure the techniques on the embedded MNIST and write an HTML report.

    Runs the suite (resuming whatever an earlier, interrupted run finished),
    then writes OUT/index.html with the pictures embedded, and the tables as CSV.
    """
    import time

    from normlab import experiments
    from normlab.experiments.config import ConfigError
    from normlab.report import html

    names = list(experiments_ or SUITE)
    root = out / "results"
    try:
        plans = []
        for name in names:
            exp = experiments.get(name)
            overrides = {"dataset": dataset} if dataset else {}
            sweep = exp.sweep(tuple(norms) if norms else None, seeds, quick, **overrides)
            configs = sweep.configs()
            store = experiments.ResultsStore(root / name)
            plans.append((name, sweep, sum(not store.has(c) for c in configs), len(configs)))
    except (KeyError, ConfigError) as e:
        raise typer.BadParameter(str(e.args[0] if isinstance(e, KeyError) else e)) from e
    pool = _executor(executor, jobs, address)
    todo = sum(p[2] for p in plans)
    console.print(
        f"[bold]normlab compare[/bold]: {len(names)} experiments, {sum(p[3] for p in plans)} runs "
        f"({sum(p[3] for p in plans) - todo} already done){' [quick]' if quick else ''}"
    )
    start = time.perf_counter()
    with _sweep_progress(description_width=28) as progress:
        task = progress.add_task("starting", total=todo)
        for name, sweep, _, _ in plans:

            def advance(config, summary, name=name) -> None:
                progress.update(task, advance=1, description=f"{name}: {config.norm}")

            progress.update(task, description=f"{name}")
            experiments.run_sweep(sweep, root / name, pool, advance)
    with console.status("writing the report..."):
        path = html.build(root, out)
    summary = Table(title="summary (from the runs; details in the report)")
    import pandas as pd

    frame = pd.read_csv(out / "summary.csv")
    for column in frame.columns:
        summary.add_column(str(column), overflow="fold")
    for row in frame.itertuples(index=False):
        summary.add_row(
            *("—" if pd.isna(v) else f"{v:.3g}" if isinstance(v, float) else str(v) for v in row)
        )
    console.print(summary)
    console.print(f"report: {path}  ({time.perf_counter() - start:.0f} s)")


@app.command("report")
def report(
    results: Annotated[
        Path, typer.Argument(help="results directory (a compare run's OUT/results)")
    ],
    out: Annotated[
        Path | None, typer.Option(help="report directory (default: results' parent)")
    ] = None,
) -> None:
    """Rebuild the HTML report from stored results, without training."""
    from normlab.report import html

    if not results.is_dir():
        raise typer.BadParameter(f"results directory {results} does not exist")
    path = html.build(results, out or results.parent)
    console.print(f"report: {path}")


viz = typer.Typer(help="Pictures on their own.", no_args_is_help=True)
app.add_typer(viz, name="viz")


@viz.command("axes")
def viz_axes(
    out: Annotated[Path, typer.Option(help="image file (.png, .svg, .pdf)")] = Path("axes.png"),
    norms: Annotated[
        list[str] | None, typer.Option("--norms", help="techniques (default: all)")
    ] = None,
    features: Annotated[bool, typer.Option(help="draw the (N, features) form")] = False,
) -> None:
    """Draw what each technique normalizes over (the GroupNorm paper's Figure 2)."""
    from normlab.report import axes

    names = [spec(n).name for n in norms] if norms else [n for n in available() if n != "none"]
    fig = axes.figure(names, features=features)
    fig.savefig(out, dpi=100)
    console.print(f"wrote {out}")


@viz.command("drift")
def viz_drift(
    results: Annotated[Path, typer.Argument(help="an ics results directory (with runs/)")],
    out: Annotated[Path, typer.Option(help="GIF file")] = Path("drift.gif"),
    frames: Annotated[int, typer.Option(min=2, help="frames in the animation")] = 30,
) -> None:
    """Animate each norm's last-layer sigmoid-input distribution over training."""
    from normlab.report import animation

    animation.drift_gif(results, out, frames)
    console.print(f"wrote {out}")
