"""vLLM's documented OpenAI-server examples, run as written with the official `openai` client.

Sources (vllm-project/vllm): docs/serving/openai_compatible_server.md (the first client script,
extra parameters, extra HTTP headers), docs/getting_started/quickstart.md (curl and client
calls), docs/features/tool_calling.md and docs/features/structured_outputs.md, and
examples/online_serving/{openai_completion_client, openai_chat_completion_client,
openai_chat_completion_client_with_tools, openai_chat_completion_client_with_tools_required,
structured_outputs/structured_outputs}.py.

Only the base_url, model name and api_key differ from the examples, plus, where noted: a
smaller `max_tokens` (the fixture's context window is 1024 tokens) and `temperature=0` where
an unconstrained random-weight model must end a grammar (a real model would close its JSON
on its own). The tiny models have random weights, so the tests check shapes and constraints,
not meaning.

One server for the module serves tiny-llama without tool-call flags (as `vllm serve MODEL`);
the auto tool-choice examples use the session server of conftest.py, started with
`--enable-auto-tool-choice --tool-call-parser hermes`.
"""

from __future__ import annotations

import asyncio
import enum
import json
import re

import httpx
import openai
import pydantic
import pytest
from openai import OpenAI

MODEL = "tiny-llama"


@pytest.fixture(scope="module")
def plain(server_factory):
    """`mono-llm serve tiny-llama --enable-request-id-headers` (no tool flags, no api key)."""
    from mono_llm.core import AsyncEngineArgs
    from mono_llm.core.testing import fixture_path
    from mono_llm.openai_api import ServerArgs, build_app

    engine = AsyncEngineArgs(model=str(fixture_path(MODEL)), served_model_name=MODEL)
    app = build_app([engine], ServerArgs(enable_request_id_headers=True))
    with server_factory(app) as running:
        yield running


@pytest.fixture(scope="module")
def openai_api_base(plain) -> str:
    return plain.v1


def _chat_json_shape(body: dict) -> None:
    """What vLLM (and OpenAI) put in a non-streamed chat completion."""
    assert body["id"].startswith("chatcmpl-") and body["object"] == "chat.completion"
    assert isinstance(body["created"], int) and body["model"] == MODEL
    choice = body["choices"][0]
    assert set(choice) >= {"index", "message", "logprobs", "finish_reason"}
    assert choice["finish_reason"] in ("stop", "length")
    message = choice["message"]
    assert message["role"] == "assistant" and isinstance(message["content"], str)
    assert "tool_calls" not in message  # absent, not [], when the reply calls no tool
    assert message["refusal"] is None
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


# --------------------------------------------------------------------------- the docs pages


def test_openai_compatible_server_first_script(openai_api_base) -> None:
    # docs/serving/openai_compatible_server.md, "Below is an example script ..."
    client = OpenAI(
        base_url=openai_api_base,
        api_key="token-abc123",
    )

    completion = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Hello!"}],
        max_tokens=8,  # added: the example relies on a real model stopping by itself
    )

    print(completion.choices[0].message)
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.tool_calls is None
    # The tip right below it: vLLM-only parameters through extra_body.
    extra = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Hello!"}],
        max_tokens=4,
        extra_body={"top_k": 50},
    )
    assert extra.object == "chat.completion"
    raw = httpx.post(
        f"{openai_api_base}/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 4},
    ).json()
    _chat_json_shape(raw)


def test_content_parts_and_guided_choice_extra_parameters(openai_api_base) -> None:
    # docs: "Chat Template" (a list of text parts) and "Extra Parameters" (guided_choice).
    client = OpenAI(base_url=openai_api_base, api_key="token-abc123")
    completion = client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "Classify this sentiment: vLLM is wonderful!"}]}
        ],
        max_tokens=4,
    )  # fmt: skip
    assert isinstance(completion.choices[0].message.content, str)
    completion = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Classify this sentiment: vLLM is wonderful!"}],
        extra_body={"guided_choice": ["positive", "negative"]},
    )
    assert completion.choices[0].message.content in ("positive", "negative")
    assert completion.choices[0].finish_reason == "stop"
    # docs/features/structured_outputs.md: today's spelling of the same constraint.
    completion = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Classify this sentiment: vLLM is wonderful!"}],
        extra_body={"structured_outputs": {"choice": ["positive", "negative"]}},
    )
    assert completion.choices[0].message.content in ("positive", "negative")


