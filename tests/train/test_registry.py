"""Registry: pyfunc logging (models-from-code), idempotent registration, the gate, overrides.

A real MLflow SQLite store; the model is the tiny model built for the capped ML-100K data.
"""

from __future__ import annotations

import json
import threading
import time

import pandas as pd
import pytest

from tasks import registry
from tests.train.conftest import make_config


@pytest.fixture
def setup(tmp_path, small_sequences):
    """(cfg, tracking uri, model folder, sequences folder)."""
    from tasks.training import model_folder

    seq, _ = small_sequences
    cfg = make_config(tmp_path)
    cfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"num_beams": 2, "num_return_sequences": 2,
                                                                      "max_new_tokens": 8, "min_new_tokens": 1})})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return cfg, uri, model_folder(cfg, seq), seq


def new_run(uri: str) -> str:
    """A finished run in the store at `uri` (through a client: no global MLflow state)."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("registry-test")
    exp_id = exp.experiment_id if exp else client.create_experiment("registry-test")
    run = client.create_run(exp_id)
    client.log_param(run.info.run_id, "p", 1)
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def registered(cfg, uri, model_dir, seq, run_id):
    model_uri = registry.log_recommender(cfg, run_id, model_dir, seq, uri)
    return registry.register(cfg, run_id, model_uri, {"data_fingerprint": "fp"}, uri)


@pytest.mark.parametrize(("challenger", "champion", "margin", "promoted"), [
    (0.10, None, 0.0, True),     # no champion: promote
    (0.10, 0.10, 0.0, False),    # a tie is not an improvement
    (0.11, 0.10, 0.0, True),
    (0.105, 0.10, 0.01, False),  # better, but not by the margin
    (0.12, 0.10, 0.01, True),
    (float("nan"), None, 0.0, False),
])
def test_decide(challenger, champion, margin, promoted):
    assert registry.decide(challenger, champion, margin)[0] is promoted


def test_register_is_idempotent_and_the_pyfunc_recommends(setup):
    import mlflow
    from mlflow import MlflowClient

    cfg, uri, model_dir, seq = setup
    run_id = new_run(uri)
    v1 = registered(cfg, uri, model_dir, seq, run_id)
    again = registered(cfg, uri, model_dir, seq, run_id)
    client = MlflowClient(uri, registry_uri=uri)
    name = cfg.registered_model_name()
    assert str(again.version) == str(v1.version) == "1"
    assert len(client.search_model_versions(f"name='{name}'")) == 1
    assert client.get_model_version(name, "1").tags["data_fingerprint"] == "fp"

    # Models-from-code: the stored model is our source file, not a pickled object.
    local = mlflow.artifacts.download_artifacts(f"models:/{name}/1")
    files = {p.name for p in __import__("pathlib").Path(local).rglob("*")}
    assert "recommender_pyfunc.py" in files and not any(f.endswith((".pkl", ".pickle")) for f in files)

    model = mlflow.pyfunc.load_model(f"models:/{name}/1")
    catalogue = pd.read_parquet(seq / "catalogue.parquet")
    history = catalogue["title"].tolist()[:3]
    out = model.predict(pd.DataFrame({"history": [history, [str(catalogue["item_id"][5])]]}), params={"k": 7})
    assert len(out) == 2
    for row, seen in zip(out.itertuples(), [history, [catalogue["title"][5]]], strict=True):
        assert len(row.item_ids) == 7 == len(set(row.item_ids)) == len(row.scores)
        assert set(row.item_ids) <= set(catalogue["item_id"])
        assert not set(row.titles) & set(seen)  # history excluded by default


def test_gate_promotes_only_improvements_and_overrides_are_recorded(setup):
    from mlflow import MlflowClient

    cfg, uri, model_dir, seq = setup
    client = MlflowClient(uri, registry_uri=uri)
    name = cfg.registered_model_name()
    versions = [str(registered(cfg, uri, model_dir, seq, new_run(uri)).version) for _ in range(4)]
    alias = lambda a: str(client.get_model_version_by_alias(name, a).version)  # noqa: E731
    never = lambda mv: pytest.fail("same data: the champion's stored value must be used")  # noqa: E731

    d1 = registry.gate(cfg, versions[0], 0.10, "data-A", uri, never)
    assert d1.promoted and alias("champion") == versions[0]

    d2 = registry.gate(cfg, versions[1], 0.09, "data-A", uri, never)
    assert not d2.promoted and d2.champion_value == 0.10
    assert alias("champion") == versions[0]
    assert alias("challenger") == versions[1]
    assert "does not beat" in client.get_model_version(name, versions[1]).tags["gate.reason"]

    # Champion gated on other data: it is measured on this run's data (the callback) first.
    seen = []
    d3 = registry.gate(cfg, versions[2], 0.12, "data-B", uri, lambda mv: seen.append(str(mv.version)) or 0.11)
    assert seen == [versions[0]] and d3.promoted and d3.champion_value == 0.11
    assert alias("champion") == versions[2]

    registry.promote(cfg, name, versions[3], "hotfix approved by on-call", uri)
    assert alias("champion") == versions[3]
    assert registry.rollback(cfg, name, "hotfix regressed", uri) == versions[2]
    assert alias("champion") == versions[2]
    history = json.loads(client.get_registered_model(name).tags["champion_history"])
    assert [(h["version"], h["action"]) for h in history] == [
        (versions[0], "gate"), (versions[2], "gate"), (versions[3], "promote"), (versions[2], "rollback")]
    assert history[2]["reason"] == "hotfix approved by on-call"
    with pytest.raises(ValueError, match="reason"):
        registry.promote(cfg, name, versions[1], "  ", uri)


def test_promotions_are_serialised(setup):
    """While one promotion holds the model's lock, another waits for it."""
    cfg, uri, model_dir, seq = setup
    version = registered(cfg, uri, model_dir, seq, new_run(uri)).version
    done = threading.Event()
    lock = registry.promotion_lock(cfg, cfg.registered_model_name())
    with lock:
        worker = threading.Thread(target=lambda: (registry.gate(cfg, version, 0.1, "k", uri, None), done.set()))
        worker.start()
        time.sleep(1.5)
        assert not done.is_set()
    worker.join(30)
    assert done.is_set()


