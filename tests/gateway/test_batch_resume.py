"""Kill and resume: a batch run SIGKILLed mid-run and started again requests every unfinished item
exactly once, never a finished one, and its outputs end complete and without duplicates."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from gateway.batch.journal import Journal, finished_keys
from gateway.errors import InvalidRequest
from tests.gateway.test_batch_peer import Peer, make_images, running

ROOT = Path(__file__).resolve().parents[2]


def complete_records(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        return []
    lines = path.read_bytes().split(b"\n")[:-1]  # a line without its newline was cut by the kill
    return [orjson.loads(line) for line in lines if line.strip()]


def test_sigkill_mid_run_then_resume_describes_each_item_exactly_once(tmp_path: Path) -> None:
    images = make_images(30)
    folder = tmp_path / "collection"
    folder.mkdir()
    for name, data in images.items():
        (folder / name).write_bytes(data)
    out = tmp_path / "out"
    results = out / "results.jsonl"
    peer = Peer(images, delay_s=0.05)
    styles = ("curator", "kids_guide")
    with running(peer) as url:
        argv = [sys.executable, "-m", "gateway.batch", str(folder), "-o", str(out), "--gateway", url]
        argv += ["-c", "6", "--no-progress", "-s", ",".join(styles)]
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while len(complete_records(results)) < 12:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else "exited early"
            assert time.monotonic() < deadline, "the batch wrote too few results in 60 s"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()

        finished_at_kill = {(str(r["source"]), str(r["style"]), "zh") for r in complete_records(results)}
        before = peer.requests.copy()
        assert 12 <= len(finished_at_kill) < 60  # killed mid-run, not after it

        resumed = subprocess.run(argv, cwd=ROOT, capture_output=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr.decode()

    everything = {(name, style, "zh") for name in images for style in styles}
    second = {key: peer.requests[key] - before[key] for key in everything}
    assert all(second[key] == 0 for key in finished_at_kill)  # finished items were never asked again
    assert all(second[key] == 1 for key in everything - finished_at_kill)  # the rest exactly once
    records = complete_records(results)
    assert len(records) == len({r["key"] for r in records}) == 60
    assert results.read_bytes().endswith(b"\n")
    csv_lines = (out / "results.csv").read_bytes().decode("utf-8-sig").splitlines()
    assert len(csv_lines) == 61
    annotations = orjson.loads((out / "annotations.json").read_bytes())["items"]
    assert len({a["id"] for a in annotations}) == 60
    assert b"described in" in resumed.stdout and b"60 already done" not in resumed.stdout


async def test_a_line_cut_by_a_kill_is_dropped_and_its_item_runs_again(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    path.write_bytes(b'{"key": "a:curator:zh", "description": "x"}\n{"key": "b:curator:zh", "descr')
    assert finished_keys(path) == {"a:curator:zh"}
    journal = Journal(path)
    journal.start()
    journal.append({"key": "c:curator:zh", "description": "y"})
    await journal.close()
    assert (
        path.read_bytes() == b'{"key": "a:curator:zh", "description": "x"}\n{"key":"c:curator:zh","description":"y"}\n'
    )
    assert finished_keys(path) == {"a:curator:zh", "c:curator:zh"}


def test_sigterm_saves_what_finished_and_exits_130(tmp_path: Path) -> None:
    images = make_images(12)
    folder = tmp_path / "collection"
    folder.mkdir()
    for name, data in images.items():
        (folder / name).write_bytes(data)
    out = tmp_path / "out"
    peer = Peer(images, delay_s=0.2)
    with running(peer) as url:
        argv = [sys.executable, "-m", "gateway.batch", str(folder), "-o", str(out), "--gateway", url, "-c", "2"]
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while len(complete_records(out / "results.jsonl")) < 2:
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err.decode()
    assert b"run the same command again to resume" in err
    finished = complete_records(out / "results.jsonl")
    assert 2 <= len(finished) < 12
    rows = (out / "results.csv").read_bytes().decode("utf-8-sig").splitlines()
    assert len(rows) == len(finished) + 1  # the outputs were rebuilt before the process went


async def test_one_run_per_output_folder(tmp_path: Path) -> None:
    first = Journal(tmp_path / "results.jsonl")
    with pytest.raises(InvalidRequest, match="Another huayu batch is writing"):
        Journal(tmp_path / "results.jsonl")
    await first.close()
    second = Journal(tmp_path / "results.jsonl")  # free again once the first is done
    await second.close()
