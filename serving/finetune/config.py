"""Training settings: defaults, a TOML file, command-line overrides; checked all at once.

A config file is flat ``key = value`` pairs with the names of :class:`FinetuneConfig`'s fields
(see ``serving/finetune_configs/``). The order of precedence is default < file < command line.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serving.finetune.errors import FinetuneError

# The language model's projections: the modules vLLM's Qwen3-VL LoRA packs as qkv_proj and gate_up_proj.
# The vision tower has none of these names, so a bare name never reaches it.
LANGUAGE_MODEL_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
SCHEDULERS = ("cosine", "linear", "constant", "constant_with_warmup")
OPTIMIZERS = ("adamw", "adamw_8bit")
DTYPES = ("auto", "bfloat16", "float16", "float32")
QUANTIZATIONS = ("none", "4bit")
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class FinetuneConfig:
    epochs: float = 3.0  # passes over the training split (ignored when max_steps is set)
    max_steps: int = 0  # optimizer steps in all; 0: from epochs
    lr: float = 1e-4
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    rank: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: list(LANGUAGE_MODEL_TARGETS))
    train_vision_merger: bool = False  # LoRA on the vision merger and DeepStack mergers too
    batch_size: int = 1  # records per forward pass
    grad_accum: int = 8  # forward passes per optimizer step
    eval_split: float = 0.1  # share of the records held out for the eval loss
    eval_every: int = 0  # optimizer steps between eval losses; 0: only at the end
    save_every: int = 100  # optimizer steps between checkpoints; 0: none
    keep_checkpoints: int = 2  # newest checkpoints kept
    image_max_edge: int = 1024  # long edge of the training images, px (1024: ~1k visual tokens)
    max_length: int = 2048  # tokens per record (image + prompt + answer); longer records are errors
    dtype: str = "auto"  # auto: bfloat16 on a GPU that has it, float32 on the CPU
    gradient_checkpointing: bool = True
    optimizer: str = "adamw"  # adamw_8bit needs bitsandbytes (and CUDA)
    quantization: str = "none"  # 4bit: QLoRA, base weights in NF4 (needs bitsandbytes and CUDA)
    device: str = "auto"
    seed: int = 0
    log_every: int = 1

    def problems(self) -> list[str]:
        """Every value out of range, one line each."""
        p: list[str] = []

        def need(ok: bool, text: str) -> None:
            if not ok:
                p.append(text)

        need(self.epochs > 0 or self.max_steps > 0, "epochs must be > 0 (or give max_steps)")
        need(self.max_steps >= 0, f"max_steps must be >= 0, got {self.max_steps}")
        need(0 < self.lr < 1, f"lr must be between 0 and 1, got {self.lr}")
        need(self.lr_scheduler in SCHEDULERS, f"lr_scheduler must be one of {', '.join(SCHEDULERS)}")
        need(0 <= self.warmup_ratio < 1, f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        need(self.weight_decay >= 0, "weight_decay must be >= 0")
        need(self.max_grad_norm > 0, "max_grad_norm must be > 0")
        need(self.rank >= 1, f"rank must be a positive integer, got {self.rank}")
        need(self.alpha >= 1, f"alpha must be a positive integer, got {self.alpha}")
        need(0 <= self.dropout < 1, f"dropout must be in [0, 1), got {self.dropout}")
        need(bool(self.target_modules), "target_modules must name at least one module")
        need(self.batch_size >= 1, "batch_size must be >= 1")
        need(self.grad_accum >= 1, "grad_accum must be >= 1")
        need(0 <= self.eval_split <= 0.5, f"eval_split must be in [0, 0.5], got {self.eval_split}")
        need(self.eval_every >= 0 and self.save_every >= 0, "eval_every and save_every must be >= 0")
        need(self.keep_checkpoints >= 1, "keep_checkpoints must be >= 1")
        need(64 <= self.image_max_edge <= 4096, f"image_max_edge must be in 64..4096 px, got {self.image_max_edge}")
        need(self.max_length >= 64, "max_length must be >= 64 tokens")
        need(self.dtype in DTYPES, f"dtype must be one of {', '.join(DTYPES)}")
        need(self.optimizer in OPTIMIZERS, f"optimizer must be one of {', '.join(OPTIMIZERS)}")
        need(self.quantization in QUANTIZATIONS, f"quantization must be one of {', '.join(QUANTIZATIONS)}")
        need(self.device in DEVICES, f"device must be one of {', '.join(DEVICES)}")
        need(self.log_every >= 1, "log_every must be >= 1")
        return p

    def optimizer_steps(self, n_train: int) -> int:
        if self.max_steps:
            return self.max_steps
        per_epoch = math.ceil(n_train / (self.batch_size * self.grad_accum))
        return max(1, math.ceil(self.epochs * per_epoch))

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_FIELDS = {f.name: f for f in dataclasses.fields(FinetuneConfig)}
_DEFAULTS = FinetuneConfig()


def _coerce(name: str, value: Any) -> Any:
    """The value in the field's type; raises ValueError naming the expected type."""
    default = getattr(_DEFAULTS, name)
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        raise ValueError(f"{name} must be true or false, got {value!r}")
    if isinstance(default, list):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, list) and all(isinstance(v, str) and v for v in value):
            return value
        raise ValueError(f"{name} must be a list of module names, got {value!r}")
    if isinstance(default, int) and not isinstance(value, bool) and isinstance(value, int):
        return value
    if isinstance(default, float) and not isinstance(value, bool) and isinstance(value, int | float):
        return float(value)
    if isinstance(default, str) and isinstance(value, str):
        return value
    kind = {int: "an integer", float: "a number", str: "a string"}[type(default)]
    raise ValueError(f"{name} must be {kind}, got {value!r}")


def build_config(file: Path | None, overrides: Mapping[str, Any]) -> FinetuneConfig:
    """Defaults, then ``file`` (TOML), then ``overrides`` (None values skipped); FinetuneError lists every problem."""
    values: dict[str, Any] = {}
    problems: list[str] = []
    if file is not None:
        try:
            raw = tomllib.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FinetuneError.of([f"config {file}: no such file"], param="config") from None
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise FinetuneError.of([f"config {file}: not readable TOML ({exc})"], param="config") from None
        for key, value in raw.items():
            if key not in _FIELDS:
                problems.append(f"config {file}: unknown setting {key!r}; the settings are: {', '.join(_FIELDS)}")
                continue
            values[key] = value
    values.update({k: v for k, v in overrides.items() if v is not None})
    for key, value in list(values.items()):
        try:
            values[key] = _coerce(key, value)
        except ValueError as exc:
            problems.append(str(exc))
            values.pop(key)
    config = FinetuneConfig(**values)
    problems += config.problems()
    if problems:
        raise FinetuneError.of(problems, param="config")
    return config
