"""Image URLs: every SSRF address form refused with a clear 400; the connection pinned to the checked
address; redirects re-checked hop by hop; a byte cap and a deadline. The fetches that succeed go to an
image server of the test's own on loopback, allowed only by the test-only ``image_url_allow_private``."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from gateway.config import Settings
from gateway.errors import HuayuError, InvalidRequest, PayloadTooLarge, Unprocessable
from gateway.fetch import ImageFetcher, address_problem, numeric_host
from tests.hardening.conftest import GatewayFactory
from tests.media import jpeg
from tests.servers import Sim, serve

IMAGE = jpeg(96, 64, seed=7)
SEEN_HOSTS: list[str] = []


def _image_server() -> Starlette:
    async def image(request: Request) -> Response:
        SEEN_HOSTS.append(request.headers["host"])
        return Response(IMAGE, media_type="image/jpeg")

    async def redirect(request: Request) -> Response:
        return RedirectResponse(request.query_params["to"], status_code=302)

    async def big(request: Request) -> Response:
        return Response(b"\xff" * 300_000, media_type="image/jpeg")

    async def slow(request: Request) -> Response:
        await asyncio.sleep(3)
        return Response(IMAGE, media_type="image/jpeg")

    routes = [Route(p, f) for p, f in (("/a.jpg", image), ("/go", redirect), ("/big", big), ("/slow", slow))]
    return Starlette(routes=routes)


@pytest.fixture(scope="module")
def image_port() -> Iterator[int]:
    with serve(_image_server()) as url:
        yield int(url.rsplit(":", 1)[1])


def fetcher(resolve: dict[str, list[str]] | None = None, **over: Any) -> ImageFetcher:
    base: dict[str, Any] = {
        "image_urls_enabled": True,
        "image_url_allowed_domains": "art.example,.museum.example",
        "image_url_allow_http": True,
    }
    settings = Settings(**(base | over))
    table = resolve or {}

    async def resolver(host: str, port: int) -> list[str]:
        # a DNS of the test's own: these names exist nowhere else, so reaching the server proves
        # the connection went to the address that was checked
        if host not in table:
            raise OSError(f"no such host {host}")
        return table[host]

    return ImageFetcher(settings, resolver)


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("127.0.0.1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("100.64.0.1", "carrier-grade NAT"),
        ("169.254.169.254", "metadata"),
        ("169.254.1.1", "link-local"),
        ("224.0.0.1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("0.0.0.0", "unspecified"),
        ("::1", "loopback"),
        ("fd12:3456::1", "private"),
        ("fe80::1", "link-local"),
        ("::ffff:127.0.0.1", "IPv6 form of 127.0.0.1, a loopback"),
        ("::ffff:10.0.0.1", "IPv6 form of 10.0.0.1"),
        ("64:ff9b::a9fe:a9fe", "IPv6 form of 169.254.169.254"),
        ("2002:7f00:1::", "IPv6 form of 127.0.0.1"),
        ("fd00:ec2::254", "metadata"),
        ("ff02::1", "multicast"),
        ("::", "unspecified"),
    ],
)
def test_non_public_addresses_are_named(address: str, why: str) -> None:
    problem = address_problem(ipaddress.ip_address(address))
    assert problem is not None and why in problem


def test_public_addresses_pass() -> None:
    for address in ("93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946", "::ffff:93.184.216.34"):
        assert address_problem(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(
    "host", ["2130706433", "0x7f.1", "017700000001", "127.1", "0x7f000001", "[::ffff:7f00:1]", "0177.0.0.1", "[::1]"]
)
async def test_numeric_hosts_in_every_spelling_are_refused(host: str) -> None:
    assert numeric_host(host) is not None
    with pytest.raises(InvalidRequest, match="names an address"):
        await fetcher().check(f"http://{host}/a.jpg")


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("ftp://art.example/a.jpg", "scheme 'ftp'"),
        ("https://evil.example/a.jpg", "not on this gateway's allowlist"),
        ("https://art.example.evil.example/a.jpg", "not on this gateway's allowlist"),
        ("https://user:pw@art.example/a.jpg", "user name or password"),
        ("https:///a.jpg", "no host"),
    ],
)
async def test_urls_outside_the_policy_are_refused(url: str, match: str) -> None:
    with pytest.raises(InvalidRequest, match=match):
        await fetcher().check(url)


async def test_https_only_unless_http_is_allowed() -> None:
    with pytest.raises(InvalidRequest, match="use https"):
        await fetcher(image_url_allow_http=False).check("http://art.example/a.jpg")


async def test_every_resolved_address_is_checked() -> None:
    # a name with a public and a private address (or one a rebinding DNS would switch): refused
    f = fetcher({"art.example": ["93.184.216.34", "10.0.0.8"]})
    with pytest.raises(InvalidRequest, match=r"resolves to 10\.0\.0\.8, a private address"):
        await f.check("https://art.example/a.jpg")
    sub = fetcher({"img.museum.example": ["169.254.169.254"]})
    with pytest.raises(InvalidRequest, match="metadata"):
        await sub.check("https://img.museum.example/a.jpg")


async def test_the_connection_is_pinned_to_the_checked_address(image_port: int) -> None:
    f = fetcher({"art.example": ["127.0.0.1"]}, image_url_allow_private=True)
    SEEN_HOSTS.clear()
    assert await f.fetch(f"http://art.example:{image_port}/a.jpg") == IMAGE
    host = SEEN_HOSTS.pop()
    assert host == f"art.example:{image_port}"  # the name travelled in the Host header


async def test_loopback_is_refused_without_the_test_only_setting(image_port: int) -> None:
    with pytest.raises(InvalidRequest, match="loopback"):
        await fetcher({"art.example": ["127.0.0.1"]}).fetch(f"http://art.example:{image_port}/a.jpg")


async def test_each_redirect_hop_is_checked_again(image_port: int) -> None:
    names = {"art.example": ["127.0.0.1"], "img.museum.example": ["127.0.0.1"]}
    f = fetcher(names, image_url_allow_private=True)
    good = f"http://img.museum.example:{image_port}/a.jpg"
    assert await f.fetch(f"http://art.example:{image_port}/go?to={good}") == IMAGE
    for target, match in (
        (f"http://127.0.0.1:{image_port}/a.jpg", "names an address"),
        ("http://evil.example/a.jpg", "allowlist"),
        ("file:///etc/passwd", "scheme 'file'"),
    ):
        with pytest.raises(InvalidRequest, match=match):
            await f.fetch(f"http://art.example:{image_port}/go?to={target}")
    loop = f"http://art.example:{image_port}/go?to=/go%3Fto%3D/go%253Fto%253D/a.jpg"
    with pytest.raises(InvalidRequest, match="too many redirects"):
        await fetcher(names, image_url_allow_private=True, image_url_max_redirects=1).fetch(loop)
    with pytest.raises(InvalidRequest, match="redirects are not followed"):
        await fetcher(names, image_url_allow_private=True, image_url_max_redirects=0).fetch(
            f"http://art.example:{image_port}/go?to={good}"
        )


async def test_byte_cap_and_deadline(image_port: int) -> None:
    names = {"art.example": ["127.0.0.1"]}
    with pytest.raises(PayloadTooLarge, match="over 100000 bytes"):
        await fetcher(names, image_url_allow_private=True, max_image_bytes=100_000).fetch(
            f"http://art.example:{image_port}/big"
        )
    with pytest.raises(Unprocessable, match=r"within 0\.5 s"):
        await fetcher(names, image_url_allow_private=True, image_url_timeout_s=0.5).fetch(
            f"http://art.example:{image_port}/slow"
        )
    with pytest.raises(Unprocessable, match="could not be resolved"):
        await fetcher(names).fetch("https://img.museum.example/a.jpg")


def _chat(url: str) -> dict[str, Any]:
    return {"model": "qwen-vl", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": url}]}]}


def test_gateway_refuses_image_urls_by_default(gateway: GatewayFactory) -> None:
    with gateway() as client:
        r = client.post("/v1/chat/completions", json=_chat("https://art.example/a.jpg"))
        assert r.status_code == 400 and r.json()["error"]["code"] == "image_url_disabled"
        assert "HUAYU_IMAGE_URLS_ENABLED" in r.json()["error"]["message"]
        r = client.post("/v1/models/qwen-vl:predict", json={"image": "file:///etc/passwd"})
        assert r.status_code == 400 and "scheme 'file'" in r.json()["error"]["message"]


def test_gateway_fetches_an_allowed_url_and_sends_only_a_data_url(
    gateway: GatewayFactory, sim: Sim, image_port: int
) -> None:
    url = f"http://localhost:{image_port}/a.jpg"
    allowed = {"image_urls_enabled": True, "image_url_allowed_domains": "localhost", "image_url_allow_http": True}
    with gateway(**allowed) as client:
        refused = client.post("/v1/chat/completions", json=_chat(url))
        assert refused.status_code == 400 and "loopback" in refused.json()["error"]["message"]
    with gateway(image_url_allow_private=True, **allowed) as client:
        ok = client.post("/v1/chat/completions", json=_chat(url))
        assert ok.status_code == 200, ok.text
        predicted = client.post("/v1/models/qwen-vl:predict", json={"image": url, "cache": False})
        assert predicted.status_code == 200, predicted.text
    sent = [p["image_url"]["url"] for r in sim.requests() for p in r["messages"][1]["content"] if "image_url" in p]
    assert len(sent) == 2 and all(u.startswith("data:image/jpeg;base64,") for u in sent)


def test_refusals_are_huayu_errors() -> None:
    assert issubclass(InvalidRequest, HuayuError) and InvalidRequest.status == 400
