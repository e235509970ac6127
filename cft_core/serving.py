"""Serving: request params, and many users at once (concurrent requests share generation calls).

Generation is nearly all of a request's cost, and on a CPU a decoding step reads every weight
of the model whatever the number of rows it advances, so one `Ranker.rank` call over B prompts
costs far less than B calls of one prompt. `BatchingRecommender` puts every request on a queue;
one worker thread takes whatever is waiting (up to `max_batch` histories), ranks it in one call
and hands each caller its own rows. While a batch generates, the next one gathers.

After taking a first request the worker waits up to `batch_wait_s` (50 ms) for more, unless the
batch is full. Without that wait, clients that send their next request as soon as they have an
answer split into two alternating groups: the batch of 15 finishes, the worker finds only the one
request that arrived meanwhile and ranks it alone (a whole generation for one history) while the
15 come back. 50 ms is ~2% of one history's ranking on 2 cores, ample for a local HTTP round trip.

The queue is bounded. A request that finds `max_queue` requests waiting is refused at once with
`Overloaded` (HTTP 503 with Retry-After in the servers), rather than waiting past any client's
timeout: the load a server accepts is what it can answer.

Each request's input is checked in the caller's thread before it is queued (k, ids, history
shape), so a bad request never reaches generation and never holds up the others. A batch ranks
to the deepest k it holds; both rankings give every request exactly the first k items it would
get alone (constrained: beams in score order; grounding: the round-robin over the beams' top-k
holds k distinct items after k rounds, so deeper lists do not change the first k).

A server that replaces its model (`cft serve` following the champion alias) calls `close()` on
the old recommender: it refuses new requests with `Retired` (the server sends them to the new
model), answers every request already queued, and ends its worker thread, which would otherwise
hold the old model in memory for as long as the process lives.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from cft_core.ranking import (
    Catalogue,
    InputError,
    Ranker,
    Ranking,
    Recommendation,
    served_catalogue,
)

PARAMS = ("k", "exclude_history", "free_text")  # what a request may set, besides its histories


@dataclass(frozen=True)
class RequestParams:
    """A request's params. k: items per history (1 .. catalogue size); exclude_history: leave the
    history's own items out; free_text: show unmatched history titles to the model as typed."""

    k: int
    exclude_history: bool = True
    free_text: bool = False

    @classmethod
    def parse(cls, params: dict | None, default_k: int) -> RequestParams:
        """Params as received (JSON or MLflow) -> RequestParams; InputError naming the field."""
        params = {key: value for key, value in (params or {}).items() if value is not None}
        unknown = sorted(set(params) - set(PARAMS))
        if unknown:
            raise InputError(f"unknown param(s) {', '.join(unknown)}; known: {', '.join(PARAMS)}")
        k = params.get("k", default_k)
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise InputError(f"param k must be an integer, got {k!r}")
        flags = {}
        for name in ("exclude_history", "free_text"):
            value = params.get(name, getattr(cls, name))
            if not isinstance(value, (bool, np.bool_)):
                raise InputError(f"param {name} must be true or false, got {value!r}")
            flags[name] = bool(value)
        return cls(k=int(k), **flags)


def parse_request(model_input, params: dict | None, default_k: int) -> tuple[list, RequestParams]:
    """A served model's input (a DataFrame with a `history` column) and params -> (histories,
    RequestParams); InputError naming what is wrong.

    Its signature is a contract with the past: a registered version runs the pyfunc file stored
    with it (models-from-code), which calls this function of the installed `cft_core`. New inputs
    get functions of their own (`exclude_lists`), so that older versions keep serving."""
    if "history" not in model_input.columns:
        raise InputError(f"input needs a `history` column (list of titles or item ids); got {list(model_input.columns)}")
    return list(model_input["history"]), RequestParams.parse(params, default_k)


def exclude_lists(model_input) -> list | None:
    """The optional `exclude` column of a served model's input: per row, items never to return
    (ids or titles; not shown to the model), e.g. everything the user already has. A missing
    value is an empty list; None when there is no such column."""
    if "exclude" not in model_input.columns:
        return None
    return [[] if e is None or (isinstance(e, float) and np.isnan(e)) else e for e in model_input["exclude"]]


def baseline_artifacts(artifacts: dict, model_config: dict | None) -> tuple[Catalogue, np.ndarray, int]:
    """What a served baseline loads (tasks/popularity_pyfunc.py, tasks/markov_pyfunc.py): its
    `Catalogue` (the source's item ids), the training counts [I] (a JSON list) and its default k.
    Called by registered pyfunc files, like `parse_request`: keep its signature."""
    catalogue = Catalogue(*served_catalogue(artifacts["catalogue"]))
    return catalogue, read_counts(artifacts["counts"]), int(dict(model_config or {}).get("top_k", 10))


