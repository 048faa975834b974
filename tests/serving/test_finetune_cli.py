"""``python -m serving.finetune`` in the serving venv: exit codes, the plan, nothing written on bad input."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from gateway.cli import main as huayu
from tests.e2e.conftest import MODEL_DIR, ROOT, build_models, require_serving_venv
from tests.media import data_url, jpeg

pytestmark = pytest.mark.slow
CONFIG = ROOT / "serving" / "finetune_configs" / "tiny-cpu.toml"


def export(path: Path, n: int) -> Path:
    lines = []
    for i in range(n):
        user = [
            {"type": "image_url", "image_url": {"url": data_url(jpeg(96, 64, seed=i))}},
            {"type": "text", "text": "?"},
        ]
        msgs = [{"role": "user", "content": user}, {"role": "assistant", "content": f"第{i}件作品。"}]
        lines.append(json.dumps({"messages": msgs, "huayu": {"style": "museum", "language": "zh"}}) + "\n")
    path.write_text("".join(lines), encoding="utf-8")
    return path


def finetune(*args: str | Path) -> subprocess.CompletedProcess[str]:
    cmd = [str(require_serving_venv()), "-m", "serving.finetune", *map(str, args)]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_bad_input_exits_2_with_one_line_per_problem(tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text('{"messages": []}\nnot json\n', encoding="utf-8")
    out = tmp_path / "out"
    done = finetune("--data", data, "--base", tmp_path / "no-model", "--out", out, "--lr", "-1")
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        "huayu finetune: the input has problems; nothing was trained:",
        "  lr must be between 0 and 1, got -1.0",
        "  line 1: expected the turns [system,] user, assistant; got []",
        "  line 2: not valid JSON (Expecting value at column 1)",
        f"  base {tmp_path / 'no-model'}: no such folder (nor a model id like Org/Name)",
    ]
    assert done.stdout == "" and not out.exists()


def test_dry_run_checks_everything_and_trains_nothing(tmp_path: Path) -> None:
    build_models()
    out = tmp_path / "out"
    done = finetune("--data", export(tmp_path / "d.jsonl", 5), "--base", MODEL_DIR, "--out", out, "--config", CONFIG,
                    "--dry-run", "--train-vision-merger")  # fmt: skip
    assert done.returncode == 0, done.stderr
    plan = done.stdout
    assert "5 records (train 4, eval 1)" in plan and '{"museum": 5}' in plan
    assert "LoRA rank 8, alpha 16" in plan and "vision merger yes (serve with --enable-tower-connector-lora)" in plan
    assert "24 optimizer steps" in plan and plan.rstrip().endswith("dry run: everything checked; nothing trained")
    assert not out.exists()


def test_a_record_longer_than_max_length_is_refused(tmp_path: Path) -> None:
    build_models()
    data = export(tmp_path / "d.jsonl", 2)
    done = finetune("--data", data, "--base", MODEL_DIR, "--out", tmp_path / "o", "--config", CONFIG,
                    "--image-max-edge", "1024", "--dry-run")  # fmt: skip
    assert done.returncode == 0, done.stderr  # 96 x 64 images stay small: 1024 is a ceiling, not a size
    toml = tmp_path / "short.toml"
    toml.write_text(CONFIG.read_text().replace("max_length = 1024", "max_length = 64"))
    done = finetune("--data", data, "--base", MODEL_DIR, "--out", tmp_path / "o", "--config", toml, "--dry-run")
    assert done.returncode == 2
    assert (
        "  line 1: " in done.stderr and "exceed max_length 64; raise max_length or lower image_max_edge" in done.stderr
    )


def test_huayu_finetune_runs_the_trainer_in_the_serving_venv(capfd: pytest.CaptureFixture[str]) -> None:
    assert huayu(["finetune", "--data", "x.jsonl", "--base", "nowhere-model", "--out", "o"]) == 2
    err = capfd.readouterr().err
    assert "data x.jsonl: no such file" in err and "base nowhere-model: no such folder" in err
