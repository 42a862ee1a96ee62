"""API keys and request ids: pure helpers the ingress's middleware calls (no Ray, no HTTP framework).

Keys come from the environment variable the app's ``api_key_env`` names (default ``ECGVLM_API_KEY``), several
separated by commas (rotation: add the new key, move clients, drop the old one). A request carries one as
``Authorization: Bearer <key>``; it is compared with every configured key in constant time, and neither the
keys nor the header ever go to a log or an error message.

Example::

    keys = load_keys("ECGVLM_API_KEY")        # ("k1", "k2") from ECGVLM_API_KEY="k1,k2"; () when unset
    authorized("Bearer k2", keys)             # True
    request_id("my-trace-42")                 # "my-trace-42" (a client's own id is kept when it is sane)
"""

from __future__ import annotations

import hmac
import os
import re
import uuid

_SANE_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")  # a client's x-request-id we repeat back and log



def load_keys(env_name: str) -> tuple[str, ...]:
    """The keys in ``$env_name`` (comma-separated, blanks ignored); () when unset or empty."""
    return tuple(k.strip() for k in os.environ.get(env_name, "").split(",") if k.strip())


def authorized(header: str | None, keys: tuple[str, ...]) -> bool:
    """Whether an ``Authorization`` header holds one of ``keys``; every key is compared, each in constant time,
    so the answer's timing says nothing about which key came close."""
    scheme, _, token = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return False
    given = token.strip().encode()
    hits = [hmac.compare_digest(given, key.encode()) for key in keys]
    return any(hits)


def auth_error(header: str | None) -> str:
    """The 401 message: what was wrong, never what was sent."""
    if not header:
        return "missing API key: send the header 'Authorization: Bearer <key>'"
    return "invalid API key"


def request_id(given: str | None) -> str:
    """The client's ``x-request-id`` when it is a plain token (letters, digits, ``._:-``, at most 128), else a
    new one."""
    if given and _SANE_ID.match(given):
        return given
    return f"req-{uuid.uuid4().hex[:16]}"
