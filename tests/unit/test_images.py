"""chat/images.py against real local HTTP(S) servers; no outside network is needed.

Addresses that must be refused are checked before any connection is made, so those tests name
private addresses that nothing listens on.
"""

from __future__ import annotations

import asyncio
import base64
import io
import shutil
import socket
import ssl
import struct
import subprocess
import threading
import time
import warnings
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote, unquote

import httpx
import pytest
from PIL import Image

from chatd.chat import images
from chatd.chat.images import ImageError, ImageLimits, fetch_image, fetch_images
from tests.conftest import unavailable


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def fake_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height (its pixel data is not there)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"")
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


PNG = encode(Image.new("RGBA", (3, 2), (255, 0, 0, 255)), "PNG")
JPEG = encode(Image.new("RGB", (5, 4), (0, 0, 255)), "JPEG")
ROUTES = {
    "/png": (PNG, "image/png"),
    "/jpeg": (JPEG, "image/jpeg"),
    "/png-as-text": (PNG, "text/plain"),  # the bytes decide, not the Content-Type
    "/text": (b"hello, not an image", "image/png"),
    "/bomb": (fake_png(100_000, 100_000), "image/png"),
    "/wide": (fake_png(5000, 5000), "image/png"),
}


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        self.server.seen.append((self.path, self.headers["Host"]))
        path, _, query = self.path.partition("?")
        try:
            if path in ROUTES:
                self.reply(200, *ROUTES[path])
            elif path.startswith("/redirect/"):  # /redirect/N: N more redirects, then a PNG
                n = int(path.rsplit("/", 1)[1])
                self.reply(302, Location=f"/redirect/{n - 1}") if n else self.reply(200, PNG)
            elif path == "/goto":  # /goto?to=URL: a redirect to URL
                self.reply(302, Location=unquote(query.removeprefix("to=")))
            elif path == "/huge-length":  # claims a terabyte, sends nothing
                self.send_response(200)
                self.send_header("Content-Length", str(10**12))
                self.end_headers()
            elif path == "/no-length":  # no Content-Length, more bytes than the test allows
                self.send_response(200)
                self.end_headers()
                self.wfile.write(PNG)
                for _ in range(64):
                    self.wfile.write(b"\0" * 16384)
            elif path == "/slow":
                self.server.release.wait(10)
                self.reply(200, PNG)
            else:
                self.reply(404, b"not found", "text/plain")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up on purpose

    def reply(self, status: int, body: bytes = b"", ctype: str = "image/png", **headers):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


class Server(ThreadingHTTPServer):
    def __init__(self, address, ssl_context: ssl.SSLContext | None = None):
        super().__init__(address, Handler)
        if ssl_context:
            self.socket = ssl_context.wrap_socket(self.socket, server_side=True)
        self.seen: list[tuple[str, str]] = []
        self.release = threading.Event()
        self.port = self.server_address[1]


def serve(server: Server):
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.fixture(scope="module")
def server():
    yield from serve(Server(("127.0.0.1", 0)))


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    """An https server with a self-signed certificate for images.test, and a context trusting it."""
    if not shutil.which("openssl"):
        unavailable("no openssl to make a certificate")
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
        + ["-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1"]
        + ["-subj", "/CN=images.test", "-addext", "subjectAltName=DNS:images.test"],
        check=True,
        capture_output=True,
        timeout=30,
    )
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    for srv in serve(Server(("127.0.0.1", 0), server_ctx)):
        yield srv, ssl.create_default_context(cafile=str(cert))


@pytest.fixture
def fake_dns(monkeypatch):
    """Names resolved by a table (to prove the request goes to the checked address)."""
    table: dict[str, list[str]] = {}
    asked: list[str] = []

    async def resolve(host: str, port: int) -> list[str]:
        asked.append(host)
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return table[host]

    monkeypatch.setattr(images, "_resolve", resolve)
    return table, asked


def limits(**kw) -> ImageLimits:
    kw.setdefault("timeout", 5.0)  # no test may hang
    kw["allow_hosts"] = frozenset(kw.get("allow_hosts", ()))
    return ImageLimits(**kw)


def fetch(url: str, **kw) -> Image.Image:
    return asyncio.run(fetch_image(url, limits(**kw)))


def refused(url: str, **kw) -> str:
    with pytest.raises(ImageError) as info:
        fetch(url, **kw)
    assert type(info.value) is ImageError
    return str(info.value)


# data: URLs


