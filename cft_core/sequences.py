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
import pyarrow.compute as pc

SPLITS = ("train", "valid", "test")

# A string array's offsets are int32, so one Arrow array holds under 2 GiB of text, and a split's
# history titles outgrow that (10M interactions with histories of 10: ~2.5 GB). A split is built
# as record batches cut where the running total of its titles' bytes crosses a multiple of this:
# each batch holds under twice it, 2 GiB.
MAX_BATCH_TITLE_BYTES = 1 << 30


class NoRecordsError(ValueError):
    """The settings leave no interactions to build records from (window, k-core)."""

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
    source = np.sort(pd.unique(item_ids))  # hashing, then sorting the few distinct ids: 10M ids 17 s -> 1 s
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
        raise NoRecordsError(f"no interactions left after the time window and {s.k_core}-core filtering")

    catalogue = build_catalogue(df["item_id"].to_numpy(dtype=object), titles, s.seed)
    dense_of = pd.Series(catalogue["item_id"].to_numpy(), index=catalogue["source_item_id"].to_numpy())
    # Deterministic order: user, time, then item id for ties within a user.
    df = df.assign(dense=dense_of.loc[df["item_id"].to_numpy()].to_numpy())
    # The user's rank among the sorted user ids stands in for the id in the sort (integers sort
    # several times faster than strings; the order is the same).
    user_rank = pd.factorize(df["user_id"], sort=True)[0]
    df = df.iloc[np.lexsort((df["dense"].to_numpy(), df["timestamp"].to_numpy(), user_rank))].reset_index(drop=True)
    users = df["user_id"].to_numpy(dtype=object)
    position = df.groupby("user_id", sort=False).cumcount().to_numpy()
    dense = df["dense"].to_numpy(dtype=np.int64)
    ts = df["timestamp"].to_numpy(dtype=np.int64)

    flat, offsets = _histories(dense, position, s.max_history)
    is_sample = position >= 1
    records = _RecordBatches(catalogue["title"].to_numpy(dtype=object), flat, offsets)
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
        out[name] = pa.Table.from_batches([records.batch(part, users, dense, ts) for part in records.parts(rows, dense)])
    stats = {
        "users": int(df["user_id"].nunique()),
        "items": len(catalogue),
        "interactions": len(df),
        **{f"samples_{k}": v.num_rows for k, v in out.items()},
        **{f"mean_history_{k}": float(np.mean(pc.list_value_length(v.column("history_item_ids")).to_numpy()))
           if v.num_rows else 0.0 for k, v in out.items()},
    }
    return out, catalogue, stats


RECORD_COLUMNS = ("user_id", "history_item_ids", "history_titles", "target_item_id", "target_title", "timestamp")


class _RecordBatches:
    """Records' columns for given rows, from the per-interaction arrays: the histories (`flat`
    catalogue ids, `offsets` [R + 1], as `_histories` gives them) and their titles, in record
    batches of under 2 x MAX_BATCH_TITLE_BYTES of titles each."""

    def __init__(self, titles: np.ndarray, flat: np.ndarray, offsets: np.ndarray):
        self.titles = pa.array(titles, type=pa.string())  # [I], by catalogue id
        self.title_bytes = pc.binary_length(self.titles).to_numpy(zero_copy_only=False).astype(np.int64)  # [I] UTF-8 bytes
        self.flat, self.offsets = flat, offsets
        # Bytes of each row's history titles: a difference of the running total at its offsets.
        running = np.concatenate([[0], np.cumsum(self.title_bytes[flat])])
        self.history_bytes = running[offsets[1:]] - running[offsets[:-1]]  # [R]

    def parts(self, rows: np.ndarray, dense: np.ndarray) -> list[np.ndarray]:
        """`rows` cut, in order, where the running total of their titles' bytes (history and
        target) crosses a multiple of MAX_BATCH_TITLE_BYTES."""
        if not len(rows):
            return [rows]  # an empty split: one empty batch, which carries the columns
        size = np.cumsum(self.history_bytes[rows] + self.title_bytes[dense[rows]])
        return np.split(rows, np.flatnonzero(np.diff(size // MAX_BATCH_TITLE_BYTES)) + 1)

    def batch(self, rows: np.ndarray, users: np.ndarray, dense: np.ndarray, ts: np.ndarray) -> pa.RecordBatch:
        """One record batch of `rows` (columns as `schemas.tables.RECORDS`)."""
        lengths = self.offsets[rows + 1] - self.offsets[rows]
        local = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=local[1:])
        # Each slot of the batch's histories -> its slot in `flat`: its row's start + its index.
        slots = np.repeat(self.offsets[rows] - local[:-1], lengths) + np.arange(local[-1])
        history = pa.array(self.flat[slots], pa.int64())
        offsets = pa.array(local.astype(np.int32))
        return pa.RecordBatch.from_arrays([
            pa.array(users[rows], pa.string()),
            pa.ListArray.from_arrays(offsets, history),
            pa.ListArray.from_arrays(offsets, self.titles.take(history)),
            pa.array(dense[rows], pa.int64()),
            self.titles.take(pa.array(dense[rows], pa.int64())),
            pa.array(ts[rows], pa.int64()),
        ], names=list(RECORD_COLUMNS))


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
