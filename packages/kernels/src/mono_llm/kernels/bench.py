"""Micro-benchmark of every kernel against the roofline and the best torch equivalent.

    python -m mono_llm.kernels.bench --out results.json [--markdown results.md] [--sweep]

For each op: the kernel's median time (``triton.testing.do_bench``, L2 flushed between runs),
achieved GB/s (bandwidth-bound ops, decode attention) or TFLOP/s (prefill attention), the
ratio to the measured device-to-device copy bandwidth (the practical roofline) and to the card's
nominal HBM bandwidth, and the speedup over torch: eager and ``torch.compile`` of the reference
(or of the best plain-torch formulation), and SDPA with the flash backend for attention.
``--sweep`` also times a grid of tile/warp/split configurations and records the best, which is
how the launchers' defaults were chosen. Needs a CUDA device.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from mono_llm.kernels import (
    activation,
    attention,
    decode_attention,
    kv_cache,
    norm,
    rotary,
    token_bitmask,
)
from mono_llm.kernels import reference as ref

# Nominal HBM bandwidth by card name (vendor datasheets), for the "% of peak" column.
_NOMINAL_HBM = {
    "H100 PCIe": 2.0e12,
    "H100 NVL": 3.9e12,
    "H100": 3.35e12,
    "H200": 4.8e12,
    "A100": 2.0e12,
}


def _bench(fn: Callable[[], Any], rep: int = 100) -> float:
    """Median milliseconds of ``fn`` (CUDA events, L2 flushed, warm-up excluded)."""
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=10, rep=rep, return_mode="median"))


def _compiled(fn: Callable[..., Any]) -> Callable[..., Any] | None:
    try:
        return torch.compile(fn, dynamic=False)
    except Exception:  # pragma: no cover - compile availability depends on the machine
        return None


def _time_baseline(fn: Callable[[], Any] | None) -> float | None:
    if fn is None:
        return None
    try:
        return _bench(fn)
    except Exception as exc:  # a baseline that fails to build is reported, not fatal
        print(f"    baseline failed: {type(exc).__name__}: {str(exc)[:200]}", file=sys.stderr)
        return None


class Bench:
    """Collects results; each ``case`` records one op at one shape."""

    def __init__(self, sweep: bool) -> None:
        self.sweep = sweep
        self.device = torch.device("cuda")
        props = torch.cuda.get_device_properties(self.device)
        self.card = props.name
        self.nominal = next((bw for key, bw in _NOMINAL_HBM.items() if key in self.card), None)
        self.copy_bw = self._copy_bandwidth()
        self.results: list[dict[str, Any]] = []
        self.sweeps: dict[str, list[dict[str, Any]]] = {}

    def _copy_bandwidth(self) -> float:
        """Device-to-device copy of 1 GiB, counting bytes read and written."""
        src = torch.randint(-(2**15), 2**15 - 1, (1 << 29,), dtype=torch.int16, device=self.device)
        dst = torch.empty_like(src)
        ms = _bench(lambda: dst.copy_(src))
        return 2 * src.numel() * src.element_size() / (ms * 1e-3)

    def case(
        self,
        op: str,
        shape: str,
        kernel: Callable[[], Any],
        *,
        bytes_moved: float | None = None,
        flops: float | None = None,
        baselines: dict[str, Callable[[], Any] | None],
        error: float | None = None,
        note: str = "",
    ) -> dict[str, Any]:
        ms = _bench(kernel)
        row: dict[str, Any] = {"op": op, "shape": shape, "time_us": ms * 1e3, "note": note}
        if bytes_moved is not None:
            gbps = bytes_moved / (ms * 1e-3) / 1e9
            row.update(
                bytes=bytes_moved,
                gb_per_s=gbps,
                pct_of_copy_bw=100 * gbps * 1e9 / self.copy_bw,
                pct_of_hbm_peak=100 * gbps * 1e9 / self.nominal if self.nominal else None,
            )
        if flops is not None:
            row.update(flops=flops, tflop_per_s=flops / (ms * 1e-3) / 1e12)
        base_us = {name: _time_baseline(fn) for name, fn in baselines.items()}
        row["baselines_us"] = {k: (v * 1e3 if v is not None else None) for k, v in base_us.items()}
        valid = [v for v in base_us.values() if v is not None]
        row["speedup_vs_best_torch"] = (min(valid) / ms) if valid else None
        row["max_abs_err_vs_reference"] = error
        self.results.append(row)
        print(_format_row(row), flush=True)
        return row

    def run_sweep(
        self,
        name: str,
        configs: list[dict[str, Any]],
        make: Callable[[dict[str, Any]], Callable[[], Any]],
    ) -> dict[str, Any] | None:
        if not self.sweep:
            return None
        rows = []
        for cfg in configs:
            try:
                fn = make(cfg)
                fn()
                torch.cuda.synchronize()
                rows.append({**cfg, "time_us": _bench(fn, rep=40) * 1e3})
            except Exception as exc:
                rows.append({**cfg, "error": f"{type(exc).__name__}: {str(exc)[:120]}"})
        ok = [r for r in rows if "time_us" in r]
        ok.sort(key=lambda r: r["time_us"])
        self.sweeps[name] = ok + [r for r in rows if "time_us" not in r]
        if ok:
            print(f"  sweep {name}: best {ok[0]} (of {len(rows)})", flush=True)
            for r in ok[:5]:
                print(f"    {r}", flush=True)
        return ok[0] if ok else None


def _format_row(row: dict[str, Any]) -> str:
    parts = [f"{row['op']:<24} {row['shape']:<34} {row['time_us']:9.1f} us"]
    if "gb_per_s" in row:
        parts.append(f"{row['gb_per_s']:7.0f} GB/s ({row['pct_of_copy_bw']:5.1f}% copy)")
    if "tflop_per_s" in row:
        parts.append(f"{row['tflop_per_s']:6.1f} TFLOP/s")
    if row.get("speedup_vs_best_torch"):
        parts.append(f"x{row['speedup_vs_best_torch']:.2f} vs best torch")
    return "  ".join(parts)


def _err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


# ----------------------------------------------------------------------------- cases


def bench_elementwise(
    b: Bench, tokens: int, hidden: int, intermediate: int, dtype: torch.dtype
) -> None:
    dev = b.device
    x = torch.randn(tokens, hidden, dtype=dtype, device=dev)
    res = torch.randn_like(x)
    w = torch.rand(hidden, dtype=dtype, device=dev)
    n = x.numel() * x.element_size()
    shape = f"{tokens}x{hidden} {str(dtype)[6:]}"
    b.case(
        "rms_norm", shape, lambda: norm._launch_rms_norm(x, w, 1e-6), bytes_moved=2 * n,
        baselines={"eager": lambda: ref.rms_norm(x, w, 1e-6), "compiled": _wrap(_compiled(ref.rms_norm), x, w, 1e-6)},
        error=_err(norm._launch_rms_norm(x, w, 1e-6), ref.rms_norm(x, w, 1e-6)),
    )  # fmt: skip
    b.run_sweep("rms_norm", [{"num_warps": nw} for nw in (2, 4, 8, 16, 32)],
                lambda c: lambda: norm._launch_rms_norm(x, w, 1e-6, **c))  # fmt: skip
    b.case(
        "fused_add_rms_norm", shape, lambda: norm._launch_fused_add_rms_norm(x, res, w, 1e-6),
        bytes_moved=4 * n,
        baselines={
            "eager": lambda: ref.fused_add_rms_norm(x, res, w, 1e-6),
            "compiled": _wrap(_compiled(ref.fused_add_rms_norm), x, res, w, 1e-6),
            "two_kernels": lambda: norm._launch_rms_norm(x + res, w, 1e-6),
        },
        error=_err(norm._launch_fused_add_rms_norm(x, res, w, 1e-6)[0], ref.fused_add_rms_norm(x, res, w, 1e-6)[0]),
    )  # fmt: skip
    b.run_sweep("fused_add_rms_norm", [{"num_warps": nw} for nw in (2, 4, 8, 16, 32)],
                lambda c: lambda: norm._launch_fused_add_rms_norm(x, res, w, 1e-6, **c))  # fmt: skip

    gu = torch.randn(tokens, 2 * intermediate, dtype=dtype, device=dev)
    n_gu = gu.numel() * gu.element_size()
    b.case(
        "silu_and_mul", f"{tokens}x2*{intermediate} {str(dtype)[6:]}", lambda: activation._launch(gu, 0),
        bytes_moved=1.5 * n_gu,
        baselines={"eager": lambda: ref.silu_and_mul(gu), "eager_native": lambda: F.silu(gu[:, :intermediate]) * gu[:, intermediate:],
                   "compiled": _wrap(_compiled(ref.silu_and_mul), gu)},
        error=_err(activation._launch(gu, 0), ref.silu_and_mul(gu)),
    )  # fmt: skip
    b.run_sweep("silu_and_mul", [{"block": bl, "num_warps": nw} for bl in (1024, 2048, 4096) for nw in (4, 8)],
                lambda c: lambda: activation._launch(gu, 0, **c))  # fmt: skip
    b.case(
        "gelu_and_mul", f"{tokens}x2*{intermediate} {str(dtype)[6:]}", lambda: activation._launch(gu, 2),
        bytes_moved=1.5 * n_gu,
        baselines={"eager": lambda: ref.gelu_and_mul(gu, "tanh"), "compiled": _wrap(_compiled(ref.gelu_and_mul), gu, "tanh")},
        error=_err(activation._launch(gu, 2), ref.gelu_and_mul(gu, "tanh")), note="tanh approximation",
    )  # fmt: skip


def _wrap(fn: Callable[..., Any] | None, *args: Any) -> Callable[[], Any] | None:
    return None if fn is None else (lambda: fn(*args))


def bench_rotary_and_cache(
    b: Bench, tokens: int, heads: int, kv_heads: int, head_dim: int, dtype: torch.dtype
) -> None:
    dev = b.device
    q = torch.randn(tokens, heads, head_dim, dtype=dtype, device=dev)
    k = torch.randn(tokens, kv_heads, head_dim, dtype=dtype, device=dev)
    cache = rotary.rope_cos_sin_cache(head_dim, 8192, 500000.0, device=dev)
    pos = torch.randint(0, 8192, (tokens,), device=dev)
    n = (q.numel() + k.numel()) * q.element_size()
    shape = f"T{tokens} {heads}/{kv_heads}h d{head_dim} {str(dtype)[6:]}"
    b.case(
        "rotary (neox)", shape, lambda: rotary._launch_rotary(pos, q, k, cache, True),
        bytes_moved=2 * n + tokens * (head_dim * 4 + 8),
        baselines={"eager": lambda: ref.apply_rotary_embedding(pos, q, k, cache, True),
                   "compiled": _wrap(_compiled(ref.apply_rotary_embedding), pos, q, k, cache, True)},
        error=max(_err(a, c) for a, c in zip(rotary._launch_rotary(pos, q, k, cache, True), ref.apply_rotary_embedding(pos, q, k, cache, True))),
    )  # fmt: skip
    b.run_sweep("rotary", [{"num_warps": nw} for nw in (1, 2, 4, 8, 16)],
                lambda c: lambda: rotary._launch_rotary(pos, q, k, cache, True, **c))  # fmt: skip

    block_size = 16
    num_blocks = tokens // block_size + 8
    kc = torch.zeros(num_blocks, block_size, kv_heads, head_dim, dtype=dtype, device=dev)
    vc = torch.zeros_like(kc)
    v = torch.randn_like(k)
    slots = torch.randperm(num_blocks * block_size, device=dev)[:tokens]
    flat_k, flat_v = kc.view(-1, kv_heads, head_dim), vc.view(-1, kv_heads, head_dim)

    def torch_write() -> None:
        flat_k.index_copy_(0, slots, k)
        flat_v.index_copy_(0, slots, v)

    kv_bytes = 4 * k.numel() * k.element_size() + tokens * 8
    b.case(
        "write_kv_cache", f"T{tokens} {kv_heads}kvh d{head_dim} bs{block_size} {str(dtype)[6:]}",
        lambda: kv_cache._launch(k, v, kc, vc, slots), bytes_moved=kv_bytes,
        baselines={"eager_index_copy": torch_write, "compiled_index_copy": _wrap(_compiled(torch_write))},
    )  # fmt: skip
    b.run_sweep("write_kv_cache", [{"num_warps": nw, "block_t": bt} for nw in (1, 2, 4, 8) for bt in (1, 2, 4, 8)],
                lambda c: lambda: kv_cache._launch(k, v, kc, vc, slots, **c))  # fmt: skip


def _paged_cache(
    num_seqs: int,
    ctx: int,
    kv_heads: int,
    head_dim: int,
    block_size: int,
    dtype: torch.dtype,
    dev: torch.device,
):
    blocks_per_seq = math.ceil(ctx / block_size)
    num_blocks = num_seqs * blocks_per_seq
    kc = torch.randn(num_blocks, block_size, kv_heads, head_dim, dtype=dtype, device=dev)
    vc = torch.randn_like(kc)
    tables = torch.randperm(num_blocks, device=dev).to(torch.int32).view(num_seqs, blocks_per_seq)
    return kc, vc, tables


def _sdpa_flash(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool
) -> Callable[[], Any] | None:
    """SDPA restricted to the flash backend; GQA natively if supported, else K/V expanded."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    group = q.shape[1] // k.shape[1]

    def native() -> Any:
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)

    try:
        native()
        return native
    except Exception:
        ke, ve = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)

        def expanded() -> Any:
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                return F.scaled_dot_product_attention(q, ke, ve, is_causal=causal)

        expanded()
        return expanded


