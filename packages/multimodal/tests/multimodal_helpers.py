"""Helpers shared by the multimodal tests: deterministic images and a recording HTTP server."""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
from PIL import Image


def make_image(width: int = 64, height: int = 48, seed: int = 0, mode: str = "RGB") -> Image.Image:
    """A deterministic noisy image (noise makes resampling differences visible)."""
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1, "LA": 2}[mode]
    pixels = rng.integers(0, 256, size=(height, width, channels), dtype=np.uint8)
    if channels == 1:
        pixels = pixels[..., 0]
    return Image.fromarray(pixels, mode=mode)


def encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


@dataclass
class Route:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class LocalServer:
    """A threaded HTTP server on 127.0.0.1 serving `routes`, recording each request."""

    port: int
    routes: dict[str, Route]
    hits: list[tuple[str, str]]  # (path, Host header)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def hit_paths(self) -> list[str]:
        return [path for path, _ in self.hits]
