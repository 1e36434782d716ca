"""A model's dataflow as a ``torch.fx`` graph, with chosen module classes kept as
single calls: what fold_batchnorm and convert read to find which module's output
feeds which (as torch's own fusers do)."""

from __future__ import annotations

import torch
from torch import nn


class _Tracer(torch.fx.Tracer):
    def __init__(self, leaves: tuple[type[nn.Module], ...]) -> None:
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return isinstance(module, self.leaves) or super().is_leaf_module(module, qualified_name)


def trace(model: nn.Module, leaves: tuple[type[nn.Module], ...]) -> torch.fx.Graph:
    """The symbolic trace of ``model``'s forward, instances of ``leaves`` (and torch.nn's
    own modules) as single ``call_module`` nodes. Raises whatever tracing raises
    (data-dependent control flow, say)."""
    return _Tracer(leaves).trace(model)


def untraceable(error: Exception) -> str:
    """Why a model could not be traced, in one line."""
    first = str(error).splitlines()[0] if str(error) else ""
    return f"the model could not be traced ({type(error).__name__}: {first})"


def input_node(node: torch.fx.Node):
    """The node a call's first input comes from (positional, or ``input=``)."""
    return node.args[0] if node.args else node.kwargs.get("input")
