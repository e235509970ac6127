"""Batch recommendations: every user's top-K, from their newest history, by a registered model.

The nightly job of a recommender: recommendations for every user the data shows, written to one
Parquet file that an application reads instead of calling the server. For each user in the
profile's data (its window and `as_of`, after k-core), the history is their newest
`data.max_history` items: the history of their last sample in the built sequences followed by
that sample's target. The registered model (the champion by default) ranks them through its
pyfunc `predict`, the same ranking as `cft serve` and the evaluation (cft_core.ranking).

Items are named by the source's own ids (`source_item_id`) throughout: the dense ids of a
sequences folder are a per-window shuffle, so the same number names different items in the
profile's window and in the (often older) window the model was trained on. A model knows the
catalogue of its window; items that arrived since are not in it, so they are left out of a
history (counted in the summary), and a user none of whose items the model knows is ranked with
no history, as the server answers a new user (counted too).

Output: one row per user with `user_id`, `history_item_ids` and `item_ids` (the source's ids, as
text), `titles`, `scores` (best first), written through a temporary file renamed into place (default
`<data_root>/recommendations/cft-<data.name>.parquet`); the Parquet metadata names the model URI,
its version and the sequences folder.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from schemas.config import PipelineConfig

SPLITS = ("train", "valid", "test")
CHUNK = 64  # histories per predict call: a few generation batches, and a progress step


@dataclass(frozen=True)
class BatchOutput:
    path: Path
    users: int  # rows written
    users_without_history: int  # users none of whose items the model knows: ranked as new users
    unknown_items: int  # history entries left out: items the model's catalogue lacks


def latest_histories(sequences: Path, max_history: int) -> pd.DataFrame:
    """(user_id, history_item_ids) per user: the newest `max_history` items of each user, from
    their last sample (the newest target; the later split, then the later row, on a tie), as
    source item ids (the folder's catalogue maps its dense ids back)."""
    from cft_core.ranking import served_catalogue

    frames = [pd.read_parquet(sequences / f"{s}.parquet", columns=["user_id", "history_item_ids", "target_item_id",
                                                                   "timestamp"]) for s in SPLITS]
    rows = pd.concat(frames, ignore_index=True)  # split order, then row order: what a tie keeps
    last = rows.sort_values("timestamp", kind="stable").groupby("user_id", sort=False).tail(1)
    source_id, _ = served_catalogue(sequences / "catalogue.parquet")  # dense id d -> source_id[d]
    histories = [[source_id[int(i)] for i in [*h, t][-max_history:]]
                 for h, t in zip(last["history_item_ids"], last["target_item_id"], strict=True)]
    return pd.DataFrame({"user_id": last["user_id"].to_numpy(), "history_item_ids": histories}).sort_values(
        "user_id", kind="stable", ignore_index=True)


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
    from tasks.data import prepare

    exact, version = resolve_model(cfg, model)
    _, sequences, _ = prepare(cfg.data)
    done = recommend_all(sequences.path, cfg.data.max_history, exact, k, out or default_output(cfg), version, progress)
    return done, exact, version


def recommend_all(sequences: Path, max_history: int, model_uri: str, k: int, out: Path,
                  version: str | None = None, progress: bool = True) -> BatchOutput:
    """Rank every user's newest history with the model at `model_uri` (MLflow already points at
    its registry) and write the top `k` to `out`."""
    import mlflow
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm.auto import tqdm

    from schemas.errors import InputError
    from tasks.registry import answers_source_ids

    model = mlflow.pyfunc.load_model(model_uri)
    if not answers_source_ids(model):  # its ids would name other items in this data
        raise InputError(f"{model_uri} answers with the dense item ids of its own data window (registered before "
                         "served models spoke the source's item ids): use a version registered since, or run the "
                         "pipeline to register one")
    known = set(model.unwrap_python_model().catalogue.row_of_id)
    users = latest_histories(sequences, max_history)
    histories = [[i for i in h if i in known] for h in users["history_item_ids"]]
    unknown = sum(len(h) for h in users["history_item_ids"]) - sum(len(h) for h in histories)
    answers = []
    for start in tqdm(range(0, len(histories), CHUNK), desc="recommend", unit="chunk", disable=None if progress else True):
        chunk = pd.DataFrame({"history": histories[start : start + CHUNK]})
        answers.append(model.predict(chunk, params={"k": k, "exclude_history": True}))
    ranked = pd.concat(answers, ignore_index=True) if answers else pd.DataFrame(
        {c: [] for c in ("item_ids", "titles", "scores")})
    table = pa.table({
        "user_id": pa.array(users["user_id"].astype(str).tolist(), pa.string()),
        "history_item_ids": pa.array(histories, pa.list_(pa.string())),
        "item_ids": pa.array([list(r) for r in ranked["item_ids"]], pa.list_(pa.string())),
        "titles": pa.array([list(r) for r in ranked["titles"]], pa.list_(pa.string())),
        "scores": pa.array([list(map(float, r)) for r in ranked["scores"]], pa.list_(pa.float64())),
    }).replace_schema_metadata({"cft": json.dumps({"model": model_uri, "version": version, "k": k,
                                                   "sequences": str(sequences.resolve())})})
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        pq.write_table(table, tmp)
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return BatchOutput(out, table.num_rows, sum(not h for h in histories), unknown)
