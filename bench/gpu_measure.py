"""GPU measurements of Qwen3-VL-8B-Instruct's architecture on random weights, in ~3 minutes.

Nothing is downloaded: the model is built from a hand-written config with the exact sizes of
Qwen3-VL-8B-Instruct (random bf16 weights straight on the GPU), and the processor and tokenizer
are the ones ``serving/tiny_model.py`` trains locally (the model keeps the real 151,936-token
vocabulary, so embeddings and logits cost what they cost in the real model). Timings of
random weights equal those of trained ones: the work does not depend on the values.

    PYTHONPATH=. python3 bench/gpu_measure.py --out DIR          # one CUDA GPU, bf16
    PYTHONPATH=. python3 bench/gpu_measure.py --out DIR --tiny   # CPU, toy sizes, float32: tests the code

Sections (each on its own: a failure is recorded in the JSON and the next one runs):
  facts     versions, GPU name and memory
  build     the model, parameter count (8.77 B expected), attention implementation
  vision    vision tower, one image 1024x768 and 1024x1024, and 16 images 1024x768 at once
  prefill   full forward of a gateway request (image 1024x768 + ~120 text tokens), batch 1 and 16
  decode    one decode step with a ~900-token KV cache, batch 1 and 64 (HF eager: an upper bound)
  finetune  LoRA training steps as ``huayu finetune`` does them with qwen3-vl-8b-24gb.toml,
            image_max_edge 1024 and 768: peak memory, seconds per step, tokens/s

Writes DIR/gpu_measure.json (everything) and DIR/gpu_measure.md (a table), rewritten after each
section so that a run cut short still leaves what it measured. About 2 minutes on an H200; no
section starts after --budget-s (270 s), and each has its own time limit. --only reruns a subset.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import io
import json
import platform
import signal
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a file from anywhere: the project's packages still import
    sys.path.insert(0, str(ROOT))

from serving.tiny_model import (  # noqa: E402
    CORPUS,
    SPECIAL_TOKENS,
    TEXT_CONFIG,
    VISION_CONFIG,
    VOCAB_MULTIPLE,
    build_tiny_model,
)

FINETUNE_CONFIG = ROOT / "serving" / "finetune_configs" / "qwen3-vl-8b-24gb.toml"
EXPECTED_PARAMS_8B = 8.77e9
GB, GIB = 1e9, 2**30

# Qwen3-VL-8B-Instruct's config.json, the sizes only; every other key is tiny_model.py's
FULL_TEXT: dict[str, Any] = {
    "hidden_size": 4096,
    "intermediate_size": 12288,
    "num_hidden_layers": 36,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "max_position_embeddings": 262144,
    "rope_parameters": {**TEXT_CONFIG["rope_parameters"], "mrope_section": [24, 20, 20]},
}
FULL_VISION: dict[str, Any] = {
    "depth": 27,
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "num_heads": 16,
    "out_hidden_size": 4096,
    "deepstack_visual_indexes": [8, 16, 24],
}
FULL_VOCAB = 151_936

MEASURES = ("vision", "prefill", "decode", "finetune")
SYSTEM = (
    "You are a museum guide who describes artworks for visitors: what is shown, how it is made, "
    "its period and style, and what to look at closely. Write flowing prose, no lists."
)


@dataclass(frozen=True)
class Sizes:
    """What one run measures; FULL on the GPU, TINY on the CPU to test the code path."""

    name: str
    text: dict[str, Any]
    vision: dict[str, Any]
    vocab: int | None  # None: the tiny tokenizer's size rounded up, as tiny_model.py does
    image: tuple[int, int]  # (width, height) of a gateway image
    square: tuple[int, int]
    vision_batch: int
    prompt_text_tokens: int  # text tokens of a gateway request (system + style text + template)
    prefill_batch: int
    decode_context: int
    decode_batches: tuple[int, ...]
    train_image: tuple[int, int]
    train_edges: tuple[int, ...]  # image_max_edge values to train with
    train_tokens: int  # a whole record at the largest edge: image + system + prompt + answer
    answer_tokens: int
    train_steps: int
    repeats: int
    budget_s: float


FULL = Sizes(
    name="full",
    text=FULL_TEXT,
    vision=FULL_VISION,
    vocab=FULL_VOCAB,
    image=(1024, 768),
    square=(1024, 1024),
    vision_batch=16,
    prompt_text_tokens=120,
    prefill_batch=16,
    decode_context=900,
    decode_batches=(1, 64),
    train_image=(1024, 1024),
    train_edges=(1024, 768),
    train_tokens=1400,
    answer_tokens=300,
    train_steps=6,
    repeats=10,
    budget_s=270,
)
# the tiny model's own sizes; images just above Qwen3-VL's 256x256 minimum (smaller ones are upscaled)
TINY = Sizes(
    name="tiny",
    text={},
    vision={},
    vocab=None,
    image=(320, 256),
    square=(320, 320),
    vision_batch=16,
    prompt_text_tokens=120,
    prefill_batch=16,
    decode_context=96,
    decode_batches=(1, 64),
    train_image=(320, 320),
    train_edges=(320, 256),
    train_tokens=300,
    answer_tokens=60,
    train_steps=4,
    repeats=5,
    budget_s=120,
)


class SectionTimeout(Exception):
    pass


def say(text: str) -> None:
    print(text, flush=True)


def _gb(n: float) -> dict[str, float]:
    return {"gb": round(n / GB, 3), "gib": round(n / GIB, 3)}


class Run:
    """Device, dtype, timing and the results file."""

    def __init__(self, sizes: Sizes, out: Path, budget_s: float) -> None:
        self.sizes = sizes
        self.out = out
        self.cuda = sizes.name == "full"
        self.device = torch.device("cuda" if self.cuda else "cpu")
        self.dtype = torch.bfloat16 if self.cuda else torch.float32
        self.started = time.perf_counter()
        self.budget_s = budget_s
        self.results: dict[str, Any] = {
            "mode": sizes.name,
            "command": " ".join(sys.argv),
            "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "dtype": str(self.dtype).removeprefix("torch."),
            "sections": {},
            "notes": [
                "Random weights with the exact shapes of Qwen3-VL-8B-Instruct: the timings and memory are "
                "those of the real model (the arithmetic does not depend on the values).",
                "Timings are medians of several runs after warm-up, with torch.cuda.Event on the GPU.",
                "HF transformers runs eagerly: decode steps carry Python and kernel-launch overhead that "
                "vLLM's CUDA graphs remove, so the decode figures are upper bounds; vLLM's prefill is "
                "close to these (same matmuls, one forward).",
            ],
        }
        out.mkdir(parents=True, exist_ok=True)

    def left_s(self) -> float:
        return self.budget_s - (time.perf_counter() - self.started)

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def free(self) -> None:
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()

    def bench(
        self, fn: Callable[[], Any], *, warmup: int = 2, repeats: int | None = None, cap_s: float = 12.0
    ) -> dict[str, Any]:
        """Median ms of ``fn`` after ``warmup`` calls; stops early (at >= 3 runs) past ``cap_s``."""
        repeats = repeats or self.sizes.repeats
        for _ in range(warmup):
            fn()
        self.sync()
        times: list[float] = []
        t_start = time.perf_counter()
        for _ in range(repeats):
            if self.cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
            if len(times) >= 3 and time.perf_counter() - t_start > cap_s:
                break
        return {
            "median_ms": round(statistics.median(times), 3),
            "min_ms": round(min(times), 3),
            "max_ms": round(max(times), 3),
            "runs": len(times),
        }

    def memory(self) -> dict[str, Any]:
        if not self.cuda:
            return {}
        free, total = torch.cuda.mem_get_info()
        used, reserved = total - free, torch.cuda.memory_reserved()
        return {
            "max_allocated": _gb(torch.cuda.max_memory_allocated()),
            "max_reserved": _gb(torch.cuda.max_memory_reserved()),
            "device_used_now": _gb(used),  # what nvidia-smi shows: + CUDA context, cuBLAS, other processes
            "outside_torch_now": _gb(used - reserved),
            # what a card must hold at the peak: the allocator's peak plus what lies outside it
            "card_peak_est": _gb(torch.cuda.max_memory_reserved() + used - reserved),
        }

    def save(self) -> None:
        self.results["elapsed_s"] = round(time.perf_counter() - self.started, 1)
        (self.out / "gpu_measure.json").write_text(json.dumps(self.results, indent=1, ensure_ascii=False) + "\n")
        (self.out / "gpu_measure.md").write_text(markdown(self.results))

    def section(self, name: str, fn: Callable[[], dict[str, Any]], max_s: float) -> dict[str, Any] | None:
        """Run one section under a time limit; its figures or its error go into the results."""
        limit = min(max_s, self.left_s())
        say(f"\n== {name} (limit {limit:.0f} s)")
        if limit < 5:
            self.results["sections"][name] = {"ok": False, "error": "skipped: the time budget is spent"}
            say("   skipped: the time budget is spent")
            self.save()
            return None
        t0 = time.perf_counter()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        try:
            with alarm(limit):
                data = fn()
            entry: dict[str, Any] = {"ok": True, **data}
        except BaseException as exc:  # every failure is a result here, except ^C
            if isinstance(exc, KeyboardInterrupt):
                raise
            entry = {
                "ok": False,
                "error": f"{type(exc).__name__}: {exc}"[:2000],
                "trace": traceback.format_exc()[-4000:],
            }
            say(f"   FAILED: {entry['error'][:400]}")
            data = None
        entry["seconds"] = round(time.perf_counter() - t0, 1)
        self.results["sections"][name] = entry
        self.free()
        self.save()
        return data


@contextlib.contextmanager
def alarm(seconds: float) -> Iterator[None]:
    """SectionTimeout after ``seconds`` (Unix main thread; elsewhere no limit)."""
    if not hasattr(signal, "SIGALRM"):
        yield
        return

    def ring(signum: int, frame: Any) -> None:
        raise SectionTimeout(f"the section ran past its {seconds:.0f} s limit")

    old = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 1.0))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# ---------------------------------------------------------------- model and inputs


def _from_config(cls: Any, config: Any, dtype: torch.dtype) -> Any:
    """``cls._from_config`` with the dtype keyword of transformers 5 (``dtype``) or 4 (``torch_dtype``)."""
    try:
        return cls._from_config(config, dtype=dtype, attn_implementation="sdpa")
    except TypeError as exc:
        if "dtype" not in str(exc):
            raise
        return cls._from_config(config, torch_dtype=dtype, attn_implementation="sdpa")


def make_config(sizes: Sizes, tokenizer: Any) -> Any:
    """Qwen3VLConfig as tiny_model._build makes it, with ``sizes``' widths and depths."""
    from transformers import Qwen3VLConfig

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    vocab = sizes.vocab or -(-len(tokenizer) // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
    eos = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    return Qwen3VLConfig(
        text_config={
            **TEXT_CONFIG,
            **sizes.text,
            "vocab_size": vocab,
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": eos,
            "pad_token_id": ids["<|endoftext|>"],
            "tie_word_embeddings": False,
        },
        vision_config={**VISION_CONFIG, **sizes.vision},
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )


def param_counts(model: Any) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    visual = sum(p.numel() for n, p in model.named_parameters() if ".visual." in f".{n}")
    head = sum(p.numel() for n, p in model.named_parameters() if n.startswith("lm_head"))
    return {"total": total, "vision": visual, "lm_head": head, "language_model": total - visual - head}


def attn_impls(model: Any) -> dict[str, str | None]:
    cfg = model.config
    return {
        "model": getattr(cfg, "_attn_implementation", None),
        "text": getattr(cfg.text_config, "_attn_implementation", None),
        "vision": getattr(cfg.vision_config, "_attn_implementation", None),
    }


def build_model(run: Run, config: Any) -> tuple[Any, dict[str, Any]]:
    """Random weights made on the device itself (no CPU init, no copy); normal(0, 0.02) like the HF init."""
    from transformers import Qwen3VLForConditionalGeneration

    t0 = time.perf_counter()
    torch.manual_seed(0)
    with run.device:
        model = _from_config(Qwen3VLForConditionalGeneration, config, run.dtype)
    meta = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    if meta:  # a transformers that deferred the weights: make them here (norms 1, biases 0, the rest N(0, 0.02))
        model.to_empty(device=run.device)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n.endswith("bias"):
                    p.zero_()
                elif "norm" in n:
                    p.fill_(1.0)
                else:
                    p.normal_(0.0, 0.02)
    elsewhere = {str(p.device) for p in model.parameters()} - {str(torch.empty(0, device=run.device).device)}
    if elsewhere:
        model.to(run.device)
    model.eval()
    run.sync()
    return model, {"build_s": round(time.perf_counter() - t0, 1), "meta_params_fixed": len(meta)}


def noise_image(size: tuple[int, int], seed: int = 0) -> Any:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def text_of_tokens(tokenizer: Any, n: int, offset: int = 0) -> str:
    """Corpus text (zh + en, the tiny tokenizer's own) of about ``n`` tokens."""
    lines = [line for line in CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()]
    ids: list[int] = []
    i = offset
    while len(ids) < n:
        ids += tokenizer(lines[i % len(lines)] + "\n", add_special_tokens=False)["input_ids"]
        i += 1
    return str(tokenizer.decode(ids[:n]))


def gateway_inputs(run: Run, processor: Any, size: tuple[int, int]) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """A gateway request (system + [image, style text]) through the processor; text ~prompt_text_tokens."""
    image = noise_image(size)

    def encode(words: int) -> Any:
        messages = [
            {"role": "system", "content": SYSTEM},
            {
                "role": "user",
                "content": [{"type": "image"}, {"type": "text", "text": text_of_tokens(processor.tokenizer, words)}],
            },
        ]
        prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return processor(text=[prompt], images=[image], return_tensors="pt")

    enc = encode(8)
    visual = int(enc["image_grid_thw"].prod()) // 4
    fixed = int(enc["input_ids"].shape[1]) - visual - 8
    enc = encode(max(1, run.sizes.prompt_text_tokens - fixed))
    total = int(enc["input_ids"].shape[1])
    inputs = {k: v.to(run.device) for k, v in enc.items() if isinstance(v, torch.Tensor)}
    inputs["pixel_values"] = inputs["pixel_values"].to(run.dtype)
    return inputs, {"tokens": total, "visual_tokens": visual, "text_tokens": total - visual}


def repeat_batch(inputs: dict[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
    """``n`` copies of one request as one batch (same length: no padding); images concatenated."""
    return {k: torch.cat([v] * n) if k == "pixel_values" else v.repeat(n, 1) for k, v in inputs.items()}


def reset_rope(model: Any) -> None:
    """Forget the mrope deltas of the previous request (the HF model keeps them between calls)."""
    inner = getattr(model, "model", None)
    if inner is not None and hasattr(inner, "rope_deltas"):
        inner.rope_deltas = None


def forward_kwargs(model: Any) -> dict[str, Any]:
    """logits_to_keep=1 where the model takes it: like vLLM, only the last position's logits."""
    import inspect

    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}


# ---------------------------------------------------------------- sections


def facts(run: Run) -> dict[str, Any]:
    import transformers

    out: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda_runtime": torch.version.cuda,
    }
    try:
        import peft

        out["peft"] = peft.__version__
    except ImportError as exc:
        out["peft"] = f"not importable: {exc}"
    if run.cuda:
        props = torch.cuda.get_device_properties(0)
        out.update(
            gpu=torch.cuda.get_device_name(0),
            gpus_visible=torch.cuda.device_count(),
            capability=f"{props.major}.{props.minor}",
            total_memory=_gb(props.total_memory),
            bf16=torch.cuda.is_bf16_supported(),
            cudnn=torch.backends.cudnn.version(),
        )
    else:
        out.update(cpu=platform.processor() or platform.machine(), threads=torch.get_num_threads())
    for k, v in out.items():
        say(f"   {k}: {v}")
    return out


def vision_section(run: Run, model: Any, processor: Any) -> dict[str, Any]:
    visual = model.model.visual
    out: dict[str, Any] = {}
    sizes = run.sizes
    with torch.no_grad():
        for label, size, n in (
            ("one_image", sizes.image, 1),
            ("one_square_image", sizes.square, 1),
            (f"batch_{sizes.vision_batch}", sizes.image, sizes.vision_batch),
        ):
            enc = processor.image_processor(images=[noise_image(size)], return_tensors="pt")
            pixels = enc["pixel_values"].to(run.device, run.dtype)
            grid = enc["image_grid_thw"].to(run.device)
            if n > 1:
                pixels, grid = torch.cat([pixels] * n), grid.repeat(n, 1)
            tokens = int(grid.prod(-1).sum()) // 4
            r = run.bench(functools.partial(visual, pixels, grid_thw=grid))
            r.update(
                images=n,
                image_px=f"{size[0]}x{size[1]}",
                grid_thw=enc["image_grid_thw"][0].tolist(),
                visual_tokens=tokens,
                ms_per_image=round(r["median_ms"] / n, 3),
                images_per_s=round(n * 1e3 / r["median_ms"], 1),
            )
            out[label] = r
            say(
                f"   vision {label}: {n} x {size[0]}x{size[1]} ({tokens} visual tokens): "
                f"{r['median_ms']:.1f} ms ({r['ms_per_image']:.1f} ms/image, {r['images_per_s']} images/s)"
            )
            del pixels, grid
    return out


def prefill_section(run: Run, model: Any, processor: Any, vision: dict[str, Any] | None) -> dict[str, Any]:
    inputs, shape = gateway_inputs(run, processor, run.sizes.image)
    extra = forward_kwargs(model)
    out: dict[str, Any] = {"request": shape, "logits_to_keep": extra.get("logits_to_keep")}
    say(f"   request: {shape}")
    vision_ms = (vision or {}).get("one_image", {}).get("median_ms")
    with torch.no_grad():
        for n in (1, run.sizes.prefill_batch):
            batch = inputs if n == 1 else repeat_batch(inputs, n)

            def forward(batch: dict[str, torch.Tensor] = batch) -> Any:
                reset_rope(model)
                return model(**batch, use_cache=True, **extra)

            r = run.bench(forward, repeats=run.sizes.repeats if n == 1 else 5)
            r.update(
                requests=n,
                prompt_tokens=shape["tokens"] * n,
                requests_per_s=round(n * 1e3 / r["median_ms"], 2),
                prompt_tokens_per_s=round(shape["tokens"] * n * 1e3 / r["median_ms"]),
            )
            out[f"batch_{n}"] = r
            say(
                f"   prefill batch {n}: {r['median_ms']:.1f} ms ({r['requests_per_s']} requests/s, "
                f"{r['prompt_tokens_per_s']} prompt tokens/s); vision tower included"
            )
            del batch
            run.free()
        try:
            lm = language_model_only(run, model, inputs, extra)
            say(f"   prefill, language model only (vision output precomputed): {lm['median_ms']:.1f} ms")
        except Exception as exc:  # an optional figure, from a shortcut into the model's internals
            lm = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        out["language_model_only_batch_1"] = lm
    one = out["batch_1"]["median_ms"]
    out["ttft_floor_ms"] = one
    out["ttft_note"] = (
        "time to first token floor = one full forward (the model's forward runs the vision tower "
        "then the language model); language_model_est_ms = that minus the vision tower alone"
    )
    if vision_ms is not None:
        out["vision_ms"] = vision_ms
        out["language_model_est_ms"] = round(one - vision_ms, 3)
    say(f"   TTFT floor, one request: {one:.1f} ms (vision alone {vision_ms} ms)")
    return out


def language_model_only(run: Run, model: Any, inputs: dict[str, torch.Tensor], extra: dict[str, Any]) -> Any:
    """The same forward with the vision tower's output computed once beforehand: the language model's prefill.

    The model's forward gets its image features from ``model.model.get_image_features``; for the
    timing that method is shadowed on the instance by one that returns the precomputed output
    (transformers 5.17 and 5.19 both call it and read pooler_output and deepstack_features).
    """
    inner = model.model
    with torch.no_grad():
        feats = inner.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"], return_dict=True)
    inner.get_image_features = lambda *args, **kwargs: feats
    try:

        def forward() -> Any:
            reset_rope(model)
            return model(**inputs, use_cache=True, **extra)

        return run.bench(forward)
    finally:
        del inner.get_image_features  # the class's method again


def decode_section(run: Run, model: Any) -> dict[str, Any]:
    """A cache of decode_context tokens from a prefill, then single-token steps (cropped back after each)."""
    context = run.sizes.decode_context
    extra = forward_kwargs(model)
    out: dict[str, Any] = {
        "context_tokens": context,
        "note": "HF eager decode: Python overhead per step that vLLM's CUDA graphs remove; an upper bound. "
        "The cache comes from a text-only prefill of the same length (same cost per step as an image prompt's).",
    }
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for b in run.sizes.decode_batches:
            reset_rope(model)
            ids = torch.randint(0, 1000, (b, context), generator=gen).to(run.device)  # plain BPE tokens only
            pre = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True, **extra)
            cache = pre.past_key_values
            nxt = pre.logits[:, -1:].argmax(-1)
            del pre, ids
            r = run.bench(functools.partial(decode_step, model, cache, nxt), warmup=3, repeats=20)
            r.update(batch=b, tokens_per_s=round(b * 1e3 / r["median_ms"], 1), cache_after=cache.get_seq_length())
            out[f"batch_{b}"] = r
            say(f"   decode batch {b}, {context}-token cache: {r['median_ms']:.2f} ms/step ({r['tokens_per_s']} tok/s)")
            del cache, nxt
            run.free()
    return out


