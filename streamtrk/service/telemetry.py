"""Prometheus metrics of the daemon, in a registry of their own (see ``docs/metrics.md``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from streamtrk.recon.budget import EventTooDense
from streamtrk.recon.reconstructor import STAGES as RECON_STAGES
from streamtrk.service.heap import CollectorPauses
from streamtrk.service.physics import PhysicsMetrics
from streamtrk.wire import REASONS

#: Pipeline stages, in order; upload to fit come from ``Reconstructor.reconstruct``, physics
#: is the physics metrics' bookkeeping of a batch (after its replies are queued).
STAGES = ("decode", "queue", *RECON_STAGES, "physics", "encode")

#: Why an event is not answered ok: the decoder's reasons, and the daemon's own.
REJECTED_REASONS = (
    *sorted(REASONS),
    "message_too_large",
    EventTooDense.reason,
    "deadline",
    "overloaded",
    "internal",
    "shutdown",
)

# 100 us to 10 s, about three buckets a decade.
LATENCY_BUCKETS = (
    1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
)  # fmt: skip
BATCH_EVENT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
#: Label names of the two info gauges (constant 1, one series each).
BUILD_LABELS = (
    "version",
    "python",
    "torch",
    "numpy",
    "pyzmq",
    "libzmq",
    "device",
    "engine",
    "engine_requested",
    "precision",
)
MODEL_LABELS = ("name", "path", "hash", "threshold")
BATCH_HIT_BUCKETS = (1e3, 1e4, 3e4, 1e5, 3e5, 1e6, 3e6)


class InfoGauge(Collector):
    """A gauge of constant 1 whose one series' labels name what runs. Its labels are
    replaced whole, so that a scrape during a reload sees the old series or the new one,
    never none and never both (either breaks joins on it and ``absent()`` alerts)."""

    def __init__(self, name: str, doc: str, labelnames: Sequence[str]) -> None:
        self.name, self.doc, self.labelnames = name, doc, tuple(labelnames)
        self.values: tuple[str, ...] | None = None  # none until set

    def set(self, labels: dict[str, str]) -> None:
        self.values = tuple(labels[n] for n in self.labelnames)  # one reference: atomic

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(self.name, self.doc, labels=self.labelnames)
        if (values := self.values) is not None:
            family.add_metric(list(values), 1.0)
        yield family

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(self.name, self.doc, labels=self.labelnames)


class SocketMetrics:
    """A registry of its own holding what the daemon and a farm forwarder both export: their
    sockets' connections (written by ``monitor.SocketMonitor``) and their HTTP endpoint's
    dropped connections (``health.HealthServer``); ``render()`` gives the exposition text."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.connections = Gauge(
            "streamtrk_connections",
            "Connections open on a socket (accepted or connected, not yet ended), by socket.",
            ["socket"],
            registry=r,
        )
        self.disconnects = Counter(
            "streamtrk_disconnects",
            "Connections ended, by socket and cause (auth, handshake, closed).",
            ["socket", "cause"],
            registry=r,
        )
        self.auth_failures = Counter(
            "streamtrk_auth_failures",
            "Handshakes refused, by socket and cause (auth: CURVE key not allowed; "
            "handshake: no CURVE or another protocol mismatch).",
            ["socket", "cause"],
            registry=r,
        )
        self.http_dropped = Counter(
            "streamtrk_http_connections_dropped",
            "HTTP connections closed unanswered, by cause (timeout: no complete request in "
            "time, or the answer not taken in time; busy: too many at once).",
            ["cause"],
            registry=r,
        )
        for cause in ("timeout", "busy"):
            self.http_dropped.labels(cause)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class Metrics(SocketMetrics):
    """Every metric the daemon exports."""

    def __init__(self) -> None:
        super().__init__()
        r = self.registry
        self.received = Counter(
            "streamtrk_events_received", "Messages taken off the input socket.", registry=r
        )
        self.received_bytes = Counter(
            "streamtrk_received_bytes",
            "Bytes of the messages taken off the input socket, all frames.",
            registry=r,
        )
        self.completed = Counter(
            "streamtrk_events_completed", "Replies sent, by status.", ["status"], registry=r
        )
        self.rejected = Counter(
            "streamtrk_events_rejected",
            "Events not answered ok, by reason "
            "(wire reasons, message_too_large, too_dense, deadline, overloaded, internal, "
            "shutdown).",
            ["reason"],
            registry=r,
        )
        self.unidentified = Counter(
            "streamtrk_events_unidentified",
            "Invalid messages whose header names no event, and replies (tracks messages) sent"
            " to the input: counted, never answered.",
            registry=r,
        )
        self.internal_errors = Counter(
            "streamtrk_internal_errors",
            "Events answered 'internal', by the step that failed (decode, reconstruction, "
            "encode); decode also counts messages naming no event (unanswered).",
            ["cause"],
            registry=r,
        )
        self.batch_failures = Counter(
            "streamtrk_batch_failures",
            "Batches whose reconstruction failed as a whole; their events were then retried "
            "one by one.",
            registry=r,
        )
        self.dead_letters = Counter(
            "streamtrk_dead_letters",
            "Unanswered messages (naming no event, or replies on the input) offered to the "
            "dead-letter file, by result.",
            ["result"],
            registry=r,
        )
        self.latency = Histogram(
            "streamtrk_event_latency_seconds",
            "Receipt to reply sent, per event.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.stage = Histogram(
            "streamtrk_stage_seconds",
            "Seconds per stage: per event for decode, queue and encode, per batch otherwise.",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_delay = Histogram(
            "streamtrk_queue_delay_seconds",
            "Seconds an event waited between decoding and its batch's start.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_events = Histogram(
            "streamtrk_batch_events", "Events per batch.", buckets=BATCH_EVENT_BUCKETS, registry=r
        )
        self.batch_hits = Histogram(
            "streamtrk_batch_hits", "Hits per batch.", buckets=BATCH_HIT_BUCKETS, registry=r
        )
        self.queue_depth = Gauge(
            "streamtrk_queue_depth", "Items waiting in an internal queue.", ["queue"], registry=r
        )
        self.queue_capacity = Gauge(
            "streamtrk_queue_capacity", "Capacity of an internal queue.", ["queue"], registry=r
        )
        self.ready = Gauge("streamtrk_ready", "1 while /readyz answers 200, else 0.", registry=r)
        self.inflight = Gauge(
            "streamtrk_inflight_events", "Events received and not yet answered.", registry=r
        )
        self.hits = Counter(
            "streamtrk_hits", "Hits of the events answered with their tracks.", registry=r
        )
        self.tracks = Counter("streamtrk_tracks", "Tracks sent in ok replies.", registry=r)
        self.build_info = InfoGauge(
            "streamtrk_build_info",
            "Constant 1; the labels name the versions, device, engine and precision.",
            BUILD_LABELS,
        )
        self.model_info = InfoGauge(
            "streamtrk_model_info",
            "Constant 1; the labels name the model being served.",
            MODEL_LABELS,
        )
        r.register(self.build_info)
        r.register(self.model_info)
        self.model_reloads = Counter(
            "streamtrk_model_reloads", "SIGHUP reloads, by result.", ["result"], registry=r
        )
        self.gc_pauses = CollectorPauses()  # timed from the daemon's start()
        r.register(self.gc_pauses)
        self.gc_frozen = Gauge(
            "streamtrk_gc_frozen_objects",
            "Objects frozen out of the cyclic garbage collector's scans when last frozen "
            "(once the model is installed, again after a reload).",
            registry=r,
        )
        self.device_memory = Gauge(
            "streamtrk_device_memory_bytes",
            "GPU memory of this process, by kind (only on CUDA).",
            ["kind"],
            registry=r,
        )
        self.physics = PhysicsMetrics(r)
        for status in ("ok", "error"):
            self.completed.labels(status)
        for cause in ("decode", "reconstruction", "encode"):
            self.internal_errors.labels(cause)
        for result in ("success", "failure"):
            self.model_reloads.labels(result)
        for stage in STAGES:
            self.stage.labels(stage)
        for reason in REJECTED_REASONS:  # at 0: rate() and increase() see the first one
            self.rejected.labels(reason)

    def watch_queue(self, name: str, depth: Callable[[], int], capacity: int) -> None:
        """Report ``depth()`` as ``streamtrk_queue_depth{queue=name}`` at every scrape."""
        self.queue_depth.labels(name).set_function(depth)
        self.queue_capacity.labels(name).set(capacity)

    def set_model(self, name: str, path: str, digest: str, threshold: float) -> None:
        """Serve ``streamtrk_model_info`` of this model alone; its threshold to 15 significant
        digits: any a configuration gives, as written, without a sum's rounding noise."""
        labels = {"name": name, "path": path, "hash": digest, "threshold": f"{threshold:.15g}"}
        self.model_info.set(labels)

    def watch_device_memory(self, device: str) -> None:
        """On ``cuda``, export torch's allocated/reserved and cupy's pool bytes of the current
        device; else none (a reload from CUDA to the CPU leaves no stale series)."""
        if device != "cuda":
            self.device_memory.clear()
            return
        import cupy
        import torch

        pool = cupy.get_default_memory_pool()
        sources: dict[str, Callable[[], float]] = {
            "torch_allocated": torch.cuda.memory_allocated,
            "torch_reserved": torch.cuda.memory_reserved,
            "cupy_used": pool.used_bytes,
            "cupy_pool": pool.total_bytes,
        }
        for kind, fn in sources.items():
            self.device_memory.labels(kind).set_function(fn)
