"""The load-driving child process: locust's Environment in-process, stepping through the offered rates.

    python -m loadtest.drive PLAN.json

PLAN.json holds the URL, the profile and where to write; the process writes one JSON sample per
line and, at the end, each step's real start and end. It always ends: by the profile's request cap,
or its deadline, whichever comes first.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import gevent
import orjson
from locust import User, constant_pacing
from locust.env import Environment

from loadtest import users
from loadtest.images import ImagePool
from loadtest.profiles import profile_from_dict


def _wait(seconds: float, st: users.RunState, deadline: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < min(end, deadline) and st.sent < st.profile.max_requests:
        gevent.sleep(0.05)


def drive(plan: dict[str, Any]) -> None:
    profile = profile_from_dict(plan["profile"])
    classes: list[type[User]] = []
    for name, cls in users.USERS.items():
        cls.weight = profile.weights.get(name, 0)
        if cls.weight > 0:
            classes.append(cls)
    if not classes:
        raise SystemExit("The profile gives no user a weight above 0.")
    windows: list[dict[str, Any]] = []
    with open(plan["samples"], "wb") as out:
        pool = ImagePool(profile.image_size)
        pool.prepare(profile.expected_requests())
        st = users.RunState(profile, pool, out, model=plan["model"], api_key=plan["api_key"])
        deadline = time.perf_counter() + profile.deadline_s()
        users.STATE = st
        env = Environment(user_classes=classes, host=plan["url"].rstrip("/"))
        runner = env.create_local_runner()
        phases = [(-1, profile.steps[0], profile.warmup_s)] if profile.warmup_s > 0 else []
        phases += [(i, rate, profile.step_s) for i, rate in enumerate(profile.steps)]
        for index, rate, seconds in phases:
            if st.sent >= profile.max_requests or time.perf_counter() >= deadline:
                break
            count = profile.users(rate)
            for user_class in classes:
                user_class.wait_time = constant_pacing(count / rate)
            st.step = index
            start = time.perf_counter() - st.t0
            runner.start(count, spawn_rate=max(count * 10.0, 10.0))
            _wait(seconds, st, deadline)
            if index >= 0:
                windows.append(
                    {
                        "step": index,
                        "offered_rps": rate,
                        "users": count,
                        "start_s": start,
                        "end_s": time.perf_counter() - st.t0,
                    }
                )
        st.stopping = True
        # let the requests in flight finish, so the last step keeps its slowest ones
        while st.in_flight and time.perf_counter() < deadline:
            gevent.sleep(0.05)
        runner.quit()
        out.flush()
    Path(plan["steps"]).write_bytes(orjson.dumps({"windows": windows, "sent": st.sent, "cut": st.in_flight}))


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise SystemExit("usage: python -m loadtest.drive PLAN.json")
    drive(orjson.loads(Path(args[0]).read_bytes()))


if __name__ == "__main__":
    main()
