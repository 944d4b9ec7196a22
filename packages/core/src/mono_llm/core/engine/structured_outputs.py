"""Structured outputs (JSON schema, JSON object, regex, choice, EBNF grammar) with xgrammar.

Each request gets a grammar matcher that, before every sampling step, writes the set of
allowed next tokens into its row of the sampler's int32 bitmask (xgrammar's layout: bit j of
word w is token 32*w + j), and then advances on the sampled token. Compiled grammars are
cached by their source, so a schema that many requests share is compiled once.

Compiling is the one structured-output cost a client controls: a JSON schema with thousands
of optional properties took a minute and gigabytes. So sources are bounded before compiling
(bytes; for JSON schemas also property count and nesting depth), the server waits at most
GRAMMAR_COMPILE_TIMEOUT_S for a compile (then a 400; a compile nobody waits for any more is
abandoned: it finishes in its worker thread, bounded by the size limits, and is cached), a
source being compiled is compiled once however many requests ask for it, and the cache is
bounded by the compiled grammars' memory, not their count.
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from concurrent.futures import Future
from typing import Any

import torch

from mono_llm.core.errors import InvalidRequestError
from mono_llm.core.sampling_params import StructuredOutputsParams

_CACHE_SIZE = 256
# Bounds on what a request may ask to compile (a 2,000-property schema took 55 s and 590 MB).
MAX_GRAMMAR_SOURCE_BYTES = 64 * 1024
MAX_SCHEMA_PROPERTIES = 512
MAX_SCHEMA_DEPTH = 32
# Seconds a request waits for its grammar to compile before it is refused (400).
GRAMMAR_COMPILE_TIMEOUT_S = 10.0
# Memory the compiled-grammar cache may hold (xgrammar reports each grammar's size).
GRAMMAR_CACHE_BYTES = 256 * 1024 * 1024


class GrammarTooLargeError(InvalidRequestError):
    """The schema, regex or grammar is past the size limits (HTTP 400)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, param="structured_outputs")


class GrammarCompileTimeoutError(InvalidRequestError):
    """The grammar did not compile within GRAMMAR_COMPILE_TIMEOUT_S (HTTP 400)."""

    def __init__(self) -> None:
        super().__init__(
            f"The structured-output grammar did not compile within "
            f"{GRAMMAR_COMPILE_TIMEOUT_S:g} s; simplify the schema.",
            param="structured_outputs",
        )


