"""mono_llm.kernels (see the package README)."""

from mono_llm.kernels._version import __version__

__all__ = ["__version__"]
