"""A drift verdict as Prometheus series, pushed to a Pushgateway by the drift job.

``fitml drift`` runs as a batch job (a CronJob), so it cannot be scraped; it pushes its last
verdict instead (``FITML_PUSHGATEWAY=http://pushgateway:9091``), grouped under job
``fitml-drift``, and Prometheus scrapes the gateway (``deploy/observability``). The series:

- ``fitml_drift_detected``: 1 when the verdict found drift, else 0.
- ``fitml_drift_share``: share of monitored columns that drifted.
- ``fitml_drift_last_run_timestamp_seconds``: when the verdict was computed.
- ``fitml_drift_column_value{column, role, method}`` and ``fitml_drift_column_threshold``:
  each column's distance and the threshold it is judged against.
- ``fitml_drift_column_drifted{column, role}``: 1 for a drifted column.

The full history (every run, every column) stays in the drift history table, which the
drift dashboard also reads with SQL.
"""

from __future__ import annotations

from datetime import datetime
from typing import Final

from prometheus_client import CollectorRegistry, Gauge

from evaluation.drift import DriftVerdict

PUSHGATEWAY_ENV: Final = "FITML_PUSHGATEWAY"
JOB: Final = "fitml-drift"


def drift_registry(verdict: DriftVerdict) -> CollectorRegistry:
    """The verdict's series in a registry of their own."""
    registry = CollectorRegistry()
    Gauge("fitml_drift_detected", "1 when the last drift check found drift", registry=registry).set(
        1 if verdict.drift_detected else 0
    )
    Gauge("fitml_drift_share", "Share of monitored columns that drifted", registry=registry).set(
        verdict.drift_share
    )
    Gauge(
        "fitml_drift_last_run_timestamp_seconds",
        "When the last drift verdict was computed (Unix time)",
        registry=registry,
    ).set(datetime.fromisoformat(verdict.computed_at).timestamp())
    value = Gauge(
        "fitml_drift_column_value",
        "Drift distance of each monitored column",
        ["column", "role", "method"],
        registry=registry,
    )
    threshold = Gauge(
        "fitml_drift_column_threshold",
        "Threshold each column's distance is judged against",
        ["column", "role", "method"],
        registry=registry,
    )
    drifted = Gauge(
        "fitml_drift_column_drifted",
        "1 for a column that drifted",
        ["column", "role"],
        registry=registry,
    )
    for c in verdict.columns:
        value.labels(c.column, c.role, c.method).set(c.value)
        threshold.labels(c.column, c.role, c.method).set(c.threshold)
        drifted.labels(c.column, c.role).set(1 if c.drifted else 0)
    return registry


def push_drift_metrics(verdict: DriftVerdict, gateway: str, timeout_s: float = 10.0) -> None:
    """Replace the drift job's series on the Pushgateway at ``gateway`` with this verdict.

    Raises:
        OSError: the gateway cannot be reached (the verdict files are written already).
    """
    from prometheus_client import push_to_gateway

    push_to_gateway(gateway, job=JOB, registry=drift_registry(verdict), timeout=timeout_s)
