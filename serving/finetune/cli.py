"""``python -m serving.finetune``: check everything, print the plan, then train (or not, with --dry-run).

Exit codes: 0 done, 2 bad input (one line per problem on stderr, nothing trained, nothing
written), 1 training failed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from serving.finetune.checks import BaseModel, adapter_problems, inspect_base
from serving.finetune.config import FinetuneConfig, build_config
from serving.finetune.data import Example, read_examples, split, summary
from serving.finetune.errors import FinetuneError

if TYPE_CHECKING:
    from serving.finetune.train import Plan

USAGE_EXAMPLE = (
    "python -m serving.finetune --data finetune.jsonl --base Qwen/Qwen3-VL-8B-Instruct "
    "--out adapters/museum --config serving/finetune_configs/qwen3-vl-8b-24gb.toml"
)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="huayu finetune",
        description="Train a LoRA adapter for Qwen3-VL from the gateway's finetune export.",
        epilog=f"Example: {USAGE_EXAMPLE}",
    )
    p.add_argument("--data", type=Path, required=True, help="JSONL from GET /v1/export?format=finetune")
    p.add_argument("--base", required=True, help="the base model: a local folder or a model id (Org/Name)")
    p.add_argument("--out", type=Path, required=True, help="folder for the adapter (vLLM loads it as it is)")
    p.add_argument("--config", type=Path, help="TOML file of settings (see serving/finetune_configs/)")
    p.add_argument("--epochs", type=float)
    p.add_argument("--max-steps", type=int, help="optimizer steps in all (overrides --epochs)")
    p.add_argument("--lr", type=float)
    p.add_argument("--rank", type=int)
    p.add_argument("--alpha", type=int)
    p.add_argument("--target-modules", help="comma-separated module names (default: q,k,v,o,gate,up,down _proj)")
    p.add_argument("--eval-split", type=float, help="share of records held out for the eval loss (default 0.1)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--grad-accum", type=int)
    p.add_argument("--save-every", type=int, help="optimizer steps between checkpoints (0: none)")
    p.add_argument("--image-max-edge", type=int)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--seed", type=int)
    p.add_argument("--train-vision-merger", action="store_true", default=None, help="LoRA on the vision mergers too")
    p.add_argument("--resume", type=Path, help="an adapter (or checkpoint) of this base to continue training")
    p.add_argument("--overwrite", action="store_true", help="write into --out even if it is not empty")
    p.add_argument("--dry-run", action="store_true", help="check everything and print the plan; train nothing")
    return p


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    keys = (
        "epochs", "max_steps", "lr", "rank", "alpha", "target_modules", "eval_split", "batch_size",
        "grad_accum", "save_every", "image_max_edge", "device", "seed", "train_vision_merger",
    )  # fmt: skip
    return {k: getattr(args, k) for k in keys}


def _out_problems(out: Path, overwrite: bool) -> list[str]:
    if out.exists() and not out.is_dir():
        return [f"out {out}: is a file; give a folder"]
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        what = "an adapter" if (out / "adapter_config.json").exists() else "files"
        return [f"out {out}: already holds {what}; choose an empty folder or pass --overwrite"]
    return []


def check(args: argparse.Namespace) -> tuple[FinetuneConfig, BaseModel, list[Example]]:
    """Every input checked; one FinetuneError listing all the problems found."""
    problems: list[str] = []
    config = base = examples = None
    try:
        config = build_config(args.config, _overrides(args))
    except FinetuneError as exc:
        problems += exc.problems
    try:
        examples = read_examples(args.data)
    except FinetuneError as exc:
        problems += exc.problems
    try:
        base = inspect_base(args.base)
    except FinetuneError as exc:
        problems += exc.problems
    problems += _out_problems(args.out, args.overwrite)
    if args.resume is not None and base is not None:
        problems += adapter_problems(args.resume, base)
    if problems or config is None or base is None or examples is None:
        raise FinetuneError.of(problems)
    return config, base, examples


def token_lengths(config: FinetuneConfig, base: BaseModel, examples: list[Example]) -> list[tuple[int, int]]:
    """Tokens per record with the base's own processor (too-long records are errors)."""
    from transformers import AutoProcessor

    from serving.finetune.encode import Encoder

    processor = AutoProcessor.from_pretrained(str(base.folder) if base.folder else base.name)
    return Encoder(processor, config.image_max_edge, config.max_length).lengths(examples)


