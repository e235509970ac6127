"""The `cft` flow in-process (Prefect's test server): failures stop it with the stage's message,
registry calls retry transient errors. The deployed flow end to end is tests/e2e/test_stack.py."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from schemas.config import PipelineConfig
from schemas.errors import DataValidationError, RegistryError
from tests.data.test_malformed import GOOD_ITEMS, _write
from tests.train.test_registry import new_run

pytestmark = pytest.mark.integration


@contextmanager
def run_log_records() -> Iterator[list[logging.LogRecord]]:
    """The records Prefect's flow and task run loggers pass on (after their filters) in the block."""
    from tasks.error_logs import RUN_LOGGERS

    class Kept(logging.Handler):
        def emit(self, record):
            records.append(record)

    records, handler = [], Kept()
    for name in RUN_LOGGERS:
        logging.getLogger(name).addHandler(handler)
    try:
        yield records
    finally:
        for name in RUN_LOGGERS:
            logging.getLogger(name).removeHandler(handler)


def test_validation_failure_stops_the_flow_and_registers_nothing(tmp_path, prefect_harness, monkeypatch):
    from mlflow import MlflowClient

    from flows.cft import cft_pipeline
    from tasks.pipeline import validate_task
    from tasks.tracking import tracking_uri

    data = _write(tmp_path, items=GOOD_ITEMS.replace("Title 3", ""))  # a null title
    cfg = PipelineConfig(data=data)
    with run_log_records() as records:
        state = cft_pipeline(config=cfg, return_state=True)
    assert state.is_failed()
    with pytest.raises(DataValidationError, match="items.title: expect_column_values_to_not_be_null"):
        state.result()
    assert "expect_column_values_to_not_be_null" in state.message
    assert not (tmp_path / "sequences").exists() and not (tmp_path / "training").exists()
    assert MlflowClient(tracking_uri(cfg), registry_uri=tracking_uri(cfg)).search_registered_models() == []
    # The run's log (the terminal of `cft run`, the Prefect UI) says what failed, without a
    # traceback: the user's mistake is in the data, not in a frame of Prefect's or ours.
    failed = [r for r in records if r.levelno >= logging.ERROR]
    assert any("items.title: expect_column_values_to_not_be_null" in r.getMessage() for r in failed), failed
    assert [r.getMessage() for r in failed if r.exc_info or r.exc_text] == []

    # Our bug keeps its traceback, and so does a user's mistake under CFT_DEBUG=1 (`cft --debug`).
    def broken(*args, **kwargs):
        raise RuntimeError("a bug of ours")

    for debug, error, validate in (("0", RuntimeError, broken), ("1", DataValidationError, validate_task)):
        monkeypatch.setenv("CFT_DEBUG", debug)
        monkeypatch.setattr("flows.cft.validate_task", validate)  # (the name the flow calls)
        with run_log_records() as records:
            state = cft_pipeline(config=cfg, return_state=True)
        with pytest.raises(error):
            state.result()
        traced = [r for r in records if r.exc_info and isinstance(r.exc_info[1], error)]
        assert traced and all(r.levelno >= logging.ERROR for r in traced), [r.getMessage() for r in records]


def _tiny_flow_config(tmp_path):
    from tests.train.conftest import make_config

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = make_config(tmp_path, tracking={"enabled": True, "tracking_uri": uri, "log_model_folder": False})
    return cfg.model_copy(update={
        "eval": cfg.eval.model_copy(update={"max_samples": 8, "num_beams": 2, "num_return_sequences": 2,
                                            "max_new_tokens": 8, "min_new_tokens": 1, "history_reliance": False}),
        "registry": cfg.registry.model_copy(update={"gate_max_samples": 8})}), uri