def test_extra_http_headers_request_id(openai_api_base) -> None:
    # docs: "Extra HTTP Headers" (server started with --enable-request-id-headers).
    client = OpenAI(base_url=openai_api_base, api_key="token-abc123")
    completion = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Classify this sentiment: vLLM is wonderful!"}],
        extra_headers={
            "x-request-id": "sentiment-classification-00001",
        },
        max_tokens=2,
    )
    print(completion._request_id)
    assert completion._request_id == "sentiment-classification-00001"

    completion = client.completions.create(
        model=MODEL,
        prompt="A robot may not injure a human being",
        extra_headers={
            "x-request-id": "completion-test",
        },
    )
    print(completion._request_id)
    assert completion._request_id == "completion-test"
    assert completion.id == "cmpl-completion-test"


def test_quickstart_curl_and_client(plain, openai_api_base) -> None:
    # docs/getting_started/quickstart.md, "OpenAI-Compatible Server".
    models = httpx.get(f"{plain.base_url}/v1/models").json()
    assert models["object"] == "list" and models["data"][0]["object"] == "model"
    assert models["data"][0]["id"] == MODEL and models["data"][0]["max_model_len"] == 1024
    body = httpx.post(
        f"{plain.base_url}/v1/completions",
        headers={"Content-Type": "application/json"},
        content='{"model": "tiny-llama", "prompt": "San Francisco is a", "max_tokens": 7, '
        '"temperature": 0}',
    ).json()
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    choice = body["choices"][0]
    assert set(choice) >= {"index", "text", "logprobs", "finish_reason", "stop_reason"}
    assert choice["logprobs"] is None and body["usage"]["completion_tokens"] <= 7

    client = OpenAI(api_key="EMPTY", base_url=openai_api_base)
    completion = client.completions.create(model=MODEL, prompt="San Francisco is a")
    print("Completion result:", completion)
    assert completion.usage.completion_tokens <= 16  # OpenAI's default max_tokens

    chat = httpx.post(
        f"{plain.base_url}/v1/chat/completions",
        headers={"Content-Type": "application/json"},
        json={
            "model": MODEL,
            "messages": [
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": "Who won the world series in 2020?"},
            ],
            "max_tokens": 8,  # added (see the module docstring)
        },
    ).json()
    _chat_json_shape(chat)
    chat_response = client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Tell me a joke."},
        ],
        max_tokens=8,
    )
    print("Chat response:", chat_response)
    assert chat_response.choices[0].message.content is not None


# ----------------------------------------------------------------- examples/online_serving


def test_openai_completion_client(openai_api_base) -> None:
    client = OpenAI(
        # defaults to os.environ.get("OPENAI_API_KEY")
        api_key="EMPTY",
        base_url=openai_api_base,
    )

    models = client.models.list()
    model = models.data[0].id

    # Completion API
    for stream in (True, False):
        completion = client.completions.create(
            model=model,
            prompt="A robot may not injure a human being",
            echo=False,
            n=2,
            stream=stream,
            logprobs=3,
        )
        if stream:
            chunks = list(completion)
            assert {c.object for c in chunks} == {"text_completion"}
            assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("cmpl-")
            finished = {c.choices[0].index for c in chunks if c.choices[0].finish_reason}
            assert finished == {0, 1}  # n=2 streamed: each choice ends with its reason
            for c in chunks:
                lp = c.choices[0].logprobs
                assert lp is not None, c  # asked for: present on every chunk
                assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs)
        else:
            assert [c.index for c in completion.choices] == [0, 1]
            lp = completion.choices[0].logprobs
            assert all(1 <= len(top) <= 4 for top in lp.top_logprobs)  # sampled + top 3


def test_completion_echo_with_logprobs(openai_api_base) -> None:
    client = OpenAI(api_key="EMPTY", base_url=openai_api_base)
    completion = client.completions.create(
        model=MODEL, prompt="A robot may not injure a human being", echo=True, logprobs=1,
        max_tokens=3,
    )  # fmt: skip
    choice = completion.choices[0]
    assert choice.text.startswith("A robot may not injure a human being")
    assert choice.logprobs.token_logprobs[0] is None
    assert len(choice.logprobs.tokens) == completion.usage.prompt_tokens + 3