def write_counts(path, counts: np.ndarray) -> str:
    """Write training counts [I] as the JSON list `read_counts` reads (what a version ships);
    returns the path as text, for an artifacts dict."""
    Path(path).write_text(json.dumps(np.asarray(counts).tolist()), encoding="utf-8")
    return str(path)


def read_counts(path) -> np.ndarray:
    """int64 [I]: training counts a registered version ships as a JSON list (a baseline's
    `counts`, an LLM's backfill `popularity`). Called by registered pyfunc files: keep its signature."""
    return np.asarray(json.loads(Path(path).read_text(encoding="utf-8")), dtype=np.int64)


def resolve_request(catalogue, model_input, params: dict | None, default_k: int) -> tuple[int, list, list[list[int]]]:
    """A served baseline's request read against its `Catalogue`: (k, the histories resolved
    (`Catalogue.resolve_histories`), per history the rows never to return: its own items unless
    `exclude_history` is false, and its `exclude` list); InputError naming what is wrong. Called
    by registered pyfunc files, like `parse_request`: keep its signature."""
    histories, p = parse_request(model_input, params, default_k)
    k = catalogue.check_k(p.k)
    resolved = catalogue.resolve_histories(histories, p.free_text)
    return k, resolved, catalogue.excluded_rows(resolved, p.exclude_history, exclude_lists(model_input))


def response_columns(recs: list[Recommendation]) -> dict[str, list]:
    """A served model's output, column by column: item_ids, titles, scores, unmatched per history."""
    return {f.name: [getattr(r, f.name) for r in recs] for f in fields(Recommendation)}


@dataclass(frozen=True)
class ServingSettings:
    """How a served model batches. From the environment (`from_env`), which `cft serve` sets from
    its options and `mlflow models serve` passes through.

    max_batch: histories ranked in one generation call, at most ($CFT_SERVE_MAX_BATCH). On 2 cores
      ranking costs ~2.3 s for one demo history alone and ~1.0 s per history in a batch of 16.
    max_queue: requests waiting, at most, before new ones get 503 ($CFT_SERVE_MAX_QUEUE).
    batch_wait_s: how long a batch that is not full waits for more requests ($CFT_SERVE_BATCH_WAIT_MS).
    """

    max_batch: int = 16
    max_queue: int = 64
    batch_wait_s: float = 0.05

    @classmethod
    def from_env(cls) -> ServingSettings:
        env = os.environ
        try:
            values = dict(max_batch=int(env.get("CFT_SERVE_MAX_BATCH", cls.max_batch)),
                          max_queue=int(env.get("CFT_SERVE_MAX_QUEUE", cls.max_queue)),
                          batch_wait_s=float(env.get("CFT_SERVE_BATCH_WAIT_MS", cls.batch_wait_s * 1000)) / 1000)
        except ValueError as error:
            raise ValueError(f"CFT_SERVE_* settings must be numbers: {error}") from None
        return cls(**values)  # range-checked in __post_init__

    def __post_init__(self):
        if self.max_batch < 1 or self.max_queue < 1 or self.batch_wait_s < 0:
            raise ValueError(f"max_batch and max_queue must be >= 1 and batch_wait_s >= 0, got "
                             f"{self.max_batch}, {self.max_queue} and {self.batch_wait_s}")


class Overloaded(RuntimeError):
    """The request queue is full: the server is answering all it can; retry later (HTTP 503)."""


class Retired(RuntimeError):
    """The recommender was closed (its model replaced); send the request to the current one."""


@dataclass
class _Request:
    prompts: list[str]  # one factual prompt per history
    exclude: list[list[int]]  # per history, catalogue rows never returned
    unmatched: list[list[str]]  # per history, titles that matched no catalogue item
    k: int
    future: Future = field(default_factory=Future)


_END = _Request(prompts=[], exclude=[], unmatched=[], k=0)  # queued by close(), after every request


@dataclass
class RankingStats:
    """What a `BatchingRecommender`'s worker has ranked so far (`cft serve`'s /metrics reads it):
    generation calls, the histories they ranked, and the seconds they took. Written by the
    worker thread only."""

    calls: int = 0
    histories: int = 0
    seconds: float = 0.0


