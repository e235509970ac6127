"""Training stage under real DeepSpeed ZeRO on CPU, with a tiny model on real (capped) ML-100K.

Every run here goes through `tasks.training.train`: the same path as `cft train` and the flow.
"""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoModelForCausalLM, TrainerCallback

from tasks.training import TRAINING_VERSION, train
from tests.conftest import free_port
from tests.train.conftest import make_config

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore")]

# TRAINING_VERSION: the losses of steps 1 and 2 of test_objectives_share_one_path per objective
TRAINING_LOSSES = {
    1: {"sft": [6.37316, 6.38428], "pos": [6.37724, 6.38548], "cft": [7.01727, 7.02505]},
    2: {"sft": [6.37316, 6.38428], "pos": [6.37724, 6.38548], "cft": [7.01727, 7.02505]},  # fp32 unchanged
}

PROBE = torch.tensor([[5, 17, 42, 99, 7, 250, 3, 11]])  # any ids inside the tiny vocabulary


class CaptureFinalLogits(TrainerCallback):
    """Logits of the in-memory model at the end of training (after the best one is loaded)."""

    logits: torch.Tensor | None = None

    def on_train_end(self, args, state, control, model=None, **kwargs):
        params = list(model.parameters())
        gather = None
        if any(hasattr(p, "ds_id") for p in params):  # ZeRO-3: parameters are partitioned
            import deepspeed

            gather = deepspeed.zero.GatheredParameters(params)
            gather.__enter__()
        was_training = model.training
        model.eval()
        with torch.no_grad():
            self.logits = model(input_ids=PROBE).logits.float().clone()
        model.train(was_training)
        if gather is not None:
            gather.__exit__(None, None, None)


def _losses(summary, key="loss"):
    return {h["step"]: h[key] for h in summary["log_history"] if key in h and "step" in h}


@pytest.mark.parametrize("stage", ["zero2", "zero3", "zero2-offload"])
def test_zero_trains_saves_and_reloads(tmp_path, small_sequences, stage):
    seq, fp = small_sequences
    cfg = make_config(tmp_path, deepspeed=f"infra/deepspeed/{stage}.json", max_steps=12, eval_steps=6)
    capture = CaptureFinalLogits()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = train(cfg, seq, fp, extra_callbacks=[capture])
    assert not [w for w in caught if "pin_memory" in str(w.message)]  # no pinned memory without a GPU
    from deepspeed.comm import comm as ds_comm

    assert ds_comm.cdb.shm_comm_op is None  # DeepSpeed trained without its inference-only comm op

    evals = _losses(out.summary, "eval_loss")
    train_losses = _losses(out.summary)
    assert sorted(evals) == [6, 12]
    assert evals[12] < evals[6] and train_losses[12] < train_losses[1] - 0.3  # it learns
    # The saved folder reloads (safetensors only) and gives the in-memory model's logits.
    assert (out.model_dir / "model.safetensors").is_file()
    assert not list(out.model_dir.rglob("*.bin"))  # no pickles in the model folder
    reloaded = AutoModelForCausalLM.from_pretrained(out.model_dir, use_safetensors=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=PROBE).logits, capture.logits, atol=1e-5, rtol=1e-5)
    assert (out.model_dir / "tokenizer.json").is_file()
    # Same inputs again: the finished run is reused, not retrained.
    again = train(cfg, seq, fp)
    assert again.reused and again.model_dir == out.model_dir


@pytest.mark.parametrize("objective", ["sft", "pos", "cft"])
def test_objectives_share_one_path(tmp_path, small_sequences, objective):
    seq, fp = small_sequences
    out = train(make_config(tmp_path, objective=objective, max_steps=2, eval_steps=2), seq, fp)
    logs = [h for h in out.summary["log_history"] if "normal" in h]
    assert len(logs) == 2
    # The losses of each training code version (steps 1 and 2): a change in what a training does
    # for the same data and settings must bump tasks.training.TRAINING_VERSION, or the folders of
    # older trainings would be reused as if the new code had trained them; then pin its losses here.
    pinned = TRAINING_LOSSES.get(TRAINING_VERSION, {}).get(objective)
    assert pinned == pytest.approx([h["loss"] for h in logs], abs=1e-4), (
        f"{objective} losses {[round(h['loss'], 5) for h in logs]}: bump TRAINING_VERSION in tasks/training.py")
    alpha, beta = {"sft": (0.0, 1.0), "pos": (0.0, 0.25), "cft": (0.1, 0.25)}[objective]
    assert out.summary["objective"]["alpha"] == alpha and out.summary["objective"]["beta"] == beta
    for h in logs:
        assert math.isfinite(h["loss"])
        if objective == "cft":
            assert h["causal"] > 0
            assert h["loss"] == pytest.approx(h["normal"] + 0.1 * h["causal"], rel=1e-4)
        else:  # no counterfactual pass at all
            assert h["causal"] == 0.0
            assert h["loss"] == pytest.approx(h["normal"], rel=1e-5)