def decode_step(model: Any, cache: Any, nxt: torch.Tensor) -> Any:
    """One token per sequence on top of ``cache``, then the cache cut back (crop(-1): the last token)."""
    n = cache.get_seq_length()
    mask = torch.ones(nxt.shape[0], n + 1, dtype=torch.long, device=nxt.device)
    out = model(input_ids=nxt, attention_mask=mask, past_key_values=cache, use_cache=True)
    cache.crop(-1)
    return out


class Trainer:
    """``huayu finetune``'s steps on an in-memory model.

    train.load() reads a model folder, so its steps after from_pretrained are reproduced here
    line for line (use_cache off, gradient checkpointing with use_reentrant False,
    enable_input_require_grads, peft LoraConfig from the config's rank/alpha/dropout/targets).
    The records go through the project's own Encoder, collate and _to, and each step is
    train.train()'s loop body: forward, loss / grad_accum, backward, clip_grad_norm_, AdamW step,
    scheduler step, zero_grad(set_to_none=True).
    """

    def __init__(self, run: Run, model: Any, processor: Any) -> None:
        from peft import LoraConfig, get_peft_model

        from serving.finetune.config import build_config

        self.run, self.processor = run, processor
        self._example: Any = None
        overrides: dict[str, Any] = {"grad_accum": 1}
        if not run.cuda:
            overrides.update(device="cpu", dtype="float32")
        self.cfg = build_config(FINETUNE_CONFIG, overrides)
        cfg = self.cfg
        model.config.use_cache = False
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
        lora = LoraConfig(
            r=cfg.rank,
            lora_alpha=cfg.alpha,
            lora_dropout=cfg.dropout,
            target_modules=list(cfg.target_modules),
            bias="none",
        )
        self.model = get_peft_model(model, lora)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.trainable = sum(p.numel() for p in self.params)
        self.lora_dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in self.params})

    def example(self) -> Any:
        """One record like the ``finetune`` export's: system, [image, prompt], answer; the prompt's
        length is set so that the record has ``train_tokens`` tokens at the largest image edge."""
        from serving.finetune.data import Example
        from serving.finetune.encode import Encoder

        if self._example is not None:
            return self._example
        sizes, tokenizer = self.run.sizes, self.processor.tokenizer
        buf = io.BytesIO()
        noise_image(sizes.train_image, seed=1).save(buf, "JPEG", quality=90)
        answer = text_of_tokens(tokenizer, sizes.answer_tokens, offset=5)

        def record(prompt_tokens: int) -> Any:
            prompt = text_of_tokens(tokenizer, prompt_tokens, offset=3)
            return Example(1, SYSTEM, (("image", ""), ("text", prompt)), buf.getvalue(), answer)

        probe = Encoder(self.processor, max(sizes.train_edges), 1 << 20)
        rest = int(probe(record(8))["input_ids"].numel()) - 8
        self._example = record(max(8, sizes.train_tokens - rest))
        return self._example

    def measure(self, edge: int) -> dict[str, Any]:
        from transformers import get_scheduler

        from serving.finetune.encode import IGNORE, Encoder, collate
        from serving.finetune.train import _to

        run, cfg, model = self.run, self.cfg, self.model
        encoder = Encoder(self.processor, edge, cfg.max_length)
        ex = self.example()
        t0 = time.perf_counter()
        item = encoder(ex)
        encode_ms = (time.perf_counter() - t0) * 1e3
        tokens = int(item["input_ids"].numel())
        answer = int((item["labels"] != IGNORE).sum())
        visual = int(item["image_grid_thw"].prod()) // 4
        say(f"   record: {tokens} tokens ({visual} visual, {answer} answer), grid {item['image_grid_thw'][0].tolist()}")
        for p in self.params:  # a fresh start for each measurement
            p.grad = None
        optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        steps = run.sizes.train_steps
        scheduler = get_scheduler(cfg.lr_scheduler, optimizer, max(1, int(cfg.warmup_ratio * steps)), steps)
        run.free()
        if run.cuda:
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        model.train()
        times, losses, mem_after_first = [], [], None
        for step in range(1, steps + 1):
            run.sync()
            t0 = time.perf_counter()
            loss_sum = 0.0
            for _ in range(cfg.grad_accum):
                batch = _to(collate([encoder(ex)], encoder.pad_id), run.device, run.dtype)
                loss = model(**batch).loss / cfg.grad_accum
                loss.backward()
                loss_sum += float(loss.detach())
            torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            run.sync()
            times.append(time.perf_counter() - t0)
            losses.append(round(loss_sum, 4))
            if step == 1:
                mem_after_first = run.memory()
            say(f"   step {step}/{steps}: loss {loss_sum:.4f}, {times[-1]:.3f} s")
        model.eval()
        per_step = statistics.median(times[1:]) if len(times) > 1 else times[0]
        out: dict[str, Any] = {
            "image_max_edge": edge,
            "record_tokens": tokens,
            "visual_tokens": visual,
            "answer_tokens": answer,
            "grid_thw": item["image_grid_thw"][0].tolist(),
            "encode_ms": round(encode_ms, 1),
            "steps": steps,
            "records_per_step": cfg.batch_size * cfg.grad_accum,
            "seconds_per_step": round(per_step, 4),
            "first_step_s": round(times[0], 3),
            "step_seconds": [round(t, 4) for t in times],
            "tokens_per_s": round(tokens * cfg.batch_size * cfg.grad_accum / per_step, 1),
            "losses": losses,
            "trainable_params": self.trainable,
            "lora_param_dtypes": self.lora_dtypes,
            "lora": {"rank": cfg.rank, "alpha": cfg.alpha, "dropout": cfg.dropout, "targets": list(cfg.target_modules)},
            "gradient_checkpointing": cfg.gradient_checkpointing,
            "optimizer": "torch.optim.AdamW (as optimizer = adamw)",
            "config_grad_accum": build_grad_accum(),
            "seconds_per_optimizer_step_at_config_grad_accum": round(per_step * build_grad_accum(), 3),
        }
        if run.cuda:
            out["memory"] = run.memory()
            out["memory_after_first_step"] = mem_after_first
            out["allocated_before_training"] = _gb(base)
            # qwen3-vl-8b-24gb.toml: "~22 GB in all" on a 24 GB card (24 GiB = 25.8 GB)
            left = 24 * GIB - out["memory"]["card_peak_est"]["gib"] * GIB
            out["left_of_24_gib"] = f"{left / GIB:.2f} GiB ({left / GB:.2f} GB)"
            m = out["memory"]
            say(
                f"   peak allocated {m['max_allocated']['gb']} GB ({m['max_allocated']['gib']} GiB), "
                f"peak reserved {m['max_reserved']['gb']} GB ({m['max_reserved']['gib']} GiB), "
                f"on the card (reserved + context) ~{m['card_peak_est']['gb']} GB ({m['card_peak_est']['gib']} GiB)"
            )
        say(
            f"   {per_step:.3f} s/step (median after the first), {out['tokens_per_s']} tokens/s, "
            f"trainable {self.trainable / 1e6:.1f} M params"
        )
        del optimizer, scheduler, batch, loss
        for p in self.params:
            p.grad = None
        return out


