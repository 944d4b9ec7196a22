"""vLLM's OpenAI-compatible server quick start, run unchanged with the official `openai`
client against a real uvicorn server (see conftest.py), plus the curl-style raw JSON form."""

from __future__ import annotations

import httpx
import openai
import pytest

LLAMA = "tiny-llama"
QWEN = "tiny-qwen2"


def test_models_list_shows_every_served_model(client) -> None:
    ids = [m.id for m in client.models.list().data]
    assert ids == [LLAMA, QWEN]
    assert client.models.retrieve(QWEN).id == QWEN


def test_completion(client) -> None:
    completion = client.completions.create(model=LLAMA, prompt="San Francisco is a", max_tokens=7)
    assert completion.object == "text_completion"
    assert completion.model == LLAMA
    choice = completion.choices[0]
    assert isinstance(choice.text, str) and choice.finish_reason in ("stop", "length")
    assert completion.usage.completion_tokens == 7 or choice.finish_reason == "stop"
    assert completion.usage.total_tokens == (
        completion.usage.prompt_tokens + completion.usage.completion_tokens
    )


def test_streaming_completion_ends_with_finish_reason(client) -> None:
    stream = client.completions.create(
        model=LLAMA,
        prompt="San Francisco is a",
        max_tokens=6,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text_chunks = [c for c in chunks if c.choices]
    assert text_chunks[-1].choices[0].finish_reason == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 6
    streamed = "".join(c.choices[0].text for c in text_chunks)
    whole = client.completions.create(
        model=LLAMA, prompt="San Francisco is a", max_tokens=6, temperature=0
    )
    assert streamed == whole.choices[0].text


def test_chat_completion(client) -> None:
    response = client.chat.completions.create(
        model=LLAMA,
        messages=[
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Tell me a joke."},
        ],
        max_completion_tokens=8,
    )
    assert response.object == "chat.completion"
    message = response.choices[0].message
    assert message.role == "assistant" and isinstance(message.content, str)
    assert response.usage.completion_tokens <= 8


def test_streaming_chat_role_first_finish_last(client) -> None:
    stream = client.chat.completions.create(
        model=QWEN,
        messages=[{"role": "user", "content": "Hello!"}],
        max_tokens=5,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True, "continuous_usage_stats": True},
    )
    chunks = list(stream)
    content_chunks = [c for c in chunks if c.choices]
    assert content_chunks[0].choices[0].delta.role == "assistant"
    assert content_chunks[-1].choices[0].finish_reason == "length"
    assert all(c.usage is not None for c in chunks)  # continuous usage stats
    assert chunks[-1].usage.completion_tokens == 5
    streamed = "".join(c.choices[0].delta.content or "" for c in content_chunks)
    whole = client.chat.completions.create(
        model=QWEN, messages=[{"role": "user", "content": "Hello!"}], max_tokens=5, temperature=0
    )
    assert streamed == whole.choices[0].message.content


def test_extra_body_sampling_parameters(client) -> None:
    completion = client.completions.create(
        model=LLAMA,
        prompt="A robot may not injure",
        max_tokens=10,
        temperature=0.8,
        extra_body={
            "top_k": 5,
            "min_p": 0.05,
            "repetition_penalty": 1.1,
            "min_tokens": 10,
            "ignore_eos": True,
            "skip_special_tokens": True,
            "seed": 7,
        },
    )
    assert completion.usage.completion_tokens == 10  # min_tokens + ignore_eos hold it to 10
    again = client.completions.create(
        model=LLAMA,
        prompt="A robot may not injure",
        max_tokens=10,
        temperature=0.8,
        extra_body={"top_k": 5, "min_p": 0.05, "repetition_penalty": 1.1, "min_tokens": 10,
                    "ignore_eos": True, "seed": 7},
    )  # fmt: skip
    assert again.choices[0].text == completion.choices[0].text  # same seed, same text


def test_chat_extra_body_template_parameters(client) -> None:
    # continue_final_message: the reply continues the given assistant message.
    response = client.chat.completions.create(
        model=QWEN,
        messages=[
            {"role": "user", "content": "Say something."},
            {"role": "assistant", "content": "Sure, here"},
        ],
        max_tokens=4,
        extra_body={
            "add_generation_prompt": False,
            "continue_final_message": True,
            "echo": True,
            "chat_template_kwargs": {"enable_thinking": False},
        },
    )
    assert response.choices[0].message.content.startswith("Sure, here")


def test_n_and_best_of_and_logprobs(client) -> None:
    completion = client.completions.create(
        model=LLAMA, prompt=["one", "two three"], n=2, max_tokens=3, logprobs=2, seed=1
    )
    assert sorted(c.index for c in completion.choices) == [0, 1, 2, 3]
    for choice in completion.choices:
        lp = choice.logprobs
        assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.text_offset) == 3
        assert all(len(top) >= 2 for top in lp.top_logprobs)
        assert lp.text_offset == sorted(lp.text_offset)
    chat = client.chat.completions.create(
        model=LLAMA,
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=3,
        logprobs=True,
        top_logprobs=3,
        n=2,
    )
    assert len(chat.choices) == 2
    for entry in chat.choices[0].logprobs.content:
        assert entry.bytes == list(entry.token.encode())
        assert len(entry.top_logprobs) == 3
        assert entry.logprob <= 0