@pytest.mark.parametrize("method", ["grounding", "constrained"])
def test_served_model_ranks_as_the_evaluation_measured(setup, method):
    """The registered pyfunc and `evaluate` share `cft_core.ranking`: for the same rows and
    settings they return the same ranked items (history kept, as the offline metrics keep it)."""
    import mlflow

    from tasks.evaluation import evaluate

    cfg, uri, model_dir, seq = setup
    metric = "constrained/NDCG@10" if method == "constrained" else "grounding_adjusted/NDCG@10"
    cfg = cfg.model_copy(update={
        "registry": cfg.registry.model_copy(update={"gate_metric": metric}),
        "eval": cfg.eval.model_copy(update={"methods": [method], "max_samples": 6, "history_reliance": False})})
    version = registered(cfg, uri, model_dir, seq, new_run(uri)).version
    served = mlflow.pyfunc.load_model(f"models:/{cfg.registered_model_name()}/{version}")
    preds = pd.read_parquet(evaluate(cfg, model_dir, seq, progress=False).path / "predictions.parquet")
    column = "constrained_top10" if method == "constrained" else "grounding_adjusted_top10"
    histories = [[str(i) for i in ids] for ids in preds["history_item_ids"]]
    out = served.predict(pd.DataFrame({"history": histories}), params={"k": 10, "exclude_history": False})
    assert [list(r) for r in out["item_ids"]] == [list(r) for r in preds[column]]
    assert all(len(r) > 0 for r in out["item_ids"])
