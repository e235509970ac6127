"""Serving over HTTP, as clients see it: `cft serve`'s app (cft_cli/server.py) and MLflow's own
scoring server, both on a registered tiny model. Mistakes get 4xx answers that name the problem
and carry no stack trace or server path; a full queue answers 503 at once."""

from __future__ import annotations

import threading
import time

import numpy as np
import pandas as pd
import pytest

from tests.conftest import free_port, mlflow_uris_restored, wait_until_served
from tests.train.conftest import make_config
from tests.train.test_registry import new_run, registered


@pytest.fixture(scope="module")
def served(tmp_path_factory, small_sequences):
    """(model URI of a registered constrained tiny model, catalogue DataFrame)."""
    import mlflow

    from tasks.training import model_folder

    tmp = tmp_path_factory.mktemp("serving")
    seq, _ = small_sequences
    cfg = make_config(tmp)
    cfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"num_beams": 2, "num_return_sequences": 2,
                                                                      "max_new_tokens": 8, "min_new_tokens": 1})})
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    with mlflow_uris_restored():  # this module's store, not the next modules' default
        version = registered(cfg, uri, model_folder(cfg, seq), seq, new_run(uri)).version
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        yield f"models:/{cfg.registered_model_name()}/{version}", pd.read_parquet(seq / "catalogue.parquet")


@pytest.fixture(scope="module")
def client(served):
    from fastapi.testclient import TestClient

    from cft_cli.server import create_app

    with TestClient(create_app(served[0])) as c:
        yield c


