"""Bad training input is refused before any training, with one line per problem (no torch needed)."""

from __future__ import annotations

import argparse
import base64
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from serving.finetune.checks import adapter_problems, inspect_base
from serving.finetune.cli import check, parser
from serving.finetune.config import build_config
from serving.finetune.data import read_examples, split
from serving.finetune.errors import FinetuneError
from tests.e2e.conftest import ADAPTERS, MODEL_DIR, build_models
from tests.media import data_url, jpeg


def record(image: str | None = "data", answer: str | None = "飞天起舞。", system: bool = True) -> dict[str, Any]:
    user: list[dict[str, Any]] = [{"type": "text", "text": "请介绍这件作品。"}]
    if image is not None:
        url = data_url(jpeg(64, 64, seed=1)) if image == "data" else image
        user.insert(0, {"type": "image_url", "image_url": {"url": url}})
    turns: list[dict[str, Any]] = [{"role": "system", "content": "讲解员"}] if system else []
    turns += [{"role": "user", "content": user}]
    if answer is not None:
        turns.append({"role": "assistant", "content": answer})
    return {"messages": turns, "huayu": {"style": "museum"}}


def write(path: Path, *lines: Any) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x, ensure_ascii=False)) + "\n" for x in lines))
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(FinetuneError) as info:
        read_examples(path)
    assert info.value.status == 422 and info.value.code == "invalid_finetune_input"
    return info.value.problems


def test_a_good_export_reads(tmp_path: Path) -> None:
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.jpg").write_bytes(jpeg(64, 48, seed=2))
    path = write(tmp_path / "d.jsonl", record(), "", record(image="imgs/a.jpg", system=False))
    first, second = read_examples(path)
    assert (first.line, second.line) == (1, 3)
    assert first.chat()[0] == {"role": "system", "content": "讲解员"} and second.chat()[0]["role"] == "user"
    assert first.chat()[-1]["content"][0] == {"type": "image"} and first.answer == "飞天起舞。"
    assert second.image == tmp_path / "imgs" / "a.jpg" and first.meta == {"style": "museum"}


def test_an_empty_file(tmp_path: Path) -> None:
    assert problems(write(tmp_path / "d.jsonl", "", "  ")) == [
        f"data {tmp_path / 'd.jsonl'}: no records (the file is empty); export some with GET /v1/export?format=finetune"
    ]


def test_every_bad_line_is_listed_with_its_number(tmp_path: Path) -> None:
    garbage = "data:image/jpeg;base64," + base64.b64encode(b"not an image at all").decode()
    path = write(
        tmp_path / "d.jsonl",
        record(),
        '{"messages": [',
        record(image=None),
        record(answer="  "),
        record(image=garbage),
        record(image="gone/away.jpg"),
        record(image="https://example.org/a.jpg"),
        [1, 2],
        record(answer=None),
    )
    found = problems(path)
    assert found[0].startswith("line 2: not valid JSON")
    assert found[1] == "line 3: the user turn has no image (an image_url part with a data URL or a file path)"
    assert found[2] == "line 4: the assistant turn (the text to learn) is missing or empty"
    assert found[3].startswith("line 5: the image does not decode as an image")
    assert found[4] == f"line 6: image file 'gone/away.jpg' does not exist (looked for {tmp_path / 'gone/away.jpg'})"
    assert found[5].startswith("line 7: image 'https://example.org/a.jpg' is a web URL")
    assert found[6] == 'line 8: a record must be a JSON object with a "messages" list'
    assert found[7] == "line 9: expected the turns [system,] user, assistant; got ['system', 'user']"
    assert len(found) == 8


def test_missing_data_file(tmp_path: Path) -> None:
    assert problems(tmp_path / "nope.jsonl") == [f"data {tmp_path / 'nope.jsonl'}: no such file"]


def test_split_is_seeded_and_keeps_one_of_each(tmp_path: Path) -> None:
    examples = read_examples(write(tmp_path / "d.jsonl", *[record(answer=f"text {i}") for i in range(5)]))
    train, held = split(examples, 0.1, seed=3)
    assert (len(train), len(held)) == (4, 1)
    assert split(examples, 0.1, seed=3) == (train, held)
    assert split(examples[:1], 0.1, seed=3) == (examples[:1], [])
    assert split(examples, 0.0, seed=3)[1] == []


