"""The article's first section computed, not written: the normalization formula
applied by hand to a real activation tensor, and the registry as a table."""

from __future__ import annotations

import pandas as pd
import torch

from normlab import data
from normlab.norms import registry

EPS = 1e-5


def activation_example(samples: int = 6, units: int = 4, seed: int = 0) -> torch.Tensor:
    """A real activation tensor: the pre-activations of the first hidden layer of the
    BatchNorm paper's network at initialization (784 -> 100, weights N(0, 0.1²)) for
    ``samples`` embedded-MNIST digits; its first ``units`` units, float64."""
    digits = data.load("mnist", seed=seed).train_x[:samples].flatten(1).double()
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(100, digits.shape[1], generator=generator, dtype=torch.float64) * 0.1
    return (digits @ weight.T)[:, :units]


def worked_example(x: torch.Tensor) -> dict[str, pd.DataFrame]:
    """BatchNorm and LayerNorm applied by hand to ``x`` (samples x units), γ = 1, β = 0:
    the input, each statistic and the normalized output, as tables."""
    columns = [f"unit {j + 1}" for j in range(x.shape[1])]
    index = [f"sample {i + 1}" for i in range(x.shape[0])]
    out = {"x": pd.DataFrame(x.numpy(), index=index, columns=columns)}
    mu, var = x.mean(0), x.var(0, unbiased=False)
    out["batchnorm"] = pd.DataFrame(
        ((x - mu) / (var + EPS).sqrt()).numpy(), index=index, columns=columns
    )
    out["batch statistics"] = pd.DataFrame(
        {"μ_B (over the batch)": mu.numpy(), "σ²_B": var.numpy()}, index=columns
    ).T
    mu_l, var_l = x.mean(1, keepdim=True), x.var(1, unbiased=False, keepdim=True)
    out["layernorm"] = pd.DataFrame(
        ((x - mu_l) / (var_l + EPS).sqrt()).numpy(), index=index, columns=columns
    )
    return out


def technique_table() -> pd.DataFrame:
    """Every technique in the registry: formula, axes, inference statistics, paper."""
    rows = []
    for name in registry.available():
        s = registry.spec(name)
        rows.append(
            {
                "technique": name,
                "formula": s.formula,
                "statistic over (N, C, H, W)": s.axes,
                "uses the batch": "yes" if s.batch_dependent else "no",
                "statistics at inference": s.inference,
                "own activation": "yes" if s.fused_activation else "no",
                "paper": s.paper,
            }
        )
    return pd.DataFrame(rows)
