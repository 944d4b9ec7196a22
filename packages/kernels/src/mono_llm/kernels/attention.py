"""Paged attention over a ragged batch: prefills, chunked prefills with a cached prefix, decodes.

Every sequence's keys and values live in the paged cache [num_blocks, block_size, num_kv_heads,
head_dim], reached through its row of ``block_tables``; this step's tokens were written there
first (``write_kv_cache``). Query token i of sequence s sits at position
``seq_lens[s] - query_len[s] + i`` and, when causal, attends to keys at positions <= its own,
which covers a fresh prefill (query_len == seq_len), a chunk after a cached prefix, and a decode.

Two options, off by default and compiled in only when asked for (the kernels of models that
use neither are unchanged): ``softcap`` caps each score as ``softcap * tanh(score / softcap)``
before the softmax (Gemma 2's attention logit soft-capping), and ``window`` limits a query at
position p to the keys at positions > p - window (sliding-window attention: the query and the
window - 1 keys before it), skipping the key tiles wholly before the window.

The kernel is a flash-attention forward (online softmax in exp2, fp32 accumulators) whose tile
rows pack ``BLOCK_M // group`` query tokens x ``group`` query heads of one KV head (group =
num_heads // num_kv_heads), so each K/V tile is loaded once for its whole GQA group. Programs
are laid out over a flattened list of query blocks: program p finds its sequence by binary
search over ``query_start_loc`` (no host sync, no padding; a mixed batch of one long prefill
and many decodes wastes no programs on empty blocks). Key tiles fully below the first query's
position run without a causal mask; only the diagonal tiles pay for it.

H100 80GB HBM3, one 4096-token causal prefill, 32/8 heads, d128, bf16, 16-token blocks:
442.7 us = 310 TFLOP/s, 1.11x torch SDPA (flash backend, contiguous K/V, 490.5 us).
"""

from __future__ import annotations

import math

import torch

from mono_llm.kernels.backend import tl, triton, use_triton

_LOG2E = 1.0 / math.log(2.0)  # softmax runs in exp2; the scale folds this in

# ----------------------------------------------------------------------------- kernel


@triton.jit
def _tanh(x):
    """tanh from exp alone (portable across triton versions), on |x| so exp never overflows."""
    e = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x >= 0, t, -t)


@triton.jit
def _find_sequence(query_start_loc_ptr, num_seqs, program, BLOCK_Q: tl.constexpr):
    """Largest s with ``query_start_loc[s] // BLOCK_Q + s <= program`` (block start of seq s)."""
    lo = 0
    hi = num_seqs
    while lo < hi:
        mid = (lo + hi) // 2
        start = tl.load(query_start_loc_ptr + mid) // BLOCK_Q + mid
        if start <= program:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1


