"""Behaviour sequences, D3-style (cft-method.md, section 4): interactions -> instruction records.

1. keep interactions in the time window, of items with a title (D3 widens the window a year at
   a time until its k-core keeps 10,000 items: `widened_window_start`, when a profile asks);
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
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

SPLITS = ("train", "valid", "test")

# A string array's offsets are int32, so one Arrow array holds under 2 GiB of text, and a split's
# history titles outgrow that (10M interactions with histories of 10: ~2.5 GB). A split is built
# as record batches cut where the running total of its titles' bytes crosses a multiple of this:
# each batch holds under twice it, 512 MiB, well inside 2 GiB. A batch's titles (and their Parquet
# encoding) are the build's peak: an uncapped ML-25M-sized build took 120 s at 4.8 GB with 256 MiB,
# 150 s at 5.8 GB with 1 GiB (2 interleaved pairs).
MAX_BATCH_TITLE_BYTES = 1 << 28


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


def core_rows(users: np.ndarray, items: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """The iterative k-core of `rows` (indices into the integer codes `users` and `items`, one per
    interaction): the rows left once no user and no item has fewer than k of them, in their order."""
    if k <= 1:
        return rows
    while True:
        u, i = users[rows], items[rows]
        keep = (np.bincount(u)[u] >= k) & (np.bincount(i)[i] >= k)
        if keep.all():
            return rows
        rows = rows[keep]


def k_core(inter: pd.DataFrame, k: int) -> pd.DataFrame:
    """Iteratively keep users and items with at least k interactions each (rows in their order).
    Counted on integer codes (np.bincount), the rows filtered once at the end."""
    if k <= 1:
        return inter
    users = pd.factorize(inter["user_id"], use_na_sentinel=False)[0]
    items = pd.factorize(inter["item_id"], use_na_sentinel=False)[0]
    rows = core_rows(users, items, np.arange(len(inter)), k)
    return inter.iloc[rows] if len(rows) < len(inter) else inter


def core_of_window(inter: pd.DataFrame, titled: pd.Index, start: int | None, end: int | None, k: int) -> pd.DataFrame:
    """Steps 1 and 2: the interactions in [start, end) of items in `titled` (those with a title),
    then their iterative k-core. inter: user_id, item_id, timestamp (unix seconds)."""
    df = inter[["user_id", "item_id", "timestamp"]]
    if start is not None:
        df = df[df["timestamp"] >= start]
    if end is not None:
        df = df[df["timestamp"] < end]
    return k_core(df[df["item_id"].isin(titled)], k)


def year_before(t: int) -> int:
    """The same calendar time a year earlier, UTC (29 February -> 28 February)."""
    moment = datetime.fromtimestamp(t, UTC)
    day = min(moment.day, 28) if (moment.month, moment.day) == (2, 29) else moment.day
    return int(moment.replace(year=moment.year - 1, day=day).timestamp())


def widened_window_start(inter: pd.DataFrame, titled: pd.Index, s: SequenceSettings, min_items: int) -> tuple[int, int]:
    """D3 step 1 (cft-method.md, section 4): the window's start moved back a calendar year at a
    time from `s.window_start` until the window's k-core (`core_of_window`'s) keeps at least
    `min_items` items, or the window starts at or before the first titled interaction before its
    end (it then holds all the data there is; D3 gives up at 1996, the data's first year). D3
    starts at 2017-10-01 with `s.window_end` 2018-11-01 and asks 10,000 items. Returns (the start,
    the items its window's k-core keeps): `s.window_start` itself when its window keeps enough.

    The ids are coded once and each year's window is a mask of the times: 12 years back on a
    10M-row log took 4.4-4.7 s, where a `core_of_window` per year took 26.8-27.7 s (2 interleaved
    pairs, 5.9x and 6.0x, 2026-12-06)."""
    if s.window_start is None:
        raise ValueError("widening a window needs its start")
    users = pd.factorize(inter["user_id"], use_na_sentinel=False)[0]
    items, item_ids = pd.factorize(inter["item_id"], use_na_sentinel=False)
    ts = inter["timestamp"].to_numpy(dtype=np.int64)
    in_play = pd.Index(item_ids).isin(titled)[items]
    if s.window_end is not None:
        in_play &= ts < s.window_end
    first = int(ts[in_play].min()) if in_play.any() else s.window_start
    start = s.window_start
    while True:
        rows = core_rows(users, items, np.flatnonzero(in_play & (ts >= start)), s.k_core)
        kept = int(np.count_nonzero(np.bincount(items[rows], minlength=len(item_ids))))
        if kept >= min_items or start <= first:
            return start, kept
        start = year_before(start)


def build_catalogue(item_ids: pd.Series | np.ndarray, titles: pd.Series, seed: int) -> pd.DataFrame:
    """Dense ids 0..N-1 for the sorted unique source ids after a seeded shuffle (D3 step 4).

    titles: Series indexed by source item id.
    """
    # Hashing, then sorting the few distinct ids (10M ids sorted: 17 s -> 1 s); the ids never
    # become one Python string per interaction (25M of them: ~2 GB).
    source = np.sort(np.asarray(pd.unique(item_ids), dtype=object))
    order = np.random.default_rng(seed).permutation(len(source))
    source = source[order]
    return pd.DataFrame(
        {"item_id": np.arange(len(source), dtype=np.int64), "title": titles.loc[source].to_numpy(), "source_item_id": source}
    )


def lexsort(keys: tuple[np.ndarray, ...]) -> np.ndarray:
    """`np.lexsort(keys)` (stable; the last key sorts first) for integer keys, as one stable
    argsort of the keys packed side by side into a uint64 when their ranges fit in 64 bits: 25M
    rows of (item, time, user) in 3.3 s instead of 14.6 s. Else np.lexsort itself."""
    if not len(keys[0]):
        return np.lexsort(keys)
    packed, shift = np.zeros(len(keys[0]), dtype=np.uint64), 0
    for key in keys:  # the first key takes the lowest bits
        low = int(key.min())
        width = (int(key.max()) - low).bit_length()
        if shift + width > 64:
            return np.lexsort(keys)
        packed |= (key - low).astype(np.uint64) << np.uint64(shift)
        shift += width
    return np.argsort(packed, kind="stable")


def flat_ranges(starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ranges starts[i] .. starts[i] + lengths[i] - 1, one after another: (indices [sum of
    lengths], offsets [N + 1] where each range begins in them), e.g. for an Arrow ListArray."""
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1]), offsets


