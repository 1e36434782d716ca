"""One training run, fully described by a validated, hashable configuration."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field, fields

from normlab import data, models
from normlab._names import did_you_mean
from normlab.norms import registry

MODELS = ("mlp", "cnn", "resnet", "transformer")
OPTIMIZERS = ("sgd", "momentum", "adam")


class ConfigError(ValueError):
    """A bad field in an experiment or run configuration."""


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines one training run (its id is a hash of it)."""

    dataset: str = "mnist"
    model: str = "mlp"
    norm: str = "none"
    norm_position: str = "pre"
    activation: str = "sigmoid"
    depth: int = 3
    width: int = 100
    channels: tuple[int, ...] = (16, 32)
    init: str = "small-gaussian"
    init_std: float = 0.1
    init_scale: float = 1.0
    optimizer: str = "sgd"
    lr: float = 0.5
    lr_scaling: bool = False  # lr * batch_size / 32 (the linear scaling rule)
    batch_size: int = 60
    steps: int = 1000
    epochs: int | None = None  # if set, steps = epochs * training examples // batch_size
    eval_every: int = 100
    train_size: int | None = None
    test_size: int | None = None
    seed: int = 0
    monitor: bool = True
    train_mode_eval: bool = False  # also evaluate with batch statistics (train mode)
    probe_every: int = 0  # run the ICS and smoothness probes every k steps (0: never)
    noise: float = 0.0  # "noisy BatchNorm": random per-channel scale and shift after norms
    nproc: int = (
        1  # data-parallel processes (gloo, DistributedDataParallel); batch_size is per process
    )
    watch: tuple[str, ...] = ()  # Monitor modules= patterns; () = the defaults
    norm_kwargs: tuple[tuple[str, object], ...] = ()

    def validate(self) -> RunConfig:
        """Check every field; raise :class:`ConfigError` naming the bad one."""
        _known("dataset", self.dataset, data.available())
        _known("model", self.model, MODELS)
        _known("optimizer", self.optimizer, OPTIMIZERS)
        _known("activation", self.activation, tuple(models.ACTIVATIONS))
        _known("init", self.init, models.INITS)
        _known("norm_position", self.norm_position, models.POSITIONS)
        try:
            registry.spec(self.norm)
        except KeyError as e:
            raise ConfigError(f"norm: {e.args[0]}") from None
        for name in ("depth", "width", "batch_size", "steps", "eval_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.nproc, int) or self.nproc < 1:
            raise ConfigError(f"nproc must be a positive integer, got {self.nproc!r}")
        if self.nproc > 1 and (self.probe_every or self.train_mode_eval):
            raise ConfigError(
                "probe_every and train_mode_eval need nproc=1: they run on one process"
            )
        for name in ("probe_every",):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name} must be a non-negative integer, got {value!r}")
        if not isinstance(self.noise, int | float) or self.noise < 0:
            raise ConfigError(f"noise must be a non-negative number, got {self.noise!r}")
        for name in ("lr", "init_std", "init_scale"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not value > 0:
                raise ConfigError(f"{name} must be a positive number, got {value!r}")
        if self.epochs is not None and (not isinstance(self.epochs, int) or self.epochs < 1):
            raise ConfigError(f"epochs must be a positive integer or None, got {self.epochs!r}")
        if not self.channels or any(not isinstance(c, int) or c < 1 for c in self.channels):
            raise ConfigError(f"channels must be positive integers, got {self.channels!r}")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> RunConfig:
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"unknown run config field(s) {sorted(unknown)}")
        tuples = {"channels", "watch", "norm_kwargs"}
        converted = {
            k: (tuple(tuple(x) if isinstance(x, list) else x for x in v) if k in tuples else v)
            for k, v in values.items()
        }
        return cls(**converted)

    @property
    def effective_lr(self) -> float:
        return self.lr * self.batch_size / 32 if self.lr_scaling else self.lr

    @property
    def run_id(self) -> str:
        """A hash of the full configuration: same config, same id."""
        text = json.dumps(self.to_dict(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _known(field_name: str, value: str, options) -> None:
    if value not in options:
        hint = did_you_mean(value, options, quote=True)
        raise ConfigError(
            f"{field_name}: unknown value {value!r}{hint} (choose from {', '.join(options)})"
        )


RUN_FIELDS = tuple(f.name for f in fields(RunConfig))


@dataclass(frozen=True)
class Sweep:
    """A grid of runs: a base configuration, values for some fields, and seeds."""

    base: RunConfig
    grid: dict[str, tuple] = field(default_factory=dict)
    seeds: tuple[int, ...] = (0,)

    def configs(self) -> list[RunConfig]:
        """Every combination, validated, in a stable order."""
        for name in self.grid:
            if name not in RUN_FIELDS:
                hint = did_you_mean(name, RUN_FIELDS)
                raise ConfigError(f"grid: unknown field {name!r}{hint}")
        combos: list[dict] = [{}]
        for name, values in self.grid.items():
            if not values:
                raise ConfigError(f"grid: no values for {name!r}")
            combos = [{**c, name: v} for c in combos for v in values]
        return [
            dataclasses.replace(self.base, **combo, seed=seed).validate()
            for combo in combos
            for seed in self.seeds
        ]
