"""Data stage: ingest -> validate -> build sequences (architecture.md, "Stage contracts").

Plain functions, usable without Prefect (`cft data prepare`); the flow wraps them as tasks.
Outputs live under `<data_root>/` in folders named by a fingerprint of inputs and settings:

    ingested/<name>-<fp>/   interactions.parquet, items.parquet, manifest.json, validation.json,
                            windows/<key>.json (data.window_min_items' starts found in it)
    sequences/<name>-<fp>/  train/valid/test.parquet, catalogue.parquet, manifest.json,
                            validation.json
    reports/                validation reports of record building (also kept on failure)
    cache/source-digests.json   the source files' sha256, by size, mtime, ctime and inode
                            (`storage.source_digests`: an unchanged source is not read again)
A failed validation writes its report and raises; nothing downstream is written.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from cft_core.sequences import (
    PLACEHOLDER_TITLE,
    SPLITS,
    NoRecordsError,
    SequenceSettings,
    plan_records,
    widened_window_start,
)
from schemas import tables
from schemas.config import DataConfig, SourceConfig
from schemas.errors import DataError, DataValidationError
from tasks import readers
from tasks.download import fetch, is_url
from tasks.mirror import is_object_store_url, mirror
from tasks.settings import sequence_settings
from tasks.storage import (
    atomic_dir,
    fingerprint,
    source_digests,
    with_code_versions,
    write_json_atomic,
)
from tasks.validation import suites_key, validate_tables

log = logging.getLogger(__name__)

# What makes an interaction one: the interactions suite's compound key (schemas/suites/interactions.json).
INTERACTION_KEY = ["user_id", "item_id", "timestamp"]


@dataclass(frozen=True)
class StageOutput:
    path: Path
    fingerprint: str
    reused: bool


# ------------------------------------------------------------------------------ sources


def _confined(path_str: str, cfg: DataConfig) -> Path:
    """Resolve a source path and refuse it unless it lies under data_root or an input root."""
    path = Path(path_str).expanduser().resolve()
    roots = [cfg.data_root.resolve(), *(r.expanduser().resolve() for r in cfg.input_roots)]
    if not any(path == r or path.is_relative_to(r) for r in roots):
        raise DataError(
            f"source path {path} is outside the data root and the allowed input roots "
            f"{[str(r) for r in roots]}; place the files under {roots[0]} or add their folder "
            "to data.input_roots"
        )
    if not path.exists():
        raise DataError(f"source path {path} does not exist")
    if path.is_dir():  # every member a reader may open, links resolved, must be inside too
        for member in sorted(path.rglob("*")):
            target = member.resolve()
            if not any(target == r or target.is_relative_to(r) for r in roots):
                raise DataError(f"{member} in the source folder links to {target}, outside the data root "
                                f"and the allowed input roots {[str(r) for r in roots]}; it is not read")
    return path


def _source_path(path_str: str, cfg: DataConfig, sync: bool = True) -> Path:
    """A source path: a URL is downloaded under the data root first (tasks/download.py), an
    object-store URL mirrored there (tasks/mirror.py: brought up to date when `sync`, which the
    listing of the files to read does once per ingest; reading them then reads that mirror)."""
    if is_url(path_str):
        return _confined(str(fetch(path_str, cfg.data_root, cfg.source.sha256.get(path_str))), cfg)
    if is_object_store_url(path_str):
        return _confined(str(mirror(path_str, cfg.data_root, sync=sync)), cfg)
    return _confined(path_str, cfg)


def source_files(cfg: DataConfig) -> list[Path]:
    """The files the source's reader reads, no others (for the fingerprint): a file left next to
    them (ML-25M's genome scores, a README, a Spark `_SUCCESS` marker) neither costs a digest nor
    makes a new ingest."""
    return _source_listing(cfg)[0]


def _source_listing(cfg: DataConfig) -> tuple[list[Path], Path | None]:
    """(`source_files`, the folder a generic source's parts lie in, else None)."""
    files, parts_folder = _files_read(cfg)
    for f in files:
        if not f.is_file():
            what = "a folder, where a file is read" if f.is_dir() else "file not found"
            raise DataError(f"{f}: {what} (data.source.format={cfg.source.format})")
    return files, parts_folder


def _files_read(cfg: DataConfig) -> tuple[list[Path], Path | None]:
    src = cfg.source
    if src.format == "synthetic":  # no files: the settings (in the fingerprint) are the data
        return [], None
    if src.format == "recbole_package":
        return list(readers.recbole_files(readers.recbole_package_folder())), None
    path = _source_path(src.path, cfg)
    if src.format in ("recbole", "grouplens", "d3_csv"):
        _require_folder(path, src.format)
        if src.format == "recbole":
            return list(readers.recbole_files(path)), None
        if src.format == "grouplens":
            return list(readers.grouplens_files(path)), None
        csvs, info = readers.d3_files(path)
        return [*csvs, info], None
    if src.format == "amazon_raw":
        return [path, _amazon_meta_path(cfg)], None
    items = _source_path(src.items_path, cfg) if src.items_path else None
    return readers.interaction_parts(path, items) + ([items] if items else []), path if path.is_dir() else None


def _amazon_meta_path(cfg: DataConfig, sync: bool = True) -> Path:
    if not cfg.source.meta_path:
        raise DataError("source.meta_path (the category's meta_<Category>.json or .jsonl) is required for amazon_raw")
    return _source_path(cfg.source.meta_path, cfg, sync)


def _require_folder(path: Path, source_format: str) -> None:
    if not path.is_dir():
        unzip = (": a zip archive, which is read once unpacked: unzip it and point data.source.path at the folder "
                 "inside, or give the archive's https URL (downloaded and unpacked under the data root)"
                 if zipfile.is_zipfile(path) else "")
        raise DataError(f"{path}: source.format={source_format} reads a folder, and this is a file{unzip}")


def read_source(cfg: DataConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    src = cfg.source
    if src.format == "recbole_package":
        return readers.read_recbole(readers.recbole_package_folder())
    if src.format == "synthetic":
        from tasks.synthetic import read_synthetic

        return read_synthetic(src.synthetic)
    # (no sync: `source_files` brought an object-store mirror up to date for this ingest's key)
    path = _source_path(src.path, cfg, sync=False)
    if src.format in ("recbole", "grouplens", "d3_csv"):
        _require_folder(path, src.format)
    if src.format == "recbole":
        return readers.read_recbole(path)
    if src.format == "grouplens":
        return readers.read_grouplens(path)
    if src.format == "d3_csv":
        return readers.read_d3_csv(path)
    if src.format == "amazon_raw":
        return readers.read_amazon_raw(path, _amazon_meta_path(cfg, sync=False))
    items = _source_path(src.items_path, cfg, sync=False) if src.items_path else None
    return readers.read_generic(cfg, path, items)


def _to_arrow(df: pd.DataFrame, schema: pa.Schema, what: str) -> pa.Table:
    try:
        return pa.Table.from_pandas(df[schema.names], schema=schema, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError) as e:
        # Nulls in required columns are reported by validation; cast them through as nullable.
        nullable = pa.schema([f.with_nullable(True) for f in schema])
        try:
            return pa.Table.from_pandas(df[schema.names], schema=nullable, preserve_index=False)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e2:
            raise DataError(f"{what}: does not match the schema {schema}: {e2}") from e


# ------------------------------------------------------------------------------ stages


# Source settings added after ingest keys existed: in a key only where set (`source_settings`).
JOINED_LATER = ("encoding", "delimiter", "items_columns", "timestamp_format", "timezone", "decimal", "sheet",
                "items_sheet")


def source_settings(cfg: DataConfig) -> dict:
    """The source settings that decide the ingested rows (the generator's only for `synthetic`;
    JOINED_LATER only where they are not the default: so a profile that does not set them keeps the
    ingested folders it had)."""
    left_out = set() if cfg.source.format == "synthetic" else {"synthetic"}
    left_out |= {name for name in JOINED_LATER
                 if getattr(cfg.source, name) == SourceConfig.model_fields[name].get_default(call_default_factory=True)}
    return cfg.source.model_dump(exclude=left_out)



# Ingest's own code, for every source format: a change in what it writes for the same files joins
# its key (storage.with_code_versions), so ingested folders and all built on them are written again
# (not downloads, which storage.CODE_VERSION would also rename).
# 2 (2026-12-07): titles kept as their source shows them (cft_core.titles.normalize_title: NFC, the
#   joiners kept; was NFKC, which made "E=mc²" "E=mc2", and all format characters removed).
INGEST_VERSION = 2

# A reader whose rows for the same files changed since storage.CODE_VERSION was last bumped: its
# version joins its ingest key, so that only that format's ingested folders are written again
# (and what was built on them), not every data root's (a format not listed: version 1).
READER_VERSIONS = {
    "generic": 2,  # 2: an item's title is that of its newest titled interaction (was: its first row)
}


def ingest_target(cfg: DataConfig) -> tuple[Path, str, list[Path]]:
    """(output folder, fingerprint, source files) of `ingest`: named by the source settings, the
    bytes of every source file and the reader's version."""
    files, folder = _source_listing(cfg)
    digests = source_digests(files, cfg.data_root / "cache" / "source-digests.json" if cfg.digest_cache else None)
    key = {"source": source_settings(cfg), "files": [(readers.part_name(f, folder), d) for f, d in zip(files, digests, strict=True)]}
    # The reader's version sits under "reader", not storage.with_code_versions' "code": it was
    # keyed so before that helper, and moving it would write every generic source's folders again.
    if (reader := READER_VERSIONS.get(cfg.source.format, 1)) > 1:  # (version 1 was never in the key)
        key["reader"] = reader
    if dropping := cleaning_drops(cfg):  # the defaults (error) write nothing else, so keep their names
        key["drop"] = dropping
    fp = fingerprint(with_code_versions(key, ingest=INGEST_VERSION))
    return cfg.data_root / "ingested" / f"{cfg.name}-{fp}", fp, files


def cleaning_drops(cfg: DataConfig) -> list[str]:
    """The data settings set to drop rows the defaults keep or refuse (`empty_titles`,
    `unknown_items`, `duplicate_interactions`: drop; `repeat_interactions`: first): they decide the
    ingested rows, so they join the ingest key."""
    return [name for name in ("empty_titles", "unknown_items", "duplicate_interactions") if getattr(cfg, name) == "drop"] \
        + (["repeat_interactions"] if cfg.repeat_interactions == "first" else [])


def ingest(cfg: DataConfig) -> StageOutput:
    """Read the source into interactions.parquet and items.parquet (reused when unchanged)."""
    out, fp, files = ingest_target(cfg)
    if (out / "manifest.json").is_file():
        return StageOutput(out, fp, reused=True)
    interactions, items = read_source(cfg)
    items = items.assign(title=readers.normalize_titles(items["title"]))
    dropped = dict(interactions.attrs.get("dropped", {}))  # what the reader itself left out (Amazon's)
    empty = items["title"].notna() & (items["title"] == "")
    if empty.any():
        ids = items.loc[empty, "item_id"].tolist()
        if cfg.empty_titles == "error":
            raise DataError(f"{cfg.name}: {len(ids)} item(s) have no title once control and invisible "
                            f"characters are removed, e.g. item ids {ids[:5]}; fix them or set data.empty_titles: drop")
        log.warning("%s: dropping %d item(s) with an empty title (and their interactions), e.g. %s",
                    cfg.name, len(ids), ids[:5])
        items = items[~empty]
        gone = interactions["item_id"].isin(ids)  # (an item the items table lacks is unknown_items' to decide)
        dropped["empty_titles"] = {"items": len(ids), "interactions": int(gone.sum())}
        interactions = interactions[~gone]
    unknown = ~interactions["item_id"].isin(items["item_id"])
    if unknown.any() and cfg.unknown_items == "drop":  # (error: the validation names them)
        ids = interactions.loc[unknown, "item_id"].unique().tolist()
        log.warning("%s: dropping %d interaction(s) with %d item(s) the items table lacks, e.g. %s",
                    cfg.name, int(unknown.sum()), len(ids), ids[:5])
        dropped["unknown_items"] = {"items": len(ids), "interactions": int(unknown.sum())}
        interactions = interactions[~unknown]
    # (error: the validation shows them; hashing 25M rows' keys is spent only when dropping)
    repeated = interactions.duplicated(INTERACTION_KEY, keep="last") if cfg.duplicate_interactions == "drop" else None
    if repeated is not None and repeated.any():
        copies = interactions[interactions.duplicated(INTERACTION_KEY, keep=False)]
        rerated = int((copies.groupby(INTERACTION_KEY)["rating"].nunique(dropna=False) > 1).sum())
        log.warning("%s: dropping %d repeated interaction(s): the same user, item and timestamp as a row read "
                    "after them, which is kept%s", cfg.name, int(repeated.sum()),
                    f"; {rerated} of them with another rating than the kept row" if rerated else "")
        dropped["duplicate_interactions"] = {"interactions": int(repeated.sum()), "other_rating": rerated}
        interactions = interactions[~repeated]
    if cfg.repeat_interactions == "first":  # a user's interactions with an item after the first time they had it
        # (rows at that first time all stay: two of them are a duplicate, `duplicate_interactions`' to decide)
        first = interactions.groupby(["user_id", "item_id"], sort=False)["timestamp"].transform("min")
        later = (interactions["timestamp"] > first).to_numpy(dtype=bool, na_value=False)
        if later.any():
            log.info("%s: leaving out %d interaction(s) with an item the user had before (repeat_interactions: first)",
                     cfg.name, int(later.sum()))
            dropped["repeat_interactions"] = {"interactions": int(later.sum())}
            interactions = interactions[~later]
    inter_t = _to_arrow(interactions, tables.INTERACTIONS, "interactions")
    items_t = _to_arrow(items, tables.ITEMS, "items")
    with atomic_dir(out) as tmp:
        pq.write_table(inter_t, tmp / "interactions.parquet")
        pq.write_table(items_t, tmp / "items.parquet")
        manifest = {"fingerprint": fp, "source": source_settings(cfg), "files": [str(f) for f in files],
                    "interactions": inter_t.num_rows, "items": items_t.num_rows,
                    "timestamp": interactions.attrs.get("timestamp"), "dropped": dropped}
        write_json_atomic(tmp / "manifest.json", manifest)
    return StageOutput(out, fp, reused=False)


def outside(values: pd.Series, known: pd.Series) -> pd.Series:
    """Each value that `known` lacks, null where it is known: the column a suite expects to be all
    null, whose failures then list the unknown values themselves. (A Great Expectations value set
    of a whole catalogue's ids instead took minutes: it copies an expectation's arguments many
    times per run.)"""
    kept = values.where(~values.isin(known))
    return kept.astype("Int64") if pd.api.types.is_integer_dtype(values) else kept


def validate_ingested(ingested: Path, cfg: DataConfig) -> dict:
    """Run the interactions and items suites; report in <ingested>/validation.json.

    A passed report is reused while its key holds: the ingested folder (the report lives in it)
    and `suites_key` (the suites, the data settings filled into them, the GE version). So a
    scheduled run or `cft recommend-all` on unchanged data does not validate it again (~20 s at
    25M interactions), while a changed bound (data.rating_range, data.as_of, ...) or suite does.
    A failed report is never reused: the suites run again and raise."""
    lo, hi = cfg.timestamp_bounds()
    params = {
        "min_timestamp": lo, "max_timestamp": hi,
        "min_rating": cfg.rating_range[0], "max_rating": cfg.rating_range[1],
        "max_title_chars": cfg.max_title_chars,
        "placeholder_title": PLACEHOLDER_TITLE.pattern,
    }
    # Unset, the newest allowed timestamp is a day past now: it only moves later, so a table that
    # passed under an earlier "now" passes under this one, and the key names the rule, not the time.
    key_params = params if cfg.max_timestamp is not None else {**params, "max_timestamp": "now + 1 day"}
    key = fingerprint(suites_key(["interactions", "items"], key_params))
    report_path = ingested / "validation.json"
    if report_path.is_file():
        report = json.loads(report_path.read_text(encoding="utf-8"))
        if report.get("key") == key and report["success"]:
            log.info("%s: validation reused (%s: the same tables, suites and settings passed)", cfg.name, report_path)
            return report
    inter = pq.read_table(ingested / "interactions.parquet").to_pandas()
    items = pq.read_table(ingested / "items.parquet").to_pandas()
    inter["item_id_not_in_items"] = outside(inter["item_id"], items["item_id"])
    try:
        return validate_tables(
            {"interactions": ("interactions", inter), "items": ("items", items)},
            params, report_path, what=f"{cfg.name} ingested tables", key=key,
        )
    except DataValidationError as e:
        hints = []
        read = json.loads((ingested / "manifest.json").read_text()).get("timestamp")
        if read and any(f["column"] == "timestamp" and "between" in f["expectation"] for f in e.report["failures"]):
            hints.append(f"timestamps: column {read['column']!r} was read as {read['unit']} "
                         f"(data.source.timestamp_unit={cfg.source.timestamp_unit}); raw values e.g. {read['examples']}, "
                         f"allowed {pd.Timestamp(lo, unit='s', tz='UTC')} .. {pd.Timestamp(hi, unit='s', tz='UTC')}")
        if any(f["column"] == INTERACTION_KEY for f in e.report["failures"]):
            hints.append("user_id, item_id, timestamp: rows repeated (an export overlapping the one before, a part "
                         "dropped in twice?); remove them, or set data.duplicate_interactions: drop to keep the "
                         "last of each")
        if any(f["column"] == "item_id_not_in_items" for f in e.report["failures"]):
            hints.append("item_id_not_in_items: interactions with items the items table lacks; add the items, "
                         "or set data.unknown_items: drop to leave those interactions out")
        if not hints:
            raise
        raise DataValidationError(str(e) + "".join(f"\n  {h}" for h in hints), e.report, e.report_path) from None


def newest_seen(ingested: Path, cfg: DataConfig) -> int | None:
    """The newest interaction before `cfg.as_of` (unix seconds), when `as_of` or `train_window`
    is set (else None: no window to anchor). A refused as_of names where the data starts."""
    if cfg.as_of is None and cfg.train_window is None:
        return None
    ts = pq.read_table(ingested / "interactions.parquet", columns=["timestamp"]).column(0).to_numpy()
    as_of = cfg.as_of_seconds()
    seen = ts[ts < as_of] if as_of is not None else ts
    if seen.size == 0:
        first = pd.Timestamp(int(ts.min()), unit="s", tz="UTC") if ts.size else None
        raise DataError(f"{cfg.name}: no interaction before data.as_of={cfg.as_of} (the data starts at {first})")
    return int(seen.max())


def sequences_target(ingested: StageOutput, cfg: DataConfig) -> tuple[Path, str, SequenceSettings]:
    """(output folder, fingerprint, settings) of `build_sequences`: the ingested data and the
    settings, whose window is anchored at the newest interaction seen, so moving `as_of` over a
    stretch with no new interactions names the same folder."""
    settings = sequence_settings(cfg, newest_seen(ingested.path, cfg))
    if cfg.window_min_items is not None:  # (keyed by the start it finds: the same window, the same folder)
        settings = dataclasses.replace(settings, window_start=widened_start(ingested.path, cfg, settings))
    fp = fingerprint({"ingested": ingested.fingerprint, "settings": settings.__dict__})
    return cfg.data_root / "sequences" / f"{cfg.name}-{fp}", fp, settings


def widened_start(ingested: Path, cfg: DataConfig, settings: SequenceSettings) -> int:
    """`data.window_min_items`: the window's start moved back a year at a time until its k-core
    keeps that many items (`cft_core.sequences.widened_window_start`), said in the log. Kept
    beside the ingested tables it was found in (`windows/<key>.json`), so an unchanged run does
    not read and count them again only to name its sequences folder."""
    memo = ingested / "windows" / f"{fingerprint({'settings': settings.__dict__, 'min_items': cfg.window_min_items})}.json"
    if memo.is_file():
        found = json.loads(memo.read_text())
    else:
        inter = pq.read_table(ingested / "interactions.parquet", columns=["user_id", "item_id", "timestamp"]).to_pandas()
        titled = pd.Index(pq.read_table(ingested / "items.parquet", columns=["item_id"]).column(0).to_pandas())
        start, items = widened_window_start(inter, titled, settings, cfg.window_min_items)
        found = {"window_start": start, "items": items, "min_items": cfg.window_min_items}
        memo.parent.mkdir(exist_ok=True)
        write_json_atomic(memo, found)
    said = ("%s: data.window_min_items=%d: the window starts at %s, where its %d-core keeps %d items",
            cfg.name, cfg.window_min_items, pd.Timestamp(found["window_start"], unit="s", tz="UTC"), settings.k_core,
            found["items"])
    if found["items"] < cfg.window_min_items:  # (asked for, and not there: say so each time)
        log.warning(said[0] + "; it holds all the data before its end, and no more items", *said[1:])
    else:
        log.info(*said)
    return int(found["window_start"])


def build_sequences(ingested: StageOutput, cfg: DataConfig) -> StageOutput:
    """Validated tables -> train/valid/test records + catalogue (reused when unchanged)."""
    out, fp, settings = sequences_target(ingested, cfg)
    if (out / "manifest.json").is_file():
        return StageOutput(out, fp, reused=True)
    inter = pq.read_table(ingested.path / "interactions.parquet").to_pandas()
    items = pq.read_table(ingested.path / "items.parquet").to_pandas()
    try:
        records = plan_records(inter, items, settings)
    except NoRecordsError as e:
        raise DataError(f"{cfg.name}: cannot build sequences: {e}") from None
    del inter, items  # (what the records need of them, `records` holds as numbers)
    catalogue = records.catalogue
    with atomic_dir(out) as tmp:  # (a failed validation leaves no folder)
        frames = {}
        for name in SPLITS:  # written as made, a batch at a time: a split's titles are never all in memory
            parts = []
            with pq.ParquetWriter(tmp / f"{name}.parquet", tables.RECORDS) as writer:
                for batch in records.batches(name):
                    table = pa.Table.from_batches([batch]).cast(tables.RECORDS)
                    writer.write_table(table)
                    parts.append(records_frame(table, catalogue["item_id"]))
            frames[name] = pd.concat(parts, ignore_index=True)
        # Reports go outside the output folder, so that a failure leaves them (and nothing else).
        report = validate_records(frames, cfg, cfg.data_root / "reports" / f"sequences-{cfg.name}-{fp}.json")
        write_json_atomic(tmp / "validation.json", report)
        pq.write_table(pa.Table.from_pandas(catalogue, schema=tables.CATALOGUE, preserve_index=False),
                       tmp / "catalogue.parquet")
        write_json_atomic(tmp / "manifest.json", {"fingerprint": fp, "ingested": str(ingested.path),
                                                  "domain": cfg.domain, "stats": records.stats,
                                                  "settings": settings.__dict__})
    return StageOutput(out, fp, reused=False)


def records_frame(table: pa.Table, catalogue_ids: pd.Series) -> pd.DataFrame:
    """What the records suite checks of a split, computed in Arrow and numpy: its histories never
    become Python lists (7.9M records took 290 s and 11 GB more that way). history_len: titles per
    history; history_in_catalogue: every history id is a catalogue id; target_item_id_not_in_catalogue:
    `outside`; target_title and timestamp as they are."""
    import numpy as np
    import pyarrow.compute as pc

    histories = table.column("history_item_ids")
    lengths = pc.list_value_length(histories).to_numpy(zero_copy_only=False)
    ids = pc.list_flatten(histories).to_numpy()
    # An id is known when binary search finds it in the sorted catalogue (np.isin sorts the ids:
    # several times their memory).
    known = np.unique(catalogue_ids.to_numpy())
    found = known[np.searchsorted(known, ids).clip(max=len(known) - 1)] == ids if len(known) else np.zeros(len(ids), bool)
    in_catalogue = np.ones(table.num_rows, dtype=bool)
    in_catalogue[np.repeat(np.arange(table.num_rows), lengths)[~found]] = False  # a row with an unknown id
    return pd.DataFrame({
        "history_len": lengths,
        "history_in_catalogue": in_catalogue,
        "target_item_id_not_in_catalogue": outside(table.column("target_item_id").to_pandas(), catalogue_ids),
        "target_title": table.column("target_title").to_pandas(),
        "timestamp": table.column("timestamp").to_pandas(),
    })


def validate_records(frames: dict[str, pd.DataFrame], cfg: DataConfig, report_path: Path) -> dict:
    """Records suite per split (`frames`: each split's `records_frame`), plus the split order
    (train targets before valid before test)."""
    bounds = {}
    for name in SPLITS:
        df = frames[name]
        bounds[name] = (int(df["timestamp"].min()), int(df["timestamp"].max())) if len(df) else None
    base = {"max_history": cfg.max_history}
    # Chronological split: valid/test targets are not earlier than any train target.
    reports = []
    for name in SPLITS:
        params = dict(base, min_split_timestamp=-(2**62), max_split_timestamp=2**62)
        if cfg.split == "chronological":
            prev = [bounds[p][1] for p in SPLITS[: SPLITS.index(name)] if bounds[p]]
            if prev:
                params["min_split_timestamp"] = max(prev)
        path = report_path.with_name(f"{report_path.stem}-{name}.json")
        reports.append(validate_tables({name: ("records", frames[name])}, params, path, what=f"{cfg.name} {name} records"))
    report = {"success": all(r["success"] for r in reports), "splits": dict(zip(SPLITS, reports, strict=True))}
    write_json_atomic(report_path, report)
    return report


def prepare(cfg: DataConfig) -> tuple[StageOutput, StageOutput, dict]:
    """ingest -> validate -> build; returns (ingested, sequences, manifest of sequences)."""
    ingested = ingest(cfg)
    validate_ingested(ingested.path, cfg)
    sequences = build_sequences(ingested, cfg)
    manifest = json.loads((sequences.path / "manifest.json").read_text())
    return ingested, sequences, manifest