def dictionary_codes(column) -> tuple[pa.Array, np.ndarray]:
    """A string column [N] (a list, or an Arrow array, chunked or not, plain or
    dictionary-encoded) -> (its distinct values [V], each row's index into them [N]), with one
    dictionary for every chunk: a split read dictionary-encoded has one per row group (~150
    chunks for 20M records), so what is worked out per distinct value is worked out once."""
    if not isinstance(column, pa.ChunkedArray):
        column = pa.chunked_array([column if isinstance(column, pa.Array) else pa.array(column, pa.string())])
    if not column.num_chunks:
        return pa.array([], pa.string()), np.zeros(0, dtype=np.int64)
    if not pa.types.is_dictionary(column.type):
        column = pa.chunked_array([chunk.dictionary_encode() for chunk in column.chunks])
    column = column.unify_dictionaries()
    indices = np.concatenate([chunk.indices.to_numpy(zero_copy_only=False) for chunk in column.chunks])
    return column.chunks[0].dictionary, indices


def build_records(
    inter: pd.DataFrame, items: pd.DataFrame, s: SequenceSettings
) -> tuple[dict[str, pa.Table], pd.DataFrame, dict]:
    """Interactions + items -> ({split: records table}, catalogue, stats): `plan_records` with
    every split made whole (a caller that writes a large build uses `Records.batches`)."""
    records = plan_records(inter, items, s)
    return {name: records.table(name) for name in SPLITS}, records.catalogue, records.stats


