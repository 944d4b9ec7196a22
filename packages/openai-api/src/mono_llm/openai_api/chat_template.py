"""Chat templates: where the template comes from, which content shape it expects, rendering.

A template either reads `message['content']` as a string ("string" format: list-of-parts
content is flattened to text first) or iterates over it as OpenAI's list of parts ("openai"
format). As vLLM, "auto" decides by looking at the template's jinja syntax tree, so a request
in either shape renders correctly under either kind of template.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import jinja2
import jinja2.nodes

from mono_llm.openai_api.errors import OVERLOAD_RETRY_AFTER_S, OpenAIError
from mono_llm.openai_api.template_pool import (
    TemplatePool,
    TemplatePoolBusyError,
    TemplateRenderError,
)

logger = logging.getLogger(__name__)

ContentFormat = Literal["string", "openai"]
# Arguments apply_chat_template takes itself; chat_template_kwargs may not override them.
_RESERVED_TEMPLATE_KWARGS = frozenset(
    {"conversation", "messages", "tools", "documents", "chat_template", "tokenize"}
)
# Jinja filters that only make sense on a list of parts.
_LIST_FILTERS = frozenset({"selectattr", "rejectattr", "map", "select", "reject", "first", "last"})


def load_chat_template(value: str | None) -> str | None:
    """--chat-template: a file path, or the template itself when it looks like jinja."""
    if value is None:
        return None
    path = Path(value).expanduser()
    if not any(ch in value for ch in "{}\n"):
        try:
            return path.read_text()
        except OSError as exc:
            raise ValueError(
                f"--chat-template {value!r} is neither a readable file nor an inline jinja "
                f"template: {exc}"
            ) from exc
    return value


def _is_content_access(node: jinja2.nodes.Node, content_vars: set[str]) -> bool:
    """Whether `node` reads a message's content: m['content'], m.content, or an alias of it."""
    if isinstance(node, jinja2.nodes.Getitem):
        arg = node.arg
        return isinstance(arg, jinja2.nodes.Const) and arg.value == "content"
    if isinstance(node, jinja2.nodes.Getattr):
        return node.attr == "content"
    if isinstance(node, jinja2.nodes.Name):
        return node.name in content_vars
    return False


def select_named_template(
    templates: dict[str, str], tools: list[dict[str, Any]] | None
) -> str | None:
    """From a tokenizer's named templates, the one transformers would use: "tool_use" when
    the request has tools and the tokenizer has it, else "default" (else the only one)."""
    if tools and "tool_use" in templates:
        return templates["tool_use"]
    if "default" in templates:
        return templates["default"]
    return next(iter(templates.values())) if len(templates) == 1 else None


@functools.lru_cache(maxsize=64)
def detect_content_format(template: str) -> ContentFormat:
    """ "openai" when the template treats content as a list of parts, else "string"."""
    try:
        tree = jinja2.Environment().parse(template)
    except jinja2.TemplateSyntaxError:
        return "string"
    # Variables assigned from content (`{% set content = message['content'] %}`) count too.
    content_vars: set[str] = set()
    for assign in tree.find_all(jinja2.nodes.Assign):
        if isinstance(assign.target, jinja2.nodes.Name) and _is_content_access(
            assign.node, content_vars
        ):
            content_vars.add(assign.target.name)
    for loop in tree.find_all(jinja2.nodes.For):
        if _is_content_access(loop.iter, content_vars):
            return "openai"
    for filt in tree.find_all(jinja2.nodes.Filter):
        if (
            filt.name in _LIST_FILTERS
            and filt.node is not None
            and _is_content_access(filt.node, content_vars)
        ):
            return "openai"
    for test in tree.find_all(jinja2.nodes.Test):
        if test.name in ("string", "iterable", "sequence", "mapping") and _is_content_access(
            test.node, content_vars
        ):
            return "openai"
    return "string"


_IMAGE_PART_TYPES = ("image_url", "input_image", "image")


