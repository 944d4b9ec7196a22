"""Fetching from http(s), data: and file: URLs, with every refusal a media server needs."""

from __future__ import annotations

import asyncio
import base64
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from multimodal_helpers import LocalServer, Route, encode, make_image

from mono_llm.multimodal import (
    MediaConfig,
    MediaFetchError,
    MediaForbiddenError,
    MediaTooLargeError,
    fetch_image_bytes,
    fetch_image_bytes_sync,
    http_fetch,
)

PNG = encode(make_image(32, 24))
LOCAL = MediaConfig(allowed_media_domains=("127.0.0.1",), connect_timeout_s=2, read_timeout_s=2)


def serve_png(server: LocalServer, path: str = "/cat.png", body: bytes = PNG) -> str:
    server.routes[path] = Route(body=body, headers={"Content-Type": "image/png"})
    return server.url(path)


def test_http_fetch_from_allow_listed_local_server(local_server: LocalServer) -> None:
    url = serve_png(local_server)
    assert fetch_image_bytes_sync(url, LOCAL) == PNG
    assert asyncio.run(fetch_image_bytes(url, LOCAL)) == PNG


def test_loopback_refused_without_allow_list(local_server: LocalServer) -> None:
    url = serve_png(local_server)
    with pytest.raises(MediaForbiddenError, match="loopback"):
        fetch_image_bytes_sync(url, MediaConfig())
    with pytest.raises(MediaForbiddenError):  # by name too: localhost resolves to loopback
        fetch_image_bytes_sync(local_server.url("/cat.png", host="localhost"), MediaConfig())
    assert local_server.hits == []


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:127.0.0.1]/x.png",
        "http://10.0.0.1/x.png",
        "http://[fd00:ec2::254]/x.png",
        "http://0.0.0.0/x.png",
    ],
)
def test_private_literals_refused_before_connecting(url: str) -> None:
    with pytest.raises(MediaForbiddenError):
        fetch_image_bytes_sync(url, MediaConfig(connect_timeout_s=0.5))


def test_redirect_into_private_address_is_refused_without_fetching(
    local_server: LocalServer,
) -> None:
    secret = serve_png(local_server, "/secret.png")
    # "localhost" is not allow-listed (only the literal 127.0.0.1 is), so the hop is re-checked
    # and refused before any request reaches /secret.png.
    local_server.routes["/hop"] = Route(
        status=302, headers={"Location": secret.replace("127.0.0.1", "localhost")}
    )
    with pytest.raises(MediaForbiddenError, match="localhost"):
        fetch_image_bytes_sync(local_server.url("/hop"), LOCAL)
    local_server.routes["/metadata"] = Route(
        status=307, headers={"Location": "http://169.254.169.254/latest/meta-data/"}
    )
    with pytest.raises(MediaForbiddenError, match=re.escape("169.254.169.254")):
        fetch_image_bytes_sync(local_server.url("/metadata"), LOCAL)
    assert local_server.hit_paths() == ["/hop", "/metadata"]


def test_redirects_followed_and_counted(local_server: LocalServer) -> None:
    serve_png(local_server, "/final.png")
    local_server.routes["/a"] = Route(status=301, headers={"Location": "/b"})
    local_server.routes["/b"] = Route(status=302, headers={"Location": "/final.png"})
    assert fetch_image_bytes_sync(local_server.url("/a"), LOCAL) == PNG
    local_server.routes["/loop"] = Route(status=302, headers={"Location": "/loop"})
    with pytest.raises(MediaFetchError, match="redirects"):
        fetch_image_bytes_sync(local_server.url("/loop"), LOCAL)
    assert local_server.hit_paths().count("/loop") == LOCAL.max_redirects + 1


def test_redirect_to_file_scheme_refused(local_server: LocalServer) -> None:
    local_server.routes["/to-file"] = Route(status=302, headers={"Location": "file:///etc/passwd"})
    with pytest.raises(MediaForbiddenError, match="scheme"):
        fetch_image_bytes_sync(local_server.url("/to-file"), LOCAL)


def test_oversized_body_refused(local_server: LocalServer) -> None:
    small = MediaConfig(allowed_media_domains=("127.0.0.1",), max_image_bytes=len(PNG) - 1)
    url = serve_png(local_server)
    with pytest.raises(MediaTooLargeError, match="limit"):
        fetch_image_bytes_sync(url, small)


def test_oversized_body_without_content_length_stops_streaming(local_server: LocalServer) -> None:
    # A lying server: no Content-Length, body streamed until close. The limit is enforced
    # while reading, not from the header.
    big = b"\x89PNG" + b"\0" * 200_000
    local_server.routes["/big"] = Route(
        body=big, headers={"Content-Type": "image/png", "Connection": "close", "Content-Length": ""}
    )
    small = MediaConfig(allowed_media_domains=("127.0.0.1",), max_image_bytes=10_000)
    with pytest.raises((MediaTooLargeError, MediaFetchError)):
        fetch_image_bytes_sync(local_server.url("/big"), small)


