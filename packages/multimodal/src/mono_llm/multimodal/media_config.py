"""Limits and permissions for fetching and decoding media, in one validated dataclass."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(slots=True)
class MediaConfig:
    """What a media URL may point to and how much of it may be read.

    The defaults are safe for a public server: no local files, no private addresses, 20 MiB
    and 40 megapixels per image, and a request that cannot hang for more than `total_timeout_s`.
    """

    allowed_media_domains: tuple[str, ...] = ()
    """Hosts (names or IP literals, matched exactly, case-insensitively) that may resolve to
    private, loopback or otherwise non-public addresses. Every other host must resolve only
    to public addresses."""
    allowed_local_media_path: str | None = None
    """Folder under which `file://` URLs may read (symlinks resolved first); None refuses
    every `file://` URL."""
    max_image_bytes: int = 20 * 1024 * 1024
    """Largest encoded image accepted from any source, enforced while streaming."""
    max_image_pixels: int = 40_000_000
    """Largest width × height accepted, checked from the header before pixels are decoded."""
    connect_timeout_s: float = 5.0
    """Time allowed to resolve a host and open a connection (each redirect hop)."""
    read_timeout_s: float = 10.0
    """Longest wait for the next chunk of a response."""
    total_timeout_s: float = 30.0
    """Deadline for the whole fetch, redirects included, so a slow drip cannot hold a request."""
    max_redirects: int = 3
    """Redirects followed; each target is re-checked like the original URL."""
    ca_bundle: str | None = None
    """PEM file of CA certificates that https media servers are verified against, instead of
    the system store (for a private media server with its own CA)."""

    def __post_init__(self) -> None:
        if isinstance(self.allowed_media_domains, str):
            self.allowed_media_domains = (self.allowed_media_domains,)
        self.allowed_media_domains = tuple(
            normalize_host(host) for host in self.allowed_media_domains if host.strip()
        )
        for name in ("max_image_bytes", "max_image_pixels"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("connect_timeout_s", "read_timeout_s", "total_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_redirects < 0:
            raise ValueError(f"max_redirects must be >= 0, got {self.max_redirects}")
        if self.ca_bundle is not None and not Path(self.ca_bundle).is_file():
            raise ValueError(f"ca_bundle {self.ca_bundle!r} is not a file")
        if self.allowed_local_media_path is not None:
            root = Path(self.allowed_local_media_path)
            if not root.is_absolute():
                raise ValueError(
                    f"allowed_local_media_path must be an absolute path, got {str(root)!r}"
                )

    def host_is_allowed(self, host: str) -> bool:
        """True when `host` is named in `allowed_media_domains`."""
        return normalize_host(host) in self.allowed_media_domains


def normalize_host(host: str) -> str:
    """Lower-case, without a trailing dot or IPv6 brackets, so equal hosts compare equal."""
    host = host.strip().lower().rstrip(".")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host
