"""mono-llm's OpenAI-compatible server and the `mono-llm` command line."""

from mono_llm.openai_api._version import __version__

__all__ = ["__version__"]