def test_openai_chat_completion_client(openai_api_base) -> None:
    messages = [{
        "role": "system",
        "content": "You are a helpful assistant."
    }, {
        "role": "user",
        "content": "Who won the world series in 2020?"
    }, {
        "role": "assistant",
        "content": "The Los Angeles Dodgers won the World Series in 2020."
    }, {
        "role": "user",
        "content": "Where was it played?"
    }]  # fmt: skip
    client = OpenAI(
        # defaults to os.environ.get("OPENAI_API_KEY")
        api_key="EMPTY",
        base_url=openai_api_base,
    )

    models = client.models.list()
    model = models.data[0].id

    chat_completion = client.chat.completions.create(
        messages=messages,
        model=model,
    )

    print("Chat completion results:")
    print(chat_completion)
    assert chat_completion.choices[0].finish_reason in ("stop", "length")
    # No max_tokens: the reply may use the rest of the context window, as on vLLM.
    usage = chat_completion.usage
    assert usage.prompt_tokens + usage.completion_tokens <= 1024
    # The streamed variant (the example's --stream flag).
    stream = client.chat.completions.create(
        messages=messages, model=model, stream=True, max_completion_tokens=5,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 5
    assert chunks[-2].choices[0].finish_reason == "length"


def test_chat_n_with_stream(openai_api_base) -> None:
    client = OpenAI(api_key="EMPTY", base_url=openai_api_base)
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], n=3, stream=True,
        max_tokens=3, seed=42,
    )  # fmt: skip
    roles: dict[int, int] = {}
    finished = set()
    for chunk in stream:
        for choice in chunk.choices:
            roles[choice.index] = roles.get(choice.index, 0) + (choice.delta.role is not None)
            if choice.finish_reason:
                finished.add(choice.index)
    assert roles == {0: 1, 1: 1, 2: 1} and finished == {0, 1, 2}


class CarType(str, enum.Enum):
    SEDAN = "SEDAN"
    SUV = "SUV"
    TRUCK = "TRUCK"
    COUPE = "COUPE"


class CarDescription(pydantic.BaseModel):
    brand: str
    model: str
    car_type: CarType


SQL_GRAMMAR = """
root ::= select_statement

select_statement ::= "SELECT " column " from " table " where " condition

column ::= "col_1 " | "col_2 "

table ::= "table_1 " | "table_2 "

condition ::= column "= " number

number ::= "1 " | "2 "
"""

# examples/online_serving/structured_outputs/structured_outputs.py, PARAMS (prompts shortened)
PARAMS = {
    "choice": {
        "messages": [{"role": "user", "content": "Classify this sentiment: vLLM is wonderful!"}],
        "extra_body": {"guided_choice": ["positive", "negative"]},
    },
    "regex": {
        "messages": [{"role": "user", "content": "Generate an email address for Alan Turing."}],
        "extra_body": {"guided_regex": r"[a-z0-9.]{1,20}@\w{6,10}\.com\n"},
    },
    "json": {
        "messages": [{"role": "user", "content": "Generate a JSON with the brand, model and car_type"}],
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "car-description", "schema": CarDescription.model_json_schema()},
        },
    },
    "grammar": {
        "messages": [{"role": "user", "content": "Generate an SQL query."}],
        "extra_body": {"guided_grammar": SQL_GRAMMAR},
    },
    "structural_tag": {
        "messages": [{"role": "user", "content": "What is the weather in New York City?"}],
        "response_format": {
            "type": "structural_tag",
            "structures": [{
                "begin": "<function=get_weather>",
                "schema": {"type": "object", "properties": {"city": {"type": "string"}},
                           "required": ["city"]},
                "end": "</function>",
            }],
            "triggers": ["<function="],
        },
    },
}  # fmt: skip


def _check_structured(name: str, text: str, finish_reason: str | None) -> None:
    if name == "choice":
        assert text in ("positive", "negative")
    elif name == "regex":
        assert re.fullmatch(r"[a-z0-9.]{1,20}@\w{6,10}\.com\n", text), text
    elif name == "json" and finish_reason == "stop":
        CarDescription.model_validate_json(text)
    elif name == "grammar":
        assert re.fullmatch(r"SELECT col_[12]  from table_[12]  where col_[12] = [12] ", text)
    elif name == "structural_tag":
        # Free text, but whatever follows the trigger is the tag with schema-valid JSON.
        for match in re.finditer(r"<function=get_weather>(.*?)</function>", text, re.DOTALL):
            assert "city" in json.loads(match.group(1))