def _normalized_parts(
    parts: list[dict[str, Any]], param: str, images: list[str] | None
) -> list[dict[str, Any]]:
    """The parts as {"type": "text", "text"} and {"type": "image"} (in their order); image URLs
    are appended to `images`. With `images` None (a text-only model) an image part is a 400."""
    out: list[dict[str, Any]] = []
    for j, part in enumerate(parts):
        # vLLM infers a missing type from the part's keys ({"image_url": {...}}).
        kind = part.get("type") or next((k for k in part if k != "type"), None)
        if kind in ("text", "input_text", "output_text"):
            if not isinstance(part.get("text"), str):
                raise OpenAIError(
                    f"A {kind!r} content part needs a 'text' string.",
                    400,
                    param=f"{param}.{j}.text",
                )
            out.append({"type": "text", "text": part["text"]})
        elif kind == "refusal":
            out.append({"type": "text", "text": str(part.get("refusal", ""))})
        elif kind in _IMAGE_PART_TYPES and images is not None:
            images.append(_image_url(part, kind, f"{param}.{j}"))
            out.append({"type": "image"})
        elif kind in _IMAGE_PART_TYPES:
            raise OpenAIError(
                f"Content part type {kind!r} is not supported by this text-only model (it does "
                "not accept image inputs); send text content only.",
                400,
                param=param,
            )
        else:
            raise OpenAIError(
                f"Content part type {kind!r} is not supported; send text or image_url parts.",
                400,
                param=param,
            )
    return out


def _image_url(part: dict[str, Any], kind: str, param: str) -> str:
    """The URL of an image part: {"image_url": {"url", "detail"}} (OpenAI; `detail` is
    accepted and ignored), {"image_url": "..."} or the Responses API's {"image_url": "..."}."""
    value = part.get("image_url") if kind != "image" else part.get("image")
    if isinstance(value, dict):
        value = value.get("url")
    if not isinstance(value, str) or not value:
        raise OpenAIError(
            "An image_url content part needs image_url.url (an http(s), data: or file: URL).",
            400,
            param=f"{param}.image_url.url",
        )
    return value


def normalize_messages(
    messages: list[dict[str, Any]],
    content_format: ContentFormat,
    *,
    images: list[str] | None = None,
    image_placeholder: str = "",
) -> list[dict[str, Any]]:
    """Messages as the template expects them (content shape, tool-call arguments as dicts).

    `images` (a list, for models that take images) collects every image part's URL in prompt
    order; string-content templates get `image_placeholder` where each image stood.
    """
    out = []
    for i, message in enumerate(messages):
        message = {k: v for k, v in message.items() if v is not None}
        content = message.get("content")
        param = f"messages.{i}.content"
        if isinstance(content, list):
            parts = _normalized_parts(content, param, images)
            if content_format == "string":
                message["content"] = "\n".join(
                    p["text"] if p["type"] == "text" else image_placeholder for p in parts
                )
            else:
                message["content"] = parts
        elif content is None:
            message["content"] = "" if content_format == "string" else []
        elif content_format == "openai":
            message["content"] = [{"type": "text", "text": content}]
        # Templates index tool-call arguments as mappings; clients send them as JSON text.
        for call in message.get("tool_calls") or []:
            function = call.get("function") or {}
            arguments = function.get("arguments")
            if isinstance(arguments, str):
                with contextlib.suppress(json.JSONDecodeError):
                    function["arguments"] = json.loads(arguments)
        out.append(message)
    return out


