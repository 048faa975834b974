"""Load profiles: the offered rates stepped through, how long each step lasts, and the user mix.

Locust users loop; each paces its requests to one every ``pacing_s`` seconds, so a step offering
R requests a second runs ceil(R * pacing_s) users. Where a request outlasts its pacing the user
falls behind and the completed rate drops below the offered one: the report shows both.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson

from gateway.errors import InvalidRequest


@dataclass(frozen=True)
class Profile:
    name: str
    steps: tuple[float, ...]  # offered requests per second, one step each
    step_s: float  # seconds per step
    warmup_s: float  # a first period at the lowest rate, left out of the figures
    pacing_s: float  # seconds between two requests of one user
    max_requests: int  # hard cap over the whole run
    request_timeout_s: float = 120.0
    weights: dict[str, int] = field(default_factory=lambda: {"visitor": 6, "curator": 2, "bulk": 2})
    repeat_share: float = 0.2  # visitors sending an image already sent (cache hits)
    styles: tuple[str, ...] = ("curator", "academic", "kids_guide")
    image_size: tuple[int, int] = (512, 384)
    max_tokens: int | None = None  # None: each style's own
    language: str = "zh"

    def users(self, rps: float) -> int:
        return max(1, math.ceil(rps * self.pacing_s - 1e-9))

    def expected_requests(self) -> int:
        """Requests the run offers in all (the warm-up included), capped by ``max_requests``."""
        offered = self.warmup_s * self.steps[0] + sum(rate * self.step_s for rate in self.steps)
        return min(self.max_requests, math.ceil(offered * 1.1) + 10)

    def deadline_s(self) -> float:
        """The longest the run may take: every step, the warm-up, and the last requests' timeout."""
        return self.warmup_s + self.step_s * len(self.steps) + self.request_timeout_s + 30


PROFILES = {
    # a few seconds; for the test suite and a first look
    "smoke": Profile(
        "smoke", steps=(2.0, 4.0), step_s=2.0, warmup_s=1.0, pacing_s=1.0, max_requests=200, request_timeout_s=30.0
    ),
    # about half a minute against the simulator, the tiny model or a GPU
    "quick": Profile("quick", steps=(1.0, 2.0, 4.0, 8.0), step_s=6.0, warmup_s=3.0, pacing_s=2.0, max_requests=2_000),
    # the GPU figures: up to 32 requests a second, 30 s a step
    "full": Profile(
        "full", steps=(1.0, 2.0, 4.0, 8.0, 16.0, 32.0), step_s=30.0, warmup_s=10.0, pacing_s=4.0, max_requests=20_000
    ),
}


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise InvalidRequest(f"Unknown load profile {name!r}; accepted: {', '.join(PROFILES)}.") from None


def parse_steps(text: str) -> tuple[float, ...]:
    try:
        steps = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise InvalidRequest(f"--steps wants rates separated by commas, e.g. 1,2,4; got {text!r}.") from None
    if not steps or any(s <= 0 for s in steps):
        raise InvalidRequest(f"--steps wants positive rates, e.g. 1,2,4; got {text!r}.")
    return steps


def parse_size(text: str) -> tuple[int, int]:
    w, _, h = text.lower().partition("x")
    if not (w.isdigit() and h.isdigit()) or not (32 <= int(w) <= 8192 and 32 <= int(h) <= 8192):
        raise InvalidRequest(f"--image-size wants WIDTHxHEIGHT between 32 and 8192, e.g. 512x384; got {text!r}.")
    return int(w), int(h)


def with_overrides(profile: Profile, **changes: object) -> Profile:
    """The profile with the options given on the command line; None leaves a field as it is."""
    given = {k: v for k, v in changes.items() if v is not None}
    for key in ("step_s", "warmup_s", "pacing_s", "request_timeout_s"):
        value = given.get(key)
        if isinstance(value, float | int) and (value < 0 or (key != "warmup_s" and value == 0)):
            raise InvalidRequest(f"--{key.removesuffix('_s').replace('_', '-')} must be positive, got {value}.")
    if "repeat_share" in given and not 0 <= float(given["repeat_share"]) <= 1:  # type: ignore[arg-type]
        raise InvalidRequest(f"--repeat-share must be between 0 and 1, got {given['repeat_share']}.")
    return replace(profile, **given)  # type: ignore[arg-type]


def profile_from_dict(data: dict[str, Any]) -> Profile:
    data = dict(data)
    for key in ("steps", "styles", "image_size"):
        data[key] = tuple(data[key])
    return Profile(**data)


def plan_json(url: str, profile: Profile, samples: Path, steps: Path, model: str, api_key: str) -> bytes:
    return orjson.dumps(
        {
            "url": url,
            "profile": asdict(profile),
            "samples": str(samples),
            "steps": str(steps),
            "model": model,
            "api_key": api_key,
        }
    )
