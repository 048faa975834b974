"""``huayu filter``: text in, verdict out as JSON, so curators can try their lists."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from gateway.safety import filter_main


def _run(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, dict[str, Any], str]:
    rc = filter_main(argv)
    out, err = capsys.readouterr()
    return rc, (json.loads(out) if out else {}), err


def test_text_from_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = _run(capsys, ["这也太", "傻逼了"])
    assert rc == 0
    assert out == {
        "action": "mask",
        "categories": ["profanity"],
        "terms": ["傻逼"],
        "text": "这也太 ＊＊了",
        "reason": "",
    }


def test_text_from_a_file_and_exit_code(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    f = tmp_path / "description.txt"
    f.write_text("这是一段色情内容。", encoding="utf-8")
    rc, out, _ = _run(capsys, ["--file", str(f), "--exit-code"])
    assert rc == 1
    assert (out["action"], out["text"]) == ("regenerate", "")
    assert out["reason"] and out["fallback"]


def test_text_from_stdin(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("Titian's reclining nude, a life drawing.\n"))
    rc, out, _ = _run(capsys, ["--language", "en", "--exit-code"])
    assert (rc, out["action"], out["text"]) == (0, "allow", "Titian's reclining nude, a life drawing.\n")


def test_curator_lists_and_streaming(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "auction.txt").write_text("拍卖\n", encoding="utf-8")
    (tmp_path / "categories.toml").write_text('[categories.auction]\naction = "block"\n', encoding="utf-8")
    text = "这件作品曾在一次拍卖会上易手，随后进入本馆收藏，并在多次展览中与观众见面。"
    rc, out, _ = _run(capsys, ["--wordlists", str(tmp_path), "--no-shipped", "--stream", "2", text])
    assert (rc, out["action"], out["categories"], out["text"]) == (0, "block", ["auction"], "")
    rc, out, _ = _run(capsys, ["--wordlists", str(tmp_path), "--no-shipped", "傻逼"])
    assert out["action"] == "allow"  # only the curator's lists were loaded


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--file", "{missing}/description.txt"], "Cannot read"),
        (["--wordlists", "{missing}/lists", "text"], "does not exist"),
    ],
)
def test_bad_input_is_a_message_not_a_traceback(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: list[str], message: str
) -> None:
    rc, out, err = _run(capsys, [a.format(missing=tmp_path / "missing") for a in argv])
    assert (rc, out) == (2, {})
    assert err.startswith("huayu filter: ") and message in err
