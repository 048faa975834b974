"""A tiny random-weights Qwen3-VL: the real architecture, built locally in seconds.

Tests and CPU demos serve it with the real vLLM, so every code path (chat template,
image processor, vision tower, mrope, LoRA) is the one the 8B model takes; only the
sizes are toy ones. Its answers are noise, but deterministic noise that depends on the
image, which is what the tests need.

    python -m serving.tiny_model OUT_DIR [--seed 0]

Runs in the serving venv (torch, transformers, tokenizers). ``weights_digest`` is pure
standard library so the gateway's venv can compare builds too.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

from serving.folders import publish
from serving.presets import IMAGE_SIZE

BUILDER_VERSION = 1
STAMP = ".huayu-tiny-model.json"
SERVED_NAME = "qwen-vl-tiny-random"
CORPUS = Path(__file__).with_name("tiny_corpus.txt")

# Qwen's own pre-tokenizer split (the one in Qwen2/Qwen3 tokenizer.json)
SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Qwen3-VL's added tokens in its order; the last six are added but not special (they show in decoded text)
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
PLAIN_ADDED_TOKENS = (
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
    "<tool_response>",
    "</tool_response>",
    "<think>",
    "</think>",
)
BPE_VOCAB_LIMIT = 2048
VOCAB_MULTIPLE = 64

# Qwen3-VL's template, less tools and reasoning: image parts become the vision placeholders
CHAT_TEMPLATE = (
    "{%- set image_count = namespace(value=0) -%}"
    "{%- set video_count = namespace(value=0) -%}"
    "{%- for message in messages -%}"
    # no whitespace control right after a literal newline: "{%-" would eat it
    "<|im_start|>{{ message.role }}\n"
    "{% if message.content is string %}{{ message.content }}"
    "{%- else -%}{%- for content in message.content -%}"
    "{%- if content.type == 'image' or 'image' in content or 'image_url' in content -%}"
    "{%- set image_count.value = image_count.value + 1 -%}"
    "{%- if add_vision_id -%}Picture {{ image_count.value }}: {% endif -%}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{%- elif content.type == 'video' or 'video' in content -%}"
    "{%- set video_count.value = video_count.value + 1 -%}"
    "{%- if add_vision_id -%}Video {{ video_count.value }}: {% endif -%}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{%- elif 'text' in content -%}{{ content.text }}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{%- if add_generation_prompt -%}<|im_start|>assistant\n{% endif %}"
)

TEXT_CONFIG: dict[str, Any] = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    # vLLM's CPU attention kernels take head sizes 32/64/80/96/112/128 only
    "head_dim": 64,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-6,
    "hidden_act": "silu",
    "attention_bias": False,
    # the 8B's [24,20,20] scaled to head_dim 64: the sections sum to head_dim / 2
    "rope_parameters": {
        "rope_type": "default",
        "rope_theta": 5_000_000.0,
        "mrope_section": [12, 10, 10],
        "mrope_interleaved": True,
    },
}
VISION_CONFIG: dict[str, Any] = {
    "depth": 2,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_heads": 2,
    "patch_size": 16,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "out_hidden_size": 128,
    "num_position_embeddings": 2304,
    "deepstack_visual_indexes": [0, 1],
    "hidden_act": "gelu_pytorch_tanh",
}


def _stamp(seed: int) -> dict[str, Any]:
    return {"builder_version": BUILDER_VERSION, "seed": seed, "image_size": IMAGE_SIZE}


def is_built(out_dir: Path, seed: int = 0) -> bool:
    """True when ``out_dir`` holds a complete model from this builder version and seed."""
    stamp = out_dir / STAMP
    try:
        return bool(json.loads(stamp.read_text()) == _stamp(seed) and (out_dir / "model.safetensors").is_file())
    except (OSError, ValueError):
        return False


def weights_digest(model_dir: Path) -> str:
    """SHA-256 over the model's safetensors files, in name order."""
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors files in {model_dir}")
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def _train_tokenizer(work: Path) -> Any:
    """Byte-level BPE on the bundled zh+en text; returns a transformers tokenizer."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, trainers
    from tokenizers.models import BPE
    from transformers import AutoTokenizer

    tok = Tokenizer(BPE(unk_token=None, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB_LIMIT,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = [line for line in CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()]
    tok.train_from_iterator(lines, trainer=trainer)
    # added after training so that, as in Qwen's vocabulary, they follow the BPE ids
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in PLAIN_ADDED_TOKENS])
    tok.save(str(work / "tokenizer.json"))
    (work / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "Qwen2Tokenizer",
                "bos_token": None,
                "eos_token": "<|im_end|>",
                "pad_token": "<|endoftext|>",
                "unk_token": None,
                "model_max_length": TEXT_CONFIG["max_position_embeddings"],
                "clean_up_tokenization_spaces": False,
                "split_special_tokens": False,
                "errors": "replace",
                "add_prefix_space": False,
            }
        )
    )
    return AutoTokenizer.from_pretrained(str(work))


def _build(out_dir: Path, seed: int) -> None:
    import torch
    from transformers import (
        GenerationConfig,
        Qwen2VLImageProcessor,
        Qwen3VLConfig,
        Qwen3VLForConditionalGeneration,
        Qwen3VLProcessor,
        Qwen3VLVideoProcessor,
    )

    tokenizer = _train_tokenizer(out_dir)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in (*SPECIAL_TOKENS, *PLAIN_ADDED_TOKENS)}
    vocab_size = -(-len(tokenizer) // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
    eos = [ids["<|im_end|>"], ids["<|endoftext|>"]]

    config = Qwen3VLConfig(
        text_config={
            **TEXT_CONFIG,
            "vocab_size": vocab_size,
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": eos,
            "pad_token_id": ids["<|endoftext|>"],
            "tie_word_embeddings": False,
        },
        vision_config=VISION_CONFIG,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Qwen3VLForConditionalGeneration(config).to(torch.bfloat16).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=ids["<|endoftext|>"], eos_token_id=eos, pad_token_id=ids["<|endoftext|>"]
    )
    model.save_pretrained(str(out_dir))

    common = {
        "patch_size": 16,
        "temporal_patch_size": 2,
        "merge_size": 2,
        "image_mean": [0.5] * 3,
        "image_std": [0.5] * 3,
    }
    processor = Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=dict(IMAGE_SIZE), **common),
        video_processor=Qwen3VLVideoProcessor(**common),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(str(out_dir))
    # transformers 5 nests both processors in processor_config.json; older readers (and vLLM
    # releases that pin them) look for the classic separate files
    processor.image_processor.save_pretrained(str(out_dir))
    processor.video_processor.save_pretrained(str(out_dir))


def build_tiny_model(out_dir: Path, seed: int = 0) -> Path:
    """Build the model into ``out_dir`` (skipped when the same seed and version are there)."""
    out_dir = Path(out_dir)
    if is_built(out_dir, seed):
        return out_dir
    return publish(out_dir, STAMP, _stamp(seed), lambda work: _build(work, seed))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving.tiny_model", description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path, help="folder to write the model into")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    args = parser.parse_args(argv)
    if args.seed < 0:
        parser.error("--seed must be a non-negative integer")
    started = time.perf_counter()
    skipped = is_built(args.out_dir, args.seed)
    path = build_tiny_model(args.out_dir, args.seed)
    what = "already built" if skipped else f"built in {time.perf_counter() - started:.1f} s"
    print(f"{path}: tiny Qwen3-VL, seed {args.seed}, {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
