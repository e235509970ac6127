"""End to end with real components: Prefect server + process worker, MLflow server, deployments
from prefect.yaml, the smoke profile, and the registry gate.

    cft stack up (servers, pool, deploy, recommender) / status
    -> prefect deployment run cft/full-pipeline -> worker
    -> MLflow: run with params and metrics, the popularity baseline as first champion beside the
       Markov-chain baseline, the model's version gated against them
    -> cft/scheduled-retrain as of a date, warm-starting from the champion -> one more gated
       version, on its own data window (a chain of warm starts: tests/train/test_replay.py)
    -> cft recommend against the champion
    -> the stack's recommender (cft serve --wait): 503 before the first champion, then serving
       whichever version the alias names, without a restart
    -> MLflow's webhook: each move of the champion alias reaches a receiver, signed with the
       webhook's secret, and still signed after `cft stack down` and `up`
    -> cft alerts: a run that fails through the worker is posted to a receiver by the server
    -> cft stack down / status
and a run left Running by a stopped stack, which `cft stack up` sets Crashed to free its slot; one
whose heartbeats stop while the stack runs, which the server's automation sets Crashed and `cft
alerts` reports; and a run no worker takes, which `cft alerts` reports once it has waited.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
from typer.testing import CliRunner

from cft_cli.deploy import console_script
from cft_cli.main import app
from cft_cli.stack import POOL, PROJECT_ROOT, Stack, down
from tests.conftest import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def api(stack: Stack, path: str, body: dict | None = None) -> dict | list:
    req = urllib.request.Request(f"{stack.prefect_api}{path}", method="POST" if body is not None else "GET",
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:  # noqa: S310 (loopback)
        return json.loads(r.read())


def run_pipeline(stack: Stack, overrides: dict, deployment: str = "cft/full-pipeline", expect: str = "COMPLETED",
                 **params) -> tuple[str, str]:
    """`prefect deployment run <deployment>`, then a worker until the run is done, which must end in
    state `expect`; returns the run id and the worker's output (which holds the flow run's)."""
    env = stack.env()
    params = json.dumps({"profile": "configs/smoke.yaml", "overrides": overrides, **params})
    res = subprocess.run([console_script("prefect"), "deployment", "run", deployment, "--params", params],
                         env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    run_id = re.search(r"UUID:\s*([0-9a-f-]{36})", res.stdout).group(1)
    worker = subprocess.run([console_script("prefect"), "worker", "start", "--pool", POOL, "--run-once"],
                            env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=900)
    state = api(stack, f"/flow_runs/{run_id}")["state"]
    assert state["type"] == expect, f"{state}\n{worker.stdout[-6000:]}\n{worker.stderr[-6000:]}"
    return run_id, worker.stdout + worker.stderr


def unresponsive_trigger(stack: Stack):
    """The trigger of the automation (cft_cli/unresponsive.py) the server holds, as the server reads it."""
    from prefect.server.events.schemas.automations import EventTrigger

    from cft_cli.unresponsive import NAME

    (automation,) = api(stack, "/automations/filter", {"automations": {"name": {"any_": [NAME]}}})
    return EventTrigger.model_validate(automation["trigger"])


def heartbeats(stack: Stack, run_id: str) -> list:
    """The heartbeats the server received from flow run `run_id`."""
    from prefect.server.events.schemas.events import ReceivedEvent

    found = api(stack, "/events/filter", {"filter": {"event": {"name": ["prefect.flow-run.heartbeat"]},
                                                     "resource": {"id": [f"prefect.flow-run.{run_id}"]}}})
    return [ReceivedEvent.model_validate(e) for e in found["events"]]


def task_states(stack: Stack, run_id: str) -> dict[str, str]:
    runs = api(stack, "/task_runs/filter", {"flow_runs": {"id": {"any_": [run_id]}}})
    return {r["name"].rsplit("-", 1)[0]: r["state"]["name"] for r in runs}  # "ingest-1c2" -> "ingest"


def served_health(stack: Stack) -> tuple[int, dict]:
    import urllib.error

    try:
        with urllib.request.urlopen(f"{stack.recommender_url}/health", timeout=30) as r:  # noqa: S310 (loopback)
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def serves_the_champion(stack: Stack, client, name: str) -> dict:
    """The recommender's /health once it serves the version the champion alias names now."""
    import time

    champion = str(client.get_model_version_by_alias(name, "champion").version)
    deadline = time.monotonic() + 120
    while (health := served_health(stack))[1].get("version") != champion and time.monotonic() < deadline:
        time.sleep(0.5)
    assert health == (200, {**health[1], "status": "ok", "version": champion}), (champion, health)
    return health[1]


