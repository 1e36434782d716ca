"""Norm placement in the lab transformer (pre, post, sandwich, peri, DeepNorm, LayerNorm
Scaling) against hand-written float64 formulas, and the placement experiment."""

from __future__ import annotations

import math
import typing
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from typer.testing import CliRunner

from normlab import models
from normlab.cli import app
from normlab.experiments import catalog, config, runner
from normlab.experiments.config import ConfigError, RunConfig
from normlab.models import TransformerBlock

NORMS = ("layernorm", "rmsnorm", "dyt", "derf")


def _norm(kind: str, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The published formula of each norm, from the module's parameters."""
    if kind == "layernorm":
        mu = x.mean(-1, keepdim=True)
        var = (x - mu).pow(2).mean(-1, keepdim=True)
        return (x - mu) / torch.sqrt(var + module.eps) * module.weight + module.bias
    if kind == "rmsnorm":
        eps = module.eps if module.eps is not None else torch.finfo(x.dtype).eps
        return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * module.weight
    if kind == "dyt":  # Zhu et al., 2025: gamma * tanh(alpha x) + beta
        return module.weight * torch.tanh(module.alpha * x) + module.bias
    # derf, Chen et al., 2025: gamma * erf(alpha x + s) + beta
    return module.weight * torch.erf(module.alpha * x + module.shift) + module.bias


def _attention(attn: nn.MultiheadAttention, h: torch.Tensor) -> torch.Tensor:
    """softmax(q kᵀ / √d_head) v per head, then the output map, from the packed weights."""
    b, t, dim = h.shape
    heads = attn.num_heads
    q, k, v = F.linear(h, attn.in_proj_weight, attn.in_proj_bias).chunk(3, -1)
    q, k, v = (z.view(b, t, heads, dim // heads).transpose(1, 2) for z in (q, k, v))
    weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(dim // heads), -1)
    out = (weights @ v).transpose(1, 2).reshape(b, t, dim)
    return F.linear(out, attn.out_proj.weight, attn.out_proj.bias)


def _mlp(mlp: nn.Sequential, h: torch.Tensor) -> torch.Tensor:
    hidden = F.linear(h, mlp[0].weight, mlp[0].bias)
    hidden = 0.5 * hidden * (1 + torch.erf(hidden / math.sqrt(2)))  # exact GELU
    return F.linear(hidden, mlp[2].weight, mlp[2].bias)


def _block(b: TransformerBlock, kind: str, position: str, x, layer: int, depth: int):
    """One block by its paper's formula, written out per placement."""
    n = lambda module, z: _norm(kind, module, z)  # noqa: E731
    attend = lambda z: _attention(b.attention, z)  # noqa: E731
    mlp = lambda z: _mlp(b.mlp, z)  # noqa: E731
    if position == "pre":  # Xiong et al., 2020
        x = x + attend(n(b.norm1, x))
        return x + mlp(n(b.norm2, x))
    if position == "post":  # Vaswani et al., 2017
        x = n(b.norm1, x + attend(x))
        return n(b.norm2, x + mlp(x))
    if position in ("sandwich", "peri"):  # Ding et al., 2021; Kim et al., 2025
        x = x + n(b.norm1_out, attend(n(b.norm1, x)))
        return x + n(b.norm2_out, mlp(n(b.norm2, x)))
    if position == "deepnorm":  # Wang et al., 2022, encoder: alpha = (2N)^(1/4)
        alpha = (2 * depth) ** 0.25
        x = n(b.norm1, alpha * x + attend(x))
        return n(b.norm2, alpha * x + mlp(x))
    assert position == "lns"  # Sun et al., 2025: norm output / sqrt(layer)
    x = x + attend(n(b.norm1, x) / math.sqrt(layer))
    return x + mlp(n(b.norm2, x) / math.sqrt(layer))


def _randomize(module: nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.5 + (1.0 if p.dim() == 1 else 0.0))


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("position", models.TRANSFORMER_POSITIONS)
def test_block_matches_its_papers_formula_in_float64(position, norm):
    torch.manual_seed(0)
    layer, depth = 3, 5
    block = TransformerBlock(8, 2, 2, norm, position, layer=layer, depth=depth).double()
    _randomize(block)  # every norm's affine (and DyT/Derf's alpha, shift) away from init
    x = torch.randn(2, 5, 8, dtype=torch.float64) * 2 + 0.5
    want = _block(block, norm, position, x, layer, depth)
    torch.testing.assert_close(block(x), want, rtol=1e-10, atol=1e-10)
    block(x).sum().backward()
    assert all(p.grad is not None and p.grad.isfinite().all() for p in block.parameters())


def _replayed(seed: int, dim: int, depth: int, heads: int, ratio: int, position: str) -> dict:
    """The parameters the builder drew before placements existed, by replaying its
    construction order (patch conv, positions, per block: norm1, attention, norm2, MLP;
    final norm; head) on a fresh generator."""
    torch.manual_seed(seed)
    params = {}
    conv = nn.Conv2d(1, dim, 7, 7)
    params["embed.weight"], params["embed.bias"] = conv.weight, conv.bias
    params["position"] = torch.randn(1, 16, dim) / math.sqrt(dim)
    for i in range(depth):
        norm1, attention = nn.LayerNorm(dim), nn.MultiheadAttention(dim, heads, batch_first=True)
        norm2 = nn.LayerNorm(dim)
        fc1, fc2 = nn.Linear(dim, dim * ratio), nn.Linear(dim * ratio, dim)
        for name, module in (("norm1", norm1), ("attention", attention), ("norm2", norm2)):
            for key, value in module.state_dict().items():
                params[f"blocks.{i}.{name}.{key}"] = value
        for j, fc in ((0, fc1), (2, fc2)):
            params[f"blocks.{i}.mlp.{j}.weight"], params[f"blocks.{i}.mlp.{j}.bias"] = (
                fc.weight,
                fc.bias,
            )
    if position == "pre":
        final = nn.LayerNorm(dim)
        params["norm.weight"], params["norm.bias"] = final.weight, final.bias
    head = nn.Linear(dim, 10)
    params["head.weight"], params["head.bias"] = head.weight, head.bias
    return params


@pytest.mark.parametrize("position", ["pre", "post"])
def test_pre_and_post_build_the_same_seeded_models_as_before(position):
    dim, depth = 16, 2
    torch.manual_seed(7)
    model = models.transformer(1, 10, dim=dim, depth=depth, norm_position=position)
    want = _replayed(7, dim, depth, 4, 2, position)
    state = model.state_dict()
    assert sorted(state) == sorted(want)  # no new parameter or buffer
    for key, value in want.items():
        torch.testing.assert_close(state[key], value.detach(), rtol=0, atol=0, msg=key)
    # and the same function: the pre/post blocks written out, float64
    model = model.double()
    images = torch.randn(3, 1, 28, 28, dtype=torch.float64)
    x = F.conv2d(images, model.embed.weight, model.embed.bias, stride=7)
    x = x.flatten(2).transpose(1, 2) + model.position
    for i, block in enumerate(model.blocks):
        x = _block(block, "layernorm", position, x, i + 1, depth)
    if position == "pre":
        x = _norm("layernorm", model.norm, x)
    want_logits = F.linear(x.mean(1), model.head.weight, model.head.bias)
    torch.testing.assert_close(model(images), want_logits, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("position", ["sandwich", "peri"])
def test_peri_differs_from_sandwich_by_its_embedding_norm(position):
    torch.manual_seed(1)
    model = models.transformer(1, 10, dim=16, depth=2, norm="rmsnorm", norm_position=position)
    model = model.double()
    _randomize(model)
    images = torch.randn(2, 1, 28, 28, dtype=torch.float64)
    x = F.conv2d(images, model.embed.weight, model.embed.bias, stride=7)
    x = x.flatten(2).transpose(1, 2) + model.position
    if position == "peri":  # Kim et al.: the embedding is normalized too
        x = _norm("rmsnorm", model.embed_norm, x)
    else:
        assert isinstance(model.embed_norm, nn.Identity)
    for i, block in enumerate(model.blocks):
        x = _block(block, "rmsnorm", position, x, i + 1, 2)
    x = _norm("rmsnorm", model.norm, x)  # both end in a final norm
    want = F.linear(x.mean(1), model.head.weight, model.head.bias)
    torch.testing.assert_close(model(images), want, rtol=1e-10, atol=1e-10)


def test_deepnorm_constants_and_initialization():
    depth, dim = 6, 256
    alpha, beta = (2 * depth) ** 0.25, (8 * depth) ** -0.25  # DeepNet, encoder-only
    for init in ("default", "kaiming"):
        torch.manual_seed(0)
        model = models.transformer(1, 10, dim=dim, depth=depth, norm_position="deepnorm", init=init)
        assert isinstance(model.norm, nn.Identity)  # post-norm blocks end normalized
        for i, block in enumerate(model.blocks):
            assert block.alpha == pytest.approx(alpha) and block.beta == pytest.approx(beta)
            assert (block.layer, block.depth) == (i + 1, depth)
        block = model.blocks[-1]
        xavier = lambda w: math.sqrt(2 / sum(w.shape))  # noqa: E731 (Glorot & Bengio, 2010)
        q, k, v = block.attention.in_proj_weight.detach().chunk(3, 0)
        branch = (v, block.attention.out_proj.weight, block.mlp[0].weight, block.mlp[2].weight)
        for w in branch:  # Xavier-normal, gain beta
            assert w.std().item() == pytest.approx(beta * xavier(w), rel=0.05)
        for w in (q, k):  # Xavier-normal, gain 1
            assert w.std().item() == pytest.approx(xavier(w), rel=0.05)
    torch.manual_seed(0)
    scaled = models.transformer(
        1, 10, dim=dim, depth=depth, norm_position="deepnorm", init_scale=0.5
    )
    w = scaled.blocks[0].mlp[2].weight
    assert w.std().item() == pytest.approx(0.5 * beta * xavier(w), rel=0.05)
    with pytest.raises(ValueError, match="deepnorm_init_ needs position 'deepnorm', got 'pre'"):
        TransformerBlock(8, 2, 2, "layernorm").deepnorm_init_()


def test_layernorm_scaling_divides_each_blocks_norm_by_sqrt_layer():
    model = models.transformer(1, 10, dim=16, depth=4, norm_position="lns")
    assert [b.scale for b in model.blocks] == pytest.approx(
        [1 / math.sqrt(layer) for layer in (1, 2, 3, 4)]
    )
    assert [b.layer for b in model.blocks] == [1, 2, 3, 4]
    assert all(b.scale == 1 for b in models.transformer(1, 10, depth=3).blocks)
    assert not isinstance(model.norm, nn.Identity)  # the final norm is not scaled
    x = torch.randn(2, 5, 16)
    block = model.blocks[3]
    # the attention sees norm(x)/2 in block 4: same output as a pre block fed that
    pre = TransformerBlock(16, 4, 2, "layernorm", "pre")
    pre.load_state_dict(block.state_dict())
    want = x + pre._attend(block.norm1(x) / 2)
    want = want + pre.mlp(block.norm2(want) / 2)
    torch.testing.assert_close(block(x), want)


def test_bad_placements_are_refused_with_the_layer_and_values():
    with pytest.raises(ValueError, match="unknown norm_position 'middle'; choose one of pre, post"):
        models.transformer(1, 10, norm_position="middle")
    with pytest.raises(
        ValueError, match=r"TransformerBlock: layer must be in 1..depth \(depth=3\), got 4"
    ):
        TransformerBlock(8, 2, 2, "layernorm", "lns", layer=4, depth=3)
    with pytest.raises(ValueError, match="unknown norm_position 'peri'; choose one of pre, post"):
        models.mlp(16, 10, norm_position="peri")


def test_run_config_accepts_the_placements_for_the_transformer_only():
    assert typing.get_args(config.NormPosition) == models.TRANSFORMER_POSITIONS
    only = tuple(p for p in models.TRANSFORMER_POSITIONS if p not in models.POSITIONS)
    assert config.TRANSFORMER_ONLY_POSITIONS == only
    base = RunConfig(model="transformer", norm="layernorm", width=16, depth=2)
    dataset = SimpleNamespace(name="fake", input_shape=(1, 28, 28), num_classes=10)
    for position in models.TRANSFORMER_POSITIONS:
        model = runner.build_model(base.replace(norm_position=position), dataset)
        assert all(b.position == position for b in model.blocks)
    assert base.replace(norm_position="peri").run_id != base.run_id
    for model in ("mlp", "cnn"):
        with pytest.raises(
            ConfigError, match=f"norm_position 'deepnorm' needs model='transformer', not '{model}'"
        ):
            RunConfig(model=model, norm_position="deepnorm")
        RunConfig(model=model, norm_position="post")  # pre and post stay theirs
    with pytest.raises(ConfigError, match="norm_position: Input should be 'pre', 'post', 'peri'"):
        base.replace(norm_position="postnorm")


def test_placement_experiment_quick_run_gives_its_headline(tmp_path):
    experiment = catalog.get("placement")
    assert not experiment.in_suite  # its 80 runs would pass `normlab compare`'s budget
    args = ["run", "placement", "--quick", "--norms", "layernorm", "--jobs", "1"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    headline = pd.read_csv(tmp_path / "placement" / "headline.csv")
    # quick: pre and post, deep at the large lr, then small lr, then shallow (not both)
    cells = {(r.norm, r.norm_position, r.lr, r.depth) for r in headline.itertuples()}
    settings = {(0.01, 12), (0.001, 12), (0.01, 4)}
    want = {("layernorm", p, lr, d) for p in ("pre", "post") for lr, d in settings}
    assert cells == want
    assert (headline.seeds == 1).all() and headline.test_acc.between(0, 1).all()
    text = experiment.finding(headline)
    assert text.startswith("At depth 12, lr 0.01 without warm-up — pre: layernorm")
    assert "Controls: at depth 12, lr 0.001" in text
    expectations = experiment.expectations(headline)
    assert len(expectations) == 2 and all(e.held is None for e in expectations)  # one seed
    figures = experiment.figures(None, headline)
    assert len(figures) == 2
