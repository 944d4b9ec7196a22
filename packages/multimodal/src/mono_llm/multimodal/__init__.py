"""mono_llm.multimodal (see the package README)."""

from mono_llm.multimodal._version import __version__

__all__ = ["__version__"]
