"""Structured outputs (JSON schema, JSON object, regex, choice, EBNF grammar) with xgrammar.

Each request gets a grammar matcher that, before every sampling step, writes the set of
allowed next tokens into its row of the sampler's int32 bitmask (xgrammar's layout: bit j of
word w is token 32*w + j), and then advances on the sampled token. Compiled grammars are
cached by their source, so a schema that many requests share is compiled once.
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from typing import Any

import torch

from mono_llm.core.errors import InvalidRequestError
from mono_llm.core.sampling_params import StructuredOutputsParams

_CACHE_SIZE = 256


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
        self._lock = threading.Lock()

    def __call__(self, params: StructuredOutputsParams, tokenizer: Any, vocab_size: int) -> Any:
        return GrammarMatcher(self._xgr.GrammarMatcher(self.compile(params)))

    def compile(self, params: StructuredOutputsParams) -> Any:
        key = _cache_key(params)
        with self._lock:
            compiled = self._cache.get(key)
            if compiled is not None:
                self._cache.move_to_end(key)
                return compiled
        try:
            compiled = self._compile(*key)
        except InvalidRequestError:
            raise
        except Exception as exc:  # xgrammar reports bad schemas/regexes/grammars as RuntimeError
            # xgrammar prefixes its messages with "[hh:mm:ss] /its/source.cc:123: ".
            reason = _XGRAMMAR_PREFIX.sub("", str(exc)).strip()
            raise InvalidRequestError(
                f"Invalid {key[0]} for structured outputs: {reason}", param="structured_outputs"
            ) from exc
        with self._lock:
            self._cache[key] = compiled
            if len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        return compiled

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

    def _compile(self, kind: str, source: str) -> Any:
        compiler = self._compiler
        if kind == "json":
            return compiler.compile_json_schema(source)
        if kind == "json_object":
            return compiler.compile_builtin_json_grammar()
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


def _cache_key(params: StructuredOutputsParams) -> tuple[str, str]:
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