def scrape(client) -> dict[tuple[str, tuple], float]:
    """GET /metrics, parsed by prometheus_client: (sample name, sorted labels) -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


def no_trace(response) -> str:
    text = response.text
    assert "Traceback" not in text and "/work" not in text and ".py" not in text, text
    return response.json()["message"]


def test_recommend_and_invocations_answer_like_the_model(client, served):
    import mlflow

    _, catalogue = served
    history = catalogue["title"].tolist()[:3]
    one = client.post("/recommend", json={"history": history, "k": 2})
    assert one.status_code == 200
    body = one.json()
    expected = mlflow.pyfunc.load_model(served[0]).predict(pd.DataFrame({"history": [history]}), params={"k": 2})
    assert body["item_ids"] == list(expected["item_ids"][0]) and body["unmatched"] == []
    scored = [s for s in body["scores"] if s is not None]  # (None: popular items after the beams, at the end)
    assert scored == sorted(scored, reverse=True) and body["scores"][len(scored):] == [None] * (2 - len(scored))
    records = client.post("/invocations", json={"dataframe_records": [{"history": history}, {"history": ["Nope", history[0]]}],
                                                "params": {"k": 2}})
    assert records.status_code == 200
    predictions = records.json()["predictions"]
    assert predictions[0]["item_ids"] == body["item_ids"] and predictions[1]["unmatched"] == ["Nope"]
    split = client.post("/invocations", json={"dataframe_split": {"columns": ["history"], "data": [[history]]},
                                              "params": {"k": 2}})
    assert split.json()["predictions"][0]["item_ids"] == body["item_ids"]
    assert one.headers["X-Model-Version"] == records.headers["X-Model-Version"] == served[0].rsplit("/", 1)[1]
    assert client.get("/health").json() == {"status": "ok", "model": served[0], "version": served[0].rsplit("/", 1)[1],
                                            "method": "constrained", "catalogue": len(catalogue)}
    # `exclude`: items the user already has, never returned; the same answer in every form.
    best = body["item_ids"][0]
    model = mlflow.pyfunc.load_model(served[0])
    expected = model.predict(pd.DataFrame({"history": [history], "exclude": [[best]]}), params={"k": 2})
    assert best not in list(expected["item_ids"][0])
    forms = [("/recommend", {"history": history, "exclude": [best], "k": 2}),
             ("/invocations", {"dataframe_records": [{"history": history, "exclude": [best]}], "params": {"k": 2}}),
             ("/invocations", {"dataframe_split": {"columns": ["history", "exclude"], "data": [[history, [best]]]},
                               "params": {"k": 2}}),
             ("/invocations", {"inputs": {"history": [history], "exclude": [[best]]}, "params": {"k": 2}})]
    for path, request in forms:
        answer = client.post(path, json=request).json()
        answer = answer["predictions"][0] if path == "/invocations" else answer
        assert answer["item_ids"] == list(expected["item_ids"][0]), (path, request)
    # Records where only some rows exclude something: the others say `null` (a missing key is
    # NaN to MLflow's schema check, which refuses it).
    mixed = client.post("/invocations", json={"dataframe_records": [{"history": history, "exclude": [best]},
                                                                    {"history": history, "exclude": None}],
                                              "params": {"k": 2}})
    assert mixed.status_code == 200, mixed.text
    assert [p["item_ids"] for p in mixed.json()["predictions"]] == [list(expected["item_ids"][0]), body["item_ids"]]
    # A user who touched an item newer than the model (not in its catalogue) still gets an answer:
    # the item is left out, as if never there, and reported.
    newer = client.post("/recommend", json={"history": [*history, "99999"], "k": 2})
    assert newer.status_code == 200 and newer.json()["unmatched"] == ["99999"]
    assert newer.json()["item_ids"] == body["item_ids"]
    # A new user, and one whose only item is newer than the model: the no-history ranking.
    new_user = client.post("/recommend", json={"history": [], "k": 2}).json()
    only_newer = client.post("/recommend", json={"history": ["99999"], "k": 2}).json()
    assert new_user["item_ids"] == only_newer["item_ids"] and only_newer["unmatched"] == ["99999"]
    assert len(new_user["item_ids"]) > 0


def test_metrics_count_the_answers_their_histories_and_the_served_model(served):
    """GET /metrics: answers by endpoint and status, their times, the history entries the catalogue
    knew and did not, the batching worker's calls, the served version; counted per app."""
    from fastapi.testclient import TestClient

    from cft_cli.server import create_app

    uri, catalogue = served
    version = uri.rsplit("/", 1)[1]
    titles = catalogue["title"].tolist()[:3]
    with TestClient(create_app(uri, follow_every_s=0)) as client:
        before = scrape(client)
        assert before[("cft_model_info", (("method", "constrained"), ("model", uri), ("version", version)))] == 1
        assert before[("cft_model_catalogue_items", ())] == len(catalogue)
        assert before[("cft_queue_requests", ())] == 0 and before[("cft_queue_capacity", ())] == 64
        assert before[("cft_ranking_calls_total", (("version", version),))] == 0
        assert before[("cft_request_duration_seconds_count", (("endpoint", "/recommend"),))] == 0
        assert not any(name == "cft_requests_total" for name, _ in before)  # nothing answered yet
        assert before[("process_resident_memory_bytes", ())] > 0

        assert client.post("/recommend", json={"history": [*titles, "Nope"], "k": 2}).status_code == 200
        assert client.post("/invocations", json={"dataframe_records": [{"history": titles}, {"history": ["Nah", titles[0]]}],
                                                 "params": {"k": 2}}).status_code == 200
        assert client.post("/recommend", json={"history": titles, "k": 0}).status_code == 400
        assert client.post("/recommend", content=b"{").status_code == 400
        after = scrape(client)
    assert after[("cft_requests_total", (("code", "200"), ("endpoint", "/recommend")))] == 1
    assert after[("cft_requests_total", (("code", "400"), ("endpoint", "/recommend")))] == 2
    assert after[("cft_requests_total", (("code", "200"), ("endpoint", "/invocations")))] == 1
    assert after[("cft_request_duration_seconds_count", (("endpoint", "/recommend"),))] == 3
    assert after[("cft_request_duration_seconds_sum", (("endpoint", "/invocations"),))] > 0
    assert not any(name.endswith("_created") for name, _ in after)  # no creation-time gauge per series
    assert after[("cft_histories_total", (("endpoint", "/recommend"),))] == 1  # answered only
    assert after[("cft_histories_total", (("endpoint", "/invocations"),))] == 2
    assert after[("cft_history_entries_total", (("matched", "true"),))] == 3 + 3 + 1
    assert after[("cft_history_entries_total", (("matched", "false"),))] == 2  # "Nope", "Nah"
    # One generation call per request: /recommend's one history, then /invocations' two together.
    assert after[("cft_ranking_calls_total", (("version", version),))] == 2
    assert after[("cft_ranked_histories_total", (("version", version),))] == 3
    assert after[("cft_ranking_seconds_total", (("version", version),))] > 0
    assert after[("cft_model_switches_total", ())] == 0


