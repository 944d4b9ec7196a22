"""Fetch an image over http(s) without letting the URL reach into private networks.

The address check and the connection are one step: a network backend resolves the host,
refuses the whole host if any of its addresses is non-public (unless the host is allow-listed),
and connects to an address it has just checked. There is no second DNS lookup an attacker
could answer differently (DNS rebinding), while the URL's host name still goes into the Host
header and TLS SNI, so virtual hosting and certificate checks work as usual. Redirects are
followed by hand so every hop goes through the same backend, and nothing is sent to a refused
address at all.
"""

from __future__ import annotations

import asyncio
import functools
import socket
import ssl
from collections.abc import AsyncIterator, Iterable
from typing import Any

import anyio
import httpcore
import httpx

from mono_llm.multimodal.address_policy import parse_ip, refusal_reason
from mono_llm.multimodal.errors import (
    MediaError,
    MediaFetchError,
    MediaForbiddenError,
    MediaTooLargeError,
    short_url,
)
from mono_llm.multimodal.media_config import MediaConfig

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# Types a server may send for an image it does not label precisely; the decoder decides.
_GENERIC_CONTENT_TYPES = frozenset({"application/octet-stream", "binary/octet-stream"})


class _CheckedBackend(httpcore.AsyncNetworkBackend):
    """Resolves, checks and connects in one call, so the checked address is the one used."""

    def __init__(self, config: MediaConfig) -> None:
        self._config = config
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await self._resolve(host, port, timeout)
        if not self._config.host_is_allowed(host):
            for address in addresses:
                ip = parse_ip(address)
                reason = "an unparseable address" if ip is None else refusal_reason(ip)
                if reason is not None:
                    raise MediaForbiddenError(
                        f"refusing to fetch media from host {host!r}: it resolves to {reason}; "
                        "only public addresses are allowed unless the host is listed in "
                        "allowed_media_domains"
                    )
        last_error: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    address, port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as error:
                last_error = error
        raise MediaFetchError(f"could not connect to {host}:{port}: {last_error}")

    async def _resolve(self, host: str, port: int, timeout: float | None) -> list[str]:
        literal = parse_ip(host)
        if literal is not None:
            return [str(literal)]
        try:
            with anyio.fail_after(timeout):
                infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except TimeoutError as error:
            raise MediaFetchError(f"resolving {host!r} timed out") from error
        except (OSError, UnicodeError, ValueError) as error:  # IDNA errors are UnicodeErrors
            raise MediaFetchError(f"could not resolve host {host!r}: {error}") from error
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        if not addresses:
            raise MediaFetchError(f"host {host!r} has no addresses")
        return addresses

    async def connect_unix_socket(self, *args: Any, **kwargs: Any) -> httpcore.AsyncNetworkStream:
        raise MediaForbiddenError("unix sockets are not a media source")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _ResponseStream(httpx.AsyncByteStream):
    def __init__(self, stream: Any) -> None:
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        if hasattr(self._stream, "aclose"):
            await self._stream.aclose()


class _CheckedTransport(httpx.AsyncBaseTransport):
    """httpx transport over an httpcore pool that uses `_CheckedBackend` for every connection."""

    def __init__(self, config: MediaConfig) -> None:
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=_ssl_context(config.ca_bundle),
            max_connections=4,
            http1=True,
            http2=False,
            retries=0,
            network_backend=_CheckedBackend(config),
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,  # type: ignore[arg-type]
            extensions=request.extensions,
        )
        response = await self._pool.handle_async_request(core_request)
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_ResponseStream(response.stream),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._pool.aclose()


@functools.lru_cache(maxsize=8)
def _ssl_context(ca_bundle: str | None) -> ssl.SSLContext:
    # Built once per CA bundle: loading certificates costs milliseconds, and a context is
    # never mutated after this. Hostname checks stay on: SNI and the certificate name are the
    # URL's host even though the socket goes to a pre-resolved address.
    return ssl.create_default_context(cafile=ca_bundle)