def test_config_file_and_overrides(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text('rank = 8\nlr = 2e-4\ntarget_modules = ["q_proj", "v_proj"]\n')
    cfg = build_config(toml, {"rank": 4, "lr": None, "target_modules": "q_proj,o_proj"})
    assert (cfg.rank, cfg.lr, cfg.target_modules, cfg.alpha) == (4, 2e-4, ["q_proj", "o_proj"], 32)
    toml.write_text('rank = "big"\nwarmup = 3\neval_split = 0.9\n')
    with pytest.raises(FinetuneError) as info:
        build_config(toml, {"lr": 5.0})
    found = info.value.problems
    assert found[0].startswith(f"config {toml}: unknown setting 'warmup'; the settings are: epochs, max_steps")
    assert "rank must be an integer, got 'big'" in found
    assert "lr must be between 0 and 1, got 5.0" in found and "eval_split must be in [0, 0.5], got 0.9" in found


@pytest.fixture(scope="module")
def tiny() -> Path:
    build_models()  # the real tiny Qwen3-VL and its random adapters (skipped when built)
    return MODEL_DIR


def test_base_model_checks(tmp_path: Path, tiny: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert inspect_base(str(tiny)).projection_shapes()["q_proj"] == (128, 128)
    other = tmp_path / "llama"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cases = {
        str(tmp_path / "missing"): f"base {tmp_path / 'missing'}: no such folder (nor a model id like Org/Name)",
        str(tmp_path): f"base {tmp_path}: no config.json in the folder; is it a model?",
        str(other): f"base {other}: is LlamaForCausalLM, not Qwen3-VL (Qwen3VLForConditionalGeneration); "
        "fine-tuning supports Qwen3-VL dense models",
    }
    for base, message in cases.items():
        with pytest.raises(FinetuneError) as info:
            inspect_base(base)
        assert info.value.problems == [message]
    with pytest.raises(FinetuneError, match="the model id could not be resolved"):
        inspect_base("NoSuchOrg/no-such-model-here")


def test_an_adapter_of_another_base_is_refused(tmp_path: Path, tiny: Path) -> None:
    adapter = ADAPTERS["tiny-lora-a"][0]
    assert adapter_problems(adapter, inspect_base(str(tiny))) == []
    wider = tmp_path / "tiny-qwen3-vl-wide"  # same architecture, other sizes
    wider.mkdir()
    config = json.loads((tiny / "config.json").read_text())
    config["text_config"]["hidden_size"] = 256
    (wider / "config.json").write_text(json.dumps(config))
    found = adapter_problems(adapter, inspect_base(str(wider)))
    recorded = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert recorded.endswith(".data/models/tiny-qwen3-vl")
    assert found[0] == f"resume {adapter}: its base_model_name_or_path is '{recorded}', not '{wider}'"
    assert found[1].startswith(f"resume {adapter}: down_proj has 128 outputs in the adapter, 256 in the base")
    broken = tmp_path / "broken"
    shutil.copytree(adapter, broken)
    (broken / "adapter_model.safetensors").unlink()
    assert adapter_problems(broken, inspect_base(str(tiny)))[0].endswith(
        "not a LoRA adapter folder (needs adapter_config.json and adapter_model.safetensors)"
    )


def test_the_cli_check_reports_every_kind_of_problem_at_once(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "adapter_config.json").write_text("{}")
    args: argparse.Namespace = parser().parse_args(
        [
            *("--data", str(write(tmp_path / "d.jsonl", "{")), "--base", str(tmp_path / "none")),
            *("--out", str(out), "--rank", "0", "--resume", str(tmp_path)),
        ]
    )
    with pytest.raises(FinetuneError) as info:
        check(args)
    assert info.value.problems == [
        "rank must be a positive integer, got 0",
        "line 1: not valid JSON (Expecting property name enclosed in double quotes at column 2)",
        f"base {tmp_path / 'none'}: no such folder (nor a model id like Org/Name)",
        f"out {out}: already holds an adapter; choose an empty folder or pass --overwrite",
    ]
