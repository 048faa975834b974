"""``huayu keys``: make API keys. The key is printed once; only its hash line goes into the config."""

from __future__ import annotations

import argparse
import sys

from gateway.security.keys import KeyConfigError, hash_key, new_key


def keys_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="huayu keys", description="Make and check API keys.")
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("new", help="print a new random key for TENANT and the line that configures it")
    p.add_argument("tenant")
    p = sub.add_parser("hash", help="print the tenant:sha256 line of an existing key read from stdin")
    p.add_argument("tenant")
    args = parser.parse_args(argv)
    if args.action == "new":
        try:
            key, line = new_key(args.tenant)
        except KeyConfigError as e:
            parser.error(str(e))
        print(f"key (give it to the tenant; it is not stored anywhere): {key}")
        print(f"config line (HUAYU_API_KEYS entry or a line of HUAYU_API_KEYS_FILE): {line}")
        return 0
    key = sys.stdin.readline().strip()
    if not key:
        parser.error("no key on stdin")
    print(f"{args.tenant}:{hash_key(key)}")
    return 0
