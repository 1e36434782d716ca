"""QK-norm: normlab.QKNorm against a float64 formula, and the transformer's qk_norm."""

from __future__ import annotations

import hashlib
import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import normlab
from normlab import models
from normlab.experiments.config import MODEL_FIELDS, ConfigError, RunConfig
from normlab.models import QKNormAttention


def _rms(x, gamma, eps):
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * gamma


def _ln(x, gamma, beta, eps):
    mu = x.mean(-1, keepdim=True)
    var = (x - mu).pow(2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * gamma + beta


def _randomize(module):
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p))


@pytest.mark.parametrize("norm", ["rmsnorm", "layernorm"])
def test_qknorm_matches_formula_per_head_with_separate_scales(norm):
    torch.manual_seed(0)
    qk = normlab.QKNorm(8, norm=norm, eps=1e-5).double()
    _randomize(qk)
    assert not torch.equal(qk.q_norm.weight, qk.k_norm.weight)
    q = torch.randn(2, 4, 5, 8, dtype=torch.float64) * 3 + 1
    k = torch.randn(2, 4, 5, 8, dtype=torch.float64) * 0.1
    qn, kn = qk(q, k)
    assert qn.shape == q.shape and kn.shape == k.shape
    if norm == "rmsnorm":
        want_q = _rms(q, qk.q_norm.weight, 1e-5)
        want_k = _rms(k, qk.k_norm.weight, 1e-5)
    else:
        want_q = _ln(q, qk.q_norm.weight, qk.q_norm.bias, 1e-5)
        want_k = _ln(k, qk.k_norm.weight, qk.k_norm.bias, 1e-5)
    torch.testing.assert_close(qn, want_q, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(kn, want_k, rtol=1e-12, atol=1e-12)
    # per head: one head's output depends on that head only
    q2 = q.clone()
    q2[:, 1] *= 100
    torch.testing.assert_close(qk(q2, k)[0][:, 0], qn[:, 0], rtol=1e-12, atol=1e-12)


def test_qknorm_takes_a_factory_and_refuses_bad_names():
    qk = normlab.QKNorm(6, norm=lambda d: torch.nn.RMSNorm(d, eps=1e-3))
    assert qk.q_norm is not qk.k_norm and qk.q_norm.eps == 1e-3
    with pytest.raises(ValueError, match=r"unknown norm 'rmsnrom'.*did you mean 'rmsnorm'"):
        normlab.QKNorm(8, norm="rmsnrom")
    with pytest.raises(ValueError, match="choose one of rmsnorm, layernorm"):
        normlab.QKNorm(8, norm="batchnorm")
    with pytest.raises(TypeError, match="eps only goes with a norm given by name"):
        normlab.QKNorm(8, norm=torch.nn.RMSNorm, eps=1e-3)
    with pytest.raises(normlab.NormInputError, match="expected head_dim 8"):
        normlab.QKNorm(8)(torch.randn(2, 7), torch.randn(2, 8))


def test_qk_norm_false_is_unchanged():
    x = torch.randn(3, 1, 28, 28)
    torch.manual_seed(1)
    plain = models.transformer(1, 10)
    torch.manual_seed(1)
    default = models.transformer(1, 10, qk_norm=False)
    assert all(isinstance(b.attention, torch.nn.MultiheadAttention) for b in default.blocks)
    torch.testing.assert_close(default(x), plain(x), rtol=0, atol=0)
    # and equal to attention computed by hand from nn.MultiheadAttention's weights
    block = default.blocks[0]
    h = block.norm1(torch.randn(2, 16, 64))
    attn = block.attention
    q, k, v = F.linear(h, attn.in_proj_weight, attn.in_proj_bias).chunk(3, -1)
    heads = [t.view(2, 16, 4, 16).transpose(1, 2) for t in (q, k, v)]
    want = attn.out_proj(F.scaled_dot_product_attention(*heads).transpose(1, 2).flatten(2))
    torch.testing.assert_close(attn(h, h, h, need_weights=False)[0], want)


@pytest.mark.parametrize("position", ["pre", "post"])
def test_transformer_with_qk_norm_trains_and_bounds_logits(position):
    torch.manual_seed(0)
    model = models.transformer(1, 10, norm="rmsnorm", norm_position=position, qk_norm=True)
    attentions = [b.attention for b in model.blocks]
    assert all(isinstance(a, QKNormAttention) for a in attentions)
    assert all(isinstance(a.qk_norm, normlab.QKNorm) for a in attentions)
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(5):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert any(a.qk_norm.q_norm.weight.grad is not None for a in attentions)
    head_dim = attentions[0].head_dim
    for a in attentions:
        with torch.no_grad():
            a.qkv.weight.mul_(1e3)  # huge projections: the logits stay bounded
            tokens = torch.randn(4, 16, 64) * 100
            logits = a.logits(tokens)
        bound = head_dim * a.qk_norm.q_norm.weight.abs().max() * a.qk_norm.k_norm.weight.abs().max()
        assert logits.abs().max() <= bound * (1 + 1e-5)
        assert logits.abs().max() > 0.1 * bound  # the bound is not vacuous here


def test_qk_norm_attention_matches_manual_computation():
    torch.manual_seed(0)
    attn = QKNormAttention(32, 4).double()
    _randomize(attn)
    x = torch.randn(2, 6, 32, dtype=torch.float64)
    q, k, v = attn.qkv(x).chunk(3, -1)
    q, k, v = (t.view(2, 6, 4, 8).transpose(1, 2) for t in (q, k, v))
    q = _rms(q, attn.qk_norm.q_norm.weight, 1e-6)
    k = _rms(k, attn.qk_norm.k_norm.weight, 1e-6)
    weights = torch.softmax(q @ k.transpose(-2, -1) / 8**0.5, -1)
    want = attn.out_proj((weights @ v).transpose(1, 2).flatten(2))
    torch.testing.assert_close(attn(x), want, rtol=1e-10, atol=1e-10)


def test_run_config_threads_qk_norm():
    from normlab.experiments import runner

    assert "qk_norm" in MODEL_FIELDS
    base = RunConfig(dataset="mnist", model="transformer", norm="layernorm", width=32, depth=1)
    assert base.qk_norm is False
    on = base.replace(qk_norm=True)
    assert on.run_id != base.run_id
    with pytest.raises(ConfigError, match="qk_norm"):
        base.replace(qk_norm="yes")
    with pytest.raises(ConfigError, match="qk_norm needs model='transformer'"):
        RunConfig(model="mlp", qk_norm=True)
    dataset = SimpleNamespace(name="fake", input_shape=(1, 28, 28), num_classes=10)
    for config, want in ((base, nn.MultiheadAttention), (on, QKNormAttention)):
        model = runner.build_model(config, dataset)
        assert isinstance(model.blocks[0].attention, want)
    text = json.dumps(base.to_dict(), sort_keys=True, default=str)  # every field counts
    assert base.run_id == hashlib.sha256(text.encode()).hexdigest()[:16]
