"""LoRA fine-tuning of Qwen3-VL on the gateway's ``finetune`` export: ``python -m serving.finetune``.

The trainer needs torch, transformers and peft, so it runs in the serving venv;
``huayu finetune`` (gateway venv) starts it there with :func:`run_in_serving_venv`. Validation
(config, data, base model, resumed adapter) is plain Python plus Pillow, so it is importable and
testable from either venv, and it always runs before the model is loaded.

Modules: ``config`` (hyperparameters and TOML), ``data`` (reading and checking the records),
``checks`` (base model and adapter compatibility), ``encode`` (records to Qwen3-VL tensors),
``train`` (the loop, checkpoints, the output folder), ``cli`` (arguments, plan, exit codes),
``launcher`` (the serving-venv hand-off).
"""

from __future__ import annotations

from serving.finetune.errors import FinetuneError
from serving.finetune.launcher import run_in_serving_venv

__all__ = ["FinetuneError", "run_in_serving_venv"]
