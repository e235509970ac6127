"""The retraining loop over time (tasks/replay.py + tasks/chain.py + the registry), with the tiny
model and a real MLflow SQLite store: three periods of a dataset with a quiet month in it.

    period 1 (as of day 101): the popularity baseline becomes the first champion; the LLM
                              version scores no better and stays challenger
    (a person promotes the LLM version)
    period 2 (as of day 131): no interaction since day 100: nothing is trained or gated
    period 3 (as of day 161): new interactions: training starts from the champion's weights
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from schemas.config import PipelineConfig

pytestmark = pytest.mark.integration
DAY = 86400


def write_dataset(folder) -> None:
    """80 users, 30 items; items drawn from a steep popularity (what the baseline knows), each
    user active in days 0-100 and again in days 135-160 (nothing in between)."""
    rng = np.random.default_rng(0)
    popularity = 1.0 / np.arange(1, 31) ** 1.2
    popularity /= popularity.sum()
    rows = []
    for user in range(80):
        for block, (lo, hi) in enumerate(((0, 100), (135, 160))):
            for t in np.sort(rng.uniform(lo * DAY, hi * DAY, 8 if block == 0 else 4)):
                rows.append((f"u{user}", f"i{rng.choice(30, p=popularity)}", int(t) + 10**9))
    folder.mkdir(parents=True)
    pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).to_csv(folder / "interactions.csv", index=False)
    titles = [f"The {w} Film {i}" for i, w in enumerate(["Red", "Blue", "Green", "Gold", "Grey", "Pink"] * 5)]
    pd.DataFrame({"item_id": [f"i{i}" for i in range(30)], "title": titles}).to_csv(folder / "items.csv", index=False)


def config(root) -> PipelineConfig:
    uri = f"sqlite:///{root / 'mlflow.db'}"
    return PipelineConfig.model_validate({
        "data": {"name": "living", "data_root": str(root), "k_core": 0, "min_timestamp": "2000-01-01T00:00:00Z",
                 "source": {"format": "generic", "path": str(root / "inputs" / "interactions.csv"),
                            "items_path": str(root / "inputs" / "items.csv")}},
        "model": {"source": "champion", "base": "tiny",
                  "tiny": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "vocab_size": 400}},
        "train": {"max_steps": 2, "eval_steps": 2, "micro_batch_size": 8, "effective_batch_size": 16,
                  "learning_rate": 1e-3, "warmup_steps": 0, "early_stopping_patience": 0, "logging_steps": 1},
        "eval": {"methods": ["constrained"], "num_beams": 2, "num_return_sequences": 2, "max_samples": 16,
                 "history_reliance": False},
        "registry": {"gate_max_samples": 16},
        "tracking": {"tracking_uri": uri},
    })


def test_replay_gates_against_popularity_skips_quiet_periods_and_warm_starts(tmp_path, monkeypatch, capsys):
    import transformers
    from mlflow import MlflowClient

    from tasks import registry
    from tasks.chain import run_pipeline
    from tasks.replay import replay

    write_dataset(tmp_path / "inputs")
    cfg = config(tmp_path)
    name = cfg.registered_model_name()
    client = MlflowClient(cfg.tracking.tracking_uri, registry_uri=cfg.tracking.tracking_uri)

    loaded = []  # (folder, weights) of every model training loads
    real = transformers.AutoModelForCausalLM.from_pretrained.__func__

    def recording(cls, path, *args, **kwargs):
        out = real(cls, path, *args, **kwargs)
        model = out[0] if kwargs.get("output_loading_info") else out
        loaded.append((str(path), {k: v.detach().clone() for k, v in model.state_dict().items()}))
        return out

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", classmethod(recording))
    outputs = []

    logged = []  # the Trainer's log entries, as the replay flow's task-log callback gets them

    class Entries(transformers.TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            logged.append(logs)

    def run_period(period_cfg):
        loaded.clear()
        out = run_pipeline(period_cfg, progress=False, train_callbacks=[Entries()])
        outputs.append((out, list(loaded)))
        if len(outputs) == 1:  # a person overrides the gate after period 1
            registry.promote(period_cfg, name, out.version, "reviewed offline", period_cfg.tracking.tracking_uri)
        return out

    start = datetime.fromtimestamp(10**9 + 101 * DAY, UTC)
    timeline = replay(cfg, 3, "30d", tmp_path / "timeline.json", start, run_period=run_period, say=lambda _: None)
    p1, p2, p3 = timeline["periods"]
    # progress=False (the replay flow): the Trainer's entries reach the callbacks, not the console
    # (they were printed into the worker's log as {'loss': ...} dicts).
    assert any("loss" in entry for entry in logged) and "'loss'" not in capsys.readouterr().out

    # Period 1: popularity is the first champion; the LLM version does not beat it.
    history = json.loads(client.get_registered_model(name).tags["champion_history"])
    assert history[0]["version"] == "1" and "popularity baseline" in history[0]["reason"]
    assert client.get_model_version(name, "1").tags["cft.kind"] == "popularity"
    llm = client.get_model_version(name, p1["version"])
    assert llm.tags["cft.kind"] == "llm" and llm.tags["gate.decision"] == "kept challenger"
    assert llm.tags["gate.champion_version"] == "1" and float(llm.tags["gate.value"]) == pytest.approx(p1["challenger"])
    assert "does not beat" in llm.tags["gate.reason"] and "**Gate**" in llm.description
    assert p1["challenger"] <= p1["champion"] == p1["popularity"]
    assert p1["ci"][0] <= p1["difference"] <= p1["ci"][1]

    # Period 2: no new interactions: the same sequences, nothing trained, nothing registered.
    out2, loaded2 = outputs[1]
    assert p2["decision"] == "unchanged" and "no new interactions" in p2["reason"] and not p2["trained"]
    assert out2.sequences.reused and out2.trained is None and loaded2 == []
    assert p2["interactions"] == p1["interactions"]

    # Period 3: new interactions, trained from the champion (the promoted period-1 model).
    out3, loaded3 = outputs[2]
    assert p3["interactions"] > p1["interactions"] and p3["trained"]
    assert out3.trained.summary["warm_start"] == f"{name} v{p1['version']}"
    champion_weights = load_file(str(outputs[0][0].trained.model_dir / "model.safetensors"))
    start_path, start_weights = loaded3[0]
    assert start_path == str(outputs[0][0].trained.model_dir)
    for key, value in champion_weights.items():
        torch.testing.assert_close(start_weights[key], value, rtol=0, atol=0)
    run = client.get_run(out3.trained.summary["mlflow_run_id"])
    assert run.data.tags["warm_start"] == f"{name} v{p1['version']}"
    # A finished training keeps its model only: no checkpoints left behind.
    assert not (out3.trained.run_dir / "checkpoints").exists()
    assert json.loads((tmp_path / "timeline.json").read_text())["periods"] == timeline["periods"]
