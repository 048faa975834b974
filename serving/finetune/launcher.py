"""``huayu finetune``: the gateway's venv has no torch, so the trainer runs in the serving venv.

Standard library only. The serving interpreter is ``HUAYU_SERVING_PYTHON`` if set, else the
``.venv-serving`` beside the project (``make serving-venv`` installs it), else this
interpreter when it can import torch.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from gateway.errors import ServiceUnavailable

ROOT = Path(__file__).resolve().parents[2]


def serving_python() -> str:
    """The interpreter that has torch, transformers and peft; ServiceUnavailable saying how to get one."""
    given = os.environ.get("HUAYU_SERVING_PYTHON")
    if given:
        if not Path(given).exists():
            raise ServiceUnavailable(f"HUAYU_SERVING_PYTHON={given} does not exist.", code="serving_venv_missing")
        return given
    for candidate in (ROOT / ".venv-serving" / "bin" / "python", Path(".venv-serving/bin/python")):
        if candidate.exists():
            return str(candidate)
    if importlib.util.find_spec("torch") is not None and importlib.util.find_spec("peft") is not None:
        return sys.executable
    raise ServiceUnavailable(
        "Fine-tuning runs in the serving venv (torch, transformers, peft), which is missing: "
        "run `make serving-venv`, or set HUAYU_SERVING_PYTHON to a Python that has them.",
        code="serving_venv_missing",
    )


def run_in_serving_venv(argv: Sequence[str]) -> int:
    """Run ``python -m serving.finetune ARGV`` there; returns its exit code (output goes to this terminal)."""
    try:
        python = serving_python()
    except ServiceUnavailable as exc:
        print(f"huayu finetune: {exc.message}", file=sys.stderr)
        return 2
    env = dict(os.environ)
    # the project's packages importable from any working directory, without installing them there
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    try:
        return subprocess.call([python, "-m", "serving.finetune", *argv], env=env)
    except KeyboardInterrupt:
        return 130
