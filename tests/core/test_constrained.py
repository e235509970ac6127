"""The catalogue trie: its mask against a per-beam walk, and constrained beams on real catalogues."""

from __future__ import annotations

import random

import pytest
import torch

from cft_core.constrained import DEAD, TitleTrie, TrieLogitsProcessor
from cft_core.generation import GenerationSettings, generate_titles, response_token_ids
from cft_core.prompts import PromptBuilder
from cft_core.tiny import build_tiny_model, build_tiny_tokenizer
from tests.conftest import SHARED_DATA


def test_trie_mask_matches_a_per_beam_walk():
    rng = random.Random(0)
    seqs = [[rng.randrange(30) for _ in range(rng.randint(1, 6))] + [31] for _ in range(200)]
    trie = TitleTrie(seqs, vocab_size=32)
    prefixes = [s[: rng.randint(0, len(s) - 1)] for s in seqs[:50]] + [[99 % 32, 0, 0, 0]]
    width = max(len(p) for p in prefixes)
    for length in range(width + 1):
        rows = [p[:length] for p in prefixes if len(p) >= length]
        nodes = trie.walk(torch.tensor(rows, dtype=torch.long).reshape(len(rows), length))
        mask = trie.allowed_mask(nodes)
        for row, node, m in zip(rows, nodes.tolist(), mask, strict=True):
            nexts = {s[length] for s in seqs if len(s) > length and s[:length] == row}
            assert set(torch.nonzero(m).flatten().tolist()) == nexts
            assert (node == DEAD) == (not nexts and not any(s == row for s in seqs))


def test_a_beam_with_nothing_allowed_may_only_end_never_decode_freely():
    """The processor's scores after each beam's generated tokens (prompt columns first): a live
    prefix keeps exactly its children, while a finished title (a leaf: its EOS is in the tree) and a
    prefix that left the tree get EOS alone, never the free vocabulary."""
    eos, vocab = 9, 10
    trie = TitleTrie([[1, 2, eos], [1, 3, eos], [4, eos]], vocab_size=vocab)
    prompt = [7, 7]  # two prompt columns, skipped by prompt_length
    generated = [[], [1], [1, 2], [1, 2, eos], [5], [1, 4]]  # root, live, live, leaf, off the tree x 2
    allowed = []  # rows of different lengths: one call each
    for g in generated:
        scores = TrieLogitsProcessor(trie, len(prompt), eos)(torch.tensor([prompt + g]), torch.zeros(1, vocab))
        assert torch.isin(scores, torch.tensor([0.0, float("-inf")])).all()
        allowed.append(set(torch.nonzero(scores[0] == 0).flatten().tolist()))
    assert allowed == [{1, 4}, {2, 3}, {eos}, {eos}, {eos}, {eos}]


def _catalogue(name: str) -> list[str]:
    if name == "video_games":
        path = SHARED_DATA / "bigrec_video_games_titles" / "id2name.txt"
        titles = [line.rsplit("\t", 1)[0] for line in path.read_text(encoding="utf-8").splitlines()]
    else:
        path = next((SHARED_DATA / "amazon18_minionerec" / "info").glob("*.txt"))
        titles = [line.split("\t")[1] for line in path.read_text(encoding="utf-8").splitlines()]
    return titles


@pytest.mark.parametrize("name", ["video_games", "industrial"])
def test_constrained_beams_are_catalogue_titles(name):
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not available")
    titles = _catalogue(name)
    prompts = PromptBuilder.for_domain("games" if name == "video_games" else "products")
    texts = titles + [prompts.factual(titles[i : i + 10]) for i in range(0, 200, 10)] + [prompts.counterfactual()]
    tokenizer = build_tiny_tokenizer(texts, vocab_size=2000)
    responses = response_token_ids(tokenizer, prompts, titles)
    trie = TitleTrie(responses, vocab_size=len(tokenizer))
    model = build_tiny_model(len(tokenizer), hidden_size=32, seed=2)
    settings = GenerationSettings(num_beams=4, num_return_sequences=4, batch_size=3, min_new_tokens=4,
                                  max_new_tokens=max(len(r) for r in responses), length_penalty=0.0)
    histories = [titles[5:8], titles[100:110], titles[2000:2001]]
    beams = generate_titles(model, tokenizer, [prompts.factual(h) for h in histories], settings, trie=trie,
                            progress=False)
    catalogue = {t.strip() for t in titles}
    assert len(beams) == 3 and all(len(b) == 4 for b in beams)
    for row in beams:
        assert len(set(row)) == 4  # distinct beams
        for title in row:
            assert title in catalogue, title