def test_non_image_content_type_refused(local_server: LocalServer) -> None:
    local_server.routes["/page"] = Route(
        body=b"<html></html>", headers={"Content-Type": "text/html"}
    )
    with pytest.raises(MediaFetchError, match="not an image"):
        fetch_image_bytes_sync(local_server.url("/page"), LOCAL)


def test_octet_stream_accepted(local_server: LocalServer) -> None:
    local_server.routes["/blob"] = Route(
        body=PNG, headers={"Content-Type": "application/octet-stream"}
    )
    assert fetch_image_bytes_sync(local_server.url("/blob"), LOCAL) == PNG


def test_http_error_status(local_server: LocalServer) -> None:
    with pytest.raises(MediaFetchError, match="HTTP 404"):
        fetch_image_bytes_sync(local_server.url("/missing.png"), LOCAL)


def test_compressed_body_refused(local_server: LocalServer) -> None:
    local_server.routes["/gz"] = Route(
        body=PNG, headers={"Content-Type": "image/png", "Content-Encoding": "gzip"}
    )
    with pytest.raises(MediaFetchError, match="content-encoding"):
        fetch_image_bytes_sync(local_server.url("/gz"), LOCAL)


def test_unreachable_url() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(MediaFetchError, match="connect"):
        fetch_image_bytes_sync(f"http://127.0.0.1:{port}/x.png", LOCAL)
    with pytest.raises(MediaFetchError, match="resolve"):
        fetch_image_bytes_sync(
            "http://no-such-host.invalid/x.png", MediaConfig(connect_timeout_s=3)
        )


