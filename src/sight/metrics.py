"""Prometheus metrics of one app instance (own registry, so several apps can live in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

STAGE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.items = Counter(
            "sight_items", "Items processed, by final status and error code",
            ["status", "code"], registry=self.registry,
        )
        self.stage_seconds = Histogram(
            "sight_stage_seconds", "Time spent per pipeline stage", ["stage"],
            buckets=STAGE_BUCKETS, registry=self.registry,
        )
        self.requests = Counter(
            "sight_predict_requests", "Prediction requests, by endpoint", ["endpoint"], registry=self.registry
        )

        self.shadow_runs = Counter(
            "sight_shadow_runs", "Shadow model runs, by outcome", ["primary", "shadow", "outcome"],
            registry=self.registry,
        )
        self.shadow_agreement = Gauge(
            "sight_shadow_agreement", "Mean agreement of a shadow with its primary (precision, recall, exact_match)",
            ["primary", "shadow", "metric"], registry=self.registry,
        )

        self.queue_depth = Gauge(
            "sight_model_queue_depth", "Items waiting for a model's session", ["model"], registry=self.registry,
        )
        self.batch_size = Histogram(
            "sight_batch_size", "Images per session call", ["model"], buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=self.registry,
        )
        self.rejected = Counter(
            "sight_rejected", "Requests refused before any work, by reason", ["reason"], registry=self.registry,
        )
        self.cancelled = Counter(
            "sight_cancelled_items", "Items cancelled before finishing (client gone, shutdown, batch cancel)",
            registry=self.registry,
        )
        self.pixels_in_flight = Gauge(
            "sight_pixels_in_flight", "Decoded pixels held now (see SIGHT_IMAGES__MAX_PIXELS_IN_FLIGHT)",
            registry=self.registry,
        )
        self.pixels_waiting = Gauge(
            "sight_pixels_waiting", "Items waiting for decode budget (see SIGHT_IMAGES__PIXEL_QUEUE)",
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