@pytest.mark.parametrize("path, body, status, message", [
    ("/recommend", {"history": ["1"], "k": 0}, 400, "k must be between 1 and the catalogue size"),
    ("/recommend", {"history": ["1"], "k": 10**6}, 400, "k must be between 1 and the catalogue size"),
    ("/recommend", {"history": "Toy Story"}, 400, "must be a list of titles or item ids, got str"),
    ("/recommend", {"items": []}, 400, "the body needs a `history`"),
    ("/recommend", {"history": ["1"], "top": 3}, 400, "unknown param(s) top"),
    ("/recommend", {"history": ["1"], "exclude": "1"}, 400, "must be a list of titles or item ids, got str"),
    ("/invocations", {"inputs": {"history": [["1"]], "exclude": [["2"], ["3"]]}}, 400,
     "inputs.exclude must be a list of one list per history (1)"),
    ("/invocations", {"dataframe_records": [{"user": 1}]}, 400, "dataframe_records must be a list of objects"),
    ("/invocations", {"instances": []}, 400, "unknown field(s) instances"),
    ("/recommend", b"{not json", 400, "the body is not JSON"),
    ("/recommend", b'{"history": ["Caf\xe9"]}', 415, "the body is not UTF-8"),
    ("/recommend", b"[1, 2]", 400, "the body must be a JSON object"),
])
def test_mistakes_get_4xx_naming_the_problem_without_a_trace(client, path, body, status, message):
    response = client.post(path, **({"content": body} if isinstance(body, bytes) else {"json": body}))
    assert response.status_code == status
    assert message in no_trace(response)


@pytest.mark.timeout(180)  # a hang fails here, not the CI job
def test_a_full_queue_answers_503_at_once(served, monkeypatch):
    """A server with room for 2 waiting requests: one ranking (held), two waiting, the next refused."""
    from fastapi.testclient import TestClient

    from cft_cli.server import create_app

    monkeypatch.setenv("CFT_SERVE_MAX_QUEUE", "2")
    body = {"history": [served[1]["title"][0]], "k": 2}
    with TestClient(create_app(served[0])) as client:
        batcher = client.app.state.served.current.batching
        assert batcher.max_queue == 2
        rank, entered, opened = batcher.ranker.rank, threading.Event(), threading.Event()
        batcher.ranker.rank = lambda *a, **k: (entered.set(), opened.wait(60), rank(*a, **k))[2]
        answers = []
        threads = [threading.Thread(target=lambda: answers.append(client.post("/recommend", json=body)))
                   for _ in range(3)]
        try:
            threads[0].start()
            assert entered.wait(30)  # the first request is ranking (held) before the others arrive,
            for t in threads[1:]:  # so they wait in the queue rather than join its batch
                t.start()
            deadline = time.time() + 30
            while batcher._queue.qsize() < 2 and time.time() < deadline:
                time.sleep(0.05)
            assert batcher._queue.qsize() == 2
            started = time.perf_counter()
            refused = client.post("/recommend", json=body)
            assert time.perf_counter() - started < 5
            assert refused.status_code == 503 and refused.headers["Retry-After"] == "5"
            assert "requests are already waiting" in no_trace(refused)
        finally:
            opened.set()
            for t in threads:
                t.join(60)
            batcher.ranker.rank = rank
    assert [a.status_code for a in answers] == [200] * 3