def bench_decode(
    b: Bench,
    batch: int,
    ctx: int,
    heads: int,
    kv_heads: int,
    head_dim: int,
    dtype: torch.dtype,
    block_size: int,
    sweep: bool = True,
) -> None:
    dev = b.device
    kc, vc, tables = _paged_cache(batch, ctx, kv_heads, head_dim, block_size, dtype, dev)
    q = torch.randn(batch, heads, head_dim, dtype=dtype, device=dev)
    seq_lens = torch.full((batch,), ctx, dtype=torch.int32, device=dev)
    scale = head_dim**-0.5
    out = torch.empty_like(q)
    kv_bytes = (
        2 * batch * ctx * kv_heads * head_dim * q.element_size() + 2 * q.numel() * q.element_size()
    )

    def run(cfg: dict[str, Any] | None = None, splits: int | None = None) -> Callable[[], Any]:
        return lambda: decode_attention._launch(
            q, kc, vc, tables, seq_lens, scale, ctx, splits, out, cfg
        )

    # contiguous copies for the torch baseline: [B, H, 1, D] against [B, Hkv, ctx, D]
    flat = tables.long()
    kd = kc[flat].reshape(batch, -1, kv_heads, head_dim)[:, :ctx].transpose(1, 2).contiguous()
    vd = vc[flat].reshape(batch, -1, kv_heads, head_dim)[:, :ctx].transpose(1, 2).contiguous()
    qd = q[:, :, None, :]
    got = run()()
    want = ref.paged_decode_attention(
        q[:4].float(), kc.float(), vc.float(), tables[:4], seq_lens[:4], scale
    )
    shape = f"B{batch} ctx{ctx} {heads}/{kv_heads}h d{head_dim} bs{block_size} {str(dtype)[6:]}"
    splits = decode_attention.choose_num_splits(batch, kv_heads, ctx, dev, 64)
    b.case(
        "paged_decode_attention", shape, run(), bytes_moved=kv_bytes,
        baselines={"sdpa_flash_contiguous": _sdpa_flash(qd, kd, vd, False)},
        error=_err(got[:4], want), note=f"num_splits={splits}",
    )  # fmt: skip
    if batch * kv_heads >= 128:  # many programs: tiles and stages, few splits
        configs = [  # num_splits is a runtime argument: one compile serves every split count
            {"BLOCK_N": bn, "num_warps": 4, "num_stages": st, "splits": sp}
            for bn in (32, 64) for st in (2, 3) for sp in (1, 2)
        ]  # fmt: skip
    else:  # few programs: splits, and bytes in flight per program
        configs = [
            {"BLOCK_N": bn, "num_warps": nw, "num_stages": st, "splits": sp}
            for bn in (64, 128) for nw in (4, 8) for st in (2, 3, 4) for sp in (16, 24, 32)
        ]  # fmt: skip

    def make(c: dict[str, Any]) -> Callable[[], Any]:
        cfg = {k: v for k, v in c.items() if k != "splits"}
        return run(cfg, c["splits"])

    if not sweep:
        return

    best = b.run_sweep(f"decode B{batch} ctx{ctx} bs{block_size}", configs, make)
    if best:
        us = best["time_us"]
        print(f"    best decode {kv_bytes / (us * 1e-6) / 1e9:.0f} GB/s", flush=True)


