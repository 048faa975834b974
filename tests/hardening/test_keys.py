"""API keys: hashes only in the config, 401 in the OpenAI shape, tenants isolated in cache and store."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from gateway.cli import main as huayu
from gateway.config import Settings
from gateway.security import KeyConfigError, KeyRing, hash_key, new_key
from gateway.store import open_store
from tests.hardening.conftest import GatewayFactory
from tests.media import b64, jpeg

KEY_A, KEY_B = "hy_key-of-tenant-a", "hy_key-of-tenant-b"
KEYS = f"museum-a:{hash_key(KEY_A)}, museum-b:{hash_key(KEY_B)}"


def predict_body(seed: int = 1) -> dict[str, object]:
    return {"image": b64(jpeg(160, 128, seed=seed)), "style": "curator"}


def test_key_ring_finds_the_tenant_and_nothing_else(tmp_path: Path) -> None:
    key, line = new_key("museum-c")
    file = tmp_path / "keys"
    file.write_text(f"# operators' keys\n{line}  # added today\n\n", encoding="utf-8")
    ring = KeyRing.from_settings(Settings(api_keys=KEYS, api_keys_file=file))
    assert ring.enabled and len(ring.entries) == 3
    assert ring.tenant_of(KEY_A) == "museum-a"
    assert ring.tenant_of(KEY_B) == "museum-b"
    assert ring.tenant_of(key) == "museum-c"
    for wrong in ("", KEY_A + "x", KEY_A[:-1], hash_key(KEY_A), "\udcff"):
        assert ring.tenant_of(wrong) is None
    assert key not in file.read_text(encoding="utf-8")  # only the hash is configured
    assert not KeyRing.from_settings(Settings()).enabled


@pytest.mark.parametrize(
    "entries",
    ["museum:abc", "museum" + ":" + "g" * 64, "no-colon", ":" + "a" * 64, "bad tenant:" + "a" * 64],
)
def test_malformed_key_entries_stop_start_up_with_the_reason(entries: str) -> None:
    with pytest.raises(KeyConfigError, match="tenant:sha256hex"):
        KeyRing.from_settings(Settings(api_keys=entries))


def test_the_tenant_of_keyless_requests_cannot_be_given_a_key() -> None:
    # "public" is every request's tenant while keys are off, and its review scope is all tenants
    with pytest.raises(KeyConfigError, match="'public' is reserved"):
        KeyRing.from_settings(Settings(api_keys=KEYS + f", public:{hash_key('hy_x')}"))
    with pytest.raises(KeyConfigError, match="'public' is reserved"):
        new_key("public")


def test_unreadable_key_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(KeyConfigError, match="cannot be read"):
        KeyRing.from_settings(Settings(api_keys_file=tmp_path / "missing"))


def test_keys_new_prints_a_key_that_its_line_accepts(capsys: pytest.CaptureFixture[str]) -> None:
    assert huayu(["keys", "new", "gallery"]) == 0
    out = capsys.readouterr().out.splitlines()
    key = out[0].rsplit(" ", 1)[1]
    line = out[1].rsplit(" ", 1)[1]
    assert key.startswith("hy_") and len(key) > 40
    assert KeyRing.from_settings(Settings(api_keys=line)).tenant_of(key) == "gallery"
    with pytest.raises(SystemExit):
        huayu(["keys", "new", "no spaces allowed"])


def test_every_route_but_health_needs_a_key(gateway: GatewayFactory) -> None:
    with gateway(api_keys=KEYS) as client:
        for method, path in (
            ("POST", "/v1/models/qwen-vl:predict"),
            ("POST", "/v1/chat/completions"),
            ("GET", "/v1/models"),
            ("GET", "/v1/styles"),
            ("GET", "/"),
        ):
            r = client.request(method, path, json={})
            assert r.status_code == 401, (method, path)
            assert r.headers["www-authenticate"].startswith("Bearer")
            error = r.json()["error"]
            assert error["type"] == "authentication_error" and error["code"] == "invalid_api_key"
            assert "Authorization: Bearer" in error["message"]
        wrong = client.get("/v1/styles", headers={"authorization": "Bearer hy_wrong"})
        assert wrong.status_code == 401 and "not valid" in wrong.json()["error"]["message"]
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200
        metrics = client.get("/metrics")
        assert metrics.status_code == 200 and 'huayu_errors_total{code="invalid_api_key"}' in metrics.text
        assert client.get("/v1/styles", headers={"authorization": f"Bearer {KEY_A}"}).status_code == 200
        assert client.get("/v1/styles", headers={"x-api-key": KEY_B}).status_code == 200


def test_metrics_can_need_a_key(gateway: GatewayFactory) -> None:
    with gateway(api_keys=KEYS, metrics_key_required=True) as client:
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"x-api-key": KEY_A}).status_code == 200
        assert client.get("/healthz").status_code == 200


def test_review_page_gets_a_key_form_and_the_cookie_opens_it(gateway: GatewayFactory) -> None:
    with gateway(api_keys=KEYS) as client:
        page = client.get("/", headers={"accept": "text/html"})
        assert page.status_code == 401 and "<form" in page.text and "huayu_key=" in page.text
        cookie = {"cookie": f"huayu_key={KEY_A}"}
        assert client.get("/v1/styles", headers=cookie).status_code == 200
        # a write carried by the cookie alone must come from the gateway's own page
        host = client.base_url.netloc.decode()
        cross = client.post("/v1/models/qwen-vl:predict", json={}, headers=cookie | {"origin": "https://evil.example"})
        assert cross.status_code == 401
        same = client.post("/v1/models/qwen-vl:predict", json={}, headers=cookie | {"origin": f"http://{host}"})
        assert same.status_code == 400  # past the key check: the empty body is what is wrong now


def test_tenants_have_their_own_cache_and_store(gateway: GatewayFactory, tmp_path: Path) -> None:
    db = f"sqlite+aiosqlite:///{tmp_path / 'tenants.db'}"
    a, b = {"authorization": f"Bearer {KEY_A}"}, {"authorization": f"Bearer {KEY_B}"}
    with gateway(api_keys=KEYS, store_enabled=True, database_url=db) as client:
        first = client.post("/v1/models/qwen-vl:predict", json=predict_body(), headers=a).json()
        again = client.post("/v1/models/qwen-vl:predict", json=predict_body(), headers=a).json()
        other = client.post("/v1/models/qwen-vl:predict", json=predict_body(), headers=b).json()
        assert first["cached"] is False and again["cached"] is True
        assert other["cached"] is False  # the same artwork, another tenant: never the first one's text
        assert asyncio.run(_tenants(db, [first["id"], other["id"]])) == ["museum-a", "museum-b"]


async def _tenants(url: str, ids: list[str]) -> list[str]:
    async with open_store(url) as store:
        deadline = time.monotonic() + 15
        while True:
            try:
                return [str((await store.get_description(i))["tenant"]) for i in ids]
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)


def test_a_tenant_sees_and_changes_only_its_own_descriptions(gateway: GatewayFactory, tmp_path: Path) -> None:
    db = f"sqlite+aiosqlite:///{tmp_path / 'review.db'}"
    a, b = {"authorization": f"Bearer {KEY_A}"}, {"authorization": f"Bearer {KEY_B}"}
    with gateway(api_keys=KEYS, store_enabled=True, database_url=db) as client:
        mine = client.post("/v1/models/qwen-vl:predict", json=predict_body(3), headers=a).json()["id"]
        theirs = client.post("/v1/models/qwen-vl:predict", json=predict_body(4), headers=b).json()["id"]
        asyncio.run(_tenants(db, [mine, theirs]))  # both written
        listed = client.get("/v1/descriptions", headers=a).json()
        assert [d["id"] for d in listed["data"]] == [mine]
        assert client.get(f"/v1/descriptions/{theirs}", headers=a).status_code == 404
        assert client.get(f"/v1/descriptions/{mine}", headers=a).status_code == 200
        assert client.post(f"/v1/descriptions/{theirs}/feedback", json={"rating": 1}, headers=a).status_code == 404
        assert client.patch(f"/v1/descriptions/{theirs}", json={"status": "rejected"}, headers=a).status_code == 404
        artworks = client.get("/v1/artworks", headers=a).json()["data"]
        assert len(artworks) == 1
        other_art = client.get(f"/v1/descriptions/{theirs}", headers=b).json()["artwork_id"]
        assert client.get(f"/v1/artworks/{other_art}/thumbnail", headers=a).status_code == 404
        exported = client.get("/v1/export", params={"format": "jsonl"}, headers=a).text
        assert mine in exported and theirs not in exported
        report = client.get("/v1/reports/adapters", headers=b).json()["data"]
        assert sum(row["n"] for row in report) == 1


def test_what_a_tenant_says_of_an_artwork_stays_its_own(gateway: GatewayFactory, tmp_path: Path) -> None:
    # the same image from two tenants is one shared artwork row; B's catalogue fields and source must
    # not reach A through the gallery, the listing or the exports
    db = f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}"
    a, b = {"authorization": f"Bearer {KEY_A}"}, {"authorization": f"Bearer {KEY_B}"}
    secret = {"title": "B-SECRET-TITLE", "collection": "B's private lender"}
    with gateway(api_keys=KEYS, store_enabled=True, database_url=db) as client:
        told = predict_body(5) | {"metadata": secret, "source": "https://intranet.museum-b/secret/123"}
        theirs = client.post("/v1/models/qwen-vl:predict", json=told, headers=b).json()["id"]
        mine = client.post("/v1/models/qwen-vl:predict", json=predict_body(5), headers=a).json()["id"]
        asyncio.run(_tenants(db, [theirs, mine]))
        seen_by_a = [
            client.get("/v1/artworks", headers=a).text,
            client.get("/v1/descriptions", headers=a).text,
            client.get(f"/v1/descriptions/{mine}", headers=a).text,
            *(client.get("/v1/export", params={"format": f}, headers=a).text for f in ("jsonl", "csv", "iiif")),
        ]
        for text in seen_by_a:
            assert mine in text and "SECRET" not in text and "intranet" not in text, text[:300]
        (card,) = client.get("/v1/artworks", headers=b).json()["data"]
        assert card["metadata"] == secret and card["source"] == "https://intranet.museum-b/secret/123"
