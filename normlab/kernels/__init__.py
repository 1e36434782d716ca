"""Fused Triton kernels for the normalizations that dominate GPU time.

``layer_norm``, ``rms_norm``, ``group_norm`` and ``batch_norm`` take
torch.nn.functional's arguments; each file (``layer.py``, ``group.py``,
``batch.py``) holds a kernel set beside the ``torch.library`` custom ops
(``torch.ops.normlab.*``) that ``torch.compile`` sees as single ops.
Statistics and accumulation run in float32 whatever the input dtype; mean and
rstd are saved in float32. :func:`unsupported` says why an input is not
covered; :mod:`normlab.functional` then falls back to the native backend.
"""

from __future__ import annotations

import torch

from normlab.functional.backend import KERNEL_OPS as OPS
from normlab.kernels import _launch
from normlab.kernels.batch import batch_norm
from normlab.kernels.group import fits, group_norm
from normlab.kernels.layer import layer_norm, rms_norm
from normlab.kernels.modulated import modulated_layer_norm, modulated_rms_norm, row_fits
from normlab.kernels.residual import add_layer_norm, add_norm_unsupported, add_rms_norm

__all__ = ["OPS", "batch_norm", "group_norm", "layer_norm", "rms_norm", "unsupported"]
__all__ += ["add_layer_norm", "add_rms_norm"]
__all__ += ["modulated_layer_norm", "modulated_rms_norm"]


def unsupported(op: str, call: tuple) -> str | None:
    """Why the kernel for ``op`` cannot take this call, or None when it can.

    ``call`` is the functional call's arguments, input first.
    """
    if op not in OPS:
        return "no Triton kernel for this technique"
    input: torch.Tensor = call[0]
    args = call[1:]
    reason = _launch.unsupported(input)
    if reason is not None:
        return reason
    if input.numel() == 0:
        return "an empty input"
    if op == "group_norm" and not fits(input.shape[1], args[0]):
        return f"groups of {input.shape[1] // args[0]} channels (more than a tile holds)"
    if op == "batch_norm" and isinstance(args[5], torch.Tensor):
        return "a tensor momentum (momentum=None's running average)"
    if op == "batch_norm" and not args[4] and (args[0] is None or args[1] is None):
        return "eval without running statistics"
    if op in ("add_layer_norm", "add_rms_norm"):
        return add_norm_unsupported(args[0], args[1])
    if op.startswith("modulated_") and not row_fits(input.shape[-1]):
        return f"rows of {input.shape[-1]} features (more than a tile holds)"
    return None