def bench_prefill(
    b: Bench,
    tokens: int,
    heads: int,
    kv_heads: int,
    head_dim: int,
    dtype: torch.dtype,
    block_size: int,
) -> None:
    dev = b.device
    kc, vc, tables = _paged_cache(1, tokens, kv_heads, head_dim, block_size, dtype, dev)
    q = torch.randn(tokens, heads, head_dim, dtype=dtype, device=dev)
    qsl = torch.tensor([0, tokens], dtype=torch.int32, device=dev)
    seq_lens = torch.tensor([tokens], dtype=torch.int32, device=dev)
    scale = head_dim**-0.5
    out = torch.empty_like(q)

    def run(cfg: dict[str, Any] | None = None) -> Callable[[], Any]:
        return lambda: attention._launch(q, kc, vc, tables, qsl, seq_lens, scale, True, out, cfg)

    flat = tables.long()
    kd = kc[flat].reshape(1, -1, kv_heads, head_dim)[:, :tokens].transpose(1, 2).contiguous()
    vd = vc[flat].reshape(1, -1, kv_heads, head_dim)[:, :tokens].transpose(1, 2).contiguous()
    qd = q.transpose(0, 1)[None].contiguous()
    flops = attention.attention_flops([tokens], [tokens], heads, head_dim)
    got = run()()
    sdpa = _sdpa_flash(qd, kd, vd, True)
    err = _err(got, sdpa()[0].transpose(0, 1)) if sdpa else None
    b.case(
        "paged_attention prefill", f"T{tokens} causal {heads}/{kv_heads}h d{head_dim} bs{block_size} {str(dtype)[6:]}",
        run(), flops=flops, baselines={"sdpa_flash_contiguous": sdpa}, error=err,
    )  # fmt: skip
    # each prefill config is a ~6 s compile on the GPU machine: a short list around the default
    configs = [
        {"BLOCK_M": bm, "BLOCK_N": bn, "num_warps": nw, "num_stages": st}
        for bm, bn, nw, st in [
            (128, 64, 4, 3), (128, 64, 4, 2), (128, 64, 4, 4), (128, 128, 4, 2), (128, 128, 4, 3),
            (128, 32, 4, 3), (128, 32, 4, 4), (64, 64, 4, 3), (64, 32, 4, 3), (128, 64, 8, 3),
        ]
    ]  # fmt: skip
    best = b.run_sweep(f"prefill bs{block_size}", configs, run)
    if best:
        print(f"    best prefill {flops / (best['time_us'] * 1e-6) / 1e12:.1f} TFLOP/s", flush=True)


