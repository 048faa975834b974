"""The load test's report: JSON with every figure, Markdown for people, a PNG of latency against load."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from loadtest.metrics import Sample
from loadtest.slo import Slo, summarize_step, verdict


def build_report(
    samples: Sequence[Sample], windows: Sequence[dict[str, Any]], slo: Slo, meta: dict[str, Any]
) -> dict[str, Any]:
    """Each step's figures (the warm-up left out), the SLO, and the verdict."""
    steps = []
    for w in windows:
        mine = [s for s in samples if s.step == w["step"]]
        summary = summarize_step(mine, slo, w["offered_rps"], w["end_s"] - w["start_s"])
        steps.append({"step": w["step"], "users": w["users"]} | summary)
    return {
        "meta": meta,
        "slo": {
            "ttft_p95_ms": slo.ttft_p95_ms,
            "cache_hit_p99_ms": slo.cache_hit_p99_ms,
            "error_rate": slo.error_rate,
            "required_rps": slo.required_rps,
        },
        "warmup_requests": sum(1 for s in samples if s.step < 0),
        "steps": steps,
        "verdict": verdict(steps, slo),
    }


def _ms(v: float | None) -> str:
    return "–" if v is None else f"{v:.1f}"


def _mark(ok: bool | None) -> str:
    return "n/a" if ok is None else ("pass" if ok else "FAIL")


def markdown(report: dict[str, Any]) -> str:
    meta, slo, v = report["meta"], report["slo"], report["verdict"]
    lines = [
        f"# huayu load test: {'PASS' if v['pass'] else 'FAIL'}",
        "",
        f"- target: {meta.get('url')} · model {meta.get('model')} · profile {meta.get('profile')} · {meta.get('date')}",
        f"- client machine: {meta.get('machine')}",
        f"- SLO: TTFT p95 < {slo['ttft_p95_ms']:g} ms · cache hit p99 < {slo['cache_hit_p99_ms']:g} ms · "
        f"error rate < {slo['error_rate'] * 100:g}% · required at ≤ {slo['required_rps']:g} req/s",
        f"- verdict: {v['reason']}; highest offered rate holding the SLO: {v['max_rps_holding_slo']:g} req/s",
        "",
        "| offered req/s | users | completed req/s | goodput req/s | errors | TTFT p50 / p95 / p99 ms "
        "| E2E p50 / p95 / p99 ms | cache hit p99 ms (n) | TPOT p50 ms | ITL p95 ms | tokens/s | SLO |",
        "|---:|---:|---:|---:|---:|---|---|---|---:|---:|---:|---|",
    ]
    for s in report["steps"]:
        t, e, h = s["ttft_ms"], s["e2e_ms"], s["cache_hit_e2e_ms"]
        lines.append(
            f"| {s['offered_rps']:g} | {s['users']} | {s['completed_rps']:.2f} | {s['goodput_rps']:.2f} "
            f"| {s['errors']} ({s['error_rate'] * 100:.2f}%) "
            f"| {_ms(t['p50'])} / {_ms(t['p95'])} / {_ms(t['p99'])} "
            f"| {_ms(e['p50'])} / {_ms(e['p95'])} / {_ms(e['p99'])} | {_ms(h['p99'])} ({h['n']}) "
            f"| {_ms(s['tpot_ms']['p50'])} | {_ms(s['itl_ms']['p95'])} | {s['output_tokens_per_s']:.1f} "
            f"| {'pass' if s['pass'] else 'FAIL'} |"
        )
    lines += ["", "Checks per step:", ""]
    for s in report["steps"]:
        checks = ", ".join(f"{k} {_mark(c['pass'])} ({c['value']})" for k, c in s["checks"].items())
        lines.append(f"- {s['offered_rps']:g} req/s: {checks}")
        if s["error_kinds"]:
            lines.append("  - errors: " + "; ".join(f"{k} ×{n}" for k, n in s["error_kinds"].items()))
    lines += [
        "",
        "TTFT: sending to the first non-empty content chunk (streams). E2E: sending to the last byte. "
        "TPOT: (E2E - TTFT) / (output tokens - 1). ITL: gaps between content chunks, pooled. "
        "Output tokens from the server's `usage`. Goodput: requests meeting every target, per second. "
        "Cache hit: answered from huayu's cache (exact or near); a request that joined an identical one in "
        "flight (coalesced) waited for its generation and is judged like a miss.",
        "",
    ]
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    """Latency percentiles against offered load, with the SLO lines; log scales both ways."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")  # no display; must precede pyplot
    import matplotlib.pyplot as plt

    steps = report["steps"]
    x = [s["offered_rps"] for s in steps]
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    series = [
        ("ttft_ms", "p50", "TTFT p50", "-", "tab:blue"),
        ("ttft_ms", "p95", "TTFT p95", "-", "tab:orange"),
        ("ttft_ms", "p99", "TTFT p99", "-", "tab:red"),
        ("e2e_ms", "p50", "E2E p50", "--", "tab:green"),
        ("e2e_ms", "p99", "E2E p99", "--", "tab:olive"),
        ("cache_hit_e2e_ms", "p99", "cache hit p99", ":", "tab:purple"),
    ]
    for key, q, label, style, colour in series:
        pts = [(xi, s[key][q]) for xi, s in zip(x, steps, strict=True) if s[key][q] is not None]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o", label=label, color=colour)
    slo = report["slo"]
    ax.axhline(slo["ttft_p95_ms"], color="tab:orange", lw=0.8, alpha=0.6, label="SLO TTFT p95")
    ax.axhline(slo["cache_hit_p99_ms"], color="tab:purple", lw=0.8, alpha=0.6, label="SLO cache hit p99")
    if len(set(x)) > 1:
        ax.set_xscale("log", base=2)
    ax.set_xticks(x, [f"{v:g}" for v in x])
    ax.set_yscale("log")
    plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ax.set_xlabel("offered load (requests/s)")
    ax.set_ylabel("latency (ms)")
    verdict = report["verdict"]
    ax.set_title(f"huayu load test: {report['meta'].get('profile')} — {'PASS' if verdict['pass'] else 'FAIL'}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(report: dict[str, Any], out: Path) -> dict[str, Path]:
    """Writes report.json, report.md and latency.png under ``out``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "markdown": out / "report.md", "plot": out / "latency.png"}
    paths["json"].write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    paths["markdown"].write_text(markdown(report), encoding="utf-8")
    plot(report, paths["plot"])
    return paths
