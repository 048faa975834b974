"""``huayu filter``: run the word filter on a text and print the verdict as JSON.

For curators trying their lists: ``huayu filter --wordlists ./our-lists "文本"``, or pipe a
file in. The exit status is 0 whatever the verdict (``--exit-code`` makes it 1 when the text
would be changed or withheld) and 2 when the input or the lists cannot be used.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gateway.config import get_settings
from gateway.errors import HuayuError
from gateway.safety.filter import SafetyFilter
from gateway.safety.wordlists import load_wordlists


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="huayu filter", description="Check a text against the word lists and print the verdict as JSON."
    )
    p.add_argument("text", nargs="*", help="the text (joined by spaces); read from --file or stdin when absent")
    p.add_argument("--file", type=Path, help="read the text from this UTF-8 file")
    p.add_argument("--language", default="zh", choices=("zh", "en"), help="language of the reason and fallback")
    p.add_argument("--wordlists", type=Path, help="folder of extra word lists (default: HUAYU_WORDLISTS_DIR)")
    p.add_argument("--no-shipped", action="store_true", help="use only the lists of --wordlists, not the shipped ones")
    p.add_argument("--stream", type=int, default=0, metavar="N", help="filter as a stream of N-character chunks")
    p.add_argument("--exit-code", action="store_true", help="exit 1 when the text would be masked or withheld")
    return p


def _read_text(args: argparse.Namespace) -> str:
    if args.text:
        return " ".join(args.text)
    if args.file is not None:
        try:
            return str(args.file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as e:
            raise HuayuError(f"Cannot read {args.file}: {e}. The file must be UTF-8 text.") from e
    return sys.stdin.read()


def filter_main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        text = _read_text(args)
        folder = args.wordlists if args.wordlists is not None else get_settings().wordlists_dir
        safety = SafetyFilter(load_wordlists(folder, shipped=not args.no_shipped))
    except HuayuError as e:
        print(f"huayu filter: {e.message}", file=sys.stderr)
        return 2
    if args.stream > 0:
        stream = safety.stream(args.language)
        for i in range(0, len(text), args.stream):
            stream.feed(text[i : i + args.stream])
        stream.finish()
        verdict = stream.verdict
    else:
        verdict = safety.check(text, args.language)
    out = {**verdict.public(), "text": verdict.text, "reason": verdict.reason}
    if verdict.withheld:
        out["fallback"] = safety.fallback_text(args.language)
    print(json.dumps(out, ensure_ascii=False, indent=2))
    changed = verdict.withheld or verdict.text != text
    return 1 if args.exit_code and changed else 0