def test_histories_are_read_off_the_event_loop(served):
    """Resolving a request's histories and fitting them to cutoff_len tokenises them (up to 1 MB
    of text: ~2 s): it runs in a worker thread, so while one request's histories are held there,
    the server still answers /health."""
    from fastapi.testclient import TestClient

    from cft_cli.server import create_app

    body = {"history": [served[1]["title"][0]], "k": 2}
    with TestClient(create_app(served[0])) as client:
        ranker = client.app.state.served.current.batching.ranker
        prompts_for, entered, opened = ranker.prompts_for, threading.Event(), threading.Event()
        ranker.prompts_for = lambda *a, **k: (entered.set(), opened.wait(60), prompts_for(*a, **k))[2]
        answers, health = [], []
        held = threading.Thread(target=lambda: answers.append(client.post("/recommend", json=body)))
        try:
            held.start()
            assert entered.wait(30)
            probe = threading.Thread(target=lambda: health.append(client.get("/health")))
            probe.start()
            probe.join(10)  # on the event loop, the held request would keep /health waiting
            assert [h.status_code for h in health] == [200]
        finally:
            opened.set()
            held.join(60)
            ranker.prompts_for = prompts_for
    assert [a.status_code for a in answers] == [200]


def test_mlflow_scoring_server_answers_400_with_the_reason_and_no_trace(served):
    """`mlflow models serve` runs this very app (mlflow.pyfunc.scoring_server)."""
    import mlflow
    from fastapi.testclient import TestClient
    from mlflow.pyfunc import scoring_server

    with TestClient(scoring_server.init(mlflow.pyfunc.load_model(served[0]))) as c:
        bad = c.post("/invocations", json={"dataframe_records": [{"history": ["1"]}], "params": {"k": 0}})
        assert bad.status_code == 400
        assert "k must be between 1 and the catalogue size" in bad.json()["message"]
        assert "stack_trace" not in bad.json() and "Traceback" not in bad.text
        good = c.post("/invocations", json={"dataframe_records": [{"history": ["1"]}], "params": {"k": 2}})
        assert good.status_code == 200 and len(good.json()["predictions"][0]["item_ids"]) == 2
        # `exclude` in some rows only: the others say null; a missing key is NaN to its schema check.
        rows = [{"history": ["1"], "exclude": ["2"]}, {"history": ["1"], "exclude": None}]
        mixed = c.post("/invocations", json={"dataframe_records": rows, "params": {"k": 2}})
        assert mixed.status_code == 200, mixed.text
        alone, together = good.json()["predictions"][0], mixed.json()["predictions"][1]
        # The same items; the scores to float rounding (the rows are searched in one batch now: they
        # exclude different items, so they are two searches, not one shared).
        assert {**together, "scores": None} == {**alone, "scores": None}
        np.testing.assert_allclose(together["scores"], alone["scores"], rtol=1e-5)
        missing = c.post("/invocations", json={"dataframe_records": [rows[0], {"history": ["1"]}], "params": {"k": 2}})
        assert missing.status_code == 400  # what docs/serving.md tells clients of `mlflow models serve` to avoid


