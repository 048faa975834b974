"""The ``huayu`` command: serve the gateway, run the whole stack, launch the model server, and tools."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from gateway.config import DATA_DIR, Settings

BANNER = """
================================================================================
  TINY RANDOM MODEL: the weights of {model} could not be had here ({why}).
  huayu is running on a tiny random-weights model of the same architecture.
  Its text is RANDOM: the whole system works, but the descriptions mean nothing.
  On a GPU host with the weights, `make run` serves the real model.
================================================================================
"""


def _serve(args: argparse.Namespace) -> int:
    from gateway.app import create_app
    from gateway.server import log_to_stderr, run

    settings = Settings()
    log_to_stderr(settings.log_level)
    host, port = args.host or settings.host, args.port or settings.port
    options = {"read_timeout_s": settings.client_read_timeout_s, "graceful_s": settings.shutdown_grace_s}
    run(create_app(settings), host, port, access_log=args.access_log, **options)
    return 0


def _serving_python() -> str:
    """The interpreter of the serving venv (vLLM); make installs it beside the gateway's."""
    candidate = Path(".venv-serving/bin/python")
    if candidate.exists():
        return str(candidate)
    return sys.executable


def _model(args: argparse.Namespace) -> int:
    import shlex

    from serving.launch import ModelServer, build_command, detect_preset, serving_env
    from serving.presets import get_preset

    preset = args.preset or detect_preset()
    cmd = build_command(preset, python=_serving_python(), host=args.host, port=args.port, model_path=args.model_path)
    env = serving_env(DATA_DIR, preset=get_preset(preset))
    print(shlex.join(cmd))
    if args.print_only:
        return 0
    log_path = DATA_DIR / "logs" / f"vllm-{preset}.log"
    server = ModelServer(cmd, env=env, log_path=log_path, host=args.host, port=args.port)
    server.start()
    print(f"vLLM is starting (log: {log_path}); Ctrl-C stops it.", flush=True)
    _wait_for_signal(server.stop)
    return 0


def _wait_for_signal(stop: Callable[[], object]) -> None:
    done = {"flag": False}

    def handler(_sig: int, _frame: object) -> None:
        done["flag"] = True

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    try:
        while not done["flag"]:
            signal.pause()
    finally:
        stop()


def _run(args: argparse.Namespace) -> int:
    from gateway.runner import run_stack

    return run_stack(preset=args.preset, gateway_port=args.port, model_port=args.model_port)


def _filter(args: argparse.Namespace) -> int:
    from gateway.safety import filter_main

    return filter_main(args.rest)


def _batch(args: argparse.Namespace) -> int:
    from gateway.batch import batch_main

    return batch_main(args.rest)


def _loadtest(args: argparse.Namespace) -> int:
    from loadtest import loadtest_main

    return loadtest_main(args.rest)


def _bench(args: argparse.Namespace) -> int:
    from bench.run_all import main as bench_main

    code: int = bench_main(args.rest)
    return code


def _config_table(_: argparse.Namespace) -> int:
    from gateway.docs import config_table

    print(config_table())
    return 0


def _keys(args: argparse.Namespace) -> int:
    from gateway.security.cli import keys_main

    return keys_main(args.rest)


def _finetune(args: argparse.Namespace) -> int:
    from serving.finetune import run_in_serving_venv  # the trainer needs torch: it runs in the serving venv

    return run_in_serving_venv(args.rest)


def _adapters(args: argparse.Namespace) -> int:
    from serving.adapters import adapters_main

    return adapters_main(args.rest)


_PASSTHROUGH: dict[str, Callable[[argparse.Namespace], int]] = {
    "adapters": _adapters,  # huayu adapters load NAME PATH | list | unload NAME [--url]
    "finetune": _finetune,  # huayu finetune --data X --base M --out DIR: a LoRA adapter
    "keys": _keys,  # huayu keys new TENANT: a random API key and its hash line
    "batch": _batch,
    "loadtest": _loadtest,
    "bench": _bench,
    "filter": _filter,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="huayu", description="画语 huayu: artworks that speak.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the gateway (settings from HUAYU_* variables)")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--access-log", action="store_true")
    p.set_defaults(func=_serve)

    p = sub.add_parser("run", help="start the model server and the gateway together (Ctrl-C stops both)")
    p.add_argument("--preset", help="serving preset (default: picked from the GPU found)")
    p.add_argument("--port", type=int, default=8080, help="gateway port")
    p.add_argument("--model-port", type=int, default=8000)
    p.set_defaults(func=_run)

    p = sub.add_parser("model", help="print and run the vLLM command of a serving preset")
    p.add_argument("--preset", help="h100, h200, rtx-24gb, cpu, tiny, guard (default: picked from the GPU found)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--model-path", help="serve this local folder instead of the preset's model id")
    p.add_argument("--print-only", action="store_true", help="print the command and exit")
    p.set_defaults(func=_model)

    p = sub.add_parser("filter", help="check text against the word lists; prints the verdict as JSON")
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=_filter)

    p = sub.add_parser("batch", help="describe a whole collection (folder, CSV or IIIF manifest)", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=_batch)

    p = sub.add_parser(
        "loadtest", help="run the load test against a gateway and report against the SLOs", add_help=False
    )
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=_loadtest)

    p = sub.add_parser(
        "bench", help="run the benchmarks (figures with baselines measured in the same run)", add_help=False
    )
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=_bench)

    for name, text in (
        ("finetune", "train a LoRA adapter from the finetune export (runs in the serving venv)"),
        ("adapters", "load, list or unload LoRA adapters of a running model server"),
        ("keys", "make an API key for a tenant and the hash line to configure"),
    ):
        sub.add_parser(name, help=text, add_help=False)

    p = sub.add_parser("config-table", help="print the configuration table (Markdown) for the README")
    p.set_defaults(func=_config_table)

    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in _PASSTHROUGH:
        # these commands own their whole argument list (argparse's REMAINDER would eat no leading flags)
        return _PASSTHROUGH[argv[0]](argparse.Namespace(rest=argv[1:]))
    args = parser.parse_args(argv)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
