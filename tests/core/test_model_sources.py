"""Model folders: the packaged SmolLM2-135M (converted once to safetensors, reloaded, still a real
model), and folders a user names that hold no causal LM, refused with the folder named."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from cft_core import model_sources
from cft_core.tiny import save_tiny_model_folder


def test_unknown_source_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither 'smollm2', 'tiny' nor a Hugging Face model folder"):
        model_sources.resolve_model_folder(str(tmp_path))


def test_a_path_is_a_folder_even_when_named_like_the_packaged_model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = save_tiny_model_folder(tmp_path / "smollm2", ["a b c d"], vocab_size=64)
    assert model_sources.resolve_model_folder(Path("smollm2")) == Path("smollm2")
    assert model_sources.load_causal_lm(Path("smollm2")).config.vocab_size == len(model_sources.load_tokenizer(folder))


def test_a_tokenizer_larger_than_the_models_embedding_is_named(tmp_path):
    from cft_core.tiny import build_tiny_tokenizer

    folder = save_tiny_model_folder(tmp_path / "m", ["a b c d"], vocab_size=64)
    model = model_sources.load_causal_lm(folder)
    model_sources.check_tokenizer_fits(model, model_sources.load_tokenizer(folder), folder)
    words = [f"w{i}x{j}" for i in range(40) for j in range(40)]
    build_tiny_tokenizer([" ".join(words)], vocab_size=500).save_pretrained(folder)  # another model's
    tokenizer = model_sources.load_tokenizer(folder)
    assert len(tokenizer) > model.get_input_embeddings().num_embeddings
    with pytest.raises(model_sources.ModelFolderError, match=f"{folder}: the tokenizer has {len(tokenizer)} tokens"):
        model_sources.check_tokenizer_fits(model, tokenizer, folder)


def _spoil(folder, how: str) -> None:
    """Turn a good tiny model folder into one of the bad folders users bring."""
    if how == "bert":  # another kind of model: from_pretrained would load it as BertLMHeadModel, head random
        from transformers import BertConfig, BertModel

        (folder / "config.json").unlink()
        (folder / "model.safetensors").unlink()
        BertModel(BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=32)).save_pretrained(folder)
    elif how == "no_head":  # the backbone alone, saved without its LM head
        from transformers import AutoModel

        backbone = AutoModel.from_pretrained(folder)
        (folder / "model.safetensors").unlink()
        backbone.save_pretrained(folder)
    elif how == "invalid_json":
        (folder / "config.json").write_text("{not json")
    elif how == "unknown_type":
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "model_type": "mystery"}))
    elif how == "pickle_only":
        (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    elif how == "no_tokenizer":
        for f in folder.glob("t*"):
            if f.name.startswith("tokenizer"):
                f.unlink()
        for f in folder.glob("special_tokens_map.json"):
            f.unlink()


@pytest.mark.parametrize(("how", "message"), [
    ("bert", "is not a causal-LM checkpoint for BertLMHeadModel: its weights lack"),
    ("no_head", r"is not a causal-LM checkpoint for LlamaForCausalLM: its weights lack 1 tensor the model needs \(lm_head"),
    ("invalid_json", "cannot be loaded as a causal LM: .*config.json"),
    ("unknown_type", "cannot be loaded as a causal LM: .*mystery"),
    ("pickle_only", "holds no \\*.safetensors weights"),
])
def test_a_folder_without_a_causal_lm_is_named_not_loaded_half_random(tmp_path, how, message):
    good = save_tiny_model_folder(tmp_path / "good", ["a b c d", "hello world"], vocab_size=64)
    model_sources.load_causal_lm(good)  # the folder before it is spoiled loads
    folder = shutil.copytree(good, tmp_path / how)
    _spoil(folder, how)
    with pytest.raises(model_sources.ModelFolderError, match=f"{folder}.*{message}") as caught:
        model_sources.load_causal_lm(folder)
    assert caught.value.user_error  # reported in a few lines, exit 2


def test_a_folder_without_a_tokenizer_is_named(tmp_path):
    folder = save_tiny_model_folder(tmp_path / "m", ["a b c d", "hello world"], vocab_size=64)
    model_sources.load_tokenizer(folder)
    _spoil(folder, "no_tokenizer")
    with pytest.raises(model_sources.ModelFolderError, match=f"{folder} holds no usable tokenizer"):
        model_sources.load_tokenizer(folder)


@pytest.mark.slow
def test_smollm2_converts_once_and_answers(smollm2_cache):
    """The session's conversion (the fixture) left a complete folder and no temporary one; asking
    again returns it as it is; the model answers."""
    folder = smollm2_cache / model_sources.SMOLLM2_CACHE_NAME
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    assert not list(smollm2_cache.glob(".smollm2*")), "no temporary folder left behind"
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert model_sources.smollm2_folder(smollm2_cache) == folder  # cached: not converted again
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp

    model = model_sources.load_causal_lm(str(folder))
    tok = model_sources.load_tokenizer(str(folder))
    assert sum(p.numel() for p in model.parameters()) == 134_515_008 and len(tok) == 49_152
    ids = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids["input_ids"].shape[1]:])


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_saved_weights_get_the_mode_of_the_files_beside_them(tmp_path, umask):
    """safetensors 0.8 writes 0600 whatever the umask: a saved folder's weights would be readable by
    their writer only (not by a server or container running as another user). They get the mode a
    new file gets, as config.json has."""
    import os
    import stat

    previous = os.umask(umask)
    try:
        folder = save_tiny_model_folder(tmp_path / "m", ["a b c d"], vocab_size=64)
    finally:
        os.umask(previous)
    mode = stat.S_IMODE((folder / "model.safetensors").stat().st_mode)
    assert mode == stat.S_IMODE((folder / "config.json").stat().st_mode) == 0o666 & ~umask