def test_echo_with_logprobs_covers_prompt_and_completion(client) -> None:
    completion = client.completions.create(
        model=LLAMA, prompt="hello world", max_tokens=2, echo=True, logprobs=1, temperature=0
    )
    choice = completion.choices[0]
    assert choice.text.startswith("hello world")
    prompt_tokens = completion.usage.prompt_tokens
    assert len(choice.logprobs.tokens) == prompt_tokens + 2
    assert choice.logprobs.token_logprobs[0] is None  # the first prompt token has none


def test_token_id_prompts(client) -> None:
    tokens = httpx.post(
        f"{client.base_url}".replace("/v1/", "") + "/tokenize",
        json={"model": LLAMA, "prompt": "token ids work"},
        headers={"Authorization": f"Bearer {client.api_key}"},
    ).json()["tokens"]
    by_ids = client.completions.create(model=LLAMA, prompt=tokens, max_tokens=4, temperature=0)
    by_text = client.completions.create(
        model=LLAMA, prompt="token ids work", max_tokens=4, temperature=0
    )
    assert by_ids.choices[0].text == by_text.choices[0].text
    assert by_ids.usage.prompt_tokens == len(tokens)


def test_curl_style_raw_json(server) -> None:
    response = httpx.post(
        f"{server.v1}/completions",
        headers={**server.headers(), "Content-Type": "application/json"},
        content=(
            '{"model": "tiny-llama", "prompt": "San Francisco is a", "max_tokens": 7, '
            '"temperature": 0}'
        ),
        timeout=60,
    )
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "text_completion" and body["choices"][0]["index"] == 0
    assert body["usage"]["completion_tokens"] <= 7
    stream = httpx.post(
        f"{server.v1}/chat/completions",
        headers=server.headers(),
        json={"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}],
              "max_tokens": 3, "stream": True},
        timeout=60,
    )  # fmt: skip
    assert stream.headers["content-type"].startswith("text/event-stream")
    events = [line for line in stream.text.split("\n\n") if line]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"


def test_suffix_is_rejected(client) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=LLAMA, prompt="x", suffix="y", max_tokens=2)
    assert info.value.status_code == 400
    assert "suffix is not supported" in info.value.message


def test_unknown_model_is_a_404(client) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.completions.create(model="no-such-model", prompt="x", max_tokens=2)
    assert info.value.body["type"] == "NotFoundError"
    assert info.value.body["param"] == "model"