def test_lora_saves_merged_model_and_adapter(tmp_path, small_sequences):
    seq, fp = small_sequences
    cfg = make_config(tmp_path, max_steps=4, eval_steps=4, learning_rate=1e-2,
                      lora={"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0})
    capture = CaptureFinalLogits()
    out = train(cfg, seq, fp, extra_callbacks=[capture])
    assert (out.model_dir / "adapter" / "adapter_model.safetensors").is_file()
    merged = AutoModelForCausalLM.from_pretrained(out.model_dir, use_safetensors=True).eval()
    assert not any("lora" in n for n, _ in merged.named_parameters())
    base = AutoModelForCausalLM.from_pretrained(out.summary["model_source"], use_safetensors=True).eval()
    with torch.no_grad():
        merged_logits, base_logits = merged(input_ids=PROBE).logits, base(input_ids=PROBE).logits
    torch.testing.assert_close(merged_logits, capture.logits, atol=1e-5, rtol=1e-5)
    assert (merged_logits - base_logits).abs().max() > 1e-4  # the adapters did change the model


class StopAfter(TrainerCallback):
    """Simulates a crash right after the checkpoint at `step` is written."""

    def __init__(self, step: int):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            raise KeyboardInterrupt(f"stopped after step {state.global_step}")


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path, small_sequences):
    seq, fp = small_sequences
    settings = dict(max_steps=8, eval_steps=4, learning_rate=3e-3)
    full = train(make_config(tmp_path / "a", **settings), seq, fp)

    cfg = make_config(tmp_path / "b", **settings)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, seq, fp, extra_callbacks=[StopAfter(4)])
    run_dirs = list((tmp_path / "b" / "training").iterdir())
    assert len(run_dirs) == 1 and not (run_dirs[0] / "model").exists()  # nothing final written
    assert (run_dirs[0] / "checkpoints" / "checkpoint-4").is_dir()

    resumed = train(cfg, seq, fp)
    assert resumed.summary["resumed_from"].endswith("checkpoint-4")
    a, b = _losses(full.summary), _losses(resumed.summary)
    # The checkpoint carries steps 1-4's log; 5-8 were computed after resuming.
    assert sorted(b) == list(range(1, 9))
    for step in range(1, 9):
        assert b[step] == pytest.approx(a[step], abs=1e-5), f"step {step}"
    assert _losses(resumed.summary, "eval_loss")[8] == pytest.approx(_losses(full.summary, "eval_loss")[8], abs=1e-5)


def dataset_inputs(run) -> set[tuple]:
    """(name, digest, context, rows, source path) of each dataset input of an MLflow run."""
    return {(d.dataset.name, d.dataset.digest, {t.key: t.value for t in d.tags}["mlflow.data.context"],
             json.loads(d.dataset.profile)["num_rows"], json.loads(d.dataset.source)["uri"])
            for d in run.inputs.dataset_inputs}


def test_mlflow_run_has_params_step_metrics_and_model(tmp_path, small_sequences):
    from mlflow import MlflowClient

    seq, fp = small_sequences
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = make_config(tmp_path, max_steps=4, eval_steps=2, tracking={"enabled": True, "tracking_uri": uri})
    out = train(cfg, seq, fp)
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(out.summary["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["train.alpha"] == "0.1" and run.data.params["model.source"] == "tiny"
    assert run.data.params["train.effective_batch_size"] == "16"
    assert run.data.tags["data_fingerprint"] == fp
    for key in ("train/loss", "train/normal", "train/causal", "train/learning_rate"):
        history = client.get_metric_history(run.info.run_id, key)
        assert [m.step for m in history] == [1, 2, 3, 4], key
    logged = {h["step"]: h["loss"] for h in out.summary["log_history"] if "loss" in h}
    assert {m.step: m.value for m in client.get_metric_history(run.info.run_id, "train/loss")} == pytest.approx(logged)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "valid/loss")] == [2, 4]
    # The model is stored once in MLflow (inside the registered recommender), not also in the run.
    assert client.list_artifacts(run.info.run_id, "model_folder") == []
    assert {a.path for a in client.list_artifacts(run.info.run_id, "plots")} == {"plots/loss_curve.png"}
    assert run.data.tags["warm_start"].startswith("none")
    # The data window as MLflow dataset inputs (the runs table's Datasets column): the splits
    # it trained and early-stopped on, with their row counts; metadata only.
    name = seq.name
    assert dataset_inputs(run) == {
        (f"{name}/train", fp, "training", pq.read_metadata(seq / "train.parquet").num_rows, str((seq / "train.parquet").resolve())),
        (f"{name}/valid", fp, "validation", pq.read_metadata(seq / "valid.parquet").num_rows, str((seq / "valid.parquet").resolve())),
    }
    columns = json.loads(run.inputs.dataset_inputs[0].dataset.schema)["mlflow_colspec"]
    assert {c["name"]: c["type"] for c in columns} == {
        "user_id": "string", "history_item_ids": "array", "history_titles": "array", "target_item_id": "long",
        "target_title": "string", "timestamp": "long"}
    assert not (out.run_dir / "checkpoints").exists()  # a finished training keeps model/ only
    assert json.loads((out.model_dir / "training.json").read_text())["mlflow_run_id"] == run.info.run_id