def check_grammar_size(kind: str, source: str) -> None:
    """Refuse sources too large to compile in bounded time and memory."""
    size = len(source.encode("utf-8"))
    if size > MAX_GRAMMAR_SOURCE_BYTES:
        raise GrammarTooLargeError(
            f"The structured-output {kind} is {size} bytes; the limit is "
            f"{MAX_GRAMMAR_SOURCE_BYTES}."
        )
    if kind != "json":
        return
    try:
        schema = json.loads(source)
    except ValueError:
        return  # xgrammar reports invalid JSON with its reason
    properties = 0
    stack: list[tuple[Any, int]] = [(schema, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_SCHEMA_DEPTH:
            raise GrammarTooLargeError(
                f"The JSON schema nests deeper than {MAX_SCHEMA_DEPTH} levels."
            )
        if isinstance(node, dict):
            props = node.get("properties")
            if isinstance(props, dict):
                properties += len(props)
            stack.extend((value, depth + 1) for value in node.values())
        elif isinstance(node, list):
            stack.extend((value, depth + 1) for value in node)
    if properties > MAX_SCHEMA_PROPERTIES:
        raise GrammarTooLargeError(
            f"The JSON schema has {properties} properties; the limit is {MAX_SCHEMA_PROPERTIES}."
        )


class GrammarMatcher:
    """One request's matcher (the sampler's `StructuredOutputGrammar` protocol)."""

    def __init__(self, matcher: Any) -> None:
        self._matcher = matcher

    def fill_next_token_bitmask(self, bitmask: torch.Tensor, index: int) -> None:
        self._matcher.fill_next_token_bitmask(bitmask, index)

    def accept_token(self, token_id: int) -> bool:
        return bool(self._matcher.accept_token(token_id))

    def is_terminated(self) -> bool:
        return bool(self._matcher.is_terminated())


class ReasoningGate:
    """A matcher that allows every token until the reasoning end marker has been generated,
    then constrains what follows (structured outputs apply to the answer, not the thinking)."""

    def __init__(self, matcher: GrammarMatcher, marker: str, tokenizer: Any) -> None:
        self._matcher = matcher
        self._marker = marker
        self._tokenizer = tokenizer
        self._tail = ""  # the last generated characters, to spot the marker
        self._active = False

    def fill_next_token_bitmask(self, bitmask: torch.Tensor, index: int) -> None:
        if self._active:
            self._matcher.fill_next_token_bitmask(bitmask, index)
        else:
            bitmask[index].fill_(-1)

    def accept_token(self, token_id: int) -> bool:
        if self._active:
            return self._matcher.accept_token(token_id)
        self._tail = (self._tail + self._tokenizer.decode([token_id]))[-4 * len(self._marker) :]
        self._active = self._marker in self._tail
        return True

    def is_terminated(self) -> bool:
        return self._active and self._matcher.is_terminated()


_XGRAMMAR_PREFIX = re.compile(r"\[\d{2}:\d{2}:\d{2}\] \S+:\d+: ")


class XGrammarBackend:
    """Compiles StructuredOutputsParams for one tokenizer; thread-safe, with an LRU cache."""

    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: set[int]) -> None:
        import xgrammar

        self._xgr = xgrammar
        info = xgrammar.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab_size, stop_token_ids=sorted(stop_token_ids) or None
        )
        self._compiler = xgrammar.GrammarCompiler(info)
        self._cache: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self._cache_bytes = 0
        self.cache_limit_bytes = GRAMMAR_CACHE_BYTES
        self._inflight: dict[tuple[str, str], Future[Any]] = {}
        self._lock = threading.Lock()

    def __call__(self, params: StructuredOutputsParams, tokenizer: Any, vocab_size: int) -> Any:
        matcher = GrammarMatcher(self._xgr.GrammarMatcher(self.compile(params)))
        if params.reasoning_end:
            return ReasoningGate(matcher, params.reasoning_end, tokenizer)
        return matcher

    def compile(self, params: StructuredOutputsParams) -> Any:
        key = _cache_key(params)
        check_grammar_size(*_source_key(params))
        with self._lock:
            compiled = self._cache.get(key)
            if compiled is not None:
                self._cache.move_to_end(key)
                return compiled
            pending = self._inflight.get(key)
            owner = pending is None
            if owner:
                pending = self._inflight[key] = Future()
        assert pending is not None
        if not owner:  # the same source is compiling for another request: share it
            return pending.result()
        try:
            compiled = self._compile_or_explain(params)
        except BaseException as exc:
            with self._lock:
                self._inflight.pop(key, None)
            pending.set_exception(exc)
            raise
        with self._lock:
            self._inflight.pop(key, None)
            self._remember(key, compiled)
        pending.set_result(compiled)
        return compiled

    def _compile_or_explain(self, params: StructuredOutputsParams) -> Any:
        try:
            return self._compile(*_source_key(params), _json_options(params))
        except InvalidRequestError:
            raise
        except Exception as exc:  # xgrammar reports bad schemas/regexes/grammars as RuntimeError
            # xgrammar prefixes its messages with "[hh:mm:ss] /its/source.cc:123: ".
            reason = _XGRAMMAR_PREFIX.sub("", str(exc)).strip()
            raise InvalidRequestError(
                f"Invalid {_source_key(params)[0]} for structured outputs: {reason}",
                param="structured_outputs",
            ) from exc

    def _remember(self, key: tuple[str, str], compiled: Any) -> None:
        """Cache `compiled`, evicting the least recently used past the count or memory bound
        (called with the lock held)."""
        self._cache[key] = compiled
        self._cache_bytes += _grammar_bytes(compiled)
        while len(self._cache) > 1 and (
            len(self._cache) > _CACHE_SIZE or self._cache_bytes > self.cache_limit_bytes
        ):
            _, evicted = self._cache.popitem(last=False)
            self._cache_bytes -= _grammar_bytes(evicted)

    @property
    def cache_bytes(self) -> int:
        return self._cache_bytes

    def _compile_structural_tag(self, source: str) -> Any:
        """vLLM's two spellings: the legacy `{"structures": [{begin, schema, end}],
        "triggers": [...]}` (its structured-outputs example) and xgrammar's `{"format": ...}`."""
        tag = json.loads(source)
        if isinstance(tag, dict) and "structures" in tag:
            items = [
                self._xgr.StructuralTagItem(
                    begin=item["begin"], schema=json.dumps(item.get("schema", {})), end=item["end"]
                )
                for item in tag["structures"]
            ]
            return self._compiler.compile_structural_tag(items, list(tag.get("triggers", [])))
        return self._compiler.compile_structural_tag(source)

    def _compile_json(self, schema: str, options: tuple[Any, ...]) -> Any:
        compact, strict, whitespace = options
        if whitespace is not None:
            # xgrammar has no whitespace option: write the schema's EBNF with its whitespace
            # rule replaced by the pattern's (both are plain EBNF text).
            from xgrammar.testing import _regex_to_ebnf

            ebnf = str(self._xgr.Grammar.from_json_schema(schema, strict_mode=strict))
            rule = _regex_to_ebnf(whitespace).replace("root ::=", "json_whitespace ::=", 1)
            return self._compiler.compile_grammar(
                ebnf.replace("[ \\n\\r\\t]*", "json_whitespace") + "\n" + rule
            )
        return self._compiler.compile_json_schema(
            schema,
            any_whitespace=not compact,
            separators=(",", ":") if compact else None,
            strict_mode=strict,
        )

    def _compile(
        self, kind: str, source: str, options: tuple[Any, ...] = (False, True, None)
    ) -> Any:
        compiler = self._compiler
        if kind == "json":
            return self._compile_json(source, options)
        if kind == "json_object":
            # Any JSON *object* (the builtin JSON grammar also allows a top-level array or
            # scalar, which JSON-mode clients cannot use).
            return self._compile_json('{"type": "object"}', (options[0], False, options[2]))
        if kind == "regex":
            return compiler.compile_regex(source)
        if kind in ("choice", "grammar"):
            try:
                return compiler.compile_grammar(source)
            except Exception:
                if kind == "choice":
                    raise
                return compiler.compile_lark(source)  # vLLM also accepts Lark grammars
        if kind == "structural_tag":
            return self._compile_structural_tag(source)
        raise InvalidRequestError(
            f"Structured outputs of kind {kind!r} are not supported.", param="structured_outputs"
        )


