"""BIGRec grounding: L2 top-k over the catalogue, the beams' round-robin interleaving."""

from __future__ import annotations

import numpy as np
import torch

from cft_core.grounding import embed_texts, interleave_dedup, l2_topk
from cft_core.tiny import build_tiny_model
from tests.conftest import TITLES


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


def test_l2_topk_bounds_the_distances_it_holds(monkeypatch):
    """A large catalogue takes fewer queries per product: never more than `max_distances`
    distances at once (120 over 50 items: 2 queries), with the same ranking and exclusions (which
    follow their queries across chunks)."""
    g = torch.Generator().manual_seed(0)
    q, items = torch.randn(13, 8, generator=g), torch.randn(50, 8, generator=g)
    excluded = [[i % 50, (3 * i) % 50] for i in range(13)]
    dist = torch.cdist(q, items)
    for i, rows in enumerate(excluded):
        dist[i, rows] = float("inf")
    expected = dist.argsort(dim=1)[:, :7]
    shapes = []
    addmm = torch.addmm
    monkeypatch.setattr(torch, "addmm", lambda *a, **kw: shapes.append(a[1].shape[0]) or addmm(*a, **kw))
    assert torch.equal(l2_topk(q, items, 7, excluded=excluded, max_distances=120), expected)
    assert shapes == [2] * 6 + [1]


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
