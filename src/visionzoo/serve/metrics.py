"""What /metrics says, in Prometheus' text format: one registry per app (no process-global state), so two apps
in one process (tests, --workers) never mix their counts."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServerMetrics:
    """Requests by status code, errors by kind, request and model latency, images per model call, queue depth,
    requests in flight; the process' RSS and CPU (ProcessCollector, on Linux)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("visionzoo_requests", "HTTP requests to /v1/predict by status code", ["code"],
                                registry=r)
        self.errors = Counter("visionzoo_errors", "refused or failed predict requests by kind", ["kind"], registry=r)
        self.images = Counter("visionzoo_images", "images predicted", registry=r)
        self.latency = Histogram("visionzoo_request_seconds", "predict request latency, body read to answer",
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.model_latency = Histogram("visionzoo_model_seconds", "one batched model call (normalise, forward, top-k)",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("visionzoo_batch_size", "images per model call", buckets=BATCH_BUCKETS, registry=r)
        self.queue_depth = Gauge("visionzoo_queue_depth", "images waiting for the model", registry=r)
        self.in_flight = Gauge("visionzoo_requests_in_flight", "predict requests being answered", registry=r)
        ProcessCollector(registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
