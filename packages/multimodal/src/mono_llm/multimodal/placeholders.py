"""Expand each image's single placeholder token in a prompt to the tokens the image fills.

Chat templates write one placeholder per image (`<image>` for LLaVA, `<|image_pad|>` inside
`<|vision_start|>...<|vision_end|>` for Qwen2-VL); the model needs one position per image
embedding. The ranges returned here are where each image's embeddings go, which the engine
also needs for chunked prefill and for prefix-cache keys.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mono_llm.multimodal.errors import MediaError


@dataclass(frozen=True, slots=True)
class PlaceholderRange:
    """Token positions [offset, offset + length) that one image's embeddings fill."""

    offset: int
    length: int


def expand_image_placeholders(
    token_ids: Sequence[int], image_token_id: int, num_tokens: Sequence[int]
) -> tuple[list[int], list[PlaceholderRange]]:
    """Replace the i-th `image_token_id` in `token_ids` by `num_tokens[i]` copies of it.

    Returns the expanded ids and one range per image, in prompt order. The prompt must hold
    exactly one placeholder per image: a mismatch (an image the template did not place, or a
    placeholder typed into the text) is refused rather than guessed at.
    """
    found = sum(1 for token in token_ids if token == image_token_id)
    if found != len(num_tokens):
        raise MediaError(
            f"the prompt has {found} image placeholder token(s) but {len(num_tokens)} image(s) "
            "were given; each image needs exactly one placeholder"
        )
    if any(count <= 0 for count in num_tokens):
        raise ValueError(f"every image must fill at least one token, got {list(num_tokens)}")
    expanded: list[int] = []
    ranges: list[PlaceholderRange] = []
    image_index = 0
    for token in token_ids:
        if token != image_token_id:
            expanded.append(token)
            continue
        count = num_tokens[image_index]
        ranges.append(PlaceholderRange(offset=len(expanded), length=count))
        expanded.extend([image_token_id] * count)
        image_index += 1
    return expanded, ranges
