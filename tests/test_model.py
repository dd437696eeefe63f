import math
import random

import pytest
import torch
import torch.nn.functional as F

from mfha.config import ModelConfig
from mfha.errors import ConfigError
from mfha.heads import HeadSpec, explicit, fractal, geometric, uniform
from mfha.model import GPT, MFHAttention, count_parameters

# every model here is tiny: waking intra-op threads costs more than the ops on a busy machine
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def random_spec(rng: random.Random) -> HeadSpec:
    family = rng.choice(["uniform", "fractal", "geometric", "explicit"])
    if family == "uniform":
        return uniform(rng.randint(1, 6), 2 * rng.randint(2, 24))
    if family == "fractal":
        split, levels = rng.choice([(2, 1), (2, 2), (2, 3), (2, 4), (3, 2), (3, 3)])
        return fractal(2 * rng.randint(2, 5) * split ** (levels - 1), levels, split=split)
    if family == "geometric":
        ratio, levels = rng.choice([(2, 1), (2, 2), (2, 3), (3, 2), (4, 2)])
        smallest = 2 * rng.randint(2, 5)
        largest = smallest * ratio ** (levels - 1)
        if rng.random() < 0.5:
            return geometric(largest, smallest, ratio=ratio, count=rng.randint(1, 3))
        return geometric(largest, smallest, ratio=ratio, width=largest * rng.randint(1, 2))
    return explicit([2 * rng.randint(2, 20) for _ in range(rng.randint(1, 7))])


def random_config(rng: random.Random) -> ModelConfig:
    while True:
        n_layers = rng.randint(1, 3)
        heads = [random_spec(rng) for _ in range(n_layers)] if rng.random() < 0.35 else random_spec(rng)
        try:
            return ModelConfig(
                vocab_size=rng.randint(5, 300),
                dim=rng.randint(4, 96),
                n_layers=n_layers,
                heads=heads,
                max_seq_len=rng.choice([8, 64, 300]),
                mlp_mult=rng.choice([1.0, 2.5, 8 / 3, 4.0]),
                kv_share=rng.choice([1, 1, 2, 3, 4]),
            )
        except ConfigError as e:
            # only the kv_share rule can reject what random_spec draws
            assert "kv_share" in str(e)


def test_count_parameters_matches_the_built_model():
    rng = random.Random(2024)
    seen = {"families": set(), "per_layer": 0, "gqa": 0}
    for _ in range(240):
        cfg = random_config(rng)
        # built on CPU: the meta device is slower here, its sin/cos/pow run as Python decompositions
        built = sum(p.numel() for p in GPT(cfg).parameters())
        assert count_parameters(cfg) == built, cfg
        seen["families"] |= {s.family for s in cfg.layer_heads}
        seen["per_layer"] += isinstance(cfg.heads, list)
        seen["gqa"] += any(cfg.kv_heads(n) < n for s in cfg.layer_heads for _, n in s.groups())
    assert seen["families"] == {"uniform", "fractal", "geometric", "explicit"}
    assert seen["per_layer"] >= 40 and seen["gqa"] >= 40, seen


def test_count_parameters_by_hand():
    # tied embedding 100*32 + final norm 32; per layer: 2 norms, qkv 32*(64+2*64), proj 64*32, mlp 3*32*88
    cfg = ModelConfig(vocab_size=100, dim=32, n_layers=2, heads=fractal(32, 2), mlp_mult=4.0)
    assert cfg.mlp_hidden == 88
    per_layer = 2 * 32 + 32 * 192 + 64 * 32 + 3 * 32 * 88
    assert count_parameters(cfg) == 100 * 32 + 32 + 2 * per_layer
    # kv_share=2: the 2x16 group keeps one K/V head, so K and V lose 16 columns each
    assert (
        count_parameters(ModelConfig(vocab_size=100, dim=32, n_layers=2, heads=fractal(32, 2), kv_share=2))
        == count_parameters(cfg) - 2 * 2 * 16 * 32
    )


