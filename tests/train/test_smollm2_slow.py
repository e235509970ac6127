"""The packaged SmolLM2-135M trains under ZeRO-2 on CPU (slow: ~40 s, after the session's conversion)."""

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from tasks.training import train
from tests.train.conftest import make_config

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore")]


def test_smollm2_trains_a_few_steps(tmp_path, small_sequences, smollm2_cache, monkeypatch):
    monkeypatch.setenv("CFT_CACHE_DIR", str(smollm2_cache))  # the session's conversion
    seq, fp = small_sequences
    cfg = make_config(tmp_path, max_steps=2, eval_steps=2, micro_batch_size=2, effective_batch_size=4,
                      learning_rate=1e-4, cutoff_len=512, max_eval_samples=8)
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"source": "smollm2"})})
    out = train(cfg, seq, fp)
    logs = [h for h in out.summary["log_history"] if "normal" in h]
    assert [h["step"] for h in logs] == [1, 2]
    # A pretrained model already predicts titles far better than chance (ln 49152 = 10.8).
    assert all(math.isfinite(h["loss"]) and h["normal"] < 6.0 for h in logs)
    model = AutoModelForCausalLM.from_pretrained(out.model_dir, use_safetensors=True)
    assert model.config.vocab_size == 49152
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=torch.tensor([[1, 2, 3]])).logits).all()
