"""Scoring (query, document) pairs: a cross-encoder reads both texts, an embedder compares two.

Shared by `LLM.score` and the server's /score and /rerank, so both pair up inputs and build
cross-encoder prompts the same way (vLLM's rules): `data_1` and `data_2` of equal length
score 1:1 (N:N), and a single `data_1` is scored against every `data_2` (1:N).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from mono_llm.core.errors import InvalidRequestError
from mono_llm.core.inputs import TokensPrompt
from mono_llm.core.outputs import PoolingOutput, PoolingRequestOutput
from mono_llm.core.pooling_params import PoolingParams

ScoreInput = str | dict[str, Any]


def pair_inputs(
    data_1: ScoreInput | Sequence[ScoreInput], data_2: ScoreInput | Sequence[ScoreInput]
) -> list[tuple[ScoreInput, ScoreInput]]:
    """Expand (data_1, data_2) into the scored pairs: 1:1, 1:N or N:N."""
    first = [data_1] if isinstance(data_1, (str, dict)) else list(data_1)
    second = [data_2] if isinstance(data_2, (str, dict)) else list(data_2)
    if not first:
        raise InvalidRequestError("There must be at least one query (text_1).", param="text_1")
    if not second:
        raise InvalidRequestError("There must be at least one document (text_2).", param="text_2")
    if len(first) == 1:
        first = first * len(second)
    elif len(first) != len(second):
        raise InvalidRequestError(
            f"text_1 has {len(first)} items and text_2 has {len(second)}: they must be "
            "equally long (N:N), or text_1 a single item (1:N).",
            param="text_1",
        )
    return list(zip(first, second, strict=True))


def _text(item: ScoreInput, param: str) -> str:
    if isinstance(item, str):
        return item
    if isinstance(item, dict) and isinstance(item.get("prompt"), str):
        return item["prompt"]
    raise InvalidRequestError("Scored inputs must be strings.", param=param)


def cross_encoder_prompt(
    tokenizer: Any, query: ScoreInput, document: ScoreInput, params: PoolingParams
) -> tuple[TokensPrompt, PoolingParams]:
    """Tokenize a (query, document) pair as one cross-encoder input.

    BERT-style tokenizers mark the document with token_type_id 1; the index where it starts
    travels in `PoolingParams.token_type_split` so the encoder can rebuild the token types.
    """
    text_1, text_2 = _text(query, "text_1"), _text(document, "text_2")
    encoded = tokenizer(text_1, text_2)
    token_ids = list(encoded["input_ids"])
    params = params.clone()
    params.task = "score"
    token_types = encoded.get("token_type_ids")
    if token_types is not None and 1 in token_types:
        params.token_type_split = list(token_types).index(1)
    return TokensPrompt(prompt_token_ids=token_ids, prompt=f"{text_1}\n{text_2}"), params


def unique_sides(
    pairs: list[tuple[ScoreInput, ScoreInput]],
) -> tuple[list[ScoreInput], list[tuple[int, int]]]:
    """The distinct texts of the pairs (to embed each once: a 1:N query is embedded once,
    not N times) and each pair as indices into them."""
    unique: list[ScoreInput] = []
    index_of: dict[str, int] = {}
    indexed: list[tuple[int, int]] = []

    def index(item: ScoreInput) -> int:
        key = item if isinstance(item, str) else repr(sorted(item.items()))
        if key not in index_of:
            index_of[key] = len(unique)
            unique.append(item)
        return index_of[key]

    for first, second in pairs:
        indexed.append((index(first), index(second)))
    return unique, indexed


def cosine_score(
    first: PoolingRequestOutput, second: PoolingRequestOutput
) -> PoolingRequestOutput[PoolingOutput]:
    """Score of an embedding model: cosine similarity of the two texts' embeddings."""
    a, b = first.outputs.data, second.outputs.data
    score = torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=0)
    return PoolingRequestOutput(
        request_id=f"{first.request_id}_{second.request_id}",
        outputs=PoolingOutput(data=score.reshape(1)),
        prompt_token_ids=list(first.prompt_token_ids) + list(second.prompt_token_ids),
        finished=True,
    )