@dataclass(slots=True)
class ChatTemplate:
    """A model's chat template and how to feed it."""

    template: str | None  # the --chat-template override, or None for the tokenizer's own
    content_format: ContentFormat
    tokenizer_has_template: bool
    # --chat-template-content-format given as string/openai: it wins over detection everywhere.
    format_is_explicit: bool = False
    # --trust-request-chat-template: requests may bring their own template (else a 400).
    trust_request_template: bool = False
    # Worker processes that render with a deadline (the server always has one; None renders in
    # this process, for direct library use and tokenizers that are not transformers').
    pool: TemplatePool | None = None

    @classmethod
    def for_tokenizer(
        cls, tokenizer: Any, override: str | None, content_format: str = "auto"
    ) -> ChatTemplate:
        own = getattr(tokenizer, "chat_template", None)
        if isinstance(own, dict):  # several named templates: "default" sets the format
            own = select_named_template(own, None) or next(iter(own.values()), None)
        source = override or own
        if content_format == "auto":
            resolved: ContentFormat = detect_content_format(source) if source else "string"
        elif content_format in ("string", "openai"):
            resolved = content_format  # type: ignore[assignment]
        else:
            raise ValueError(
                f"chat template content format must be auto, string or openai; got "
                f"{content_format!r}."
            )
        return cls(
            template=override,
            content_format=resolved,
            tokenizer_has_template=bool(own),
            format_is_explicit=content_format != "auto",
        )

    def render(
        self,
        tokenizer: Any,
        messages: list[dict[str, Any]],
        *,
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
        tools: list[dict[str, Any]] | None = None,
        documents: list[dict[str, Any]] | None = None,
        chat_template_kwargs: dict[str, Any] | None = None,
        request_template: str | None = None,
        images: list[str] | None = None,
        image_placeholder: str = "",
    ) -> str:
        """The prompt text for `messages` (errors in the template or inputs become 400s).

        For a model that takes images pass `images=[]`: it receives each image part's URL,
        in the order the template places the image tokens. Blocks for up to the pool's
        deadline: call it off the event loop."""
        if request_template is not None and not self.trust_request_template:
            raise OpenAIError(
                "chat_template in the request is not allowed: a template is code, and this "
                "server only renders its own. Start the server with "
                "--trust-request-chat-template to accept request-level templates.",
                400,
                param="chat_template",
            )
        if not messages:
            raise OpenAIError("messages must not be empty.", 400, param="messages")
        if continue_final_message and add_generation_prompt:
            raise OpenAIError(
                "continue_final_message and add_generation_prompt cannot both be true.",
                400,
                param="continue_final_message",
            )
        if continue_final_message and (not messages or messages[-1].get("role") != "assistant"):
            raise OpenAIError(
                "continue_final_message needs the last message to be an assistant message.",
                400,
                param="continue_final_message",
            )
        template = request_template or self.template
        content_format = (
            detect_content_format(request_template)
            if request_template and not self.format_is_explicit
            else self.content_format
        )
        named = getattr(tokenizer, "chat_template", None)
        if template is None and isinstance(named, dict):
            # Named templates (tokenizer_config.json's list form): pick one here, as
            # transformers does, so its own content format is used.
            template = select_named_template(named, tools)
            if template is None:
                raise OpenAIError(
                    f"This model has several chat templates ({', '.join(named)}) and none is "
                    "named 'default'; pass chat_template in the request.",
                    400,
                    param="chat_template",
                )
            if not self.format_is_explicit:
                content_format = detect_content_format(template)
        if template is None and not self.tokenizer_has_template:
            raise OpenAIError(
                "This model's tokenizer defines no chat template: start the server with "
                "--chat-template <file or inline jinja>, or pass chat_template in the request.",
                400,
                param="chat_template",
            )
        kwargs = {
            k: v
            for k, v in (chat_template_kwargs or {}).items()
            if k not in _RESERVED_TEMPLATE_KWARGS
        }
        param = "chat_template" if request_template else "messages"
        normalized = normalize_messages(
            messages, content_format, images=images, image_placeholder=image_placeholder
        )
        try:
            if self.pool is not None and hasattr(tokenizer, "get_chat_template"):
                prompt = self.pool.render(
                    {
                        "template": tokenizer.get_chat_template(template, tools),
                        "messages": normalized,
                        "tools": tools,
                        "documents": documents,
                        "add_generation_prompt": add_generation_prompt,
                        "continue_final_message": continue_final_message,
                        # As apply_chat_template: request kwargs override the special tokens.
                        "kwargs": {**dict(getattr(tokenizer, "special_tokens_map", {})), **kwargs},
                    }
                )
            else:
                prompt = tokenizer.apply_chat_template(
                    normalized,
                    tools=tools,
                    documents=documents,
                    chat_template=template,
                    add_generation_prompt=add_generation_prompt,
                    continue_final_message=continue_final_message,
                    tokenize=False,
                    **kwargs,
                )
        except OpenAIError:
            raise
        except TemplatePoolBusyError as exc:
            raise OpenAIError(
                f"The server is overloaded ({exc}); retry later.",
                503,
                headers={"Retry-After": str(OVERLOAD_RETRY_AFTER_S)},
            ) from None
        except TemplateRenderError as exc:
            raise OpenAIError(
                f"The chat template failed to render: {exc}", 400, param=param
            ) from None
        except Exception as exc:
            # A template is code from the model or the client: whatever it raises
            # (raise_exception, 1/0, a missing attribute) is a bad request, not a crash.
            raise OpenAIError(
                f"The chat template failed to render: {exc}", 400, param=param
            ) from exc
        return prompt if isinstance(prompt, str) else str(prompt)
