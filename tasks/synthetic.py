"""A synthetic interaction source where the truth is known (`data.source.format: synthetic`).

Every item i has one planted successor, succ(i) (a seeded random permutation of the catalogue).
Each user's first item is drawn from the popularity distribution; every next item is succ(last
item) with probability p (the history matters) and otherwise a fresh popularity draw (it does
not). Popularity is Zipf: the item at popularity rank r (1-based) has weight r ** -skew. With
`drift` > 0 the popularity ranking rotates over time by drift x catalogue positions across the
time span, so what is popular late differs from what was popular early.

So p is the share of next items that only the history predicts: a recommender that uses the
history well can reach HR@1 of about p + (1 - p) x P(popular pick), one that ignores it stays at
the popularity baseline. Counting the transitions recovers p (tests/data/test_synthetic.py).

Rows leave this module as any source's do (string ids, unix-second timestamps, titles) and go
through the same validation and sequence building. Titles are made-up two-word names with a
year, unique per item, deterministic per seed. Generation is vectorised over users (one step per
history position), so millions of interactions take seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

SYLLABLES = ["ka", "lo", "mi", "ne", "ra", "so", "ti", "vu", "be", "da", "fe", "gi", "ho", "ju", "pa", "ze",
             "mar", "tel", "vin", "dor", "sel", "qua", "bri", "ost"]
START = 1_577_836_800  # 2020-01-01T00:00:00Z: the synthetic timeline's first second


@dataclass(frozen=True)
class SyntheticData:
    """The generated tables and the truth behind them: `successor` [I] (succ(i) as catalogue
    rows) and `followed` [N] (whether each interaction was the planted successor draw)."""

    interactions: pd.DataFrame
    items: pd.DataFrame
    successor: np.ndarray
    followed: np.ndarray


def titles(n: int, rng: np.random.Generator) -> list[str]:
    """n distinct made-up titles ("Kalo Mitel (1994)"), deterministic given the generator."""
    seen: set[str] = set()
    out: list[str] = []
    while len(out) < n:
        words = ["".join(rng.choice(SYLLABLES, size=rng.integers(2, 4))).capitalize() for _ in range(2)]
        title = f"{words[0]} {words[1]} ({rng.integers(1950, 2024)})"
        if title not in seen:
            seen.add(title)
            out.append(title)
    return out


def popularity_cdf(items: int, skew: float) -> np.ndarray:
    """[I] cumulative Zipf probabilities over 0-based popularity ranks: weight (r + 1) ** -skew."""
    weights = np.arange(1, items + 1, dtype=float) ** -skew
    return np.cumsum(weights) / weights.sum()


def generate(users: int, items: int, p: float, skew: float, history_length: int, drift: float = 0.0,
             span_days: int = 365, seed: int = 0) -> SyntheticData:
    """`users` x `history_length` interactions over `items` items (see the module docstring)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    rng = np.random.default_rng(seed)
    successor = rng.permutation(items)
    span = span_days * 86_400
    # Each user's interactions are spread over the span in time order; the first falls anywhere
    # in its first half, so users start at different moments (and drift sees different epochs).
    first = rng.integers(0, span // 2, size=users)
    gaps = rng.exponential(span / 2 / history_length, size=(users, history_length)).astype(np.int64) + 1
    times = first[:, None] + np.cumsum(gaps, axis=1) - gaps[:, :1]  # [U, L], strictly increasing per user

    cdf = popularity_cdf(items, skew)
    chosen = np.empty((users, history_length), dtype=np.int64)
    followed = np.zeros((users, history_length), dtype=bool)
    for t in range(history_length):
        rank = np.minimum(np.searchsorted(cdf, rng.random(users), side="right"), items - 1)  # inverse CDF
        # Item i holds popularity rank (i + shift) mod I, the shift growing with time (drift).
        shift = np.floor(drift * items * times[:, t] / span).astype(np.int64)
        draws = (rank - shift) % items
        if t == 0:
            chosen[:, 0] = draws
            continue
        follow = rng.random(users) < p
        chosen[:, t] = np.where(follow, successor[chosen[:, t - 1]], draws)
        followed[:, t] = follow

    user_ids = np.repeat(np.arange(users), history_length)
    interactions = pd.DataFrame({"user_id": user_ids.astype(str), "item_id": chosen.ravel().astype(str),
                                 "timestamp": START + times.ravel(), "rating": None})
    catalogue = pd.DataFrame({"item_id": np.arange(items).astype(str), "title": titles(items, rng)})
    return SyntheticData(interactions, catalogue, successor, followed.ravel())


def read_synthetic(settings) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(interactions, items) for `data.source.synthetic` (schemas.config.SyntheticConfig)."""
    s = settings
    data = generate(s.users, s.items, s.p, s.popularity_skew, s.history_length, s.drift, s.span_days, s.seed)
    data.interactions.attrs["timestamp"] = {"column": "timestamp", "unit": "s (synthetic)",
                                            "examples": [str(v) for v in data.interactions["timestamp"].head(3)]}
    return data.interactions, data.items
