"""The training loop: peft LoRA on Qwen3-VL, gradient accumulation, eval loss, checkpoints.

A plain loop rather than ``Trainer``: a few dozen lines that show every step, with no
dependency on Trainer's multimodal collation rules, which change between releases. The output
folder is what vLLM loads as it is: ``adapter_config.json`` + ``adapter_model.safetensors``
(peft's layout: ``base_model.model.model.language_model.layers.N...lora_A.weight``), plus
``training.json`` with the figures and ``checkpoints/step-NNNNNN/`` (each an adapter too).
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from serving.finetune.checks import BaseModel
from serving.finetune.config import FinetuneConfig
from serving.finetune.data import Example
from serving.finetune.encode import Encoder, collate
from serving.finetune.errors import FinetuneError

MERGER_PARTS = (".visual.merger.", ".visual.deepstack_merger_list.")


@dataclass
class Plan:
    config: FinetuneConfig
    base: BaseModel
    train: list[Example]
    eval: list[Example]
    out: Path
    resume: Path | None
    data: dict[str, Any]  # path, sha256, summary

    @property
    def steps(self) -> int:
        return self.config.optimizer_steps(len(self.train))


def pick_device(cfg: FinetuneConfig) -> tuple[torch.device, torch.dtype]:
    cuda = torch.cuda.is_available()
    if cfg.device == "cuda" and not cuda:
        raise FinetuneError.of(["device cuda: no CUDA GPU is visible to torch"], param="device")
    device = torch.device("cuda" if cfg.device == "cuda" or (cfg.device == "auto" and cuda) else "cpu")
    if cfg.dtype != "auto":
        return device, getattr(torch, cfg.dtype)
    # bf16 on the CPU is slow in backward passes on most cores; float32 there
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return device, torch.bfloat16
    return device, torch.float32


def _require_bitsandbytes(what: str) -> Any:
    try:
        import bitsandbytes
    except ImportError:
        raise FinetuneError.of([f"{what} needs the bitsandbytes package (pip install bitsandbytes)"]) from None
    return bitsandbytes


def load(plan: Plan, device: torch.device, dtype: torch.dtype) -> tuple[Any, Any]:
    """(peft model ready to train, processor)."""
    from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForImageTextToText, AutoProcessor

    cfg = plan.config
    source = str(plan.base.folder) if plan.base.folder is not None else plan.base.name
    kwargs: dict[str, Any] = {"dtype": dtype}
    if cfg.quantization == "4bit":
        _require_bitsandbytes("quantization 4bit (QLoRA)")
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype, bnb_4bit_use_double_quant=True
        )
        kwargs["device_map"] = {"": device.index or 0}
    processor = AutoProcessor.from_pretrained(source)
    model = AutoModelForImageTextToText.from_pretrained(source, **kwargs)
    if cfg.quantization == "4bit":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    else:
        model.to(device)
    model.config.use_cache = False
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()  # frozen embeddings otherwise cut the graph at the first checkpoint
    if plan.resume is not None:
        model = PeftModel.from_pretrained(model, str(plan.resume), is_trainable=True)
    else:
        targets = list(cfg.target_modules)
        if cfg.train_vision_merger:
            targets += [
                name
                for name, mod in model.named_modules()
                if isinstance(mod, torch.nn.Linear) and any(p in f".{name}." for p in MERGER_PARTS)
            ]
        lora = LoraConfig(
            r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets, bias="none"
        )
        try:
            model = get_peft_model(model, lora)
        except ValueError as exc:  # target modules that the model does not have
            raise FinetuneError.of([f"target_modules: {exc}"], param="target_modules") from None
    return model, processor


def _batches(items: Sequence[Example], size: int, seed: int) -> Iterator[list[Example]]:
    """Endless epochs, each in its own seeded order."""
    rng, epoch = random.Random(seed), 0
    while True:
        order = list(items)
        rng.shuffle(order)
        for i in range(0, len(order), size):
            yield order[i : i + size]
        epoch += 1


def _to(batch: dict[str, torch.Tensor], device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {k: v.to(device, dtype=dtype if k == "pixel_values" else None) for k, v in batch.items()}


def evaluate(model: Any, encoder: Encoder, examples: Sequence[Example], device: torch.device, dtype: Any) -> float:
    """Mean loss per answer token over ``examples``."""
    model.eval()
    total, tokens = 0.0, 0
    with torch.no_grad():
        for ex in examples:
            batch = _to(collate([encoder(ex)], encoder.pad_id), device, dtype)
            n = int((batch["labels"][:, 1:] != -100).sum())  # the model shifts labels by one
            total += float(model(**batch).loss) * n
            tokens += n
    model.train()
    return total / max(tokens, 1)


def _save(model: Any, folder: Path, state: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder), safe_serialization=True)
    (folder / "training.json").write_text(json.dumps(state, ensure_ascii=False, indent=1), encoding="utf-8")


def _prune(checkpoints: Path, keep: int) -> None:
    for old in sorted(checkpoints.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def train(plan: Plan, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train, write the adapter into ``plan.out`` and return the report (also in ``training.json``)."""
    cfg = plan.config
    torch.manual_seed(cfg.seed)
    device, dtype = pick_device(cfg)
    if (cfg.optimizer == "adamw_8bit" or cfg.quantization == "4bit") and device.type != "cuda":
        raise FinetuneError.of(["adamw_8bit and 4bit quantization need a CUDA GPU"], param="optimizer")
    started = time.time()
    model, processor = load(plan, device, dtype)
    encoder = Encoder(processor, cfg.image_max_edge, cfg.max_length)
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adamw_8bit":
        optimizer = _require_bitsandbytes("optimizer adamw_8bit").optim.AdamW8bit(
            params, lr=cfg.lr, weight_decay=cfg.weight_decay
        )
    else:
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    from transformers import get_scheduler

    steps = plan.steps
    scheduler = get_scheduler(cfg.lr_scheduler, optimizer, math.ceil(cfg.warmup_ratio * steps), steps)
    report: dict[str, Any] = {
        "base": {"name": plan.base.name, "architecture": "Qwen3VLForConditionalGeneration"},
        "data": plan.data,
        "samples": {"train": len(plan.train), "eval": len(plan.eval)},
        "config": cfg.as_dict(),
        "resumed_from": str(plan.resume) if plan.resume else None,
        "device": device.type,
        "dtype": str(dtype).removeprefix("torch."),
        "trainable_parameters": sum(p.numel() for p in params),
        "optimizer_steps": steps,
        "losses": [],
        "eval_losses": [],
    }
    report["base"]["fingerprint"] = plan.base.fingerprint
    batches = _batches(plan.train, cfg.batch_size, cfg.seed)
    model.train()
    if plan.eval:
        first = evaluate(model, encoder, plan.eval, device, dtype)
        report["eval_losses"].append({"step": 0, "loss": round(first, 5)})
        log(f"eval loss before training {first:.4f} ({len(plan.eval)} records)")
    load_s = time.time() - started
    for step in range(1, steps + 1):
        t0, loss_sum = time.perf_counter(), 0.0
        for _ in range(cfg.grad_accum):
            batch = _to(collate([encoder(ex) for ex in next(batches)], encoder.pad_id), device, dtype)
            loss = model(**batch).loss / cfg.grad_accum
            loss.backward()
            loss_sum += float(loss.detach())
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if not math.isfinite(loss_sum):
            raise FinetuneError.of([f"step {step}: the loss is {loss_sum}; lower lr or use float32"])
        lr = float(scheduler.get_last_lr()[0])
        report["losses"].append({"step": step, "loss": round(loss_sum, 5), "lr": lr})
        if step % cfg.log_every == 0 or step == steps:
            log(f"step {step}/{steps} loss {loss_sum:.4f} lr {lr:.2e} {time.perf_counter() - t0:.2f} s")
        if plan.eval and cfg.eval_every and step % cfg.eval_every == 0 and step != steps:
            value = evaluate(model, encoder, plan.eval, device, dtype)
            report["eval_losses"].append({"step": step, "loss": round(value, 5)})
            log(f"eval loss {value:.4f} at step {step}")
        if cfg.save_every and step % cfg.save_every == 0 and step != steps:
            _save(model, plan.out / "checkpoints" / f"step-{step:06d}", {**report, "step": step})
            _prune(plan.out / "checkpoints", cfg.keep_checkpoints)
    if plan.eval:
        value = evaluate(model, encoder, plan.eval, device, dtype)
        report["eval_losses"].append({"step": steps, "loss": round(value, 5)})
        log(f"eval loss {value:.4f} after {steps} steps")
    report["eval_loss"] = report["eval_losses"][-1]["loss"] if report["eval_losses"] else None
    report["train_loss"] = {"first": report["losses"][0]["loss"], "last": report["losses"][-1]["loss"]}
    report["seconds"] = {"load": round(load_s, 2), "total": round(time.time() - started, 2)}
    report["step"] = steps
    _save(model, plan.out, report)
    return report