def test_validation_errors_are_400_naming_the_field(server) -> None:
    response = httpx.post(
        f"{server.v1}/chat/completions",
        headers=server.headers(),
        json={"model": LLAMA, "messages": [{"role": "user", "content": "x"}], "temperature": "hot"},
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "temperature" and "temperature" in error["message"]
    assert set(error) == {"message", "type", "param", "code"}
    too_long = httpx.post(
        f"{server.v1}/completions",
        headers=server.headers(),
        json={"model": LLAMA, "prompt": [5] * 2000, "max_tokens": 2},
    )
    assert too_long.status_code == 400
    assert "maximum context length is 1024" in too_long.json()["error"]["message"]
    bad_param = httpx.post(
        f"{server.v1}/completions",
        headers=server.headers(),
        json={"model": LLAMA, "prompt": "x", "top_p": 5},
    )
    assert bad_param.status_code == 400 and bad_param.json()["error"]["param"] == "top_p"
    for body, param in (
        ({"prompt": "x", "stream_options": {"include_usage": True}}, "stream_options"),
        ({"prompt": "x", "use_beam_search": True, "stream": True}, "stream"),
    ):
        response = httpx.post(
            f"{server.v1}/completions", headers=server.headers(), json={"model": LLAMA, **body}
        )
        assert response.status_code == 400 and response.json()["error"]["param"] == param
    chat = {"model": LLAMA, "messages": [{"role": "user", "content": "x"}]}
    for extra, param in (({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
                         ({"top_logprobs": 2}, "top_logprobs")):  # fmt: skip
        response = httpx.post(
            f"{server.v1}/chat/completions", headers=server.headers(), json={**chat, **extra}
        )
        assert response.status_code == 400 and response.json()["error"]["param"] == param


def test_tokenize_detokenize_round_trip(server) -> None:
    tokenized = httpx.post(
        f"{server.base_url}/tokenize",
        headers=server.headers(),
        json={"model": QWEN, "prompt": "round trip text", "return_token_strs": True},
    ).json()
    assert tokenized["count"] == len(tokenized["tokens"]) == len(tokenized["token_strs"])
    text = httpx.post(
        f"{server.base_url}/detokenize",
        headers=server.headers(),
        json={"model": QWEN, "tokens": tokenized["tokens"]},
    ).json()["prompt"]
    assert text.endswith("round trip text")
    chat = httpx.post(
        f"{server.base_url}/tokenize",
        headers=server.headers(),
        json={"model": QWEN, "messages": [{"role": "user", "content": "hi"}]},
    ).json()
    assert chat["count"] > 3 and chat["max_model_len"] > 0


def test_prompt_logprobs_and_best_of(client) -> None:
    completion = client.completions.create(
        model=LLAMA,
        prompt="prompt logprobs",
        max_tokens=2,
        extra_body={"prompt_logprobs": 1},
    )
    positions = completion.model_dump()["choices"][0]["prompt_logprobs"]
    assert positions[0] is None
    assert len(positions) == completion.usage.prompt_tokens
    assert all(len(p) >= 1 for p in positions[1:])
    entry = next(iter(positions[1].values()))
    assert entry["logprob"] <= 0 and entry["rank"] >= 1
    chat = client.chat.completions.create(
        model=LLAMA,
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=2,
        extra_body={"prompt_logprobs": 0},
    )
    assert len(chat.model_dump()["prompt_logprobs"]) == chat.usage.prompt_tokens
    best = client.completions.create(model=LLAMA, prompt="best of", max_tokens=3, n=1, best_of=3)
    assert len(best.choices) == 1 and best.choices[0].finish_reason == "length"


def test_stop_string_ends_the_text_and_is_reported(client) -> None:
    free = client.completions.create(model=LLAMA, prompt="Stop here", max_tokens=12, temperature=0)
    text = free.choices[0].text
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    assert stop.strip(), text  # a visible two-character piece of the greedy text
    stopped = client.completions.create(
        model=LLAMA, prompt="Stop here", max_tokens=12, temperature=0, stop=[stop]
    )
    choice = stopped.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.model_dump()["stop_reason"] == stop
    assert choice.text == text[: text.index(stop)]


def test_content_parts_and_string_content_render_alike(client) -> None:
    as_string = client.chat.completions.create(
        model=LLAMA,
        messages=[{"role": "user", "content": "part one"}],
        max_tokens=6,
        temperature=0,
    )
    as_parts = client.chat.completions.create(
        model=LLAMA,
        messages=[{"role": "user", "content": [{"type": "text", "text": "part one"}]}],
        max_tokens=6,
        temperature=0,
    )
    assert as_parts.usage.prompt_tokens == as_string.usage.prompt_tokens
    assert as_parts.choices[0].message.content == as_string.choices[0].message.content


def test_prefix_cache_hits_reported_in_usage(client) -> None:
    prompt = "A long shared system prompt that many requests repeat word for word. " * 3
    first = client.completions.create(model=LLAMA, prompt=prompt, max_tokens=2)
    second = client.completions.create(model=LLAMA, prompt=prompt, max_tokens=2)
    assert first.usage.prompt_tokens >= 32
    # Whole 16-token blocks of the first request's prompt are reused by the second.
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert 16 <= cached < second.usage.prompt_tokens
    chat = client.chat.completions.create(
        model=LLAMA, messages=[{"role": "user", "content": prompt}], max_tokens=2
    )
    assert chat.usage.prompt_tokens_details.cached_tokens is not None


def test_conversation_with_tool_call_and_tool_result(client, server) -> None:
    messages = [
        {"role": "system", "content": "You can call tools."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C and sunny"},
    ]  # fmt: skip
    response = client.chat.completions.create(model=LLAMA, messages=messages, max_tokens=3)
    assert response.choices[0].message.role == "assistant"
    rendered = httpx.post(
        f"{server.base_url}/tokenize",
        headers=server.headers(),
        json={"model": LLAMA, "messages": messages},
    ).json()
    text = httpx.post(
        f"{server.base_url}/detokenize",
        headers=server.headers(),
        json={"model": LLAMA, "tokens": rendered["tokens"]},
    ).json()["prompt"]
    # The assistant's JSON arguments reached the template as an object, rendered back as JSON.
    assert '"parameters": {"city": "Paris"}' in text
    assert "get_weather" in text and "Paris" in text and "sunny" in text


def test_large_bodies_are_tokenized_off_the_event_loop_with_the_same_answers(client) -> None:
    """Bodies over 64 KiB take the worker-thread path: same validation, same results."""
    huge = "The engine reads a prompt. " * 4000  # ~108 KB, far past the 1024-token window
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=LLAMA, prompt=huge, max_tokens=4)
    assert "maximum context length is 1024 tokens" in err.value.message
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model=LLAMA, messages=[{"role": "user", "content": huge}], max_tokens=4
        )
    # Long but fitting: truncate_prompt_tokens keeps the last 64 tokens of the large prompt.
    out = client.completions.create(
        model=LLAMA,
        prompt=huge,
        max_tokens=4,
        temperature=0,
        extra_body={"truncate_prompt_tokens": 64},
    )
    assert out.usage.prompt_tokens == 64
    assert out.usage.completion_tokens == 4
