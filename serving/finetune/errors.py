"""The one error fine-tuning raises for bad input: every problem found, one line each."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.errors import Unprocessable

MAX_LISTED = 50  # a broken 10,000-line file should not print 10,000 lines


class FinetuneError(Unprocessable):
    """Bad training input; the message holds one problem per line (``problems``)."""

    code = "invalid_finetune_input"

    @classmethod
    def of(cls, problems: Sequence[str], *, param: str | None = None) -> FinetuneError:
        shown = list(problems[:MAX_LISTED])
        if len(problems) > MAX_LISTED:
            shown.append(f"... and {len(problems) - MAX_LISTED} more problems")
        return cls("\n".join(shown), param=param)

    @property
    def problems(self) -> list[str]:
        return self.message.splitlines()