@triton.jit
def _attend_tile(
    acc, m_i, l_i, q, key_cache_ptr, value_cache_ptr, block_table_row, start_n,
    kv_head_offset, kc_block_stride, kc_slot_stride, vc_block_stride, vc_slot_stride,
    block_size, context_len, row_pos, qk_scale, softcap_log2, window,
    MASK: tl.constexpr, CAUSAL: tl.constexpr, PAGE_ALIGNED: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
    DOT_FP32: tl.constexpr, SOFTCAP: tl.constexpr, WINDOW: tl.constexpr,
):  # fmt: skip
    """One online-softmax step over keys [start_n, start_n + BLOCK_N) of one sequence.

    ``DOT_FP32`` upcasts the dot operands (values unchanged): Triton's CPU interpreter computes
    bf16 dots wrongly (triton 3.9), so the interpreter path multiplies in fp32. With
    ``SOFTCAP``, ``qk_scale`` is scale / softcap and ``softcap_log2`` is softcap * log2(e):
    the capped score lands in the log2 domain the softmax runs in. With ``WINDOW``, a key is
    visible to a row only if its position is > row_pos - window (callers mask every tile).
    """
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    if PAGE_ALIGNED:  # the whole tile sits in one cache block: one table lookup, contiguous slots
        page = tl.load(block_table_row + start_n // block_size).to(tl.int64)
        slot = (start_n % block_size) + tl.arange(0, BLOCK_N)
        k_rows = page * kc_block_stride + slot * kc_slot_stride
        v_rows = page * vc_block_stride + slot * vc_slot_stride
    else:
        page = tl.load(
            block_table_row + offs_n // block_size, mask=offs_n < context_len, other=0
        ).to(tl.int64)
        slot = offs_n % block_size
        k_rows = page * kc_block_stride + slot * kc_slot_stride
        v_rows = page * vc_block_stride + slot * vc_slot_stride
    k_ptrs = key_cache_ptr + kv_head_offset + k_rows[:, None] + offs_d[None, :]
    v_ptrs = value_cache_ptr + kv_head_offset + v_rows[:, None] + offs_d[None, :]
    kv_mask = (offs_n[:, None] < context_len) & (offs_d[None, :] < HEAD_DIM)
    if MASK or BLOCK_D != HEAD_DIM:
        k = tl.load(k_ptrs, mask=kv_mask, other=0.0)
    else:  # interior tile: unmasked loads vectorise best
        k = tl.load(k_ptrs)
    if DOT_FP32:
        qk = tl.dot(q.to(tl.float32), tl.trans(k.to(tl.float32))) * qk_scale
    elif q.dtype == tl.float32:  # fp32 models (tests, fixtures) get exact fp32, not tf32
        qk = tl.dot(q, tl.trans(k), input_precision="ieee") * qk_scale
    else:
        qk = tl.dot(q, tl.trans(k)) * qk_scale  # [BLOCK_M, BLOCK_N], log2 domain
    if SOFTCAP:
        qk = _tanh(qk) * softcap_log2
    if MASK:
        visible = offs_n[None, :] < context_len
        if CAUSAL:
            visible = visible & (offs_n[None, :] <= row_pos[:, None])
        if WINDOW:
            visible = visible & (offs_n[None, :] > row_pos[:, None] - window)
        qk = tl.where(visible, qk, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(qk, axis=1))
    p = tl.exp2(qk - m_new[:, None])
    alpha = tl.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, axis=1)
    if MASK or BLOCK_D != HEAD_DIM:
        v = tl.load(v_ptrs, mask=kv_mask, other=0.0)
    else:
        v = tl.load(v_ptrs)
    if DOT_FP32:
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype).to(tl.float32), v.to(tl.float32))
    elif v.dtype == tl.float32:
        acc = acc * alpha[:, None] + tl.dot(p, v, input_precision="ieee")
    else:
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return acc, m_new, l_i


@triton.jit
def _attend_range(
    acc, m_i, l_i, q, key_cache_ptr, value_cache_ptr, block_table_row, start, full_end, end,
    kv_head_offset, kc_block_stride, kc_slot_stride, vc_block_stride, vc_slot_stride,
    block_size, context_len, row_pos, qk_scale, softcap_log2, window,
    CAUSAL: tl.constexpr, PAGE_ALIGNED: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
    DOT_FP32: tl.constexpr, SOFTCAP: tl.constexpr, WINDOW: tl.constexpr,
):  # fmt: skip
    """Online softmax over keys [start, end) in BLOCK_N tiles: the tiles below ``full_end``
    need no mask (every key exists and, when causal, is visible to every row), the rest pay
    for it. Inlined by Triton, so each kernel compiles to the same two loops it would spell
    out itself. With ``WINDOW`` every tile is masked (a tile's keys can leave some rows'
    window), which costs one select per score and only on windowed layers."""
    if WINDOW:
        full_end = start
    for start_n in range(start, full_end, BLOCK_N):
        acc, m_i, l_i = _attend_tile(
            acc, m_i, l_i, q, key_cache_ptr, value_cache_ptr, block_table_row, start_n,
            kv_head_offset, kc_block_stride, kc_slot_stride, vc_block_stride, vc_slot_stride,
            block_size, context_len, row_pos, qk_scale, softcap_log2, window,
            False, CAUSAL, PAGE_ALIGNED, HEAD_DIM, BLOCK_D, BLOCK_N, DOT_FP32, SOFTCAP, WINDOW,
        )  # fmt: skip
    for start_n in range(full_end, end, BLOCK_N):
        acc, m_i, l_i = _attend_tile(
            acc, m_i, l_i, q, key_cache_ptr, value_cache_ptr, block_table_row, start_n,
            kv_head_offset, kc_block_stride, kc_slot_stride, vc_block_stride, vc_slot_stride,
            block_size, context_len, row_pos, qk_scale, softcap_log2, window,
            True, CAUSAL, PAGE_ALIGNED, HEAD_DIM, BLOCK_D, BLOCK_N, DOT_FP32, SOFTCAP, WINDOW,
        )  # fmt: skip
    return acc, m_i, l_i