def test_data_url_png_and_jpeg():
    png = fetch(data_url(PNG))
    assert (png.mode, png.size, png.getpixel((0, 0))) == ("RGB", (3, 2), (255, 0, 0))
    jpeg = fetch(data_url(JPEG, "image/jpeg"))
    assert (jpeg.mode, jpeg.size) == ("RGB", (5, 4))
    assert jpeg.getpixel((0, 0))[2] > 200


def test_data_url_gif_gives_the_first_frame():
    frames = [Image.new("P", (4, 4), i) for i in (1, 2)]
    frames[0].putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    gif = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    img = fetch(data_url(gif, "image/gif"))
    assert (img.mode, img.getpixel((0, 0))) == ("RGB", (255, 0, 0))


def test_data_url_mime_type_parameters_and_case():
    assert fetch("DATA:Image/PNG;name=x.png;base64," + base64.b64encode(PNG).decode()).size == (
        3,
        2,
    )


def test_data_url_bad_base64():
    msg = refused("data:image/png;base64,iVBORw0KG!!!")
    assert "not valid base64" in msg
    assert "not valid base64" in refused("data:image/png;base64,ünïcode")


def test_data_url_must_be_an_image_type_and_base64():
    assert "'text/plain' is not an image type" in refused(data_url(PNG, "text/plain"))
    assert "only base64" in refused("data:image/png,%89PNG")
    assert "only base64" in refused("data:image/png;base64")


def test_data_url_too_big_and_message_shortened():
    url = data_url(PNG)
    msg = refused(url, max_bytes=len(PNG) - 1)
    assert "byte limit" in msg
    assert url[:40] + "…" in msg and url not in msg
    assert fetch(url, max_bytes=len(PNG)).size == (3, 2)
    # far over the limit: refused before decoding
    assert "byte limit" in refused(data_url(b"\0" * 10_000), max_bytes=100)


