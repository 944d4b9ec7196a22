"""mono_llm.audio (see the package README)."""

from mono_llm.audio._version import __version__

__all__ = ["__version__"]