def rope(x: torch.Tensor, base: float) -> torch.Tensor:
    """x (B, nh, T, hs): rotate pairs (2j, 2j+1) by t * base**(-2j/hs), as in RoFormer."""
    T, hs = x.size(-2), x.size(-1)
    angle = torch.arange(T, dtype=torch.float64)[:, None] * base ** (-torch.arange(0, hs, 2, dtype=torch.float64) / hs)
    cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
    x0, x1 = x[..., 0::2], x[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x0 * cos - x1 * sin
    out[..., 1::2] = x0 * sin + x1 * cos
    return out


def causal_softmax_attention(q, k, v):
    T, hs = q.size(-2), q.size(-1)
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(hs)
    scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def mha_reference(x, w_qkv, w_proj, nh, hs, base):
    """Plain multi-head attention: nh heads of hs, one batched computation."""
    B, T, _ = x.shape
    q, k, v = (x @ w_qkv.t()).split(nh * hs, dim=-1)
    q, k, v = (z.view(B, T, nh, hs).transpose(1, 2) for z in (q, k, v))
    y = causal_softmax_attention(rope(q, base), rope(k, base), v)
    return y.transpose(1, 2).reshape(B, T, nh * hs) @ w_proj.t()


def per_head_reference(x, w_qkv, w_proj, groups, base):
    """Every head on its own. Columns: Q heads largest first, then K/V heads; in a size group of
    n query heads over n_kv K/V heads, query head j reads K/V head j // (n // n_kv)."""
    q_width = sum(hs * n for hs, n, _ in groups)
    kv_width = sum(hs * n_kv for hs, _, n_kv in groups)
    q, k, v = (x @ w_qkv.t()).split([q_width, kv_width, kv_width], dim=-1)
    outs, q_off, kv_off = [], 0, 0
    for hs, n, n_kv in groups:
        for j in range(n):
            kv = kv_off + (j // (n // n_kv)) * hs
            qh = q[:, None, :, q_off + j * hs : q_off + (j + 1) * hs]
            kh, vh = k[:, None, :, kv : kv + hs], v[:, None, :, kv : kv + hs]
            outs.append(causal_softmax_attention(rope(qh, base), rope(kh, base), vh)[:, 0])
        q_off += n * hs
        kv_off += n_kv * hs
    return torch.cat(outs, dim=-1) @ w_proj.t()


def compare_with_reference(attn: MFHAttention, reference, *, B=2, T=12, dim=32, tol=1e-5):
    torch.manual_seed(0)
    x = torch.randn(B, T, dim, requires_grad=True)
    w_qkv = attn.qkv.weight.detach().clone().requires_grad_()
    w_proj = attn.proj.weight.detach().clone().requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    y, y_ref = attn(x), reference(x_ref, w_qkv, w_proj)
    assert (y - y_ref).abs().max().item() < tol
    grad_out = torch.randn_like(y)
    y.backward(grad_out)
    y_ref.backward(grad_out)
    for got, want in [(x.grad, x_ref.grad), (attn.qkv.weight.grad, w_qkv.grad), (attn.proj.weight.grad, w_proj.grad)]:
        assert want.abs().max() > 1e-3  # the check below is not vacuous
        assert (got - want).abs().max().item() < tol


def test_uniform_heads_equal_plain_mha():
    torch.manual_seed(0)
    cfg = ModelConfig(dim=32, n_layers=1, heads=uniform(4, 8), max_seq_len=16, rope_base=100.0)
    attn = MFHAttention(cfg, cfg.layer_heads[0])
    compare_with_reference(attn, lambda x, wq, wp: mha_reference(x, wq, wp, 4, 8, 100.0))


@pytest.mark.parametrize("kv_share", [1, 2])
@pytest.mark.parametrize("spec", [fractal(16, 3), explicit([12, 4, 8, 4, 12, 4])])
def test_mixed_heads_equal_per_head_reference(spec, kv_share):
    torch.manual_seed(0)
    cfg = ModelConfig(dim=32, n_layers=1, heads=spec, max_seq_len=16, kv_share=kv_share, rope_base=100.0)
    attn = MFHAttention(cfg, spec)
    groups = [(hs, n, cfg.kv_heads(n)) for hs, n in spec.groups()]
    if kv_share > 1:
        assert any(n_kv < n for _, n, n_kv in groups)
    compare_with_reference(attn, lambda x, wq, wp: per_head_reference(x, wq, wp, groups, 100.0))


@pytest.mark.parametrize(
    "heads, kv_share",
    [(fractal(16, 3), 1), (fractal(16, 3), 2), ([geometric(16, 4, count=2), uniform(4, 8)], 2)],
)
def test_kv_cache_decoding_matches_full_forward(heads, kv_share):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=50, dim=32, n_layers=2, heads=heads, max_seq_len=24, kv_share=kv_share)
    model = GPT(cfg).eval()
    idx = torch.randint(0, 50, (2, 20))
    with torch.no_grad():
        full, _ = model(idx)
        caches = model.new_caches(2)
        steps = [(0, 7), (7, 12), (12, 15)] + [(t, t + 1) for t in range(15, 20)]
        pieces = [model(idx[:, a:b], caches=caches)[0] for a, b in steps]
    assert caches[0].length == 20
    assert (torch.cat(pieces, dim=1) - full).abs().max().item() < 1e-4
    assert full.std() > 0.01


def test_kv_cache_overflow_and_max_seq_len():
    cfg = ModelConfig(vocab_size=20, dim=16, n_layers=1, heads=uniform(2, 8), max_seq_len=8)
    model = GPT(cfg)
    with pytest.raises(ValueError, match=r"sequence of length 9 is longer than max_seq_len=8"):
        model(torch.zeros(1, 9, dtype=torch.long))
    caches = model.new_caches(1)
    with torch.no_grad():
        model(torch.zeros(1, 6, dtype=torch.long), caches=caches)
        with pytest.raises(ValueError, match=r"sequence of length 10 is longer than max_seq_len=8"):
            model(torch.zeros(1, 4, dtype=torch.long), caches=caches)


def test_forward_shapes_and_initial_loss():
    torch.manual_seed(0)
    V = 100
    cfg = ModelConfig(vocab_size=V, dim=32, n_layers=2, heads=fractal(16, 2), max_seq_len=32)
    model = GPT(cfg)
    idx = torch.randint(0, V, (3, 32))
    logits, loss = model(idx)
    assert logits.shape == (3, 32, V) and loss is None
    logits, loss = model(idx, torch.randint(0, V, (3, 32)))
    assert logits.shape == (3, 32, V) and loss.shape == ()
    assert abs(loss.item() - math.log(V)) < 0.1
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    assert model.lm_head.weight is model.tok_emb.weight


def test_targets_of_minus_one_are_ignored():
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=30, dim=16, n_layers=1, heads=uniform(2, 8), max_seq_len=8))
    idx = torch.randint(0, 30, (2, 8))
    targets = torch.randint(0, 30, (2, 8))
    logits, loss = model(idx, torch.where(torch.arange(8) < 5, targets, -1))
    assert torch.allclose(loss, F.cross_entropy(logits[:, :5].reshape(-1, 30), targets[:, :5].reshape(-1)))


def test_bf16_attention_follows_fp32():
    # RoPE upcasts bf16 to fp32 for its complex multiply; the result must come back in bf16
    torch.manual_seed(0)
    cfg = ModelConfig(dim=32, n_layers=1, heads=fractal(16, 3), max_seq_len=16)
    attn = MFHAttention(cfg, cfg.layer_heads[0])
    x = torch.randn(2, 16, 32)
    want = attn(x)
    got = attn.to(torch.bfloat16)(x.bfloat16())
    assert got.dtype == torch.bfloat16
    assert (got.float() - want).abs().max().item() < 0.05 * want.abs().max().item()
