"""Models with recurrent layers (Mamba, Falcon-H1, Granite-4.0-H, Jamba, Qwen3-Next, LFM2,
RecurrentGemma): their state is not keys and values that a shared start could hand to the rows,
and padding inside a row would run through it, so every pass runs each row whole
(`cft_core.prefix.can_share_prefix`). Each path against each row run alone, unpadded: the training
step (values and gradients), beam search, and the diagnostics."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from cft_core.collate import PairedCollator
from cft_core.diagnostics import label_likelihoods
from cft_core.generation import generate_titles
from cft_core.loss import compute_cft_loss
from cft_core.modeling import recurrent_layer_types
from cft_core.prefix import can_share_prefix
from cft_core.prompts import PromptBuilder
from cft_core.reference import reference_cft_loss
from tests.conftest import RECURRENT_TYPES, make_records, tiny_model_of_type
from tests.core.test_diagnostics import reference_log_prob
from tests.core.test_generation import beam_search_case
from tests.core.test_loss import _grads


@pytest.mark.parametrize("model_type", RECURRENT_TYPES)
def test_the_step_equals_each_row_alone(tiny_tokenizer, model_type):
    """The step on a padded batch == the reference loss built from each row run alone (no padding
    anywhere), values and gradients: sum_i W_i L_i / sum_i W_i, W_i the row's total weight. And
    the rows ran whole: every forward pass saw the whole batch (no shared start of one row, no
    packs), since the model's layers keep a recurrent state."""
    model = tiny_model_of_type(model_type, len(tiny_tokenizer))
    assert recurrent_layer_types(model) and not can_share_prefix(model, 1)
    collate = PairedCollator(tiny_tokenizer, PromptBuilder.for_domain("movies"), padding_side="left")
    records = make_records(4, seed=3)  # histories of 1, 4, 7 and 10 titles: padding in both halves
    batch = collate(records)

    widths: list[tuple] = []
    hook = model.get_input_embeddings().register_forward_hook(lambda m, a, o: widths.append(tuple(a[0].shape)))
    try:
        ours = compute_cft_loss(model, batch, alpha=0.3, beta=0.25)
    finally:
        hook.remove()
    assert widths == [tuple(batch["input_ids"].shape), tuple(batch["cf_input_ids"].shape)]
    ours.loss.backward()
    g_ours = _grads(model)
    model.zero_grad()

    total, weight = 0.0, 0.0
    for record in records:
        alone = reference_cft_loss(model, collate([record]), alpha=0.3, beta=0.25)
        total, weight = total + alone.loss * alone.weight_sum, weight + alone.weight_sum
    (total / weight).backward()
    g_alone = _grads(model)

    assert ours.loss.item() == pytest.approx((total / weight).item(), abs=1e-5)
    assert g_ours.keys() == g_alone.keys() and len(g_ours) > 0
    for name in g_alone:
        torch.testing.assert_close(g_ours[name], g_alone[name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("model_type", RECURRENT_TYPES)
def test_beam_search_in_a_batch_equals_each_prompt_alone(tiny_tokenizer, model_type):
    """Beam search from left-padded prompts, in the model's own cache (the in-place beam cache
    holds keys and values only) == each prompt searched alone: the same titles and scores."""
    model, _, texts, settings, trie = beam_search_case(
        tiny_tokenizer, False, rows=4, records_seed=2, model_seed=5,
        model=tiny_model_of_type(model_type, len(tiny_tokenizer)),
        num_beams=3, num_return_sequences=3, min_new_tokens=2, max_new_tokens=8, batch_size=4)
    batched, batched_scores = generate_titles(model, tiny_tokenizer, texts, settings, progress=False, with_scores=True)
    alone, alone_scores = generate_titles(model, tiny_tokenizer, texts, dataclasses.replace(settings, batch_size=1),
                                          progress=False, with_scores=True)
    assert batched == alone and len(batched) == 4 and all(len(b) == 3 for b in batched)
    assert sum(batched_scores, []) == pytest.approx(sum(alone_scores, []), abs=1e-5)


@pytest.mark.parametrize("model_type", ["qwen3_next", "falcon_h1"])
def test_diagnostics_equal_each_row_alone(tiny_tokenizer, model_type):
    """Teacher-forced log-likelihoods of both prompts, in padded batches == each row alone."""
    model = tiny_model_of_type(model_type, len(tiny_tokenizer)).eval()
    prompts = PromptBuilder.for_domain("movies")
    records = make_records(5, seed=1)
    got = label_likelihoods(model, tiny_tokenizer, prompts, records, batch_size=3)
    for i, r in enumerate(records):
        response = prompts.response(r["target_title"])
        factual, tokens = reference_log_prob(model, tiny_tokenizer, prompts.factual(r["history_titles"]), response)
        counterfactual, _ = reference_log_prob(model, tiny_tokenizer, prompts.counterfactual(), response)
        assert got.tokens[i] == tokens
        np.testing.assert_allclose(got.factual[i], factual, rtol=1e-4)
        np.testing.assert_allclose(got.counterfactual[i], counterfactual, rtol=1e-4)