def test_the_whole_flow_succeeds_in_process_and_a_rerun_reuses_every_stage(tmp_path, prefect_harness):
    """ingest -> ... -> gate to success with the tiny model and a real MLflow store; the second run
    of the same config trains nothing and registers nothing new."""
    from mlflow import MlflowClient

    from flows.cft import cft_pipeline

    cfg, uri = _tiny_flow_config(tmp_path)
    first = cft_pipeline(config=cfg)
    name = cfg.registered_model_name()
    # v1, v2: the popularity (registered first, the first champion) and Markov-chain baselines;
    # v3: the model. The champion after the gate: the model if promoted, else the better baseline
    # where it beat popularity (the floor), else popularity.
    assert first["registered"] == {"name": name, "version": "3"}
    client = MlflowClient(uri, registry_uri=uri)
    assert [client.get_model_version(name, v).tags["cft.kind"] for v in "12"] == ["popularity", "markov"]
    champion = str(client.get_model_version_by_alias(name, "champion").version)
    assert champion == ("3" if first["gate"]["promoted"] else first["gate"]["floor_promoted"] or "1")
    version = client.get_model_version(name, "3")
    assert version.run_id == first["run_id"] and version.tags["gate.champion_version"] == "1"
    assert "| method |" in version.description and "**Gate**" in version.description  # model card
    assert len([t for t in version.tags if t.startswith("test/")]) <= 3  # a handful, not every metric
    assert "valid/loss" in client.get_run(first["run_id"]).data.metrics
    assert f"MLflow run: run {first['run_id']}" in first["summary"] and "**Gate**" in first["summary"]
    assert "\nevaluation took " in first["summary"]
    # The gate's evaluation ranked its rows and ran nothing it does not read (the test one did).
    (evaluations,) = [list(p.glob("evaluation/*")) for p in (tmp_path / "training").iterdir()]
    diagnosed = {p.name.split("-")[0]: (p / "diagnostics.json").is_file() for p in evaluations}
    assert diagnosed == {"test": True, "valid": False}

    trainings = list((tmp_path / "training").iterdir())
    second = cft_pipeline(config=cfg)
    assert list((tmp_path / "training").iterdir()) == trainings  # no new training folder
    assert second["unchanged"].startswith("no new interactions since") and second["registered"] is None
    assert f"champion unchanged (v{champion}); v3 was trained on these rows and was " in second["summary"]
    assert len(client.search_model_versions(f"name='{name}'")) == 3

    # Served another way (here without the backfill): the same training, registered anew and gated,
    # once; before, "nothing new" kept the version as it was registered.
    plain = cfg.updated({"eval.backfill": "none"})
    third = cft_pipeline(config=plain)
    assert list((tmp_path / "training").iterdir()) == trainings and third["registered"]["version"] == "4"
    four = client.get_model_version(name, "4")
    assert four.run_id == version.run_id and "gate.decision" in four.tags
    assert four.tags["cft.ranking_key"] != version.tags["cft.ranking_key"]
    assert "v4 was trained on these rows" in cft_pipeline(config=plain)["summary"]
    assert len(client.search_model_versions(f"name='{name}'")) == 4


def test_the_batch_flow_writes_every_users_top_k_from_the_champion(tmp_path, prefect_harness):
    """`cft-batch/nightly` in-process: after the pipeline registered a champion, a row per user of
    the data, from the version the alias names, in the default place."""
    import pandas as pd
    from mlflow import MlflowClient

    from flows.batch import batch_flow
    from flows.cft import cft_pipeline
    from tasks.batch import default_output

    cfg, uri = _tiny_flow_config(tmp_path)
    cft_pipeline(config=cfg)
    champion = str(MlflowClient(uri, registry_uri=uri).get_model_version_by_alias(cfg.registered_model_name(),
                                                                                  "champion").version)
    profile = tmp_path / "profile.yaml"
    profile.write_text(json.dumps(cfg.model_dump(mode="json")))  # YAML is a superset of JSON
    summary = batch_flow(profile=str(profile), k=2)
    assert summary["version"] == champion and summary["path"] == str(default_output(cfg))
    recs = pd.read_parquet(summary["path"])
    # Every user of the ingested data (the profile sets no window), not only those of the sampled
    # splits; their newest items the champion's catalogue lacks (dropped by k-core) are counted.
    (ingested,) = (tmp_path / "ingested").iterdir()
    (sequences,) = (tmp_path / "sequences").iterdir()
    interactions = pd.read_parquet(ingested / "interactions.parquet").sort_values(["timestamp", "item_id"])
    newest = interactions.groupby("user_id").tail(cfg.data.max_history)
    known = set(pd.read_parquet(sequences / "catalogue.parquet")["source_item_id"])
    assert len(recs) == summary["users"] == interactions["user_id"].nunique() and summary["excluded_seen"]
    assert set(recs["user_id"]) == set(interactions["user_id"])
    assert summary["unknown_items"] == (~newest["item_id"].isin(known)).sum()
    assert summary["users_short"] == (recs["item_ids"].map(len) < 2).sum()