def test_structured_outputs_example(openai_api_base) -> None:
    async def cli() -> None:
        client = openai.AsyncOpenAI(base_url=openai_api_base, api_key="EMPTY")
        constraints = list(PARAMS)
        model = (await client.models.list()).data[0].id
        for stream in (False, True):
            results = await asyncio.gather(*[
                client.chat.completions.create(
                    model=model,
                    max_tokens=512,  # the example's 1024 is the fixture's whole window
                    stream=stream,
                    **PARAMS[name],
                ) for name in constraints
            ])  # fmt: skip
            for constraint, result in zip(constraints, results):
                if stream:
                    text, finish = "", None
                    async for chunk in result:
                        delta = chunk.choices[0].delta
                        text += delta.content or ""
                        finish = chunk.choices[0].finish_reason or finish
                else:
                    text = result.choices[0].message.content
                    finish = result.choices[0].finish_reason
                _check_structured(constraint, text, finish)

    asyncio.run(cli())


def test_response_format_json_object_and_text(openai_api_base) -> None:
    client = OpenAI(api_key="EMPTY", base_url=openai_api_base)
    text = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=3,
        response_format={"type": "text"},
    )  # fmt: skip
    assert text.choices[0].finish_reason == "length"
    obj = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Reply in JSON."}], max_tokens=5,
        response_format={"type": "json_object"},
    )  # fmt: skip
    assert obj.choices[0].message.content.lstrip()[:1] in ("{", "[", "")


# ------------------------------------------------------------------------------ tool calling

WEATHER_TOOLS = [{
    "type": "function",
    "function": {
        "name": "get_current_weather",
        "description": "Get the current weather in a given location",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "The city to find the weather for, e.g. 'San Francisco'"},
                "state": {"type": "string", "description": "the two-letter abbreviation for the state that the city is in, e.g. 'CA' which would mean 'California'"},
                "unit": {"type": "string", "description": "The unit to fetch the temperature in", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "state", "unit"],
        },
    },
}]  # fmt: skip
FORECAST_TOOL = {
    "type": "function",
    "function": {
        "name": "get_forecast",
        "description": "Get the weather forecast for a given location",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "The city to get the forecast for, e.g. 'New York'"},
                "state": {"type": "string", "description": "The two-letter abbreviation for the state, e.g. 'NY'"},
                "days": {"type": "integer", "description": "Number of days to get the forecast for (1-7)"},
                "unit": {"type": "string", "description": "The unit to fetch the temperature in", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "state", "days", "unit"],
        },
    },
}  # fmt: skip
TOOL_MESSAGES = [
    {"role": "user", "content": "Hi! How are you doing today?"},
    {"role": "assistant", "content": "I'm doing well! How can I help you?"},
    {"role": "user", "content": "Can you tell me what the temperate will be in Dallas, in fahrenheit?"},
]  # fmt: skip
# The random-weight model never writes a call by itself: a regex (vLLM allows structured
# outputs with tool_choice auto) makes it write the hermes-format call a trained model would.
HERMES_CALL = (
    r'<tool_call>\n\{"name": "get_current_weather", "arguments": '
    r'\{"city": "Dallas", "state": "TX", "unit": "fahrenheit"\}\}\n</tool_call>'
)


def test_auto_tool_choice_needs_the_server_flags(openai_api_base) -> None:
    # vLLM: tools with tool_choice auto (or unset) on a server started without
    # --enable-auto-tool-choice --tool-call-parser is a 400, not a silent plain reply.
    client = OpenAI(api_key="EMPTY", base_url=openai_api_base)
    for extra in ({}, {"tool_choice": "auto"}):
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(
                messages=TOOL_MESSAGES, model=MODEL, tools=WEATHER_TOOLS, **extra
            )
        assert info.value.message.endswith(
            '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set'
        )
        assert info.value.body["type"] == "BadRequestError"
    with pytest.raises(openai.BadRequestError, match="must not be an empty array"):
        client.chat.completions.create(messages=TOOL_MESSAGES, model=MODEL, tools=[])
    with pytest.raises(openai.BadRequestError, match="`tools` must be set"):
        client.chat.completions.create(messages=TOOL_MESSAGES, model=MODEL, tool_choice="auto")
    # tool_choice none keeps working without the flags.
    none = client.chat.completions.create(
        messages=TOOL_MESSAGES, model=MODEL, tools=WEATHER_TOOLS, tool_choice="none", max_tokens=3
    )
    assert none.choices[0].message.tool_calls is None