class BatchingRecommender:
    """`Ranker.recommend` for many threads at once, batched (see the module docstring).

    max_batch: histories ranked together, at most (a single request with more runs alone);
    max_queue: requests waiting, at most, before new ones get `Overloaded`;
    batch_wait_s: how long a batch that is not full waits for more requests.
    The ranker should generate max_batch prompts per call (`RankingSettings.generation.batch_size`).
    """

    def __init__(self, ranker: Ranker, max_batch: int, max_queue: int, batch_wait_s: float = 0.0):
        ServingSettings(max_batch, max_queue, batch_wait_s)  # checks the values
        self.ranker, self.max_batch, self.max_queue = ranker, max_batch, max_queue
        self.batch_wait_s = batch_wait_s
        self._queue: queue.Queue[_Request] = queue.Queue(maxsize=max_queue)
        self._held: _Request | None = None  # taken from the queue but did not fit the last batch
        self.stats = RankingStats()
        # Histories per ranking call, the latest 1,000 (for tests and benchmarks; a server runs for months).
        self.batch_sizes: deque[int] = deque(maxlen=1000)
        self._closed = False
        self._lock = threading.Lock()  # orders submits against close(): none is queued after _END
        self._worker = threading.Thread(target=self._work, name="cft-batcher", daemon=True)
        self._worker.start()

    def submit(self, histories: Sequence[Sequence[str | int]], k: int, exclude_history: bool = True,
               free_text: bool = False, exclude: Sequence | None = None) -> Future:
        """Queue a request; its future gives one `Recommendation` per history (`exclude[b]`:
        items never returned for history b, as in `Ranker.recommend`). Raises InputError (bad
        input, before anything is queued), Overloaded (queue full) or Retired (closed)."""
        catalogue = self.ranker.catalogue
        catalogue.check_k(k)
        resolved = catalogue.resolve_histories(histories, free_text)
        request = _Request(prompts=self.ranker.prompts_for([r.titles for r in resolved]),
                           exclude=catalogue.excluded_rows(resolved, exclude_history, exclude),
                           unmatched=[r.unmatched for r in resolved], k=k)
        if not request.prompts:
            request.future.set_result([])
            return request.future
        with self._lock:
            if self._closed:
                raise Retired("this model was replaced")
            try:
                self._queue.put_nowait(request)
            except queue.Full:
                raise Overloaded(f"{self.max_queue} requests are already waiting; retry in a few seconds") from None
        return request.future

    def close(self, timeout: float | None = None) -> bool:
        """Refuse new requests (`Retired`), answer the queued ones, end the worker; wait up to
        `timeout` seconds (None: until done) and say whether the worker has ended."""
        with self._lock:
            if not self._closed:
                self._closed = True
                # Blocks while the queue is full; the worker is draining it. No submit can follow.
                self._queue.put(_END)
        self._worker.join(timeout)
        return not self._worker.is_alive()

    @property
    def waiting(self) -> int:
        """Requests queued and not yet in a ranking call (`max_queue` at most, plus one held over)."""
        return self._queue.qsize() + (self._held is not None and self._held is not _END)

    def recommend(self, histories: Sequence[Sequence[str | int]], k: int, exclude_history: bool = True,
                  free_text: bool = False, exclude: Sequence | None = None) -> list[Recommendation]:
        """`submit` and wait for the answer (what a request thread does)."""
        return self.submit(histories, k, exclude_history, free_text, exclude).result()

    def _next_batch(self) -> list[_Request] | None:
        """Block for one request, then take what else comes within batch_wait_s, up to max_batch
        histories. None once close() was called and every request before it was taken."""
        first = self._held or self._queue.get()
        self._held = None
        if first is _END:
            return None
        deadline = time.monotonic() + self.batch_wait_s
        batch, size = [first], len(first.prompts)
        while size < self.max_batch:
            try:
                request = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if request is _END or size + len(request.prompts) > self.max_batch:
                self._held = request  # first in the next batch (or the end, after this batch)
                break
            batch.append(request)
            size += len(request.prompts)
        return batch

    def _work(self) -> None:
        while (batch := self._next_batch()) is not None:
            prompts = [p for r in batch for p in r.prompts]
            self.batch_sizes.append(len(prompts))
            started = time.perf_counter()
            try:
                ranking = self.ranker.rank(prompts, depth=max(r.k for r in batch),
                                           exclude=[rows for r in batch for rows in r.exclude])
            except BaseException as error:  # the callers' problem to report; the worker goes on
                for r in batch:
                    r.future.set_exception(error)
                continue
            finally:
                self.stats.calls += 1
                self.stats.histories += len(prompts)
                self.stats.seconds += time.perf_counter() - started
            start = 0
            for r in batch:
                part = slice(start, start + len(r.prompts))
                start = part.stop
                mine = Ranking(ranking.rows[part], ranking.scores[part], None, ranking.beams[part])
                r.future.set_result(self.ranker.catalogue.recommendations(mine, depth=r.k, unmatched=r.unmatched))
