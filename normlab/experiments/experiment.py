"""What an experiment is: a sweep (its base configuration, grid and default
norms), its analysis of the stored runs (the headline table), its figures, its
written finding and its columns of the report's summary.

Each experiment lives in one module of :mod:`normlab.experiments.suite`, as a
subclass of :class:`Experiment` bound to the module's ``EXPERIMENT``; the
catalog, the command line, ``normlab compare``'s suite and the report's
sections are all read from there. Adding an experiment is adding one file.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import pandas as pd

from normlab.experiments.config import MODEL_FIELDS, ConfigError, RunConfig, Sweep
from normlab.norms import registry

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from normlab.experiments.store import ResultsStore


# The article's parts an experiment can belong to, in reading order.
SECTIONS = {
    "problem": "Why: the problem",
    "why": "Why it helps: what we measured and what the literature says",
    "compare": "The techniques compared",
}


@dataclass(frozen=True)
class Expectation:
    """A published finding and what our numbers say of it."""

    claim: str  # the finding, with its source
    held: bool | None  # None: not decided by these runs (too few seeds, an unresolved difference)
    measured: str  # our numbers
    note: str = ""  # what the verdict rests on, or why it may differ from the paper

    def __post_init__(self) -> None:
        if self.held is not None:  # numpy's bools from comparisons of table cells
            object.__setattr__(self, "held", bool(self.held))


@dataclass(frozen=True)
class Recipe:
    """One line of an anchor's "paper / here / why different" table."""

    aspect: str  # "model", "initialization", "learning rate", ...
    paper: str  # the paper's recipe, with where it says so
    here: str  # ours, read from the stored runs
    why: str = ""  # why ours differs, and what that could do to the result


