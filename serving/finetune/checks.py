"""Is the base model a Qwen3-VL, and was an adapter trained on this base? Checked without torch.

The adapter check reads the shapes in ``adapter_model.safetensors``'s header (a JSON block at
the start of the file) and compares them with the projections the base's config implies, so a
mismatch is found in milliseconds, before any weight is loaded.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serving.finetune.errors import FinetuneError

ARCHITECTURE = "Qwen3VLForConditionalGeneration"
MODEL_TYPE = "qwen3_vl"
_HF_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
_LAYER = re.compile(r"\.language_model\.layers\.(\d+)\..*?\.(\w+)\.lora_([AB])\.weight$")


@dataclass(frozen=True)
class BaseModel:
    name: str  # as given: a folder or a model id
    folder: Path | None  # None: resolved through the Hugging Face cache at load time
    config: dict[str, Any]

    @property
    def text(self) -> dict[str, Any]:
        text = self.config.get("text_config")
        return text if isinstance(text, dict) else {}

    @property
    def fingerprint(self) -> str:
        """Hash of the config's shape-defining parts: equal for every copy of the same model."""
        keep = {k: self.config.get(k) for k in ("architectures", "text_config", "vision_config", "image_token_id")}
        return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]

    def projection_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each language-model projection LoRA may target."""
        t = self.text
        hidden, inter = int(t.get("hidden_size", 0)), int(t.get("intermediate_size", 0))
        heads, kv = int(t.get("num_attention_heads", 0)), int(t.get("num_key_value_heads", 0))
        head_dim = int(t.get("head_dim") or (hidden // heads if heads else 0))
        return {
            "q_proj": (hidden, heads * head_dim),
            "k_proj": (hidden, kv * head_dim),
            "v_proj": (hidden, kv * head_dim),
            "o_proj": (heads * head_dim, hidden),
            "gate_proj": (hidden, inter),
            "up_proj": (hidden, inter),
            "down_proj": (inter, hidden),
        }


def _read_json(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data


def _hub_config(model_id: str) -> Path:
    # honours HF_HUB_OFFLINE and HF_HOME: a cached model needs no network
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(model_id, "config.json"))


def inspect_base(base: str) -> BaseModel:
    """The base model's config, checked to be Qwen3-VL; FinetuneError saying what it is otherwise."""
    local = Path(base).expanduser()
    folder: Path | None = local if local.exists() else None
    if folder is not None:
        if not folder.is_dir():
            raise FinetuneError.of([f"base {base}: is a file; give the model's folder"], param="base")
        config_path = folder / "config.json"
        if not config_path.is_file():
            raise FinetuneError.of([f"base {base}: no config.json in the folder; is it a model?"], param="base")
    elif _HF_ID.match(base):
        try:
            config_path = _hub_config(base)
        except Exception as exc:  # the hub client raises many kinds; all mean "not available here"
            raise FinetuneError.of(
                [f"base {base}: no such folder, and the model id could not be resolved ({type(exc).__name__})"],
                param="base",
            ) from None
    else:
        raise FinetuneError.of([f"base {base}: no such folder (nor a model id like Org/Name)"], param="base")
    try:
        config = _read_json(config_path)
    except (OSError, ValueError) as exc:
        raise FinetuneError.of([f"base {base}: config.json is not readable JSON ({exc})"], param="base") from None
    archs = config.get("architectures") or []
    if ARCHITECTURE not in archs and config.get("model_type") != MODEL_TYPE:
        what = ", ".join(map(str, archs)) or str(config.get("model_type") or "unknown")
        raise FinetuneError.of(
            [f"base {base}: is {what}, not Qwen3-VL ({ARCHITECTURE}); fine-tuning supports Qwen3-VL dense models"],
            param="base",
        )
    model = BaseModel(base, folder, config)
    if not all(model.projection_shapes()["q_proj"]):
        raise FinetuneError.of([f"base {base}: config.json lacks the text model's sizes"], param="base")
    return model


def safetensors_shapes(path: Path) -> dict[str, list[int]]:
    """Tensor name -> shape, from the file's header alone."""
    with path.open("rb") as f:
        size_bytes = f.read(8)
        if len(size_bytes) != 8:
            raise ValueError("too short to be a safetensors file")
        (size,) = struct.unpack("<Q", size_bytes)
        if size > 100 * 2**20:
            raise ValueError("header length is implausible")
        header = json.loads(f.read(size))
    return {k: list(v["shape"]) for k, v in header.items() if k != "__metadata__"}


def _same_name(a: str, b: str) -> bool:
    if a == b:
        return True
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    if pa.exists() and pb.exists():
        return pa.resolve() == pb.resolve()
    # a model id and a local copy of it ("Qwen/Qwen3-VL-8B-Instruct" vs ".../Qwen3-VL-8B-Instruct")
    return pa.name.lower() == pb.name.lower()


def adapter_problems(adapter: Path, base: BaseModel) -> list[str]:
    """Why the adapter in ``adapter`` cannot continue training on ``base`` (empty: it can)."""
    cfg_path, weights = adapter / "adapter_config.json", adapter / "adapter_model.safetensors"
    if not cfg_path.is_file() or not weights.is_file():
        return [
            f"resume {adapter}: not a LoRA adapter folder (needs adapter_config.json and adapter_model.safetensors)"
        ]
    try:
        cfg = _read_json(cfg_path)
        shapes = safetensors_shapes(weights)
    except (OSError, ValueError) as exc:
        return [f"resume {adapter}: unreadable adapter ({exc})"]
    if cfg.get("peft_type") != "LORA":
        return [f"resume {adapter}: a {cfg.get('peft_type')} adapter; only LoRA adapters can be resumed"]
    problems: list[str] = []
    # our own record of the base outranks names: a model folder may be moved or renamed
    stamp = adapter / "training.json"
    fingerprint = None
    if stamp.is_file():
        try:
            fingerprint = _read_json(stamp).get("base", {}).get("fingerprint")
        except (OSError, ValueError):
            fingerprint = None
    named = str(cfg.get("base_model_name_or_path") or "")
    if fingerprint is not None and fingerprint != base.fingerprint:
        problems.append(
            f"resume {adapter}: trained on another base model (config fingerprint differs from {base.name})"
        )
    elif fingerprint is None and named and not _same_name(named, base.name):
        problems.append(f"resume {adapter}: its base_model_name_or_path is {named!r}, not {base.name!r}")
    expected = base.projection_shapes()
    layers = int(base.text.get("num_hidden_layers", 0))
    for key, shape in sorted(shapes.items()):
        m = _LAYER.search(key)
        if m is None or m.group(2) not in expected:
            continue
        layer, module, ab = int(m.group(1)), m.group(2), m.group(3)
        if layer >= layers:
            problems.append(f"resume {adapter}: has layer {layer}; the base has {layers} layers")
            break
        fan_in, fan_out = expected[module]
        got = shape[1] if ab == "A" else shape[0]
        want = fan_in if ab == "A" else fan_out
        if got != want:
            side = "inputs" if ab == "A" else "outputs"
            problems.append(
                f"resume {adapter}: {module} has {got} {side} in the adapter, {want} in the base: "
                "the adapter belongs to another architecture or size"
            )
            break
    return problems
