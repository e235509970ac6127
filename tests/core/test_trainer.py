"""CFTTrainer: the HF Trainer's loop with the CFT loss, checked against the kernel.

SGD (not Adam) makes a step proportional to the gradient, so a wrong normaliser shows up in the
weights after one step.
"""

from pathlib import Path

import pytest
import torch
from transformers import TrainingArguments

from cft_core.collate import PairedCollator
from cft_core.loss import compute_cft_loss, window_normalizers
from cft_core.prompts import PromptBuilder
from cft_core.tiny import build_tiny_model
from cft_core.trainer import CFTObjective, CFTTrainer
from tests.conftest import make_records

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _one_sgd_step(tmp_path, tokenizer, records, micro, accumulation, objective):
    model = build_tiny_model(len(tokenizer), seed=3)
    args = TrainingArguments(
        output_dir=str(tmp_path / f"m{micro}a{accumulation}"), per_device_train_batch_size=micro,
        gradient_accumulation_steps=accumulation, max_steps=1, learning_rate=0.5, optim="sgd",
        lr_scheduler_type="constant", max_grad_norm=0.0, report_to="none", save_strategy="no",
        remove_unused_columns=False, use_cpu=True, seed=0, data_seed=0, disable_tqdm=True,
    )
    collator = PairedCollator(tokenizer, PromptBuilder.for_domain("movies"))
    trainer = CFTTrainer(model=model, args=args, train_dataset=records, data_collator=collator,
                         objective=objective)
    # No shuffling: the window holds records[0 : micro * accumulation] in order.
    trainer._get_train_sampler = lambda *a, **k: torch.utils.data.SequentialSampler(records)
    trainer.train()
    return model, collator


@pytest.mark.parametrize("weight_causal_only", [False, True])
def test_window_normaliser_makes_accumulation_exact(tmp_path, tiny_tokenizer, weight_causal_only):
    records = make_records(8, seed=5)
    objective = CFTObjective(alpha=0.3, beta=0.25, weight_causal_only=weight_causal_only)
    one, collator = _one_sgd_step(tmp_path, tiny_tokenizer, records, 8, 1, objective)
    four, _ = _one_sgd_step(tmp_path, tiny_tokenizer, records, 2, 4, objective)

    # Reference: one SGD step on the whole window with the kernel, by hand.
    ref = build_tiny_model(len(tiny_tokenizer), seed=3)
    batch = collator(records)
    weight, tokens = window_normalizers([batch], 0.25)
    out = compute_cft_loss(ref, batch, 0.3, 0.25, normalizer=weight,
                           weight_causal_only=weight_causal_only, token_normalizer=tokens)
    out.loss.backward()
    with torch.no_grad():
        for p in ref.parameters():
            p -= 0.5 * p.grad
    for (name, a), b, c in zip(one.named_parameters(), four.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a, c, atol=2e-6, rtol=1e-5, msg=f"8x1 vs reference: {name}")
        torch.testing.assert_close(b, c, atol=2e-6, rtol=1e-5, msg=f"2x4 vs reference: {name}")


def test_logged_terms_and_eval_loss(tmp_path, tiny_tokenizer):
    records = make_records(16, seed=6)
    model = build_tiny_model(len(tiny_tokenizer), seed=4)
    args = TrainingArguments(
        output_dir=str(tmp_path / "o"), per_device_train_batch_size=4, gradient_accumulation_steps=2,
        max_steps=2, learning_rate=0.0, lr_scheduler_type="constant", report_to="none",
        save_strategy="no", remove_unused_columns=False, use_cpu=True, logging_steps=1,
        disable_tqdm=True, per_device_eval_batch_size=16,
    )
    collator = PairedCollator(tiny_tokenizer, PromptBuilder.for_domain("movies"))
    objective = CFTObjective(alpha=0.1, beta=0.25, weight_causal_only=False)
    trainer = CFTTrainer(model=model, args=args, train_dataset=records, eval_dataset=records,
                         data_collator=collator, objective=objective)
    trainer._get_train_sampler = lambda *a, **k: torch.utils.data.SequentialSampler(records)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "normal" in h]
    assert [h["step"] for h in logs] == [1, 2]
    # lr = 0: the model does not move, so each window's terms can be recomputed exactly.
    for h, window in zip(logs, (records[:8], records[8:]), strict=True):
        out = compute_cft_loss(model, collator(window), 0.1, 0.25)
        assert h["normal"] == pytest.approx(out.normal.item(), abs=1e-5)
        assert h["causal"] == pytest.approx(out.causal.item(), abs=1e-5)
        assert h["loss"] == pytest.approx(out.loss.item(), abs=1e-5)
        assert h["tokens_per_second"] > 0
    # Validation loss: the weighted normal term alone, on the factual half.
    metrics = trainer.evaluate()
    expected = compute_cft_loss(model, collator(records), 0.0, 0.25, run_counterfactual=False).normal
    assert metrics["eval_loss"] == pytest.approx(expected.item(), abs=1e-5)


