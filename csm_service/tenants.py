"""Tenants: who an API key belongs to, and the key file that says so.

Every key belongs to a tenant. Voices and Twilio calls are owned by the tenant whose key created
them, and a key sees only its own tenant's (an admin key sees every tenant's). With no keys at all
the service is open and there is one implicit tenant that sees everything, as before tenants.

The key file (``--api-keys-file`` / ``CSM_API_KEYS_FILE``), one key per line::

    # comments start with '#'; blank lines are ignored
    k-3f9a...                               a key alone: its own tenant, "key-" + a hash of the key
    k-77c1... tenant=acme                   keys with the same tenant share its voices and calls
    k-0b2e... tenant=acme max_inflight=64   ... and its cap on utterances in flight
    k-a51d... tenant=ops scope=admin        sees (and may delete) every tenant's voices and calls

Fields are ``name=value`` after the key, separated by spaces or tabs: ``tenant`` (1 to 64 of
``A-Z a-z 0-9 . _ -``, starting with a letter or digit), ``scope`` (``tenant``, the default, or
``admin``) and ``max_inflight`` (an integer >= 0; 0 = no cap). A ``#`` after whitespace starts a
comment. Anything else is an error at start-up, naming the file and line but never the key.
Keys from ``CSM_API_KEYS`` (a comma list) are plain keys, each its own tenant. No torch, no grpc.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

TENANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
SCOPES = ("tenant", "admin")
FIELDS = ("tenant", "scope", "max_inflight")


class KeyFileError(ValueError):
    """A key file line the service cannot use; the message names the file and line."""


@dataclass(frozen=True)
class Principal:
    """Who a request comes from, once its key is checked."""

    tenant: str | None  # None: keys are off (the one implicit tenant), or the serve process's own edge
    admin: bool = False
    max_inflight: int | None = None  # the tenant's cap on utterances in flight; None: the service's option

    @property
    def sees_all(self) -> bool:
        """Admins and the keys-off tenant see every tenant's voices and calls."""
        return self.admin or self.tenant is None

    @property
    def voice_scope(self) -> str | None:
        """The VoiceStore filter: None for all voices, else this tenant's (and the shared ones)."""
        return None if self.sees_all else self.tenant

    def can_see(self, owner: str | None) -> bool:
        """Whether this principal may see (and use) what ``owner`` owns; None owns the shared things."""
        return self.sees_all or owner is None or owner == self.tenant

    def inflight_cap(self, default: int) -> int:
        """Its cap on utterances (or gRPC calls) in flight: the key file's, else ``default``."""
        return default if self.max_inflight is None else self.max_inflight


OPEN = Principal(tenant=None)  # keys off: everything is one tenant, as before tenants existed
INTERNAL = Principal(tenant=None, admin=True)  # ``serve``'s own edge on its gRPC port


@dataclass(frozen=True)
class ApiKey:
    key: str
    tenant: str
    admin: bool = False
    max_inflight: int | None = None
    explicit: bool = False  # given with fields (a key file line), not a bare key

    def principal(self) -> Principal:
        return Principal(self.tenant, self.admin, self.max_inflight)


def default_tenant(key: str) -> str:
    """A bare key's own tenant: a short hash of the key, safe to log and to show."""
    return "key-" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:12]


def plain_key(key: str) -> ApiKey:
    return ApiKey(key, default_tenant(key))


def _strip_comment(line: str) -> str:
    """Drop a comment: a whole line starting with '#', or '#' after whitespace."""
    text = line.strip()
    if text.startswith("#"):
        return ""
    return re.split(r"\s#", text, maxsplit=1)[0].strip()


def _field(where: str, name: str, value: str, fields: dict[str, object]) -> None:
    if name not in FIELDS:  # named only when it looks like a field name: the line may be a key with a space
        shown = f" {name!r}" if re.fullmatch(r"[a-z_]{1,20}", name) else ""
        raise KeyFileError(f"{where}: unknown field{shown}; the fields are {', '.join(FIELDS)}")
    if name in fields:
        raise KeyFileError(f"{where}: field {name!r} given twice")
    if name == "tenant" and not TENANT_NAME.fullmatch(value):
        raise KeyFileError(f"{where}: tenant must be 1 to 64 of A-Z a-z 0-9 . _ - (starting with a letter or digit)")
    if name == "scope" and value not in SCOPES:
        raise KeyFileError(f"{where}: scope must be one of {', '.join(SCOPES)}, got {value[:40]!r}")
    if name == "max_inflight" and not (value.isascii() and value.isdigit()):
        raise KeyFileError(f"{where}: max_inflight must be an integer >= 0, got {value[:40]!r}")
    fields[name] = int(value) if name == "max_inflight" else value


def parse_key_line(line: str, where: str) -> ApiKey | None:
    """One line of a key file -> its key, or None for a blank or comment line; KeyFileError if bad."""
    text = _strip_comment(line)
    if not text:
        return None
    key, *rest = text.split()
    if key.partition("=")[0] in FIELDS and "=" in key:
        raise KeyFileError(f"{where}: a line starts with the key, then its fields")
    fields: dict[str, object] = {}
    for item in rest:
        name, sep, value = item.partition("=")
        if not sep or not value:  # not echoed: it may be the rest of a key with a space in it
            raise KeyFileError(f"{where}: expected name=value fields after the key (a key has no spaces)")
        _field(where, name, value, fields)
    return ApiKey(
        key,
        str(fields.get("tenant") or default_tenant(key)),
        admin=fields.get("scope") == "admin",
        max_inflight=fields.get("max_inflight"),  # type: ignore[arg-type]
        explicit=bool(fields),
    )


def parse_key_file(text: str, source: str) -> list[ApiKey]:
    """Every key of a key file, in order; KeyFileError naming ``source`` and the line when one is bad."""
    keys = []
    for number, line in enumerate(text.splitlines(), 1):
        entry = parse_key_line(line, f"{source}:{number}")
        if entry is not None:
            keys.append(entry)
    return keys


def merge_keys(keys: Iterable[ApiKey]) -> tuple[ApiKey, ...]:
    """One entry per key, in first-seen order. A key given bare and with fields takes the fields;
    a key given twice with different fields, or a tenant given two different caps, is an error."""
    merged: dict[str, ApiKey] = {}
    for entry in keys:
        seen = merged.get(entry.key)
        if seen is None or (not seen.explicit and entry.explicit):
            merged[entry.key] = entry
        elif entry.explicit and entry != seen:
            raise KeyFileError(f"a key of tenant {seen.tenant!r} is listed twice with different fields")
    caps: dict[str, int] = {}
    for entry in merged.values():
        if entry.max_inflight is None:
            continue
        if caps.setdefault(entry.tenant, entry.max_inflight) != entry.max_inflight:
            raise KeyFileError(f"tenant {entry.tenant!r}: its keys give different max_inflight values")
    # A tenant's cap, once given on one of its keys, holds for all of them.
    return tuple(
        entry if entry.max_inflight is not None or entry.tenant not in caps else _with_cap(entry, caps[entry.tenant])
        for entry in merged.values()
    )


def _with_cap(entry: ApiKey, cap: int) -> ApiKey:
    return ApiKey(entry.key, entry.tenant, entry.admin, cap, entry.explicit)
