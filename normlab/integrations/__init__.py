"""The Monitor where people train: optional glue, each module imported only when
used, each needing its extra (``pip install 'normlab[lightning]'`` etc.).

- :mod:`normlab.integrations.lightning`: ``MonitorCallback`` for Lightning's Trainer
- :mod:`normlab.integrations.transformers`: ``MonitorCallback`` for the Hugging Face Trainer
- :mod:`normlab.integrations.tensorboard`: ``write(monitor, writer, step)``
- :mod:`normlab.integrations.wandb`: ``write(monitor, run, step)``

Importing this package imports none of Lightning, transformers, TensorBoard or
wandb.
"""

from normlab.integrations._common import DEFAULT_EDGES, DEFAULT_QUANTITIES, Histogram, read

__all__ = ["DEFAULT_EDGES", "DEFAULT_QUANTITIES", "Histogram", "read"]