@triton.jit
def _paged_attention_kernel(
    q_ptr, key_cache_ptr, value_cache_ptr, out_ptr,
    block_tables_ptr, query_start_loc_ptr, seq_lens_ptr,
    q_token_stride, q_head_stride, o_token_stride, o_head_stride,
    kc_block_stride, kc_slot_stride, kc_head_stride,
    vc_block_stride, vc_slot_stride, vc_head_stride,
    block_table_stride, num_seqs, block_size, qk_scale, softcap_log2, window,
    GROUP: tl.constexpr, CAUSAL: tl.constexpr, PAGE_ALIGNED: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr,
    DOT_FP32: tl.constexpr, SOFTCAP: tl.constexpr, WINDOW: tl.constexpr,
):  # fmt: skip
    kv_head = tl.program_id(0)  # fastest-varying: all heads of one query block launch together
    program = tl.program_id(1)
    seq = _find_sequence(query_start_loc_ptr, num_seqs, program, BLOCK_Q)
    q_start = tl.load(query_start_loc_ptr + seq)
    q_len = tl.load(query_start_loc_ptr + seq + 1) - q_start
    num_q_blocks = tl.cdiv(q_len, BLOCK_Q)
    local = program - (q_start // BLOCK_Q + seq)
    if local >= num_q_blocks:
        return
    # Last query blocks first: under a causal mask they see the most keys, and starting the
    # longest programs first shortens the tail of the launch.
    q_block = num_q_blocks - 1 - local
    context_len = tl.load(seq_lens_ptr + seq)
    prefix_len = context_len - q_len  # keys already cached before this step's tokens

    rows = tl.arange(0, BLOCK_M)
    q_idx = q_block * BLOCK_Q + rows // GROUP  # query token within the sequence
    head = kv_head * GROUP + rows % GROUP
    row_valid = (rows < BLOCK_Q * GROUP) & (q_idx < q_len)
    row_pos = prefix_len + q_idx
    offs_d = tl.arange(0, BLOCK_D)
    q_rows = (q_start + q_idx).to(tl.int64)
    q_mask = row_valid[:, None]
    if BLOCK_D != HEAD_DIM:
        q_mask = q_mask & (offs_d[None, :] < HEAD_DIM)
    q = tl.load(
        q_ptr + q_rows[:, None] * q_token_stride + head[:, None] * q_head_stride + offs_d[None, :],
        mask=q_mask,
        other=0.0,
    )

    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)  # finite: fully masked rows stay NaN-free
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    block_table_row = block_tables_ptr + seq.to(tl.int64) * block_table_stride
    kv_head_offset = kv_head.to(tl.int64) * kc_head_stride
    if CAUSAL:
        first_pos = prefix_len + q_block * BLOCK_Q  # every row sees keys <= first_pos
        last_pos = tl.minimum(prefix_len + (q_block + 1) * BLOCK_Q, context_len) - 1
        full_end = ((first_pos + 1) // BLOCK_N) * BLOCK_N
        end = last_pos + 1
    else:
        full_end = (context_len // BLOCK_N) * BLOCK_N
        end = context_len
    start = 0
    if WINDOW:  # (causal only) the first row's window starts here; earlier tiles are skipped
        start = (tl.maximum(first_pos - window + 1, 0) // BLOCK_N) * BLOCK_N
    acc, m_i, l_i = _attend_range(
        acc, m_i, l_i, q, key_cache_ptr, value_cache_ptr, block_table_row, start, full_end, end,
        kv_head_offset, kc_block_stride, kc_slot_stride, vc_block_stride, vc_slot_stride,
        block_size, context_len, row_pos, qk_scale, softcap_log2, window,
        CAUSAL, PAGE_ALIGNED, HEAD_DIM, BLOCK_D, BLOCK_N, DOT_FP32, SOFTCAP, WINDOW,
    )  # fmt: skip
    l_safe = tl.where(l_i > 0.0, l_i, 1.0)
    out = acc / l_safe[:, None]
    tl.store(
        out_ptr
        + q_rows[:, None] * o_token_stride
        + head[:, None] * o_head_stride
        + offs_d[None, :],
        out.to(out_ptr.dtype.element_ty),
        mask=q_mask,
    )


# ----------------------------------------------------------------------------- launcher


def _prefill_config(
    head_dim: int, group: int, interpret: bool, fp32: bool = False
) -> dict[str, int]:
    """Tile sizes. GPU: 128x64 tiles, one warpgroup, 3 stages. H100, 4096-token causal prefill,
    32/8 heads, d128, bf16, block_size 16: 438 us (313 TFLOP/s, 1.13x SDPA flash) vs 486 us with
    8 warps, 498 us with 128x32, 572 us with 64x64. fp32 inputs (tests, fp32 fixtures) keep the
    8 warps that passed the GPU test run: with 4, their 128x128 fp32 Q tile spills, and one test
    of a 14-process run hit a CUDA out-of-memory at launch. Interpreter: tiny tiles, since every
    element costs a numpy op."""
    if interpret:
        block_m = max(16, triton.next_power_of_2(group))
        return {"BLOCK_M": block_m, "BLOCK_N": 16, "num_warps": 1, "num_stages": 1}
    block_m = max(128 if head_dim <= 128 else 64, triton.next_power_of_2(group))
    return {
        "BLOCK_M": block_m,
        "BLOCK_N": 64,
        "num_warps": 8 if fp32 or head_dim > 128 else 4,
        "num_stages": 3 if head_dim <= 128 else 2,
    }


def _launch(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    causal: bool,
    out: torch.Tensor,
    config: dict[str, int] | None = None,
    softcap: float | None = None,
    window: int | None = None,
) -> torch.Tensor:
    num_tokens, num_heads, head_dim = query.shape
    num_kv_heads = key_cache.shape[2]
    block_size = key_cache.shape[1]
    num_seqs = seq_lens.shape[0]
    if num_tokens == 0 or num_seqs == 0:
        return out
    strides = _kernel_strides(query, out, key_cache, value_cache, block_tables)
    group = num_heads // num_kv_heads
    fp32 = query.dtype == torch.float32
    cfg = dict(config or _prefill_config(head_dim, group, query.device.type == "cpu", fp32))
    block_m, block_n = cfg.pop("BLOCK_M"), cfg.pop("BLOCK_N")
    block_q = block_m // group
    # grid bound: sum_s ceil(q_len_s / BLOCK_Q) <= num_tokens // BLOCK_Q + num_seqs
    grid = (num_kv_heads, num_tokens // block_q + num_seqs)
    _paged_attention_kernel[grid](
        query, key_cache, value_cache, out, block_tables, query_start_loc, seq_lens,
        *strides, num_seqs, block_size, *score_args(scale, softcap), window or 0,
        GROUP=group, CAUSAL=causal, PAGE_ALIGNED=block_size % block_n == 0,
        HEAD_DIM=head_dim, BLOCK_D=triton.next_power_of_2(head_dim),
        BLOCK_M=block_m, BLOCK_Q=block_q, BLOCK_N=block_n,
        DOT_FP32=query.device.type == "cpu", SOFTCAP=softcap is not None,
        WINDOW=window is not None, **cfg,
    )  # fmt: skip
    return out


def score_args(scale: float, softcap: float | None) -> tuple[float, float]:
    """(qk_scale, softcap_log2) for the kernels: the scores leave the tile in the log2 domain
    of the exp2 softmax, the cap (when any) applied before that change of base."""
    if softcap is None:
        return scale * _LOG2E, 0.0
    return scale / softcap, softcap * _LOG2E


# ----------------------------------------------------------------------------- reference


def reference(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    *,
    causal: bool = True,
    out: torch.Tensor | None = None,
    query_chunk: int = 512,
    softcap: float | None = None,
    window: int | None = None,
) -> torch.Tensor:
    """Plain-torch paged attention in fp32: gather each sequence's K/V through its block table,
    then masked softmax(QK^T)V per GQA group. Loops over sequences on the host (it is the CPU
    path and the test oracle, not a GPU hot path); queries go in chunks to bound memory.
    ``softcap``: scores become softcap * tanh(score / softcap); ``window`` (causal only): a
    query at position p sees keys at positions > p - window."""
    _check_options(causal, softcap, window)
    num_heads, head_dim = query.shape[1:]
    num_kv_heads, block_size = key_cache.shape[2], key_cache.shape[1]
    group = num_heads // num_kv_heads
    out = torch.empty_like(query) if out is None else out
    starts = query_start_loc.tolist()
    lens = seq_lens.tolist()
    for s, ctx in enumerate(lens):
        q0, q1 = starts[s], starts[s + 1]
        if q1 == q0:
            continue
        num_blocks = -(-ctx // block_size)
        pages = block_tables[s, :num_blocks].long()
        k = key_cache[pages].reshape(-1, num_kv_heads, head_dim)[:ctx].float()
        v = value_cache[pages].reshape(-1, num_kv_heads, head_dim)[:ctx].float()
        for c0 in range(q0, q1, query_chunk):
            c1 = min(q1, c0 + query_chunk)
            q = query[c0:c1].float().view(c1 - c0, num_kv_heads, group, head_dim)
            scores = torch.einsum("qhgd,khd->hgqk", q, k) * scale
            if softcap is not None:
                scores = torch.tanh(scores / softcap) * softcap
            if causal:
                q_pos = torch.arange(ctx - (q1 - c0), ctx - (q1 - c1), device=query.device)
                k_pos = torch.arange(ctx, device=query.device)
                hidden = k_pos[None, :] > q_pos[:, None]
                if window is not None:
                    hidden |= k_pos[None, :] <= q_pos[:, None] - window
                scores.masked_fill_(hidden, float("-inf"))
            o = torch.einsum("hgqk,khd->qhgd", scores.softmax(-1), v)
            out[c0:c1] = o.reshape(c1 - c0, num_heads, head_dim).to(out.dtype)
    return out


# ----------------------------------------------------------------------------- public


def _kernel_strides(
    query: torch.Tensor,
    out: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
) -> tuple[int, ...]:
    """The strides both attention kernels take, in their argument order: query and output
    (token, head), each cache (block, slot, head), the block table's row.

    The kernels index both caches' heads with one offset (one fewer register per program), so
    a value cache laid out differently is refused rather than read at the wrong rows."""
    if key_cache.stride(2) != value_cache.stride(2):
        raise ValueError(
            "the Triton attention kernels need key_cache and value_cache with the same head "
            f"stride, got {key_cache.stride(2)} and {value_cache.stride(2)}; pass both caches in "
            "the same layout (e.g. .contiguous())"
        )
    return (
        query.stride(0), query.stride(1), out.stride(0), out.stride(1),
        key_cache.stride(0), key_cache.stride(1), key_cache.stride(2),
        value_cache.stride(0), value_cache.stride(1), value_cache.stride(2),
        block_tables.stride(0),
    )  # fmt: skip


def _check_options(causal: bool, softcap: float | None, window: int | None) -> None:
    if softcap is not None and not softcap > 0:
        raise ValueError(f"softcap must be positive, got {softcap}")
    if window is not None:
        if window < 1:
            raise ValueError(f"window must be at least 1, got {window}")
        if not causal:
            raise ValueError("a sliding window applies to causal attention only")


def _check(query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor) -> None:
    if query.dim() != 3 or key_cache.dim() != 4 or value_cache.shape != key_cache.shape:
        raise ValueError(
            "query must be [num_tokens, num_heads, head_dim] and both caches "
            "[num_blocks, block_size, num_kv_heads, head_dim]"
        )
    if query.shape[2] != key_cache.shape[3]:
        raise ValueError(f"head_dim {query.shape[2]} differs from the cache's {key_cache.shape[3]}")
    if query.shape[1] % key_cache.shape[2]:
        raise ValueError(
            f"num_heads {query.shape[1]} must be a multiple of num_kv_heads {key_cache.shape[2]}"
        )


def paged_attention(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    *,
    causal: bool = True,
    max_query_len: int | None = None,
    max_seq_len: int | None = None,
    out: torch.Tensor | None = None,
    softcap: float | None = None,
    window: int | None = None,
) -> torch.Tensor:
    """Attention of a ragged batch's queries [num_tokens, num_heads, head_dim] over the paged
    cache; returns [num_tokens, num_heads, head_dim] (written into ``out`` when given).

    ``block_tables`` [num_seqs, max_blocks] int32, ``query_start_loc`` [num_seqs + 1] int32
    (cumulative query lengths), ``seq_lens`` [num_seqs] int32 (context incl. this step's
    tokens). ``max_query_len``/``max_seq_len`` are optional host ints: when ``max_query_len``
    is 1 the batch is pure decode and goes to the split-K decode kernel. ``softcap`` caps the
    scores at ±softcap through tanh; ``window`` (causal only) is a sliding attention window:
    the query and the ``window - 1`` keys before it. Both default off.
    """
    _check(query, key_cache, value_cache)
    _check_options(causal, softcap, window)
    if out is None:
        out = torch.empty_like(query)
    if not use_triton(query):
        return reference(
            query, key_cache, value_cache, block_tables, query_start_loc, seq_lens, scale,
            causal=causal, out=out, softcap=softcap, window=window,
        )  # fmt: skip
    if max_query_len == 1 and query.shape[0] == seq_lens.shape[0]:
        from mono_llm.kernels.decode_attention import paged_decode_attention

        return paged_decode_attention(
            query, key_cache, value_cache, block_tables, seq_lens, scale,
            max_seq_len=max_seq_len, out=out, softcap=softcap, window=window,
        )  # fmt: skip
    if query.stride(-1) != 1:
        query = query.contiguous()
    return _launch(
        query, key_cache, value_cache, block_tables, query_start_loc, seq_lens, scale, causal,
        out, softcap=softcap, window=window,
    )  # fmt: skip


def attention_flops(
    query_lens: list[int], seq_lens: list[int], num_heads: int, head_dim: int
) -> float:
    """Useful FLOPs of causal paged attention (2 matmuls x 2 FLOP/MAC over visible pairs)."""
    pairs = sum(q * (s - q) + q * (q + 1) / 2 for q, s in zip(query_lens, seq_lens))
    return 4.0 * pairs * num_heads * head_dim


__all__ = ["attention_flops", "paged_attention", "reference"]
