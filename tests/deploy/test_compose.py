"""deploy/docker-compose.yml, parsed and checked: no Docker engine here, so `docker compose config`
cannot run; these checks read the file as Compose would, anchors and all."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from gateway.config import Settings
from serving.launch import build_command
from serving.presets import PRESETS
from tests.deploy.render import DEPLOY

COMPOSE: dict[str, Any] = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
GATEWAYS = sorted(name for name in SERVICES if name.startswith("gateway-"))
ENV_EXAMPLE = dict(
    line.split("=", 1) for line in (DEPLOY / ".env.example").read_text().splitlines() if re.match(r"^[A-Z_]+=", line)
)
PRIVATE = ["vllm", "guard", *GATEWAYS, "redis", "postgres"]


def _interpolate(value: str) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error}, with the values of .env.example."""

    def one(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2) or "", m.group(3) or ""
        have = ENV_EXAMPLE.get(name, "")
        return arg if op == ":-" and not have else have

    return re.sub(r"(?<!\$)\$\{(\w+)(:[-?])?([^}]*)\}", one, value)


def _command(service: str) -> list[str]:
    return [_interpolate(str(part)) for part in SERVICES[service]["command"]]


def test_services() -> None:
    assert {"vllm", "guard", "nginx", "redis", "postgres", "prometheus", "grafana"} <= set(SERVICES)
    assert len(GATEWAYS) >= 2
    assert SERVICES["guard"]["profiles"] == ["guard"]
    assert all("profiles" not in SERVICES[name] for name in SERVICES if name != "guard")


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_service_has_a_health_check_and_restarts(name: str) -> None:
    service = SERVICES[name]
    assert service["healthcheck"]["test"][0] == "CMD"
    assert service["restart"] == "unless-stopped"


@pytest.mark.parametrize("name", PRIVATE)
def test_private_services_publish_no_port(name: str) -> None:
    assert "ports" not in SERVICES[name]
    assert "frontend" not in SERVICES[name]["networks"] or name in GATEWAYS


def test_published_ports() -> None:
    assert [_interpolate(p) for p in SERVICES["nginx"]["ports"]] == ["80:80"]
    for name in ("prometheus", "grafana"):
        assert SERVICES[name]["ports"] and all(p.startswith("127.0.0.1:") for p in SERVICES[name]["ports"])
    published = {name for name, service in SERVICES.items() if "ports" in service}
    assert published == {"nginx", "prometheus", "grafana"}


def test_networks_keep_data_stores_internal() -> None:
    assert COMPOSE["networks"]["backend"]["internal"] is True
    assert SERVICES["redis"]["networks"] == ["backend"] and SERVICES["postgres"]["networks"] == ["backend"]
    assert SERVICES["nginx"]["networks"] == ["frontend"]
    assert "frontend" not in SERVICES["vllm"]["networks"]


@pytest.mark.parametrize(("service", "preset"), [("vllm", "h100"), ("guard", "guard")])
def test_model_servers_run_the_serving_presets(service: str, preset: str) -> None:
    """The same argv as `huayu model --preset ...` (serving/launch.py), after the interpreter."""
    expected = build_command(preset, python="python3", host="0.0.0.0", port=8000)
    assert SERVICES[service]["entrypoint"] == expected[:3]
    assert _command(service) == expected[3:]


def test_vllm_service() -> None:
    vllm = SERVICES["vllm"]
    # what `huayu model` sets besides the flags (serving/launch.py, the preset's env)
    env = {k: _interpolate(str(v)) for k, v in vllm["environment"].items()}
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True" and env["VLLM_NO_USAGE_STATS"] == "1"
    assert env["DO_NOT_TRACK"] == "1" and env.items() >= PRESETS["h100"].env.items()
    assert any(v.endswith(":/adapters:ro") for v in vllm["volumes"])
    assert _interpolate(vllm["image"]).startswith("vllm/vllm-openai:")
    command = _command("vllm")
    for flag in ("--enable-lora", "--scheduling-policy", "--limit-mm-per-prompt"):
        assert flag in command
    assert command[command.index("--served-model-name") + 1] == "qwen-vl"
    device = vllm["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert any(v.startswith("model-cache:") for v in vllm["volumes"]) and "model-cache" in COMPOSE["volumes"]
    assert "/health" in " ".join(vllm["healthcheck"]["test"])


@pytest.mark.parametrize("name", GATEWAYS)
def test_gateways(name: str) -> None:
    gateway = SERVICES[name]
    assert gateway["build"] == {"context": "..", "dockerfile": "Dockerfile"}
    env = {k: _interpolate(str(v)) for k, v in gateway["environment"].items()}
    fields = set(Settings.model_fields)
    unknown = [k for k in env if k.startswith("HUAYU_") and k.removeprefix("HUAYU_").lower() not in fields]
    assert not unknown, f"not settings of the gateway: {unknown}"
    settings = Settings.model_validate(
        {k.removeprefix("HUAYU_").lower(): v for k, v in env.items() if k.startswith("HUAYU_")}
    )
    # nginx's client_max_body_size is the gateway's default limit (tests/deploy/test_nginx.py).
    assert "HUAYU_MAX_BODY_BYTES" not in env
    assert settings.host == "0.0.0.0" and settings.port == 8080
    assert settings.upstream_url == "http://vllm:8000/v1"
    assert settings.upstream_model == "qwen-vl"
    assert settings.cache_backend == "redis" and "@redis:6379/" in settings.redis_url
    assert (
        settings.database_url.startswith("postgresql+asyncpg://huayu:")
        and "@postgres:5432/huayu" in settings.database_url
    )
    assert "/healthz" in " ".join(gateway["healthcheck"]["test"])
    assert gateway["cap_drop"] == ["ALL"]
    # published through nginx: keys are required, and compose waits for the server's own drain
    assert "${HUAYU_API_KEYS:?" in str(gateway["environment"]["HUAYU_API_KEYS"])
    grace = int(gateway["stop_grace_period"].removesuffix("s"))
    assert settings.shutdown_grace_s + 15 <= grace  # the store's last write (up to 5 s) included


def test_redis_is_a_bounded_lru_cache() -> None:
    command = " ".join(SERVICES["redis"]["command"])
    assert "--maxmemory " in command and "--maxmemory-policy allkeys-lru" in command
    assert "--requirepass" in command


def test_nginx_upstreams_are_the_gateway_services() -> None:
    conf = (DEPLOY / "nginx" / "huayu.conf").read_text()
    assert re.findall(r"^\s*server (gateway-\d+):8080", conf, flags=re.M) == GATEWAYS
    assert SERVICES["nginx"]["volumes"] == ["./nginx/huayu.conf:/etc/nginx/conf.d/default.conf:ro"]


def test_secrets_come_from_the_env_file() -> None:
    text = (DEPLOY / "docker-compose.yml").read_text()
    used = set(re.findall(r"(?<!\$)\$\{(\w+)", text))
    assert used <= set(ENV_EXAMPLE), f"not in .env.example: {sorted(used - set(ENV_EXAMPLE))}"
    for secret in ("VLLM_API_KEY", "REDIS_PASSWORD", "POSTGRES_PASSWORD", "GRAFANA_ADMIN_PASSWORD", "HUAYU_API_KEYS"):
        assert ENV_EXAMPLE[secret] == "change-me"
        assert f"${{{secret}:?" in text, f"{secret} must be required, not defaulted"
    assert (DEPLOY / ".gitignore").read_text().split() == [".env"]