def test_a_reused_training_gets_its_run_in_the_store_it_is_used_with(tmp_path, small_sequences):
    """A training folder outlives its tracking store (reset, or another MLFLOW_TRACKING_URI):
    reused with a store that lacks its run, the run is recorded there once from training.json,
    and evaluation and registration have a run to log into."""
    from mlflow import MlflowClient

    from tasks.chain import tracked_here

    seq, fp = small_sequences
    stores = {name: f"sqlite:///{tmp_path / name / 'mlflow.db'}" for name in ("a", "b")}
    for name in stores:
        (tmp_path / name).mkdir()
    cfg = {name: make_config(tmp_path, max_steps=4, eval_steps=2, tracking={"enabled": True, "tracking_uri": uri})
           for name, uri in stores.items()}

    first = tracked_here(cfg["a"], train(cfg["a"], seq, fp), seq)
    assert not first.reused
    original = first.summary["mlflow_run_id"]

    moved = tracked_here(cfg["b"], train(cfg["b"], seq, fp), seq)
    assert moved.reused and moved.model_dir == first.model_dir
    recorded = moved.summary["mlflow_run_id"]
    a, b = MlflowClient(stores["a"]), MlflowClient(stores["b"])
    run = b.get_run(recorded)
    assert recorded != original and run.info.status == "FINISHED"
    params, before = run.data.params, a.get_run(original).data.params
    assert params.pop("tracking.tracking_uri") == stores["b"] and before.pop("tracking.tracking_uri") == stores["a"]
    assert params == before  # the same settings, as in the run it was trained in
    assert run.data.tags["data_fingerprint"] == fp and "cft.recorded_from" in run.data.tags
    assert dataset_inputs(run) == dataset_inputs(a.get_run(original))  # the splits it trained on, as in a
    for key in ("train/loss", "train/causal", "valid/loss"):
        assert ([(m.step, m.value) for m in b.get_metric_history(recorded, key)]
                == [(m.step, m.value) for m in a.get_metric_history(original, key)]), key
    assert {f.path for f in b.list_artifacts(recorded)} >= {"plots", "training.json"}

    # Once per store: the same run again in b, the original one in a.
    assert tracked_here(cfg["b"], train(cfg["b"], seq, fp), seq).summary["mlflow_run_id"] == recorded
    assert len(b.search_runs([run.info.experiment_id])) == 1
    assert tracked_here(cfg["a"], train(cfg["a"], seq, fp), seq).summary["mlflow_run_id"] == original

    # A recording that crashed half-way (after its parameters, or after some metrics) is recorded
    # again from the start, not continued: every parameter, each step's metrics once, one run.
    real_log_batch = MlflowClient.log_batch
    for crash_at in ("params", "metrics"):
        (tmp_path / crash_at).mkdir()
        store = f"sqlite:///{tmp_path / crash_at / 'mlflow.db'}"
        cfg_c = make_config(tmp_path, max_steps=4, eval_steps=2, tracking={"enabled": True, "tracking_uri": store})

        def crash_after_logging(self, run_id, metrics=(), params=(), tags=(), *args, crash_at=crash_at, **kwargs):
            real_log_batch(self, run_id, metrics, params, tags, *args, **kwargs)
            if (params if crash_at == "params" else metrics):
                raise ConnectionError("the tracking server went away")

        with pytest.MonkeyPatch.context() as m:
            m.setattr(MlflowClient, "log_batch", crash_after_logging)
            with pytest.raises(ConnectionError):
                tracked_here(cfg_c, train(cfg_c, seq, fp), seq)
        again = tracked_here(cfg_c, train(cfg_c, seq, fp), seq).summary["mlflow_run_id"]
        c = MlflowClient(store)
        run = c.get_run(again)
        assert [r.info.run_id for r in c.search_runs([run.info.experiment_id])] == [again], crash_at
        assert run.info.status == "FINISHED" and len(run.data.params) == len(a.get_run(original).data.params)
        assert ([(m.step, m.value) for m in c.get_metric_history(again, "train/loss")]
                == [(m.step, m.value) for m in a.get_metric_history(original, "train/loss")]), crash_at


def test_an_interrupted_training_ends_its_run_and_resumes_into_it(tmp_path, small_sequences):
    """The run of a training that stopped says so (KILLED) and is not left active in the process
    (a flow task's retry, a replay go on in it); the resumed training finishes the same run."""
    import mlflow
    from mlflow import MlflowClient

    from tasks.tracking import experiment_name

    seq, fp = small_sequences
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = make_config(tmp_path, max_steps=4, eval_steps=2, tracking={"enabled": True, "tracking_uri": uri})
    with pytest.raises(KeyboardInterrupt):
        train(cfg, seq, fp, extra_callbacks=[StopAfter(2)])
    assert mlflow.active_run() is None
    client = MlflowClient(uri)
    (stopped,) = client.search_runs([client.get_experiment_by_name(experiment_name(cfg)).experiment_id])
    assert stopped.info.status == "KILLED" and stopped.data.tags["cft.stopped_by"] == "KeyboardInterrupt: stopped after step 2"
    out = train(cfg, seq, fp)
    run = client.get_run(out.summary["mlflow_run_id"])
    assert run.info.run_id == stopped.info.run_id and run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [1, 2, 3, 4]


