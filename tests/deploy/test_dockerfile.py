"""The gateway's Dockerfile and .dockerignore, read instruction by instruction (no Docker engine
here to build it): slim base, non-root, health check, the package installed and vLLM not."""

from __future__ import annotations

import fnmatch
import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml
from setuptools import find_packages

ROOT = Path(__file__).resolve().parents[2]


def _instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text()
    joined = re.sub(r"\\\n", " ", text)
    out: list[tuple[str, str]] = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def _final_stage() -> list[tuple[str, str]]:
    steps = _instructions()
    last_from = max(i for i, (k, _) in enumerate(steps) if k == "FROM")
    return steps[last_from:]


def _args() -> dict[str, str]:
    return dict(rest.split("=", 1) for k, rest in _instructions() if k == "ARG" and "=" in rest)


def test_slim_python_base() -> None:
    args = _args()
    for keyword, rest in _instructions():
        if keyword == "FROM":
            image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], rest.split()[0])
            assert re.fullmatch(r"python:3\.11-slim(-\w+)?", image), image


def test_runs_as_a_non_root_user() -> None:
    users = [rest for k, rest in _final_stage() if k == "USER"]
    assert users, "the final stage sets no USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")


def test_health_check_calls_healthz() -> None:
    (check,) = [rest for k, rest in _final_stage() if k == "HEALTHCHECK"]
    assert "CMD" in check and "/healthz" in check
    cmd = json.loads(check[check.index("CMD") + 3 :].strip())
    assert cmd[0] == "python", "slim images have no curl or wget"


def test_installs_the_package_and_not_vllm() -> None:
    runs = " ".join(rest for k, rest in _instructions() if k == "RUN")
    assert "pip install --no-deps ." in runs and "pip install ." in runs
    assert "vllm" not in runs.lower() and "torch" not in runs.lower()
    final = _final_stage()
    assert ("CMD", '["huayu", "serve"]') in final
    env = " ".join(rest for k, rest in final if k == "ENV")
    assert "HUAYU_HOST=0.0.0.0" in env and "HUAYU_PORT=8080" in env
    assert ("EXPOSE", "8080") in final


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last pattern matching the path or one of its parents wins."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        glob = pattern.removeprefix("!").rstrip("/")
        glob = glob.replace("**/", "*").replace("**", "*")
        if any(fnmatch.fnmatchcase(c, glob) for c in candidates):
            ignored = not negate
    return ignored


def test_build_context_holds_the_sources_and_no_secrets() -> None:
    patterns = [
        line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip() and line[0] != "#"
    ]
    sources = [
        word for k, rest in _instructions() if k == "COPY" and "--from" not in rest for word in rest.split()[:-1]
    ]
    assert "gateway" in sources and "pyproject.toml" in sources
    for source in sources:
        assert (ROOT / source).exists(), source
        assert not _ignored(source, patterns), f"{source} is copied but .dockerignore leaves it out"
    for private in (".venv/bin/python", ".venv-serving", ".git/config", ".data/huayu.db", "deploy/.env", "tests/x.py"):
        assert _ignored(private, patterns), private
    assert _ignored("gateway/__pycache__/app.cpython-311.pyc", patterns)
    assert not _ignored("gateway/styles/builtin/curator.toml", patterns)


def test_the_installed_package_carries_every_gateway_file() -> None:
    """A non-editable install (the image's) keeps only packages and their package-data: a folder
    without __init__.py, or a file type the patterns miss, would be absent from the image."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = set(find_packages(str(ROOT), include=config["packages"]["find"]["include"]))
    data_patterns: list[str] = config["package-data"]["*"]
    missing = []
    for path in sorted((ROOT / "gateway").rglob("*")):
        if not path.is_file() or "__pycache__" in path.parts:
            continue
        package = ".".join(path.parent.relative_to(ROOT).parts)
        carried = package in packages and (
            path.suffix == ".py" or any(fnmatch.fnmatch(path.name, p) for p in data_patterns)
        )
        if not carried:
            missing.append(str(path.relative_to(ROOT)))
    assert not missing, f"files the Docker image would lack: {missing}"


@pytest.mark.parametrize("name", ["gateway-1", "gateway-2"])
def test_compose_health_check_matches_the_image(name: str) -> None:
    compose = yaml.safe_load((ROOT / "deploy" / "docker-compose.yml").read_text())
    test = compose["services"][name]["healthcheck"]["test"]
    assert test[:2] == ["CMD", "python"] and "127.0.0.1:8080/healthz" in test[-1]
