"""The ``normlab`` command."""

from __future__ import annotations

import enum
import json
import os
import sys
import time
import warnings
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from normlab.experiments import catalog
from normlab.norms.forms import form, forms
from normlab.norms.registry import available, spec

app = typer.Typer(
    help="normlab: activation normalization for PyTorch — the techniques, and why they help.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,  # help text is shown as written: 'normlab[ray]', [default: ...]
)
# Wide enough for the tables when the output is piped (Rich assumes 80 columns).
console = Console(width=None if sys.stdout.isatty() else 140)
errors = Console(stderr=True, width=None if sys.stderr.isatty() else 140)

Dtype = enum.Enum("Dtype", {n: n for n in ("float32", "float64", "bfloat16")}, type=str)
Executor = enum.Enum("Executor", {"local": "local", "ray": "ray"}, type=str)
ExperimentName = enum.Enum("ExperimentName", {n: n for n in catalog.EXPERIMENTS}, type=str)


_warned: set[str] = set()  # the messages this command has shown


def _warn(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one line each, once per message (warnings.showwarning's signature;
    the "once" filter alone forgets what it showed whenever a library imported
    meanwhile adds a filter, as scipy does)."""
    if str(message) in _warned:
        return
    _warned.add(str(message))
    errors.print(f"normlab: warning: {message}", markup=False, highlight=False, soft_wrap=True)


def _fail(message: str, code: int = 2) -> typer.Exit:
    """Print one error line (no traceback) and return the Exit to raise."""
    errors.print(f"normlab: error: {message}", markup=False, highlight=False, soft_wrap=True)
    return typer.Exit(code)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"normlab {package_version('normlab')}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="print the version"),
    ] = False,
) -> None:
    """normlab: activation normalization for PyTorch — the techniques, and why they help."""
    warnings.showwarning = _warn
    warnings.filterwarnings("once")
    _warned.clear()


# ---------------------------------------------------------------- techniques


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
            "inference stats": s.inference,
            "parameters": ", ".join(s.parameters) or "-",
        }
        if costs is not None:
            row["cost (x BN)"] = f"{costs[name]:.2f}" if name in costs else "-"
        row["paper"] = s.paper
        rows.append(row)
    return rows


def form_rows() -> list[dict[str, str]]:
    """The block-level forms (normlab.norms.forms) as rows of text."""
    return [
        {
            "form": f.name,
            "class": f.cls.__name__,
            "call": f.call,
            "normalizes with": ", ".join(f.techniques),
            "formula": f.formula,
            "paper": f.paper,
        }
        for f in map(form, forms())
    ]


def _markdown(rows: list[dict[str, str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(r.values()) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def technique_markdown(costs: dict[str, float] | None = None) -> str:
    """The technique table, then the forms table, as Markdown (what
    docs/techniques.md holds)."""
    return _markdown(technique_rows(costs)) + "\nBlock-level forms:\n\n" + _markdown(form_rows())


def read_costs(path: Path) -> dict[str, float]:
    """technique -> cost relative to BatchNorm2d, from a benchmarks/cpu_norms.py JSON file."""

    def fail(why: str) -> typer.BadParameter:
        return typer.BadParameter(
            f"cannot read costs from {path}: {why} (expected the JSON benchmarks/cpu_norms.py "
            'writes: {"rows": [{"technique": ..., "cost_vs_batchnorm": ...}, ...]})'
        )

    try:
        data = json.loads(path.read_text())
    except OSError as e:
        raise fail(e.strerror or str(e)) from None
    except ValueError as e:
        raise fail(f"not JSON ({e})") from None
    rows = data.get("rows") if isinstance(data, dict) else None
    if not isinstance(rows, list):
        raise fail('no "rows" list')
    costs = {}
    for i, row in enumerate(rows):
        for key in ("technique", "cost_vs_batchnorm"):
            if not isinstance(row, dict) or key not in row:
                raise fail(f'row {i} lacks "{key}"')
        cost = row["cost_vs_batchnorm"]
        if isinstance(cost, bool) or not isinstance(cost, int | float):
            raise fail(f"row {i}: cost_vs_batchnorm {cost!r} is not a number")
        costs[str(row["technique"])] = float(cost)
    return costs


# What `normlab list` shows without --wide: fits 80 columns (the paper wraps).
NARROW = ("name", "(N, C, H, W) over", "inference stats", "paper")


@app.command("list")
def list_techniques(
    markdown: Annotated[bool, typer.Option(help="print a Markdown table instead")] = False,
    costs: Annotated[
        Path | None,
        typer.Option(help="JSON from benchmarks/cpu_norms.py: adds a cost column"),
    ] = None,
    wide: Annotated[bool, typer.Option(help="every column (needs a wide terminal)")] = False,
) -> None:
    """Table of the techniques: axes of the statistics, where inference statistics come
    from, paper (--wide: class, formula, parameters too)."""
    cost_map = read_costs(costs) if costs is not None else None
    if markdown:
        typer.echo(technique_markdown(cost_map), nl=False)
        return
    rows = technique_rows(cost_map)
    columns = list(rows[0]) if wide else [c for c in rows[0] if c in NARROW or c.startswith("cost")]
    table = Table(title="normlab techniques: the axes one statistic is taken over")
    longest_word = max(len(w) for row in rows for w in row["paper"].split())
    for column in columns:
        narrow = not wide and column in ("paper", "(N, C, H, W) over", "inference stats")
        table.add_column(
            column,
            overflow="fold",
            no_wrap=not narrow,
            min_width=longest_word if column == "paper" else None,
            max_width={"(N, C, H, W) over": 14, "inference stats": 9}.get(column)
            if narrow
            else None,
        )
    for row in rows:
        table.add_row(*(row[c] for c in columns))
    rows_of_forms = form_rows()
    shown = [c for c in rows_of_forms[0] if wide or c != "formula"]
    form_table = Table(title="block-level forms: a technique with more than one input")
    for column in shown:
        form_table.add_column(column, overflow="fold")
    for row in rows_of_forms:  # escaped: rich would read "mods[i]" as markup
        form_table.add_row(*(escape(row[c]) for c in shown))
    # --wide: one line per technique, however wide that is (the terminal may scroll).
    for t in (table, form_table):
        (Console(width=100_000) if wide else console).print(t)


@app.command("check")
def check(
    dtype: Annotated[
        list[Dtype] | None,
        typer.Option(help="dtype to check, repeatable [default: float32, float64]"),
    ] = None,
) -> None:
    """Check every layer against its torch.nn twin on every backend (train steps, then eval)."""
    import torch

    from normlab.parity import run_parity

    names = [d.value for d in dtype] if dtype else ["float32", "float64"]
    with console.status("training normlab and torch.nn layers side by side..."):
        results = run_parity(dtypes=tuple(getattr(torch, n) for n in names))
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


# ---------------------------------------------------------------- the lab

_EXECUTOR_HELP = "local (worker processes here) or ray (a Ray cluster; pip install 'normlab[ray]')"
_ADDRESS_HELP = (
    "Ray cluster address: auto (the cluster this machine is in), ray://HEAD:10001 "
    "(Ray Client); default: $RAY_ADDRESS, else a new local Ray instance"
)
_NORMS_HELP = "norms, comma-separated or repeated (default: the experiment's)"
_MODEL_HELP = "model: mlp, cnn, resnet, transformer, or your builder as package.module:function"
_DATASET_HELP = (
    "data set: a normlab.data name (mnist, fashion-mnist, ...) or your loader as "
    "package.module:function (default: the experiment's)"
)
_SET_HELP = "override a run field, e.g. --set steps=500 (repeatable)"

Norms = Annotated[
    list[str] | None, typer.Option("--norms", help=_NORMS_HELP, metavar="NAME[,NAME...]")
]
Model = Annotated[str | None, typer.Option(help=_MODEL_HELP, metavar="NAME|MODULE:FUNCTION")]
Dataset = Annotated[str | None, typer.Option(help=_DATASET_HELP, metavar="NAME|MODULE:FUNCTION")]
Seeds = Annotated[
    int | None,
    typer.Option(min=1, help="seeds per configuration (default: each experiment's)", metavar="N"),
]
Jobs = Annotated[int, typer.Option(min=0, help="worker processes (0: one per core)", metavar="N")]
ExecutorOption = Annotated[Executor, typer.Option(help=_EXECUTOR_HELP)]
Address = Annotated[str | None, typer.Option(help=_ADDRESS_HELP)]
Sets = Annotated[list[str] | None, typer.Option("--set", help=_SET_HELP, metavar="FIELD=VALUE")]


def _split_norms(norms: list[str] | None) -> list[str] | None:
    """--norms a,b --norms c -> [a, b, c] (canonicalized later, by the sweep)."""
    if norms is None:
        return None
    names = [n.strip() for item in norms for n in item.split(",") if n.strip()]
    if not names:
        raise _fail("--norms: no technique named")
    return names


def _executor(name: Executor, jobs: int, address: str | None):
    """The sweep executor the options ask for."""
    from normlab.experiments.executors import LocalExecutor

    if name is Executor.local:
        if address is not None:
            raise typer.BadParameter("--address needs --executor ray", param_hint="--address")
        return LocalExecutor(jobs or None)
    if jobs:
        raise typer.BadParameter(
            "--jobs is for --executor local; Ray runs as many at once as the cluster has CPUs",
            param_hint="--jobs",
        )
    from normlab.experiments.ray_executor import RayExecutor

    return RayExecutor(address)


def _plan(names, norms, seeds, quick, model, dataset, sets, nproc=0, full=False) -> list:
    """(experiment, sweep) per name; every configuration validated before anything runs."""
    from normlab.experiments.config import ConfigError, parse_overrides

    try:
        overrides = parse_overrides(sets or [])
        for field, value in (("model", model), ("dataset", dataset), ("nproc", nproc or None)):
            if value is not None:
                overrides[field] = value
        plans = []
        for name in dict.fromkeys(names):
            experiment = catalog.get(name)
            plans.append(
                (
                    experiment,
                    experiment.sweep(_split_norms(norms), seeds, quick, overrides, full),
                )
            )
        from normlab.experiments.runner import preflight

        with console.status("checking every setup before training..."):
            preflight([c for _, sweep in plans for c in sweep.configs()])
        return plans
    except (KeyError, ConfigError) as e:
        raise _fail(str(e.args[0] if isinstance(e, KeyError) else e)) from None


class _Progress:
    """A Rich progress bar on a terminal; elsewhere (a log file, a pipe) one plain
    line per finished run: experiment, run, seconds, its final test accuracy."""

    def __init__(self, total: int) -> None:
        self.total, self.done = total, 0
        self.bar = None
        if console.is_terminal:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress(
                TextColumn("{task.description:<28}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=console,
            )
            self.task = self.bar.add_task("starting", total=total)

    def __enter__(self) -> _Progress:
        if self.bar is not None:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def callback(self, experiment, sweep):
        varying = [f for f in sweep.grid if f != "norm"]

        def finished(config, summary) -> None:
            self.done += 1
            if self.bar is not None:
                self.bar.update(
                    self.task, advance=1, description=f"{experiment.name}: {config.norm}"
                )
                return
            fields = " ".join(f"{f}={getattr(config, f)}" for f in varying)
            accuracy = summary.get("final_test_acc", float("nan"))
            print(
                f"[{self.done}/{self.total}] {experiment.name} {config.norm} {fields} "
                f"seed={config.seed}: {summary.get('wall_seconds', float('nan')):.1f} s, "
                f"test acc {accuracy:.3f}",
                flush=True,
            )

        return finished


def _sweep_all(plans, out_root: Path, pool, quick: bool = False) -> None:
    """Run every plan's sweep into out_root/<experiment>, with progress."""
    from normlab.experiments.executors import LocalExecutor
    from normlab.experiments.store import ResultsStore, ResultsStoreError, StoreBusyError
    from normlab.experiments.sweep import run_sweep

    try:
        stores = [ResultsStore(out_root / e.name) for e, _ in plans]
    except ResultsStoreError as e:
        raise _fail(str(e)) from None
    counts = [
        (len(s.configs()), sum(not st.has(c) for c in s.configs()))
        for (_, s), st in zip(plans, stores, strict=True)
    ]
    total, todo = sum(c[0] for c in counts), sum(c[1] for c in counts)
    names = ", ".join(e.name for e, _ in plans)
    console.print(
        f"{names}: {total} runs, {total - todo} already done, results in {out_root}"
        + (" [quick]" if quick else ""),
        markup=False,
    )
    with _Progress(todo) as progress:
        for (experiment, sweep), store in zip(plans, stores, strict=True):
            here = pool
            if experiment.exclusive and isinstance(pool, LocalExecutor):
                here = LocalExecutor(1)  # timings: one run at a time, all cores its own
            try:
                run_sweep(sweep, store.root, here, progress.callback(experiment, sweep))
            except (StoreBusyError, ResultsStoreError) as e:
                raise _fail(str(e), 1) from None
            except Exception as e:  # a run failed while training
                if os.environ.get("NORMLAB_DEBUG"):
                    raise
                raise _fail(
                    f"{experiment.name}: a run failed ({type(e).__name__}: {e}); finished runs "
                    f"are kept in {store.root}; NORMLAB_DEBUG=1 shows the traceback",
                    1,
                ) from None


def _print_frame(frame, title: str) -> None:
    import pandas as pd

    table = Table(title=title)
    for column in frame.columns:
        numeric = pd.api.types.is_numeric_dtype(frame[column])
        table.add_column(str(column), justify="right" if numeric else "left", overflow="fold")
    for row in frame.itertuples(index=False):
        table.add_row(
            *("—" if pd.isna(v) else f"{v:.3g}" if isinstance(v, float) else str(v) for v in row)
        )
    console.print(table)


@app.command("run")
def run_experiment(
    experiment: Annotated[
        ExperimentName, typer.Argument(help="the experiment: " + ", ".join(catalog.EXPERIMENTS))
    ],
    norms: Norms = None,
    model: Model = None,
    dataset: Dataset = None,
    seeds: Seeds = None,
    jobs: Jobs = 0,
    executor: ExecutorOption = Executor.local,
    address: Address = None,
    out: Annotated[Path, typer.Option(help="results directory")] = Path("normlab-results"),
    quick: Annotated[bool, typer.Option(help="tiny sizes: a smoke test")] = False,
    full: Annotated[bool, typer.Option(help="the published sizes (slow)")] = False,
    nproc: Annotated[
        int, typer.Option(min=0, help="data-parallel processes per run (0: the experiment's)")
    ] = 0,
    set_: Sets = None,
) -> None:
    """Run an experiment's sweep (resuming a finished part) and print its headline table.

    An override (--set, --norms, --model, --dataset) of a field the experiment sweeps
    over narrows the sweep to that value."""
    plans = _plan([experiment.value], norms, seeds, quick, model, dataset, set_, nproc, full)
    pool = _executor(executor, jobs, address)
    _sweep_all(plans, out, pool, quick)
    exp = plans[0][0]
    from normlab.experiments import describe
    from normlab.experiments.store import ResultsStore

    store = ResultsStore(out / exp.name)
    headline = exp.headline(store)
    runs = store.summaries()
    trained = f" Trained: {describe.model(runs)}." if not runs.empty else ""
    _print_frame(headline, f"{exp.name}: {exp.description}{trained}")
    headline.to_csv(store.root / "headline.csv", index=False)
    console.print(f"headline written to {store.root / 'headline.csv'}", markup=False)


@app.command("compare")
def compare(
    out: Annotated[Path, typer.Option(help="report directory (results in OUT/results)")] = Path(
        "normlab-report"
    ),
    quick: Annotated[bool, typer.Option(help="CI-sized: every experiment tiny")] = False,
    full: Annotated[
        bool, typer.Option(help="the published sizes (anchors): about 90 minutes on 2 cores")
    ] = False,
    norms: Norms = None,
    model: Model = None,
    dataset: Dataset = None,
    seeds: Seeds = None,
    jobs: Jobs = 0,
    executor: ExecutorOption = Executor.local,
    address: Address = None,
    experiments_: Annotated[
        list[ExperimentName] | None,
        typer.Option(
            "--experiments", help=f"experiments to run (default: {', '.join(catalog.SUITE)})"
        ),
    ] = None,
    set_: Sets = None,
) -> None:
    """Train and measure the techniques on the embedded MNIST and write an HTML report.

    Runs the suite (resuming whatever an earlier, interrupted run finished),
    then writes OUT/index.html with the pictures embedded, and the tables as CSV.
    """
    from normlab.report import html

    names = [e.value for e in experiments_] if experiments_ else list(catalog.SUITE)
    if quick and full:
        raise _fail("--quick and --full: choose one")
    plans = _plan(names, norms, seeds, quick, model, dataset, set_, full=full)
    pool = _executor(executor, jobs, address)
    start = time.perf_counter()
    _sweep_all(plans, out / "results", pool, quick)
    with console.status("writing the report..."):
        path = html.build(out / "results", out)
    import pandas as pd

    _print_frame(pd.read_csv(out / "summary.csv"), "summary (from the runs; details in the report)")
    console.print(f"report: {path}  ({time.perf_counter() - start:.0f} s)", markup=False)


@app.command("report")
def report(
    directory: Annotated[
        Path,
        typer.Argument(
            help="a compare directory (holding results/) or a results directory "
            "(holding one folder per experiment)"
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Option(help="report directory (default: the compare directory, or DIRECTORY/report)"),
    ] = None,
) -> None:
    """Rebuild the HTML report from stored results, without training."""
    from normlab.report import html

    if not directory.is_dir():
        raise _fail(f"{directory} is not a directory")
    results, default_out = html.locate(directory)
    try:
        path = html.build(results, out or default_out)
    except ValueError as e:
        raise _fail(str(e)) from None
    except OSError as e:
        raise _fail(
            f"cannot write the report to {out or default_out}: {e.strerror or e}", 1
        ) from None
    console.print(f"report: {path}", markup=False)


viz = typer.Typer(help="Pictures on their own.", no_args_is_help=True, rich_markup_mode=None)
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

    try:
        names = [spec(n).name for n in _split_norms(norms) or []]
    except KeyError as e:
        raise _fail(e.args[0]) from None
    fig = axes.figure(names or [n for n in available() if n != "none"], features=features)
    try:
        fig.savefig(out, dpi=100)
    except (OSError, ValueError) as e:
        raise _fail(f"cannot write {out}: {e}", 1) from None
    console.print(f"wrote {out}", markup=False)


@viz.command("drift")
def viz_drift(
    results: Annotated[
        Path,
        typer.Argument(
            help="an experiment's results directory (with runs/) whose runs monitored a "
            "sigmoid or tanh input"
        ),
    ],
    out: Annotated[Path, typer.Option(help="GIF file")] = Path("drift.gif"),
    frames: Annotated[int, typer.Option(min=2, help="frames in the animation")] = 30,
) -> None:
    """Animate each norm's last-layer sigmoid-input distribution over training."""
    from normlab.report import animation

    if not (results / "runs").is_dir():
        raise _fail(f"{results} holds no runs/ directory (an experiment's results directory does)")
    try:
        animation.drift_gif(results, out, frames)
    except ValueError as e:
        raise _fail(str(e)) from None
    console.print(f"wrote {out}", markup=False)


_ACTIVATIONS_DIR_HELP = (
    "a run's directory (RESULTS/EXPERIMENT/runs/RUN_ID), or an experiment's results "
    "directory (holding runs/; pick its run with --norm or --run)"
)


def _pick_run(directory: Path, run: str | None, norm: str | None) -> Path:
    """The run directory that DIRECTORY, --run and --norm name (see viz activations)."""
    if not directory.exists():
        raise _fail(f"{directory} does not exist")
    if not directory.is_dir():
        raise _fail(f"{directory} is not a directory")
    if (directory / "config.json").is_file():
        if run is not None or norm is not None:
            raise _fail(
                f"{directory} is one run's directory: --run and --norm pick a run in an "
                "experiment's directory (the one holding runs/)"
            )
        return directory
    if not (directory / "runs").is_dir():
        inside = sorted(p.name for p in directory.iterdir() if (p / "runs").is_dir())
        hint = f" (it holds experiments: {', '.join(inside)})" if inside else ""
        raise _fail(
            f"{directory} is neither a run's directory (with config.json) nor an "
            f"experiment's results directory (with runs/){hint}"
        )
    from normlab.experiments.config import RunConfig
    from normlab.experiments.store import ResultsStore
    from normlab.norms.registry import canonical

    table = ResultsStore(directory).summaries(everything=run is not None)
    if table.empty:
        raise _fail(f"no finished runs in {directory}")
    if run is not None:
        table = table[table.run_id.str.startswith(run.strip().lower())]
        if table.empty:
            raise _fail(f"no run {run} in {directory / 'runs'}")
    if norm is not None:
        try:
            name = canonical(norm)
        except KeyError as e:
            raise _fail(e.args[0]) from None
        norms = sorted(table.norm.unique())
        table = table[table.norm == name]
        if table.empty:
            raise _fail(f"no run of {name} in {directory}; its norms: {', '.join(norms)}")
    fields = [f for f in RunConfig.model_fields if f != "seed" and f in table]
    differing = [f for f in fields if table[f].astype(str).nunique() > 1]
    if differing:
        shown = [
            f"{r.run_id} ({', '.join(f'{f}={r[f]}' for f in differing)}, seed={r.seed})"
            for _, r in table.sort_values([*differing, "seed"]).head(8).iterrows()
        ]
        more = f", ... ({len(table)} in all)" if len(table) > 8 else ""
        raise _fail(
            f"{directory} holds {len(table)} runs that differ in {', '.join(differing)}: "
            f"pick one with --norm or --run: {', '.join(shown)}{more}"
        )
    # Left: one configuration, perhaps several seeds: the lowest seed's run.
    return directory / "runs" / table.sort_values("seed").run_id.iloc[0]


@viz.command("activations")
def viz_activations(
    run_dir: Annotated[Path, typer.Argument(help=_ACTIVATIONS_DIR_HELP)],
    out: Annotated[Path, typer.Option(help="image file (.png, .svg, .pdf)")] = Path(
        "activations.png"
    ),
    norm: Annotated[
        str | None,
        typer.Option(
            help="in an experiment's directory: the run of this norm (lowest seed)",
            metavar="NAME",
        ),
    ] = None,
    run: Annotated[
        str | None,
        typer.Option(
            "--run",
            help="in an experiment's directory: a run id (or its first digits)",
            metavar="ID",
        ),
    ] = None,
    sites: Annotated[
        list[str] | None,
        typer.Option(
            "--sites",
            help="watched sites to draw, comma-separated or repeated (default: all)",
            metavar="NAME[,NAME...]",
        ),
    ] = None,
    bins: Annotated[int, typer.Option(min=2, help="value bins per histogram", metavar="N")] = 40,
) -> None:
    """fastai's "colorful dimension": per watched layer, the histogram of its activations
    at every recorded step, stacked over training (from the run's quantile sketches)."""
    import pandas as pd

    from normlab.monitor import pictures

    run_dir = _pick_run(run_dir, run, norm)
    try:
        config = json.loads((run_dir / "config.json").read_text())
        path = run_dir / "sketches.parquet"
        if not path.is_file():
            reason = (
                "it ran with monitor=False"
                if config.get("monitor") is False
                else f"{path} is missing"
            )
            raise _fail(f"run {run_dir.name} kept no monitor records ({reason})")
        sketches = pd.read_parquet(path)
        monitor = run_dir / "monitor.parquet"
        frame = pd.read_parquet(monitor) if monitor.is_file() else None
    except (OSError, ValueError) as e:
        raise _fail(f"cannot read the run in {run_dir}: {e}") from None
    recorded = pictures.sketch_sites(sketches)
    if not recorded:
        raise _fail(f"run {run_dir.name} recorded no activations (no watched site)")
    chosen = [s.strip() for item in sites or [] for s in item.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in recorded]
    if unknown:
        raise _fail(
            f"no site {', '.join(map(repr, unknown))} in run {run_dir.name}; "
            f"its sites: {', '.join(recorded)}"
        )
    what = sketches.attrs.get("sites") or pictures.describe_sites(frame)  # older runs: a guess
    panels = [(f"{s}: {what[s]}" if s in what else s, sketches, s) for s in chosen or recorded]
    about = ", ".join(
        f"{k}={config[k]}" for k in ("norm", "model", "activation", "seed") if k in config
    )
    fig = pictures.colorful_dimension(
        panels, bins, title=f"Activations over training: {about} (run {run_dir.name})"
    )
    try:
        fig.savefig(out, dpi=110)
    except (OSError, ValueError) as e:
        raise _fail(f"cannot write {out}: {e}", 1) from None
    console.print(f"wrote {out} (run {run_dir.name}: {about})", markup=False)