class Receiver:
    """An HTTP endpoint on 127.0.0.1 that keeps what is POSTed to it: (path, headers, raw body)."""

    def __init__(self):
        import threading
        from http.server import BaseHTTPRequestHandler, HTTPServer

        received = self.received = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                received.append((self.path, dict(self.headers), self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def posted(self, path: str) -> list[tuple[dict, bytes]]:
        return [(headers, body) for at, headers, body in self.received if at == path]

    def wait(self, path: str, count: int = 1, where=lambda body: True, timeout: float = 60.0) -> list[tuple[dict, bytes]]:
        """The posts to `path` whose JSON body passes `where`, once there are `count` of them: the
        senders post from their own threads (MLflow's delivery pool, the Prefect server's automations)."""
        deadline = time.monotonic() + timeout
        while len(found := [(h, body) for h, body in self.posted(path) if where(json.loads(body))]) < count:
            assert time.monotonic() < deadline, (path, count, self.received)
            time.sleep(0.2)
        return found

    def deliveries(self, secret: str, wanted: int, timeout: float = 60.0) -> list[dict]:
        """The bodies of the first `wanted` deliveries to /champion (MLflow sends from a thread pool),
        each checked against its signature: base64 HMAC-SHA256, keyed by the webhook's secret, of
        "<delivery id>.<timestamp>.<body>" (MLflow's webhook documentation)."""
        import base64
        import hashlib
        import hmac

        bodies = []
        for headers, body in self.wait("/champion", wanted, timeout=timeout)[:wanted]:
            signed = f"{headers['X-MLflow-Delivery-Id']}.{headers['X-MLflow-Timestamp']}.{body.decode()}"
            digest = base64.b64encode(hmac.new(secret.encode(), signed.encode(), hashlib.sha256).digest()).decode()
            assert headers["X-MLflow-Signature"] == f"v1,{digest}", headers
            bodies.append(json.loads(body))
        return bodies


def _session(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:  # (gone since the listing)
        return None


def test_deployment_runs_registers_and_gates(tmp_path, monkeypatch):
    from mlflow import MlflowClient
    from mlflow.entities.webhook import WebhookEvent

    runner = CliRunner()
    data_root = tmp_path / "data"
    # The stack's processes and commands download models from the MLflow server (its proxied
    # artifacts); each load's copy must go when that model does (tasks.registry.LoadedPyfunc).
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    monkeypatch.setenv("TMPDIR", str(temporary))
    # MLflow sends webhooks over https to public hosts only; this test's receiver is on 127.0.0.1.
    monkeypatch.setenv("MLFLOW_WEBHOOK_ALLOWED_SCHEMES", "http,https")
    monkeypatch.setenv("MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS", "true")
    monkeypatch.delenv("MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY", raising=False)  # (the stack's own key)
    stack = Stack(data_root, prefect_port=free_port(), mlflow_port=free_port(), serve_port=free_port())
    smoke = PROJECT_ROOT / "configs" / "smoke.yaml"
    up_args = ["stack", "up", "--data-root", str(data_root), "--prefect-port", str(stack.prefect_port),
               "--mlflow-port", str(stack.mlflow_port), "--no-worker", "--serve", str(smoke),
               "--serve-port", str(stack.serve_port), "--follow-every", "1"]
    up = runner.invoke(app, up_args, prog_name="cft")
    try:
        assert up.exit_code == 0, up.output + repr(up.exception)
        assert "Prefect UI: http://127.0.0.1:" in up.output and "cft-replay/replay" in up.output
        assert f"Recommender     {stack.recommender_url} (the champion of {smoke}" in up.output
        assert ("deployed: cft-batch/nightly (paused), cft-gc/weekly (paused), cft-promote/promote, cft-replay/replay, "
                "cft/full-pipeline, cft/scheduled-retrain (paused)") in up.output
        shown = runner.invoke(app, ["stack", "status", "--data-root", str(data_root)], prog_name="cft")
        processes = shown.output
        assert shown.exit_code == 0, processes  # every process runs and every server answers
        assert f"prefect-server: running, answers at {stack.prefect_api}" in processes
        assert f"mlflow-server: running, answers at {stack.mlflow_uri}" in processes
        assert f"recommender: running, answers at {stack.recommender_url}" in processes
        # The MLflow server runs without MLflow's job runner (cft_cli/stack.py, JOB_EXECUTION_ENV):
        # its process group is the server and its uvicorn worker, not eight more.
        server = json.loads(stack.pid_file.read_text())["mlflow-server"]["pid"]
        group = [p.cmdline() for p in psutil.process_iter() if _session(p.pid) == server]
        assert len(group) == 2 and not any("huey" in " ".join(c) for c in group), group
        # Up again without the ports: it starts nothing and names the stack's own addresses.
        again = runner.invoke(app, ["stack", "up", "--data-root", str(data_root), "--no-worker"], prog_name="cft")
        assert again.exit_code == 0, again.output + repr(again.exception)
        assert f"MLflow server   {stack.mlflow_uri} (already running" in again.output
        assert f"export PREFECT_API_URL={stack.prefect_api} MLFLOW_TRACKING_URI={stack.mlflow_uri}" in again.output
        deployments = {d["name"]: d for d in api(stack, "/deployments/filter", {})}
        assert set(deployments) == {"full-pipeline", "scheduled-retrain", "replay", "promote", "nightly", "weekly"}
        assert [s["active"] for d in ("nightly", "weekly") for s in deployments[d]["schedules"]] == [False, False]  # paused
        client = MlflowClient(stack.mlflow_uri, registry_uri=stack.mlflow_uri)
        name = "cft-ml-100k-smoke"
        status, health = served_health(stack)
        assert (status, health["status"], health["model"]) == (503, "waiting", f"models:/{name}@champion")
        receiver, secret = Receiver(), "a-secret-of-the-team"
        hook = client.create_webhook(name="champion-moves", url=f"{receiver.url}/champion", secret=secret,
                                     events=[WebhookEvent("model_version_alias", "created")])

        # The smoke profile, shorter: 8 of its 32 steps and half its test rows (the plumbing is
        # under test here; the stages' results are the other tests').
        shorter = {"train.max_steps": 8, "data.max_samples": {"train": 512, "valid": 128, "test": 64}}
        first, log = run_pipeline(stack, {"data.data_root": str(data_root), **shorter})
        assert set(task_states(stack, first).values()) <= {"Completed"}
        # The run beat (prefect.yaml's frequency reached it), and the automation `up` made watches
        # its beats: four missed ones set a run Crashed (acted on by the server: the test below).
        trigger = unresponsive_trigger(stack)
        assert trigger.within.total_seconds() == 4 * 60
        assert deployments["full-pipeline"]["job_variables"]["env"]["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] == "60"
        assert (beats := heartbeats(stack, first)) and all(trigger.covers(beat) for beat in beats), beats
        # The flow run's log holds the pipeline's lines, a line per training step in the task run's
        # log (what the Prefect UI shows), and no progress bars, Trainer dicts, advisory warnings or
        # known-benign library lines (tasks/quiet.py).
        assert "Task run 'gate-" in log, log[-3000:]
        assert re.search(r"Task run 'train-\w+' - step 1/\d+: loss [0-9.]+ \(normal [0-9.]+, causal", log), log[-3000:]
        assert re.search(r"Task run 'train-\w+' - step \d+/\d+: valid loss [0-9.]+", log), log[-3000:]
        for chatter in ("it/s]", "batch/s]", "{'loss'", "UserWarning", "Gradient accumulation steps mismatch",
                        "ephemeral docs site"):
            assert chatter not in log, (chatter, log[-3000:])
        baseline, markov, model = (client.get_model_version(name, v) for v in "123")
        assert [v.tags["cft.kind"] for v in (baseline, markov, model)] == ["popularity", "markov", "llm"]
        # The run's metrics artifact (what the Prefect UI shows) links the training's run page on the server.
        artifacts = api(stack, "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [first]}}})
        (metrics,) = [a for a in artifacts if a["key"] == "metrics-ml-100k-smoke"]
        experiment = client.get_run(model.run_id).info.experiment_id
        assert f"MLflow run: {stack.mlflow_uri}/#/experiments/{experiment}/runs/{model.run_id}" in metrics["data"], metrics
        run = client.get_run(model.run_id)
        assert run.data.params["train.objective"] == "cft"
        assert {"train/loss", "valid/loss", "test/constrained/NDCG_at_10"} <= set(run.data.metrics)
        assert model.tags["gate.decision"] in ("promoted", "kept challenger") and model.tags["gate.champion_version"] == "1"
        assert "test/constrained/NDCG_at_10" in model.tags and "**Gate**" in model.description
        serves_the_champion(stack, client, name)  # the first champion, without a restart
        # Every move of an alias reached the webhook, signed: the first champion is the popularity baseline.
        moves = json.loads(client.get_registered_model(name).tags["champion_history"])
        receiver.wait("/champion", len(moves), where=lambda body: body["data"].get("alias") == "champion")
        sent = receiver.deliveries(secret, len(receiver.posted("/champion")))
        assert [d["data"] for d in sent if d["data"]["alias"] == "champion"] == [
            {"name": name, "alias": "champion", "version": m["version"]} for m in moves], (moves, sent)
        assert {(d["entity"], d["action"]) for d in sent} == {("model_version_alias", "created")}

        # cft alerts: a run that fails (a profile that is not there) is posted by the server, as text.
        said = subprocess.run([console_script("cft"), "alerts", f"{receiver.url}/failed"], env=stack.env(),
                              cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
        assert said.returncode == 0 and "automation 'cft: a run failed'" in said.stdout, said.stdout + said.stderr
        failed_id, failed_log = run_pipeline(stack, {}, expect="FAILED", profile="configs/no-such-profile.yaml")
        # (its log says why in a line, without a traceback: tasks/error_logs.py)
        assert "config file configs/no-such-profile.yaml not found" in failed_log, failed_log[-3000:]
        assert "Traceback" not in failed_log, failed_log[-3000:]
        ((headers, body),) = receiver.wait("/failed")  # (the server's automation services act within seconds)
        text = json.loads(body)["text"]
        run_name = api(stack, f"/flow_runs/{failed_id}")["name"]
        assert text.startswith(f"cft/full-pipeline: flow run {run_name} Failed: ") and "no-such-profile" in text, text
        # (the server's UI address comes from its PREFECT_API_URL, which the stack sets: a link to the run)
        assert text.endswith(f" {stack.prefect_api.removesuffix('/api')}/runs/flow-run/{failed_id}"), text
        assert headers["Content-Type"] == "application/json"

        # The scheduled deployment, as of a date, from the champion: one more gated version.
        retrain = {"data.data_root": str(data_root), "model.source": "champion", **shorter}
        run_id, _ = run_pipeline(stack, retrain, "cft/scheduled-retrain", as_of="1998-03-01T00:00:00+00:00")
        assert set(task_states(stack, run_id).values()) <= {"Completed"}
        versions = client.search_model_versions(f"name='{name}'")
        gated = [v for v in versions if v.tags.get("cft.kind") == "llm" and "gate.decision" in v.tags]
        assert len(gated) == 2, [(v.version, v.tags) for v in versions]
        assert len({v.tags["data_fingerprint"] for v in gated}) == 2  # two data windows
        assert any("as of 1998-03-01" in v.description for v in gated)

        # The champion recommends through the CLI: K catalogue items.
        res = subprocess.run([console_script("cft"), "recommend", "-c", "configs/smoke.yaml", "--set",
                              f"data.data_root={data_root}", "-k", "5", "--history", "Star Wars (1977)",
                              "Fargo (1996)"], env=stack.env(), cwd=PROJECT_ROOT, capture_output=True,
                             text=True, timeout=300)
        assert res.returncode == 0, res.stdout + res.stderr
        rows = [line for line in res.stdout.splitlines() if re.match(r"^│ \d+\s+│", line)]
        assert len(rows) == 5, res.stdout
        import pandas as pd

        seq_dirs = list((data_root / "sequences").iterdir())
        titles = set(pd.read_parquet(seq_dirs[0] / "catalogue.parquet")["title"])
        shown = [line.split("│")[3].strip() for line in rows]
        assert all(any(t.startswith(s.rstrip("…")) for t in titles) for s in shown), shown

        # gc through the MLflow server: once the two trainings are two days old, the champion's stays
        # and a version without an alias loses its folder only because the server's copy of its
        # pyfunc lists the model (read from its MLmodel over HTTP); a dry run removes nothing.
        trainings = sorted((data_root / "training").iterdir())
        assert len(trainings) == 2, trainings
        two_days_ago = time.time() - 2 * 24 * 3600
        for folder in trainings:
            os.utime(folder / "model" / "training.json", (two_days_ago, two_days_ago))
        res = subprocess.run([console_script("cft"), "gc", "-c", "configs/smoke.yaml", "--set", f"data.data_root={data_root}",
                              "--dry-run"], env=stack.env(), cwd=PROJECT_ROOT, capture_output=True, text=True,
                             timeout=300)
        assert res.returncode == 0, res.stdout + res.stderr
        champion_dir = Path(client.get_model_version_by_alias(name, "champion").tags.get("model_dir", "")).parent
        for folder in trainings:
            said = [line for line in res.stdout.splitlines() if line.startswith((f"kept {folder}:", f"would remove {folder} "))]
            assert len(said) == 1 and (said[0].startswith(f"kept {folder}: the model of {name} v")
                                       or said[0].endswith("without an alias (the registry keeps its model)")), said
            assert folder != champion_dir or said[0].startswith(f"kept {folder}: the model of"), said
        assert sorted((data_root / "training").iterdir()) == trainings

        # The recommender serves the champion the retrains left, over HTTP, saying which version.
        champion = serves_the_champion(stack, client, name)["version"]
        req = urllib.request.Request(f"{stack.recommender_url}/recommend", method="POST",
                                     data=json.dumps({"history": ["Star Wars (1977)", "Fargo (1996)"], "k": 5}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as r:  # noqa: S310 (loopback)
            assert r.headers["X-Model-Version"] == champion and json.loads(r.read())["item_ids"]
        with urllib.request.urlopen(f"{stack.recommender_url}/metrics", timeout=30) as r:  # noqa: S310 (loopback)
            scraped = r.read().decode()
        assert 'cft_requests_total{code="200",endpoint="/recommend"} 1.0' in scraped, scraped
        assert f'version="{champion}"' in scraped, scraped

        # Down and up again: the MLflow server still signs with the webhook's secret (its key is kept).
        assert runner.invoke(app, ["stack", "down", "--data-root", str(data_root)], prog_name="cft").exit_code == 0
        up = runner.invoke(app, up_args, prog_name="cft")
        assert up.exit_code == 0, up.output + repr(up.exception)
        before = len(receiver.posted("/champion"))
        assert client.test_webhook(hook.webhook_id).success
        test_event = receiver.deliveries(secret, before + 1)[-1]  # (an example payload of the webhook's event)
        assert (test_event["entity"], test_event["action"]) == ("model_version_alias", "created"), test_event
        off = subprocess.run([console_script("cft"), "alerts", "--off"], env=stack.env(), cwd=PROJECT_ROOT,
                             capture_output=True, text=True, timeout=120)
        assert off.returncode == 0 and "removed 2 automation(s)" in off.stdout, off.stdout + off.stderr
        # (the alert's automation went; the one `up` made for runs whose machine is lost stays)
        assert [a["name"] for a in api(stack, "/automations/filter", {})] == ["cft: crash runs that stopped answering"]
    finally:
        stopped = runner.invoke(app, ["stack", "down", "--data-root", str(data_root)], prog_name="cft")
        down(stack, say=lambda *_: None)  # whatever the command left, if it failed
    assert stopped.exit_code == 0 and "stopped recommender" in stopped.output, stopped.output
    # The flow runs' gates, `cft recommend` and the recommender (two versions, then stopped) left no
    # model copy behind.
    assert not list(temporary.rglob("MLmodel")), sorted(map(str, temporary.rglob("MLmodel")))
    assert "not running" in runner.invoke(app, ["stack", "status", "--data-root", str(data_root)], prog_name="cft").output


def test_up_frees_the_slot_of_a_run_the_stopped_stack_left_running(tmp_path, monkeypatch):
    """A scheduled retrain in flight when the stack stopped stays Running on the server, holding its
    deployment's concurrency slot (limit 1) past the restart, which loses the lease that would
    expire it: every later retrain was cancelled at once. `cft stack up` sets such a run Crashed
    (its process is gone), which frees the slot; a run whose process still exists is left alone.
    While the stack runs, a run whose heartbeats stop is set Crashed by the server, and `cft
    alerts` reports it, and a run no worker takes."""
    import sys

    runner, data_root = CliRunner(), tmp_path / "data"
    stack = Stack(data_root, prefect_port=free_port(), mlflow_port=free_port())
    ports = ["--data-root", str(data_root), "--prefect-port", str(stack.prefect_port),
             "--mlflow-port", str(stack.mlflow_port), "--no-worker"]
    monkeypatch.setenv("PREFECT_SERVER_SERVICES_LATE_RUNS_AFTER_SECONDS", "1")  # (Late 1 s past the start, not 15)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    try:
        up = runner.invoke(app, ["stack", "up", *ports], prog_name="cft")
        assert up.exit_code == 0, up.output + repr(up.exception)

        def in_flight(deployment: str, pid: int | None) -> str:
            """A run of `deployment` as a worker leaves it: Pending (its slot taken), then Running in
            process `pid` (None: left Pending, its process never started)."""
            found = api(stack, f"/deployments/name/{deployment}")
            run = api(stack, f"/deployments/{found['id']}/create_flow_run", {"parameters": {"profile": "configs/smoke.yaml"}})
            for state in ("PENDING", "RUNNING") if pid else ("PENDING",):
                assert api(stack, f"/flow_runs/{run['id']}/set_state", {"state": {"type": state}})["status"] == "ACCEPT"
            if pid is None:
                return run["id"]
            req = urllib.request.Request(f"{stack.prefect_api}/flow_runs/{run['id']}", method="PATCH",
                                         data=json.dumps({"infrastructure_pid": str(pid)}).encode(),
                                         headers={"Content-Type": "application/json"})
            urllib.request.urlopen(req, timeout=30).close()  # noqa: S310 (loopback)
            return run["id"]

        orphan = in_flight("cft/scheduled-retrain", int(gone.stdout))  # its process ended
        alive = in_flight("cft-gc/weekly", os.getpid())  # its process runs (another worker's, say)
        never = in_flight("cft-batch/nightly", None)  # the worker stopped between taking it and starting it

        def slots(deployment: str) -> int:
            return api(stack, f"/deployments/name/{deployment}")["global_concurrency_limit"]["active_slots"]

        assert (slots("cft/scheduled-retrain"), slots("cft-gc/weekly"), slots("cft-batch/nightly")) == (1, 1, 1)
        assert runner.invoke(app, ["stack", "down", "--data-root", str(data_root)], prog_name="cft").exit_code == 0
        again = runner.invoke(app, ["stack", "up", *ports], prog_name="cft")
        assert again.exit_code == 0, again.output + repr(again.exception)
        name = api(stack, f"/flow_runs/{orphan}")["name"]
        assert f"marked Crashed: flow run {name} (pid {int(gone.stdout)})" in again.output, again.output
        assert api(stack, f"/flow_runs/{orphan}")["state"]["type"] == "CRASHED"
        assert api(stack, f"/flow_runs/{alive}")["state"]["type"] == "RUNNING"
        never_name = api(stack, f"/flow_runs/{never}")["name"]
        assert f"marked Crashed: flow run {never_name} (never started)" in again.output, again.output
        assert (slots("cft/scheduled-retrain"), slots("cft-gc/weekly"), slots("cft-batch/nightly")) == (0, 1, 0)

        # A run whose machine is lost while the server runs: its heartbeats stop, and the automation
        # `up` made sets it Crashed, which frees its slot; a run that beats is left alone. (The
        # automation made again, to wait 10 s rather than four beats of a minute; heartbeats as a
        # run's engine builds them, which the deployed run's are: the test above.)
        from prefect.client.schemas.objects import FlowRun
        from prefect.events import Event
        from prefect.flow_engine import FlowRunEngine
        from prefect.settings import PREFECT_API_URL, temporary_settings

        from cft_cli.alerts import install_alerts
        from cft_cli.unresponsive import install_unresponsive
        from flows.cft import cft_pipeline

        receiver = Receiver()
        with temporary_settings({PREFECT_API_URL: stack.prefect_api}):
            install_alerts(f"{receiver.url}/alerts", late_wait_s=10)

        def alert(starts: str) -> str:
            """The text of the one alert that starts so, once the server has sent it."""
            ((_, body),) = receiver.wait("/alerts", where=lambda body: body["text"].startswith(starts), timeout=90)
            return json.loads(body)["text"]

        install_unresponsive(stack.prefect_api, within_s=10)
        lost, beating = in_flight("cft/scheduled-retrain", os.getpid()), in_flight("cft/full-pipeline", os.getpid())

        def beat(run_id: str) -> None:
            run = FlowRun.model_validate(api(stack, f"/flow_runs/{run_id}"))
            resource, related = FlowRunEngine(flow=cft_pipeline, flow_run=run)._build_heartbeat_event_template()
            event = Event(event="prefect.flow-run.heartbeat", resource=resource, related=related)
            req = urllib.request.Request(f"{stack.prefect_api}/events", method="POST", headers={"Content-Type": "application/json"},
                                         data=json.dumps([event.model_dump(mode="json")]).encode())
            urllib.request.urlopen(req, timeout=30).close()  # noqa: S310 (loopback)

        beat(lost)
        deadline = time.monotonic() + 90  # (10 s, then the server's next look: every 5 s)
        while (state := api(stack, f"/flow_runs/{lost}")["state"])["type"] != "CRASHED":
            assert time.monotonic() < deadline, state
            beat(beating)
            time.sleep(2)
        assert state["message"].startswith("no heartbeat for 10 s"), state
        assert api(stack, f"/flow_runs/{beating}")["state"]["type"] == "RUNNING"
        assert slots("cft/scheduled-retrain") == 0
        name = api(stack, f"/flow_runs/{lost}")["name"]
        assert alert(f"cft/scheduled-retrain: flow run {name} Crashed: no heartbeat for 10 s")

        # A run that no worker takes (the stack runs none here): reported once it has been Late for
        # the wait (10 s here, 10 min by default), with the pool that lacks a worker.
        found = api(stack, "/deployments/name/cft/full-pipeline")
        waiting = api(stack, f"/deployments/{found['id']}/create_flow_run", {"parameters": {"profile": "configs/smoke.yaml"}})
        said = alert(f"cft/full-pipeline: flow run {waiting['name']} has waited 10 s for a worker past its start: ")
        assert f"is a worker running on its work pool {POOL}? " in said, said
        assert api(stack, f"/flow_runs/{waiting['id']}")["state"]["name"] == "Late"

        # `up` deployed into its own pool, to run in this folder; `cft deploy` puts the same
        # deployments into a team's pool, to run in the folder the team's workers hold the project in
        # (`prefect deploy --all --pool X` ignores --pool: every deployment stayed in cft-local). A pool
        # that exists keeps its job template; the promotion limit is created on the server.
        def placed() -> set[tuple[str, str]]:
            return {(d["work_pool_name"], d["pull_steps"][0]["prefect.deployments.steps.set_working_directory"]["directory"])
                    for d in api(stack, "/deployments/filter", {})}

        assert placed() == {(POOL, str(PROJECT_ROOT))}
        edited = {**api(stack, f"/work_pools/{POOL}")["base_job_template"]}
        edited["variables"]["properties"]["env"]["default"] = {"TEAM_SETTING": "kept"}
        team = subprocess.run([console_script("prefect"), "work-pool", "create", "cft-team", "--type", "process",
                               "--base-job-template", "/dev/stdin"], input=json.dumps(edited), env=stack.env(),
                              cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
        assert team.returncode == 0, team.stdout + team.stderr
        gone_limit = subprocess.run([console_script("prefect"), "concurrency-limit", "delete", "cft-promotion"], env=stack.env(),
                                    cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
        assert gone_limit.returncode == 0, gone_limit.stdout + gone_limit.stderr  # (`up` made it; a team server has none)
        deployed = subprocess.run([console_script("cft"), "deploy", "--pool", "cft-team", "--project-dir", "/srv/cft-rec"],
                                  env=stack.env(), cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        assert deployed.stdout.startswith(f"deployed to pool cft-team of {stack.prefect_api} (flows run in /srv/cft-rec):\n"
                                          "  cft-batch/nightly (paused)\n"), deployed.stdout
        assert placed() == {("cft-team", "/srv/cft-rec")}
        assert "a run silent for 240 s (its machine lost) is set Crashed" in deployed.stdout, deployed.stdout
        assert unresponsive_trigger(stack).within.total_seconds() == 240  # (made anew: one automation, four beats)
        template = api(stack, "/work_pools/cft-team")["base_job_template"]
        assert template["variables"]["properties"]["env"]["default"] == {"TEAM_SETTING": "kept"}
        assert api(stack, "/concurrency_limits/tag/cft-promotion")["concurrency_limit"] == 1

        # `cft promote` on a laptop waits for the slot that a gate on a worker elsewhere holds (the
        # file lock sees one machine only): the promotion's slot comes after the gate let go of it.
        gate = subprocess.Popen([sys.executable, "-c", (
            "import time\nfrom prefect.concurrency.sync import concurrency\n"
            "with concurrency('tag:cft-promotion'):\n    print('held', flush=True)\n    time.sleep(12)\n"
            "print(time.time(), flush=True)")], env=stack.env(), cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True)
        try:
            assert gate.stdout.readline().strip() == "held"
            laptop = subprocess.run([sys.executable, "-c", (
                "import time\nfrom cft_cli.deploy import promotion_slot\n"
                "with promotion_slot():\n    print(time.time(), flush=True)")], env=stack.env(), cwd=PROJECT_ROOT,
                capture_output=True, text=True, timeout=300)
            assert laptop.returncode == 0, laptop.stdout + laptop.stderr
            let_go = float(gate.stdout.readline())
            assert float(laptop.stdout.split()[-1]) >= let_go
        finally:
            gate.kill()
            gate.wait()
    finally:
        down(stack, say=lambda *_: None)
