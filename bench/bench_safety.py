"""Benchmark of the word filter: 10,000 terms against a 1,000-character description.

Targets (issue 5): a whole ``check`` <= 50 us; the stream filter <= 1 ms added per chunk.
Baselines measured in the same run: a loop of ``term in text`` and one regex alternation over
the same normalized text (they only find; they neither normalize nor map positions back).

    python -m bench.bench_safety [--terms 10000] [--repeat 2000]
"""

from __future__ import annotations

import argparse
import random
import re
import time
from collections.abc import Callable
from functools import partial

from gateway.safety import SafetyFilter, load_wordlists, normalize

ZH = (
    "这幅油画描绘了一位斜倚在白色床单上的女子，她的身体在温暖的光线中显得柔和而安静。"
    "画家用细腻的笔触处理肌肤的过渡，背景中的侍女正在翻找衣箱，窗外是渐暗的天空。"
    "整幅作品色调温润，红色的帷幔与金色的光线形成呼应，构图稳定而富有节奏。"
)
EN = (
    "The painting shows a woman reclining on white sheets, her body softened by warm light. "
    "The painter renders the skin with fine, patient brushwork; in the background two maids "
    "search a chest, and beyond the window the sky darkens toward evening. "
)


def _text(seed: str, n: int = 1000) -> str:
    return (seed * (n // len(seed) + 1))[:n]


def _terms(n: int, avoid: list[str], rng: random.Random) -> list[str]:
    """Half Chinese (2-4 common characters), half Latin words (5-9 letters), none in the texts."""
    han = [chr(c) for c in range(0x4E00, 0x9FA5)]
    norms = [normalize(t).text for t in avoid]
    out: set[str] = set()
    while len(out) < n:
        if len(out) % 2:
            t = "".join(rng.choice(han) for _ in range(rng.randint(2, 4)))
        else:
            t = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(5, 9)))
        if all(t not in x for x in norms):
            out.add(t)
    return sorted(out)


def _in_loop(keys: list[str], text: str) -> list[str]:
    return [k for k in keys if k in text]


def _per_call(fn: Callable[[], object], repeat: int) -> float:
    """Seconds of this thread's CPU per call, best of 5 batches.

    CPU time rather than wall time: on a shared machine, wall time mostly measures the
    neighbours; the work here is one thread and never waits.
    """
    fn()
    batches = []
    for _ in range(5):
        t = time.thread_time()
        for _ in range(repeat):
            fn()
        batches.append((time.thread_time() - t) / repeat)
    return min(batches)


def _row(name: str, seconds: float, base: float | None = None) -> None:
    ratio = f"{seconds / base:8.2f}x" if base else " " * 9
    print(f"  {name:<52} {seconds * 1e6:10.1f} us {ratio}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--terms", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=2000)
    ap.add_argument("--chunk", type=int, default=3, help="characters per stream chunk (about one token)")
    args = ap.parse_args(argv)
    rng = random.Random(5)
    zh, en = _text(ZH), _text(EN)
    lists = load_wordlists()
    extra = _terms(args.terms, [zh, en], rng)
    lists.terms["bench"] = extra
    t = time.perf_counter()
    safety = SafetyFilter(lists)
    print(f"filter with {safety.matcher.size} terms built in {time.perf_counter() - t:.2f} s; window {safety.window}")
    print("figures: CPU time of this thread per call, best of 5 batches; ratio against the first baseline")
    keys = [normalize(x).text for x in extra]
    alternation = re.compile("|".join(re.escape(k) for k in sorted(keys, key=len, reverse=True)))
    hit_text = zh[:300] + extra[1] + zh[300:600] + "傻 逼" + zh[600:997]

    print("whole text, 1,000 characters (target <= 50 us):")
    for name, text in (("zh", zh), ("en", en)):
        norm = normalize(text).text
        base = _per_call(partial(_in_loop, keys, norm), max(args.repeat // 100, 5))
        _row(f"baseline {name}: `term in text` loop, normalized text", base)
        _row(f"baseline {name}: one regex alternation", _per_call(partial(alternation.search, norm), 50), base)
        _row(f"normalize() only, {name}", _per_call(partial(normalize, text), args.repeat), base)
        _row(f"check() {name}, clean", _per_call(partial(safety.check, text, name), args.repeat), base)
    _row("check() zh with two hits (masking)", _per_call(lambda: safety.check(hit_text), args.repeat // 4))

    print(f"stream, {args.chunk}-character chunks (target <= 1 ms per chunk):")
    for name, text in (("zh", zh), ("en", en), ("zh with hits", hit_text)):
        chunks = [text[i : i + args.chunk] for i in range(0, len(text), args.chunk)]

        def run(chunks: list[str] = chunks) -> None:
            s = safety.stream()
            for c in chunks:
                s.feed(c)
            s.finish()

        def naive(chunks: list[str] = chunks) -> None:
            # what a stream filter without a window would do: check everything so far, each chunk
            so_far = ""
            for c in chunks:
                so_far += c
                safety.check(so_far)

        base = _per_call(naive, 3) / len(chunks)
        _row(f"baseline {name}: check() of the whole prefix per chunk", base)
        _row(f"feed() {name}, per chunk", _per_call(run, max(args.repeat // 100, 5)) / len(chunks), base)


if __name__ == "__main__":
    main()