def describe_plan(plan: Plan, lengths: list[tuple[int, int]]) -> str:
    cfg, base = plan.config, plan.base
    t = base.text
    data = plan.data["summary"]
    tokens = [n for n, _ in lengths]
    lines = [
        "huayu finetune plan",
        f"  data     {plan.data['path']}: {data['records']} records (train {len(plan.train)}, eval {len(plan.eval)});"
        f" styles {json.dumps(data['styles'], ensure_ascii=False)}",
        f"  tokens   per record min {min(tokens)} / mean {sum(tokens) / len(tokens):.0f} / max {max(tokens)};"
        f" answer tokens {sum(a for _, a in lengths)} in all (only these carry loss)",
        f"  base     {base.name}: Qwen3-VL, {t.get('num_hidden_layers')} layers, hidden {t.get('hidden_size')}",
    ]
    if plan.resume is not None:
        lines.append(f"  adapter  continues {plan.resume} (its rank, alpha and targets)")
    else:
        merger = "yes (serve with --enable-tower-connector-lora)" if cfg.train_vision_merger else "no"
        lines.append(
            f"  adapter  LoRA rank {cfg.rank}, alpha {cfg.alpha}, dropout {cfg.dropout},"
            f" targets {','.join(cfg.target_modules)}; vision merger {merger}"
        )
    lines += [
        f"  steps    {plan.steps} optimizer steps = batch {cfg.batch_size} x accumulation {cfg.grad_accum};"
        f" lr {cfg.lr:g} {cfg.lr_scheduler}, warmup {cfg.warmup_ratio:g}; seed {cfg.seed}",
        f"  memory   dtype {cfg.dtype}, gradient checkpointing {'on' if cfg.gradient_checkpointing else 'off'},"
        f" optimizer {cfg.optimizer}, quantization {cfg.quantization}, images <= {cfg.image_max_edge} px",
        f"  output   {plan.out} (checkpoints every {cfg.save_every or 'no'} steps, keep {cfg.keep_checkpoints};"
        f" eval loss {'every ' + str(cfg.eval_every) + ' steps and ' if cfg.eval_every else ''}at the end)",
    ]
    return "\n".join(lines)


def _report(exc: FinetuneError) -> int:
    print("huayu finetune: the input has problems; nothing was trained:", file=sys.stderr)
    for line in exc.problems:
        print(f"  {line}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        config, base, examples = check(args)  # plain Python: bad input is reported before torch loads
    except FinetuneError as exc:
        return _report(exc)
    from serving.finetune.train import Plan, train

    try:
        lengths = token_lengths(config, base, examples)
    except FinetuneError as exc:
        return _report(exc)
    train_set, eval_set = split(examples, config.eval_split, config.seed)
    digest = hashlib.sha256(args.data.read_bytes()).hexdigest()
    data = {"path": str(args.data), "sha256": digest, "summary": summary(examples)}
    plan = Plan(config, base, train_set, eval_set, args.out, args.resume, data)
    print(describe_plan(plan, lengths), flush=True)
    if args.dry_run:
        print("dry run: everything checked; nothing trained")
        return 0
    try:
        report = train(plan, log=lambda line: print(line, flush=True))
    except FinetuneError as exc:
        print("huayu finetune: " + "\n  ".join(exc.problems), file=sys.stderr)
        return 2
    first, last = report["train_loss"]["first"], report["train_loss"]["last"]
    print(
        f"adapter written to {plan.out}: loss {first:.4f} -> {last:.4f}, eval loss {report['eval_loss']},"
        f" {report['seconds']['total']} s. Load it with: huayu adapters load NAME {plan.out}"
    )
    return 0
