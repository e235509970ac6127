"""Beam-search generation: the shared prompt prefill generates what plain beam search does."""

from __future__ import annotations

import pytest

from cft_core.constrained import TitleTrie
from cft_core.generation import GenerationSettings, generate_titles, response_token_ids
from cft_core.prompts import PromptBuilder
from cft_core.tiny import build_tiny_model
from tests.conftest import TITLES


@pytest.mark.parametrize("constrained", [False, True])
def test_shared_prefill_generates_what_plain_beam_search_does(tiny_tokenizer, constrained):
    """Prompts run once, their cache repeated per beam in the in-place beam cache == generate's own
    per-beam prompt pass and stock cache: the same titles in the same order, the same scores.
    Free generation runs to max_new_tokens, so the cache's room is used to its end."""
    from tests.conftest import make_records

    model = build_tiny_model(len(tiny_tokenizer), seed=5)
    prompts = PromptBuilder.for_domain("movies")
    texts = [prompts.factual(r["history_titles"]) for r in make_records(5, seed=2)]  # uneven lengths
    settings = GenerationSettings(num_beams=4, num_return_sequences=4, min_new_tokens=4, max_new_tokens=12,
                                  length_penalty=1.0, batch_size=3)
    trie = TitleTrie(response_token_ids(tiny_tokenizer, prompts, TITLES), len(tiny_tokenizer)) if constrained else None
    shared, shared_scores = generate_titles(model, tiny_tokenizer, texts, settings, trie=trie, progress=False,
                                            with_scores=True)
    plain, plain_scores = generate_titles(model, tiny_tokenizer, texts, settings, trie=trie, progress=False,
                                          share_prefill=False, with_scores=True)
    assert shared == plain
    assert sum(shared_scores, []) == pytest.approx(sum(plain_scores, []), abs=1e-5)
    assert len(shared) == 5 and all(len(b) == 4 for b in shared)
    if constrained:
        assert {t for b in shared for t in b} <= set(TITLES)
