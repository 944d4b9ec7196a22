"""mono_llm.multimodal: image inputs for vision-language models (see the package README).

Fetch (http(s) with address checks, data:, file: under an allowed folder), decode (Pillow,
EXIF-upright RGB, pixel limits) and preprocess images exactly as transformers' processors do,
without importing the engine, the server or transformers.
"""

from mono_llm.multimodal._version import __version__
from mono_llm.multimodal.decode import decode_image, image_content_hash, to_rgb
from mono_llm.multimodal.errors import (
    ImageDecodeError,
    ImageProcessingError,
    MediaError,
    MediaFetchError,
    MediaForbiddenError,
    MediaTooLargeError,
)
from mono_llm.multimodal.image_cache import ProcessedImageCache
from mono_llm.multimodal.image_loader import ImageLoader
from mono_llm.multimodal.media_config import MediaConfig
from mono_llm.multimodal.media_url import fetch_image_bytes, fetch_image_bytes_sync
from mono_llm.multimodal.placeholders import PlaceholderRange, expand_image_placeholders
from mono_llm.multimodal.processors import (
    ClipImageProcessor,
    ImageProcessor,
    ProcessedImage,
    Qwen2VLImageProcessor,
    image_processor_from_config,
    llava_num_image_tokens,
    load_image_processor,
    smart_resize,
)

__all__ = [
    "ClipImageProcessor",
    "ImageDecodeError",
    "ImageLoader",
    "ImageProcessingError",
    "ImageProcessor",
    "MediaConfig",
    "MediaError",
    "MediaFetchError",
    "MediaForbiddenError",
    "MediaTooLargeError",
    "PlaceholderRange",
    "ProcessedImage",
    "ProcessedImageCache",
    "Qwen2VLImageProcessor",
    "__version__",
    "decode_image",
    "expand_image_placeholders",
    "fetch_image_bytes",
    "fetch_image_bytes_sync",
    "image_content_hash",
    "image_processor_from_config",
    "llava_num_image_tokens",
    "load_image_processor",
    "smart_resize",
    "to_rgb",
]
