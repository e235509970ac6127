"""Multimodal checkpoints (Gemma-3 4B and up, Gemma-4, Qwen3.5): AutoModelForCausalLM loads
Gemma's whole, image tower included, and Qwen3.5's as its text model alone. Recommending reads
text only: the folder loads and predicts as the full model does on text, the image towers are
named so that training freezes them, and beam search runs in the multimodal class as in any other.
(The step against the reference for each class: tests/core/test_loss.py.)"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from cft_core.generation import generate_titles
from cft_core.model_sources import load_causal_lm
from cft_core.modeling import modules_outside_text_model
from cft_core.tiny import TINY_ARCHITECTURES, build_tiny_model
from tests.conftest import MULTIMODAL_TYPES, RECURRENT_TYPES, TABLE_ONLY_TYPES, tiny_model_of_type
from tests.core.test_generation import beam_search_case

IDS = torch.tensor([[5, 17, 42, 99, 7, 250, 3, 11], [9, 8, 7, 6, 5, 4, 3, 2]])  # text tokens of the tiny vocabulary


@pytest.mark.parametrize(("model_type", "loaded_class", "towers"), [
    ("gemma3", "Gemma3ForConditionalGeneration", ["model.vision_tower", "model.multi_modal_projector"]),
    ("qwen3_5", "Qwen3_5ForCausalLM", []),  # the checkpoint's vision weights are left in the file
])
def test_a_multimodal_folder_loads_and_predicts_text_as_the_full_model(tmp_path, model_type, loaded_class, towers):
    """The folder a user downloads (config with a text and a vision part, weights of both) loads
    through load_causal_lm, nothing missing; on text its logits are the full model's; the modules
    outside the text model are exactly the image towers, and they are exactly the parameters a
    text step leaves without a gradient."""
    full = tiny_model_of_type(model_type, 300).eval()
    full.save_pretrained(tmp_path)
    model = load_causal_lm(tmp_path)
    assert type(model).__name__ == loaded_class
    with torch.no_grad():  # within float error: the tiny model was built with eager attention, loads with SDPA
        torch.testing.assert_close(model(input_ids=IDS).logits, full(input_ids=IDS).logits, rtol=1e-5, atol=1e-5)
    assert modules_outside_text_model(model) == towers

    model.train()
    model(input_ids=IDS).logits.float().pow(2).mean().backward()
    no_gradient = {name for name, p in model.named_parameters() if p.grad is None}
    in_towers = {name for name, _ in model.named_parameters() if any(name.startswith(t + ".") for t in towers)}
    assert no_gradient == in_towers


def test_a_text_only_model_has_nothing_outside_its_text_model():
    """Every text-only architecture here: decoder, embeddings and head hold every parameter, so
    training freezes nothing."""
    models = [build_tiny_model(300, arch=arch) for arch in TINY_ARCHITECTURES]
    text_only = dict.fromkeys(t for t in TABLE_ONLY_TYPES + RECURRENT_TYPES if t not in MULTIMODAL_TYPES)  # each once
    models += [tiny_model_of_type(t, 300) for t in text_only]
    assert [modules_outside_text_model(m) for m in models] == [[]] * len(models)


@pytest.mark.parametrize("model_type", ["gemma3", "gemma4"])
def test_beam_search_in_the_multimodal_class_equals_each_prompt_alone(tiny_tokenizer, model_type):
    """Batched beam search with the shared prompt prefill and the in-place beam cache, through
    the multimodal class's own generation inputs == each prompt searched alone by generate."""
    model, _, texts, settings, trie = beam_search_case(
        tiny_tokenizer, True, rows=4, records_seed=2, model_seed=5,
        model=tiny_model_of_type(model_type, len(tiny_tokenizer)).eval(),
        num_beams=3, num_return_sequences=3, min_new_tokens=2, max_new_tokens=16, batch_size=4)
    batched, batched_scores = generate_titles(model, tiny_tokenizer, texts, settings, trie=trie, progress=False,
                                              with_scores=True)
    alone, alone_scores = generate_titles(model, tiny_tokenizer, texts, dataclasses.replace(settings, batch_size=1),
                                          trie=trie, progress=False, share_prefill=False, with_scores=True)
    assert batched == alone and len(batched) == 4 and all(len(b) == 3 for b in batched)
    assert sum(batched_scores, []) == pytest.approx(sum(alone_scores, []), abs=1e-5)
