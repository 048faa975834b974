"""The tiny model builder, run in the serving venv (torch, transformers) as users run it."""

from __future__ import annotations

import json
import struct
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from serving.presets import IMAGE_SIZE
from serving.tiny_model import PLAIN_ADDED_TOKENS, SPECIAL_TOKENS, VOCAB_MULTIPLE, is_built, weights_digest
from tests.e2e.conftest import ROOT, require_serving_venv

pytestmark = pytest.mark.slow


def serving_python(code: str, *args: str, timeout: int = 300) -> str:
    done = subprocess.run(
        [require_serving_venv(), "-c", code, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    dirs = {"a": root / "seed0-a", "b": root / "seed0-b", "c": root / "seed1"}
    serving_python(
        "import sys; from pathlib import Path; from serving.tiny_model import build_tiny_model as b; from serving.lora "
        "import make_random_adapter as m; b(Path(sys.argv[1]), 0); b(Path(sys.argv[2]), 0); b(Path(sys.argv[3]), 1); "
        "m(Path(sys.argv[1]), Path(sys.argv[4]), seed=5, rank=8)",
        str(dirs["a"]),
        str(dirs["b"]),
        str(dirs["c"]),
        str(root / "lora"),
    )
    return {**dirs, "lora": root / "lora"}


def test_same_seed_same_weights_other_seed_other_weights(built: dict[str, Path]) -> None:
    assert weights_digest(built["a"]) == weights_digest(built["b"])
    assert weights_digest(built["a"]) != weights_digest(built["c"])
    # the tokenizer is trained, not downloaded: it must come out the same too
    assert (built["a"] / "tokenizer.json").read_bytes() == (built["b"] / "tokenizer.json").read_bytes()


def test_rebuild_is_skipped_when_the_stamp_matches(built: dict[str, Path]) -> None:
    weights = built["a"] / "model.safetensors"
    before = weights.stat().st_mtime_ns
    assert is_built(built["a"], 0) and not is_built(built["a"], 1)
    out = serving_python("import sys; from serving.tiny_model import main; main([sys.argv[1]])", str(built["a"]))
    assert "already built" in out and weights.stat().st_mtime_ns == before


def test_config_matches_the_tokenizer_and_the_architecture(built: dict[str, Path]) -> None:
    config = json.loads((built["a"] / "config.json").read_text())
    tok = json.loads((built["a"] / "tokenizer.json").read_text())
    added = {t["content"]: t for t in tok["added_tokens"]}
    assert list(added) == [*SPECIAL_TOKENS, *PLAIN_ADDED_TOKENS]
    assert all(added[t]["special"] for t in SPECIAL_TOKENS) and not any(added[t]["special"] for t in PLAIN_ADDED_TOKENS)
    ids = {t: added[t]["id"] for t in added}
    assert min(ids.values()) == len(tok["model"]["vocab"])  # added tokens follow the BPE ids, as in Qwen's
    assert config["image_token_id"] == ids["<|image_pad|>"] and config["video_token_id"] == ids["<|video_pad|>"]
    assert config["vision_start_token_id"] == ids["<|vision_start|>"]
    assert config["vision_end_token_id"] == ids["<|vision_end|>"]
    text = config["text_config"]
    assert text["vocab_size"] % VOCAB_MULTIPLE == 0 and text["vocab_size"] >= max(ids.values()) + 1
    assert text["eos_token_id"] == [ids["<|im_end|>"], ids["<|endoftext|>"]]
    assert (text["num_hidden_layers"], text["hidden_size"], text["num_attention_heads"]) == (2, 128, 2)
    assert (text["num_key_value_heads"], text["head_dim"]) == (1, 64)
    assert text["rope_parameters"]["mrope_section"] == [12, 10, 10] and text["rope_parameters"]["mrope_interleaved"]
    vision = config["vision_config"]
    assert (vision["depth"], vision["hidden_size"], vision["patch_size"], vision["spatial_merge_size"]) == (
        2,
        64,
        16,
        2,
    )
    assert vision["deepstack_visual_indexes"] == [0, 1] and vision["out_hidden_size"] == 128
    assert config["architectures"] == ["Qwen3VLForConditionalGeneration"]
    assert tok["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"].startswith("(?i:'s|'t|'re|'ve|'m|'ll|'d)")


def test_processor_files_cap_pixels_as_qwen3_vl_reads_them(built: dict[str, Path]) -> None:
    pre = json.loads((built["a"] / "preprocessor_config.json").read_text())
    assert pre["image_processor_type"] == "Qwen2VLImageProcessor"
    assert (pre["patch_size"], pre["merge_size"], pre["image_mean"], pre["image_std"]) == (16, 2, [0.5] * 3, [0.5] * 3)
    assert pre["size"] == IMAGE_SIZE == {"longest_edge": 1024 * 1024, "shortest_edge": 65536}
    assert json.loads((built["a"] / "processor_config.json").read_text())["image_processor"]["size"] == IMAGE_SIZE
    video = json.loads((built["a"] / "video_preprocessor_config.json").read_text())
    assert video["video_processor_type"] == "Qwen3VLVideoProcessor"


_GENERATE = """
import sys, json, torch
from PIL import Image
from transformers import AutoProcessor, Qwen3VLForConditionalGeneration
proc = AutoProcessor.from_pretrained(sys.argv[1])
model = Qwen3VLForConditionalGeneration.from_pretrained(sys.argv[1]).eval()
msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "描述这幅画。Describe it."}]}]
text = proc.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
out = {"text": text, "gen": [], "grid": []}
for color, size in [((200, 30, 30), (640, 480)), ((20, 30, 220), (640, 480)), ((90, 90, 90), (2048, 1536))]:
    inputs = proc(text=[text], images=[Image.new("RGB", size, color)], return_tensors="pt")
    out["grid"].append(inputs["image_grid_thw"][0].tolist())
    ids = model.generate(**inputs, max_new_tokens=8, do_sample=False)[0, inputs["input_ids"].shape[1]:]
    out["gen"].append(ids.tolist())
print(json.dumps(out))
"""


def test_transformers_alone_loads_and_generates(built: dict[str, Path]) -> None:
    out = json.loads(serving_python(_GENERATE, str(built["a"])).strip().splitlines()[-1])
    assert out["text"] == (
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>描述这幅画。Describe it.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert [len(g) for g in out["gen"]] == [8, 8, 8]
    assert out["gen"][0] != out["gen"][1]  # the image goes through the vision tower
    assert out["grid"][0] == [1, 30, 40]  # 640x480 is left as it is: 300 visual tokens
    _, h, w = out["grid"][2]  # 2048x1536 is scaled under the 1024x1024 pixel budget
    assert h * w * 16 * 16 <= 1024 * 1024 and h * w // 4 <= 1024


def _safetensors(path: Path) -> dict[str, np.ndarray[Any, Any]]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        assert meta["dtype"] == "F32", meta
        start, end = meta["data_offsets"]
        out[name] = np.frombuffer(raw[8 + n + start : 8 + n + end], dtype="<f4").reshape(meta["shape"])
    return out


def test_lora_adapter_is_in_vllm_layout_with_nonzero_b(built: dict[str, Path]) -> None:
    config = json.loads((built["lora"] / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 8
    assert set(config["target_modules"]) == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }
    tensors = _safetensors(built["lora"] / "adapter_model.safetensors")
    assert len(tensors) == 2 * 7 * 2  # A and B, 7 projections, 2 layers
    assert all(k.startswith("base_model.model.model.language_model.layers.") for k in tensors)
    b = [v for k, v in tensors.items() if ".lora_B." in k]
    assert b and all(np.abs(v).mean() > 1e-3 for v in b)
