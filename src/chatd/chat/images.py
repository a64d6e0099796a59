"""The images of chat messages (`image_url` parts), fetched without opening the server's network.

An image URL is a `data:` URL or an http(s) URL. For http(s) the host is resolved here and every
address it resolves to must be public, unless the operator allows it; the request then goes to
that checked address rather than to the name again, so a DNS answer that changes between the check
and the connect (DNS rebinding) cannot steer it elsewhere. Redirects are followed by hand, each hop
checked the same way. The bytes must be one of a few image formats, and the pixel count is read
from the header and checked before anything is decoded (decompression bombs).
"""

from __future__ import annotations

import asyncio
import base64
import io
import ipaddress
import socket

import httpx
from PIL import Image

from chatd.chat.errors import RequestError
from chatd.config import ImageLimits  # declared with the settings it comes from
from chatd.protocol.echo import echo

FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class ImageError(RequestError):
    """An image_url that cannot be used; the message names the URL and the reason."""

    def __init__(self, url: str, reason: str):
        self.url, self.reason = url, reason
        super().__init__(f"image_url {_short(url)!r}: {reason}")


async def fetch_image(
    url: str, limits: ImageLimits, client: httpx.AsyncClient | None = None
) -> Image.Image:
    """The image at `url`, loaded and RGB; any failure is an ImageError.

    A client passed in must not take proxies from the environment (trust_env=False): a proxy
    would connect by name, undoing the address check.
    """
    try:
        async with asyncio.timeout(limits.timeout):
            if url[:5].lower() == "data:":
                data = _data_url_bytes(url, limits)
            elif client is None:
                async with _new_client(limits) as client:
                    data = await _download(url, limits, client)
            else:
                data = await _download(url, limits, client)
            # Decoding is CPU work: keep it off the event loop.
            return await asyncio.to_thread(_decode, url, data, limits)
    except ImageError:
        raise
    except (TimeoutError, httpx.TimeoutException):
        raise ImageError(url, f"timed out after {limits.timeout:g}s") from None
    except httpx.InvalidURL as exc:
        raise ImageError(url, f"invalid URL: {exc}") from None
    except (httpx.HTTPError, OSError, UnicodeError) as exc:
        raise ImageError(url, f"fetch failed: {str(exc) or type(exc).__name__}") from None


async def fetch_images(urls: list[str], limits: ImageLimits) -> list[Image.Image]:
    """All of `urls` fetched concurrently through one client, in order; the first failure raises."""
    async with _new_client(limits) as client:
        try:
            # A TaskGroup cancels the other fetches on a failure, before the client closes.
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(fetch_image(u, limits, client)) for u in urls]
        except* ImageError as failed:
            raise failed.exceptions[0] from None
    return [t.result() for t in tasks]


def _new_client(limits: ImageLimits) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        timeout=limits.timeout,
        follow_redirects=False,
        # A proxy from the environment would connect by name and undo the address check.
        trust_env=False,
        # Connections are pooled by IP: one opened (TLS SNI included) for one host must not carry
        # a request for another host on the same IP.
        limits=httpx.Limits(max_keepalive_connections=0),
        # identity: the body is counted as it arrives, so no gzip can inflate it past the limit.
        headers={"User-Agent": "chatd", "Accept": "image/*", "Accept-Encoding": "identity"},
    )


def _data_url_bytes(url: str, limits: ImageLimits) -> bytes:
    header, comma, payload = url[5:].partition(",")
    mime, *params = (p.strip().lower() for p in header.split(";"))
    if not comma or "base64" not in params:
        raise ImageError(url, "only base64 data URLs are supported (data:image/png;base64,...)")
    if not mime.startswith("image/"):
        raise ImageError(url, f"refused: data URL type {echo(mime)} is not an image type")
    # 4 characters carry 3 bytes: refuse what is surely too big before decoding it.
    if len(payload) // 4 * 3 - 2 > limits.max_bytes:
        raise ImageError(url, _too_big(limits))
    try:
        data = base64.b64decode(payload, validate=True)
    except ValueError:  # binascii.Error, or non-ASCII characters
        raise ImageError(url, "the data URL is not valid base64") from None
    if len(data) > limits.max_bytes:
        raise ImageError(url, _too_big(limits))
    return data


async def _download(url: str, limits: ImageLimits, client: httpx.AsyncClient) -> bytes:
    current = httpx.URL(url)
    for _ in range(limits.max_redirects + 1):
        response = await _send(url, current, limits, client)
        try:
            if not response.is_redirect:
                return await _read_body(url, response, limits)
            # Relative to the URL as named, not the IP it was sent to; the next _send checks it.
            current = current.join(response.headers["location"])
        finally:
            await response.aclose()
    raise ImageError(url, f"refused: more than {limits.max_redirects} redirects")


