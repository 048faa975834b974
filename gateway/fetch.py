"""Fetching an image named by an http(s) URL, without letting the URL reach inside the network.

Off unless ``HUAYU_IMAGE_URLS_ENABLED``. A URL must name a host on the allowlist (never an address,
in any of its numeric spellings); the name is resolved once and every address it resolves to must
be public; the connection then goes to that checked address (Host header and TLS SNI carry the
name), so a second, different DNS answer (rebinding) is never asked for. Redirects are followed by
hand, each hop checked the same way; the whole fetch has a deadline and the body a byte cap. The
bytes go through the same image pipeline as an upload: the model server only ever gets data URLs.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import httpx

from gateway.config import Settings
from gateway.errors import HuayuError, InvalidRequest, PayloadTooLarge, Unprocessable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[str]]]

_METADATA = {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
# IPv6 prefixes that carry an IPv4 address inside: NAT64 and 6to4
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_6TO4 = ipaddress.ip_network("2002::/16")
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


def _refused(message: str, code: str = "image_url_refused") -> InvalidRequest:
    return InvalidRequest(message, param="messages", code=code)


def numeric_host(host: str) -> IPAddress | None:
    """The address a host spells, in any form a resolver would accept (``2130706433``, ``0x7f.1``,
    ``017700000001``, ``127.1``, ``[::ffff:7f00:1]``), or None for a name."""
    bare = host.strip("[]")
    try:
        return ipaddress.ip_address(bare)
    except ValueError:
        pass
    try:
        return ipaddress.IPv4Address(socket.inet_aton(bare))
    except (OSError, ValueError):
        return None


def address_problem(ip: IPAddress) -> str | None:
    """Why the gateway must not connect to ``ip`` (None: a public address)."""
    if isinstance(ip, ipaddress.IPv6Address):
        inner = ip.ipv4_mapped or ip.sixtofour
        if inner is None and ip in _NAT64:
            inner = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if inner is not None:
            problem = address_problem(inner)
            return f"an IPv6 form of {inner}, {problem}" if problem else None
    if ip in _METADATA:
        return "the cloud metadata address"
    checks = (
        (ip.is_unspecified, "an unspecified address"),
        (ip.is_loopback, "a loopback address"),
        (ip.is_link_local, "a link-local address"),
        (ip.is_multicast, "a multicast address"),
        (isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT, "a carrier-grade NAT address"),
        (ip.is_reserved, "a reserved address"),
        (ip.is_private, "a private address"),
        (not ip.is_global, "not a public address"),
    )
    return next((why for hit, why in checks if hit), None)


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


@dataclass(frozen=True)
class _Target:
    url: httpx.URL  # the URL with the checked address in place of the name
    host: str
    host_header: str
    https: bool


class ImageFetcher:
    def __init__(self, settings: Settings, resolver: Resolver = system_resolver) -> None:
        self.enabled = settings.image_urls_enabled
        self.allowed = [d.strip().lower() for d in settings.image_url_allowed_domains.split(",") if d.strip()]
        self.allow_http = settings.image_url_allow_http
        self.allow_private = settings.image_url_allow_private
        self.max_redirects = settings.image_url_max_redirects
        self.timeout_s = settings.image_url_timeout_s
        self.max_bytes = settings.max_image_bytes
        self.resolver = resolver

    def _allowed_host(self, host: str) -> bool:
        for entry in self.allowed:
            if entry.startswith("."):
                if host == entry[1:] or host.endswith(entry):
                    return True
            elif host == entry:
                return True
        return False

    async def check(self, url: str) -> _Target:
        """Where ``url`` may be fetched from, or InvalidRequest saying why not."""
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or (scheme == "http" and not self.allow_http):
            accepted = "http or https" if self.allow_http else "https"
            raise _refused(f"image URL scheme {scheme or 'none'!r} is not accepted; use {accepted}")
        if parts.username is not None or parts.password is not None:
            raise _refused("image URLs with a user name or password are not accepted")
        try:
            host, port = parts.hostname, parts.port or (443 if scheme == "https" else 80)
        except ValueError as e:
            raise _refused(f"image URL has an invalid port ({e})") from e
        if not host:
            raise _refused("image URL has no host")
        host = host.rstrip(".")
        if (ip := numeric_host(host)) is not None:
            raise _refused(f"image URL names an address ({ip}); name an allowed host instead")
        if not self._allowed_host(host):
            listed = ", ".join(self.allowed) or "none"
            raise _refused(f"image URL host {host!r} is not on this gateway's allowlist ({listed})")
        try:
            async with asyncio.timeout(self.timeout_s):
                addresses = await self.resolver(host, port)
        except (OSError, TimeoutError) as e:
            raise Unprocessable(f"image URL host {host!r} could not be resolved", code="image_url_unreachable") from e
        if not addresses:
            raise Unprocessable(f"image URL host {host!r} has no address", code="image_url_unreachable")
        checked = [ipaddress.ip_address(a.split("%", 1)[0]) for a in addresses]
        if not self.allow_private:
            for addr in checked:
                if (problem := address_problem(addr)) is not None:
                    raise _refused(f"image URL host {host!r} resolves to {addr}, {problem}; it is not fetched")
        pinned = checked[0]
        default_port = port == (443 if scheme == "https" else 80)
        target = httpx.URL(url).copy_with(host=str(pinned), port=port)
        return _Target(target, host, host if default_port else f"{host}:{port}", scheme == "https")

    async def fetch(self, url: str) -> bytes:
        if not self.enabled:
            raise _refused(
                "image URLs are off on this gateway (HUAYU_IMAGE_URLS_ENABLED); send the image as a data URL "
                "(data:image/jpeg;base64,...)",
                code="image_url_disabled",
            )
        try:
            async with asyncio.timeout(self.timeout_s):
                return await self._follow(url)
        except TimeoutError as e:
            raise Unprocessable(
                f"the image URL did not deliver within {self.timeout_s:g} s", code="image_url_unreachable"
            ) from e

    async def _follow(self, url: str) -> bytes:
        # trust_env off: a proxy from the environment would resolve the name itself, undoing the pinning
        async with httpx.AsyncClient(follow_redirects=False, trust_env=False, timeout=self.timeout_s) as client:
            for hop in range(self.max_redirects + 1):
                target = await self.check(url)
                location = await self._get(client, target)
                if isinstance(location, bytes):
                    return location
                if hop == self.max_redirects:
                    what = "redirects are not followed" if not self.max_redirects else "too many redirects"
                    raise _refused(f"the image URL redirects and {what} (limit {self.max_redirects})")
                url = urljoin(url, location)
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    async def _get(self, client: httpx.AsyncClient, target: _Target) -> bytes | str:
        """The body, or the Location of a redirect."""
        # identity: compressed bytes are never inflated here (no gzip bomb), the cap counts what arrives
        headers = {"host": target.host_header, "accept": "image/*", "accept-encoding": "identity"}
        extensions = {"sni_hostname": target.host} if target.https else {}
        request = client.build_request("GET", target.url, headers=headers, extensions=extensions)
        try:
            response = await client.send(request, stream=True)
        except httpx.HTTPError as e:
            raise Unprocessable(
                f"the image URL could not be fetched ({type(e).__name__})", code="image_url_unreachable"
            ) from e
        try:
            if response.status_code in _REDIRECTS and response.headers.get("location"):
                return str(response.headers["location"])
            if response.status_code != 200:
                raise Unprocessable(f"the image URL answered HTTP {response.status_code}", code="image_url_unreachable")
            return await self._read_capped(response)
        except httpx.HTTPError as e:
            raise Unprocessable(f"the image download broke ({type(e).__name__})", code="image_url_unreachable") from e
        finally:
            await response.aclose()

    async def _read_capped(self, response: httpx.Response) -> bytes:
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            raise self._too_large(int(declared))
        parts: list[bytes] = []
        size = 0
        async for chunk in response.aiter_raw():
            size += len(chunk)
            if size > self.max_bytes:
                raise self._too_large(size)
            parts.append(chunk)
        return b"".join(parts)

    def _too_large(self, size: int) -> HuayuError:
        return PayloadTooLarge(f"the image at the URL is over {self.max_bytes} bytes ({size} read or declared)")