@pytest.fixture(scope="module")
def close_the_json() -> dict:
    """Added to the forced-call examples: greedy decoding with pure-whitespace tokens banned
    and closing punctuation favoured, so the random-weight model closes its strings and its
    JSON (a JSON grammar allows endless whitespace and endless strings)."""
    from transformers import AutoTokenizer

    from mono_llm.core.testing import fixture_path

    tokenizer = AutoTokenizer.from_pretrained(fixture_path(MODEL))
    bias = {}
    for i in range(len(tokenizer)):
        text = tokenizer.decode([i])
        if not text.strip():
            bias[str(i)] = -100
        elif set(text.strip()) <= set('"}],'):
            # Forced calls are compact JSON (no whitespace to wander into): close strings
            # first, then prefer ending the list of calls over continuing it.
            bias[str(i)] = 30 if '"' in text else 25 if "]" in text else 20
    return {"temperature": 0, "logit_bias": bias}


def test_openai_chat_completion_client_with_tools_required(openai_api_base, close_the_json) -> None:
    CLOSE_THE_JSON = close_the_json
    # Works without any server flag (structured outputs enforce the calls).
    tools = [*WEATHER_TOOLS, FORECAST_TOOL]
    messages = [
        *TOOL_MESSAGES[:2],
        {"role": "user", "content": "Can you tell me what the current weather is in Dallas \
            and the forecast for the next 5 days, in fahrenheit?"},
    ]  # fmt: skip
    client = OpenAI(api_key="EMPTY", base_url=openai_api_base)
    models = client.models.list()
    model = models.data[0].id

    chat_completion = client.chat.completions.create(
        messages=messages,
        model=model,
        tools=tools,
        tool_choice="required",
        stream=True,  # Enable streaming response
        **CLOSE_THE_JSON,
    )
    streamed = []
    for chunk in chat_completion:
        if chunk.choices and chunk.choices[0].delta.tool_calls:
            print(chunk.choices[0].delta.tool_calls)
            streamed.extend(chunk.choices[0].delta.tool_calls)

    chat_completion = client.chat.completions.create(
        messages=messages, model=model, tools=tools, tool_choice="required", **CLOSE_THE_JSON
    )
    print(chat_completion.choices[0].message.tool_calls)
    calls = chat_completion.choices[0].message.tool_calls
    assert chat_completion.choices[0].finish_reason == "tool_calls"
    assert calls and all(c.id.startswith("chatcmpl-tool-") and c.type == "function" for c in calls)
    assert {c.function.name for c in calls} <= {"get_current_weather", "get_forecast"}
    for call in calls:
        json.loads(call.function.arguments)
    # Streaming carries the same calls (whole, each with its index).
    assert [(s.index, s.function.name) for s in streamed] == [
        (i, c.function.name) for i, c in enumerate(calls)
    ]


