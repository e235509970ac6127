"""Beam-search generation: the shared prompt prefill and the shared prompt prefix generate what
plain beam search does."""

from __future__ import annotations

import pytest

from cft_core.constrained import TitleTrie
from cft_core.generation import GenerationSettings, generate_titles, response_token_ids
from cft_core.prefix import PromptPrefixCache, common_prefix_length
from cft_core.prompts import PromptBuilder
from cft_core.tiny import build_tiny_model
from tests.conftest import TITLES, make_records, tiny_model_of_type


def beam_search_case(tokenizer, constrained: bool, rows: int, records_seed: int, model_seed: int, model=None,
                     **settings):
    """A tiny model (unless given), `rows` factual prompts of uneven lengths, the settings, and the
    catalogue trie when `constrained`: (model, prompts, texts, settings, trie)."""
    model = model if model is not None else build_tiny_model(len(tokenizer), seed=model_seed)
    prompts = PromptBuilder.for_domain("movies")
    texts = [prompts.factual(r["history_titles"]) for r in make_records(rows, seed=records_seed)]
    trie = TitleTrie(response_token_ids(tokenizer, prompts, TITLES), len(tokenizer)) if constrained else None
    return model, prompts, texts, GenerationSettings(length_penalty=1.0, **settings), trie


@pytest.mark.parametrize(("constrained", "arch"), [(False, "llama"), (True, "llama"), (True, "gemma2"),
                                                    (True, "minicpm3")])
def test_shared_prefill_generates_what_plain_beam_search_does(tiny_tokenizer, constrained, arch):
    """Prompts run once, their cache repeated per beam in the in-place beam cache == generate's own
    per-beam prompt pass and stock cache: the same titles in the same order, the same scores.
    Free generation runs to max_new_tokens, so the cache's room is used to its end. Also for a
    model whose sliding-window layers the stock cache keeps short (Gemma-2): the beam cache keeps
    every position and the layers' masks apply the window; and for multi-head latent attention
    (MiniCPM3), whose cached keys are wider than its values."""
    model = {
        "llama": lambda: None,
        "gemma2": lambda: build_tiny_model(len(tiny_tokenizer), arch="gemma2", sliding_window=16, seed=5),
        "minicpm3": lambda: tiny_model_of_type("minicpm3", len(tiny_tokenizer)),
    }[arch]()
    model, _, texts, settings, trie = beam_search_case(
        tiny_tokenizer, constrained, rows=5, records_seed=2, model_seed=5, model=model,
        num_beams=4, num_return_sequences=4, min_new_tokens=4, batch_size=3,
        max_new_tokens=12 if arch == "llama" else 24)  # capped / scaled logits pick long titles
    shared, shared_scores = generate_titles(model, tiny_tokenizer, texts, settings, trie=trie, progress=False,
                                            with_scores=True)
    plain, plain_scores = generate_titles(model, tiny_tokenizer, texts, settings, trie=trie, progress=False,
                                          share_prefill=False, with_scores=True)
    assert shared == plain
    assert sum(shared_scores, []) == pytest.approx(sum(plain_scores, []), abs=1e-5)
    assert len(shared) == 5 and all(len(b) == 4 for b in shared)
    if constrained:
        assert {t for b in shared for t in b} <= set(TITLES)


def prefill_widths(model):
    """Records the [B, T] shape of every forward pass's input_ids (prefills and decoding steps)."""
    shapes: list[tuple[int, int]] = []
    handle = model.get_input_embeddings().register_forward_hook(lambda m, args, out: shapes.append(tuple(args[0].shape)))
    return shapes, handle


@pytest.mark.parametrize(("constrained", "arch"), [(False, "llama"), (True, "llama"), (True, "minicpm3")])
def test_shared_prefix_generates_what_each_row_alone_does(tiny_tokenizer, constrained, arch):
    """The prompts' common start run once per batch, or taken from a cache filled by another batch
    (a different common start: the first batch holds one prompt, so its 'common start' is all of
    it), == every row running its whole prompt: the same titles in the same order, the same
    scores. The cached prefix is really not run again: the second call's prompt pass starts
    after it. Also with multi-head latent attention (MiniCPM3's keys wider than its values)."""
    model, prompts, texts, settings, trie = beam_search_case(
        tiny_tokenizer, constrained, rows=7, records_seed=4, model_seed=7,
        model=tiny_model_of_type("minicpm3", len(tiny_tokenizer)) if arch == "minicpm3" else None,
        num_beams=3, num_return_sequences=3, min_new_tokens=2, max_new_tokens=10, batch_size=4)

    def run(**kw):
        return generate_titles(model, tiny_tokenizer, texts, settings, trie=trie, progress=False, with_scores=True, **kw)

    per_row, per_row_scores = run(share_prefix=False)
    per_batch, per_batch_scores = run()
    cache = PromptPrefixCache()
    generate_titles(model, tiny_tokenizer, [prompts.factual(TITLES[5:9])], settings, trie=trie, progress=False,
                    prefix_cache=cache)
    shapes, handle = prefill_widths(model)
    try:
        cached, cached_scores = run(prefix_cache=cache)
    finally:
        handle.remove()
    assert per_batch == per_row and cached == per_row
    assert sum(per_batch_scores, []) == pytest.approx(sum(per_row_scores, []), abs=1e-5)
    assert sum(cached_scores, []) == pytest.approx(sum(per_row_scores, []), abs=1e-5)

    rows = tiny_tokenizer(texts[:4])["input_ids"]  # the first batch of the cached run
    start = common_prefix_length([cache.tokens, *rows])
    assert start > 10  # the preamble and the instruction, at least
    width = start + max(len(r) - start for r in rows)  # layout_prompts' width with shared >= start
    assert shapes[0] == (4, width - 1 - start)  # the prompt pass: everything but the cached start


@pytest.mark.parametrize("constrained", [False, True])
def test_the_models_own_generation_config_changes_nothing(tiny_tokenizer, constrained):
    """A model folder brings its own generation_config.json (an Instruct model's: repetition_penalty,
    top_k / top_p, a min_length...); generate fills every field a call leaves unset from it, so those
    would re-rank or prune the beams (cft-method.md, section 5). The search is the settings' alone:
    the same titles and scores as with a clean config, and the model's config is as it was after."""
    model, _, texts, settings, trie = beam_search_case(
        tiny_tokenizer, constrained, rows=4, records_seed=3, model_seed=5,
        num_beams=4, num_return_sequences=4, min_new_tokens=4, max_new_tokens=12, batch_size=2)
    clean = generate_titles(model, tiny_tokenizer, texts, settings, trie=trie, progress=False, with_scores=True)

    # What a Qwen2.5-Instruct folder carries, and worse: each of these alone changes a beam search.
    own = {"do_sample": True, "top_k": 2, "top_p": 0.5, "temperature": 0.3, "repetition_penalty": 3.0,
           "no_repeat_ngram_size": 1, "min_length": 400, "suppress_tokens": [tiny_tokenizer.eos_token_id]}
    for field, value in own.items():
        setattr(model.generation_config, field, value)
    polluted = generate_titles(model, tiny_tokenizer, texts, settings, trie=trie, progress=False, with_scores=True)

    assert polluted[0] == clean[0]
    assert sum(polluted[1], []) == pytest.approx(sum(clean[1], []), abs=1e-5)
    assert {f: getattr(model.generation_config, f) for f in own} == own
