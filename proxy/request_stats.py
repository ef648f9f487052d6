"""The per-request metrics as plain numbers, exposed by a custom collector (the prometheus-client way for a hot
path): a request adds to a dictionary of ints and floats, with no lock and no label lookup.

prometheus-client's ``Counter`` and ``Histogram`` take a lock for every increment (they may be shared between
threads); the proxy answers requests on one event-loop thread, and ``/metrics`` is rendered on that thread too, so
plain numbers are exact. The families and their samples are the ones ``Counter`` and ``Histogram`` would export
(``_total``; ``_bucket`` with cumulative ``le`` buckets, ``_count``, ``_sum``), without the ``_created`` series.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString


class RequestStats(Collector):
    """``<prefix>_http_requests_total{route, method, status}``, ``<prefix>_http_request_duration_seconds{route,
    cache}`` and ``<prefix>_cache_requests_total{result}``."""

    def __init__(self, prefix: str, buckets: tuple[float, ...]) -> None:
        self._prefix = prefix
        self._bounds = buckets
        self._les = [*(floatToGoString(bound) for bound in buckets), "+Inf"]  # type: ignore[no-untyped-call]
        self._requests: dict[tuple[str, str, int], int] = {}
        # (route, cache) -> one count per bucket (the last for +Inf), then the sum of the observed seconds
        self._durations: dict[tuple[str, str], list[float]] = {}
        self._cache: dict[str, int] = {}

    def request_done(self, route: str, method: str, status: int, cache: str, seconds: float) -> None:
        requests = self._requests
        key = (route, method, status)
        requests[key] = requests.get(key, 0) + 1
        durations = self._durations.get((route, cache))
        if durations is None:
            durations = self._durations[(route, cache)] = self._empty_histogram()
        durations[bisect.bisect_left(self._bounds, seconds)] += 1
        durations[-1] += seconds

    def cache_request(self, result: str) -> None:
        self._cache[result] = self._cache.get(result, 0) + 1

    def create(
        self,
        requests: Iterable[tuple[str, str, int]],
        durations: Iterable[tuple[str, str]],
        results: Iterable[str],
    ) -> None:
        """Label values that exist from the start, at zero."""
        for key in requests:
            self._requests.setdefault(key, 0)
        for pair in durations:
            self._durations.setdefault(pair, self._empty_histogram())
        for result in results:
            self._cache.setdefault(result, 0)

    def _empty_histogram(self) -> list[float]:
        return [0] * len(self._les) + [0.0]

    def collect(self) -> Iterator[Metric]:
        prefix = self._prefix
        requests = CounterMetricFamily(
            f"{prefix}_http_requests", "HTTP requests the proxy answered.", labels=["route", "method", "status"]
        )
        for (route, method, status), count in self._requests.items():
            requests.add_metric([route, method, str(status)], count)
        yield requests
        durations = HistogramMetricFamily(
            f"{prefix}_http_request_duration_seconds",
            "Time from request to response, by route and by how the cache answered (none: no lookup).",
            labels=["route", "cache"],
        )
        for (route, cache), counts in self._durations.items():
            cumulative: float = 0
            buckets: list[tuple[str, float]] = []
            for le, in_bucket in zip(self._les, counts, strict=False):
                cumulative += in_bucket
                buckets.append((le, cumulative))
            durations.add_metric([route, cache], buckets, counts[-1])
        yield durations
        cache_requests = CounterMetricFamily(
            f"{prefix}_cache_requests", "Annotation requests answered, by how the cache served them.", labels=["result"]
        )
        for result, count in self._cache.items():
            cache_requests.add_metric([result], count)
        yield cache_requests