def bench_mixed(b: Bench, dtype: torch.dtype) -> None:
    """A continuous-batching step: one 2048-token prefill chunk after a 2048 prefix + 63 decodes."""
    dev = b.device
    heads, kv_heads, head_dim, block_size = 32, 8, 128, 16
    qlens = [2048] + [1] * 63
    slens = [4096] + [2048] * 63
    kc, vc, tables = _paged_cache(64, 4096, kv_heads, head_dim, block_size, dtype, dev)
    q = torch.randn(sum(qlens), heads, head_dim, dtype=dtype, device=dev)
    qsl = torch.tensor([0, *torch.tensor(qlens).cumsum(0).tolist()], dtype=torch.int32, device=dev)
    seq_lens = torch.tensor(slens, dtype=torch.int32, device=dev)
    out = torch.empty_like(q)
    flops = attention.attention_flops(qlens, slens, heads, head_dim)
    b.case(
        "paged_attention mixed", "1x2048 chunk@4096 + 63 decodes@2048", lambda: attention._launch(
            q, kc, vc, tables, qsl, seq_lens, head_dim**-0.5, True, out),
        flops=flops, baselines={},
    )  # fmt: skip


def bench_gemma2(b: Bench, dtype: torch.dtype) -> None:
    """Gemma-2-9B attention (16/8 heads, d256): soft-capped scores (cap 50) on a full layer and
    with a 4096-token window on a sliding layer, each beside the kernel without the options."""
    dev, heads, kv_heads, head_dim, bs, cap, window = b.device, 16, 8, 256, 16, 50.0, 4096
    scale = 256**-0.5
    for tokens in (4096, 8192):
        kc, vc, tables = _paged_cache(1, tokens, kv_heads, head_dim, bs, dtype, dev)
        q = torch.randn(tokens, heads, head_dim, dtype=dtype, device=dev)
        qsl = torch.tensor([0, tokens], dtype=torch.int32, device=dev)
        lens = torch.tensor([tokens], dtype=torch.int32, device=dev)
        out = torch.empty_like(q)
        args = (q, kc, vc, tables, qsl, lens, scale, True, out)
        for win in (None, window):
            got = attention._launch(*args, softcap=cap, window=win)
            want = ref.paged_attention(*args[:7], softcap=cap, window=win)
            w = min(win or tokens, tokens)
            pairs = w * (w + 1) / 2 + (tokens - w) * w  # query p sees min(p + 1, w) keys
            b.case(
                "paged_attention prefill gemma2", f"T{tokens} softcap{cap:g} window{win} d256 {str(dtype)[6:]}",
                lambda a=args, win=win: attention._launch(*a, softcap=cap, window=win),
                flops=4.0 * pairs * heads * head_dim,
                baselines={"no_softcap_no_window": lambda a=args: attention._launch(*a)},
                error=_err(got, want), note="flops: the keys inside the window",
            )  # fmt: skip
    kc, vc, tables = _paged_cache(64, 8192, kv_heads, head_dim, bs, dtype, dev)
    q = torch.randn(64, heads, head_dim, dtype=dtype, device=dev)
    lens = torch.full((64,), 8192, dtype=torch.int32, device=dev)
    out = torch.empty_like(q)
    args = (q, kc, vc, tables, lens, scale, 8192, None, out)
    got = decode_attention._launch(*args, softcap=cap, window=window)
    want = ref.paged_decode_attention(*args[:6], softcap=cap, window=window)
    b.case(
        "paged_decode_attention gemma2", f"B64 ctx8192 softcap{cap:g} window{window} d256 {str(dtype)[6:]}",
        lambda: decode_attention._launch(*args, softcap=cap, window=window),
        bytes_moved=2 * 64 * window * kv_heads * head_dim * q.element_size(),
        baselines={"no_softcap_no_window": lambda: decode_attention._launch(*args)},
        error=_err(got, want), note="bytes: the K/V inside the window",
    )  # fmt: skip


