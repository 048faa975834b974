"""The simulator's settings: one pydantic model, changed at runtime by ``POST /_sim/config``."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Fault = Literal["none", "503", "500", "hang", "reset", "drip"]


class SimConfig(BaseModel):
    """How the simulator behaves. ``POST /_sim/config`` merges JSON into it at runtime."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(default="qwen-vl", description="Base model name served (vLLM's --served-model-name).")
    extra_models: list[str] = Field(default_factory=list, description="More base names served, e.g. a guard model.")
    loras: dict[str, str] = Field(default_factory=dict, description="LoRA adapters served at start: name -> path.")
    max_model_len: int = Field(default=4096, ge=16, description="Context length: prompt plus output tokens.")
    ttft_ms: float = Field(default=0.0, ge=0, description="Time to first token, milliseconds.")
    itl_ms: float = Field(default=0.0, ge=0, description="Time between two tokens, milliseconds.")
    jitter: float = Field(default=0.0, ge=0, le=1, description="Each delay varies by up to this share either way.")
    tokens: int | None = Field(default=64, ge=0, description="Natural answer length in tokens; None: up to max_tokens.")
    max_num_seqs: int = Field(default=0, ge=0, description="Requests generating at once, the rest wait; 0: no limit.")
    kv_cache_tokens: int = Field(default=65_536, ge=1, description="KV-cache capacity behind vllm:kv_cache_usage_perc.")
    fault: Fault = Field(default="none", description="Fault injected into chat completions.")
    fault_rate: float = Field(default=1.0, ge=0, le=1, description="Share of requests that get the fault (every k-th).")
    fault_count: int | None = Field(
        default=None, ge=0, description="Only the next N requests get the fault; None: no cap."
    )
    drip_ms: float = Field(default=1000.0, ge=0, description="Time each token takes under the 'drip' fault.")
    reset_after: int = Field(default=2, ge=0, description="Content chunks sent before 'reset' drops the connection.")
    reply: str | None = Field(default=None, description="Fixed answer text for every model (scripted outputs).")
    replies_by_model: dict[str, str] = Field(default_factory=dict, description="Fixed answer per model; served too.")
    healthy: bool = Field(default=True, description="False: GET /health answers 503.")
    record_limit: int = Field(default=50, ge=1, description="Request bodies kept for GET /_sim/requests.")
