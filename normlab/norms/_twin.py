"""The twins of torch.nn layers: subclasses of the torch.nn class that run
torch's own forward on the native backend.

A twin (``normlab.BatchNorm2d``, ``normlab.LayerNorm``, ...) *is* its torch.nn
class (``isinstance(normlab.BatchNorm2d(4), torch.nn.BatchNorm2d)``) with the
same state, so torch's utilities (``fuse_conv_bn_eval``, quantization fusers,
``convert_sync_batchnorm``) and libraries that test for torch's classes treat
it as theirs. On the native backend its forward is torch's, called directly:
torch validates the input once, in C++, and only when that fails do normlab's
checks run, to raise an error that names the layer. Other backends (Triton on
CUDA, the reference, :func:`normlab.use_backend`) run ``_forward``, which
validates once and dispatches through :mod:`normlab.functional`.
"""

from __future__ import annotations

from torch import Tensor, nn

from normlab.functional import checks
from normlab.functional.backend import runs_torch


class TorchTwin(nn.Module):
    """Mixin placed before the torch.nn class in a twin's bases.

    Subclasses define ``_check_input`` (raise a named error for a bad input)
    and ``_forward`` (validate once and run the chosen backend). Twins whose
    torch forward is one functional call override ``forward`` with that call
    (the same shape as below), which spares a Python frame per call.
    """

    def forward(self, input: Tensor) -> Tensor:
        if runs_torch(input) and self._torch_takes(input):
            try:
                return super().forward(input)
            except (RuntimeError, ValueError):
                self._explain(input)
                raise
        return self._forward(input)

    def _torch_takes(self, input: Tensor) -> bool:
        """Whether torch.nn's forward computes this call as normlab would
        (overridden where a setting or an input needs normlab's own path)."""
        return True

    def _explain(self, input: Tensor) -> None:
        """After torch's forward raised: undo what it changed, and raise the
        failure again as normlab's error naming the layer (if the checks find it)."""
        self._undo_torch_forward(input)
        self._check_input(input)
        floating = [*self.parameters(recurse=False), *self.buffers(recurse=False)]
        checks.check_parameter_dtype(repr(self), input, floating)

    def _undo_torch_forward(self, input: Tensor) -> None:
        """Undo what torch's forward changed before it raised (nothing, by default)."""

    def torch_class(self) -> type[nn.Module]:
        """The torch.nn class this layer twins."""
        return next(
            cls
            for cls in type(self).__mro__
            if cls.__module__.startswith("torch.nn") and cls is not nn.Module
        )

    def __prepare_scriptable__(self) -> nn.Module:
        """For ``torch.jit.script``: the same layer as an instance of its torch.nn
        class, sharing parameters and buffers (TorchScript compiles torch's forward)."""
        cls = self.torch_class()
        twin = cls.__new__(cls)
        twin.__dict__.update(self.__dict__)
        for store in ("_parameters", "_buffers", "_modules"):
            twin.__dict__[store] = dict(self.__dict__[store])
        return twin


def fuser_methods() -> dict[tuple[type[nn.Module], ...], object]:
    """torch's quantization fuser methods, keyed by normlab's twins in place of
    torch's BatchNorm classes: torch's fusers match exact types, so pass this as
    ``fuse_custom_config_dict={"additional_fuser_method_mapping": fuser_methods()}``
    to ``torch.ao.quantization.fuse_modules``."""
    from torch.ao.quantization.fuser_method_mappings import (
        _DEFAULT_OP_LIST_TO_FUSER_METHOD as torch_methods,
    )

    from normlab.norms import batch

    twins = {
        nn.BatchNorm1d: batch.BatchNorm1d,
        nn.BatchNorm2d: batch.BatchNorm2d,
        nn.BatchNorm3d: batch.BatchNorm3d,
    }
    return {
        tuple(twins.get(t, t) for t in types): method
        for types, method in torch_methods.items()
        if any(t in twins for t in types)
    }
