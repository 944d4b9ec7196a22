"""M-RoPE positions (Qwen2-VL): where each prompt token sits in (time, height, width).

Text tokens advance all three axes together, one per token. The tokens of an image (its
merged patch grid of t x h x w, row-major) share the time position where the image starts
and take that start plus their row (height) and column (width) in the grid; the text after
the image resumes at the start plus the grid's largest side. Hence a prompt's positions end
below its length, by the `delta` that every later token (generated ones included) adds to
its 1-D index. Equal axes reduce M-RoPE to ordinary RoPE, so decode steps and text-only
prompts keep the 1-D fast path, shifted by `delta`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mono_llm.core.multimodal.inputs import MultiModalItem


def mrope_prompt_positions(
    num_tokens: int, items: Sequence[MultiModalItem], spatial_merge_size: int
) -> tuple[np.ndarray, int]:
    """([3, num_tokens] int64 positions, delta) for a prompt whose media spans are `items`
    (sorted, with offsets; each has an `image_grid_thw` of the patch grid before merging)."""
    positions = np.empty((3, num_tokens), np.int64)
    cursor = 0  # next prompt index to place
    next_position = 0  # position of the next text token
    for item in sorted(items, key=lambda it: it.offset):
        text = item.offset - cursor
        positions[:, cursor : item.offset] = next_position + np.arange(text)
        next_position += text
        t, h, w = (int(v) for v in item.data["image_grid_thw"].tolist())
        h, w = h // spatial_merge_size, w // spatial_merge_size
        if t * h * w != item.num_tokens:
            raise ValueError(
                f"image grid {t}x{h}x{w} does not match its {item.num_tokens} placeholder tokens"
            )
        grid_t, grid_h, grid_w = np.meshgrid(
            np.arange(t), np.arange(h), np.arange(w), indexing="ij"
        )
        span = slice(item.offset, item.end)
        positions[0, span] = next_position + grid_t.reshape(-1)
        positions[1, span] = next_position + grid_h.reshape(-1)
        positions[2, span] = next_position + grid_w.reshape(-1)
        next_position += max(t, h, w)
        cursor = item.end
    positions[:, cursor:] = next_position + np.arange(num_tokens - cursor)
    delta = int(positions.max()) + 1 - num_tokens if num_tokens else 0
    return positions, delta


def step_mrope_positions(
    prompt_positions: np.ndarray | None, delta: int, start: int, stop: int
) -> np.ndarray:
    """[3, stop - start] positions of tokens [start, stop) of one sequence: the prompt's
    table where it has one, index + delta past it."""
    out = np.empty((3, stop - start), np.int64)
    known = 0 if prompt_positions is None else max(0, min(stop, prompt_positions.shape[1]) - start)
    if known:
        out[:, :known] = prompt_positions[:, start : start + known]
    out[:, known:] = np.arange(start + known, stop) + delta
    return out