def test_throughput_counts_the_steps_not_the_evaluation_between_them(tmp_path, tiny_tokenizer, monkeypatch):
    """The logged tokens/s and samples/s divide by the optimizer steps' own time: an evaluation
    after step 1 that takes 1,000 s (the trainer's clock is moved on by that much in it) does not
    count against step 2, which it did (the step after each evaluation logged ~3x too slow)."""
    import time
    import types

    from transformers import TrainerCallback

    import cft_core.trainer as trainer_mod

    skipped = [0.0]  # seconds the clock has been moved on
    monkeypatch.setattr(trainer_mod, "time", types.SimpleNamespace(
        perf_counter=lambda: time.perf_counter() + skipped[0], time=time.time))

    class SlowEvaluation(TrainerCallback):
        def on_evaluate(self, args, state, control, **kwargs):
            skipped[0] += 1000.0

    records = make_records(16, seed=6)
    args = TrainingArguments(
        output_dir=str(tmp_path / "o"), per_device_train_batch_size=4, gradient_accumulation_steps=2,
        max_steps=2, learning_rate=0.0, lr_scheduler_type="constant", report_to="none",
        save_strategy="no", eval_strategy="steps", eval_steps=1, remove_unused_columns=False,
        use_cpu=True, logging_steps=1, disable_tqdm=True, per_device_eval_batch_size=16,
    )
    trainer = CFTTrainer(model=build_tiny_model(len(tiny_tokenizer), seed=4), args=args, train_dataset=records,
                         eval_dataset=records[:4], data_collator=PairedCollator(tiny_tokenizer, PromptBuilder.for_domain("movies")),
                         objective=CFTObjective(alpha=0.1, beta=0.25, weight_causal_only=False), callbacks=[SlowEvaluation()])
    trainer.train()
    assert skipped[0] == 2000.0  # evaluated after both steps
    logs = [h for h in trainer.state.log_history if "normal" in h]
    assert [h["step"] for h in logs] == [1, 2]
    # 8 samples a step: under 100 s each, as a tiny model's step is (1,000 s + the step, counted).
    assert all(h["samples_per_second"] > 8 / 100 for h in logs), logs


def test_op_builds_go_to_this_venv_and_a_killed_builds_lock_is_removed(tmp_path, monkeypatch, capsys):
    """A `lock` left by a killed DeepSpeed op build made every later training wait forever; the
    build directory defaults to this environment's own, and an old lock is removed, a fresh one kept."""
    import os
    import sys
    import time

    from torch.utils.cpp_extension import _get_build_directory

    from cft_core.trainer import STALE_BUILD_LOCK_S, ensure_op_build_dir

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", "-")  # so that teardown restores what was there
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR")
    assert ensure_op_build_dir() == Path(sys.prefix) / "torch_extensions"
    assert os.environ["TORCH_EXTENSIONS_DIR"] == str(Path(sys.prefix) / "torch_extensions")

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))  # an explicit choice is kept
    # Where torch builds, and locks, an op (read at call time, so under the folder just set):
    stale = Path(_get_build_directory("deepspeed_shm_comm", False)) / "lock"
    live = Path(_get_build_directory("cpu_adam", False)) / "lock"
    assert stale.parent.parent == tmp_path  # (the layout the sweep looks in)
    for lock in (stale, live):
        lock.parent.mkdir(parents=True, exist_ok=True)
        lock.touch()
    old = time.time() - STALE_BUILD_LOCK_S - 5
    os.utime(stale, (old, old))
    capsys.readouterr()
    assert ensure_op_build_dir() == tmp_path
    assert not stale.exists() and live.exists()
    assert (stale.parent).is_dir()  # only the lock goes, not the build
    assert f"removed a stale op-build lock left by a killed build: {stale}" in capsys.readouterr().err


def test_deepspeed_builds_no_shared_memory_comm_op(monkeypatch, tmp_path):
    """DeepSpeed compiled its shared-memory comm op (~41 s of g++) in every new environment before
    the first step, for inference alone: once skipped, its backend loads nothing and builds nothing."""
    from deepspeed.comm.torch import build_shm_op

    from cft_core.trainer import skip_shm_comm_op

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))  # where a build would go
    skip_shm_comm_op()
    assert build_shm_op() is None  # what DeepSpeed's torch backend calls as it sets up
    assert not any(tmp_path.iterdir())
