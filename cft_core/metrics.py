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


def item_hit_ranks(ranked_items: np.ndarray, title_of_item: np.ndarray, target_title_ids: np.ndarray) -> np.ndarray:
    """`first_hit_ranks` of rankings of item ids, a hit by title (an item whose title equals the
    target's is a hit, as the protocol counts duplicated titles).

    ranked_items: [B, L] item ids in ranked order, -1 where a ranking is shorter than L.
    title_of_item: [I] each item's title id (`title_ids`); target_title_ids: [B].
    """
    ranked_items = np.asarray(ranked_items)
    ranked = np.where(ranked_items >= 0, title_of_item[np.maximum(ranked_items, 0)], -1)
    return first_hit_ranks(ranked, target_title_ids)


def title_ids(titles: Sequence[str]) -> tuple[np.ndarray, dict[str, int]]:
    """Map titles to dense ids shared by duplicates: [N] int ids and the title -> id table."""
    table: dict[str, int] = {}
    ids = np.fromiter((table.setdefault(t, len(table)) for t in titles), dtype=np.int64, count=len(titles))
    return ids, table


def per_row_metric(ranks: np.ndarray | Sequence[int], metric: str) -> np.ndarray:
    """The per-row value whose mean is `metric` ("NDCG@10" or "HR@10"): float[B] from the
    0-based first-hit ranks (-1 = miss). `ranking_metrics` is the mean of these."""
    name, _, k_text = metric.partition("@")
    if name not in ("HR", "NDCG") or not k_text.isdigit():
        raise ValueError(f"metric must be HR@K or NDCG@K, got {metric!r}")
    r, k = np.asarray(ranks, dtype=np.int64), int(k_text)
    within = (r >= 0) & (r < k)
    if name == "HR":
        return within.astype(float)
    return np.where(within, 1.0 / np.log2(np.where(within, r, 0) + 2.0), 0.0)


def paired_bootstrap_ci(a: np.ndarray, b: np.ndarray, level: float = 0.95, resamples: int = 2000,
                        seed: int = 0) -> tuple[float, float, float]:
    """(mean(a - b), low, high): the percentile bootstrap interval of the mean paired difference.

    a, b: float[B], the same rows scored two ways. Rows are resampled with replacement, keeping
    each row's pair together (so row difficulty cancels), `resamples` times, seeded.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"need two non-empty [B] arrays of the same rows, got {a.shape} and {b.shape}")
    diff = a - b
    idx = np.random.default_rng(seed).integers(0, diff.size, size=(resamples, diff.size))
    means = diff[idx].mean(axis=1)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(diff.mean()), float(low), float(high)


def bootstrap_ci(values: np.ndarray, level: float = 0.95, resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): the percentile bootstrap interval of the mean of float[B] per-row values
    (`paired_bootstrap_ci` against zeros)."""
    values = np.asarray(values, dtype=float)
    return paired_bootstrap_ci(values, np.zeros_like(values), level, resamples, seed)


def paired_bootstrap_ci_seeds(diff: np.ndarray, level: float = 0.95, resamples: int = 2000,
                              seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high) of float[S, R] paired differences (S training seeds x R rows, B - A per
    seed and row), resampling seeds and rows with replacement (a two-level bootstrap): the
    interval holds both the test-row sampling and the training-seed variance.

    One resample draws S seeds and R rows; its mean over the S x R chosen cells is
    (seed counts [S]) @ diff @ (row counts [R]) / (S R), computed for all resamples at once.
    """
    diff = np.asarray(diff, dtype=float)
    if diff.ndim != 2 or diff.size == 0:
        raise ValueError(f"need a non-empty [S, R] array, got shape {diff.shape}")
    s, r = diff.shape
    rng = np.random.default_rng(seed)
    seed_counts = np.stack([np.bincount(rng.integers(0, s, s), minlength=s) for _ in range(resamples)])
    row_counts = np.stack([np.bincount(rng.integers(0, r, r), minlength=r) for _ in range(resamples)])
    means = ((seed_counts @ diff) * row_counts).sum(axis=1) / (s * r)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(diff.mean()), float(low), float(high)
