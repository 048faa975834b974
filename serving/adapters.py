"""Registering LoRA adapters with a running vLLM, by name: ``huayu adapters load|list|unload``.

vLLM serves an adapter under the name it was loaded with; clients (and the gateway, for a
style with ``adapter = "NAME"``) pick it by putting that name in ``model``. Runtime loading
uses vLLM's ``/v1/load_lora_adapter`` and ``/v1/unload_lora_adapter``, which exist only when
the server runs with ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`` (``serving_env`` sets it) and
``--enable-lora``. Standard library only, so both venvs can use it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from gateway.errors import (
    HuayuError,
    InvalidRequest,
    NotFound,
    ServiceUnavailable,
    Unprocessable,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)

DEFAULT_URL = "http://127.0.0.1:8000"
# the store keeps adapter names in 128 characters; ":" is the gateway's model:style separator
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,127}$")
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def server_root(url: str) -> str:
    """``http://host:port`` from that or from the OpenAI base URL (``.../v1``)."""
    url = url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise InvalidRequest(
            f"Adapter name {name!r} is not valid: use 1-128 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit (no ':' — the gateway reads model:style).",
            param="name",
        )
    return name


def check_adapter_dir(path: str | Path) -> Path:
    """The folder resolved, checked to hold a peft LoRA adapter."""
    folder = Path(path).expanduser().resolve()
    if not folder.is_dir():
        raise InvalidRequest(f"Adapter folder {path} does not exist (or is not a folder).", param="path")
    missing = [f for f in ADAPTER_FILES if not (folder / f).is_file()]
    if missing:
        raise InvalidRequest(
            f"{path} is not a LoRA adapter: {', '.join(missing)} missing (huayu finetune writes both).", param="path"
        )
    try:
        config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InvalidRequest(f"{path}/adapter_config.json is not readable JSON ({exc}).", param="path") from None
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        raise InvalidRequest(f"{path} holds a {config.get('peft_type')!r} adapter; vLLM serves LoRA only.")
    return folder


def _message(raw: bytes) -> str:
    try:
        body = json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace").strip()[:500]
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        for key in ("message", "detail"):
            if body.get(key):
                return str(body[key])
    return str(body)[:500]


def _call(url: str, *, body: dict[str, Any] | None = None, timeout: float) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method="POST" if body is not None else "GET")
    req.add_header("Content-Type", "application/json")
    # a model server started with an API key (the compose stack's) wants it on these routes too; the
    # gateway's containers hold it as HUAYU_UPSTREAM_API_KEY
    key = os.environ.get("VLLM_API_KEY") or os.environ.get("HUAYU_UPSTREAM_API_KEY")
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return int(r.status), r.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()
    except TimeoutError:
        raise UpstreamTimeout(f"The model server at {url} did not answer within {timeout:g} s.") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UpstreamUnavailable(
            f"No model server answers at {url} ({reason}); start one with `huayu model` or give --url."
        ) from None


def _runtime_disabled(root: str) -> ServiceUnavailable:
    return ServiceUnavailable(
        f"The model server at {root} does not load adapters at runtime: start it with --enable-lora and "
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True (`huayu model` sets both).",
        code="runtime_lora_disabled",
    )


def load_adapter(base_url: str, name: str, path: str | Path, *, check_local: bool = True, timeout: float = 120) -> str:
    """Load the adapter in ``path`` under ``name``; returns vLLM's confirmation.

    ``check_local=False`` sends ``path`` as it is, for a server on another machine (its own path).
    """
    check_name(name)
    lora_path = str(check_adapter_dir(path)) if check_local else str(path)
    root = server_root(base_url)
    status, raw = _call(
        root + "/v1/load_lora_adapter", body={"lora_name": name, "lora_path": lora_path}, timeout=timeout
    )
    if status == 200:
        return raw.decode("utf-8", "replace")
    message = _message(raw)
    if status == 404 and message in ("Not Found", ""):
        raise _runtime_disabled(root)
    if "already been loaded" in message:
        raise InvalidRequest(
            f"An adapter named {name!r} is already loaded; unload it first or pick another name.", code="adapter_exists"
        )
    if status in (400, 404, 500):
        # vLLM answers 500 when the weights do not fit the model (rank above --max-lora-rank, wrong shapes)
        raise Unprocessable(
            f"The model server refused adapter {name!r} from {lora_path}: {message}", code="adapter_rejected"
        )
    raise UpstreamError(f"Loading adapter {name!r} failed with HTTP {status}: {message}", status=502)


def unload_adapter(base_url: str, name: str, *, timeout: float = 60) -> str:
    check_name(name)
    root = server_root(base_url)
    status, raw = _call(root + "/v1/unload_lora_adapter", body={"lora_name": name}, timeout=timeout)
    if status == 200:
        return raw.decode("utf-8", "replace")
    message = _message(raw)
    if status == 404 and message in ("Not Found", ""):
        raise _runtime_disabled(root)
    if status in (400, 404):
        raise NotFound(f"No adapter named {name!r} is loaded ({message}).", param="name", code="adapter_not_found")
    raise UpstreamError(f"Unloading adapter {name!r} failed with HTTP {status}: {message}", status=502)


def list_adapters(base_url: str, *, timeout: float = 10) -> list[dict[str, Any]]:
    """The adapters the server lists: ``[{"name", "path", "base"}]`` (the base model is left out)."""
    root = server_root(base_url)
    status, raw = _call(root + "/v1/models", timeout=timeout)
    if status != 200:
        raise UpstreamError(f"Listing models failed with HTTP {status}: {_message(raw)}", status=502)
    data = json.loads(raw).get("data", [])
    return [
        {"name": m.get("id"), "path": m.get("root"), "base": m.get("parent")}
        for m in data
        if isinstance(m, dict) and m.get("parent")
    ]


def adapters_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="huayu adapters", description="LoRA adapters of a running vLLM server.")
    p.add_argument("--url", default=DEFAULT_URL, help=f"the model server (default {DEFAULT_URL}; .../v1 works too)")
    sub = p.add_subparsers(dest="action", required=True)
    lo = sub.add_parser("load", help="load an adapter folder under a name that clients then put in 'model'")
    lo.add_argument("name")
    lo.add_argument("path")
    lo.add_argument("--server-path", action="store_true", help="PATH is on the server's machine: send it unchecked")
    un = sub.add_parser("unload", help="unload an adapter by name")
    un.add_argument("name")
    sub.add_parser("list", help="the adapters the server serves")
    for sp in sub.choices.values():
        sp.add_argument("--url", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    try:
        if args.action == "load":
            load_adapter(args.url, args.name, args.path, check_local=not args.server_path)
            print(f'loaded {args.name} from {args.path}; ask for it with "model": "{args.name}"')
        elif args.action == "unload":
            unload_adapter(args.url, args.name)
            print(f"unloaded {args.name}")
        else:
            rows = list_adapters(args.url)
            for row in rows:
                print(f"{row['name']}\t{row['path']}\t(base {row['base']})")
            if not rows:
                print("no adapters loaded", file=sys.stderr)
    except HuayuError as exc:
        print(f"huayu adapters: {exc.message}", file=sys.stderr)
        return 2 if isinstance(exc, InvalidRequest | NotFound | Unprocessable) else 1
    return 0


if __name__ == "__main__":
    sys.exit(adapters_main())
