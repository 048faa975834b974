"""huayu's load test (locust), its SLO report, the gateway benchmark's client, and the upstream simulator.

Nothing here is imported by the gateway. ``loadtest_main`` is what ``huayu loadtest`` runs; it keeps
locust (which monkey-patches the standard library for gevent) in a child process of its own.
"""

from __future__ import annotations


def loadtest_main(argv: list[str] | None = None) -> int:
    """``huayu loadtest [options]``: the exit status (0 pass, 1 SLO failed, 2 the run could not be made)."""
    from loadtest.cli import main

    return main(argv)