def test_the_promote_flow_promotes_rolls_back_and_refuses_a_promotion_without_a_version(tmp_path, prefect_harness,
                                                                                         small_sequences, monkeypatch):
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from flows.promote import promote_flow
    from schemas.errors import InputError
    from tasks import registry
    from tasks.registry import champion
    from tasks.training import model_folder
    from tests.train.test_registry import registered

    seq, _ = small_sequences
    cfg, uri = _tiny_flow_config(tmp_path)
    versions = [str(registered(cfg, uri, model_folder(cfg, seq), seq, new_run(uri)).version) for _ in range(2)]
    profile = tmp_path / "profile.yaml"
    profile.write_text(json.dumps(cfg.model_dump(mode="json")))
    name, client = cfg.registered_model_name(), MlflowClient(uri, registry_uri=uri)
    real_promote = registry.promote
    for version in versions:
        assert promote_flow(model_name=name, reason=f"release {version}", version=int(version), profile=str(profile),
                            by="alice@example.com") == version
    assert promote_flow(model_name=name, reason="regressed", action="rollback", profile=str(profile)) == versions[0]
    assert str(client.get_model_version_by_alias(name, "champion").version) == versions[0]
    # Who asked is recorded with the flow run it came through; without `by`, the worker's user, said as such.
    *_, promoted, rolled_back = registry.champion_history(client.get_registered_model(name))
    assert promoted["by"] == "alice@example.com" and re.fullmatch(r"Prefect flow run [\w-]+", promoted["via"])
    assert rolled_back["by"] == champion._who() and rolled_back["via"].endswith(", whose user this is")
    state = promote_flow(model_name=name, reason="r", version=int(versions[1]), profile=str(profile), by="x" * 201,
                         return_state=True)
    assert state.is_failed()
    with pytest.raises(InputError, match="`by` names who asks, in at most 200 characters"):
        state.result()
    assert str(client.get_model_version_by_alias(name, "champion").version) == versions[0]
    state = promote_flow(model_name=name, reason="no version", profile=str(profile), return_state=True)
    assert state.is_failed()
    with pytest.raises(InputError, match="action=promote needs the version to promote"):
        state.result()
    # A version the registry does not have: failed at once, not retried (it was, three times over 42 s).
    calls = []
    monkeypatch.setattr(registry, "promote", lambda *a, **k: calls.append(1) or real_promote(*a, **k))
    state = promote_flow(model_name=name, reason="typo", version=99, profile=str(profile), return_state=True)
    assert state.is_failed() and calls == [1]
    with pytest.raises(MlflowException, match=rf"name={name}, version=99\) not found"):
        state.result()


def test_registry_call_is_retried_after_a_transient_error(tmp_path, prefect_harness, monkeypatch, small_sequences):
    """The first registry call fails as a dropped connection would; the task's retry succeeds."""
    import json

    from prefect import flow

    from tasks import pipeline
    from tasks.data import StageOutput
    from tasks.evaluation import EvalOutput
    from tasks.registry import registration
    from tasks.training import TrainOutput, model_folder
    from tests.train.conftest import make_config

    seq, fp = small_sequences
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = make_config(tmp_path, tracking={"enabled": True, "tracking_uri": uri})
    model_dir = model_folder(cfg, seq)
    trained = TrainOutput(model_dir.parent, model_dir, True, {"mlflow_run_id": new_run(uri)})
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "summary.json").write_text(json.dumps({"split": "test", "examples": 1}))
    evaluation = EvalOutput(tmp_path / "eval", {"grounding_adjusted/NDCG@10": 0.5}, True)
    real, calls = registration.register, []  # (what register_model calls)

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("connection reset by peer")
        return real(*args, **kwargs)

    monkeypatch.setattr(registration, "register", flaky)
    fast = pipeline.register_task.with_options(retry_delay_seconds=0)

    @flow
    def register_only():
        return fast(cfg, trained, StageOutput(seq, fp, True), evaluation)

    assert register_only() == "1"
    assert len(calls) == 2

    # An input error is not retried: it fails at once with its message.
    calls.clear()
    monkeypatch.setattr(registration, "register", lambda *a, **k: calls.append(1) or (_ for _ in ()).throw(ValueError("bad tag")))
    with pytest.raises(ValueError, match="bad tag"):
        register_only()
    assert len(calls) == 1
    # Nor is any other user error (a registry reference that does not resolve is a LookupError).
    calls.clear()
    monkeypatch.setattr(registration, "register",
                        lambda *a, **k: calls.append(1) or (_ for _ in ()).throw(RegistryError("no such alias")))
    with pytest.raises(RegistryError, match="no such alias"):
        register_only()
    assert len(calls) == 1
    # Nor a request the MLflow server refused to this worker's account (a registry with users):
    # retrying cannot grant a permission.
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import PERMISSION_DENIED

    refused = MlflowException("API request to endpoint /api/2.0/mlflow/model-versions/create failed with error "
                              "code 403 != 200. Response body: 'Permission denied'", error_code=PERMISSION_DENIED)
    calls.clear()
    monkeypatch.setattr(registration, "register", lambda *a, **k: calls.append(1) or (_ for _ in ()).throw(refused))
    with pytest.raises(MlflowException, match="403"):
        register_only()
    assert len(calls) == 1


