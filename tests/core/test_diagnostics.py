"""Teacher-forced diagnostics (cft_core/diagnostics.py) against a straightforward per-row
computation: each row alone, unpadded, the full logits, log-softmax summed over the label tokens."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cft_core.diagnostics import label_likelihoods
from cft_core.prompts import PromptBuilder
from cft_core.tiny import build_tiny_model
from tests.conftest import make_records, tiny_model_of_type


def reference_log_prob(model, tokenizer, prompt: str, response: str) -> tuple[float, int]:
    """log p(response tokens, EOS | prompt), one unpadded row, from the definition."""
    prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    labels = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = torch.tensor([prompt_ids + labels])
    logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
    total = sum(logp[len(prompt_ids) + t - 1, y].item() for t, y in enumerate(labels))
    return total, len(labels)


@pytest.mark.parametrize("arch", ["llama", "gemma2", "minicpm3"])
def test_history_effect_equals_the_per_row_computation(tiny_tokenizer, arch):
    """Also for a model whose attention window (16) is shorter than every prompt: the rows then
    run whole, as the shared start's padding would shift the window (cft_core.prefix); and for
    multi-head latent attention (MiniCPM3: keys and values of different widths in the cache)."""
    vocab = len(tiny_tokenizer)
    model = {
        "llama": lambda: build_tiny_model(vocab, hidden_size=32, num_layers=2, num_heads=4, seed=3),
        "gemma2": lambda: build_tiny_model(vocab, arch="gemma2", sliding_window=16, seed=3),
        "minicpm3": lambda: tiny_model_of_type("minicpm3", vocab),
    }[arch]().eval()
    prompts = PromptBuilder.for_domain("movies")
    records = make_records(7, seed=1)  # uneven history lengths: padding in every batch
    got = label_likelihoods(model, tiny_tokenizer, prompts, records, batch_size=3)
    for i, r in enumerate(records):
        factual, tokens = reference_log_prob(model, tiny_tokenizer, prompts.factual(r["history_titles"]),
                                             prompts.response(r["target_title"]))
        counterfactual, _ = reference_log_prob(model, tiny_tokenizer, prompts.counterfactual(),
                                               prompts.response(r["target_title"]))
        assert got.tokens[i] == tokens
        np.testing.assert_allclose(got.factual[i], factual, rtol=1e-4)
        np.testing.assert_allclose(got.counterfactual[i], counterfactual, rtol=1e-4)
        np.testing.assert_allclose(got.history_effect[i], factual - counterfactual, rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(got.history_effect_per_token[i], (factual - counterfactual) / tokens,
                                   rtol=1e-3, atol=1e-5)
        np.testing.assert_allclose(got.target_nll[i], -factual / tokens, rtol=1e-4)
    assert np.all(got.factual < 0) and np.all(got.counterfactual < 0)


def test_the_counterfactual_prompt_runs_once_per_call(tiny_tokenizer):
    """The counterfactual prompt is the same for every row: it runs once (all but its last
    token), and each batch's counterfactual pass runs only the last prompt token and the labels."""
    model = build_tiny_model(len(tiny_tokenizer), hidden_size=32, num_layers=2, num_heads=4, seed=4).eval()
    prompts = PromptBuilder.for_domain("movies")
    shapes: list[tuple] = []
    hook = model.get_input_embeddings().register_forward_hook(lambda m, a, o: shapes.append(tuple(a[0].shape)))
    try:
        got = label_likelihoods(model, tiny_tokenizer, prompts, make_records(6, seed=2), batch_size=3)
    finally:
        hook.remove()
    counterfactual_prompt = len(tiny_tokenizer(prompts.counterfactual())["input_ids"])
    once = [s for s in shapes if s[0] == 1]  # the factual prompts' common start, the counterfactual prompt
    assert len(once) == 2 and once[1] == (1, counterfactual_prompt - 1)
    factual_1, counterfactual_1, factual_2, counterfactual_2 = [s for s in shapes if s[0] == 3]
    assert counterfactual_1[1] == int(got.tokens[:3].max()) + 1
    assert counterfactual_2[1] == int(got.tokens[3:].max()) + 1
    # The first factual batch runs each row after the common start it stored (the instruction at least).
    rows = [len(tiny_tokenizer(prompts.factual(r["history_titles"]))["input_ids"]) + int(t)
            for r, t in zip(make_records(6, seed=2)[:3], got.tokens[:3], strict=True)]
    assert once[0][1] > 10 and factual_1[1] == max(rows) - once[0][1]
