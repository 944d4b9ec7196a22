"""Multimodal items as the engine carries them: preprocessed tensors, a placeholder span in
the prompt, and a content hash.

The engine never decodes media: the caller (the HTTP server, or an offline script with the
`mono_llm.multimodal` package) turns an image into pixel values and says how many prompt
tokens it stands for. The engine expands each image placeholder to that many tokens, keeps
where the span lies (`offset`, `length`), and keys both the prefix cache and the
encoder-output cache by `content_hash`, so two different images behind the same placeholder
tokens never share KV blocks, and one image is encoded once however its span is chunked.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from mono_llm.core.errors import InvalidRequestError

MODALITIES = ("image",)


@dataclass(slots=True)
class MultiModalItem:
    """One preprocessed media item of a prompt.

    data: the tensors the model's encoder takes, e.g. {"pixel_values": [3, H, W]} (CLIP) or
    {"pixel_values": [patches, C*T*P*P], "image_grid_thw": [3]} (Qwen2-VL).
    num_tokens: how many placeholder tokens (= embeddings) the item fills.
    content_hash: a stable digest of what the item depicts (the server passes the hash of the
    image bytes and the processor settings); computed from the tensors when left empty.
    offset: index of the span's first token in the prompt, set by `expand_placeholders`.
    """

    modality: str
    data: dict[str, torch.Tensor]
    num_tokens: int
    content_hash: str = ""
    offset: int = -1
    _hash_bytes: bytes = field(default=b"", repr=False)

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise InvalidRequestError(
                f"Unsupported modality {self.modality!r}; supported: {', '.join(MODALITIES)}."
            )
        if self.num_tokens < 1:
            raise InvalidRequestError("A multimodal item must fill at least one token.")
        if not self.content_hash:
            self.content_hash = tensor_hash(self.data)
        # What block hashes mix in: the modality and the digest, so an image and (later) an
        # audio clip with equal bytes still differ.
        self._hash_bytes = f"{self.modality}:{self.content_hash}".encode()

    @property
    def length(self) -> int:
        return self.num_tokens

    @property
    def end(self) -> int:
        """One past the span's last prompt index."""
        return self.offset + self.num_tokens

    @property
    def hash_bytes(self) -> bytes:
        return self._hash_bytes

    def overlaps(self, start: int, stop: int) -> bool:
        """Whether the span shares a token with prompt indices [start, stop)."""
        return self.offset < stop and start < self.end


def tensor_hash(data: dict[str, torch.Tensor]) -> str:
    """blake2b over the item's tensors (names, dtypes, shapes and bytes), for items that come
    without a hash of their source."""
    digest = hashlib.blake2b(digest_size=16)
    for name in sorted(data):
        tensor = data[name].detach().to("cpu").contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def expand_placeholders(
    token_ids: list[int], items: Sequence[MultiModalItem], placeholder_id: int
) -> list[int]:
    """Give each item its span of `placeholder_id` tokens, in prompt order; returns the ids.

    Each maximal run of the placeholder token belongs to one item, in order: a run of one is
    widened to the item's `num_tokens` (what chat templates write), a run already that long
    is kept (a pre-expanded prompt). Sets every item's `offset`.
    """
    runs: list[tuple[int, int]] = []  # (start, length) of each placeholder run
    index = 0
    while index < len(token_ids):
        if token_ids[index] == placeholder_id:
            start = index
            while index < len(token_ids) and token_ids[index] == placeholder_id:
                index += 1
            runs.append((start, index - start))
        else:
            index += 1
    if len(runs) != len(items):
        raise InvalidRequestError(
            f"The prompt has {len(runs)} image placeholder(s) but {len(items)} image(s) were "
            "given; each image needs exactly one placeholder."
        )
    expanded: list[int] = []
    previous_end = 0
    for (start, run_length), item in zip(runs, items, strict=True):
        if run_length not in (1, item.num_tokens):
            raise InvalidRequestError(
                f"An image placeholder run of {run_length} tokens matches neither one token "
                f"nor the image's {item.num_tokens} tokens."
            )
        expanded.extend(token_ids[previous_end:start])
        item.offset = len(expanded)
        expanded.extend([placeholder_id] * item.num_tokens)
        previous_end = start + run_length
    expanded.extend(token_ids[previous_end:])
    return expanded


