"""Multimodal items inside the engine: placeholder spans, block hashes that include item
hashes, the encoder-output cache, per-prompt limits and M-RoPE positions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mono_llm.core.engine.request import Sequence
from mono_llm.core.errors import InvalidRequestError
from mono_llm.core.kv_cache import KVCacheManager
from mono_llm.core.layers.mrope import mrope_prompt_positions, step_mrope_positions
from mono_llm.core.multimodal import EncoderCache, MultiModalItem, expand_placeholders
from mono_llm.core.multimodal.inputs import check_item_limits, parse_multi_modal_data
from mono_llm.core.worker.batch import SequenceSlice
from mono_llm.core.worker.mm_embedder import MultiModalEmbedder
from mono_llm.core.worker.model_runner import embed_with_overrides

IMG = 99  # placeholder token id in these tests


def image(seed: int, num_tokens: int = 6) -> MultiModalItem:
    pixels = torch.Generator().manual_seed(seed)
    return MultiModalItem(
        "image", {"pixel_values": torch.rand(3, 4, 4, generator=pixels)}, num_tokens
    )


def test_expand_placeholders_sets_spans_and_keeps_pre_expanded_runs() -> None:
    a, b = image(0, 3), image(1, 2)
    ids = expand_placeholders([1, IMG, 2, IMG, IMG, 3], [a, b], IMG)
    assert ids == [1, IMG, IMG, IMG, 2, IMG, IMG, 3]
    assert (a.offset, a.end, b.offset, b.end) == (1, 4, 5, 7)
    with pytest.raises(InvalidRequestError, match="placeholder"):
        expand_placeholders([1, IMG, 2], [a, b], IMG)  # two images, one placeholder
    with pytest.raises(InvalidRequestError, match="run of 2"):
        expand_placeholders([IMG, IMG], [image(2, 3)], IMG)


def test_items_hash_their_tensors_and_limits_name_the_flag() -> None:
    assert image(0).content_hash == image(0).content_hash != image(1).content_hash
    with pytest.raises(InvalidRequestError, match=r"At most 1 image.*limit-mm-per-prompt"):
        check_item_limits([image(0), image(1)], {"image": 1})

    class Processed:  # what mono_llm.multimodal's processors return, duck-typed
        pixel_values = torch.zeros(3, 4, 4)
        num_tokens = 4
        image_grid_thw = (1, 4, 4)
        content_hash = "abc"

    (item,) = parse_multi_modal_data({"image": Processed()})
    assert item.num_tokens == 4 and item.content_hash.startswith("abc:")
    assert item.data["image_grid_thw"].tolist() == [1, 4, 4]
    with pytest.raises(InvalidRequestError, match="preprocessed"):
        parse_multi_modal_data({"image": "http://example.com/cat.png"})
    with pytest.raises(InvalidRequestError, match="modality"):
        parse_multi_modal_data({"audio": Processed()})


def _seq(seq_id: str, item: MultiModalItem) -> Sequence:
    ids = expand_placeholders([5, 6, 7, IMG, 8, 9, 10, 11, 12, 13], [item], IMG)
    return Sequence(seq_id, seq_id, 0, ids, max_tokens=4, mm_items=[item])


def test_same_tokens_different_images_give_different_block_hashes() -> None:
    kv = KVCacheManager(num_blocks=32, block_size=4)
    a, b, a_again = _seq("a", image(0)), _seq("b", image(1)), _seq("c", image(0))
    assert a.token_ids == b.token_ids  # placeholders are the same tokens
    for seq in (a, b, a_again):
        kv._extend_hashes(seq, seq.num_tokens)
    # Block 0 = tokens 0-3 holds the span's first token: it differs already, and so does
    # every block chained after it.
    assert all(x != y for x, y in zip(a.block_hashes, b.block_hashes, strict=True))
    assert a.block_hashes == a_again.block_hashes
    text = Sequence("t", "t", 0, a.token_ids, max_tokens=4)
    kv._extend_hashes(text, text.num_tokens)
    assert text.block_hashes[0] != a.block_hashes[0]


def test_prefix_cache_shares_blocks_only_for_the_same_image() -> None:
    kv = KVCacheManager(num_blocks=32, block_size=4)
    first = _seq("a", image(0))
    assert kv.allocate(first, first.num_tokens)
    first.num_computed_tokens = first.num_tokens
    kv.cache_computed_blocks(first)
    assert len(kv.find_cached_prefix(_seq("b", image(1)))) == 0  # other image: no hit
    hit = kv.find_cached_prefix(_seq("c", image(0)))
    assert len(hit) == (first.num_tokens - 1) // 4 and hit == kv.block_table(first)[: len(hit)]


class _CountingModel(torch.nn.Module):
    """embed_input_ids / embed_multimodal that record how often each image is encoded."""

    def __init__(self) -> None:
        super().__init__()
        self.encoded: list[str] = []

    def embed_input_ids(self, ids: torch.Tensor) -> torch.Tensor:
        return ids.float()[:, None].repeat(1, 2)

    def embed_multimodal(self, items: list[MultiModalItem]) -> list[torch.Tensor]:
        self.encoded += [item.content_hash for item in items]
        return [
            torch.arange(item.num_tokens, dtype=torch.float32)[:, None].repeat(1, 2) + 1000
            for item in items
        ]


def _slice(seq: Sequence, start: int, stop: int) -> SequenceSlice:
    return SequenceSlice(
        seq.token_ids[start:stop], start, [], request_id=seq.request_id, mm_items=seq.mm_items
    )


def test_encoder_output_computed_once_across_chunks_then_released() -> None:
    model = _CountingModel()
    embedder = MultiModalEmbedder(model, EncoderCache(max_tokens=0))
    seq = _seq("r", image(0))  # span 3..9
    rows = []
    for start, stop in ((0, 5), (5, 8), (8, 10)):  # chunks cut through the span twice
        part = _slice(seq, start, stop)
        assert MultiModalEmbedder.needed([part])
        embedder.fill_overrides([part])
        overrides = [(o.offset, o.embeds) for o in part.embeds_overrides or ()]
        rows.append(embed_with_overrides(model, torch.tensor(part.token_ids), overrides))
    merged = torch.cat(rows)[:, 0]
    assert model.encoded == [seq.mm_items[0].content_hash]  # once, not per chunk
    assert merged[3:9].tolist() == [1000.0 + i for i in range(6)]  # every span row, in order
    assert merged[:3].tolist() == [5.0, 6.0, 7.0] and merged[9].item() == 8.0
    assert len(embedder.cache) == 0  # span done, nobody holds it, nothing kept (max_tokens=0)


def test_encoder_output_shared_in_a_step_and_freed_on_abort() -> None:
    model = _CountingModel()
    cache = EncoderCache(max_tokens=0)
    embedder = MultiModalEmbedder(model, cache)
    a, b = _seq("a", image(0)), _seq("b", image(0))  # same image, two requests
    first, second = _slice(a, 0, 5), _slice(b, 0, 5)
    embedder.fill_overrides([first, second])
    assert (
        [o.offset for o in first.embeds_overrides]
        == [3]
        == [o.offset for o in second.embeds_overrides]
    )
    digest = a.mm_items[0].content_hash
    assert model.encoded == [digest] and cache.holders(digest) == {"a", "b"}
    embedder.release("a")  # request a aborted mid-span
    assert digest in cache and cache.holders(digest) == {"b"}
    embedder.release("b")
    assert digest not in cache and cache.num_tokens == 0


def test_released_outputs_are_kept_within_the_bound() -> None:
    cache = EncoderCache(max_tokens=10)
    for i in range(3):
        cache.put(f"h{i}", torch.zeros(6, 2), f"r{i}")
        cache.release(f"r{i}")
    assert "h2" in cache and "h0" not in cache and "h1" not in cache  # 6 + 6 > 10: oldest go
    assert cache.get("h2", "r9") is not None and cache.num_hits == 1


def test_mrope_positions() -> None:
    item = MultiModalItem(
        "image",
        {"pixel_values": torch.zeros(16, 8), "image_grid_thw": torch.tensor([1, 4, 6])},
        num_tokens=6,  # (4 / 2) x (6 / 2) merged patches
    )
    ids = expand_placeholders([1, 2, IMG, 3, 4], [item], IMG)
    positions, delta = mrope_prompt_positions(len(ids), [item], spatial_merge_size=2)
    assert positions[:, :2].tolist() == [[0, 1]] * 3
    assert positions[0, 2:8].tolist() == [2] * 6  # one frame
    assert positions[1, 2:8].tolist() == [2, 2, 2, 3, 3, 3]  # rows
    assert positions[2, 2:8].tolist() == [2, 3, 4, 2, 3, 4]  # columns
    assert positions[:, 8:].tolist() == [[5, 6]] * 3  # text resumes at start + max(h, w)
    assert delta == 7 - 10
    step = step_mrope_positions(positions, delta, 8, 12)  # last prompt tokens + 2 generated
    assert step.tolist() == [[5, 6, 7, 8]] * 3
    assert np.array_equal(step_mrope_positions(None, 0, 3, 5), [[3, 4]] * 3)
