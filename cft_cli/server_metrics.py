"""`cft serve`'s Prometheus metrics, answered on GET /metrics in Prometheus' text format.

What an operator watches a recommender for, beside the process itself (memory, CPU, open files):

  cft_requests_total{endpoint,code}           answers by endpoint and HTTP status (503: queue full
                                              or nothing served yet; 4xx: the clients' mistakes)
  cft_request_duration_seconds{endpoint}      time from reading the body to the answer (histogram)
  cft_histories_total{endpoint}               histories answered (an /invocations body holds many)
  cft_history_entries_total{matched}          entries in the answered histories, and how many the
                                              catalogue did not know ("false": typos, and items
                                              newer than the model; a rising share says the
                                              served catalogue is getting stale)
  cft_model_info{model,version,method}        1 for the model answering now (none while waiting)
  cft_model_catalogue_items                   its catalogue's size
  cft_model_switches_total                    changes of served version (the alias moved)
  cft_model_load_failures_total               versions the alias named that failed to load
  cft_model_check_failures_total              checks of the alias that failed (the registry's server
                                              does not answer, the alias was deleted): while it
                                              rises, a new champion is not picked up
  cft_model_failed_versions                   such versions still pending (also on /health)
  cft_queue_requests, cft_queue_capacity      requests waiting for the LLM's batching worker, and
                                              how many may wait before new ones get 503
  cft_ranking_calls_total{version}            generation calls of the batching worker, the
  cft_ranked_histories_total{version}           histories they ranked and the seconds they took:
  cft_ranking_seconds_total{version}            mean batch = histories / calls, mean call = s / calls

The model's gauges and counters are read from the served model when Prometheus scrapes, so they
need no hooks in the serving path; the ranking counters start again at 0 with each version (a
counter reset, which `rate()` handles). A popularity model has no batching worker, so no queue or
ranking series. Each app has a registry of its own (two apps in one process do not share counts).
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

# Without this, every counter and histogram series gets a `<name>_created` gauge beside it (its
# creation time): in the text format Prometheus scrapes they are series of their own, twice the
# series for nothing `rate()` needs. The switch is prometheus_client's, for the whole process (a
# `cft serve` process exposes only these metrics).
disable_created_metrics()

# Request time, in seconds: a popularity answer takes milliseconds; one SmolLM2 beam search ~1-2 s on
# 2 CPU cores, a batch of 16 ~16 s, and a request may wait for the batch before it.
LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
ENDPOINTS = ("/recommend", "/invocations")


class ServedModelCollector:
    """The served model's series, read from `served` (cft_cli.server.ServedModel) at each scrape."""

    def __init__(self, served):
        self.served = served

    def collect(self):
        served, now = self.served, self.served.current
        info = GaugeMetricFamily("cft_model_info", "The model answering now (value 1)",
                                 labels=["model", "version", "method"])
        catalogue = GaugeMetricFamily("cft_model_catalogue_items", "Items in the served model's catalogue")
        if now is not None:
            info.add_metric([now.uri, now.version or "", now.method], 1)
            catalogue.add_metric([], len(now.model.catalogue))
        yield info
        yield catalogue
        yield CounterMetricFamily("cft_model_switches", "Changes of served version", value=served.switches)
        yield CounterMetricFamily("cft_model_check_failures", "Checks of the alias that failed (registry unreachable, "
                                  "alias deleted)", value=served.check_failures)
        yield CounterMetricFamily("cft_model_load_failures", "Versions that failed to load when the alias named them",
                                  value=served.load_failures)
        yield GaugeMetricFamily("cft_model_failed_versions", "Versions named by the alias that did not load, pending",
                                value=len(served.failed))
        batching = now.batching if now is not None else None
        if batching is None:
            return
        yield GaugeMetricFamily("cft_queue_requests", "Requests waiting for the batching worker", value=batching.waiting)
        yield GaugeMetricFamily("cft_queue_capacity", "Requests that may wait before new ones get 503",
                                value=batching.max_queue)
        stats = batching.stats
        for name, text, value in (("cft_ranking_calls", "Generation calls of the batching worker", stats.calls),
                                  ("cft_ranked_histories", "Histories ranked by those calls", stats.histories),
                                  ("cft_ranking_seconds", "Seconds those calls took", stats.seconds)):
            family = CounterMetricFamily(name, text, labels=["version"])
            family.add_metric([now.version or ""], value)
            yield family


class ServerMetrics:
    """The registry of one app: request series recorded by the handlers (`observe`), the served
    model's read at scrape time, and the process's own (prometheus_client's collectors)."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, served):
        self.registry = CollectorRegistry()
        self.requests = Counter("cft_requests", "Answers by endpoint and HTTP status", ["endpoint", "code"],
                                registry=self.registry)
        self.duration = Histogram("cft_request_duration_seconds", "Time from reading the body to the answer",
                                  ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.histories = Counter("cft_histories", "Histories answered", ["endpoint"], registry=self.registry)
        self.entries = Counter("cft_history_entries", "Entries in the answered histories; matched: in the catalogue",
                               ["matched"], registry=self.registry)
        for endpoint in ENDPOINTS:  # every series there from the start, at 0, so rate() sees the first request
            self.duration.labels(endpoint)
            self.histories.labels(endpoint)
        for matched in ("true", "false"):
            self.entries.labels(matched)
        self.registry.register(ServedModelCollector(served))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)

    def observe(self, endpoint: str, code: int, seconds: float) -> None:
        """One answer of `endpoint` with HTTP status `code`, after `seconds`."""
        self.requests.labels(endpoint, str(code)).inc()
        self.duration.labels(endpoint).observe(seconds)

    def answered(self, endpoint: str, histories: list, recommendations: list[dict]) -> None:
        """Histories answered, and how many of their entries the catalogue knew (`unmatched`: the
        entries it did not)."""
        self.histories.labels(endpoint).inc(len(histories))
        entries = sum(len(h) for h in histories)
        unmatched = sum(len(r["unmatched"]) for r in recommendations)
        self.entries.labels("true").inc(entries - unmatched)
        self.entries.labels("false").inc(unmatched)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
