"""The plain-torch references against independent oracles (HF transformers, SDPA, float64 math).

These run on CPU with no Triton at all; they pin what every op means, so the kernel tests can
then compare kernels against the references.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mono_llm import kernels
from mono_llm.kernels import reference


def test_rms_norm_reference_matches_float64():
    x = torch.randn(5, 37, dtype=torch.float64)
    w = torch.randn(37, dtype=torch.float64)
    want = x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-6) * w
    got = reference.rms_norm(x.to(torch.bfloat16), w.to(torch.bfloat16), 1e-6)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.double(), want, atol=0.05, rtol=0.02)
    got32 = reference.rms_norm(x.float(), w.float(), 1e-6).double()
    torch.testing.assert_close(got32, want, atol=1e-5, rtol=1e-5)


def test_fused_add_rms_norm_reference_rounds_residual_to_storage_dtype():
    x = torch.randn(3, 64, dtype=torch.bfloat16)
    r = torch.randn(3, 64, dtype=torch.bfloat16)
    w = torch.rand(64, dtype=torch.bfloat16)
    out, s = reference.fused_add_rms_norm(x, r, w, 1e-5)
    assert torch.equal(s, x + r)  # bf16 add rounds once, like HF's residual stream
    torch.testing.assert_close(out, reference.rms_norm(x + r, w, 1e-5), atol=0, rtol=0)


def _hf_cos_sin(rope_parameters: dict, head_dim: int, positions: torch.Tensor, max_pos: int):
    transformers = pytest.importorskip("transformers")
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    cfg = transformers.LlamaConfig(
        hidden_size=head_dim * 4,
        num_attention_heads=4,
        head_dim=head_dim,
        max_position_embeddings=max_pos,
        rope_parameters=rope_parameters,
    )
    rope = LlamaRotaryEmbedding(cfg)
    x = torch.zeros(1, positions.shape[0], head_dim)
    cos, sin = rope(x, positions[None])
    return cos[0], sin[0]  # [T, head_dim], halves duplicated


@pytest.mark.parametrize(
    "scaling",
    [
        {"rope_type": "default"},
        {"rope_type": "linear", "factor": 4.0},
        {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        {
            "rope_type": "yarn",
            "factor": 4.0,
            "original_max_position_embeddings": 4096,
            "beta_fast": 32,
            "beta_slow": 1,
        },
    ],
    ids=lambda s: s["rope_type"],
)
def test_rope_cache_matches_transformers(scaling):
    head_dim, theta, max_pos = 128, 500000.0, 16384
    positions = torch.tensor([0, 1, 7, 100, 4095, 8191, 12000, 16383])
    cos, sin = _hf_cos_sin({**scaling, "rope_theta": theta}, head_dim, positions, max_pos)
    legacy = {("type" if k == "rope_type" else k): v for k, v in scaling.items()}
    for spec in (scaling, legacy):  # both the rope_type key and the legacy "type" key
        cache = kernels.rope_cos_sin_cache(head_dim, max_pos, theta, spec)
        assert cache.shape == (max_pos, head_dim)
        half = head_dim // 2
        # HF builds the angles in float32: at position ~16k that is ~1e-3 absolute angle error
        torch.testing.assert_close(cache[positions, :half], cos[:, :half], atol=3e-3, rtol=0)
        torch.testing.assert_close(cache[positions, half:], sin[:, :half], atol=3e-3, rtol=0)


def test_rope_cache_partial_rotary_and_float64_angles():
    cache = kernels.rope_cos_sin_cache(128, 10, 10000.0, None, rotary_dim=32, dtype=torch.float64)
    inv = [10000.0 ** (-2 * i / 32) for i in range(16)]
    assert cache.shape == (10, 32)
    assert math.isclose(cache[9, 3].item(), math.cos(9 * inv[3]), abs_tol=1e-12)
    assert math.isclose(cache[9, 16 + 5].item(), math.sin(9 * inv[5]), abs_tol=1e-12)
    with pytest.raises(ValueError):
        kernels.rope_cos_sin_cache(64, 8, 1e4, {"rope_type": "longrope-ish"})


@pytest.mark.parametrize("is_neox", [True, False])
def test_rotary_reference_matches_hf_rotate_half_and_complex_pairs(is_neox):
    torch.manual_seed(0)
    T, H, Hkv, D = 6, 4, 2, 64
    positions = torch.tensor([5, 0, 3, 3, 17, 2])
    q, k = torch.randn(T, H, D), torch.randn(T, Hkv, D)
    cache = kernels.rope_cos_sin_cache(D, 32, 10000.0)
    got_q, got_k = reference.apply_rotary_embedding(positions, q, k, cache, is_neox)
    cos, sin = cache[positions, : D // 2], cache[positions, D // 2 :]
    if is_neox:  # HF: x * cos + rotate_half(x) * sin with duplicated halves
        c, s = torch.cat([cos, cos], -1)[:, None], torch.cat([sin, sin], -1)[:, None]

        def rotate_half(x):
            return torch.cat([-x[..., D // 2 :], x[..., : D // 2]], -1)

        want_q, want_k = q * c + rotate_half(q) * s, k * c + rotate_half(k) * s
    else:  # GPT-J: consecutive pairs are complex numbers multiplied by e^{i angle}
        rot = torch.polar(torch.ones_like(cos), torch.atan2(sin, cos))[:, None]

        def as_complex(x):
            return torch.view_as_real(
                torch.view_as_complex(x.reshape(*x.shape[:-1], -1, 2)) * rot
            ).flatten(-2)

        want_q, want_k = as_complex(q), as_complex(k)
    torch.testing.assert_close(got_q, want_q, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_k, want_k, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gated_activation_references(approximate):
    x = torch.randn(3, 5, 2 * 24, dtype=torch.float64)
    gate, up = x[..., :24], x[..., 24:]
    tol = {"atol": 1e-6, "rtol": 1e-6}  # references compute in fp32
    torch.testing.assert_close(reference.silu_and_mul(x), gate * torch.sigmoid(gate) * up, **tol)
    if approximate == "none":
        want = 0.5 * gate * (1 + torch.erf(gate / math.sqrt(2))) * up
    else:
        want = (
            0.5 * gate * (1 + torch.tanh(math.sqrt(2 / math.pi) * (gate + 0.044715 * gate**3))) * up
        )
    torch.testing.assert_close(reference.gelu_and_mul(x, approximate), want, **tol)


def test_write_kv_cache_reference_places_slots_and_skips_padding():
    kc = torch.zeros(4, 8, 2, 16)
    vc = torch.zeros(4, 8, 2, 16)
    k, v = torch.randn(3, 2, 16), torch.randn(3, 2, 16)
    reference.write_kv_cache(k, v, kc, vc, torch.tensor([2 * 8 + 5, -1, 7]))
    assert torch.equal(kc[2, 5], k[0]) and torch.equal(vc[2, 5], v[0])
    assert torch.equal(kc[0, 7], k[2]) and torch.equal(vc[0, 7], v[2])
    assert int((kc != 0).any(-1).any(-1).sum()) == 2  # the padding token wrote nothing


@pytest.mark.parametrize("num_heads,num_kv_heads", [(4, 4), (4, 2), (6, 1)])
def test_paged_attention_reference_matches_sdpa_with_cached_prefix(
    paged_batch, num_heads, num_kv_heads
):
    # a fresh prefill, a chunk after a cached prefix, a decode, a prefill of one token
    query_lens, seq_lens = [7, 5, 1, 1], [7, 21, 16, 1]
    b = paged_batch(
        query_lens, seq_lens, num_heads, num_kv_heads, 32, 4, torch.float32, torch.device("cpu")
    )
    got = reference.paged_attention(
        b.query,
        b.key_cache,
        b.value_cache,
        b.block_tables,
        b.query_start_loc,
        b.seq_lens_t,
        b.scale,
    )
    group = num_heads // num_kv_heads
    for s, (ql, ctx) in enumerate(zip(query_lens, seq_lens)):
        q0 = int(b.query_start_loc[s])
        q = b.query[q0 : q0 + ql].transpose(0, 1)  # [H, ql, D]
        k = b.keys[s].repeat_interleave(group, dim=1).transpose(0, 1)
        v = b.values[s].repeat_interleave(group, dim=1).transpose(0, 1)
        # bottom-right aligned causal mask: query i sits at position ctx - ql + i
        mask = torch.ones(ql, ctx, dtype=torch.bool).tril(diagonal=ctx - ql)
        want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=b.scale)
        torch.testing.assert_close(got[q0 : q0 + ql], want.transpose(0, 1), atol=1e-5, rtol=1e-5)


def test_paged_attention_reference_non_causal_and_decode_agree(paged_batch):
    b = paged_batch([1, 1, 1], [9, 1, 33], 8, 2, 16, 8, torch.float32, torch.device("cpu"))
    dec = reference.paged_decode_attention(
        b.query, b.key_cache, b.value_cache, b.block_tables, b.seq_lens_t, b.scale
    )
    full = reference.paged_attention(
        b.query, b.key_cache, b.value_cache, b.block_tables, b.query_start_loc, b.seq_lens_t,
        b.scale, causal=False,
    )  # fmt: skip
    torch.testing.assert_close(dec, full)  # one query at the end sees everything either way
    q = b.query[2:3].view(2, 4, 16)  # seq 2, grouped [Hkv, G, D]
    k, v = b.keys[2].double(), b.values[2].double()
    scores = torch.einsum("hgd,khd->hgk", q.double(), k) * b.scale
    want = torch.einsum("hgk,khd->hgd", scores.softmax(-1), v).reshape(8, 16)
    torch.testing.assert_close(dec[2].double(), want, atol=1e-6, rtol=1e-6)


def test_token_bitmask_reference_matches_bit_layout():
    vocab = 70
    allowed = torch.rand(3, vocab) > 0.5
    words = torch.zeros(3, 3, dtype=torch.int64)
    for t in range(vocab):
        words[:, t // 32] |= allowed[:, t].long() << (t % 32)
    bitmask = (
        words.to(torch.int64)
        .apply_(lambda w: w - (1 << 32) if w >= (1 << 31) else w)
        .to(torch.int32)
    )
    logits = torch.randn(3, vocab + 30)  # wider than the mask's coverage (96): tail untouched
    before = logits.clone()
    reference.apply_token_bitmask(logits, bitmask, torch.tensor([0, 2]))
    for row in (0, 2):
        assert torch.equal(torch.isinf(logits[row, :vocab]), ~allowed[row])
        assert torch.equal(logits[row, :vocab][allowed[row]], before[row, :vocab][allowed[row]])
    assert torch.equal(logits[1], before[1])
    assert torch.equal(logits[:, 96:], before[:, 96:])


def test_cpu_dispatch_uses_references_and_backend_switch():
    x = torch.randn(4, 16)
    w = torch.ones(16)
    assert kernels.get_backend() == "auto"
    torch.testing.assert_close(kernels.rms_norm(x, w, 1e-6), reference.rms_norm(x, w, 1e-6))
    with kernels.use_backend("torch"):
        assert kernels.get_backend() == "torch"
        torch.testing.assert_close(kernels.silu_and_mul(x), reference.silu_and_mul(x))
    assert kernels.get_backend() == "auto"
    with pytest.raises(ValueError):
        kernels.set_backend("cuda")  # type: ignore[arg-type]
    assert kernels.rms_norm.reference is reference.rms_norm


def _dense_oracle(b, s: int, softcap: float | None, window: int | None) -> torch.Tensor:
    """Sequence s of a paged batch in float64 from its unpaged K/V: scores capped as
    cap * tanh(x / cap), a query at position p sees keys in (p - window, p]."""
    ql, ctx = b.query_lens[s], b.seq_lens[s]
    q0 = int(b.query_start_loc[s])
    group = b.num_heads // b.num_kv_heads
    q = b.query[q0 : q0 + ql].double().transpose(0, 1)  # [H, ql, D]
    k = b.keys[s].double().repeat_interleave(group, dim=1).transpose(0, 1)
    v = b.values[s].double().repeat_interleave(group, dim=1).transpose(0, 1)
    scores = q @ k.transpose(1, 2) * b.scale  # [H, ql, ctx]
    if softcap is not None:
        scores = softcap * torch.tanh(scores / softcap)
    q_pos = torch.arange(ctx - ql, ctx)[:, None]
    k_pos = torch.arange(ctx)[None, :]
    visible = k_pos <= q_pos
    if window is not None:
        visible &= k_pos > q_pos - window
    scores = scores.masked_fill(~visible, float("-inf"))
    return (scores.softmax(-1) @ v).transpose(0, 1)  # [ql, H, D]


@pytest.mark.parametrize("softcap,window", [(5.0, None), (None, 6), (2.0, 9), (None, 1)])
def test_attention_references_softcap_and_window_match_float64(paged_batch, softcap, window):
    query_lens, seq_lens = [7, 5, 1, 1], [7, 21, 16, 1]
    b = paged_batch(query_lens, seq_lens, 4, 2, 16, 4, torch.float32, torch.device("cpu"))
    b.query = b.query * 4  # large scores, so that the cap bites
    got = reference.paged_attention(
        b.query, b.key_cache, b.value_cache, b.block_tables, b.query_start_loc, b.seq_lens_t,
        b.scale, softcap=softcap, window=window,
    )  # fmt: skip
    plain = reference.paged_attention(
        b.query, b.key_cache, b.value_cache, b.block_tables, b.query_start_loc, b.seq_lens_t,
        b.scale,
    )  # fmt: skip
    assert not torch.allclose(got, plain, atol=1e-3)  # the option changed the result
    for s in range(len(query_lens)):
        q0 = int(b.query_start_loc[s])
        want = _dense_oracle(b, s, softcap, window)
        torch.testing.assert_close(
            got[q0 : q0 + query_lens[s]].double(), want, atol=1e-5, rtol=1e-5
        )
    # The decode reference agrees on the sequences whose last query is their only one.
    decodes = [2, 3]
    dec = reference.paged_decode_attention(
        b.query[[int(b.query_start_loc[s]) for s in decodes]], b.key_cache, b.value_cache,
        b.block_tables[decodes], b.seq_lens_t[decodes], b.scale, softcap=softcap, window=window,
    )  # fmt: skip
    for row, s in enumerate(decodes):
        want = _dense_oracle(b, s, softcap, window)[0]
        torch.testing.assert_close(dec[row].double(), want, atol=1e-5, rtol=1e-5)


def test_attention_options_are_validated():
    q, cache = torch.zeros(1, 2, 8), torch.zeros(1, 4, 2, 8)
    table, starts, lens = (
        torch.zeros(1, 1, dtype=torch.int32),
        torch.tensor([0, 1]),
        torch.tensor([1]),
    )
    with pytest.raises(ValueError, match="causal"):
        reference.paged_attention(q, cache, cache, table, starts, lens, 1.0, causal=False, window=4)
    with pytest.raises(ValueError, match="window"):
        reference.paged_decode_attention(q, cache, cache, table, lens, 1.0, window=0)
    with pytest.raises(ValueError, match="softcap"):
        reference.paged_decode_attention(q, cache, cache, table, lens, 1.0, softcap=0.0)
