"""Formula-faithful reference implementations in composed torch ops.

The ``"reference"`` backend, and the oracle for what torch lacks. Each function
follows its paper's formula literally and is differentiated by autograd:

* statistics accumulate in float32 for float16/bfloat16 inputs (float64 stays
  float64), and the result is cast back to the input's dtype;
* variances are biased and two-pass, ``mean((x - mean(x))**2)``, never
  ``E[x^2] - E[x]^2``;
* eps sits inside the square root; running statistics (where kept) are updated
  in place with the *unbiased* variance, as torch.nn does.

Arguments and defaults match ``torch.nn.functional`` where torch has the op.
Input validation lives in :mod:`normlab.functional` (the public entry points).
One file per family, as in :mod:`normlab.norms`.
"""

from normlab.functional.reference.adaptive import modulated_layer_norm, modulated_rms_norm
from normlab.functional.reference.batch import batch_norm, batch_renorm, ghost_batch_norm
from normlab.functional.reference.common import accumulation_dtype
from normlab.functional.reference.group import evonorm_s0, group_norm, instance_norm
from normlab.functional.reference.layer import (
    add_layer_norm,
    add_rms_norm,
    dynamic_erf,
    dynamic_tanh,
    layer_norm,
    layer_norm_2d,
    lm_rms_norm,
    rms_norm,
    rms_norm_2d,
    scale_norm,
)
from normlab.functional.reference.response import (
    evonorm_b0,
    filter_response_norm,
    local_response_norm,
)
from normlab.functional.reference.switchable import switchable_norm
from normlab.functional.reference.weight import weight_standardization

__all__ = [
    "accumulation_dtype",
    "add_layer_norm",
    "add_rms_norm",
    "batch_norm",
    "batch_renorm",
    "dynamic_erf",
    "dynamic_tanh",
    "evonorm_b0",
    "evonorm_s0",
    "filter_response_norm",
    "ghost_batch_norm",
    "group_norm",
    "instance_norm",
    "layer_norm",
    "layer_norm_2d",
    "lm_rms_norm",
    "local_response_norm",
    "modulated_layer_norm",
    "modulated_rms_norm",
    "rms_norm",
    "rms_norm_2d",
    "scale_norm",
    "switchable_norm",
    "weight_standardization",
]
