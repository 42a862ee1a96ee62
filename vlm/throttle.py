"""What keeps endpoint requests few and polite: the response cache (a rerun sends no request already answered)
and the rate limits shared by a stage's threads (requests/min, tokens/min, a server's ``Retry-After``).

Example::

    key = cache_key("https://api.openai.com/v1", "gpt-4o", keyed_messages, {"max_tokens": 1024, "temperature": 0})
    cache = ResponseCache("s3://ecg/eval/cache"); cache.get(key)       # None, or the stored answer
    limiter = RateLimiter(requests_per_min=500, tokens_per_min=30_000); limiter.acquire(tokens=900)  # s waited
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import threading
import time


def cache_key(api_base: str, model: str, keyed_messages: list[dict], decoding: dict) -> str:
    """SHA-256 of the canonical JSON of everything that determines the answer (never the API key)."""
    doc = {"endpoint": api_base.rstrip("/"), "model": model, "messages": keyed_messages, "decoding": decoding}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class ResponseCache:
    """One JSON object per answered request, ``<uri>/<key[:2]>/<key>.json`` (local folder or s3://)."""

    def __init__(self, uri: str | None):
        self.uri = uri

    def _path(self, key: str) -> str:
        from ecg import storage

        return storage.join(self.uri, key[:2], f"{key}.json")

    def get(self, key: str) -> dict | None:
        from ecg import storage

        if not self.uri:
            return None
        try:
            return json.loads(storage.read_text(self._path(key)))
        except (FileNotFoundError, OSError, ValueError):  # absent (or torn by a killed run): ask again
            return None

    def put(self, key: str, record: dict) -> None:
        from ecg import storage

        if self.uri:
            storage.write_text(self._path(key), json.dumps(record))


class RateLimiter:
    """Token buckets for requests/min and tokens/min shared by the stage's threads, plus a pause that a
    ``Retry-After`` sets for everyone. ``clock``/``sleep`` are injectable for tests."""

    def __init__(self, requests_per_min=None, tokens_per_min=None, *, clock=time.monotonic, sleep=time.sleep):
        self.rates = {"requests": requests_per_min, "tokens": tokens_per_min}
        self.level = {k: float(v) for k, v in self.rates.items() if v}  # start full: a minute's allowance
        self.clock, self.sleep = clock, sleep
        self.updated = clock()
        self.not_before = 0.0
        self.lock = threading.Lock()

    def _refill(self, now: float) -> None:
        for k in self.level:
            self.level[k] = min(float(self.rates[k]), self.level[k] + (now - self.updated) * self.rates[k] / 60.0)
        self.updated = now

    def acquire(self, tokens: int) -> float:
        """Block until one request of ``tokens`` tokens may go; returns the seconds waited."""
        waited = 0.0
        need = {"requests": 1.0, "tokens": float(tokens)}
        while True:
            with self.lock:
                now = self.clock()
                self._refill(now)
                wait = max(0.0, self.not_before - now)
                for k in self.level:  # a request larger than the whole bucket waits for a full bucket
                    want = min(need[k], float(self.rates[k]))
                    if self.level[k] < want - 1e-9:  # a float hair short is enough (else: endless tiny sleeps)
                        wait = max(wait, (want - self.level[k]) * 60.0 / self.rates[k])
                if wait <= 1e-9:
                    for k in self.level:
                        self.level[k] -= need[k]
                    return waited
            self.sleep(wait)
            waited += wait

    def settle(self, estimated: int, actual: int) -> None:
        """Correct the token bucket once the response says how many tokens the request really took."""
        with self.lock:
            if "tokens" in self.level:
                self.level["tokens"] = min(float(self.rates["tokens"]), self.level["tokens"] + estimated - actual)

    def pause(self, seconds: float) -> None:
        with self.lock:
            self.not_before = max(self.not_before, self.clock() + seconds)


def retry_after_s(headers) -> float | None:
    """Seconds a ``retry-after-ms`` or ``Retry-After`` header (seconds or an HTTP date) asks to wait."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    try:
        if ms is not None:
            return max(0.0, float(ms) / 1000.0)
        value = headers.get("retry-after")
        if value is None:
            return None
        try:
            return max(0.0, float(value))
        except ValueError:
            return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None
