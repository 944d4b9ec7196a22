"""Loading the model's tokenizer (local files only; never code from the model folder)."""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Any

from mono_llm.core.errors import UnsupportedModelError

if TYPE_CHECKING:
    from mono_llm.core.config import ModelConfig


def load_tokenizer(model_config: ModelConfig | str) -> Any:
    """The HF tokenizer (`transformers.PreTrainedTokenizerBase`) of a model folder."""
    from transformers import AutoTokenizer

    path = model_config if isinstance(model_config, str) else model_config.tokenizer
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise UnsupportedModelError(f"Could not load a tokenizer from {path!r}: {exc}") from exc


class TokenizerInfo:
    """Facts about a tokenizer that detokenization asks for on every token, computed once."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.added_tokens: frozenset[str] = frozenset(tokenizer.get_added_vocab())
        self.special_tokens: frozenset[str] = frozenset(tokenizer.all_special_tokens)
        # What `decode(skip_special_tokens=True)` drops: the declared special tokens and every
        # added token flagged special (chat-template markers such as <|start_header_id|>).
        decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
        self.special_ids: frozenset[int] = frozenset(tokenizer.all_special_ids) | frozenset(
            token_id for token_id, token in decoder.items() if getattr(token, "special", False)
        )
        self._decoded: dict[int, str] = {}

    def decode_token(self, token_id: int) -> str:
        """Text of one token on its own (for logprobs' decoded_token)."""
        text = self._decoded.get(token_id)
        if text is None:
            text = self.tokenizer.decode([token_id])
            if len(self._decoded) < 1_000_000:
                self._decoded[token_id] = text
        return text


@lru_cache(maxsize=16)
def _info_cache(key: int, tokenizer: Any) -> TokenizerInfo:
    return TokenizerInfo(tokenizer)


def tokenizer_info(tokenizer: Any) -> TokenizerInfo:
    return _info_cache(id(tokenizer), tokenizer)
