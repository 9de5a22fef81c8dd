"""The gateway's Prometheus metrics, registered in the app's own registry."""

from __future__ import annotations

from dataclasses import dataclass, field

from aigw_common.metrics import CollectorRegistry, Counter, Gauge, Histogram, LabelCap

MODEL_LABELS = 500  # distinct model names per gateway in metrics; later ones are counted as "other"


@dataclass(frozen=True, slots=True)
class GatewayMetrics:
    interceptions: Counter
    in_flight: Gauge
    duration: Histogram
    passthrough: Counter
    tokens: Counter
    circuit_state: Gauge
    circuit_trips: Counter
    circuit_rejects: Counter
    failovers: Counter
    upstream_attempts: Counter
    exhaustions: Counter
    revision: Gauge
    providers_failed: Gauge
    usage_spooled: Gauge
    usage_dropped: Gauge
    # model names come from clients (and from upstreams echoing them): bounded (tokens, circuit_* metrics)
    model: LabelCap = field(default_factory=lambda: LabelCap(MODEL_LABELS))

    @classmethod
    def create(cls, r: CollectorRegistry) -> GatewayMetrics:
        return cls(
            interceptions=Counter("aigw_gateway_interceptions_total", "Bridged requests", ["provider", "route", "status", "client"], registry=r),
            in_flight=Gauge("aigw_gateway_interceptions_in_flight", "Bridged requests in flight", ["provider"], registry=r),
            duration=Histogram("aigw_gateway_interception_duration_seconds", "Bridged request duration", ["provider", "route"],
                               buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600), registry=r),
            passthrough=Counter("aigw_gateway_passthrough_total", "Pass-through requests", ["provider", "status"], registry=r),
            tokens=Counter("aigw_gateway_tokens_total", "Tokens seen", ["provider", "model", "type"], registry=r),
            circuit_state=Gauge("aigw_gateway_circuit_state", "0 closed, 1 open, 2 half-open", ["provider", "endpoint", "model"], registry=r),
            circuit_trips=Counter("aigw_gateway_circuit_trips_total", "Breaker trips", ["provider", "endpoint", "model"], registry=r),
            circuit_rejects=Counter("aigw_gateway_circuit_rejects_total", "Requests refused by an open breaker", ["provider", "endpoint"], registry=r),
            # key = pool key id: bounded, keys are made by admins (never a client-supplied value)
            failovers=Counter("aigw_gateway_keypool_failovers_total", "Attempts moved to the next key", ["provider", "key", "reason"], registry=r),
            upstream_attempts=Counter("aigw_gateway_upstream_attempts_total", "Upstream attempts with a pool key, by answer",
                                      ["provider", "key", "status"], registry=r),
            exhaustions=Counter("aigw_gateway_keypool_exhaustions_total", "Requests with no usable key", ["provider"], registry=r),
            revision=Gauge("aigw_gateway_provider_set_revision", "Revision of the provider set in use", registry=r),
            providers_failed=Gauge("aigw_gateway_providers_failed", "Enabled providers of the current set that could not be loaded", registry=r),
            usage_spooled=Gauge("aigw_gateway_usage_spool_bytes", "Bytes of usage events waiting in the spool", registry=r),
            usage_dropped=Gauge("aigw_gateway_usage_dropped_total", "Usage events dropped because the spool was full", registry=r),
        )
