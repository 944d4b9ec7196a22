"""Image inputs of chat requests: count limits, fetching and preprocessing, per served model.

Images are fetched, decoded and turned into pixel values by the `mono_llm.multimodal`
package (the `[multimodal]` extra), imported on the first request that carries an image; a
server without it answers such requests with a 400 that says what to install. Fetch rules
(which hosts may resolve to private addresses, which local folder `file://` may read, time
and size limits) come from the server flags. What the engine receives is pixel tensors with
their placeholder-token counts and content hashes.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from mono_llm.openai_api.errors import OpenAIError

if TYPE_CHECKING:
    from mono_llm.openai_api.served_models import ServedModel
    from mono_llm.openai_api.server_state import ServerArgs

INSTALL_HINT = "pip install mono-llm[multimodal]"


def image_limit(model: ServedModel) -> int:
    """Images one prompt of `model` may carry (0 for a text-only model)."""
    limits = model.engine.model_config.limit_mm_per_prompt or {}
    return int(limits.get("image", 0))


def check_image_count(model: ServedModel, count: int, param: str = "messages") -> None:
    """400 before anything is fetched: images for a text-only model, or too many."""
    if not count:
        return
    limit = image_limit(model)
    if limit == 0 and not model.engine.model_config.limit_mm_per_prompt:
        raise OpenAIError(
            f"The model `{model.name}` is a text-only model and does not accept image inputs; "
            "send text content only.",
            400,
            param=param,
        )
    if count > limit:
        raise OpenAIError(
            f"At most {limit} image(s) may be provided in one prompt; got {count} "
            f"(the server's --limit-mm-per-prompt).",
            400,
            param=param,
        )


class MediaInputs:
    """One per server: an image loader per served model, made on its first image."""

    def __init__(self, args: ServerArgs) -> None:
        self.args = args
        self._loaders: dict[str, Any] = {}
        self._config: Any = None

    def placeholder_text(self, model: ServedModel) -> str:
        """What a string-content template gets in place of an image part: the model's image
        token (inside its vision start/end tokens for Qwen2-VL)."""
        config = model.engine.model_config.hf_config
        tokenizer = model.tokenizer
        image_id = config.get("image_token_id", config.get("image_token_index"))
        if image_id is None:
            return ""
        text = tokenizer.convert_ids_to_tokens(int(image_id))
        start, end = config.get("vision_start_token_id"), config.get("vision_end_token_id")
        if start is not None and end is not None:
            text = (
                tokenizer.convert_ids_to_tokens(int(start))
                + text
                + tokenizer.convert_ids_to_tokens(int(end))
            )
        return text

    async def load(self, model: ServedModel, urls: list[str], param: str = "messages") -> list[Any]:
        """The processed images of `urls`, in order (each fetched at most once)."""
        check_image_count(model, len(urls), param)
        if not urls:
            return []
        loader = self._loader(model)
        errors = self._errors()
        try:
            # One at a time: a prompt's images share one fetch deadline each, and a request
            # cannot open dozens of connections at once.
            return [await loader.load(url) for url in urls]
        except errors as exc:
            raise OpenAIError(f"Invalid image input: {exc}", 400, param=param) from exc
        except asyncio.TimeoutError as exc:
            raise OpenAIError(
                "Timed out fetching an image (--media-fetch-timeout).", 400, param=param
            ) from exc

    def _errors(self) -> type[Exception]:
        from mono_llm.multimodal import MediaError

        return MediaError

    def _loader(self, model: ServedModel) -> Any:
        loader = self._loaders.get(model.name)
        if loader is not None:
            return loader
        try:
            import mono_llm.multimodal as mm
        except ImportError as exc:
            raise OpenAIError(
                f"Image inputs need the multimodal extra, which is not installed on this server: "
                f"{INSTALL_HINT}",
                400,
                param="messages",
            ) from exc
        if self._config is None:
            args = self.args
            self._config = mm.MediaConfig(
                allowed_media_domains=tuple(args.allowed_media_domains or ()),
                allowed_local_media_path=args.allowed_local_media_path,
                max_image_bytes=args.max_image_bytes,
                total_timeout_s=args.media_fetch_timeout,
                read_timeout_s=min(10.0, args.media_fetch_timeout),
                connect_timeout_s=min(5.0, args.media_fetch_timeout),
            )
        try:
            processor = mm.load_image_processor(model.root)
        except (OSError, ValueError, KeyError) as exc:
            raise OpenAIError(
                f"The model `{model.name}` has no usable image processor config: {exc}",
                400,
                param="messages",
            ) from exc
        loader = mm.ImageLoader(processor, self._config)
        self._loaders[model.name] = loader
        return loader


def image_token_total(images: list[Any]) -> int:
    return sum(int(image.num_tokens) for image in images)
