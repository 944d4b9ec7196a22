"""Loading the model's tokenizer (local files only; never code from the model folder)."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mono_llm.core.errors import InvalidRequestError, UnsupportedModelError

if TYPE_CHECKING:
    from mono_llm.core.config import ModelConfig


def load_tokenizer(model_config: ModelConfig | str) -> Any:
    """The HF tokenizer (`transformers.PreTrainedTokenizerBase`) of a model folder.

    Beyond `AutoTokenizer`: a chat template shipped as its own file (`chat_template.jinja`,
    or a processor-style `chat_template.json`) is picked up when tokenizer_config.json has
    none, and a tokenizer that declares no BOS/EOS token (a bare tokenizer.json) gets them
    from config.json, so templates that print `bos_token` do not render "None".
    """
    from transformers import AutoTokenizer

    path = model_config if isinstance(model_config, str) else model_config.tokenizer
    folder = Path(path).expanduser()
    _check_sentencepiece(folder)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            str(folder), local_files_only=True, trust_remote_code=False
        )
    except (OSError, ValueError, ImportError) as exc:
        raise UnsupportedModelError(f"Could not load a tokenizer from {path!r}: {exc}") from exc
    folders = [folder]
    hf_config: dict[str, Any] = {}
    if not isinstance(model_config, str):
        folders.append(Path(model_config.model))
        hf_config = model_config.text_config
    if not getattr(tokenizer, "chat_template", None):
        template = _chat_template_from_files(folders)
        if template is not None:
            tokenizer.chat_template = template
    _fill_special_tokens(tokenizer, hf_config)
    return tokenizer


# Files any tokenizer transformers can load is made of (fast, sentencepiece, BPE, WordPiece).
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
)


def check_tokenizer_folder(model_config: ModelConfig) -> None:
    """Raise a one-line error when there is no tokenizer to load, so `mono-llm serve` fails
    before the server starts (a model runner alone needs no tokenizer, so this is not part
    of reading the config)."""
    folder = Path(model_config.tokenizer)
    if not folder.is_dir():
        raise InvalidRequestError(
            f"tokenizer folder {str(folder)!r} does not exist.", param="tokenizer"
        )
    if any((folder / name).is_file() for name in _TOKENIZER_FILES) or any(
        folder.glob("*.tiktoken")
    ):
        return
    hint = "" if folder != Path(model_config.model) else " Name one with --tokenizer."
    raise InvalidRequestError(
        f"{folder} has no tokenizer files (tokenizer.json, tokenizer_config.json, "
        f"tokenizer.model, vocab.json, ...).{hint}",
        param="tokenizer",
    )


def _check_sentencepiece(folder: Path) -> None:
    """A Llama-2-style folder (tokenizer.model, no tokenizer.json) is converted by
    transformers with sentencepiece + protobuf; without them it fails with an unrelated
    message (about tiktoken), so name the real cause."""
    if not (folder / "tokenizer.model").is_file() or (folder / "tokenizer.json").is_file():
        return
    missing = [m for m in ("sentencepiece", "google.protobuf") if not _importable(m)]
    if missing:
        raise UnsupportedModelError(
            f"{folder} has a sentencepiece tokenizer (tokenizer.model, no tokenizer.json); "
            f"reading it needs {' and '.join(missing)}: pip install sentencepiece protobuf"
        )


def _importable(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _chat_template_from_files(folders: list[Path]) -> str | dict[str, str] | None:
    """The template in `chat_template.jinja` or `chat_template.json` of the first folder that
    has one (transformers >= 4.43 saves templates as their own files)."""
    for folder in folders:
        jinja_file = folder / "chat_template.jinja"
        if jinja_file.is_file():
            return jinja_file.read_text()
        json_file = folder / "chat_template.json"
        if json_file.is_file():
            try:
                data = json.loads(json_file.read_text())
            except json.JSONDecodeError as exc:
                raise UnsupportedModelError(f"{json_file} is not valid JSON: {exc}") from exc
            template = data.get("chat_template") if isinstance(data, dict) else data
            if isinstance(template, list):  # named templates, as in tokenizer_config.json
                return {t["name"]: t["template"] for t in template if isinstance(t, dict)}
            if isinstance(template, str):
                return template
    return None


def _fill_special_tokens(tokenizer: Any, hf_config: dict[str, Any]) -> None:
    for attr in ("bos_token", "eos_token"):
        if getattr(tokenizer, attr, None) is not None:
            continue
        token_id = hf_config.get(f"{attr}_id")
        if isinstance(token_id, list):
            token_id = token_id[0] if token_id else None
        if not isinstance(token_id, int) or not 0 <= token_id < len(tokenizer):
            continue
        token = tokenizer.convert_ids_to_tokens(token_id)
        if isinstance(token, str):
            setattr(tokenizer, attr, token)


def decodable_vocab_size(tokenizer: Any) -> int:
    """One past the largest id the tokenizer knows (base vocabulary and added tokens)."""
    try:
        return max(len(tokenizer), max(tokenizer.get_vocab().values(), default=-1) + 1)
    except (AttributeError, NotImplementedError, TypeError):  # not an HF tokenizer: no limit
        return 1 << 62


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
def tokenizer_info(tokenizer: Any) -> TokenizerInfo:
    """The tokenizer's `TokenizerInfo`, built once per tokenizer (keyed by identity: HF
    tokenizers hash by id) and shared by every detokenizer and logprobs lookup."""
    return TokenizerInfo(tokenizer)
