"""When a run changes its learning rate and when it evaluates: pure functions of
the run's configuration and its number of steps (the runner calls them; the
tests hold them against the formulas)."""

from __future__ import annotations

import math

from normlab.experiments.config import RunConfig

# The GroupNorm paper's ImageNet schedule: the learning rate falls 10x at 30, 60 and 90
# of 100 epochs; here at the same fractions of the run.
STEP_MILESTONES = (0.3, 0.6, 0.9)
TAIL = 0.1  # the last tenth of a run: its final accuracy is the median of its evaluations
LOG_PER_DECADE = 10


def learning_rate(config: RunConfig, step: int, steps: int) -> float:
    """The learning rate of (1-based) ``step`` of ``steps``: a linear warm-up from
    lr/warmup_steps over ``warmup_steps``, then ``lr_schedule``: ``constant``;
    ``step`` (x0.1 at each of :data:`STEP_MILESTONES` of the run); ``cosine``
    (half a cosine from lr to 0 over the steps after the warm-up)."""
    lr = config.effective_lr
    warmup = config.warmup_steps
    if warmup and step <= warmup:
        return lr * step / warmup
    if config.lr_schedule == "step":
        passed = sum(step > round(m * steps) for m in STEP_MILESTONES)
        return lr * 0.1**passed
    if config.lr_schedule == "cosine":
        progress = (step - warmup) / max(1, steps - warmup)
        return lr * 0.5 * (1 + math.cos(math.pi * progress))
    return lr


def evaluation_steps(config: RunConfig, steps: int) -> list[int]:
    """The steps after which a run of ``steps`` steps evaluates on the test set:

    - ``every``: every ``eval_every`` steps (never, with None), and the last;
    - ``log``: also about ten times per decade from step 1 until the first regular
      evaluation, so the early phase is seen;
    - ``tail``: half-way, and three times in the last tenth (at 90, 95 and 100%),
      whose median is the run's final accuracy, as the GroupNorm paper reports the
      median of its final 5 of 100 epochs (few evaluations: a whole test set of
      10,000 images takes seconds on a CPU).
    """
    chosen = {steps}
    if config.eval_schedule == "tail":
        chosen |= {max(1, round(steps * f)) for f in (0.5, 1 - TAIL, 1 - TAIL / 2)}
        return sorted(chosen)
    every = config.eval_every
    if every:
        chosen |= set(range(every, steps + 1, every))
    if config.eval_schedule == "log":
        until = min(every or steps, steps)
        k = 0
        while (at := round(10 ** (k / LOG_PER_DECADE))) < until:
            chosen.add(at)
            k += 1
    return sorted(chosen)


def tail_steps(steps: int) -> int:
    """The first step of a run's last tenth (see :data:`TAIL`)."""
    return max(1, math.ceil(steps * (1 - TAIL)))
