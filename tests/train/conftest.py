"""Shared data for the training tests: ML-100K from the recbole wheel, capped small."""

from __future__ import annotations

import pytest

from schemas.config import PipelineConfig

SMALL_CAPS = {"train": 128, "valid": 32, "test": 32}


def make_config(data_root, **train) -> PipelineConfig:
    """Tiny-model config on the capped ML-100K data; `train` overrides TrainConfig fields."""
    base = dict(
        objective="cft", max_steps=8, micro_batch_size=8, effective_batch_size=16,
        learning_rate=3e-3, warmup_steps=2, eval_steps=4, logging_steps=1,
        early_stopping_patience=0, deepspeed="infra/deepspeed/zero2.json",
    )
    base.update(train)
    lora = base.pop("lora", None)
    tracking = base.pop("tracking", {"enabled": False})
    model = {"source": "tiny", "tiny": {"hidden_size": 32, "num_layers": 2, "num_heads": 4, "vocab_size": 600}}
    if lora:
        model["lora"] = lora
    return PipelineConfig.model_validate({
        "data": {"name": "ml-100k-tiny", "data_root": str(data_root), "max_samples": SMALL_CAPS},
        "model": model, "train": base, "tracking": tracking,
    })


@pytest.fixture(scope="session")
def small_sequences(tmp_path_factory):
    """(sequences folder, fingerprint), prepared once per session."""
    from tasks.data import prepare

    root = tmp_path_factory.mktemp("data")
    _, seq, _ = prepare(make_config(root).data)
    return seq.path, seq.fingerprint


def with_rows_in_train(sequences, dest, split: str):
    """A copy of a sequences folder whose training split also holds the records of `split`, so
    that every such record's (newest history item, target) pair is a training transition: the
    Markov-chain baseline then ranks those targets first, where the capped fixture's 128 training
    records would leave it with almost no transitions (and equal to popularity). A test device."""
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    shutil.copytree(sequences, dest)
    train = pq.read_table(dest / "train.parquet")
    pq.write_table(pa.concat_tables([train, pq.read_table(dest / f"{split}.parquet").cast(train.schema)]),
                   dest / "train.parquet")
    return dest