def test_read_timeout() -> None:
    class Slow(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            time.sleep(1.5)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        config = MediaConfig(allowed_media_domains=("127.0.0.1",), read_timeout_s=0.3)
        started = time.monotonic()
        with pytest.raises(MediaFetchError, match="timed out"):
            fetch_image_bytes_sync(f"http://127.0.0.1:{server.server_address[1]}/", config)
        assert time.monotonic() - started < 1.4
    finally:
        server.shutdown()
        server.server_close()


def test_resolved_address_is_checked_and_used_with_host_kept(
    local_server: LocalServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A name is resolved once, by the checked backend; the connection goes to that address
    while the Host header keeps the name (what SNI gets for https)."""
    calls: list[str] = []

    async def fake_getaddrinfo(host: str, port: int, **kwargs: object) -> list:
        calls.append(host)
        if host == "images.test":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]
        if host == "mixed.test":  # one public, one private: the whole host is refused
            return [
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("8.8.8.8", port)),
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.5", port)),
            ]
        raise OSError("unknown host")

    monkeypatch.setattr(http_fetch.anyio, "getaddrinfo", fake_getaddrinfo)
    url = serve_png(local_server).replace("127.0.0.1", "images.test")
    with pytest.raises(MediaForbiddenError, match=re.escape("images.test")):
        fetch_image_bytes_sync(url, MediaConfig())
    assert local_server.hits == []
    allowed = MediaConfig(allowed_media_domains=("Images.Test",))
    assert fetch_image_bytes_sync(url, allowed) == PNG
    assert local_server.hits == [("/cat.png", f"images.test:{local_server.port}")]
    assert calls == ["images.test", "images.test"]
    with pytest.raises(MediaForbiddenError, match=re.escape("10.0.0.5")):
        fetch_image_bytes_sync("http://mixed.test/x.png", MediaConfig())


@pytest.mark.parametrize(
    "url",
    ["http://", "http:///x", "http://[::1", "https://xn--/", "http://\u2100.com/", "http://a b/"],
)
def test_malformed_http_urls_give_typed_errors(url: str) -> None:
    with pytest.raises(MediaFetchError):
        fetch_image_bytes_sync(url, MediaConfig(connect_timeout_s=1, total_timeout_s=3))


def test_malformed_redirect_location(local_server: LocalServer) -> None:
    local_server.routes["/bad"] = Route(status=302, headers={"Location": "http://[::1"})
    with pytest.raises(MediaFetchError, match=r"(?i)invalid url|malformed"):
        fetch_image_bytes_sync(local_server.url("/bad"), LOCAL)


@pytest.mark.parametrize("host", ["0x7f000001", "2130706433", "127.1", "017700000001"])
def test_obfuscated_loopback_forms_refused(host: str) -> None:
    with pytest.raises(MediaForbiddenError, match="loopback"):
        fetch_image_bytes_sync(f"http://{host}/x.png", MediaConfig(connect_timeout_s=1))


def test_credentials_in_url_refused() -> None:
    with pytest.raises(MediaForbiddenError, match="credentials"):
        fetch_image_bytes_sync("http://user:pw@example.com/x.png")


# ------------------------------------------------------------------ data: URLs


def data_url(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


def test_data_url() -> None:
    assert fetch_image_bytes_sync(data_url(PNG)) == PNG


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("data:text/plain;base64,aGVsbG8=", "image/"),
        ("data:image/png,rawbytes", "base64"),
        ("data:image/png;base64,not*base64!", "base64"),
        ("data:image/png;base64,aGVs\nbG8=", "base64"),  # strict: no embedded newlines
        ("data:image/png;base64", "malformed"),
        ("data:image/png;base64,", "empty"),
    ],
)
def test_bad_data_urls(url: str, match: str) -> None:
    with pytest.raises(MediaFetchError, match=match):
        fetch_image_bytes_sync(url)


def test_data_url_size_limit() -> None:
    config = MediaConfig(max_image_bytes=1000)
    with pytest.raises(MediaTooLargeError):
        fetch_image_bytes_sync(data_url(b"\0" * 5000), config)
    assert fetch_image_bytes_sync(data_url(b"\1" * 1000), config) == b"\1" * 1000


# ------------------------------------------------------------------ file:// URLs


def test_file_url_under_allowed_path(tmp_path: Path) -> None:
    media = tmp_path / "media"
    (media / "sub").mkdir(parents=True)
    (media / "sub" / "cat.png").write_bytes(PNG)
    config = MediaConfig(allowed_local_media_path=str(media))
    assert fetch_image_bytes_sync((media / "sub" / "cat.png").as_uri(), config) == PNG
    assert fetch_image_bytes_sync(f"file://localhost{media}/sub/cat.png", config) == PNG


def test_file_url_refusals(tmp_path: Path) -> None:
    media = tmp_path / "media"
    media.mkdir()
    outside = tmp_path / "secret.png"
    outside.write_bytes(PNG)
    (media / "link.png").symlink_to(outside)
    config = MediaConfig(allowed_local_media_path=str(media))
    with pytest.raises(MediaForbiddenError, match="disabled"):
        fetch_image_bytes_sync(outside.as_uri())
    with pytest.raises(MediaForbiddenError, match="outside"):
        fetch_image_bytes_sync(outside.as_uri(), config)
    with pytest.raises(MediaForbiddenError, match="outside"):  # symlink escape
        fetch_image_bytes_sync((media / "link.png").as_uri(), config)
    with pytest.raises(MediaForbiddenError, match="outside"):  # dot-dot escape
        fetch_image_bytes_sync(f"file://{media}/../secret.png", config)
    with pytest.raises(MediaForbiddenError, match="outside"):  # missing, and outside
        fetch_image_bytes_sync(f"file://{tmp_path}/nope.png", config)
    with pytest.raises(MediaFetchError, match="no readable file"):
        fetch_image_bytes_sync(f"file://{media}/nope.png", config)
    with pytest.raises(MediaForbiddenError, match="remote host"):
        fetch_image_bytes_sync(f"file://otherhost{media}/x.png", config)
    with pytest.raises(MediaFetchError, match="regular file"):
        fetch_image_bytes_sync(media.as_uri(), config)
    small = MediaConfig(allowed_local_media_path=str(tmp_path), max_image_bytes=10)
    with pytest.raises(MediaTooLargeError):
        fetch_image_bytes_sync(outside.as_uri(), small)


def test_unsupported_scheme() -> None:
    for url in ("ftp://example.com/x.png", "gopher://x", "/etc/passwd", ""):
        with pytest.raises((MediaForbiddenError, MediaFetchError)):
            fetch_image_bytes_sync(url)


def test_sync_wrapper_refuses_inside_a_loop() -> None:
    async def inside() -> None:
        with pytest.raises(RuntimeError, match="await"):
            fetch_image_bytes_sync(data_url(PNG))

    asyncio.run(inside())


def test_errors_are_value_errors() -> None:
    for error in (MediaFetchError, MediaForbiddenError, MediaTooLargeError):
        assert issubclass(error, ValueError)


# ------------------------------------------------------------------ https with a pinned address


def _self_signed(tmp_path: Path, host: str) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl CLI not available")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-subj",
            f"/CN={host}",
            "-addext",
            f"subjectAltName=DNS:{host}",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_https_to_pinned_address_keeps_sni_and_verifies_the_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = _self_signed(tmp_path, "images.test")
    server_names: list[str | None] = []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.sni_callback = lambda sock, name, ctx: server_names.append(name)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(PNG)))
            self.end_headers()
            self.wfile.write(PNG)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()

    async def resolve_to_loopback(host: str, port: int, **kwargs: object) -> list:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]

    monkeypatch.setattr(http_fetch.anyio, "getaddrinfo", resolve_to_loopback)
    port = server.server_address[1]
    try:
        config = MediaConfig(allowed_media_domains=("images.test",), ca_bundle=str(cert))
        assert fetch_image_bytes_sync(f"https://images.test:{port}/x.png", config) == PNG
        assert server_names == ["images.test"]
        # The certificate names images.test; another name on the same address fails to verify.
        other = MediaConfig(allowed_media_domains=("other.test",), ca_bundle=str(cert))
        with pytest.raises(MediaFetchError):
            fetch_image_bytes_sync(f"https://other.test:{port}/x.png", other)
        # Without the private CA the certificate is not trusted.
        with pytest.raises(MediaFetchError):
            fetch_image_bytes_sync(
                f"https://images.test:{port}/x.png",
                MediaConfig(allowed_media_domains=("images.test",)),
            )
    finally:
        server.shutdown()
        server.server_close()
