"""The word filter on a stream: terms split across chunks, the hold-back window, withholding."""

from __future__ import annotations

import functools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.safety import PROMPT_LEAK_REASON, SafetyFilter, StreamFilter, load_wordlists, normalize


@functools.cache
def _safety() -> SafetyFilter:
    return SafetyFilter(load_wordlists())


@pytest.fixture(scope="module")
def safety() -> SafetyFilter:
    return _safety()


def _run(safety: SafetyFilter, chunks: list[str], language: str = "zh") -> tuple[str, StreamFilter]:
    s = safety.stream(language)
    out = "".join(s.feed(c) for c in chunks) + s.finish()
    return out, s


CASES = [
    "画面左侧的人物骂了一句傻 逼，随后转身离开，留下一片寂静的庭院与远处的山峦。",
    "The soldier in the corner shouts f u c k at the sky, while the painter keeps the light calm and even.",
    "女神斜倚在床上，画面是暖色情调，光线柔和而安静，背景中的侍女正在翻找衣箱。",  # allowed term
    "A quiet harbour: 港口交通 and the shitake seller, his hit song on the radio.",
]


@pytest.mark.parametrize("text", CASES)
def test_every_split_point_gives_the_whole_text_verdict(safety: SafetyFilter, text: str) -> None:
    whole = safety.check(text)
    for i in range(1, len(text)):
        out, s = _run(safety, [text[:i], text[i:]])
        assert out == whole.text, i
        assert s.verdict.public() == whole.public(), i


@pytest.mark.parametrize("text", CASES)
def test_character_by_character(safety: SafetyFilter, text: str) -> None:
    out, s = _run(safety, list(text))
    assert out == safety.check(text).text
    assert s.verdict.text == out


def test_hold_back_never_exceeds_the_window(safety: SafetyFilter) -> None:
    text = (CASES[2] + CASES[3] + "Ｆull-width ﬁgures 😀 and 繁體字。") * 3
    assert safety.check(text).action == "allow"
    s = safety.stream()
    released = ""
    for i, ch in enumerate(text):
        released += s.feed(ch)
        assert released + s.held == text[: i + 1], i  # nothing lost, nothing reordered (clean text)
        if len(normalize(text[: i + 1]).text) > safety.window:
            # held: the window, measured in normalized characters, and no more than the rest of
            # the original character it starts in (a ligature such as "ﬁ" is two)
            assert len(normalize(s.held).text) >= safety.window, i
            assert len(normalize(s.held[1:]).text) < safety.window, i
    released += s.finish()
    assert released == text and s.held == ""


def test_window_is_the_longest_term(safety: SafetyFilter) -> None:
    longest = max(
        len(normalize(t).text)
        for terms in [*safety.lists.terms.values(), safety.lists.allow, [safety.canary]]
        for t in terms
    )
    assert safety.window == longest


@pytest.mark.parametrize("retried", [False, True])
def test_a_withheld_term_stops_the_stream(safety: SafetyFilter, retried: bool) -> None:
    text = "开头是一段正常的描述，介绍画面的构图与色彩。接着出现了色情内容，后面的文字不应再发出，一个字也不行。"
    s = safety.stream("zh", retried=retried)
    out = ""
    for ch in text:
        out += s.feed(ch)
        if s.stopped:
            break
    assert s.stopped
    assert "色情" not in out and "后面" not in out  # neither the term nor what follows it got out
    assert out.startswith("开头是一段正常的描述")  # what came well before it was not held back
    assert s.feed("更多文字") == "" and s.finish() == ""
    v = s.verdict
    assert (v.action, v.categories, v.text) == ("block" if retried else "regenerate", ["sexual"], "")
    assert v.reason


def test_a_withheld_term_at_the_very_end_is_caught_by_finish(safety: SafetyFilter) -> None:
    s = safety.stream("en")
    words = "A long and calm description of the harbour, then kill yourself"
    out = "".join(s.feed(w + " ") for w in words.split())
    assert not s.stopped
    assert s.finish() == ""
    assert s.verdict.action == "block" and "kill" not in out


def test_canary_split_across_chunks_is_caught(safety: SafetyFilter) -> None:
    c = safety.canary
    for i in range(1, len(c)):
        text = f"The answer is {c[:i]}{c[i:]} and more text follows here for a while."
        out, s = _run(safety, [text[: 14 + i], text[14 + i :]], "en")
        assert s.verdict.reason == PROMPT_LEAK_REASON
        assert c[:4] not in out


def test_empty_chunks_and_empty_stream(safety: SafetyFilter) -> None:
    s = safety.stream()
    assert s.feed("") == ""
    assert s.finish() == ""
    assert s.verdict.public() == {"action": "allow", "categories": [], "terms": []}


@settings(max_examples=150, deadline=None)
@given(
    st.text(alphabet=st.sampled_from(list("傻逼色情暖调裸体画fuckshit nude.，-＊ＦＵ😀")), max_size=60),
    st.lists(st.integers(min_value=1, max_value=7), min_size=1, max_size=20),
)
def test_stream_agrees_with_check(text: str, sizes: list[int]) -> None:
    safety = _safety()
    chunks: list[str] = []
    i = 0
    while i < len(text):
        size = sizes[len(chunks) % len(sizes)]
        chunks.append(text[i : i + size])
        i += size
    out, s = _run(safety, chunks)
    whole = safety.check(text)
    assert s.verdict.action == whole.action
    if whole.action in ("allow", "mask"):
        assert out == whole.text