def test_named_function_calling(openai_api_base) -> None:
    client = OpenAI(api_key="EMPTY", base_url=openai_api_base)
    unit_only = {"type": "function", "function": {
        "name": "get_weather", "parameters": {
            "type": "object", "properties": {"unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["unit"], "additionalProperties": False}}}  # fmt: skip
    response = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "What's the weather like in San Francisco?"}],
        tools=[unit_only],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        temperature=0,
    )
    tool_call = response.choices[0].message.tool_calls[0].function
    assert tool_call.name == "get_weather"
    assert json.loads(tool_call.arguments)["unit"] in ("celsius", "fahrenheit")


def test_openai_chat_completion_client_with_tools(client) -> None:
    """examples/online_serving/openai_chat_completion_client_with_tools.py against a server
    with --enable-auto-tool-choice --tool-call-parser hermes (conftest's session server)."""
    force_call = {"structured_outputs": {"regex": HERMES_CALL}}
    tools = WEATHER_TOOLS
    messages = [dict(m) for m in TOOL_MESSAGES]

    def get_current_weather(city: str, state: str, unit: str):
        return ("The weather in Dallas, Texas is 85 degrees fahrenheit. It is "
                "partly cloudly, with highs in the 90's.")  # fmt: skip

    models = client.models.list()
    model = models.data[0].id

    chat_completion = client.chat.completions.create(
        messages=messages, model=model, tools=tools, extra_body=force_call
    )
    print("Chat completion results:")
    print(chat_completion)
    assert chat_completion.choices[0].finish_reason == "tool_calls"

    # Stream tool calls (handle_tool_calls_stream + handle_tool_calls_arguments)
    tool_calls_stream = client.chat.completions.create(
        messages=messages, model=model, tools=tools, stream=True, extra_body=force_call
    )
    chunks = list(tool_calls_stream)
    arguments = []
    names = []
    tool_call_idx = -1
    for chunk in chunks:
        if chunk.choices[0].delta.tool_calls:
            tool_call = chunk.choices[0].delta.tool_calls[0]
            if tool_call.index != tool_call_idx:
                tool_call_idx = chunk.choices[0].delta.tool_calls[0].index
                arguments.append("")
            if tool_call.id:
                assert tool_call.id.startswith("chatcmpl-tool-")
            if tool_call.function:
                if tool_call.function.name:
                    names.append(tool_call.function.name)
                if tool_call.function.arguments:
                    arguments[tool_call_idx] += tool_call.function.arguments
    assert names == ["get_current_weather"]
    assert json.loads(arguments[-1]) == {"city": "Dallas", "state": "TX", "unit": "fahrenheit"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"

    # Add tool call results to the conversation
    messages.append({
        "role": "assistant",
        "tool_calls": chat_completion.choices[0].message.tool_calls
    })  # fmt: skip
    available_tools = {"get_current_weather": get_current_weather}
    completion_tool_calls = chat_completion.choices[0].message.tool_calls
    for call in completion_tool_calls:
        tool_to_call = available_tools[call.function.name]
        args = json.loads(call.function.arguments)
        result = tool_to_call(**args)
        messages.append({
            "role": "tool",
            "content": result,
            "tool_call_id": call.id,
            "name": call.function.name
        })  # fmt: skip

    chat_completion_2 = client.chat.completions.create(
        messages=messages, model=model, tools=tools, stream=False, max_tokens=8
    )
    print("Chat completion2 results:")
    print(chat_completion_2)
    assert chat_completion_2.choices[0].message.role == "assistant"


def test_tool_calling_docs_quickstart(client) -> None:
    # docs/features/tool_calling.md, Quickstart (tool_choice="auto").
    def get_weather(location: str, unit: str):
        return f"Getting the weather for {location} in {unit}..."

    tool_functions = {"get_weather": get_weather}
    tools = [{
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather in a given location",
            "parameters": {
                "type": "object",
                "properties": {
                    "location": {"type": "string", "description": "City and state, e.g., 'San Francisco, CA'"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                },
                "required": ["location", "unit"],
            },
        },
    }]  # fmt: skip
    call = r'<tool_call>\n\{"name": "get_weather", "arguments": \{"location": "San Francisco, CA", "unit": "fahrenheit"\}\}\n</tool_call>'  # fmt: skip
    response = client.chat.completions.create(
        model=client.models.list().data[0].id,
        messages=[{"role": "user", "content": "What's the weather like in San Francisco?"}],
        tools=tools,
        tool_choice="auto",
        parallel_tool_calls=True,
        extra_body={"structured_outputs": {"regex": call}},
    )
    tool_call = response.choices[0].message.tool_calls[0].function
    print(f"Function called: {tool_call.name}")
    print(f"Arguments: {tool_call.arguments}")
    result = tool_functions[tool_call.name](**json.loads(tool_call.arguments))
    print(f"Result: {result}")
    assert result == "Getting the weather for San Francisco, CA in fahrenheit..."
    assert response.choices[0].message.content in (None, "")


# ------------------------------------------------------- accepted-and-ignored OpenAI fields


def test_fields_vllm_accepts_or_ignores(openai_api_base) -> None:
    client = OpenAI(api_key="EMPTY", base_url=openai_api_base)
    response = client.with_options(timeout=30, max_retries=1).chat.completions.create(
        model=MODEL,
        messages=[{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "hi"}],
        max_completion_tokens=3,
        seed=7,
        user="user-1234",
        metadata={"purpose": "docs example"},
        store=False,
        service_tier="auto",
        reasoning_effort="low",
        parallel_tool_calls=False,
        frequency_penalty=0.5,
        presence_penalty=0.5,
        logit_bias={"10": -100},
        top_p=0.9,
        temperature=0.7,
        stop=["\n\n"],
        extra_body={"top_k": 20, "min_p": 0.05, "repetition_penalty": 1.05},
    )
    assert response.usage.completion_tokens <= 3
    again = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "hi"}],
        max_completion_tokens=3, seed=7, frequency_penalty=0.5, presence_penalty=0.5,
        logit_bias={"10": -100}, top_p=0.9, temperature=0.7, stop=["\n\n"],
        extra_body={"top_k": 20, "min_p": 0.05, "repetition_penalty": 1.05},
    )  # fmt: skip
    assert again.choices[0].message.content == response.choices[0].message.content  # seed
    logprobs = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2,
        logprobs=True, top_logprobs=2,
    )  # fmt: skip
    entry = logprobs.choices[0].logprobs.content[0]
    assert entry.bytes == list(entry.token.encode()) and len(entry.top_logprobs) == 2


