"""The proxy's ``/metrics`` (Prometheus text format) as a flat dictionary, for tests and bench scripts."""

from __future__ import annotations


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text format as ``{'name{labels}': value}``."""
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples
