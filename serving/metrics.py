"""Our Prometheus metrics, beside the ones Ray Serve exports itself (``ray.serve.metrics``: each replica reports
them to its node's Ray metrics agent, which Prometheus scrapes; Ray prefixes every name with ``ray_``).

- ``ecgvlm_requests_total{route, status}``: answered requests (the ingress);
- ``ecgvlm_tokens_generated_total``: new tokens the model produced for chats (the predictor replicas);
- ``ecgvlm_time_to_first_token_seconds{route}``: request arrival to the first answer token (the ingress);
- ``ecgvlm_queue_seconds{method}``: request arrival to its model batch starting (the predictor replicas).

Example: ``IngressMetrics().request("/v1/chat/completions", 200)``.
"""

from __future__ import annotations

import time

# s: a tiny CPU model answers in tens of ms, a 256M model on CPU in seconds, a queue behind a batch in more
BOUNDARIES = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]


class IngressMetrics:
    """Requests by route and status, and time to first token, recorded by the ingress replica."""

    def __init__(self):
        from ray.serve.metrics import Counter, Histogram

        self.requests = Counter("ecgvlm_requests_total", description="requests answered, by route and HTTP status",
                                tag_keys=("route", "status"))
        self.ttft = Histogram("ecgvlm_time_to_first_token_seconds", boundaries=BOUNDARIES, tag_keys=("route",),
                              description="request arrival to the first answer token, s")

    def request(self, route: str, status: int) -> None:
        self.requests.inc(1, tags={"route": route, "status": str(status)})

    def first_token(self, route: str, received: float) -> None:
        self.ttft.observe(max(0.0, time.time() - received), tags={"route": route})


class ReplicaMetrics:
    """Tokens generated and queue time, recorded by a predictor replica."""

    def __init__(self):
        from ray.serve.metrics import Counter, Histogram

        self.tokens = Counter("ecgvlm_tokens_generated_total", description="new tokens generated for chats")
        self.queue = Histogram("ecgvlm_queue_seconds", boundaries=BOUNDARIES, tag_keys=("method",),
                               description="request arrival at the ingress to its model batch starting, s")

    def generated(self, n: int) -> None:
        if n > 0:
            self.tokens.inc(n)

    def queued(self, received: list, method: str = "chat") -> None:
        now = time.time()
        for t in received:
            if t is not None:
                self.queue.observe(max(0.0, now - float(t)), tags={"method": method})
