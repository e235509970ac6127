"""The `cft` flow in-process (Prefect's test server): failures stop it with the stage's message,
registry calls retry transient errors. The deployed flow end to end is tests/e2e/test_stack.py."""

from __future__ import annotations

import pytest

from schemas.config import PipelineConfig
from schemas.errors import DataValidationError
from tests.data.test_malformed import GOOD_ITEMS, _write
from tests.train.test_registry import new_run

pytestmark = pytest.mark.integration


def test_validation_failure_stops_the_flow_and_registers_nothing(tmp_path, prefect_harness):
    from mlflow import MlflowClient

    from flows.cft import cft_pipeline
    from tasks.tracking import tracking_uri

    data = _write(tmp_path, items=GOOD_ITEMS.replace("Title 3", ""))  # a null title
    cfg = PipelineConfig(data=data)
    state = cft_pipeline(config=cfg, return_state=True)
    assert state.is_failed()
    with pytest.raises(DataValidationError, match="items.title: expect_column_values_to_not_be_null"):
        state.result()
    assert "expect_column_values_to_not_be_null" in state.message
    assert not (tmp_path / "sequences").exists() and not (tmp_path / "training").exists()
    assert MlflowClient(tracking_uri(cfg), registry_uri=tracking_uri(cfg)).search_registered_models() == []


def test_registry_call_is_retried_after_a_transient_error(tmp_path, prefect_harness, monkeypatch, small_sequences):
    """The first registry call fails as a dropped connection would; the task's retry succeeds."""
    from prefect import flow

    from tasks import pipeline, registry
    from tests.train.conftest import make_config

    seq, fp = small_sequences
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = make_config(tmp_path, tracking={"enabled": True, "tracking_uri": uri})
    from tasks.training import model_folder

    trained = {"model_dir": str(model_folder(cfg, seq)), "run_id": new_run(uri)}
    real, calls = registry.register, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("connection reset by peer")
        return real(*args, **kwargs)

    monkeypatch.setattr(registry, "register", flaky)
    fast = pipeline.register_task.with_options(retry_delay_seconds=0)

    @flow
    def register_only():
        return fast(cfg, trained, {"path": str(seq), "fingerprint": fp}, {"split": "test", "metrics": {"m/NDCG@10": 0.5}})

    out = register_only()
    assert len(calls) == 2 and out["version"] == "1"

    # An input error is not retried: it fails at once with its message.
    calls.clear()
    monkeypatch.setattr(registry, "register", lambda *a, **k: calls.append(1) or (_ for _ in ()).throw(ValueError("bad tag")))
    with pytest.raises(ValueError, match="bad tag"):
        register_only()
    assert len(calls) == 1
