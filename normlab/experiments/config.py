"""One training run, fully described by a frozen, validated configuration.

:class:`RunConfig` is a pydantic model: every field is typed and checked when a
configuration is made (in code, from ``--set field=value`` on the command
line, or read back from a results store), and a bad value is refused with the
field's name and the reason, before anything trains. Its :attr:`~RunConfig.run_id`
is a hash of every field, so the same configuration is the same run.

``model`` and ``dataset`` also take ``"package.module:attribute"``: a user's
model builder or data loader (see :mod:`normlab.experiments.plugins`).
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from normlab import data
from normlab._names import did_you_mean
from normlab.norms import registry

MODELS = ("mlp", "cnn", "resnet", "transformer")
# The choices the model builders (normlab.models) accept; a test holds them equal.
Activation = Literal["sigmoid", "tanh", "relu", "gelu", "silu", "leaky_relu"]
Init = Literal["small-gaussian", "kaiming", "xavier", "default"]
NormPosition = Literal["pre", "post", "peri", "sandwich", "deepnorm", "lns"]
# Placements only the transformer has (mlp and cnn take pre or post).
TRANSFORMER_ONLY_POSITIONS = ("peri", "sandwich", "deepnorm", "lns")
Optimizer = Literal["sgd", "momentum", "adam"]
LRSchedule = Literal["constant", "step", "cosine"]
EvalSchedule = Literal["every", "log", "tail"]

# Fields only normlab's own builders read: a user's builder (model="pkg.mod:fn") gets
# the norm factory, the input shape and the class count, not these.
MODEL_FIELDS = (
    "depth",
    "width",
    "channels",
    "activation",
    "init",
    "init_std",
    "init_scale",
    "norm_position",
    "qk_norm",
)

PositiveInt = Annotated[int, Field(strict=True, ge=1)]
NonNegativeInt = Annotated[int, Field(strict=True, ge=0)]
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False, strict=True)]
NonNegativeFloat = Annotated[float, Field(ge=0, allow_inf_nan=False, strict=True)]


class ConfigError(ValueError):
    """A bad field in an experiment or run configuration."""


class RunConfig(BaseModel):
    """Everything that determines one training run (its id is a hash of it)."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)

    dataset: str = "mnist"
    model: str = "mlp"
    norm: str = "none"
    norm_position: NormPosition = "pre"
    qk_norm: Annotated[bool, Field(strict=True)] = False  # transformer only: QK-norm
    activation: Activation = "sigmoid"
    depth: PositiveInt = 3
    width: PositiveInt = 100
    channels: tuple[PositiveInt, ...] = Field((16, 32), min_length=1)
    init: Init = "small-gaussian"
    init_std: PositiveFloat = 0.1
    init_scale: PositiveFloat = 1.0
    optimizer: Optimizer = "sgd"
    lr: PositiveFloat = 0.5
    lr_scaling: Annotated[bool, Field(strict=True)] = False  # lr * batch_size / 32
    warmup_steps: NonNegativeInt = 0  # lr rises linearly from lr/warmup_steps over these
    lr_schedule: LRSchedule = "constant"  # after the warm-up (experiments.schedule)
    weight_decay: NonNegativeFloat = 0.0  # on every parameter, the norms' γ and β too
    batch_size: PositiveInt = 60
    steps: PositiveInt = 1000
    epochs: PositiveInt | None = None  # if set, steps = epochs * train examples // batch
    eval_every: PositiveInt | None = 100  # None: evaluate once, at the end
    eval_schedule: EvalSchedule = "every"  # log: also densely early; tail: see schedule
    train_size: PositiveInt | None = None
    test_size: PositiveInt | None = None
    seed: NonNegativeInt = 0
    monitor: Annotated[bool, Field(strict=True)] = True
    train_mode_eval: Annotated[bool, Field(strict=True)] = False  # also eval on batch stats
    probe_every: NonNegativeInt = 0  # ICS and smoothness probes every k steps (0: never)
    noise: NonNegativeFloat = 0.0  # "noisy BatchNorm" (runner.add_noise)
    nproc: PositiveInt = 1  # data-parallel processes (gloo, DDP); batch_size is per process
    watch: tuple[str, ...] = ()  # Monitor modules= patterns; () = the defaults
    norm_kwargs: tuple[tuple[str, Any], ...] = ()
    # a hash of the source files of the model builder and data loader plugins, set from
    # them: an edited plugin makes new runs, not "already done"
    plugin_code: str = ""

    @model_validator(mode="before")
    @classmethod
    def _plugin_code(cls, values: Any) -> Any:
        if isinstance(values, dict) and not values.get("plugin_code"):
            named = [values.get(k) for k in ("model", "dataset")]
            specs = [v for v in named if isinstance(v, str) and ":" in v]
            if specs:
                from normlab.experiments.plugins import source_hash

                values = {**values, "plugin_code": source_hash(specs)}
        return values

    @field_validator("dataset", "model")
    @classmethod
    def _named_or_plugin(cls, value: str, info) -> str:
        """A name normlab knows, or a user's 'package.module:function' that resolves."""
        if ":" in value:
            from normlab.experiments.plugins import resolve

            resolve(value, info.field_name)
            return value
        if info.field_name == "model":
            return _known(value, MODELS)
        return _known(value.strip().lower().replace("_", "-"), data.available())

    @field_validator("norm")
    @classmethod
    def _norm(cls, value: str) -> str:
        try:
            return registry.canonical(value)
        except KeyError as e:
            raise ValueError(e.args[0]) from None

    @field_validator("norm_kwargs")
    @classmethod
    def _norm_kwargs(cls, value: tuple) -> tuple:
        for key, _ in value:
            target, sep, _arg = key.partition(":")
            if sep:
                try:
                    registry.spec(target)
                except KeyError as e:
                    raise ValueError(f"{key!r}: {e.args[0]}") from None
        return value

    @model_validator(mode="after")
    def _together(self) -> RunConfig:
        if self.nproc > 1 and (self.probe_every or self.train_mode_eval):
            raise ValueError(
                "probe_every and train_mode_eval need nproc=1: they run on one process"
            )
        if self.qk_norm and self.model != "transformer":
            raise ValueError(f"qk_norm needs model='transformer', not {self.model!r}")
        if self.norm_position in TRANSFORMER_ONLY_POSITIONS and self.model != "transformer":
            raise ValueError(
                f"norm_position {self.norm_position!r} needs model='transformer', not "
                f"{self.model!r} (other models take 'pre' or 'post')"
            )
        return self

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as e:
            raise ConfigError(_describe(e)) from None

    def replace(self, **changes: Any) -> RunConfig:
        """A copy with ``changes`` applied, validated."""
        return RunConfig(**{**self.model_dump(), **changes})

    def to_dict(self) -> dict:
        return self.model_dump()

    @property
    def effective_lr(self) -> float:
        return self.lr * self.batch_size / 32 if self.lr_scaling else self.lr

    @property
    def run_id(self) -> str:
        """A hash of the full configuration: same config, same id."""
        text = json.dumps(self.to_dict(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


RUN_FIELDS = tuple(RunConfig.model_fields)


def _known(value: str, options) -> str:
    if value not in options:
        hint = did_you_mean(value, options, quote=True)
        raise ValueError(f"unknown value {value!r}{hint} (choose from {', '.join(options)})")
    return value


def _describe(error: ValidationError) -> str:
    """Pydantic's errors as 'field: reason (got value)', one per line."""
    lines = []
    for item in error.errors(include_url=False):
        where = ".".join(str(part) for part in item["loc"]) or "config"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            hint = did_you_mean(str(item["loc"][0]), RUN_FIELDS)
            message = f"unknown run config field{hint}"
        elif item["type"] != "value_error":
            message += f", got {item['input']!r}"
        lines.append(f"{where}: {message}")
    return "; ".join(lines)


def parse_overrides(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``field=value`` strings as a dict, each value read as a Python literal when it
    parses (``steps=500``, ``channels=(8,16)``, ``eval_every=None``), else as text;
    unknown fields are refused here, values by :class:`RunConfig`."""
    overrides: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep or name not in RUN_FIELDS:
            hint = did_you_mean(name, RUN_FIELDS) if sep else ""
            raise ConfigError(
                f"--set {item!r}: expected FIELD=VALUE with FIELD a run field{hint} "
                f"({', '.join(RUN_FIELDS)})"
            )
        try:
            overrides[name] = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            overrides[name] = text.strip()
    return overrides


@dataclass(frozen=True)
class Sweep:
    """A grid of runs: a base configuration, values for some fields, and seeds."""

    base: RunConfig
    grid: dict[str, tuple] = field(default_factory=dict)
    seeds: tuple[int, ...] = (0,)
    keep: Callable[[RunConfig], bool] | None = None  # drops combinations that make no sense
    size: str = "default"  # "quick" (a smoke test), "default" or "full": how big it was run

    def configs(self) -> list[RunConfig]:
        """Every combination, validated, in a stable order, without duplicates."""
        return list(self._configs)

    @functools.cached_property
    def _configs(self) -> tuple[RunConfig, ...]:
        for name in self.grid:
            if name not in RUN_FIELDS:
                hint = did_you_mean(name, RUN_FIELDS)
                raise ConfigError(f"grid: unknown field {name!r}{hint}")
        combos: list[dict] = [{}]
        for name, values in self.grid.items():
            if not values:
                raise ConfigError(f"grid: no values for {name!r}")
            combos = [{**c, name: v} for c in combos for v in values]
        configs = [self.base.replace(**combo, seed=seed) for combo in combos for seed in self.seeds]
        kept = [c for c in configs if self.keep is None or self.keep(c)]
        return tuple({c.run_id: c for c in kept}.values())