@pytest.mark.timeout(300)
def test_a_served_alias_is_followed_without_a_restart(tmp_path, small_sequences):
    """`cft serve` of models:/<name>@champion: the gate's, a promotion's or a rollback's new
    champion answers within a check, with no restart; a version that does not load leaves the
    current one serving; the replaced model's worker ends (its memory is freed)."""
    import shutil
    from urllib.parse import urlparse

    import mlflow
    from fastapi.testclient import TestClient

    from cft_cli.server import create_app
    from tasks import registry
    from tasks.training import model_folder

    seq, _ = small_sequences
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = make_config(tmp_path)
    cfg = cfg.model_copy(update={
        "eval": cfg.eval.model_copy(update={"num_beams": 2, "num_return_sequences": 2, "max_new_tokens": 8,
                                            "min_new_tokens": 1}),
        "tracking": cfg.tracking.model_copy(update={"enabled": True, "tracking_uri": uri})})
    name = cfg.registered_model_name()
    title = pd.read_parquet(seq / "catalogue.parquet")["title"][0]

    def wait_for(client, version: str) -> dict:
        deadline = time.time() + 120
        while (health := client.get("/health").json())["version"] != version and time.time() < deadline:
            time.sleep(0.1)
        return health

    with mlflow_uris_restored(uri):
        llm = str(registered(cfg, uri, model_folder(cfg, seq), seq, new_run(uri)).version)
        broken = str(registered(cfg, uri, model_folder(cfg, seq), seq, new_run(uri)).version)
        baseline = registry.register_baseline(cfg, seq, "fp", "popularity")  # the first champion
        source = mlflow.MlflowClient().get_model_version(name, broken).source.removeprefix("models:/")
        shutil.rmtree(urlparse(mlflow.get_logged_model(source).artifact_location).path)  # cannot load now

        with TestClient(create_app(f"models:/{name}@champion", follow_every_s=0.1)) as client:
            health = client.get("/health").json()
            assert (health["version"], health["method"]) == (baseline, "popularity")
            answer = client.post("/recommend", json={"history": [title], "k": 2})
            assert answer.status_code == 200 and answer.headers["X-Model-Version"] == baseline

            registry.promote(cfg, name, llm, "the LLM is ready", uri)
            health = wait_for(client, llm)  # found by the app's own checks
            assert (health["version"], health["method"]) == (llm, "constrained")
            answer = client.post("/recommend", json={"history": [title], "k": 2})
            assert answer.status_code == 200 and answer.headers["X-Model-Version"] == llm
            alone = mlflow.pyfunc.load_model(f"models:/{name}/{llm}").predict(
                pd.DataFrame({"history": [[title]]}), params={"k": 2})
            assert answer.json()["item_ids"] == list(alone["item_ids"][0])

        with TestClient(create_app(f"models:/{name}@champion", follow_every_s=0)) as client:  # checks by hand
            served = client.app.state.served
            replaced = served.current.batching
            registry.promote(cfg, name, broken, "a bad release", uri)
            assert served.refresh(every_s=60) is False  # tried, did not load
            health = client.get("/health").json()
            assert health["failed_versions"] == [broken] and health["version"] == llm  # still serving
            assert client.post("/recommend", json={"history": [title], "k": 2}).headers["X-Model-Version"] == llm
            assert served.failed[broken][1] == 1
            assert served.refresh(every_s=60) is False and served.failed[broken][1] == 1  # backing off: not tried
            metrics = scrape(client)
            assert metrics[("cft_model_load_failures_total", ())] == 1 and metrics[("cft_model_failed_versions", ())] == 1
            assert metrics[("cft_model_switches_total", ())] == 0

            registry.rollback(cfg, name, "it does not load", uri)  # back to the LLM: nothing to do
            assert served.refresh() is False and "failed_versions" not in client.get("/health").json()
            registry.rollback(cfg, name, "back to the baseline", uri)  # the first champion
            assert served.refresh() is True
            health = client.get("/health").json()
            assert (health["version"], health["method"]) == (baseline, "popularity")
            assert not replaced._worker.is_alive()  # the LLM's worker ended once the baseline served
            metrics = scrape(client)
            assert metrics[("cft_model_switches_total", ())] == 1 and metrics[("cft_model_failed_versions", ())] == 0
            assert metrics[("cft_model_info", (("method", "popularity"), ("model", f"models:/{name}/{baseline}"),
                                               ("version", baseline)))] == 1
            assert not any(name.startswith(("cft_queue", "cft_ranking")) for name, _ in metrics)  # no batching worker


