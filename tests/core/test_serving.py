"""Serving (cft_core/serving.py): request params, and concurrent requests batched into shared
ranking calls that answer exactly what each request would get alone, with a bounded queue."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from cft_core.grounding import embed_texts
from cft_core.prompts import PromptBuilder
from cft_core.ranking import InputError, Ranker
from cft_core.serving import (
    BatchingRecommender,
    Overloaded,
    RequestParams,
    Retired,
    exclude_lists,
    parse_request,
)
from cft_core.tiny import build_tiny_model
from tests.conftest import TITLES
from tests.core.test_ranking import IDS, ranking_settings


@pytest.fixture(scope="module", params=["grounding", "constrained"])
def ranker(request, tiny_tokenizer):
    torch.manual_seed(0)
    model = build_tiny_model(len(tiny_tokenizer), hidden_size=32, num_layers=2, num_heads=4, seed=0).eval()
    emb = embed_texts(model, tiny_tokenizer, TITLES) if request.param == "grounding" else None
    return Ranker(model, tiny_tokenizer, PromptBuilder.for_domain("movies"), IDS, TITLES,
                  ranking_settings(request.param), emb)


class Gate:
    """Holds the batcher's worker inside its first ranking call until opened, so that the
    requests sent meanwhile are waiting together when it comes back (deterministic batching)."""

    def __init__(self, ranker, monkeypatch):
        self.entered, self.opened, rank = threading.Event(), threading.Event(), ranker.rank

        def held_rank(*args, **kwargs):
            self.entered.set()
            self.opened.wait(30)
            return rank(*args, **kwargs)

        monkeypatch.setattr(ranker, "rank", held_rank)


def test_params_are_checked_and_named():
    assert RequestParams.parse(None, 10) == RequestParams(k=10, exclude_history=True, free_text=False)
    assert RequestParams.parse({"k": 3, "free_text": True, "exclude_history": None}, 10) == RequestParams(3, True, True)
    for params, message in [({"k": "ten"}, "param k must be an integer, got 'ten'"),
                            ({"k": True}, "param k must be an integer"),
                            ({"exclude_history": "no"}, "param exclude_history must be true or false, got 'no'"),
                            ({"top": 5}, "unknown param\\(s\\) top; known: k, exclude_history, free_text")]:
        with pytest.raises(InputError, match=message):
            RequestParams.parse(params, 10)


def test_a_request_may_carry_items_to_exclude():
    import pandas as pd

    plain = pd.DataFrame({"history": [["Heat"], ["Babe"]]})
    histories, p = parse_request(plain, {"k": 2}, 10)  # (histories, params): stored pyfunc files unpack two
    assert histories == [["Heat"], ["Babe"]] and p.k == 2 and exclude_lists(plain) is None
    frame = pd.DataFrame({"history": [["Heat"], ["Babe"]], "exclude": [["Seven"], None]})  # None: nothing
    assert exclude_lists(frame) == [["Seven"], []]


def test_concurrent_requests_share_one_ranking_call_and_get_their_own_answers(ranker, monkeypatch):
    requests = [(["Heat"], 3, True, ["Seven", "Babe"]), (["Babe", "Seven"], 5, True, []), (["Toy Story"], 2, False, ["Heat"]),
                (["Copycat", "Heat", "GoldenEye"], 4, True, [])]
    alone = [ranker.recommend([h], k=k, exclude_history=ex, exclude=[excl])[0] for h, k, ex, excl in requests]
    gate = Gate(ranker, monkeypatch)
    batcher = BatchingRecommender(ranker, max_batch=8, max_queue=8)
    first = batcher.submit([["Usual Suspects, The"]], k=3)
    assert gate.entered.wait(30)  # the worker holds the first request in its ranking call
    futures = [batcher.submit([h], k=k, exclude_history=ex, exclude=[excl]) for h, k, ex, excl in requests]
    gate.opened.set()
    got = [f.result(timeout=60)[0] for f in futures]
    assert list(batcher.batch_sizes) == [1, 4]  # the four waiting requests were ranked together
    assert [g.item_ids for g in got] == [a.item_ids for a in alone]  # each as if alone (own k and exclusions)
    assert not {"Seven", "Babe"} & set(got[0].titles) and "Heat" not in got[2].titles
    for g, a in zip(got, alone, strict=True):
        assert g.scores == pytest.approx(a.scores, rel=1e-4)
    assert len(first.result(timeout=60)[0].item_ids) > 0


def test_a_full_queue_refuses_at_once_and_the_waiting_requests_are_answered(ranker, monkeypatch):
    gate = Gate(ranker, monkeypatch)
    batcher = BatchingRecommender(ranker, max_batch=2, max_queue=2)
    running = batcher.submit([["Heat"]], k=2)
    assert gate.entered.wait(30)
    waiting = [batcher.submit([["Babe"]], k=2), batcher.submit([["Seven"]], k=2)]  # the queue is full now
    assert batcher.waiting == 2 and batcher.stats.calls == 0  # (the running call is not counted until it ends)
    started = time.perf_counter()
    with pytest.raises(Overloaded, match="2 requests are already waiting"):
        batcher.submit([["Copycat"]], k=2)
    assert time.perf_counter() - started < 1.0  # refused, not queued behind the others
    gate.opened.set()
    assert all(len(f.result(timeout=60)[0].item_ids) > 0 for f in [running, *waiting])
    assert list(batcher.batch_sizes) == [1, 2]
    assert batcher.waiting == 0
    assert (batcher.stats.calls, batcher.stats.histories) == (2, 3) and batcher.stats.seconds > 0


@pytest.mark.parametrize(("max_batch", "batches"), [(1, [1, 1, 1]), (4, [1, 2])])  # the end found alone / in a batch
def test_close_answers_the_queued_requests_refuses_new_ones_and_ends_the_worker(ranker, monkeypatch, max_batch, batches):
    """What a server replacing its model relies on: nothing queued is lost, nothing is queued
    after, and the worker (which holds the model) ends."""
    gate = Gate(ranker, monkeypatch)
    batcher = BatchingRecommender(ranker, max_batch=max_batch, max_queue=4, batch_wait_s=0.05)
    running = batcher.submit([["Heat"]], k=2)
    assert gate.entered.wait(30)
    waiting = [batcher.submit([["Babe"]], k=2), batcher.submit([["Seven"]], k=2)]
    closing = threading.Thread(target=batcher.close)
    closing.start()
    deadline = time.time() + 30
    while not batcher._closed and time.time() < deadline:
        time.sleep(0.01)
    with pytest.raises(Retired, match="replaced"):
        batcher.submit([["Copycat"]], k=2)
    assert closing.is_alive()  # close() waits for the queued requests
    gate.opened.set()
    closing.join(60)
    assert not closing.is_alive() and not batcher._worker.is_alive()
    assert all(len(f.result(timeout=1)[0].item_ids) > 0 for f in [running, *waiting])
    assert list(batcher.batch_sizes) == batches
    assert batcher.close(timeout=1)  # again: nothing to do


def test_bad_input_is_refused_before_the_queue(ranker):
    batcher = BatchingRecommender(ranker, max_batch=4, max_queue=4)
    for histories, k, message in [([["Heat"]], 0, "k must be between 1"), ([[1.5]], 3, "is a float"),
                                  (["Heat"], 3, "must be a list")]:
        with pytest.raises(InputError, match=message):
            batcher.submit(histories, k)
    assert list(batcher.batch_sizes) == []  # nothing reached the ranking


def test_a_failed_ranking_fails_its_batch_and_the_worker_goes_on(ranker, monkeypatch):
    rank, calls = ranker.rank, []

    def failing_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("out of memory")
        return rank(*args, **kwargs)

    monkeypatch.setattr(ranker, "rank", failing_once)
    batcher = BatchingRecommender(ranker, max_batch=4, max_queue=4)
    with pytest.raises(RuntimeError, match="out of memory"):
        batcher.recommend([["Heat"]], k=2)
    assert len(batcher.recommend([["Heat"]], k=2)[0].item_ids) > 0
    assert (batcher.stats.calls, batcher.stats.histories) == (2, 2)  # the failed call counts too


def test_a_batch_waits_briefly_for_requests_that_arrive_just_after_the_first(ranker):
    """Clients that resubmit as soon as they are answered arrive a few ms apart: with a batch wait
    they share one ranking call; without it the first one is ranked alone."""
    for wait, expected in [(2.0, [2]), (0.0, [1, 1])]:
        batcher = BatchingRecommender(ranker, max_batch=4, max_queue=4, batch_wait_s=wait)
        first = batcher.submit([["Heat"]], k=2)
        time.sleep(0.3)  # well inside the wait
        if wait == 0.0:  # without a wait the first request is ranked as soon as the worker takes it
            while not batcher.batch_sizes:
                time.sleep(0.01)
        second = batcher.submit([["Babe"]], k=2)
        assert all(len(f.result(timeout=60)[0].item_ids) == 2 for f in [first, second])
        assert list(batcher.batch_sizes) == expected


def test_a_full_batch_does_not_wait(ranker):
    batcher = BatchingRecommender(ranker, max_batch=2, max_queue=4, batch_wait_s=30.0)
    started = time.perf_counter()
    batcher.recommend([["Heat"], ["Babe"]], k=2)
    assert time.perf_counter() - started < 20.0  # ranked at once, not after the 30 s wait
    assert list(batcher.batch_sizes) == [2]


def test_serving_settings_come_from_the_environment(monkeypatch):
    from cft_core.serving import ServingSettings

    assert ServingSettings.from_env() == ServingSettings(max_batch=16, max_queue=64, batch_wait_s=0.05)
    monkeypatch.setenv("CFT_SERVE_MAX_BATCH", "4")
    monkeypatch.setenv("CFT_SERVE_BATCH_WAIT_MS", "0")
    assert ServingSettings.from_env() == ServingSettings(max_batch=4, max_queue=64, batch_wait_s=0.0)
    monkeypatch.setenv("CFT_SERVE_MAX_QUEUE", "many")
    with pytest.raises(ValueError, match="must be numbers"):
        ServingSettings.from_env()
