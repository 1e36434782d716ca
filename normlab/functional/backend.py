"""Which implementation a functional call runs: the backend switch.

``backend=None`` (auto) takes the default set by :func:`use_backend`, else
``"triton"`` for CUDA tensors where a kernel exists (:mod:`normlab.kernels`),
else ``"native"`` (torch.nn.functional). ``"reference"`` is the formula in
composed torch ops (see :mod:`normlab.functional.reference`). All backends
compute the same function.

The default is a plain module attribute, not a ContextVar: ``torch.compile``
reads it while tracing and guards on it, so a compiled model follows
:func:`use_backend` (recompiling once per backend) without a graph break. Like
torch's own ``torch.backends`` flags it is process-wide, not per thread.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator

BACKENDS: tuple[str, ...] = ("native", "reference", "triton")
# The ops :mod:`normlab.kernels` has Triton kernels for.
KERNEL_OPS: tuple[str, ...] = ("batch_norm", "group_norm", "layer_norm", "rms_norm")
KERNEL_OPS += ("add_layer_norm", "add_rms_norm")  # normlab.kernels.residual
KERNEL_OPS += ("modulated_layer_norm", "modulated_rms_norm")  # normlab.kernels.modulated
# The ones the automatic choice runs on CUDA inputs. BatchNorm's kernel was slower
# than torch's (cuDNN) at every shape measured on an H200 (1.1x to 7x,
# benchmarks/results/gpu_norms-nvidia-h200.json): it runs only when Triton is named.
AUTO_KERNEL_OPS: tuple[str, ...] = tuple(op for op in KERNEL_OPS if op != "batch_norm")

_default: str | None = None  # set by use_backend; None: chosen per input


def _validate(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)} or None")
    return name


def get_backend() -> str | None:
    """The default set by the innermost :func:`use_backend`, or None (auto)."""
    return _default


@contextlib.contextmanager
def use_backend(name: str | None) -> Iterator[None]:
    """Run the enclosed normlab calls on backend ``name`` unless a call names its own.

    >>> with normlab.use_backend("reference"):
    ...     y = normlab.LayerNorm(8)(x)   # composed-ops reference implementation
    """
    global _default
    outer, _default = _default, (None if name is None else _validate(name))
    try:
        yield
    finally:
        _default = outer


def resolve(backend: str | None) -> str | None:
    """The backend a call with ``backend=`` names, or None when it is left to the input."""
    if backend is not None:
        return _validate(backend)
    return _default


_TRITON = importlib.util.find_spec("triton") is not None


def triton_installed() -> bool:
    """Whether the ``triton`` package can be imported (``pip install 'normlab[triton]'``)."""
    return _TRITON


def runs_torch(input) -> bool:
    """Whether a torch.nn twin may run torch's own forward on ``input``: the
    default is ``"native"``, or it is auto and ``input`` is not on CUDA (where
    a Triton kernel may apply, the layer dispatches through
    :mod:`normlab.functional`). Read on every forward, so kept to one
    attribute read and one test."""
    return (_default is None and not input.is_cuda) or _default == "native"
