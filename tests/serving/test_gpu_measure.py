"""``bench/gpu_measure.py --tiny``: the GPU measurement script's every section, on the CPU with toy
sizes, so the script a GPU session runs (with no time to debug it there) keeps working."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import ROOT, require_serving_venv

pytestmark = pytest.mark.slow


def test_every_section_runs_on_the_cpu(tmp_path: Path) -> None:
    cmd = [str(require_serving_venv()), "bench/gpu_measure.py", "--tiny", "--out", str(tmp_path)]
    done = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)}
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((tmp_path / "gpu_measure.json").read_text(encoding="utf-8"))
    sections = results["sections"]
    failed = {name: s.get("error") for name, s in sections.items() if not s.get("ok")}
    assert not failed
    assert {"vision", "prefill", "decode"} <= set(sections) and any(n.startswith("finetune") for n in sections)
    tune = next(s for n, s in sections.items() if n.startswith("finetune"))
    assert tune["trainable_params"] > 0 and tune["seconds_per_step"] > 0
    assert (tmp_path / "gpu_measure.md").read_text(encoding="utf-8").startswith("# GPU measurements")