def count_by_modality(items: Sequence[MultiModalItem]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in items:
        counts[item.modality] = counts.get(item.modality, 0) + 1
    return counts


def check_item_limits(items: Sequence[MultiModalItem], limits: dict[str, int]) -> None:
    """Refuse a prompt with more items of a modality than `limits` allows (400, naming it)."""
    for modality, count in count_by_modality(items).items():
        limit = limits.get(modality, 0)
        if count > limit:
            raise InvalidRequestError(
                f"At most {limit} {modality}(s) may be provided in one prompt; got {count} "
                f"(--limit-mm-per-prompt).",
                param="messages",
            )


class PromptTokenIds(list[int]):
    """A validated prompt's token ids (placeholders expanded) that also carries its items.

    `process_prompt` returns it for a prompt with media, so the items, with their spans, travel
    with the ids from validation (off the step loop) to admission unchanged.
    """

    mm_items: list[MultiModalItem]
    mrope_positions: Any  # [3, len] numpy positions for M-RoPE models, else None
    mrope_delta: int

    def __init__(self, token_ids: list[int], mm_items: list[MultiModalItem]) -> None:
        super().__init__(token_ids)
        self.mm_items = mm_items
        self.mrope_positions = None
        self.mrope_delta = 0


def parse_multi_modal_data(data: Any) -> list[MultiModalItem]:
    """Items from a prompt's `multi_modal_data` ({"image": item or [items]}).

    An item is a `MultiModalItem` or any object with `pixel_values` and `num_tokens` (and
    optionally `image_grid_thw` and `content_hash`), such as what `mono_llm.multimodal`'s
    image processors return; the engine itself never sees an undecoded image.
    """
    if data is None:
        return []
    if not isinstance(data, dict):
        raise InvalidRequestError(
            "multi_modal_data must be a dict like {'image': [...]}.", param="multi_modal_data"
        )
    items: list[MultiModalItem] = []
    for modality, value in data.items():
        if modality not in MODALITIES:
            raise InvalidRequestError(
                f"Unsupported modality {modality!r} in multi_modal_data; supported: "
                f"{', '.join(MODALITIES)}.",
                param="multi_modal_data",
            )
        for entry in value if isinstance(value, (list, tuple)) else [value]:
            items.append(_as_item(modality, entry))
    return items


def _as_item(modality: str, entry: Any) -> MultiModalItem:
    if isinstance(entry, MultiModalItem):
        # A fresh copy: offsets are per prompt, and one item may appear in several prompts.
        return MultiModalItem(
            entry.modality, entry.data, entry.num_tokens, content_hash=entry.content_hash
        )
    pixel_values = getattr(entry, "pixel_values", None)
    num_tokens = getattr(entry, "num_tokens", None)
    if not isinstance(pixel_values, torch.Tensor) or not isinstance(num_tokens, int):
        raise InvalidRequestError(
            f"A {modality} must arrive preprocessed (pixel_values tensor and num_tokens), e.g. "
            "from mono_llm.multimodal's image processors; got "
            f"{type(entry).__name__}.",
            param="multi_modal_data",
        )
    data = {"pixel_values": pixel_values}
    grid = getattr(entry, "image_grid_thw", None)
    if grid is not None:
        data["image_grid_thw"] = torch.as_tensor(grid, dtype=torch.int64)
    digest = getattr(entry, "content_hash", "") or ""
    if digest:
        # The source bytes' hash alone would let one image processed two ways collide.
        digest = f"{digest}:{tensor_shape_key(data)}"
    return MultiModalItem(modality, data, num_tokens, content_hash=digest)


def tensor_shape_key(data: dict[str, torch.Tensor]) -> str:
    return ";".join(f"{k}{tuple(v.shape)}" for k, v in sorted(data.items()))


def placeholder_token_id(hf_config: dict[str, Any]) -> int | None:
    """The token that stands for an image in the model's prompts (config.json)."""
    for key in ("image_token_id", "image_token_index"):
        value = hf_config.get(key)
        if isinstance(value, int):
            return value
    return None
