"""Random LoRA adapters for the tiny model, in the layout vLLM loads.

vLLM's Qwen3-VL accepts LoRA on the language model's q/k/v/o and MLP projections
(packed there as ``qkv_proj`` and ``gate_up_proj``) and on the vision tower and its
mergers; these adapters touch the language model only, the part whose LoRA support
has no known gaps. peft names the weights ``base_model.model.model.language_model...``;
vLLM maps that prefix onto its own module tree on load.

    python -m serving.lora MODEL_DIR OUT_DIR [--seed 1] [--rank 8]

Runs in the serving venv (torch, transformers, peft).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from serving.folders import publish

LANGUAGE_MODEL_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
STAMP = ".huayu-lora.json"
# large enough against the 0.02-std base weights that an adapter visibly changes greedy outputs
B_STD = 0.05


def _stamp(model_dir: Path, seed: int, rank: int) -> dict[str, Any]:
    model_stamp = model_dir / ".huayu-tiny-model.json"
    base = json.loads(model_stamp.read_text()) if model_stamp.is_file() else None
    return {"seed": seed, "rank": rank, "targets": list(LANGUAGE_MODEL_TARGETS), "base": base}


def make_random_adapter(model_dir: Path, out_dir: Path, seed: int, rank: int = 8) -> Path:
    """Write a seeded random LoRA adapter (``adapter_config.json``, ``adapter_model.safetensors``).

    Rebuilt only when the seed, rank or base model changed. Returns ``out_dir``.
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} holds no model (no config.json); build it first")
    if rank < 1:
        raise ValueError(f"rank must be a positive integer, got {rank}")
    want = _stamp(model_dir, seed, rank)
    try:
        if json.loads((out_dir / STAMP).read_text()) == want:
            return out_dir
    except (OSError, ValueError):
        pass

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    base = AutoModelForImageTextToText.from_pretrained(str(model_dir), dtype=torch.float32)
    config = LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        lora_dropout=0.0,
        target_modules=list(LANGUAGE_MODEL_TARGETS),
        bias="none",
        init_lora_weights=True,  # A random, B zero: B is set below from our own generator
    )
    model = get_peft_model(base, config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * (B_STD if "lora_B" in name else 0.1))

    return publish(out_dir, STAMP, want, lambda work: model.save_pretrained(str(work), safe_serialization=True))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving.lora", description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", type=Path, help="the base model (from python -m serving.tiny_model)")
    parser.add_argument("out_dir", type=Path, help="folder to write the adapter into")
    parser.add_argument("--seed", type=int, default=1, help="seed of the random weights (default 1)")
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank (default 8)")
    args = parser.parse_args(argv)
    try:
        path = make_random_adapter(args.model_dir, args.out_dir, args.seed, args.rank)
    except (FileNotFoundError, ValueError) as exc:
        parser.error(str(exc))
    print(f"{path}: random LoRA adapter, seed {args.seed}, rank {args.rank}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