def check_http_url(url: httpx.URL, config: MediaConfig) -> None:
    """Refuse what can be refused before any connection: schemes, credentials, literal IPs."""
    if url.scheme not in ("http", "https"):
        raise MediaForbiddenError(f"media URL scheme {url.scheme!r} is not allowed here")
    # raw_host: the ASCII (punycode) form, exactly what is resolved; never decoded here.
    host = url.raw_host.decode("ascii", errors="replace")
    if not host:
        raise MediaFetchError(f"media URL {short_url(str(url))!r} has no host")
    try:
        url.host  # noqa: B018 - httpx decodes punycode for the Host header; refuse bad labels now
    except UnicodeError as error:
        raise MediaFetchError(f"media URL has an invalid host name: {error}") from error
    if url.userinfo:
        raise MediaForbiddenError("media URLs must not carry credentials")
    literal = parse_ip(host)
    if literal is not None and not config.host_is_allowed(host):
        reason = refusal_reason(literal)
        if reason is not None:
            raise MediaForbiddenError(
                f"refusing to fetch media from {reason}; only public addresses are allowed "
                "unless the host is listed in allowed_media_domains"
            )


async def fetch_http(url: str, config: MediaConfig) -> bytes:
    """The body of `url`, following at most `config.max_redirects` checked redirects."""
    try:
        return await asyncio.wait_for(_fetch_http(url, config), timeout=config.total_timeout_s)
    except asyncio.TimeoutError as error:
        raise MediaFetchError(
            f"fetching {short_url(url)!r} took longer than {config.total_timeout_s:g} s"
        ) from error


async def _fetch_http(url: str, config: MediaConfig) -> bytes:
    timeout = httpx.Timeout(
        connect=config.connect_timeout_s,
        read=config.read_timeout_s,
        write=config.read_timeout_s,
        pool=config.connect_timeout_s,
    )
    try:
        current = httpx.URL(url)
    except httpx.InvalidURL as error:
        raise MediaFetchError(f"malformed media URL {short_url(url)!r}: {error}") from error
    # trust_env=False: a proxy from the environment would connect on our behalf, unchecked.
    async with httpx.AsyncClient(
        transport=_CheckedTransport(config),
        timeout=timeout,
        follow_redirects=False,
        trust_env=False,
        headers={"Accept": "image/*", "Accept-Encoding": "identity"},
    ) as client:
        for _hop in range(config.max_redirects + 1):
            check_http_url(current, config)
            try:
                async with client.stream("GET", current) as response:
                    if response.status_code in _REDIRECT_STATUSES:
                        location = response.headers.get("location")
                        if not location:
                            raise MediaFetchError(
                                f"redirect from {short_url(str(current))!r} has no Location"
                            )
                        current = current.join(location)
                        continue
                    return await _read_body(response, config)
            except MediaError:
                raise
            except (httpx.InvalidURL, UnicodeError) as error:  # e.g. a malformed Location
                raise MediaFetchError(f"malformed media URL: {error}") from error
            except httpx.TimeoutException as error:
                raise MediaFetchError(f"fetching {short_url(str(current))!r} timed out") from error
            except (httpx.HTTPError, httpcore.ConnectError, httpcore.ConnectTimeout) as error:
                raise MediaFetchError(
                    f"could not fetch {short_url(str(current))!r}: {error or type(error).__name__}"
                ) from error
            except httpcore.TimeoutException as error:
                raise MediaFetchError(f"fetching {short_url(str(current))!r} timed out") from error
            except (httpcore.NetworkError, httpcore.ProtocolError, OSError) as error:
                raise MediaFetchError(
                    f"could not fetch {short_url(str(current))!r}: {error or type(error).__name__}"
                ) from error
    raise MediaFetchError(f"more than {config.max_redirects} redirects fetching {short_url(url)!r}")


async def _read_body(response: httpx.Response, config: MediaConfig) -> bytes:
    where = short_url(str(response.url))
    if response.status_code != 200:
        raise MediaFetchError(f"fetching {where!r} returned HTTP {response.status_code}")
    content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
    is_image = content_type.startswith("image/") or content_type in _GENERIC_CONTENT_TYPES
    if content_type and not is_image:
        raise MediaFetchError(
            f"{where!r} is not an image: the server sent content-type {content_type!r}"
        )
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        # Compressed bodies would let a small download inflate past the byte limit.
        raise MediaFetchError(f"{where!r} was sent with content-encoding {encoding!r}")
    limit = config.max_image_bytes
    declared = response.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise MediaTooLargeError(
            f"image at {where!r} is {int(declared)} bytes, over the limit of {limit} bytes"
        )
    body = bytearray()
    async for chunk in response.aiter_raw():
        body += chunk
        if len(body) > limit:
            raise MediaTooLargeError(f"image at {where!r} is over the limit of {limit} bytes")
    return bytes(body)
