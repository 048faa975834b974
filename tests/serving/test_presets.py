from __future__ import annotations

import json
import subprocess

import pytest

from gateway.config import Settings
from gateway.errors import InvalidRequest
from serving.launch import build_command
from serving.presets import (
    IMAGE_MAX_EDGE,
    IMAGE_SIZE,
    KV_BYTES_PER_TOKEN_8B,
    PRESETS,
    TINY_MODEL_DIR,
    get_preset,
)
from tests.e2e.conftest import ROOT, require_serving_venv


def flag(args: list[str], name: str) -> str:
    assert name in args, f"{name} missing from {args}"
    return args[args.index(name) + 1]


def test_the_six_presets_exist_with_their_served_names() -> None:
    assert set(PRESETS) == {"h100", "h200", "rtx-24gb", "cpu", "tiny", "guard"}
    names = {p.name: p.served_name for p in PRESETS.values()}
    assert names == {
        "h100": "qwen-vl",
        "h200": "qwen-vl",
        "rtx-24gb": "qwen-vl",
        "cpu": "qwen-vl",
        "tiny": "qwen-vl-tiny-random",
        "guard": "qwen3-guard",
    }
    assert get_preset("tiny").model == TINY_MODEL_DIR


def test_every_preset_documents_its_memory_arithmetic() -> None:
    for p in PRESETS.values():
        assert "KV" in p.description and ("GB" in p.description or "GiB" in p.description), p.name


def test_unknown_preset_is_a_clear_invalid_request() -> None:
    with pytest.raises(InvalidRequest) as err:
        get_preset("a100")
    assert "a100" in err.value.message and "h100" in err.value.message and "tiny" in err.value.message


@pytest.mark.parametrize("name", ["h100", "h200", "rtx-24gb", "cpu", "tiny"])
def test_image_presets_cap_one_image_no_video_and_pixels(name: str) -> None:
    args = PRESETS[name].args()
    assert json.loads(flag(args, "--limit-mm-per-prompt")) == {"image": 1, "video": 0}
    kwargs = json.loads(flag(args, "--mm-processor-kwargs"))
    # Qwen3-VL reads size as pixel counts: the largest image the gateway sends must pass unresized
    assert kwargs == {"size": {"longest_edge": 1024 * 1024, "shortest_edge": 256 * 256}}
    assert flag(args, "--scheduling-policy") == "priority"
    assert "--enable-prefix-caching" in args and "--enable-lora" in args
    assert int(flag(args, "--max-lora-rank")) in {8, 16, 32, 64}
    assert int(flag(args, "--max-num-queued-reqs")) > int(flag(args, "--max-num-seqs"))


def _default(field: str) -> int:
    value = Settings.model_fields[field].default
    assert isinstance(value, int)
    return value


def test_pixel_cap_matches_the_gateway_resize() -> None:
    edge = _default("image_max_edge")
    assert edge == IMAGE_MAX_EDGE
    # the largest image the gateway can send: edge x edge, sides already multiples of 32
    assert edge % 32 == 0 and edge * edge <= IMAGE_SIZE["longest_edge"]
    for p in PRESETS.values():
        if p.multimodal:
            # an image plus a prompt and the gateway's largest answer fit the context
            assert p.max_image_tokens + 256 + _default("max_tokens_limit") <= p.max_model_len, p.name
            assert p.max_num_batched_tokens >= p.max_image_tokens, p.name


def test_gpu_presets_use_async_scheduling_and_leave_room_for_the_guard() -> None:
    for name in ("h100", "h200", "rtx-24gb"):
        p = PRESETS[name]
        assert p.device == "cuda" and "--async-scheduling" in p.args()
        assert p.env["OMP_NUM_THREADS"] == "1"
    assert PRESETS["h100"].gpu_memory_utilization is not None
    assert PRESETS["h100"].gpu_memory_utilization + (PRESETS["guard"].gpu_memory_utilization or 0) < 0.97
    for name in ("cpu", "tiny"):
        assert "--async-scheduling" not in PRESETS[name].args()
        assert "--gpu-memory-utilization" not in PRESETS[name].args()
        assert int(PRESETS[name].env["VLLM_CPU_KVCACHE_SPACE"]) >= 1


def test_h100_kv_budget_covers_its_batch() -> None:
    p = PRESETS["h100"]
    assert p.gpu_memory_utilization is not None
    kv_bytes = p.gpu_memory_utilization * 80e9 - 17.5e9 - 5e9
    per_request_tokens = 1_400  # image + prompt + ~300 output tokens
    assert kv_bytes / KV_BYTES_PER_TOKEN_8B / per_request_tokens >= 0.9 * p.max_num_seqs


def test_guard_is_text_only_without_lora() -> None:
    args = PRESETS["guard"].args()
    assert "--limit-mm-per-prompt" not in args and "--mm-processor-kwargs" not in args
    assert "--enable-lora" not in args
    assert PRESETS["guard"].model == "Qwen/Qwen3Guard-Gen-0.6B"


_PARSE = """
import json, sys
from vllm.engine.arg_utils import AsyncEngineArgs
try:  # where the serve parser lives moved between releases
    from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
except ImportError:
    from vllm.entrypoints.openai.cli_args import make_arg_parser, validate_parsed_serve_args
from vllm.utils.argparse_utils import FlexibleArgumentParser
out = {}
for name, argv in json.loads(sys.stdin.read()).items():
    ns = make_arg_parser(FlexibleArgumentParser()).parse_args(argv)
    validate_parsed_serve_args(ns)
    e = AsyncEngineArgs.from_cli_args(ns)
    out[name] = {
        "model": e.model, "max_model_len": e.max_model_len, "max_num_seqs": e.max_num_seqs,
        "max_num_queued_reqs": e.max_num_queued_reqs, "scheduling_policy": e.scheduling_policy,
        "limit_mm_per_prompt": e.limit_mm_per_prompt, "mm_processor_kwargs": e.mm_processor_kwargs,
        "enable_lora": e.enable_lora, "async_scheduling": e.async_scheduling,
        "lora_modules": [m.name for m in (ns.lora_modules or [])],
    }
print(json.dumps(out))
"""


@pytest.mark.slow
def test_every_flag_parses_with_the_installed_vllm() -> None:
    python = require_serving_venv()
    commands = {
        name: build_command(p, python="python", port=8000, lora_modules={"x": "/nonexistent"} if p.lora else None)[3:]
        for name, p in PRESETS.items()
    }
    done = subprocess.run(
        [python, "-c", _PARSE], input=json.dumps(commands), capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    parsed = json.loads(done.stdout.strip().splitlines()[-1])
    for name, p in PRESETS.items():
        got = parsed[name]
        assert got["model"] == p.model and got["max_model_len"] == p.max_model_len
        assert got["max_num_queued_reqs"] == p.max_num_queued_reqs
        assert got["scheduling_policy"] == ("priority" if p.priority_scheduling else "fcfs")
        assert got["async_scheduling"] == (True if p.async_scheduling else None)
        assert bool(got["enable_lora"]) == (p.lora is not None)
        assert got["lora_modules"] == (["x"] if p.lora else [])
        if p.multimodal:
            assert got["mm_processor_kwargs"] == {"size": IMAGE_SIZE}
            assert got["limit_mm_per_prompt"] == {"image": 1, "video": 0}