def test_an_interrupted_training_resumes_into_a_new_run_when_its_run_is_in_another_store(tmp_path, small_sequences):
    from mlflow import MlflowClient

    from tasks.training import training_run_dir

    seq, fp = small_sequences
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = make_config(tmp_path, max_steps=2, eval_steps=2, tracking={"enabled": True, "tracking_uri": uri})
    run_dir = training_run_dir(cfg, fp)
    run_dir.mkdir(parents=True)
    (run_dir / "mlflow_run_id").write_text("0123456789abcdef0123456789abcdef")  # a run of another store
    out = train(cfg, seq, fp)
    run = MlflowClient(uri).get_run(out.summary["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.info.run_id != "0123456789abcdef0123456789abcdef"
    assert (run_dir / "mlflow_run_id").read_text() == run.info.run_id


def test_log_line_reads_a_trainer_entry():
    from tasks.training import log_line

    step = {"loss": 3.36154, "grad_norm": 10.5812, "learning_rate": 6.6667e-05, "normal": 2.56123,
            "causal": 9.71911, "tokens_per_second": 278.4, "samples_per_second": 0.7, "epoch": 0.0004}
    assert log_line(step) == "loss 3.362 (normal 2.561, causal 9.719), lr 6.67e-05, grad norm 10.6, 278 tokens/s"
    assert log_line({"loss": 2.5, "learning_rate": 1e-4}) == "loss 2.5, lr 0.0001"  # sft: no terms
    assert log_line({"eval_loss": 2.65612, "eval_runtime": 4.05, "epoch": 0.0004}) == "valid loss 2.656"
    assert log_line({"train_runtime": 92.3, "train_loss": 3.585, "epoch": 0.0008}) is None


def test_torchrun_two_processes_match_one_process(tmp_path, small_sequences):
    """2 processes x micro 4 x accumulation 2 == 1 process x micro 4 x accumulation 4: the same 16
    examples per step (the sampler's permutation is shared), so the same loss trajectory."""
    import subprocess
    import sys

    import yaml

    seq, fp = small_sequences
    settings = dict(max_steps=4, eval_steps=4, micro_batch_size=4, effective_batch_size=16)
    one = train(make_config(tmp_path / "one", **settings), seq, fp)

    data_root = seq.parent.parent  # reuse the prepared data: the CLI prepares, finds it, goes on
    cfg = make_config(data_root, **settings).model_dump(mode="json")
    (tmp_path / "two.yaml").write_text(yaml.safe_dump(cfg))
    port = free_port()
    env = {k: v for k, v in __import__("os").environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_addr", "127.0.0.1", "--master_port", str(port),
         "-m", "cft_cli", "train", "-c", str(tmp_path / "two.yaml")],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summaries = [json.loads(p.read_text()) for p in (data_root / "training").glob("*/model/training.json")]
    two = [s for s in summaries if s["world_size"] == 2]
    assert len(two) == 1
    a, b = _losses(one.summary), _losses(two[0])
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-4), f"step {step}"
    for key in ("normal", "causal"):
        assert _losses(two[0], key)[4] == pytest.approx(_losses(one.summary, key)[4], rel=1e-4)


@pytest.mark.parametrize("tamper", ["change", "plant"])
def test_a_tampered_checkpoint_is_refused_before_anything_is_unpickled(tmp_path, small_sequences, monkeypatch, tamper):
    from schemas.errors import DataError

    seq, fp = small_sequences
    cfg = make_config(tmp_path, max_steps=4, eval_steps=2)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, seq, fp, extra_callbacks=[StopAfter(2)])
    checkpoint = next((tmp_path / "training").iterdir()) / "checkpoints" / "checkpoint-2"
    if tamper == "change":
        victim = next(p for p in sorted(checkpoint.rglob("*.pt")))
        victim.write_bytes(victim.read_bytes() + b"\0")
    else:
        (checkpoint / "rng_state_evil.pth").write_bytes(b"not what this run saved")
    loads = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(a) or pytest.fail("torch.load was called"))
    with pytest.raises(DataError, match="files differ from what this run saved") as err:
        train(cfg, seq, fp)
    assert ("changed" if tamper == "change" else "added") in str(err.value) and loads == []


def test_the_training_code_version_joins_the_key_only_past_one(tmp_path, monkeypatch):
    import tasks.training as training
    from tasks.storage import fingerprint

    cfg = make_config(tmp_path)
    monkeypatch.setattr(training, "TRAINING_VERSION", 1)
    before = training.run_fingerprint(cfg, "data-fp")
    assert cfg.model.base is None  # fingerprinted as the default it had before it could be inherited
    model = {**cfg.model.model_dump(), "base": "smollm2"}
    assert before == fingerprint({"data": "data-fp", "model": model, "world_size": 1,
                                  "train": cfg.train.model_dump(exclude={"keep_checkpoints"})})  # trainings kept
    monkeypatch.setattr(training, "TRAINING_VERSION", 2)
    assert training.run_fingerprint(cfg, "data-fp") != before


def test_a_second_process_with_the_same_training_waits_and_reuses_the_model(tmp_path, small_sequences, caplog):
    """Two processes on one training folder (the deployment run twice, `cft run` beside the stack):
    the second waits on the folder's lock and then reuses the model the first wrote, instead of
    training into the same folder at once. The first process is played by this thread, holding the
    lock while the second (`train` in a thread) starts."""
    import logging
    import threading

    from filelock import FileLock

    from tasks.training import training_run_dir

    seq, fp = small_sequences
    cfg = make_config(tmp_path)
    run_dir = training_run_dir(cfg, fp)
    first = FileLock(tmp_path / "locks" / "training" / f"{run_dir.name}.lock")
    first.acquire()
    second: list = []
    with caplog.at_level(logging.WARNING, logger="tasks.training"):
        waiting = threading.Thread(target=lambda: second.append(train(cfg, seq, fp)))
        waiting.start()
        waiting.join(timeout=3)
        assert waiting.is_alive() and not run_dir.exists()  # waits, writes nothing
        (run_dir / "model").mkdir(parents=True)  # the first process finishes its model
        (run_dir / "model" / "training.json").write_text(json.dumps({"global_step": 8, "by": "the first"}))
        first.release()
        waiting.join(timeout=60)
    assert not waiting.is_alive() and second[0].reused and second[0].summary["by"] == "the first"
    assert f"another process is training {run_dir}; waiting for it to finish" in caplog.text


def _folder_of(tmp_path, name: str, cfg, seq, build):
    """A model folder as a user brings one: the tiny data's tokenizer and `build(vocab)`'s model
    with that tokenizer's special tokens."""
    from transformers import AutoTokenizer

    from tasks.training import model_folder

    folder = tmp_path / name
    tokenizer = AutoTokenizer.from_pretrained(model_folder(cfg, seq))  # the tiny model's, for this data
    tokenizer.save_pretrained(folder)
    model = build(len(tokenizer))
    model.config.update({"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
                         "pad_token_id": tokenizer.pad_token_id})
    model.save_pretrained(folder)
    return folder


