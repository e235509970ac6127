"""Full-ranking metrics (cft-method.md, section 3), vectorised.

With r the 0-based rank of the first hit of an example (-1: no hit in its list):

    HR@K   = mean over examples of 1[0 <= r < K]
    NDCG@K = mean over examples of 1[0 <= r < K] / log2(r + 2)

(one relevant item per example, so the ideal DCG is 1). "Hit" means the ranked item has the
target's title: items sharing a title with the target all count (BIGRec's protocol).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def ranking_metrics(ranks: np.ndarray | Sequence[int], ks: Sequence[int]) -> dict[str, float]:
    """{"HR@K": float, "NDCG@K": float} for each K, from 0-based first-hit ranks (-1 = miss)."""
    r = np.asarray(ranks, dtype=np.int64)
    if r.ndim != 1:
        raise ValueError(f"ranks must be 1-D, got shape {r.shape}")
    if r.size == 0:
        raise ValueError("ranks is empty: no examples to evaluate")
    if (r < -1).any():
        raise ValueError("ranks must be >= -1 (-1 marks a miss)")
    hit = r >= 0
    gain = np.where(hit, 1.0 / np.log2(np.where(hit, r, 0) + 2.0), 0.0)
    out: dict[str, float] = {}
    for k in ks:
        within = hit & (r < k)
        out[f"HR@{k}"] = float(within.mean())
        out[f"NDCG@{k}"] = float(np.where(within, gain, 0.0).mean())
    return out


def first_hit_ranks(ranked_titles: np.ndarray, target_titles: np.ndarray) -> np.ndarray:
    """0-based rank of the first position whose title equals the target's title, -1 if none.

    ranked_titles: [B, L] array of title strings (or title ids) in ranked order.
    target_titles: [B] the targets' titles (or ids of the same kind).
    """
    ranked = np.asarray(ranked_titles)
    target = np.asarray(target_titles)
    if ranked.ndim != 2 or target.shape != (ranked.shape[0],):
        raise ValueError(f"expected ranked [B, L] and targets [B], got {ranked.shape} and {target.shape}")
    match = ranked == target[:, None]
    return np.where(match.any(axis=1), match.argmax(axis=1), -1)


def title_ids(titles: Sequence[str]) -> tuple[np.ndarray, dict[str, int]]:
    """Map titles to dense ids shared by duplicates: [N] int ids and the title -> id table."""
    table: dict[str, int] = {}
    ids = np.fromiter((table.setdefault(t, len(table)) for t in titles), dtype=np.int64, count=len(titles))
    return ids, table
