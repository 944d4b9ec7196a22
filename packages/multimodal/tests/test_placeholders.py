import pytest

from mono_llm.multimodal import MediaError, PlaceholderRange, expand_image_placeholders


def test_each_placeholder_expands_in_order() -> None:
    ids, ranges = expand_image_placeholders([1, 9, 2, 3, 9, 4], image_token_id=9, num_tokens=[3, 2])
    assert ids == [1, 9, 9, 9, 2, 3, 9, 9, 4]
    assert ranges == [PlaceholderRange(1, 3), PlaceholderRange(6, 2)]
    for r in ranges:
        assert ids[r.offset : r.offset + r.length] == [9] * r.length


def test_no_images() -> None:
    assert expand_image_placeholders([1, 2], 9, []) == ([1, 2], [])


@pytest.mark.parametrize(("ids", "counts"), [([1, 9, 9], [4]), ([1, 2], [4]), ([9], [])])
def test_mismatch_is_refused(ids: list[int], counts: list[int]) -> None:
    with pytest.raises(MediaError, match="placeholder"):
        expand_image_placeholders(ids, 9, counts)


def test_zero_tokens_refused() -> None:
    with pytest.raises(ValueError):
        expand_image_placeholders([9], 9, [0])
