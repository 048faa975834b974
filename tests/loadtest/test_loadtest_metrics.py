"""The metric definitions on crafted timings: TTFT, ITL, TPOT, tokens from usage, broken streams."""

from __future__ import annotations

import orjson
import pytest

from loadtest.metrics import Sample, percentile, read_stream, tpot


def chunk(content: str | None = None, finish: str | None = None, **extra: object) -> bytes:
    delta = {} if content is None else {"content": content}
    body = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + orjson.dumps(body | extra) + b"\n\n"


def usage(tokens: int) -> bytes:
    return b"data: " + orjson.dumps({"choices": [], "usage": {"completion_tokens": tokens}}) + b"\n\n"


DONE = b"data: [DONE]\n\n"


def test_ttft_counts_from_the_first_non_empty_content_chunk() -> None:
    # sent at t=10.000; role chunk at +5 ms and an empty delta at +20 ms do not count
    stream = [
        (10.005, b"data: " + orjson.dumps({"choices": [{"delta": {"role": "assistant", "content": ""}}]}) + b"\n\n"),
        (10.020, chunk("")),
        (10.120, chunk("Ink")),
        (10.150, chunk(" wash")),
        (10.190, chunk(" mountains")),
        (10.200, chunk(finish="stop", huayu={"cached": False}) + usage(3) + DONE),
    ]
    r = read_stream(stream, sent_at=10.0)
    assert r.ttft_ms == pytest.approx(120.0)
    assert r.itl_ms == pytest.approx([30.0, 40.0])
    assert r.output_tokens == 3  # from usage, not from counting chunks
    assert r.cached is False and r.error is None and r.text == "Ink wash mountains"


@pytest.mark.parametrize(
    ("cache", "hit", "joined"),
    [({"kind": "exact", "distance": 0}, True, False), ({"kind": "near", "distance": 4}, True, False),
     ({"kind": "coalesced", "distance": 0}, False, True)],
)  # fmt: skip
def test_a_coalesced_answer_is_not_a_cache_hit(cache: dict[str, object], hit: bool, joined: bool) -> None:
    stream = [(1.1, chunk("Ink")), (1.2, chunk(finish="stop", huayu={"cached": True, "cache": cache}) + DONE)]
    r = read_stream(stream, sent_at=1.0)
    assert r.cached is True and r.cache_kind == cache["kind"]
    sample = Sample(kind="visitor", step=0, start_s=0.0, e2e_ms=200.0, ok=True, cached=True, cache_kind=r.cache_kind)
    assert (sample.cache_hit, sample.coalesced) == (hit, joined)
    assert Sample.from_json(sample.to_json()) == sample


def test_events_split_across_reads_are_timed_by_the_read_that_completes_them() -> None:
    whole = chunk("山水") + chunk(finish="stop") + usage(1) + DONE
    r = read_stream([(1.010, whole[:7]), (1.250, whole[7:30]), (1.300, whole[30:])], sent_at=1.0)
    assert r.ttft_ms == pytest.approx(300.0)  # the first content event ends only in the third read
    assert r.output_tokens == 1 and r.error is None


def test_a_stream_without_its_end_is_an_error() -> None:
    assert read_stream([(0.1, chunk("a"))], 0.0).error == "the stream ended before its last chunk"
    assert read_stream([(0.1, chunk("a", finish="stop"))], 0.0).error == "the stream ended without [DONE]"
    err = b'data: {"error": {"message": "upstream timed out", "code": "upstream_timeout"}}\n\n' + DONE
    assert read_stream([(0.1, chunk("a")), (0.2, err)], 0.0).error == "upstream timed out"
    assert "unparsable" in (read_stream([(0.1, b"data: {nope\n\n")], 0.0).error or "")


def test_tpot_is_decode_time_over_the_tokens_after_the_first() -> None:
    assert tpot(e2e_ms=1100.0, ttft_ms=100.0, output_tokens=201) == pytest.approx(5.0)
    assert tpot(1100.0, None, 201) is None  # not streamed: no TTFT
    assert tpot(1100.0, 100.0, 1) is None  # one token: no gap to divide
    s = Sample(kind="visitor", step=0, start_s=0.0, e2e_ms=500.0, ok=True, stream=True, ttft_ms=100.0, output_tokens=41)
    assert s.tpot_ms == pytest.approx(10.0)
    assert Sample.from_json(s.to_json()) == s


def test_percentiles_interpolate_between_ranks() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) is None