def test_formats_decided_by_the_bytes():
    tiff = encode(Image.new("RGB", (2, 2)), "TIFF")
    assert "not an image of an allowed type" in refused(data_url(tiff, "image/png"))
    assert "not an image" in refused(data_url(b"GIF89a? no", "image/gif"))
    noise = encode(Image.frombytes("L", (64, 64), bytes(range(256)) * 16), "PNG")
    assert "could not decode" in refused(data_url(noise[: len(noise) // 2]))  # truncated


def test_decompression_bombs_refused_from_the_header():
    assert "5000x5000 is over the" in refused(data_url(fake_png(5000, 5000)))
    assert "decompression bomb" in refused(data_url(fake_png(100_000, 100_000)))
    # a header within the limit gets decoded (and this one has no pixel data)
    assert "could not decode" in refused(data_url(fake_png(100, 100)))


def test_extreme_aspect_ratios_refused_from_the_header():
    """A 1 x 16000 image passes the pixel limit, but a processor that scales its short side
    up makes it enormous: refused before any processor (or decoder) runs."""
    assert "aspect ratio over 20:1" in refused(data_url(fake_png(1, 16_000)))
    assert "aspect ratio over 20:1" in refused(data_url(fake_png(8000, 1)))
    assert "aspect ratio over 4:1" in refused(data_url(fake_png(100, 500)), max_aspect=4)
    # within the ratio, the header is decoded (this one has no pixel data)
    assert "could not decode" in refused(data_url(fake_png(20, 400)))


def test_pillow_bomb_warning_and_error_become_image_errors(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    small = data_url(encode(Image.new("RGB", (12, 12)), "PNG"))  # 144: Pillow warns
    big = data_url(encode(Image.new("RGB", (20, 20)), "PNG"))  # 400: Pillow raises
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert "decompression bomb" in refused(small)
    assert "decompression bomb" in refused(big)


# address checks


@pytest.mark.parametrize(
    "url, kind",
    [
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://10.0.0.1/x.png", "private"),
        ("http://192.168.1.1/x.png", "private"),
        ("http://[::1]/x.png", "loopback"),
        ("http://[::ffff:127.0.0.1]/x.png", "loopback"),
        ("http://[64:ff9b::7f00:1]/x.png", "loopback"),
        ("http://[fd00:ec2::254]/", "private"),
        ("http://[fe80::1]/", "link-local"),
        ("http://100.64.0.1/x.png", "non-public"),
        ("http://0.0.0.0/x.png", "unspecified"),
        ("http://224.0.0.1/x.png", "multicast"),
        ("http://[ff02::1]/x.png", "multicast"),
        ("http://2130706433/x.png", "loopback"),
        ("https://127.0.0.1/x.png", "loopback"),
    ],
)
def test_private_addresses_refused_before_connecting(url, kind):
    msg = refused(url, timeout=2.0)
    assert f"image_url {url!r}: refused:" in msg
    assert f"{kind} address" in msg and "private networks" in msg


def test_loopback_refused_by_default(server):
    url = f"http://127.0.0.1:{server.port}/png"
    before = len(server.seen)
    msg = refused(url)
    assert msg == (
        f"image_url {url!r}: refused: 127.0.0.1 is a loopback address "
        "(the server does not fetch from private networks)"
    )
    assert len(server.seen) == before  # never connected


def test_hostname_resolving_to_loopback_refused(server):
    msg = refused(f"http://localhost:{server.port}/png")
    assert "localhost resolves to 127.0.0.1, which is a loopback address" in msg


def test_any_private_address_among_the_answers_refuses(fake_dns):
    table, _ = fake_dns
    table["images.example"] = ["93.184.216.34", "10.1.2.3"]
    assert "images.example resolves to 10.1.2.3" in refused("http://images.example/x.png")


def test_allow_private_and_allow_hosts(server):
    url = f"http://127.0.0.1:{server.port}/png"
    assert fetch(url, allow_private=True).size == (3, 2)
    assert fetch(url, allow_hosts={"127.0.0.1"}).size == (3, 2)
    assert fetch(f"http://LocalHost:{server.port}/png", allow_hosts={"localHOST"}).size == (3, 2)
    assert "loopback" in refused(url, allow_hosts={"localhost"})


def test_ipv6_literal(fake_dns):
    # The connection is faked too: the address checks and the request sent are what is tested,
    # on any machine, with or without an IPv6 loopback.
    table, _ = fake_dns
    table["::1"] = ["::1"]
    url = "http://[::1]:8080/jpeg"
    sent: list[tuple[str, str]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append((str(request.url), request.headers["host"]))
        return httpx.Response(
            200, stream=httpx.ByteStream(JPEG), headers={"content-type": "image/jpeg"}
        )

    async def get(**kw) -> Image.Image:
        transport = httpx.MockTransport(answer)
        async with httpx.AsyncClient(transport=transport, trust_env=False) as client:
            return await fetch_image(url, limits(**kw), client)

    assert "loopback" in refused(url)
    assert not sent  # refused before connecting
    for allowed in ({"allow_private": True}, {"allow_hosts": {"::1"}}, {"allow_hosts": {"[::1]"}}):
        assert asyncio.run(get(**allowed)).size == (5, 4)
    assert sent == [(url, "[::1]:8080")] * 3


def test_request_goes_to_the_checked_address_with_the_original_host(server, fake_dns):
    # images.test resolves only through the table: the fetch works only if it connects to the
    # address checked, not to the name again.
    table, asked = fake_dns
    table["images.test"] = ["127.0.0.1"]
    url = f"http://images.test:{server.port}/png"
    assert fetch(url, allow_hosts={"images.test"}).size == (3, 2)
    assert asked == ["images.test"]
    assert server.seen[-1] == ("/png", f"images.test:{server.port}")


def test_next_address_tried_when_one_refuses_connections(server, fake_dns):
    table, _ = fake_dns
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.2", server.port))
    table["images.test"] = ["127.0.0.2", "127.0.0.1"]
    assert fetch(f"http://images.test:{server.port}/png", allow_private=True).size == (3, 2)


def test_https_verifies_the_certificate_against_the_name(tls, fake_dns):
    srv, trust = tls
    table, _ = fake_dns
    table["images.test"] = table["other.test"] = ["127.0.0.1"]

    async def get(host: str):
        lim = limits(allow_hosts={host})
        async with httpx.AsyncClient(verify=trust, trust_env=False) as client:
            return await fetch_image(f"https://{host}:{srv.port}/png", lim, client)

    assert asyncio.run(get("images.test")).size == (3, 2)
    assert srv.seen[-1] == ("/png", f"images.test:{srv.port}")
    with pytest.raises(ImageError, match="fetch failed:.*(certificate|hostname)"):
        asyncio.run(get("other.test"))


# schemes, redirects


def test_invalid_url():
    assert "invalid URL" in refused("http://[::1/x.png")


@pytest.mark.parametrize(
    "url",
    ["file:///etc/passwd", "ftp://example.com/x.png", "gopher://example.com/", "example.com/x.png"],
)
def test_other_schemes_refused(url):
    assert "is not an http(s) URL" in refused(url)


def test_redirects_followed_up_to_the_limit(server):
    base = f"http://127.0.0.1:{server.port}"
    assert fetch(f"{base}/redirect/3", allow_private=True).size == (3, 2)
    assert server.seen[-4:] == [
        (f"/redirect/{n}", f"127.0.0.1:{server.port}") for n in (3, 2, 1, 0)
    ]
    assert "more than 3 redirects" in refused(f"{base}/redirect/4", allow_private=True)
    assert "more than 0 redirects" in refused(
        f"{base}/redirect/1", allow_private=True, max_redirects=0
    )


def test_redirect_to_a_private_address_refused(server):
    # 127.0.0.1 is allowed; the redirect target is a name for loopback that is not
    base = f"http://127.0.0.1:{server.port}"
    target = f"http://localhost:{server.port}/png"
    url = f"{base}/goto?to={quote(target)}"
    before = len(server.seen)
    msg = refused(url, allow_hosts={"127.0.0.1"})
    assert msg.startswith(f"image_url {url!r}: refused: localhost resolves to 127.0.0.1")
    assert len(server.seen) == before + 1  # the redirect was fetched, the target was not
    meta = f"{base}/goto?to={quote('http://169.254.169.254/latest/meta-data/')}"
    assert "169.254.169.254 is a link-local address" in refused(meta, allow_hosts={"127.0.0.1"})
    assert fetch(url, allow_hosts={"127.0.0.1", "localhost"}).size == (3, 2)


def test_redirect_to_another_scheme_refused(server):
    url = f"http://127.0.0.1:{server.port}/goto?to={quote('file:///etc/passwd')}"
    assert "refused: 'file:/etc/passwd' is not an http(s) URL" in refused(url, allow_private=True)


# responses


def test_content_type_is_not_trusted(server):
    base = f"http://127.0.0.1:{server.port}"
    assert fetch(f"{base}/png-as-text", allow_private=True).size == (3, 2)
    assert "not an image" in refused(f"{base}/text", allow_private=True)


def test_size_limits(server):
    base = f"http://127.0.0.1:{server.port}"
    # refused from the header: reading the (missing) body would have failed differently
    assert "byte limit" in refused(f"{base}/huge-length", allow_private=True)
    assert "byte limit" in refused(f"{base}/no-length", allow_private=True, max_bytes=100_000)
    assert "byte limit" in refused(f"{base}/png", allow_private=True, max_bytes=len(PNG) - 1)
    assert fetch(f"{base}/png", allow_private=True, max_bytes=len(PNG)).size == (3, 2)


def test_bomb_served_over_http_refused(server):
    base = f"http://127.0.0.1:{server.port}"
    assert "decompression bomb" in refused(f"{base}/bomb", allow_private=True)
    assert "5000x5000" in refused(f"{base}/wide", allow_private=True)


def test_http_error_status(server):
    url = f"http://127.0.0.1:{server.port}/missing.png"
    assert refused(url, allow_private=True) == f"image_url {url!r}: HTTP 404 Not Found"


def test_timeout(server):
    start = time.monotonic()
    msg = refused(f"http://127.0.0.1:{server.port}/slow", allow_private=True, timeout=0.5)
    assert "timed out after 0.5s" in msg
    assert time.monotonic() - start < 3


def test_network_errors_become_image_errors(fake_dns):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert "fetch failed" in refused(f"http://127.0.0.1:{port}/x.png", allow_private=True)
    assert "fetch failed" in refused("http://no-such-host.invalid/x.png")


# several images


def test_fetch_images_keeps_order(server):
    base = f"http://127.0.0.1:{server.port}"
    urls = [f"{base}/slow", f"{base}/jpeg", data_url(PNG), f"{base}/redirect/1"]
    server.release.set()  # /slow answers at once now
    try:
        got = asyncio.run(fetch_images(urls, limits(allow_private=True)))
    finally:
        server.release.clear()
    assert [img.size for img in got] == [(3, 2), (5, 4), (3, 2), (3, 2)]
    assert asyncio.run(fetch_images([], limits())) == []


def test_fetch_images_raises_the_image_error(server):
    base = f"http://127.0.0.1:{server.port}"
    start = time.monotonic()
    with pytest.raises(ImageError, match="HTTP 404"):
        asyncio.run(fetch_images([f"{base}/slow", f"{base}/nope"], limits(allow_private=True)))
    assert time.monotonic() - start < 3  # the slow fetch was cancelled, not waited for
