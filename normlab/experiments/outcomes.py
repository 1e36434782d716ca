"""A run's outcome: *trained*, *did not learn* or *diverged*, never conflated,
decided from its training losses and final test accuracy (numpy only: the report
reads these names without loading the training side)."""

from __future__ import annotations

import numpy as np

DIVERGED, DID_NOT_LEARN, TRAINED = "diverged", "did not learn", "trained"
# A finite run diverged when its loss over its last window is this many times its
# loss over its first: a clear growth, which one noisy batch at chance never makes.
GROWTH = 1.5


def loss_window(losses) -> int:
    """The steps averaged at each end of a run's losses: a tenth of them, 1 to 50."""
    return max(1, min(50, len(losses) // 10))


def classify(non_finite: bool, losses, test_acc: float, classes: int) -> str:
    """A run's outcome from its training losses (one per step) and its final test
    accuracy, three never conflated:

    - **diverged**: a loss became non-finite, or the mean loss of the last window
      (:func:`loss_window`) is more than :data:`GROWTH` times the first window's;
    - **did not learn**: otherwise, if test accuracy is still near chance (below
      chance + 10% of the way to perfect: 0.19 for ten classes);
    - **trained**: otherwise.

    A run sitting at chance keeps its loss near log(classes) at both ends, so one
    noisy batch cannot turn it from "did not learn" into "diverged".
    """
    losses = np.asarray(losses, dtype=float)
    if non_finite or len(losses) == 0 or not np.isfinite(losses).all():
        return DIVERGED
    window = loss_window(losses)
    if losses[-window:].mean() > GROWTH * losses[:window].mean():
        return DIVERGED
    chance = 1.0 / classes
    if not test_acc >= chance + 0.1 * (1 - chance):
        return DID_NOT_LEARN
    return TRAINED
