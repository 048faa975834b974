"""API keys: one or more per tenant, configured as SHA-256 hashes, never kept in clear.

A key is ``hy_`` plus 32 random bytes in URL-safe base64; only ``tenant:sha256(key)`` goes into
the configuration. A check hashes the presented key and compares it with every configured hash
using ``hmac.compare_digest``, so neither the time taken nor an early exit tells which one was near.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from gateway.config import Settings

PUBLIC_TENANT = "public"
KEY_PREFIX = "hy_"
_TENANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_HEX = re.compile(r"^[0-9a-f]{64}$")


# the tenant of every request while keys are off, whose review scope is therefore all tenants: a key
# of that name would see every tenant's descriptions
_PUBLIC_REFUSED = f"the tenant name {PUBLIC_TENANT!r} is reserved for requests without keys; choose another"


class KeyConfigError(ValueError):
    """The configured key list is malformed; raised at start-up, never per request."""


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key(tenant: str) -> tuple[str, str]:
    """A fresh random key and the ``tenant:hash`` line that configures it."""
    if not _TENANT.match(tenant):
        raise KeyConfigError(f"tenant {tenant!r} must be 1-64 letters, digits, '_', '.' or '-'")
    if tenant == PUBLIC_TENANT:
        raise KeyConfigError(_PUBLIC_REFUSED)
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    return key, f"{tenant}:{hash_key(key)}"


def parse_entries(lines: Iterable[str], where: str) -> list[tuple[str, bytes]]:
    entries: list[tuple[str, bytes]] = []
    for n, raw in enumerate(lines, 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        tenant, sep, digest = line.partition(":")
        tenant, digest = tenant.strip(), digest.strip().lower()
        if not sep or not _TENANT.match(tenant) or not _HEX.match(digest):
            raise KeyConfigError(
                f"{where} entry {n} is not 'tenant:sha256hex' (64 hex digits; `huayu keys new TENANT` prints one)"
            )
        if tenant == PUBLIC_TENANT:
            raise KeyConfigError(f"{where} entry {n}: {_PUBLIC_REFUSED}")
        entries.append((tenant, bytes.fromhex(digest)))
    return entries


@dataclass(frozen=True)
class KeyRing:
    entries: tuple[tuple[str, bytes], ...]

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyRing:
        entries = parse_entries(settings.api_keys.replace(",", "\n").splitlines(), "HUAYU_API_KEYS")
        if settings.api_keys_file is not None:
            path = Path(settings.api_keys_file)
            try:
                text = path.read_text(encoding="utf-8")
            except OSError as e:
                raise KeyConfigError(f"HUAYU_API_KEYS_FILE {path} cannot be read ({e.strerror})") from e
            entries += parse_entries(text.splitlines(), f"HUAYU_API_KEYS_FILE {path}")
        return cls(tuple(entries))

    @property
    def enabled(self) -> bool:
        return bool(self.entries)

    def tenant_of(self, key: str) -> str | None:
        """The tenant whose key this is, or None. Every entry is compared, match or not."""
        presented = hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()
        found: str | None = None
        for tenant, digest in self.entries:
            if hmac.compare_digest(presented, digest) and found is None:
                found = tenant
        return found