def _grammar_bytes(compiled: Any) -> int:
    return int(getattr(compiled, "memory_size_bytes", 0) or 0)


def _json_options(params: StructuredOutputsParams) -> tuple[Any, ...]:
    """(compact, strict, whitespace pattern) for JSON grammars."""
    strict = params.disable_additional_properties is not False
    return bool(params.disable_any_whitespace), strict, params.whitespace_pattern


def _cache_key(params: StructuredOutputsParams) -> tuple[str, str]:
    key = _source_key(params)
    if key[0] in ("json", "json_object"):  # the options change the compiled JSON grammar
        return f"{key[0]}{_json_options(params)}", key[1]
    return key


def _source_key(params: StructuredOutputsParams) -> tuple[str, str]:
    if params.json is not None:
        schema = params.json
        return "json", schema if isinstance(schema, str) else json.dumps(schema, sort_keys=True)
    if params.json_object:
        return "json_object", ""
    if params.regex is not None:
        return "regex", params.regex
    if params.choice is not None:
        # An EBNF alternation of string literals; JSON string escaping is valid EBNF escaping.
        alternatives = " | ".join(
            json.dumps(choice, ensure_ascii=False) for choice in params.choice
        )
        return "choice", f"root ::= {alternatives}"
    if params.grammar is not None:
        return "grammar", params.grammar
    return "structural_tag", params.structural_tag or ""


def make_grammar_factory(tokenizer: Any, vocab_size: int, stop_token_ids: set[int]) -> Any:
    """An xgrammar-backed factory, or None when xgrammar is not installed."""
    try:
        import xgrammar  # noqa: F401
    except ImportError:
        return None
    backend: XGrammarBackend | None = None
    lock = threading.Lock()

    def factory(params: StructuredOutputsParams, tok: Any, vocab: int) -> Any:
        nonlocal backend
        with lock:  # built on first use: TokenizerInfo scans the whole vocabulary
            if backend is None:
                backend = XGrammarBackend(tokenizer, vocab_size, stop_token_ids)
        return backend(params, tok, vocab)

    return factory
