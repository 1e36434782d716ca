"""Launch settings shared by the kernels: where they can run, tile sizes, grid sizes.

The kernels run on CUDA tensors, or on CPU tensors when Triton's interpreter
is on (``TRITON_INTERPRET=1`` set before normlab.kernels is imported: how CI
checks them without a GPU).
"""

from __future__ import annotations

import functools
import os

import torch

DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# Largest tile a program holds in registers (elements). Above it a row or a
# group is streamed through in several passes instead.
MAX_TILE = 16384


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for the host's grid arithmetic (``triton.cdiv`` is a constexpr
    function in Triton 3.9, some 5 us a call from Python)."""
    return -(-a // b)


def interpreting() -> bool:
    """True when Triton runs kernels on the CPU (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def unsupported(x: torch.Tensor) -> str | None:
    """Why the kernels cannot take ``x``, or None when they can."""
    if x.dtype not in DTYPES:
        return f"dtype {x.dtype} (kernels take float32, float16, bfloat16)"
    if x.device.type == "cuda":
        return None
    if x.device.type == "cpu" and interpreting():
        return None
    return f"a {x.device.type} tensor (kernels run on CUDA, or on CPU with TRITON_INTERPRET=1)"


@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def max_programs(x: torch.Tensor) -> int:
    """How many persistent programs fill the device: 4 per SM (a few on the interpreter)."""
    if x.device.type != "cuda":
        return 4
    return 4 * _sm_count(x.device.index if x.device.index is not None else 0)


def num_warps(tile: int) -> int:
    """Warps for a tile of ``tile`` elements: about 16 to 64 elements per thread."""
    return max(1, min(16, tile // 512))


def placeholder(x: torch.Tensor) -> torch.Tensor:
    """An empty float32 tensor, returned for an output an op does not compute (ops cannot
    return None), e.g. a gradient nobody asked for."""
    return x.new_empty(0, dtype=torch.float32)


def only_first_differentiable(ctx, output: tuple) -> None:
    """For a setup_context: y (``output[0]``) has a gradient; the statistics returned after
    it get none, and autograd makes no zero gradients up for them."""
    ctx.mark_non_differentiable(*output[1:])
    ctx.set_materialize_grads(False)


def refuse_double_backward(op) -> None:
    """Give the backward custom op ``op`` an autograd that refuses to be differentiated."""

    def backward(ctx, *grads):
        raise RuntimeError(
            f"{op._qualname}: the Triton kernels have no double backward "
            "(differentiate twice on backend='native')"
        )

    op.register_autograd(backward)


def pow2(n: int) -> int:
    """The smallest power of two >= n (>= 1), without ``triton.next_power_of_2``'s
    constexpr-function call (some 5 us from Python in Triton 3.9)."""
    return 1 << (max(1, int(n)) - 1).bit_length()


def dense_like(t: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """``t`` with exactly ``ref``'s strides (a copy only when they differ)."""
    if t.stride() == ref.stride():
        return t
    return torch.empty_like(ref, dtype=t.dtype).copy_(t)


def channel_view(
    x: torch.Tensor,
) -> tuple[torch.Tensor, tuple[int, int, int], tuple[int, int, int]]:
    """``x`` of shape (N, C, *) as a dense (N, C, S) problem: (x, sizes, strides).

    Contiguous tensors give strides (C*S, S, 1); channels_last ones (dense,
    channel stride 1, spatial axes in order) give (S*C, 1, C). Anything else is
    made contiguous first.
    """
    n, c = x.shape[0], x.shape[1]
    s = 1
    for size in x.shape[2:]:
        s *= size
    if x.is_contiguous():
        return x, (n, c, s), (c * s, s, 1)
    if x.dim() > 2 and _channels_last_dense(x):
        return x, (n, c, s), (s * c, 1, c)
    x = x.contiguous()
    return x, (n, c, s), (c * s, s, 1)


def _channels_last_dense(x: torch.Tensor) -> bool:
    shape, stride = x.shape, x.stride()
    c = shape[1]
    expected = c
    for axis in range(x.dim() - 1, 1, -1):
        if shape[axis] != 1 and stride[axis] != expected:
            return False
        expected *= shape[axis]
    return (stride[1] == 1 or c == 1) and (shape[0] == 1 or stride[0] == expected)


# The eager twin of each forward op (register_autograd below): its implementation in
# an autograd.Function, with the op's own setup_context and backward.
_EAGER: dict = {}


def register_autograd(op, backward, setup_context) -> None:
    """``op.register_autograd(backward, setup_context=...)``, and the same pair as a
    plain ``torch.autograd.Function`` around the op's implementation, for :func:`run`."""
    op.register_autograd(backward, setup_context=setup_context)
    implementation = op._init_fn

    def forward(ctx, *inputs):  # ctx first, no setup_context: Function.apply binds no
        output = implementation(*inputs)  # signature (inspect.signature costs ~10 us)
        setup_context(ctx, inputs, output)
        return output

    def jvp(ctx, *tangents):
        raise RuntimeError(
            f"{op._qualname}: the Triton kernels have no forward-mode AD (use backend='native')"
        )

    _EAGER[op] = type(
        op._qualname,  # what profiles name it, as they name the op
        (torch.autograd.Function,),
        {"forward": staticmethod(forward), "backward": staticmethod(backward),
         "jvp": staticmethod(jvp)},
    )  # fmt: skip


def run(op, *args):
    """``op(*args)``: a kernel's custom op (forward or backward), called the cheap way
    where nothing needs the op itself.

    A ``torch.library.custom_op`` call crosses the dispatcher in and out of Python
    (with grad, through an autograd wrapper too): some 40 us of host time per call,
    against some 10 for an ``autograd.Function`` (``benchmarks/kernel_host_overhead.py``).
    So in plain eager code the op's implementation runs directly, inside the twin
    ``autograd.Function`` when autograd records. The op itself runs, as before, where
    something must see it or where only it can cope: while compiling or tracing
    (dynamo, ``torch.jit.trace``), under a torch.func transform, a dispatch mode
    (FakeTensorMode, FlopCounterMode, export) or a torch function mode, and for tensor
    subclasses and batched gradients (``is_grads_batched``). Backward ops run directly
    unless the backward is differentiated (``create_graph=True``), where the op's
    refusal of a double backward must be seen.
    """
    if torch.compiler.is_compiling():  # first: dynamo folds it and reads no further
        return op(*args)
    if (
        torch._C._functorch.peek_interpreter_stack() is not None
        or torch._C._len_torch_dispatch_stack()
        or torch._C._is_torch_function_mode_enabled()
        or torch._C._get_tracing_state() is not None
        or any(
            type(a) not in _PLAIN or torch._C._functorch.is_legacy_batchedtensor(a)
            for a in args
            if isinstance(a, torch.Tensor)
        )
    ):
        return op(*args)
    if not torch.is_grad_enabled():
        return op._init_fn(*args)
    eager = _EAGER.get(op)
    return op(*args) if eager is None else eager.apply(*args)


_PLAIN = (torch.Tensor, torch.nn.Parameter)