def test_a_server_started_before_the_first_champion_waits_for_it(tmp_path, small_sequences):
    """`cft serve --wait` (the local stack's recommender): 503 while no version has the alias,
    then the first champion; without `wait` a missing model is an error at start."""
    from fastapi.testclient import TestClient
    from mlflow.exceptions import MlflowException

    from cft_cli.server import create_app
    from tasks import registry

    seq, _ = small_sequences
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = make_config(tmp_path, tracking={"enabled": True, "tracking_uri": uri})
    name = cfg.registered_model_name()
    with mlflow_uris_restored(uri):
        with pytest.raises(MlflowException, match=f"name={name} not found"):
            create_app(f"models:/{name}@champion")
        with TestClient(create_app(f"models:/{name}@champion", follow_every_s=0, wait=True)) as client:
            served = client.app.state.served
            health = client.get("/health")
            assert health.status_code == 503 and health.json()["status"] == "waiting"
            answer = client.post("/recommend", json={"history": ["1"], "k": 2})
            assert answer.status_code == 503 and answer.headers["Retry-After"] == "5"
            assert f"nothing to serve yet: no version is models:/{name}@champion" in no_trace(answer)
            assert served.refresh() is False  # still nothing: no error either
            metrics = scrape(client)  # answers while waiting too: 503s are what an alert wants to see
            assert metrics[("cft_requests_total", (("code", "503"), ("endpoint", "/recommend")))] == 1
            assert not any(name == "cft_model_info" for name, _ in metrics)
            version = registry.register_baseline(cfg, seq, "fp", "popularity")  # the first champion
            assert served.refresh() is True
            health = client.get("/health")
            assert health.status_code == 200 and health.json()["version"] == version
            assert client.post("/recommend", json={"history": ["1"], "k": 2}).headers["X-Model-Version"] == version


def test_a_registry_server_that_stops_answering_fails_each_check_at_once(tmp_path, small_sequences, caplog):
    """The recommender follows its alias through a real MLflow server. When that server stops, every
    check fails at once, says why in the log and counts in /metrics, and the served version goes on
    answering. (MLflow's client retried the refused connection for minutes first: no warning, no count.)"""
    import os
    import signal
    import subprocess
    import sys

    from fastapi.testclient import TestClient

    from cft_cli.server import create_app
    from cft_cli.stack import JOB_EXECUTION_ENV
    from tasks import registry

    seq, _ = small_sequences
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = make_config(tmp_path, tracking={"enabled": True, "tracking_uri": store})
    name = cfg.registered_model_name()
    with mlflow_uris_restored(store):
        version = registry.register_baseline(cfg, seq, "fp", "popularity")  # the champion, its artifacts local
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store, "--host",
                               "127.0.0.1", "--port", str(port), "--workers", "1"],
                              env={**os.environ, JOB_EXECUTION_ENV: "false"},  # (as `cft stack up` starts it)
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    http = f"http://127.0.0.1:{port}"
    try:
        wait_until_served(f"{http}/health", server)
        with mlflow_uris_restored(http), TestClient(create_app(f"models:/{name}@champion", follow_every_s=0.2)) as client:
            assert client.get("/health").json()["version"] == version
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=60)
            deadline = time.time() + 60
            while scrape(client)[("cft_model_check_failures_total", ())] < 2:
                assert time.time() < deadline, "no failed check counted a minute after the server stopped"
                time.sleep(0.2)
            answer = client.post("/recommend", json={"history": ["1"], "k": 2})
            assert answer.status_code == 200 and answer.headers["X-Model-Version"] == version
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(f"the MLflow server at {http} does not answer ([Errno 111] Connection refused)" in w
               and f"still serving version {version}" in w for w in warnings), warnings
