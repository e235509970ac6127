"""Behaviour sequences, D3-style (cft-method.md, section 4): interactions -> instruction records.

1. keep interactions in the time window, of items with a title;
2. iterative k-core: drop users and items with fewer than k interactions until none is left;
3. dense item ids 0..N-1 after a seeded shuffle (the catalogue);
4. per user, sort by time; every position i >= 1 gives a sample: history = the previous
   <= max_history items (oldest first), target = item i;
5. split: all samples sorted by target time and cut 80/10/10 (chronological, D3 and the
   reference), or each user's last sample to test and the one before to valid (leave-one-out).

Everything is vectorised (numpy + Arrow list arrays): no per-user Python loop.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

SPLITS = ("train", "valid", "test")

# Titles that stand for a missing title ("unknown", ML-100K's "unkonwn (unkonwn)", "N/A", ...):
# validation warns about them and rankings never recommend such an item (cft_core.ranking).
PLACEHOLDER_TITLE = re.compile(
    r"(?i)^\W*(?:unknown|unkonwn|untitled|n/?a|none|null|tbd|\?+|-+)\W*(?:\(\W*(?:unknown|unkonwn|n/?a)\W*\))?\W*$")


@dataclass(frozen=True)
class SequenceSettings:
    """How records are built; the values and their reasons live in `schemas.config.DataConfig`."""

    k_core: int  # iterative k-core on users and items (<= 1: off)
    max_history: int  # the last <= N items before the target
    split: str  # "chronological" (D3) or "leave_one_out"
    split_ratios: tuple[float, float, float]  # train/valid/test, chronological only
    seed: int  # item-id shuffle and caps' sampling
    window_start: int | None  # unix seconds, inclusive
    window_end: int | None  # unix seconds, exclusive
    sample_fraction: float
    max_samples: tuple[tuple[str, int], ...]  # ((split, cap), ...)


def k_core(inter: pd.DataFrame, k: int) -> pd.DataFrame:
    """Iteratively keep users and items with at least k interactions each."""
    if k <= 1:
        return inter
    while True:
        user_n = inter.groupby("user_id", sort=False)["item_id"].transform("size")
        item_n = inter.groupby("item_id", sort=False)["user_id"].transform("size")
        keep = (user_n >= k) & (item_n >= k)
        if keep.all():
            return inter
        inter = inter[keep]


def build_catalogue(item_ids: np.ndarray, titles: pd.Series, seed: int) -> pd.DataFrame:
    """Dense ids 0..N-1 for the sorted unique source ids after a seeded shuffle (D3 step 4).

    titles: Series indexed by source item id.
    """
    source = np.sort(np.unique(item_ids))
    order = np.random.default_rng(seed).permutation(len(source))
    source = source[order]
    return pd.DataFrame(
        {"item_id": np.arange(len(source), dtype=np.int64), "title": titles.loc[source].to_numpy(), "source_item_id": source}
    )


def _histories(dense_items: np.ndarray, position: np.ndarray, max_history: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat history ids and offsets for every row, given rows sorted by (user, time).

    Row r at position p (0-based within its user) has history rows r - min(p, H) .. r - 1.
    Returns (flat ids [sum of lengths], offsets [R + 1]) for an Arrow ListArray.
    """
    lengths = np.minimum(position, max_history)
    offsets = np.zeros(len(position) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    # For each flat slot: its row, and its index j within that row's history (oldest first).
    row_of_slot = np.repeat(np.arange(len(position)), lengths)
    j = np.arange(offsets[-1]) - offsets[row_of_slot]
    return dense_items[row_of_slot - lengths[row_of_slot] + j], offsets


def build_records(
    inter: pd.DataFrame, items: pd.DataFrame, s: SequenceSettings
) -> tuple[dict[str, pa.Table], pd.DataFrame, dict]:
    """Interactions + items -> ({split: records table}, catalogue, stats).

    inter: user_id, item_id (str), timestamp (int64); items: item_id, title.
    Records follow `schemas.tables.RECORDS`, sorted by (timestamp, user_id) within each split.
    """
    df = inter[["user_id", "item_id", "timestamp"]]
    if s.window_start is not None:
        df = df[df["timestamp"] >= s.window_start]
    if s.window_end is not None:
        df = df[df["timestamp"] < s.window_end]
    titles = items.drop_duplicates("item_id").set_index("item_id")["title"]
    df = df[df["item_id"].isin(titles.index)]
    df = k_core(df, s.k_core)
    if df.empty:
        raise ValueError(f"no interactions left after the time window and {s.k_core}-core filtering")

    catalogue = build_catalogue(df["item_id"].to_numpy(dtype=object), titles, s.seed)
    dense_of = pd.Series(catalogue["item_id"].to_numpy(), index=catalogue["source_item_id"].to_numpy())
    # Deterministic order: user, time, then item id for ties within a user.
    df = df.assign(dense=dense_of.loc[df["item_id"].to_numpy()].to_numpy())
    df = df.sort_values(["user_id", "timestamp", "dense"], kind="stable").reset_index(drop=True)
    users = df["user_id"].to_numpy(dtype=object)
    position = df.groupby("user_id", sort=False).cumcount().to_numpy()
    dense = df["dense"].to_numpy(dtype=np.int64)
    ts = df["timestamp"].to_numpy(dtype=np.int64)

    flat, offsets = _histories(dense, position, s.max_history)
    is_sample = position >= 1
    title_arr = pa.array(catalogue["title"].to_numpy(dtype=object), type=pa.string())
    hist_ids = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(flat, pa.int64()))
    hist_titles = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), title_arr.take(pa.array(flat)))
    table = pa.table(
        {
            "user_id": pa.array(users, pa.string()),
            "history_item_ids": hist_ids,
            "history_titles": hist_titles,
            "target_item_id": pa.array(dense, pa.int64()),
            "target_title": title_arr.take(pa.array(dense)),
            "timestamp": pa.array(ts, pa.int64()),
        }
    )
    sample_rows = np.flatnonzero(is_sample)
    split_of = _assign_splits(users[sample_rows], ts[sample_rows], position[sample_rows], s)
    rng = np.random.default_rng(s.seed)
    caps = dict(s.max_samples)
    out = {}
    for i, name in enumerate(SPLITS):
        rows = sample_rows[split_of == i]
        rows = rows[np.lexsort((users[rows], ts[rows]))]  # by (timestamp, user_id)
        n_keep = len(rows)
        if s.sample_fraction < 1.0:
            n_keep = int(round(n_keep * s.sample_fraction))
        if name in caps:
            n_keep = min(n_keep, caps[name])
        if n_keep < len(rows):  # seeded subsample, chronological order kept
            rows = rows[np.sort(rng.choice(len(rows), n_keep, replace=False))]
        out[name] = table.take(pa.array(rows))
    stats = {
        "users": int(df["user_id"].nunique()),
        "items": len(catalogue),
        "interactions": len(df),
        **{f"samples_{k}": v.num_rows for k, v in out.items()},
        **{
            f"mean_history_{k}": float(np.mean(np.diff(v.column("history_item_ids").combine_chunks().offsets.to_numpy())))
            if v.num_rows
            else 0.0
            for k, v in out.items()
        },
    }
    return out, catalogue, stats


def _assign_splits(users: np.ndarray, ts: np.ndarray, position: np.ndarray, s: SequenceSettings) -> np.ndarray:
    """Split index (0 train, 1 valid, 2 test) per sample."""
    n = len(ts)
    split_of = np.zeros(n, dtype=np.int8)
    if s.split == "chronological":
        order = np.lexsort((users, ts))  # by target time, ties by user: deterministic
        n_train = int(n * s.split_ratios[0])
        n_valid = int(n * (s.split_ratios[0] + s.split_ratios[1])) - n_train
        split_of[order[n_train : n_train + n_valid]] = 1
        split_of[order[n_train + n_valid :]] = 2
    elif s.split == "leave_one_out":
        last = pd.Series(position).groupby(users).transform("max").to_numpy()
        split_of[position == last] = 2
        split_of[(position == last - 1) & (last >= 2)] = 1
    else:
        raise ValueError(f"unknown split {s.split!r}")
    return split_of
