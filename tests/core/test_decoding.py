"""Grounding and trie-constrained decoding."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from cft_core.constrained import DEAD, TitleTrie
from cft_core.generation import GenerationSettings, generate_titles, response_token_ids
from cft_core.grounding import embed_texts, interleave_dedup, l2_topk
from cft_core.prompts import PromptBuilder
from cft_core.tiny import build_tiny_model, build_tiny_tokenizer
from tests.conftest import SHARED_DATA, TITLES

# ------------------------------------------------------------------ grounding


def test_interleave_dedup_hand_example():
    per_beam = np.array([[[5, 3, 9], [3, 7, 5], [1, 5, 2]]])  # 1 example, 3 beams, top-3 each
    # round-robin: 5 3 1 | 3 7 5 | 9 5 2 -> drop repeats -> 5 3 1 7 9 2
    assert interleave_dedup(per_beam, 4).tolist() == [[5, 3, 1, 7]]
    assert interleave_dedup(per_beam, 8).tolist() == [[5, 3, 1, 7, 9, 2, -1, -1]]
    assert interleave_dedup(per_beam[:, :1], 3).tolist() == [[5, 3, 9]]  # one beam: unchanged


def test_interleave_dedup_matches_a_python_loop():
    rng = np.random.default_rng(0)
    per_beam = rng.integers(0, 12, size=(20, 5, 6))
    got = interleave_dedup(per_beam, 10)
    for row, out in zip(per_beam, got, strict=True):
        seen: list[int] = []
        for r in range(row.shape[1]):
            for b in range(row.shape[0]):
                if row[b, r] not in seen:
                    seen.append(int(row[b, r]))
        expected = (seen + [-1] * 10)[:10]
        assert out.tolist() == expected


def test_l2_topk_matches_cdist():
    g = torch.Generator().manual_seed(0)
    q, items = torch.randn(13, 8, generator=g), torch.randn(50, 8, generator=g)
    expected = torch.cdist(q, items).argsort(dim=1)[:, :7]
    assert torch.equal(l2_topk(q, items, 7, chunk=5), expected)


def test_an_exact_title_grounds_to_its_item(tiny_tokenizer):
    model = build_tiny_model(len(tiny_tokenizer), seed=1)
    catalogue = list(dict.fromkeys(TITLES))
    items = embed_texts(model, tiny_tokenizer, catalogue, batch_size=4)
    generated = [catalogue[3], catalogue[10], catalogue[0]]
    top = l2_topk(embed_texts(model, tiny_tokenizer, generated), items, 5)
    assert top[:, 0].tolist() == [3, 10, 0]
    # Padding does not leak into the embedding: alone or in a batch, the same vector.
    alone = embed_texts(model, tiny_tokenizer, [catalogue[10]])
    torch.testing.assert_close(alone[0], items[10], atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------ constrained decoding


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
    settings = GenerationSettings(num_beams=4, num_return_sequences=4, batch_size=3,
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


@pytest.mark.parametrize("constrained", [False, True])
def test_shared_prefill_generates_what_plain_beam_search_does(tiny_tokenizer, constrained):
    """Prompts run once and their cache repeated per beam == generate's own per-beam prompt pass."""
    from tests.conftest import make_records

    model = build_tiny_model(len(tiny_tokenizer), seed=5)
    prompts = PromptBuilder.for_domain("movies")
    texts = [prompts.factual(r["history_titles"]) for r in make_records(5, seed=2)]  # uneven lengths
    settings = GenerationSettings(num_beams=4, num_return_sequences=4, max_new_tokens=12, batch_size=3)
    trie = TitleTrie(response_token_ids(tiny_tokenizer, prompts, TITLES), len(tiny_tokenizer)) if constrained else None
    shared = generate_titles(model, tiny_tokenizer, texts, settings, trie=trie, progress=False)
    plain = generate_titles(model, tiny_tokenizer, texts, settings, trie=trie, progress=False, share_prefill=False)
    assert shared == plain
    assert len(shared) == 5 and all(len(b) == 4 for b in shared)
    if constrained:
        assert {t for b in shared for t in b} <= set(TITLES)
