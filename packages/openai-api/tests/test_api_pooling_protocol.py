"""Pooling protocol models: input shapes, /score side aliases, rerank documents, base64."""

from __future__ import annotations

import base64

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from mono_llm.openai_api.pooling.protocol import (
    EmbeddingRequest,
    RerankRequest,
    RerankV2Response,
    ScoreRequest,
)
from mono_llm.openai_api.pooling.serving import _encode_base64


def test_embedding_input_shapes_parse_as_sent():
    assert EmbeddingRequest(input="hi").input == "hi"
    assert EmbeddingRequest(input=["a", "b"]).input == ["a", "b"]
    assert EmbeddingRequest(input=[1, 2, 3]).input == [1, 2, 3]
    assert EmbeddingRequest(input=[[1, 2], [3]]).input == [[1, 2], [3]]
    assert EmbeddingRequest(input="x").encoding_format == "float"
    with pytest.raises(ValidationError):
        EmbeddingRequest(input="x", encoding_format="int8")
    with pytest.raises(ValidationError):
        EmbeddingRequest(input="x", truncate_prompt_tokens=-2)
    with pytest.raises(ValidationError, match="exactly one of input and messages"):
        EmbeddingRequest()
    chat = EmbeddingRequest(messages=[{"role": "user", "content": "hi"}])
    assert chat.input is None and chat.add_special_tokens is None


@pytest.mark.parametrize(
    ("first", "second"),
    [("text_1", "text_2"), ("queries", "documents"), ("queries", "items"), ("data_1", "data_2")],
)
def test_score_sides_accept_every_alias(first, second):
    request = ScoreRequest(**{first: "q", second: ["d1", "d2"]})
    assert request.first == "q" and request.second == ["d1", "d2"]
    assert (request.first_name, request.second_name) == (first, second)


def test_score_needs_exactly_one_name_per_side():
    with pytest.raises(ValidationError, match="exactly one of text_1"):
        ScoreRequest(text_2="d")
    with pytest.raises(ValidationError, match="got text_1, queries"):
        ScoreRequest(text_1="a", queries="b", text_2="d")


def test_rerank_documents_may_be_objects_and_v2_has_meta():
    request = RerankRequest(query="q", documents=["a", {"text": "b"}], top_n=1)
    assert request.document_texts == ["a", "b"]
    assert request.return_documents is True
    with pytest.raises(ValidationError):
        RerankRequest(query="q", documents=["a"], top_n=-1)
    body = RerankV2Response(model="m", usage={"total_tokens": 3}, results=[]).model_dump()
    assert body["meta"] == {"api_version": {"version": "2"}, "billed_units": {"search_units": 1}}
    assert body["id"].startswith("rerank-")


def test_base64_is_little_endian_float32():
    values = torch.tensor([0.5, -1.25, 3.0e-8])
    decoded = np.frombuffer(base64.b64decode(_encode_base64(values)), dtype="<f4")
    assert decoded.tolist() == values.tolist()
