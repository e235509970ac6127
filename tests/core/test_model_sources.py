"""The packaged SmolLM2-135M: converted once to safetensors, reloaded, and still a real model."""

import pytest
import torch

from cft_core import model_sources


def test_unknown_source_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither 'smollm2', 'tiny' nor a Hugging Face model folder"):
        model_sources.resolve_model_folder(str(tmp_path))


@pytest.mark.slow
def test_smollm2_converts_once_and_answers(tmp_path):
    folder = model_sources.smollm2_folder(tmp_path)
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    assert not list(tmp_path.glob(".smollm2*")), "no temporary folder left behind"
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert model_sources.smollm2_folder(tmp_path) == folder  # cached: not converted again
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp

    model = model_sources.load_causal_lm(str(folder))
    tok = model_sources.load_tokenizer(str(folder))
    assert sum(p.numel() for p in model.parameters()) == 134_515_008 and len(tok) == 49_152
    ids = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids["input_ids"].shape[1]:])