def test_the_replay_flow_runs_each_period_as_a_task_and_a_rerun_resumes(tmp_path, prefect_harness):
    """`cft-replay/replay` in-process: each period a `period` task of the flow run, the timeline
    into its JSON file, plot, MLflow run and a Prefect artifact; a second run with the same
    settings finds the period done and runs no task."""
    from mlflow import MlflowClient
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterKey,
        FlowRunFilter,
        FlowRunFilterId,
    )

    from flows.replay import replay_flow
    from tasks.tracking import experiment_name
    from tests.train.test_replay import config, write_dataset

    write_dataset(tmp_path / "inputs")
    cfg = config(tmp_path)
    profile = tmp_path / "profile.yaml"
    profile.write_text(json.dumps(cfg.model_dump(mode="json")))  # YAML is a superset of JSON

    def replay_once():
        state = replay_flow(profile=str(profile), periods=1, every="30d", return_state=True)
        assert state.is_completed(), state
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
        return state.result(), sorted(r.name.rsplit("-", 1)[0] for r in runs if r.state and r.state.is_completed())

    timeline, tasks = replay_once()
    (period,) = timeline["periods"]
    assert tasks == ["period"] and period["trained"] and period["decision"] in ("promoted", "kept challenger")
    out = tmp_path / "replay" / "living-timeline.json"
    assert json.loads(out.read_text()) == timeline and out.with_suffix(".png").is_file()
    uri = cfg.tracking.tracking_uri
    client = MlflowClient(uri)
    (replay_run,) = client.search_runs([client.get_experiment_by_name(experiment_name(cfg)).experiment_id],
                                       "tags.stage = 'replay'")
    assert replay_run.data.metrics["replay/challenger"] == pytest.approx(period["challenger"])
    with get_client(sync_client=True) as prefect:
        (artifact,) = prefect.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["replay-living"])))
    assert "cft-replay flow" in artifact.data and period["as_of"][:10] in artifact.data

    again, tasks = replay_once()
    assert tasks == [] and again["periods"] == timeline["periods"]  # resumed from the file: nothing ran


def test_the_gc_flow_frees_what_no_registered_version_uses(tmp_path, prefect_harness):
    """`cft-gc/weekly` in-process, after the pipeline registered its versions: an unregistered
    training two days old goes (a dry run first only says so); the registered one stays."""
    from mlflow import MlflowClient

    from flows.cft import cft_pipeline
    from flows.gc import gc_flow
    from tests.train.test_gc import finished_training

    cfg, uri = _tiny_flow_config(tmp_path)
    cft_pipeline(config=cfg)
    (registered,) = (tmp_path / "training").iterdir()
    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment("by-hand"))
    client.set_terminated(run.info.run_id)
    (sequences,) = (tmp_path / "sequences").iterdir()
    unregistered = finished_training(tmp_path, "by-hand", sequences.name.rsplit("-", 1)[1], run.info.run_id)
    profile = tmp_path / "profile.yaml"
    profile.write_text(json.dumps(cfg.model_dump(mode="json")))  # YAML is a superset of JSON

    planned = gc_flow(profile=str(profile), dry_run=True)
    assert f"would remove {unregistered} (0 MiB)" in planned
    assert any(line.startswith(f"kept {registered}: the model of {cfg.registered_model_name()} v3 (") for line in planned)
    assert planned[-1].startswith("would remove 1 training folder(s)") and unregistered.is_dir()
    done = gc_flow(profile=str(profile))
    assert done[-1].startswith("removed 1 training folder(s)")
    assert not unregistered.exists() and (registered / "model").is_dir()


def test_a_stage_warning_reaches_the_log_of_the_task_run_it_happens_in(tmp_path, prefect_harness):
    """What the stage modules warn about (here: interactions dropped for items the items file lacks)
    shows in the run's log in the Prefect UI, not only on a worker's console."""
    import logging

    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    from tasks.pipeline import ingest_task
    from tests.data.test_malformed import GOOD_INTER

    cfg = _write(tmp_path, inter=GOOD_INTER + "u0,i98,1000000500,3\n").model_copy(update={"unknown_items": "drop"})

    @flow
    def just_ingest():
        return ingest_task(cfg)

    state = just_ingest(return_state=True)
    assert state.is_completed()
    APILogHandler().flush()  # the logs go to the server in batches
    with get_client(sync_client=True) as client:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[state.state_details.flow_run_id])))
    said = [entry for entry in logs if "dropping 1 interaction(s) with 1 item(s) the items table lacks" in entry.message]
    assert len(said) == 1 and said[0].level == logging.WARNING and said[0].task_run_id is not None