async def _send(
    url: str, current: httpx.URL, limits: ImageLimits, client: httpx.AsyncClient
) -> httpx.Response:
    """Sends GET `current` to an address its host resolves to, once that address is checked."""
    if current.scheme not in ("http", "https"):
        raise ImageError(url, f"refused: {_short(str(current))!r} is not an http(s) URL")
    host = current.raw_host.decode("ascii")  # IDNA-encoded, IPv6 without brackets
    if not host:
        raise ImageError(url, "the URL has no host")
    ips = await _resolve(host, current.port or (443 if current.scheme == "https" else 80))
    allowed = {h.lower().strip("[]") for h in limits.allow_hosts}
    if not limits.allow_private and not allowed & {current.host.lower(), host.lower()}:
        _check_public(url, host, ips)
    # The URL's own Host header, and for https its name as the TLS server name (httpcore's
    # sni_hostname), so the certificate is still verified against the name, not the IP.
    headers = {"Host": current.netloc.decode("ascii")}
    extensions = {"sni_hostname": host} if current.scheme == "https" else {}
    # Each address in turn, as a browser would, in case one does not take connections.
    for i, ip in enumerate(ips):
        request = client.build_request(
            "GET", current.copy_with(host=ip), headers=headers, extensions=extensions
        )
        try:
            return await client.send(request, stream=True, follow_redirects=False)
        except httpx.ConnectError:
            if i == len(ips) - 1:
                raise


async def _resolve(host: str, port: int) -> list[str]:
    """The addresses `host` resolves to, in the resolver's order, without repeats."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _check_public(url: str, host: str, ips: list[str]) -> None:
    """Refuses if any address is not public: the attacker picks which one gets connected to."""
    for ip in ips:
        kind = _non_public_kind(ipaddress.ip_address(ip))
        if kind:
            what = ip if ip == host else f"{host} resolves to {ip}, which"
            article = "an" if kind[0] in "aeiou" else "a"
            raise ImageError(
                url,
                f"refused: {what} is {article} {kind} address "
                "(the server does not fetch from private networks)",
            )


def _non_public_kind(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """What kind of non-public address `addr` is ('loopback', 'private', ...), or None."""
    candidates = [addr]
    if addr.version == 6:
        # IPv6 forms that carry an IPv4 address the host or network may translate to.
        embedded = addr.ipv4_mapped or addr.sixtofour
        if addr in _NAT64:
            embedded = ipaddress.IPv4Address(int(addr) & 0xFFFF_FFFF)
        if embedded:
            candidates.insert(0, embedded)
    for a in candidates:
        if a.is_global and not a.is_multicast:  # is_global says yes to multicast
            continue
        for kind in ("loopback", "link_local", "multicast", "unspecified", "private"):
            if getattr(a, f"is_{kind}"):
                return kind.replace("_", "-")
        return "non-public"  # e.g. CGNAT 100.64.0.0/10
    return None


async def _read_body(url: str, response: httpx.Response, limits: ImageLimits) -> bytes:
    if not response.is_success:
        raise ImageError(url, f"HTTP {response.status_code} {response.reason_phrase}".rstrip())
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limits.max_bytes:
        raise ImageError(url, _too_big(limits))
    # Counted as it arrives: a missing or lying Content-Length cannot get more through.
    body = bytearray()
    async for chunk in response.aiter_raw():
        body += chunk
        if len(body) > limits.max_bytes:
            raise ImageError(url, _too_big(limits))
    return bytes(body)


def _too_big(limits: ImageLimits) -> str:
    return f"refused: the image is over the {limits.max_bytes:,}-byte limit"


def _decode(url: str, data: bytes, limits: ImageLimits) -> Image.Image:
    try:
        # formats=: only these formats' parsers ever see the bytes, whatever the Content-Type.
        with Image.open(io.BytesIO(data), formats=FORMATS) as img:
            width, height = img.size  # from the header; nothing is decoded yet
            if width * height > limits.max_pixels:
                raise ImageError(
                    url,
                    f"refused: {width}x{height} is over the {limits.max_pixels:,}-pixel limit",
                )
            if max(width, height) > limits.max_aspect * max(1, min(width, height)):
                raise ImageError(
                    url,
                    f"refused: {width}x{height} has an aspect ratio over {limits.max_aspect:g}:1",
                )
            return img.convert("RGB")  # loads the first frame of an animation
    except ImageError:
        raise
    except Image.UnidentifiedImageError:
        raise ImageError(url, f"not an image of an allowed type ({', '.join(FORMATS)})") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(url, f"refused: decompression bomb ({exc})") from None
    except Exception as exc:  # Pillow's parsers raise many kinds: OSError, SyntaxError, ...
        raise ImageError(url, f"could not decode the image: {exc}") from None


def _short(url: str) -> str:
    """`url` short enough for a message: a data URL is mostly payload."""
    limit = 40 if url[:5].lower() == "data:" else 200
    return url if len(url) <= limit else url[:limit] + "…"