# -------------------------------------------------------------- tokenizer and system routes


def test_tokenize_detokenize_payloads(plain) -> None:
    base = plain.base_url
    tokens = httpx.post(
        f"{base}/tokenize",
        json={"model": MODEL, "prompt": "Hello, my name is", "add_special_tokens": True,
              "return_token_strs": True},
    ).json()  # fmt: skip
    assert set(tokens) == {"count", "max_model_len", "tokens", "token_strs"}
    assert tokens["count"] == len(tokens["tokens"]) == len(tokens["token_strs"])
    chat = httpx.post(
        f"{base}/tokenize",
        json={"model": MODEL, "messages": [{"role": "user", "content": "Hello!"}],
              "add_generation_prompt": True},
    ).json()  # fmt: skip
    assert chat["count"] > tokens["count"] and chat["token_strs"] is None
    text = httpx.post(f"{base}/detokenize", json={"model": MODEL, "tokens": tokens["tokens"]})
    assert text.json() == {"prompt": text.json()["prompt"]}
    assert text.json()["prompt"].endswith("Hello, my name is")


def test_health_ping_version_metrics(plain) -> None:
    base = plain.base_url
    assert httpx.get(f"{base}/health").status_code == 200
    assert httpx.get(f"{base}/ping").status_code == 200
    assert httpx.post(f"{base}/ping").status_code == 200
    assert isinstance(httpx.get(f"{base}/version").json()["version"], str)
    metrics = httpx.get(f"{base}/metrics").text
    assert "vllm:num_requests_running" in metrics and "vllm:generation_tokens_total" in metrics


# ------------------------------------------------------------------- what is not built yet


def test_unbuilt_routes_and_media_parts_are_clear_errors(openai_api_base) -> None:
    client = OpenAI(api_key="EMPTY", base_url=openai_api_base)
    with pytest.raises(openai.NotFoundError, match="files API is not supported"):
        client.files.list()
    with pytest.raises(openai.NotFoundError, match="audio API is not supported"):
        client.audio.transcriptions.create(model=MODEL, file=("a.wav", b"RIFF"))
    with pytest.raises(openai.NotFoundError, match="images API is not supported"):
        client.images.generate(model=MODEL, prompt="a cat")
    for part in (
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
        {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
        {"type": "video_url", "video_url": {"url": "https://example.com/cat.mp4"}},
        {"image_url": {"url": "https://example.com/cat.png"}},  # type left out, as vLLM allows
    ):
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": [{"type": "text", "text": "What is this?"}, part]}],
                max_tokens=2,
            )  # fmt: skip
        kind = part.get("type", "image_url")
        assert f"'{kind}' is not supported" in info.value.message and info.value.body["param"]
    # examples/online_serving/prompt_embed_inference_with_openai_client.py (not supported)
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(
            model=MODEL, prompt=None, max_tokens=5, temperature=0.0,
            extra_body={"prompt_embeds": "UEsDBAAACAgAAAAAAAAAAAAAAAAAAAAAAAA="},
        )  # fmt: skip
    assert info.value.body["param"] == "prompt_embeds" and "not supported" in info.value.message
    no_route = httpx.post(f"{openai_api_base}/no-such-route", json={})
    assert no_route.status_code == 404
    assert (
        no_route.json()["error"]["message"]
        == "POST /v1/no-such-route is not a route of this server."
    )
    wrong_method = httpx.get(f"{openai_api_base}/chat/completions")
    assert wrong_method.status_code == 405 and "GET" in wrong_method.json()["error"]["message"]


