"""Prometheus metrics of the daemon (one registry per server, so tests can run several)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.sessions = Gauge("uadf_active_sessions", "Live sessions", registry=r)
        self.sessions_total = Counter("uadf_sessions_total", "Sessions started", registry=r)
        self.audio_seconds = Counter("uadf_audio_seconds_total", "Seconds of audio received", registry=r)
        self.decode_seconds = Histogram(
            "uadf_decode_seconds", "Wall time of one scheduler decode step (a batch)", registry=r,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1, 2, 5),
        )
        self.batch_size = Histogram("uadf_batch_size", "Windows decoded together", registry=r, buckets=(1, 2, 3, 4, 6, 8, 16))
        self.queue_depth = Gauge("uadf_decode_queue_depth", "Windows waiting for the decoder", registry=r)
        self.partial_interval = Gauge(
            "uadf_partial_interval_seconds", "Audio a session gathers between partial decodes (grows when the decoder is behind)",
            registry=r,
        )
        self.partials_skipped = Counter(
            "uadf_partial_decodes_skipped_total", "Partial decodes skipped because the decoder was behind", registry=r
        )
        self.finals = Counter("uadf_finals_total", "Final messages committed", registry=r)
        self.llm_calls = Counter("uadf_llm_calls_total", "LLM scoring calls made by fusion", registry=r)
        self.fusion_fallbacks = Counter(
            "uadf_fusion_fallbacks_total", "Windows decoded by plain ASR because the fusion decoder raised", registry=r
        )
        self.errors = Counter("uadf_errors_total", "Errors sent to clients", ["code"], registry=r)
        self.send_queue_depth = Gauge("uadf_send_queue_depth", "Messages waiting in the sessions' send queues", registry=r)
        self.send_queue_max = Gauge("uadf_send_queue_max", "Longest send queue of a session", registry=r)
        self.connections = Gauge("uadf_connections", "Open websocket connections", registry=r)
        self.send_queue_dropped = Counter("uadf_partials_dropped_total", "Partials dropped for slow clients", registry=r)

    content_type = CONTENT_TYPE_PLAIN_0_0_4  # the text format every Prometheus version scrapes

    def render(self) -> bytes:
        return generate_latest(self.registry)