def test_a_model_the_step_cannot_train_is_refused_as_input(tmp_path, small_sequences):
    """A model folder the CFT step cannot train (RecurrentGemma: padding reaches its outputs) stops
    at the first step with an input error (exit 2) that names the folder and the model type; no
    model is written. (Every refusal of `check_model_supported` takes this path; the library tests
    go through each.)"""
    from schemas.errors import ConfigError
    from tasks.training import training_run_dir
    from tests.conftest import tiny_model_of_type

    seq, fp = small_sequences
    cfg = make_config(tmp_path, max_steps=2, eval_steps=2)
    folder = _folder_of(tmp_path, "recurrent_gemma", cfg, seq, lambda vocab: tiny_model_of_type("recurrent_gemma", vocab))
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"source": str(folder)})})
    with pytest.raises(ConfigError, match=f"model.source {folder}: model type 'recurrent_gemma' gives other outputs"):
        train(cfg, seq, fp)
    assert not (training_run_dir(cfg, fp) / "model").exists()


@pytest.mark.parametrize("kind", ["gemma2", "granitemoehybrid"])
def test_other_architectures_train_under_zero3(tmp_path, small_sequences, kind):
    """A Gemma-2 folder (logits soft-capped after the head, windowed layers) and a Granite-4.0-H
    one (Mamba-2 layers between attention layers, so rows run whole; logits scaled after the head;
    mixture of experts) pass the first step's check and train under ZeRO-3 (the head gathered
    inside the transformed logits); the saved folder reloads and predicts as the trained model
    did."""
    from cft_core.tiny import build_tiny_model
    from tests.conftest import tiny_model_of_type

    seq, fp = small_sequences
    cfg = make_config(tmp_path, deepspeed="infra/deepspeed/zero3.json", max_steps=4, eval_steps=4)
    build = ((lambda vocab: build_tiny_model(vocab, arch="gemma2")) if kind == "gemma2"  # Gemma-2's window of 4,096
             else (lambda vocab: tiny_model_of_type("granitemoehybrid", vocab)))
    folder = _folder_of(tmp_path, kind, cfg, seq, build)
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"source": str(folder)})})
    capture = CaptureFinalLogits()
    out = train(cfg, seq, fp, extra_callbacks=[capture])

    losses = _losses(out.summary)
    assert sorted(losses) == [1, 2, 3, 4] and all(math.isfinite(v) for v in losses.values())
    reloaded = AutoModelForCausalLM.from_pretrained(out.model_dir, use_safetensors=True).eval()
    with torch.no_grad():
        logits = reloaded(input_ids=PROBE).logits
    torch.testing.assert_close(logits, capture.logits, atol=1e-5, rtol=1e-5)
    if kind == "gemma2":
        assert reloaded.config.final_logit_softcapping == 0.5
        assert logits.abs().max() <= 0.5  # capped


def test_lora_targets_the_model_lacks_are_refused_as_input(tmp_path, small_sequences):
    """LoRA's default targets are attention projections (q_proj ...); a Mamba folder has none:
    an input error naming the field and the model's own linear layers, before anything is written.
    `all-linear` would include out_proj, which peft refuses on Mamba (its kernel bypasses the
    layer): an input error too. The layers it accepts train, an adapter on each."""
    import transformers as hf
    from safetensors.torch import load_file

    from schemas.errors import ConfigError
    from tasks.training import training_run_dir

    seq, fp = small_sequences
    cfg = make_config(tmp_path, max_steps=2, eval_steps=2, lora={"enabled": True})
    folder = _folder_of(tmp_path, "mamba", cfg, seq, lambda vocab: hf.MambaForCausalLM(
        hf.MambaConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2)))
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"source": str(folder)})})
    with pytest.raises(ConfigError, match=r"model.lora.target_modules \['q_proj', 'k_proj', 'v_proj', 'o_proj'\]: "
                                          r"no module of .*mamba.* linear layers are named dt_proj, in_proj, out_proj, x_proj "
                                          r"\(`all-linear` names them all\)"):
        train(cfg, seq, fp)
    assert not training_run_dir(cfg, fp).exists()

    def with_targets(targets):
        lora = cfg.model.lora.model_copy(update={"target_modules": targets})
        return cfg.model_copy(update={"model": cfg.model.model_copy(update={"lora": lora})})

    with pytest.raises(ConfigError, match=r"model.lora.target_modules all-linear: peft refuses them for .*mamba.*: "
                                          r".*Module 'out_proj' is incompatible with Mamba-based models"):
        train(with_targets("all-linear"), seq, fp)  # all-linear includes out_proj, which Mamba's kernel bypasses
    assert not training_run_dir(with_targets("all-linear"), fp).exists()
    out = train(with_targets(["in_proj", "x_proj", "dt_proj"]), seq, fp)
    adapters = load_file(str(out.model_dir / "adapter" / "adapter_model.safetensors"))
    assert {name.split(".lora_")[0].rsplit(".", 1)[-1] for name in adapters} == {"dt_proj", "in_proj", "x_proj"}