def test_parallel_tool_calls_false_keeps_the_first_call(client) -> None:
    # vLLM honours parallel_tool_calls=False by returning only the first call.
    one = r'<tool_call>\n\{"name": "get_current_weather", "arguments": \{"city": "(Dallas|Austin)", "state": "TX", "unit": "fahrenheit"\}\}\n</tool_call>'  # fmt: skip
    two = {"structured_outputs": {"regex": f"{one}\\n{one}"}}
    model = client.models.list().data[0].id
    both = client.chat.completions.create(
        messages=TOOL_MESSAGES, model=model, tools=WEATHER_TOOLS, extra_body=two
    )
    assert len(both.choices[0].message.tool_calls) == 2
    first = client.chat.completions.create(
        messages=TOOL_MESSAGES, model=model, tools=WEATHER_TOOLS, extra_body=two,
        parallel_tool_calls=False,
    )  # fmt: skip
    assert len(first.choices[0].message.tool_calls) == 1
    stream = client.chat.completions.create(
        messages=TOOL_MESSAGES, model=model, tools=WEATHER_TOOLS, extra_body=two,
        parallel_tool_calls=False, stream=True,
    )  # fmt: skip
    streamed = [c for chunk in stream for c in (chunk.choices[0].delta.tool_calls or [])]
    # One call: its name, then its argument pieces.
    assert {c.index for c in streamed} == {0} and sum(1 for c in streamed if c.id) == 1


def test_structured_outputs_docs_page(openai_api_base, close_the_json) -> None:
    # docs/features/structured_outputs.md, "Online Serving (OpenAI API)".
    client = OpenAI(base_url=openai_api_base, api_key="-")
    model = client.models.list().data[0].id

    completion = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Classify this sentiment: vLLM is wonderful!"}],
        extra_body={"structured_outputs": {"choices": ["positive", "negative"]}},  # sic
    )
    print(completion.choices[0].message.content)
    assert completion.choices[0].message.content in ("positive", "negative")

    completion = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Generate an example email address for Alan Turing, who works in Enigma. End in .com and new line. Example result: alan.turing@enigma.com\n"}],
        extra_body={"structured_outputs": {"regex": r"\w+@\w+\.com\n"}, "stop": ["\n"]},
        max_tokens=64,  # added: \w+ lets a random model write for ever
    )  # fmt: skip
    content = completion.choices[0].message.content
    assert re.fullmatch(r"\w+@\w+\.com", content) or completion.choices[0].finish_reason == "length"

    completion = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Generate an SQL query to show the 'username' and 'email' from the 'users' table."}],
        extra_body={"structured_outputs": {"grammar": SQL_GRAMMAR}},
    )  # fmt: skip
    assert re.fullmatch(r"SELECT col_[12]  from table_[12]  where col_[12] = [12] ",
                        completion.choices[0].message.content)  # fmt: skip
    # vLLM's backend options are accepted (and left to xgrammar's defaults here).
    options = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Yes or no?"}],
        extra_body={"structured_outputs": {"choice": ["yes", "no"], "disable_any_whitespace": True,
                                           "disable_fallback": True}},
    )  # fmt: skip
    assert options.choices[0].message.content in ("yes", "no")


def test_openai_parse_helper_with_a_pydantic_model(openai_api_base, close_the_json) -> None:
    # docs/features/structured_outputs.md, "Experimental Automatic Parsing (OpenAI API)".
    class Info(pydantic.BaseModel):
        name: str
        age: int

    client = OpenAI(base_url=openai_api_base, api_key="dummy")
    model = client.models.list().data[0].id
    completion = client.beta.chat.completions.parse(
        model=model,
        messages=[
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "My name is Cameron, I'm 28. What's my name and age?"},
        ],
        response_format=Info,
        **close_the_json,  # added: so the random-weight model closes its JSON
    )

    message = completion.choices[0].message
    print(message)
    assert message.parsed
    print("Name:", message.parsed.name)
    print("Age:", message.parsed.age)
    assert isinstance(message.parsed, Info) and message.tool_calls is None


def test_reasoning_effort_reaches_the_chat_template(client) -> None:
    # vLLM hands reasoning_effort to the template, with enable_thinking false for "none"
    # (tiny-qwen2's Qwen3-style template then writes an empty <think></think> block).
    messages = [{"role": "user", "content": "Hello!"}]
    plain = client.chat.completions.create(model="tiny-qwen2", messages=messages, max_tokens=1)
    no_thinking = client.chat.completions.create(
        model="tiny-qwen2", messages=messages, max_tokens=1, reasoning_effort="none"
    )
    low = client.chat.completions.create(
        model="tiny-qwen2", messages=messages, max_tokens=1, reasoning_effort="low"
    )
    assert no_thinking.usage.prompt_tokens > plain.usage.prompt_tokens
    assert low.usage.prompt_tokens == plain.usage.prompt_tokens
