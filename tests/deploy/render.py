"""Turns the production configs of deploy/ into configs that run on loopback, and reads metric names.

Each rewrite asserts that it matched, so a change to the production files that the tests can no
longer follow fails loudly instead of testing something else.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
_SERVING_LIB = Path(__file__).resolve().parents[2] / ".venv-serving" / "lib"
VLLM_SOURCE = next(iter(sorted(_SERVING_LIB.glob("python3.*/site-packages/vllm"))), _SERVING_LIB / "vllm")

# Series Prometheus itself adds to every scrape target.
SYNTHETIC = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}


def _sub(pattern: str, repl: str, text: str, count: int = 0) -> str:
    new, n = re.subn(pattern, repl, text, flags=re.M)
    assert n and (count == 0 or n == count), f"pattern {pattern!r} matched {n} times in the production config"
    return new


def render_nginx(prefix: Path, listen_port: int, gateways: list[str]) -> Path:
    """Writes a main nginx.conf under ``prefix`` that includes the production server config, rewired to loopback."""
    site = (DEPLOY / "nginx" / "huayu.conf").read_text()
    servers = "".join(f"    server {g} max_fails=3 fail_timeout=10s;\n" for g in gateways)
    site = _sub(r"^\s*server gateway-\d+:8080[^;]*;\n", "", site, count=2)
    site = _sub(r"^(\s*least_conn;\n)", r"\1" + servers.replace("\\", "\\\\"), site, count=1)
    site = _sub(r"^\s*listen 80;", f"    listen 127.0.0.1:{listen_port};", site, count=1)
    site = _sub(r"access_log /var/log/nginx/access\.log", f"access_log {prefix}/access.log", site, count=1)
    (prefix / "huayu.conf").write_text(site)
    temps = " ".join(
        f"{kind}_temp_path {prefix}/{kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    # As root, nginx would drop its workers to "nobody", who cannot read a private temp folder.
    user = "user root;\n" if os.geteuid() == 0 else ""
    main = (
        f"{user}worker_processes 1;\npid {prefix}/nginx.pid;\nerror_log {prefix}/error.log warn;\n"
        "events { worker_connections 256; }\n"
        f"http {{\n  {temps}\n  include {prefix}/huayu.conf;\n}}\n"
    )
    conf = prefix / "nginx.conf"
    conf.write_text(main)
    return conf


def render_prometheus(directory: Path, gateways: list[str], vllm: list[str]) -> Path:
    """The production prometheus.yml with loopback targets, a 1 s scrape interval and the real alert rules."""
    config: dict[str, Any] = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    config["global"]["scrape_interval"] = "1s"
    config["global"]["evaluation_interval"] = "1s"
    config["rule_files"] = [str(DEPLOY / "prometheus" / name) for name in config["rule_files"]]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    jobs["gateway"]["static_configs"] = [{"targets": gateways}]
    jobs["vllm"]["static_configs"] = [{"targets": vllm}]
    config["scrape_configs"] = [jobs["gateway"], jobs["vllm"]]
    path = directory / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


# --- metric names ---

_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset"}
_KEYWORDS |= {"inf", "nan"}


def promql_metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, keywords, labels and strings left out)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    s = re.sub(r"'(?:[^'\\]|\\.)*'", "''", s)
    s = re.sub(r"\$\{?\w+\}?", "", s)  # Grafana variables such as $__rate_interval
    s = re.sub(r"\{[^}]*\}", "", s)
    s = re.sub(r"\[[^\]]*\]", "", s)
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", s)
    names: set[str] = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", s):
        before = s[m.start() - 1] if m.start() else " "
        if before.isdigit() or before == ".":  # the exponent or unit of a number: 1e3, 5m
            continue
        if s[m.end() :].lstrip().startswith("(") or m.group(0).lower() in _KEYWORDS:
            continue
        names.add(m.group(0))
    return names


def _expand(name: str, kind: str) -> set[str]:
    if kind == "counter":
        base = name.removesuffix("_total")
        return {base + "_total", base + "_created"}
    if kind == "histogram":
        return {name + "_bucket", name + "_sum", name + "_count", name + "_created"}
    if kind == "summary":
        return {name, name + "_sum", name + "_count", name + "_created"}
    return {name}


def exposition_names(text: str) -> set[str]:
    """Every series name a /metrics text can carry, from its TYPE lines (labelled series with no
    sample yet included) and its samples."""
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            names |= _expand(name, kind.strip())
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names


def vllm_source_names(root: Path = VLLM_SOURCE) -> set[str]:
    """The series the installed vLLM defines, read from its source: ``*_cls(name="vllm:...")`` and friends."""
    pattern = re.compile(r"(gauge|counter|histogram)\w*\(\s*name\s*=\s*\"(vllm:[a-z0-9_]+)\"", re.I | re.S)
    names: set[str] = set()
    for path in root.rglob("*.py"):
        text = path.read_text(errors="replace")
        if "vllm:" not in text:
            continue
        for kind, name in pattern.findall(text):
            names |= _expand(name, kind.lower())
    return names


def rule_expressions(path: Path) -> dict[str, str]:
    doc: dict[str, Any] = yaml.safe_load(path.read_text())
    return {rule.get("alert") or rule["record"]: rule["expr"] for group in doc["groups"] for rule in group["rules"]}


def recorded_names(path: Path) -> set[str]:
    """The series the recording rules of a rule file create."""
    doc: dict[str, Any] = yaml.safe_load(path.read_text())
    return {rule["record"] for group in doc["groups"] for rule in group["rules"] if "record" in rule}


def dashboard_expressions(dashboard: dict[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for panel in dashboard["panels"]:
        for nested in [panel, *panel.get("panels", [])]:
            for target in nested.get("targets", []):
                out[f"{nested['title']} / {target['refId']}"] = target["expr"]
    return out
