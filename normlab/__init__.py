"""normlab: activation normalization for PyTorch.

Every layer is a drop-in for its ``torch.nn`` twin (same arguments, defaults,
state_dict keys and behaviour) and runs through :mod:`normlab.functional`,
whose backend :func:`use_backend` switches. :mod:`normlab.numpy_ref` holds the
NumPy forward and hand-derived backward.
"""

from normlab.functional import NormInputError, get_backend, use_backend
from normlab.norms import (
    BatchNorm1d,
    BatchNorm2d,
    BatchNorm3d,
    GroupNorm,
    InstanceNorm1d,
    InstanceNorm2d,
    InstanceNorm3d,
    LayerNorm,
    LocalResponseNorm,
    NormSpec,
    RMSNorm,
    available,
    get_spec,
)

__version__ = "0.1.0"

__all__ = [
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "GroupNorm",
    "InstanceNorm1d",
    "InstanceNorm2d",
    "InstanceNorm3d",
    "LayerNorm",
    "LocalResponseNorm",
    "NormInputError",
    "NormSpec",
    "RMSNorm",
    "__version__",
    "available",
    "get_backend",
    "get_spec",
    "use_backend",
]
