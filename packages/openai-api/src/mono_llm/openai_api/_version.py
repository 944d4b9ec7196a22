"""Installed version of mono-llm-openai-api (read from the distribution metadata, so it cannot drift)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mono-llm-openai-api")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