@pytest.mark.parametrize("zero", ["zero2", "zero3"])
def test_a_tied_head_is_saved_once(tmp_path, small_sequences, zero):
    """A model whose head is its input embedding (SmolLM2, Gemma) is saved as it came: one copy of
    the tensor (the Trainer's save under ZeRO-2 wrote the head again, 21 % of SmolLM2's file), and
    the folder reloads tied and predicts as the trained model did."""
    from safetensors.torch import load_file

    from tests.conftest import tiny_model_of_type

    seq, fp = small_sequences
    cfg = make_config(tmp_path, deepspeed=f"infra/deepspeed/{zero}.json", max_steps=2, eval_steps=2)
    folder = _folder_of(tmp_path, "gemma3_text", cfg, seq, lambda vocab: tiny_model_of_type("gemma3_text", vocab))
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"source": str(folder)})})
    capture = CaptureFinalLogits()
    out = train(cfg, seq, fp, extra_callbacks=[capture])

    saved = load_file(str(out.model_dir / "model.safetensors"))
    assert saved.keys() == load_file(str(folder / "model.safetensors")).keys() and "lm_head.weight" not in saved
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.model_dir.iterdir() if p.is_file()}
    assert modes["model.safetensors"] == modes["config.json"]  # readable as the files beside it
    reloaded = AutoModelForCausalLM.from_pretrained(out.model_dir, use_safetensors=True).eval()
    assert reloaded.get_output_embeddings().weight is reloaded.get_input_embeddings().weight
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=PROBE).logits, capture.logits, atol=1e-5, rtol=1e-5)


class CaptureTrainable(TrainerCallback):
    """Names of the parameters the Trainer's model trains, when training begins."""

    names: set[str] = set()

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.names = {name for name, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize(("zero", "lora"), [("zero2", None), ("zero2", "attention"), ("zero2", "all-linear"),
                                          ("zero3", None)])
def test_a_multimodal_folder_trains_its_text_model_only(tmp_path, small_sequences, zero, lora):
    """A Gemma-3 multimodal folder (loaded whole, vision tower included) trains its text model
    only: the tower and projector are frozen (no optimizer state for them), LoRA puts no adapter
    on the tower's own attention projections, and a LoRA target found only in the tower is an input
    error. The saved folder (ZeRO-3: gathered from the partitions) loads whole again with the
    tower as it was and every text weight trained; training.json names the frozen modules."""
    from cft_core.model_sources import load_causal_lm
    from schemas.errors import ConfigError
    from tests.conftest import tiny_model_of_type

    seq, fp = small_sequences
    towers = ["model.vision_tower", "model.multi_modal_projector"]
    targets = {"all-linear": {"target_modules": "all-linear"}, "attention": {}}  # attention: the default targets
    cfg = make_config(tmp_path, deepspeed=f"infra/deepspeed/{zero}.json", max_steps=2, eval_steps=2,
                      **({"lora": {"enabled": True, **targets[lora]}} if lora else {}))
    folder = _folder_of(tmp_path, "gemma3", cfg, seq, lambda vocab: tiny_model_of_type("gemma3", vocab))
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"source": str(folder)})})
    if lora == "attention":  # the tower's MLP (fc1) is the only one of that name: not a target in the text model
        lora_fc1 = cfg.model.lora.model_copy(update={"target_modules": ["fc1"]})
        only_in_tower = cfg.model_copy(update={"model": cfg.model.model_copy(update={"lora": lora_fc1})})
        with pytest.raises(ConfigError, match=r"\['fc1'\]: no module of .* linear layers are named down_proj, gate_proj"):
            train(only_in_tower, seq, fp)

    capture = CaptureTrainable()
    out = train(cfg, seq, fp, extra_callbacks=[capture])
    assert out.summary["frozen_modules"] == towers
    in_towers = {n for n in capture.names if any(t + "." in n for t in towers)}
    assert capture.names and not in_towers
    before = dict(load_causal_lm(folder).named_parameters())  # refuses a folder missing any tensor
    after = dict(load_causal_lm(out.model_dir).named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and not any(n.startswith(t + ".") for n in changed for t in towers)
    if lora:
        assert all("lora_" in n for n in capture.names)
        adapted = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in capture.names}
        attention = {"q_proj", "k_proj", "v_proj", "o_proj"}
        assert adapted == (attention if lora == "attention" else attention | {"gate_proj", "up_proj", "down_proj"})
    else:  # everything else trains, and moved
        assert capture.names == changed == {n for n in before if not any(n.startswith(t + ".") for t in towers)}


