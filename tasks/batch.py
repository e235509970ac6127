"""Batch recommendations: every user's top-K, from their newest history, by a registered model.

The nightly job of a recommender: recommendations for every user the data shows, written to one
Parquet file that an application reads instead of calling the server. For each user with an
interaction in the profile's data window (`as_of`, `train_window`; k-core does not apply: a user
with two interactions is a user too), the history is their newest `data.max_history` items, read
from the ingested interactions (not from the sequences folder, whose splits a profile may sample,
which would leave a user with an older row's history). The registered model (the champion by
default) ranks them through its pyfunc `predict`, the same ranking as `cft serve` and the
evaluation (cft_core.ranking).

Items are named by the source's own ids (`source_item_id`) throughout: the dense ids of a
sequences folder are a per-window shuffle, so the same number names different items in the
profile's window and in the (often older) window the model was trained on. A model knows the
catalogue of its window; items that arrived since (or that its k-core dropped) are not in it, so
they are left out of a history (counted in the summary), and a user none of whose items the model
knows is ranked with no history, as the server answers a new user (counted too).

No user is recommended an item they already have in the window (the model's `exclude` input,
`cft_core.ranking.Catalogue.excluded_rows`), however long ago: the history the model is shown
holds only the newest items. Versions registered before that input existed leave out the
history's items only (`excluded_seen` false, and the CLI says so).

Output: one row per user with `user_id`, `history_item_ids` and `item_ids` (the source's ids, as
text), `titles`, `scores` (best first; null for an item the backfill added), written through a temporary file renamed into place (default
`<data_root>/recommendations/cft-<data.name>.parquet`); the Parquet metadata names the model URI,
its version, the ingested folder, the window and `excluded_seen`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from schemas.config import PipelineConfig

CHUNK = 64  # histories per predict call: a few generation batches, and a progress step


@dataclass(frozen=True)
class BatchOutput:
    path: Path
    users: int  # rows written
    users_without_history: int  # users none of whose items the model knows: ranked as new users
    unknown_items: int  # history entries left out: items the model's catalogue lacks
    excluded_seen: bool  # every item a user has in the window was left out of their recommendations
    users_short: int  # users given fewer than k items (a constrained model's beams, a catalogue with no more)


def latest_histories(interactions: Path, window: tuple[int | None, int | None], max_history: int) -> pd.DataFrame:
    """(user_id, history_item_ids, seen_item_ids) per user with an interaction in `window`
    ([start, end) unix seconds, None: open): their newest `max_history` items (source ids), oldest
    first, ties in time by item id; and every item they have in the window, once each (sorted),
    which the recommendations leave out. Sorted by user. The two lists are Arrow-backed columns
    (`pd.ArrowDtype`): a slice becomes Python lists when it is used, not 25M strings at once.

    Worked out on integer codes (ids ranked in their sorted order, read dictionary-encoded) and
    Arrow list arrays, not per user in Python: 25M interactions in seconds, where grouping them
    took a minute."""
    import pyarrow.parquet as pq

    from cft_core.sequences import flat_ranges, lexsort

    inter = pq.read_table(interactions, columns=["user_id", "item_id", "timestamp"],
                          read_dictionary=["user_id", "item_id"])
    ts = inter["timestamp"].to_numpy()
    start, end = window
    keep = np.ones(len(ts), dtype=bool)
    if start is not None:
        keep &= ts >= start
    if end is not None:
        keep &= ts < end
    user, user_ids = _sorted_codes(inter["user_id"])
    item, item_ids = _sorted_codes(inter["item_id"])
    user, item, ts = user[keep], item[keep], ts[keep]
    # Only the users the window has (numbered 0.. in their sorted order again).
    present = np.zeros(len(user_ids), dtype=bool)
    present[user] = True
    user, user_ids = (np.cumsum(present) - 1)[user], user_ids.filter(pa.array(present))
    order = lexsort((item, ts, user))  # by user, time, item id
    user, item = user[order], item[order]
    starts = np.searchsorted(user, np.arange(len(user_ids)))  # each user's first row
    ends = np.append(starts[1:], len(user))
    # The newest max_history rows of each user: from max(start, end - max_history) to end.
    first = np.maximum(starts, ends - max_history)
    rows, offsets = flat_ranges(first, ends - first)
    histories = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), item_ids.take(pa.array(item[rows])))
    # Every (user, item) pair once, by user then item id: each user's seen items, sorted.
    pairs = np.sort(user.astype(np.int64) * len(item_ids) + item)  # (np.unique hashes: 4x slower here)
    pairs = pairs[np.diff(pairs, prepend=-1) != 0]
    seen_offsets = np.searchsorted(pairs // len(item_ids), np.arange(len(user_ids) + 1))
    seen = pa.ListArray.from_arrays(pa.array(seen_offsets, pa.int32()), item_ids.take(pa.array(pairs % len(item_ids))))
    return pd.DataFrame({"user_id": np.asarray(user_ids.to_pylist(), dtype=object),
                         "history_item_ids": pd.arrays.ArrowExtensionArray(histories),
                         "seen_item_ids": pd.arrays.ArrowExtensionArray(seen)})


def _sorted_codes(column) -> tuple[np.ndarray, pa.Array]:
    """A string column [N] (a ChunkedArray, plain or dictionary-encoded) -> (codes [N], values
    [V]): values[codes] is the column, numbered in the values' sorted (text) order, as
    `pd.factorize(sort=True)` numbers them. Each distinct value is sorted once, not each row."""
    import pyarrow.compute as pc

    from cft_core.sequences import dictionary_codes

    values, indices = dictionary_codes(column)
    order = pc.sort_indices(values).to_numpy()
    rank = np.empty(len(values), dtype=np.int64)
    rank[order] = np.arange(len(values))
    return rank[indices], values.take(pa.array(order))


def resolve_model(cfg: PipelineConfig, model: str = "") -> tuple[str, str | None]:
    """(the exact URI to load, its registered version) for `model` (default the champion of
    `cft-<data.name>`), with MLflow pointed at the profile's store. An alias is resolved to the
    version it names now, so the version written down is the one that ranked."""
    from schemas.errors import InputError
    from tasks.registry import champion_uri, registered_version, registry_client
    from tasks.tracking import missing_store, tracking_uri

    uri = tracking_uri(cfg, create=False)
    if (database := missing_store(uri)) is not None:
        raise InputError(f"there is no tracking store at {database}, so no registered model: run the pipeline "
                         "first, or point tracking.tracking_uri at your store")
    model = model or champion_uri(cfg)
    version = registered_version(registry_client(uri), model)  # (registry_client points MLflow's globals at the store)
    if version is None:  # a runs:/ URI or a folder: no registered version
        return model, None
    return f"models:/{version.name}/{version.version}", str(version.version)


def default_output(cfg: PipelineConfig) -> Path:
    return cfg.data.data_root / "recommendations" / f"{cfg.registered_model_name()}.parquet"


def run(cfg: PipelineConfig, model: str = "", k: int = 10, out: Path | None = None,
        progress: bool = True) -> tuple[BatchOutput, str, str | None]:
    """`cft recommend-all` and the `cft-batch` flow: the profile's data (each stage reused when
    unchanged), the model resolved, every user ranked. Returns (output, URI loaded, version)."""
    from tasks.data import ingest, sequences_target, validate_ingested

    exact, version = resolve_model(cfg, model)
    ingested = ingest(cfg.data)  # (reused when unchanged) and validated, as the pipeline's data stage does
    validate_ingested(ingested.path, cfg.data)
    _, _, settings = sequences_target(ingested, cfg.data)  # the window the pipeline's sequences would have
    done = recommend_all(ingested.path / "interactions.parquet", (settings.window_start, settings.window_end),
                         cfg.data.max_history, exact, k, out or default_output(cfg), version, progress)
    return done, exact, version


def recommend_all(interactions: Path, window: tuple[int | None, int | None], max_history: int, model_uri: str,
                  k: int, out: Path, version: str | None = None, progress: bool = True) -> BatchOutput:
    """Rank the newest history of every user of `interactions` in `window` with the model at
    `model_uri` (MLflow already points at its registry) and write the top `k` to `out`."""
    import pyarrow.parquet as pq
    from tqdm.auto import tqdm

    from schemas.errors import InputError
    from tasks.registry import LoadedPyfunc, answers_source_ids, takes_exclude

    with LoadedPyfunc(model_uri) as loaded:  # its worker and download end with the block
        model = loaded.pyfunc
        if not answers_source_ids(model):  # its ids would name other items in this data
            raise InputError(f"{model_uri} answers with the dense item ids of its own data window (registered before "
                             "served models spoke the source's item ids): use a version registered since, or run the "
                             "pipeline to register one")
        known = set(loaded.model.catalogue.row_of_id)
        users = latest_histories(interactions, window, max_history)
        histories = [[i for i in h if i in known] for h in users["history_item_ids"]]
        unknown = sum(len(h) for h in users["history_item_ids"]) - sum(len(h) for h in histories)
        # What a user already has is not recommended to them: all their items in the window, not only
        # the newest max_history the model is shown. Versions registered before the `exclude` input
        # leave out the history only (MLflow would drop the column).
        excluded_seen = takes_exclude(model)
        answers = []
        for start in tqdm(range(0, len(histories), CHUNK), desc="recommend", unit="chunk", disable=None if progress else True):
            chunk = pd.DataFrame({"history": histories[start : start + CHUNK]})
            if excluded_seen:
                chunk["exclude"] = users["seen_item_ids"][start : start + CHUNK].to_list()
            answers.append(model.predict(chunk, params={"k": k, "exclude_history": True}))
    ranked = pd.concat(answers, ignore_index=True) if answers else pd.DataFrame(
        {c: [] for c in ("item_ids", "titles", "scores")})
    table = pa.table({
        "user_id": pa.array(users["user_id"].astype(str).tolist(), pa.string()),
        "history_item_ids": pa.array(histories, pa.list_(pa.string())),
        "item_ids": pa.array([list(r) for r in ranked["item_ids"]], pa.list_(pa.string())),
        "titles": pa.array([list(r) for r in ranked["titles"]], pa.list_(pa.string())),
        "scores": pa.array([[None if v is None else float(v) for v in r] for r in ranked["scores"]],
                           pa.list_(pa.float64())),  # (null: an item the backfill added)
    }).replace_schema_metadata({"cft": json.dumps({"model": model_uri, "version": version, "k": k,
                                                   "interactions": str(interactions.resolve()), "window": window,
                                                   "excluded_seen": excluded_seen})})
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        pq.write_table(table, tmp)
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    short = sum(len(items) < k for items in ranked["item_ids"])
    return BatchOutput(out, table.num_rows, sum(not h for h in histories), unknown, excluded_seen, short)