@dataclass(frozen=True)
class Records:
    """A build's records, made a record batch at a time (`batches`): a caller that writes them
    as they come never holds a whole split's titles (a full ML-25M's: ~6 GB).

    rows: per split, its records' rows of the sorted interactions, in record order.
    """

    catalogue: pd.DataFrame
    stats: dict
    rows: dict[str, np.ndarray]
    made: _RecordBatches

    def batches(self, split: str) -> Iterator[pa.RecordBatch]:
        """The split's records (`schemas.tables.RECORDS` columns) in batches of under
        2 x MAX_BATCH_TITLE_BYTES of titles; an empty split gives one empty batch."""
        return (self.made.batch(part) for part in self.made.parts(self.rows[split]))

    def table(self, split: str) -> pa.Table:
        return pa.Table.from_batches(list(self.batches(split)))


def plan_records(inter: pd.DataFrame, items: pd.DataFrame, s: SequenceSettings) -> Records:
    """Interactions + items -> the records of every split, to be made batch by batch.

    inter: user_id, item_id (str), timestamp (int64); items: item_id, title.
    Records are sorted by (timestamp, user_id) within each split. Per interaction only numbers
    are held (catalogue id, time, user rank, position): a record's history and titles are made
    when its batch is, so a capped split of a large log costs what it keeps, and no column of
    one Python string per interaction is ever made.
    """
    titles = items.drop_duplicates("item_id").set_index("item_id")["title"]
    df = core_of_window(inter, titles.index, s.window_start, s.window_end, s.k_core)
    if df.empty:
        raise NoRecordsError(f"no interactions left after the time window and {s.k_core}-core filtering")

    catalogue = build_catalogue(df["item_id"], titles, s.seed)
    dense = catalogue["item_id"].to_numpy()[pd.Index(catalogue["source_item_id"]).get_indexer(df["item_id"])]
    # A user's rank among the sorted user ids stands in for the id in every sort (integers sort
    # several times faster than strings; the order is the same) and names it in the records.
    user_rank, user_ids = pd.factorize(df["user_id"], sort=True)
    ts = df["timestamp"].to_numpy(dtype=np.int64)
    # Deterministic order: user, time, then item id for ties within a user.
    order = lexsort((dense, ts, user_rank))
    dense, ts, user_rank = dense[order], ts[order], user_rank[order]
    # position: the index of each row within its user's rows (0 = the user's first interaction).
    starts = np.flatnonzero(np.diff(user_rank, prepend=-1))
    position = np.arange(len(order)) - np.repeat(starts, np.diff(starts, append=len(order)))

    records = _RecordBatches(catalogue["title"].to_numpy(dtype=object), pa.array(np.asarray(user_ids, dtype=object), pa.string()),
                             user_rank, dense, ts, np.minimum(position, s.max_history))
    sample_rows = np.flatnonzero(position >= 1)
    # Samples by (target time, user), stably: the chronological cut and each split's record order.
    sample_rows = sample_rows[lexsort((user_rank[sample_rows], ts[sample_rows]))]
    split_of = _assign_splits(user_rank[sample_rows], position[sample_rows], s)
    rng = np.random.default_rng(s.seed)
    caps = dict(s.max_samples)
    kept = {}
    for i, name in enumerate(SPLITS):
        rows = sample_rows[split_of == i]  # by (timestamp, user_id)
        n_keep = len(rows)
        if s.sample_fraction < 1.0:
            n_keep = int(round(n_keep * s.sample_fraction))
        if name in caps:
            n_keep = min(n_keep, caps[name])
        if n_keep < len(rows):  # seeded subsample, chronological order kept
            rows = rows[np.sort(rng.choice(len(rows), n_keep, replace=False))]
        kept[name] = rows
    empty = [name for name in SPLITS if not len(kept[name])]
    if empty:  # (a model cannot be trained, selected or tested on nothing)
        how = f"{s.split} split {s.split_ratios}" if s.split == "chronological" else f"{s.split} split"
        raise NoRecordsError(f"the {' and '.join(empty)} split(s) have no samples: {len(df)} interactions of "
                             f"{len(user_ids)} users give {len(sample_rows)} samples, too few for the {how}"
                             + (f" at sample_fraction {s.sample_fraction}" if s.sample_fraction < 1 else ""))
    stats = {
        "users": len(user_ids),
        "items": len(catalogue),
        "interactions": len(df),
        **{f"samples_{k}": len(rows) for k, rows in kept.items()},
        **{f"mean_history_{k}": float(np.mean(records.lengths[rows])) if len(rows) else 0.0 for k, rows in kept.items()},
    }
    return Records(catalogue, stats, kept, records)