def build_grad_accum() -> int:
    from serving.finetune.config import build_config

    return int(build_config(FINETUNE_CONFIG, {}).grad_accum)


def full_config_check(processor: Any) -> dict[str, Any]:
    """The 8B config built on the meta device (no memory): its parameter count, checked on any machine."""
    from transformers import Qwen3VLForConditionalGeneration

    config = make_config(FULL, processor.tokenizer)
    with torch.device("meta"):
        model = _from_config(Qwen3VLForConditionalGeneration, config, torch.bfloat16)
    counts = param_counts(model)
    ok = abs(counts["total"] - EXPECTED_PARAMS_8B) < 0.01e9
    verdict = "matches" if ok else "DIFFERS from"
    say(f"   8B config on meta: {counts['total'] / 1e9:.3f} B params {counts} ({verdict} 8.77 B)")
    return {"params": counts, "matches_8_77b": ok}


# ---------------------------------------------------------------- report


def markdown(res: dict[str, Any]) -> str:
    s = res["sections"]
    rows: list[tuple[str, str]] = []

    def get(*path: str) -> Any:
        cur: Any = s
        for p in path:
            if not isinstance(cur, dict) or p not in cur:
                return None
            cur = cur[p]
        return cur

    def add(label: str, value: Any, fmt: str = "{}") -> None:
        rows.append((label, "n/a" if value is None else fmt.format(value)))

    f = get("facts") or {}
    if f.get("gpu"):
        add("GPU", f"{f['gpu']}, {f['total_memory']['gib']} GiB")
    else:
        add("device", f"CPU {f.get('cpu')}, {f.get('threads')} threads")
    add("torch / transformers / peft", f"{f.get('torch')} / {f.get('transformers')} / {f.get('peft')}")
    add("parameters", get("build", "params", "total"), "{:,}")
    attn = get("build", "attn_implementation") or {}
    add("attention implementation", f"{attn.get('text')} (vision tower {attn.get('vision')})")
    for key in ("one_image", "one_square_image", "batch_16"):
        v = get("vision", key)
        if v:
            add(
                f"vision tower, {v['images']} x {v['image_px']} ({v['visual_tokens']} tokens)",
                v["median_ms"],
                "{:.1f} ms",
            )
    req = get("prefill", "request") or {}
    image = (get("vision", "one_image") or {}).get("image_px", "?")
    add(
        f"prefill, 1 request (image {image}: {req.get('visual_tokens')} + {req.get('text_tokens')} text tokens) "
        "= TTFT floor",
        get("prefill", "batch_1", "median_ms"),
        "{:.1f} ms",
    )
    add("  of which the language model (est.)", get("prefill", "language_model_est_ms"), "{:.1f} ms")
    add("  language model alone, measured", get("prefill", "language_model_only_batch_1", "median_ms"), "{:.1f} ms")
    b = get("prefill", "batch_16")
    if b:
        add("prefill, 16 requests in one batch", b["median_ms"], "{:.1f} ms")
        add("  throughput", f"{b['requests_per_s']} requests/s, {b['prompt_tokens_per_s']:,} prompt tokens/s")
    for k in ("batch_1", "batch_64"):
        d = get("decode", k)
        if d:
            context = get("decode", "context_tokens")
            add(
                f"decode step, batch {d['batch']}, {context}-token cache (HF eager: an upper bound)",
                f"{d['median_ms']:.2f} ms ({d['tokens_per_s']} tokens/s)",
            )
    tuned = [v for k, v in s.items() if k.startswith("finetune_") and v.get("ok")]
    for t in sorted(tuned, key=lambda v: -int(v["image_max_edge"])):
        m = t.get("memory") or {}
        label = f"LoRA step, image {t['image_max_edge']} px ({t['record_tokens']} tokens)"
        add(label, f"{t['seconds_per_step']:.3f} s/record, {t['tokens_per_s']:,} tokens/s")
        if m:
            add(
                "  peak memory: allocated / reserved / on the card (+ CUDA context)",
                f"{m['max_allocated']['gb']} / {m['max_reserved']['gb']} / {m['card_peak_est']['gb']} GB "
                f"({m['max_allocated']['gib']} / {m['max_reserved']['gib']} / {m['card_peak_est']['gib']} GiB)",
            )
            add("  left on a 24 GiB card at the peak (the config claims ~22 GB in all)", t.get("left_of_24_gib"))
        add("  trainable parameters", t["trainable_params"], "{:,}")
    failed = [f"{k}: {v.get('error')}" for k, v in s.items() if not v.get("ok")]
    lines = [
        f"# GPU measurements ({res['mode']}, {res['dtype']}, random weights of Qwen3-VL-8B-Instruct's shape)",
        "",
        f"Started {res['started_utc']}, {res.get('elapsed_s')} s. Raw figures: gpu_measure.json.",
        "",
        "| measurement | value |",
        "|---|---|",
        *[f"| {a} | {b} |" for a, b in rows],
        "",
        *[f"- {n}" for n in res["notes"]],
    ]
    if failed:
        lines += ["", "Failed or skipped sections:", "", *[f"- {x[:300]}" for x in failed]]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_measure.json and gpu_measure.md")
    parser.add_argument("--tiny", action="store_true", help="toy sizes on the CPU in float32 (tests the code path)")
    parser.add_argument("--budget-s", type=float, default=None, help="stop starting sections after this (default 270)")
    parser.add_argument(
        "--only",
        default=",".join(MEASURES),
        help=f"comma-separated subset of {','.join(MEASURES)} (default all; facts and the model always run)",
    )
    args = parser.parse_args(argv)
    only = {m.strip() for m in args.only.split(",") if m.strip()}
    if only - set(MEASURES):
        parser.error(f"--only: unknown {', '.join(sorted(only - set(MEASURES)))}; choose from {', '.join(MEASURES)}")
    sizes = TINY if args.tiny else FULL
    run = Run(sizes, args.out, args.budget_s or sizes.budget_s)
    if run.cuda and not torch.cuda.is_available():
        say("no CUDA GPU visible to torch; use --tiny on a machine without one")
        run.results["sections"]["facts"] = {"ok": False, "error": "no CUDA GPU visible to torch"}
        run.save()
        return 2
    say(f"gpu_measure: mode {sizes.name}, {run.dtype}, out {args.out}")
    run.section("facts", lambda: facts(run), 30)

    state: dict[str, Any] = {}
    tmp = tempfile.TemporaryDirectory(prefix="gpu-measure-")

    def processor_section() -> dict[str, Any]:
        from transformers import AutoProcessor

        folder = build_tiny_model(Path(tmp.name) / "tiny-qwen3-vl")
        state["processor"] = AutoProcessor.from_pretrained(str(folder))
        return {"source": "serving.tiny_model's folder: its locally trained tokenizer and Qwen3-VL processor"}

    run.section("processor", processor_section, 90)
    processor = state.get("processor")
    if processor is None:
        run.save()
        return 1
    if not run.cuda:
        run.section("full_config_check", lambda: full_config_check(processor), 60)

    def build_section() -> dict[str, Any]:
        config = make_config(sizes, processor.tokenizer)
        model, info = build_model(run, config)
        state["model"] = model
        counts = param_counts(model)
        info.update(
            params=counts,
            params_b=round(counts["total"] / 1e9, 3),
            attn_implementation=attn_impls(model),
            dtype=str(next(model.parameters()).dtype).removeprefix("torch."),
            vocab_size=config.text_config.vocab_size,
            memory=run.memory(),
        )
        if run.cuda:
            info["matches_8_77b"] = abs(counts["total"] - EXPECTED_PARAMS_8B) < 0.01e9
        say(f"   params: {counts['total']:,} ({info['params_b']} B) {counts}")
        say(f"   attention implementation: {info['attn_implementation']}; built in {info['build_s']} s")
        return info

    run.section("build", build_section, 150)
    model = state.get("model")
    if model is not None:
        vision = run.section("vision", lambda: vision_section(run, model, processor), 40) if "vision" in only else None
        if "prefill" in only:
            run.section("prefill", lambda: prefill_section(run, model, processor, vision), 50)
        if "decode" in only:
            run.section("decode", lambda: decode_section(run, model), 45)

        def finetune(edge: int) -> dict[str, Any]:
            if "trainer" not in state:
                state["trainer"] = Trainer(run, model, processor)
            trainer: Trainer = state["trainer"]
            return trainer.measure(edge)

        for edge in sizes.train_edges if "finetune" in only else ():
            run.section(f"finetune_{edge}", functools.partial(finetune, edge), 60)
    run.results["finished"] = True
    run.save()
    tmp.cleanup()
    say(f"\ndone in {time.perf_counter() - run.started:.0f} s: {args.out}/gpu_measure.json and gpu_measure.md")
    say((args.out / "gpu_measure.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