class CaptureDtypes(TrainerCallback):
    """The dtypes the first training step ran with: of the weights the optimizer steps, and of a
    linear layer's output (bf16 under autocast)."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.weights = {p.dtype for p in model.parameters() if p.requires_grad}
        self.outputs: list[torch.dtype] = []  # this run's own (a class-level list was shared by every test)
        linear = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
        self.hook = linear.register_forward_hook(lambda m, i, o: self.outputs.append(o.dtype))

    def on_step_end(self, args, state, control, **kwargs):
        self.hook.remove()


def test_bf16_without_deepspeed_is_mixed_precision_with_fp32_weights(tmp_path, small_sequences):
    """precision bf16 on one device without DeepSpeed (a single GPU, `deepspeed: null`): bf16
    matrix products, fp32 weights. Stepped in bf16, a weight of 1.0 (every norm weight of a new
    model) cannot move by less than 2^-9: a first Adam step of lr 1e-4 would leave each as it
    was. (bf16 runs on the CPU too, slowly: a tiny model takes seconds.)"""
    from safetensors.torch import load_file

    seq, fp = small_sequences
    cfg = make_config(tmp_path, precision="bf16", deepspeed=None, learning_rate=1e-4, warmup_steps=0,
                      max_steps=1, eval_steps=1)
    dtypes = CaptureDtypes()
    out = train(cfg, seq, fp, extra_callbacks=[dtypes])

    assert out.summary["precision"] == "bf16"
    assert dtypes.weights == {torch.float32} and dtypes.outputs and set(dtypes.outputs) == {torch.bfloat16}
    norms = {k: v for k, v in load_file(str(out.model_dir / "model.safetensors")).items() if "norm" in k}
    assert norms and all(v.dtype == torch.float32 for v in norms.values())
    for name, weight in norms.items():  # each element took its step: |1 - w| about lr, not 0
        assert ((weight - 1).abs() > 1e-5).all(), name


def test_lora_in_bf16_without_deepspeed_trains_fp32_adapters_on_a_bf16_base(tmp_path, small_sequences):
    """LoRA at bf16 on one device: the frozen base loads bf16 (half the memory), peft keeps the
    adapters fp32. The model's forward returns fp32 hidden states under mixed precision and the
    loss applies the bf16 head to them itself: it failed there with a dtype mismatch."""
    from safetensors.torch import load_file

    seq, fp = small_sequences
    cfg = make_config(tmp_path, precision="bf16", deepspeed=None, warmup_steps=0, max_steps=1, eval_steps=1,
                      lora={"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0})
    dtypes = CaptureDtypes()
    out = train(cfg, seq, fp, extra_callbacks=[dtypes])

    assert dtypes.weights == {torch.float32} and set(dtypes.outputs) == {torch.bfloat16}
    adapters = load_file(str(out.model_dir / "adapter" / "adapter_model.safetensors"))
    trained = [v for k, v in adapters.items() if "lora_B" in k]  # zero until the first step
    assert trained and all(v.dtype == torch.float32 and v.abs().max() > 0 for v in trained)


class CaptureDistributedType(TrainerCallback):
    """accelerate's distributed type when training begins (DEEPSPEED under DeepSpeed)."""

    def on_train_begin(self, args, state, control, **kwargs):
        from accelerate.state import AcceleratorState

        self.kind = AcceleratorState().distributed_type


def test_a_training_without_deepspeed_after_one_with_it_runs_without_it(tmp_path, small_sequences):
    """accelerate keeps ACCELERATE_USE_DEEPSPEED=true in the environment after a DeepSpeed
    training, and the next Trainer in the process then ran DeepSpeed whatever the config said."""
    from accelerate.utils import DistributedType

    seq, fp = small_sequences
    kinds = []
    for root, deepspeed in (("with", "infra/deepspeed/zero2.json"), ("without", None), ("again", "infra/deepspeed/zero2.json")):
        capture = CaptureDistributedType()
        train(make_config(tmp_path / root, deepspeed=deepspeed, max_steps=1, eval_steps=1), seq, fp,
              extra_callbacks=[capture])
        kinds.append(capture.kind == DistributedType.DEEPSPEED)
    assert kinds == [True, False, True]


class CaptureMasterWeights(TrainerCallback):
    """After the first optimizer step: the dtypes of the module's weights and of DeepSpeed ZeRO's
    master partitions, and the master values (flattened)."""

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        if state.global_step == 1:
            zero = optimizer.optimizer  # accelerate's wrapper around DeepSpeedZeroOptimizer
            self.module = {p.dtype for p in model.parameters()}
            self.master = torch.cat([t.detach().float().flatten() for t in zero.single_partition_of_fp32_groups])
            self.master_dtypes = {t.dtype for t in zero.single_partition_of_fp32_groups}


def test_bf16_under_zero2_steps_fp32_master_weights(tmp_path, small_sequences):
    """configs/gpu.yaml's setting (ZeRO-2, bf16): DeepSpeed runs the module in bf16 and steps an
    fp32 copy, so an update too small for bf16 is kept there, not rounded away. After one step
    at lr 1e-4 the master holds values that bf16 cannot (at the start they were the bf16
    module's own)."""
    seq, fp = small_sequences
    cfg = make_config(tmp_path, precision="bf16", learning_rate=1e-4, warmup_steps=0, max_steps=1, eval_steps=1)
    capture = CaptureMasterWeights()
    train(cfg, seq, fp, extra_callbacks=[capture])

    assert capture.module == {torch.bfloat16} and capture.master_dtypes == {torch.float32}
    rounded = capture.master.to(torch.bfloat16).float()
    assert (capture.master != rounded).float().mean() > 0.5  # most elements moved off bf16's grid


def test_bf16_asked_of_a_gpu_without_it_is_a_config_error(tmp_path, small_sequences, monkeypatch):
    """`train.precision: bf16` on a GPU older than Ampere (a V100, a T4): a config error naming
    the field and the GPU, before anything is loaded or written (the Trainer raised a ValueError
    about "bf16/gpu" with a traceback); `eval.precision` alike. `auto` picks fp32 there."""
    from schemas.errors import ConfigError
    from tasks.settings import ranking_settings
    from tasks.training import training_run_dir

    seq, fp = small_sequences
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Tesla V100-SXM2-16GB")
    cfg = make_config(tmp_path, precision="bf16", deepspeed=None, max_steps=1, eval_steps=1)
    with pytest.raises(ConfigError, match=r"train.precision=bf16: Tesla V100-SXM2-16GB has no bf16 support"):
        train(cfg, seq, fp)
    assert not training_run_dir(cfg, fp).exists()
    evaluated = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"precision": "bf16"})})
    with pytest.raises(ConfigError, match=r"eval.precision=bf16: Tesla V100-SXM2-16GB"):
        ranking_settings(evaluated, "constrained")
    assert ranking_settings(cfg, "constrained").precision == "fp32"  # auto