RECORD_COLUMNS = ("user_id", "history_item_ids", "history_titles", "target_item_id", "target_title", "timestamp")


class _RecordBatches:
    """Records' columns for given rows of the interactions sorted by (user, time): row r's
    history is rows r - lengths[r] .. r - 1 (oldest first), its target row r. Record batches hold
    under 2 x MAX_BATCH_TITLE_BYTES of titles each.

    titles [I] by catalogue id; user_ids [U] by user rank; user_rank, dense (catalogue ids), ts
    and lengths (history lengths, min(position, max_history)) [R] by row.
    """

    def __init__(self, titles: np.ndarray, user_ids: pa.Array, user_rank: np.ndarray, dense: np.ndarray,
                 ts: np.ndarray, lengths: np.ndarray):
        self.titles = pa.array(titles, type=pa.string())
        self.title_bytes = pc.binary_length(self.titles).to_numpy(zero_copy_only=False).astype(np.int64)  # [I] UTF-8 bytes
        self.user_ids, self.user_rank, self.dense, self.ts, self.lengths = user_ids, user_rank, dense, ts, lengths
        # Running total of the rows' target title bytes: a history's bytes are a difference of it.
        self.running_bytes = np.concatenate([[0], np.cumsum(self.title_bytes[dense])])  # [R + 1]

    def parts(self, rows: np.ndarray) -> list[np.ndarray]:
        """`rows` cut, in order, where the running total of their titles' bytes (history and
        target) crosses a multiple of MAX_BATCH_TITLE_BYTES."""
        if not len(rows):
            return [rows]  # an empty split: one empty batch, which carries the columns
        history_bytes = self.running_bytes[rows] - self.running_bytes[rows - self.lengths[rows]]
        size = np.cumsum(history_bytes + self.title_bytes[self.dense[rows]])
        return np.split(rows, np.flatnonzero(np.diff(size // MAX_BATCH_TITLE_BYTES)) + 1)

    def batch(self, rows: np.ndarray) -> pa.RecordBatch:
        """One record batch of `rows` (columns as `schemas.tables.RECORDS`)."""
        lengths = self.lengths[rows]
        slots, offsets = flat_ranges(rows - lengths, lengths)  # each history slot -> its row
        history = pa.array(self.dense[slots], pa.int64())
        list_offsets = pa.array(offsets.astype(np.int32))
        target = pa.array(self.dense[rows], pa.int64())
        return pa.RecordBatch.from_arrays([
            self.user_ids.take(pa.array(self.user_rank[rows])),
            pa.ListArray.from_arrays(list_offsets, history),
            pa.ListArray.from_arrays(list_offsets, self.titles.take(history)),
            target,
            self.titles.take(target),
            pa.array(self.ts[rows], pa.int64()),
        ], names=list(RECORD_COLUMNS))


def _assign_splits(users: np.ndarray, position: np.ndarray, s: SequenceSettings) -> np.ndarray:
    """Split index (0 train, 1 valid, 2 test) per sample, the samples sorted by (target time,
    user); `users`: ids or ranks (ordered as the ids)."""
    n = len(position)
    split_of = np.zeros(n, dtype=np.int8)
    if s.split == "chronological":  # cut in time order, ties by user: deterministic
        n_train = int(n * s.split_ratios[0])
        n_valid = int(n * (s.split_ratios[0] + s.split_ratios[1])) - n_train
        split_of[n_train : n_train + n_valid] = 1
        split_of[n_train + n_valid :] = 2
    elif s.split == "leave_one_out":
        last = pd.Series(position).groupby(users).transform("max").to_numpy()
        split_of[position == last] = 2
        split_of[(position == last - 1) & (last >= 2)] = 1
    else:
        raise ValueError(f"unknown split {s.split!r}")
    return split_of
