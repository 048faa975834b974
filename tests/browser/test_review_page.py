"""The review page in a real headless Chromium (Debian's), driven by Playwright, against a real
gateway with the simulator upstream. Screenshots go to test-artifacts/browser/."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Locator, Page, expect, sync_playwright

from gateway.app import create_app
from loadtest.simulator import SimConfig
from loadtest.simulator import create_app as create_sim
from tests.media import jpeg
from tests.servers import gateway_settings, serve

pytestmark = pytest.mark.browser

CHROMIUM = Path(os.environ.get("HUAYU_CHROMIUM", "/usr/bin/chromium"))
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "browser"
# markup in a text must show as text: the page never parses model or curator text as HTML
EDITED = "远山层叠，溪水自峡谷中奔流而下，<b>行旅</b>渺小如蚁。<img src=x onerror=alert(1)>"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    # ~40 tokens 30 ms apart: a stream lasts over a second, long enough to watch it grow
    with serve(create_sim(SimConfig(model="qwen-vl", tokens=40, itl_ms=30, ttft_ms=100))) as sim:
        settings = gateway_settings(sim, tmp_path_factory.mktemp("browser"))
        with serve(create_app(settings)) as url:
            yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"Chromium is missing at {CHROMIUM}: run `bash scripts/install-debs.sh` (make test does).")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1360, "height": 960}, locale="zh-CN")
    p = context.new_page()
    problems: list[str] = []

    def on_console(msg: ConsoleMessage) -> None:
        url = str(msg.location.get("url", ""))
        # the page polls a new description until the background writer has stored it: 404 until then
        if msg.type == "error" and not ("/v1/descriptions/desc_" in url and "404" in msg.text):
            problems.append(f"{msg.text} ({url})")

    p.on("console", on_console)  # a CSP violation or a script error shows up here
    p.on("pageerror", lambda e: problems.append(str(e)))
    yield p
    context.close()
    assert problems == []


def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def card(page: Page, style: str) -> Locator:
    return page.locator(f'.artwork[data-artwork] .style-column[data-style="{style}"] .description[data-id]').first


def watch_streams(page: Page, timeout_s: float = 15.0) -> list[list[int]]:
    """The text lengths of the streaming cards, sampled until every stream has ended."""
    samples: list[list[int]] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        lengths: list[int] = page.eval_on_selector_all(
            ".artwork.new .pending .desc-text", "els => els.map(e => e.textContent.length)"
        )
        if samples and not lengths:
            break  # the pending cards became stored, reviewable cards
        if lengths:
            samples.append(lengths)
        if len(lengths) == 2 and min(lengths) >= 12 and not (ARTIFACTS / "02-streaming.png").exists():
            shot(page, "02-streaming")
        page.wait_for_timeout(40)
    return samples


def test_upload_stream_rate_edit_approve_and_switch_language(
    site: str, page: Page, tmp_path: Path, browser: Browser
) -> None:
    for old in ARTIFACTS.glob("*.png"):
        old.unlink()
    image = tmp_path / "xishan.jpg"
    image.write_bytes(jpeg(960, 640, seed=7))
    page.goto(site + "/")
    expect(page.locator("h1")).to_contain_text("描述审阅")
    expect(page.locator("#gallery-message")).to_contain_text("还没有描述")
    shot(page, "01-empty")

    page.set_input_files("#file", str(image))
    expect(page.locator("#preview")).to_be_visible()
    page.locator("label.chip", has_text="学术评析").click()
    expect(page.get_by_role("checkbox", name="学术评析")).to_be_checked()
    expect(page.get_by_role("checkbox", name="策展人")).to_be_checked()
    page.fill("#art-title", "溪山行旅图")
    page.click("#generate")

    samples = watch_streams(page)
    assert samples and len(samples[0]) == 2, samples
    for i in range(2):  # each of the two styles was seen growing, not just arriving whole
        seen = {s[i] for s in samples if len(s) == 2 and s[i] > 0}
        assert len(seen) >= 3, samples

    expect(page.locator("#generate")).to_be_enabled(timeout=20_000)
    expect(page.locator(".artwork[data-artwork] .description[data-id]")).to_have_count(2, timeout=20_000)
    expect(page.locator(".artwork[data-artwork] .art-title")).to_have_text("溪山行旅图")
    curator, academic = card(page, "curator"), card(page, "academic")
    expect(curator.locator(".question")).to_have_text("这段文字贴切吗？")
    expect(curator.locator(".desc-text")).not_to_be_empty()
    shot(page, "03-written")

    rated_id = curator.get_attribute("data-id")
    curator.locator('.star[data-rating="4"]').click()
    expect(curator.locator(".rating-summary")).to_have_text("平均 4.0 分 · 1 次评分")
    stored = httpx.get(f"{site}/v1/descriptions/{rated_id}").json()
    assert stored["rating_avg"] == 4.0 and stored["feedback"][0]["rating"] == 4

    page.reload()
    curator = card(page, "curator")
    expect(curator).to_have_attribute("data-id", rated_id or "")
    expect(curator.locator(".star.on")).to_have_count(4)
    expect(curator.locator(".rating-summary")).to_have_text("平均 4.0 分 · 1 次评分")
    shot(page, "04-rated-after-reload")

    academic = card(page, "academic")
    academic.get_by_role("button", name="编辑").click()
    academic.locator("textarea").fill(EDITED)
    academic.get_by_role("button", name="保存").click()
    expect(academic.locator(".desc-text")).to_have_text(EDITED)
    expect(academic.locator(".badge.edited")).to_be_visible()
    expect(academic.locator(".desc-text *")).to_have_count(0)
    curator.get_by_role("button", name="通过").click()
    expect(curator.locator(".badge.status")).to_have_text("已通过")
    expect(curator.get_by_role("button", name="通过")).to_be_hidden()
    shot(page, "05-reviewed")
    edited = httpx.get(f"{site}/v1/descriptions/{academic.get_attribute('data-id')}").json()
    assert edited["final_text"] == EDITED and edited["text"] != EDITED
    assert httpx.get(f"{site}/v1/descriptions/{rated_id}").json()["status"] == "approved"

    page.get_by_role("button", name="English").click()
    expect(page.locator("h1")).to_contain_text("Description review")
    expect(curator.locator(".question")).to_have_text("Is this description apt?")
    expect(curator.locator(".badge.status")).to_have_text("Approved")
    expect(curator.locator(".rating-summary")).to_have_text("4.0 average · 1 rating")
    expect(page.locator(".style-column[data-style=curator] .style-name")).to_have_text("Curator")
    shot(page, "06-english")
    page.reload()  # the choice is remembered: the server renders English from the first byte
    expect(page.locator("html")).to_have_attribute("lang", "en")
    expect(page.get_by_role("button", name="中文")).to_be_visible()

    page.select_option("#filters select[name=status]", "approved")
    expect(page.locator(".artwork[data-artwork] .description[data-id]")).to_have_count(1)
    expect(page.locator(".description[data-id]")).to_have_attribute("data-id", rated_id or "")
    assert "status=approved" in page.url

    small = browser.new_page(viewport={"width": 420, "height": 900})
    small.goto(site + "/")
    expect(small.locator(".artwork[data-artwork]")).to_have_count(1)
    shot(small, "07-narrow")
    small.close()