class Experiment(ABC):
    """One experiment. Subclasses set the class attributes and override the
    analysis methods; every analysis reads a :class:`ResultsStore` only."""

    name: ClassVar[str]
    title: ClassVar[str]  # the report section's heading
    description: ClassVar[str]  # one line: what is swept and measured
    default_norms: ClassVar[tuple[str, ...]]
    base: ClassVar[RunConfig]
    grid: ClassVar[dict[str, tuple]] = {}
    quick: ClassVar[dict[str, Any]] = {}  # overrides that shrink it to a smoke test
    full: ClassVar[dict[str, Any]] = {}  # overrides for `--full`: the published sizes
    full_grid: ClassVar[dict[str, tuple] | None] = None  # `--full`'s grid (None: the grid)
    full_norms: ClassVar[tuple[str, ...] | None] = None  # `--full`'s norms (None: the default)
    seeds: ClassVar[int] = 1  # seeds `normlab compare` runs (its 10-minute budget)
    full_seeds: ClassVar[int] = 3  # seeds `--full` runs: a verdict needs 3 (stats.MIN_SEEDS)
    exclusive: ClassVar[bool] = False  # runs one at a time (timings: nothing beside them)
    in_suite: ClassVar[bool] = True  # part of `normlab compare`
    section: ClassVar[str] = "compare"  # the article's part: see SECTIONS
    order: ClassVar[int] = 100  # position within it

    # ------------------------------------------------------------ planning

    def sweep(
        self,
        norms: tuple[str, ...] | list[str] | None = None,
        seeds: int | None = None,
        quick: bool = False,
        overrides: dict[str, Any] | None = None,
        full: bool = False,
    ) -> Sweep:
        """The sweep: the grid crossed with ``norms`` and ``seeds`` seeds (default: the
        experiment's own count); ``quick`` shrinks it to a smoke test, ``full`` runs
        the published sizes.

        ``overrides`` set run fields; one that the experiment sweeps over narrows
        the sweep to that value. Norm names are canonicalized and deduplicated.
        Every configuration is validated, and checked by :meth:`check`."""
        overrides = dict(overrides or {})
        if "seed" in overrides:
            raise ConfigError("seed: the sweep sets seeds; use --seeds N for seeds 0..N-1")
        if "norm" in overrides and norms:
            raise ConfigError("norm: given twice (--norms and --set norm=); use --norms")
        if quick and full:
            raise ConfigError("quick and full: choose one")
        if seeds is None:
            seeds = 1 if quick else max(self.seeds, self.full_seeds) if full else self.seeds
        if not isinstance(seeds, int) or seeds < 1:
            raise ConfigError(f"seeds must be a positive integer, got {seeds!r}")
        names = canonical_norms(norms or (full and self.full_norms) or self.default_norms)
        grid = {"norm": names, **((full and self.full_grid) or self.grid)}
        if quick:
            grid = {k: v if k == "norm" else v[:2] for k, v in grid.items()}
        base_changes = dict(self.quick if quick else self.full if full else {})
        if "steps" in overrides and "epochs" not in overrides:
            base_changes["epochs"] = None  # a step count asked for replaces the epochs
        for field, value in overrides.items():
            if field in grid:
                grid[field] = canonical_norms([value]) if field == "norm" else (value,)
            else:
                base_changes[field] = value
        size = "quick" if quick else "full" if full else "default"
        sweep = Sweep(self.base.replace(**base_changes), grid, tuple(range(seeds)), self.keep, size)
        ignored = [f for f in grid if f in MODEL_FIELDS]
        if ":" in sweep.base.model and ignored:
            raise ConfigError(
                f"{self.name} sweeps {', '.join(ignored)}, which your model builder "
                f"{sweep.base.model!r} does not receive; it would train the same model "
                "at every value (experiments that fit your model sweep the norm, batch size, "
                "learning rate or training length)"
            )
        for config in sweep.configs():
            self.check(config)
        return sweep

    def check(self, config: RunConfig) -> None:  # noqa: B027 (optional hook: accepts all)
        """Refuse (ConfigError) a configuration this experiment's analysis cannot use."""

    def keep(self, config: RunConfig) -> bool:
        """Whether the sweep runs this combination of the grid (default: all)."""
        return True

    def requires(self, condition: bool, reason: str) -> None:
        """Raise ConfigError ``'<experiment>: reason'`` unless ``condition``."""
        if not condition:
            raise ConfigError(f"{self.name}: {reason}")

    # ------------------------------------------------------------ analysis

    @abstractmethod
    def headline(self, store: ResultsStore) -> pd.DataFrame:
        """The numbers that matter, one row per norm (and swept value)."""

    @abstractmethod
    def lead(self, runs: pd.DataFrame) -> str:
        """The section's lead paragraph: the question, and what ran, every number read
        from ``runs`` (the store's summaries: each run's config and summary fields)."""

    def recipe(self, runs: pd.DataFrame) -> list[Recipe]:
        """The published recipe beside ours (anchors only; "here" read from ``runs``)."""
        return []

    def figures(self, store: ResultsStore, headline: pd.DataFrame) -> list[tuple[Figure, str]]:
        """(figure, caption) pairs for the report."""
        return []

    def finding(self, headline: pd.DataFrame) -> str:
        """What the numbers say, in sentences computed from them."""
        return ""

    def expectations(self, headline: pd.DataFrame) -> list[Expectation]:
        """The published findings this experiment tests, each with whether our numbers
        show it and the numbers."""
        return []

    def summary(self, store: ResultsStore, headline: pd.DataFrame) -> pd.DataFrame:
        """This experiment's columns of the report's per-technique summary: a frame
        with a ``norm`` column, value columns and a ``remark`` column ("" for none)."""
        return pd.DataFrame(columns=["norm", "remark"])

    def __repr__(self) -> str:
        return f"<experiment {self.name}>"


def canonical_norms(names) -> tuple[str, ...]:
    """Registry spellings of ``names``, duplicates dropped, order kept."""
    out = []
    for name in names:
        try:
            out.append(registry.canonical(str(name)))
        except KeyError as e:
            raise ConfigError(f"norm: {e.args[0]}") from None
    return tuple(dict.fromkeys(out))


# Batch Renorm's paper schedule (5k/40k/25k steps) would never leave warm-up in the
# lab's runs of hundreds of steps: relax r_max and d_max over the first 200 steps.
BATCH_RENORM_SHORT = (
    ("batchrenorm:warmup_steps", 50),
    ("batchrenorm:r_max_steps", 200),
    ("batchrenorm:d_max_steps", 200),
)

# The lab's CNN, which several experiments share: three conv-norm-ReLU stages.
LAB_CNN = RunConfig(
    model="cnn",
    activation="relu",
    init="kaiming",
    channels=(16, 32, 64),
    optimizer="momentum",
    lr=0.1,
    monitor=False,
    eval_every=None,
    norm_kwargs=BATCH_RENORM_SHORT,
)

# The techniques whose statistics are defined on an MLP's (N, features) activations
# (not FRN, InstanceNorm, EvoNorm-B0 or Switchable Norm, which need spatial axes).
FEATURE_TECHNIQUES = (
    "none",
    "batchnorm",
    "layernorm",
    "groupnorm",
    "rmsnorm",
    "batchrenorm",
    "ghostbatchnorm",
    "evonorm_s0",
    "scalenorm",
    "dyt",
    "derf",
    "rmsnorm_lm",
)