def test_records_longer_than_cutoff_len_are_a_config_error_before_training(tmp_path, small_sequences):
    """A train.cutoff_len too short for the data's titles: a config error naming the split file,
    its rows and the length they need, before anything is loaded or written (the collator's
    ValueError stopped the run with a traceback at the batch that held the first such record)."""
    from schemas.errors import ConfigError
    from tasks.training import training_run_dir

    seq, fp = small_sequences
    cfg = make_config(tmp_path, cutoff_len=60, max_steps=1, eval_steps=1)
    with pytest.raises(ConfigError, match=r"train.cutoff_len=60 is too short for [0-9,]+ record\(s\) of "
                                          r".*train.parquet even with only their newest history title: rows \(0-based\) 0 \("
                                          r"[0-9,]+ tokens\).* Raise train.cutoff_len to at least [0-9,]+"):
        train(cfg, seq, fp)
    assert not training_run_dir(cfg, fp).exists()


def test_split_records_are_read_records_kept_columnar(tmp_path):
    """The trainer's dataset (`SplitRecords`) gives the records `read_records` gives, the same
    sample under a cap, and each record's newest history title
    and target for the cutoff check, from a file of several row groups (Arrow chunks)."""
    import pyarrow as pa

    from schemas import tables
    from tasks.training import SplitRecords, read_records

    rng = np.random.default_rng(0)
    rows = [{"user_id": f"u{r % 7}", "history_item_ids": list(range(n)), "history_titles": [f"T{r}.{j}" for j in range(n)],
             "target_item_id": r % 5, "target_title": f"target {r}", "timestamp": r}
            for r, n in enumerate(rng.integers(1, 6, 40).tolist())]
    path = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=tables.RECORDS), path, row_group_size=16)
    records = SplitRecords(path)
    assert records.table.column("history_titles").num_chunks == 3
    wanted = [{k: r[k] for k in SplitRecords.COLUMNS} for r in read_records(path)]
    assert len(records) == 40 and [records[i] for i in range(40)] == wanted
    newest, targets = records.newest_and_target_titles()
    assert newest.to_pylist() == [r["history_titles"][-1] for r in rows]
    assert targets.to_pylist() == [r["target_title"] for r in rows]
    sample = SplitRecords(path, limit=9, seed=3)
    expected = read_records(path, limit=9, seed=3)
    assert sample.split_rows == [r["split_row"] for r in expected]
    assert [sample[i] for i in range(9)] == [{k: r[k] for k in SplitRecords.COLUMNS} for r in expected]
    newest, targets = sample.newest_and_target_titles()  # over the sample, read from three row groups
    assert newest.to_pylist() == [r["history_titles"][-1] for r in expected]
    assert targets.to_pylist() == [r["target_title"] for r in expected]


def test_split_records_hold_each_distinct_title_once(tmp_path):
    """A title recurs in many histories: the records hold it once per row group, indices elsewhere."""
    import pyarrow as pa

    from schemas import tables
    from tasks.training import SplitRecords

    titles = [f"A film with a title of some length, part {i} (1995)" for i in range(20)]
    rows = [{"user_id": "u", "history_item_ids": list(range(10)), "history_titles": [titles[(r + j) % 20] for j in range(10)],
             "target_item_id": 0, "target_title": titles[r % 20], "timestamp": r} for r in range(2_000)]
    path = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=tables.RECORDS), path, row_group_size=500)
    records = SplitRecords(path)
    plain = pq.read_table(path, columns=SplitRecords.COLUMNS)
    assert records.table.nbytes < plain.nbytes / 5
    assert [records[i] for i in range(0, 2_000, 37)] == plain.take(list(range(0, 2_000, 37))).to_pylist()


def test_long_uncapped_passes_are_said_before_they_start(tmp_path, small_sequences, caplog, monkeypatch):
    """A full ML-25M's splits (2.5M records each) made every validation pass take hours, and the
    evaluation's ranking days, silently: each uncapped pass over more records than its bound is
    said before it starts, with the setting that caps it; a capped one, or one within its bound, is not."""
    import logging

    import tasks.evaluation as evaluation
    import tasks.training as training
    from tasks.evaluation import evaluate

    seq, fp = small_sequences  # 32 valid and 32 test records
    for module in (training, evaluation):
        monkeypatch.setattr(module, "MANY_EVAL_RECORDS", 16)
        monkeypatch.setattr(module, "MANY_RANKED_RECORDS", 31)

    def said(train_cap, eval_cap, diagnostics_cap):
        cfg = make_config(tmp_path, max_steps=1, eval_steps=1, max_eval_samples=train_cap)
        cfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={
            "methods": ["constrained"], "num_beams": 2, "num_return_sequences": 2, "history_reliance": False,
            "max_samples": eval_cap, "diagnostics_max_samples": diagnostics_cap})})
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="tasks"):
            evaluate(cfg, train(cfg, seq, fp).model_dir, seq, progress=False)
        return [r.getMessage() for r in caplog.records if "caps them" in r.getMessage()]

    assert said(None, None, None) == [
        f"the validation loss at every evaluation reads all 32 records of {seq / 'valid.parquet'}; "
        "train.max_eval_samples caps them (a seeded sample)",
        f"ranking (a beam search each) reads all 32 records of {seq / 'test.parquet'}; eval.max_samples "
        "(the gate's: registry.gate_max_samples) caps them (a seeded sample)",
        f"the diagnostics pass reads all 32 records of {seq / 'test.parquet'}; eval.diagnostics_max_samples caps "
        "them (a seeded sample)"]
    assert said(8, 8, 8) == []
    monkeypatch.setattr(evaluation, "MANY_RANKED_RECORDS", 32)
    monkeypatch.setattr(training, "MANY_EVAL_RECORDS", 32)
    monkeypatch.setattr(evaluation, "MANY_EVAL_RECORDS", 32)
    assert said(None, None, None) == []  # not more than the bound
