"""Installed version of mono-llm-core (read from the distribution metadata, so it cannot drift)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mono-llm-core")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