def bench_bitmask(b: Bench, batch: int, vocab: int) -> None:
    dev = b.device
    logits = torch.randn(batch, vocab, device=dev)
    words = (vocab + 31) // 32
    bitmask = torch.randint(-(2**31), 2**31 - 1, (batch, words), dtype=torch.int32, device=dev)

    def eager() -> None:
        ref.apply_token_bitmask(logits, bitmask)

    bits = torch.arange(32, device=dev, dtype=torch.int32)

    def torch_fused() -> None:  # the best plain-torch formulation: unpack + masked_fill_
        allowed = ((bitmask[:, :, None] >> bits) & 1).bool().flatten(1)[:, :vocab]
        logits.masked_fill_(~allowed, float("-inf"))

    b.case(
        "apply_token_bitmask", f"{batch}x{vocab} fp32", lambda: token_bitmask._launch(logits, bitmask, None),
        bytes_moved=bitmask.numel() * 4 + logits.numel() * 4 / 2,  # ~half the logits written
        baselines={"eager": eager, "eager_unpack": torch_fused, "compiled": _wrap(_compiled(torch_fused))},
        note="bytes = bitmask read + ~half the logits written",
    )  # fmt: skip


# ----------------------------------------------------------------------------- output


def to_markdown(report: dict[str, Any]) -> str:
    lines = [
        f"Card: {report['card']}; torch {report['torch']}, triton {report['triton']}; "
        f"measured D2D copy {report['copy_bw_gbps']:.0f} GB/s (read+write), nominal HBM "
        f"{(report['nominal_hbm_gbps'] or 0):.0f} GB/s.",
        "",
        "| op | shape | time (us) | GB/s | % copy BW | % HBM peak | TFLOP/s | best torch (us) | speedup | note |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in report["results"]:
        base = {k: v for k, v in r["baselines_us"].items() if v is not None}
        best = min(base.items(), key=lambda kv: kv[1]) if base else None

        def f(v: Any, fmt: str) -> str:
            return format(v, fmt) if v is not None else ""

        lines.append(
            f"| {r['op']} | {r['shape']} | {r['time_us']:.1f} | {f(r.get('gb_per_s'), '.0f')} | "
            f"{f(r.get('pct_of_copy_bw'), '.1f')} | {f(r.get('pct_of_hbm_peak'), '.1f')} | "
            f"{f(r.get('tflop_per_s'), '.1f')} | {f'{best[1]:.1f} ({best[0]})' if best else ''} | "
            f"{f(r.get('speedup_vs_best_torch'), '.2f')} | {r.get('note', '')} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True, help="JSON result file")
    parser.add_argument("--markdown", type=Path, help="also write a markdown table here")
    parser.add_argument("--sweep", action="store_true", help="also time a grid of kernel configs")
    parser.add_argument(
        "--only", default="elementwise,rotary,decode,prefill,mixed,gemma2,bitmask",
        help="comma-separated groups: elementwise,rotary,decode,prefill,mixed,gemma2,bitmask",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("the kernel benchmark needs a CUDA device", file=sys.stderr)
        return 2

    groups = set(args.only.split(","))
    b = Bench(args.sweep)
    print(f"{b.card}: D2D copy {b.copy_bw / 1e9:.0f} GB/s", flush=True)
    dtype = torch.bfloat16
    started = time.time()
    steps: list[tuple[str, Callable[[], None]]] = [
        ("elementwise", lambda: bench_elementwise(b, 8192, 4096, 14336, dtype)),
        ("rotary", lambda: bench_rotary_and_cache(b, 8192, 32, 8, 128, dtype)),
        ("decode", lambda: bench_decode(b, 64, 2048, 32, 8, 128, dtype, 16)),
        ("prefill", lambda: bench_prefill(b, 4096, 32, 8, 128, dtype, 16)),
        ("decode", lambda: bench_decode(b, 1, 32768, 32, 8, 128, dtype, 16)),
        # the same with 64-token cache blocks: one page-table lookup per key tile
        ("decode", lambda: bench_decode(b, 64, 2048, 32, 8, 128, dtype, 64, sweep=False)),
        ("decode", lambda: bench_decode(b, 1, 32768, 32, 8, 128, dtype, 64, sweep=False)),
        ("mixed", lambda: bench_mixed(b, dtype)),
        ("gemma2", lambda: bench_gemma2(b, dtype)),
        ("bitmask", lambda: bench_bitmask(b, 64, 128256)),
    ]
    for group, step in steps:
        if group in groups:
            try:
                step()
            except Exception as exc:  # keep the other measurements when one case breaks
                print(f"{group} failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            _write(args, b, started)  # after every step, so a run cut short keeps what it measured
    print(to_markdown(_write(args, b, started)))
    return 0


def _write(args: argparse.Namespace, b: Bench, started: float) -> dict[str, Any]:
    import triton

    report = {
        "card": b.card,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "python": platform.python_version(),
        "copy_bw_gbps": b.copy_bw / 1e9,
        "nominal_hbm_gbps": b.nominal / 1e9 if b.nominal else None,
        "seconds": time.time() - started,
        "results": b.results,
        "sweeps": b.sweeps,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    if args.markdown:
        args.markdown.write_text(to_markdown(report))
    return report


if __name__ == "__main__":
    sys.exit(main())
