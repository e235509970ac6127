"""The prompts' common start (cft_core/prefix.py): layout and common prefix by hand, and the
cached keys/values against the model's own."""

from __future__ import annotations

import torch

from cft_core.modeling import IGNORE_INDEX as X
from cft_core.prefix import (
    PromptPrefixCache,
    common_prefix_length,
    layout_prompts,
    shared_prefix_length,
)
from cft_core.prompts import PromptBuilder
from cft_core.tiny import build_tiny_model
from tests.conftest import TITLES


def test_common_prefix_length_by_hand():
    assert common_prefix_length([[1, 2, 3], [1, 2, 4], [1, 2]]) == 2
    assert common_prefix_length([[1, 2, 3], [1, 2, 3]]) == 3
    assert common_prefix_length([[5], [1, 2]]) == 0
    assert common_prefix_length([[7, 8]]) == 2


def test_a_reused_cache_leaves_the_token_before_the_first_label_out():
    # Same tokens up to the first label (column 3): packing shares all three, a reused cache two,
    # since the state predicting the first label must be computed per row.
    rows = [(torch.tensor([1, 2, 3, 4]), torch.tensor([X, X, X, 4])),
            (torch.tensor([1, 2, 3, 5]), torch.tensor([X, X, X, 5]))]
    assert shared_prefix_length(rows) == 3 and shared_prefix_length(rows, before_label=1) == 2
    # The rows differ before that: the difference decides, whatever the margin.
    rows = [(torch.tensor([1, 7, 3, 4]), torch.tensor([X, X, X, 4])),
            (torch.tensor([1, 2, 3, 5]), torch.tensor([X, X, X, 5]))]
    assert shared_prefix_length(rows) == 1 and shared_prefix_length(rows, before_label=1) == 1
    rows = [(torch.tensor([1, 4]), torch.tensor([X, 4])), (torch.tensor([1, 5]), torch.tensor([X, 5]))]
    assert shared_prefix_length(rows, before_label=1) == 0


def test_layout_puts_the_shared_tokens_first_and_right_aligns_the_rest():
    ids, mask = layout_prompts([[1, 2, 3, 4], [1, 2, 5], [1, 2, 6, 7, 8]], pad_id=0, shared=2)
    assert ids.tolist() == [[1, 2, 0, 3, 4], [1, 2, 0, 0, 5], [1, 2, 6, 7, 8]]
    assert mask.tolist() == [[1, 1, 0, 1, 1], [1, 1, 0, 0, 1], [1, 1, 1, 1, 1]]
    ids, mask = layout_prompts([[1, 2, 3], [4]], pad_id=9, shared=0)  # plain left padding
    assert ids.tolist() == [[1, 2, 3], [9, 9, 4]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_prefix_cache_holds_the_models_own_keys_and_values(tiny_tokenizer):
    """The stored keys/values are the model's for those tokens, and a shorter shared start is the
    first positions of them (causal attention); a prefix sharing nothing replaces the entry."""
    model = build_tiny_model(len(tiny_tokenizer), seed=3).eval()
    tokens = tiny_tokenizer(PromptBuilder.for_domain("movies").factual(TITLES[:2]))["input_ids"]
    cache = PromptPrefixCache()
    m, layers = cache.lookup(model, tokens[:20])
    assert m == 20 and cache.tokens == tokens[:20]
    with torch.no_grad():
        full = model(input_ids=torch.tensor([tokens]), use_cache=True).past_key_values
    for (k, v), layer in zip(layers, full.layers, strict=True):
        torch.testing.assert_close(k, layer.keys[:, :, :20], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(v, layer.values[:, :, :20], rtol=1e-5, atol=1e-6)
    m, layers = cache.lookup(model, tokens[:12] + [tokens[12] + 1])  # shares 12 tokens
    assert m == 12 and cache.tokens == tokens[:20] and layers[0][0].shape[2] == 12
    other = [t + 1 for t in tokens[:5]]
    m, _ = cache.lookup(model, other)  # shares none: computed and stored instead
    assert m == 5 and cache.tokens == other
