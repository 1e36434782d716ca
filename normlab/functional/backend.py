"""Which implementation a functional call runs: the backend switch.

``backend=None`` (auto) takes the default set by :func:`use_backend`, else
``"triton"`` for CUDA tensors where a kernel exists (:mod:`normlab.kernels`),
else ``"native"`` (torch.nn.functional). ``"reference"`` is the formula in
composed torch ops (see :mod:`normlab.functional.reference`). All backends
compute the same function.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib.util
from collections.abc import Iterator

BACKENDS: tuple[str, ...] = ("native", "reference", "triton")

_default: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "normlab_backend", default=None
)


def _validate(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)} or None")
    return name


def get_backend() -> str | None:
    """The default set by the innermost :func:`use_backend`, or None (auto)."""
    return _default.get()


@contextlib.contextmanager
def use_backend(name: str | None) -> Iterator[None]:
    """Run the enclosed normlab calls on backend ``name`` unless a call names its own.

    >>> with normlab.use_backend("reference"):
    ...     y = normlab.LayerNorm(8)(x)   # composed-ops reference implementation
    """
    token = _default.set(None if name is None else _validate(name))
    try:
        yield
    finally:
        _default.reset(token)


def resolve(backend: str | None) -> str | None:
    """The backend a call with ``backend=`` names, or None when it is left to the input."""
    if backend is not None:
        return _validate(backend)
    return _default.get()


@functools.cache
def triton_installed() -> bool:
    """Whether the ``triton`` package can be imported (``pip install 'normlab[triton]'``)."""
    return importlib.util.find_spec("triton") is not None
