"""Reading large source files, each reader timed interleaved on the same synthetic files, each
run in its own process so that its peak memory (VmHWM, Linux) is its own.

`amazon` (an Amazon Reviews 2018 file, `amazon_raw`): pyarrow's JSON reader (`tasks.readers.amazon.
_json_lines`, since 2026-12-05; asked for the 2018 and 2023 releases' fields since 2026-12-06,
as `read_amazon_raw` reads them), the line-by-line fallback it uses for files it refuses
(`_json_lines_by_line`), and the reader before (the whole file decoded, `json.loads` per line,
a DataFrame of every field). The file is shaped like a 2018 review line (overall, verified,
reviewTime, reviewerID, asin, reviewerName, style, reviewText of 20..150 words, summary,
unixReviewTime: ~660 bytes), gzipped.

`movielens` (the ML-20M/25M/32M layout: ratings.csv + movies.csv): the `grouplens` reader
(pyarrow's CSV reader, since 2026-12-05), the `generic` reader with a column mapping (what such a
folder needed before; pyarrow's CSV reader too since 2026-12-05, `tasks.readers.files.read_string_table`),
and that reader with its parsing as before (pandas' CSV reader on the decoded text, `pd.to_numeric`
for the numbers; the reader before also copied its columns into Python strings, which this one
no longer does: 57.5 s and 6.3 GB in the run at commit 73390e2). ML-25M's shape:
25,000,095 ratings of ~160,000 users, 60,000 titles (some quoted, some accented), half stars.

`lake` (a data lake's event table: Parquet partitioned by day as Spark or pyarrow write it, 30
columns of which the pipeline maps four: user, item, time, title, the rest what trackers log,
session, page, referrer, user agent, prices, ...): the `generic` reader, which reads a Parquet
part's mapped columns only (since 2026-12-06), and the same reader reading every column, as it
did before. `lake-json`: the same table as gzipped JSON lines, one file a day (Spark's
`df.write.json`), where the reader keeps the mapped fields once pyarrow has parsed a file (a
file of 8 MB or more: only they are parsed, `lake-json-file`).
`lake-json-mixed`: those files with the customer id a number on some lines and text on others
(an export whose producer changed), which pyarrow refuses: the reader's line-by-line fallback
then keeps only the mapped fields' values (since 2026-12-06), where it kept every field's.
`lake-json-file`: the table as one gzipped JSON-lines file (an export in one piece): the reader
parses the mapped fields only where the file's first block types them (since 2026-12-07), where
it parsed every field and kept the mapped ones after.
`lake-parts`: a delivery stream's output (Amazon Data Firehose, a Kafka sink): many small gzipped
JSON-lines files, 20 events each, in `dt=.../hour=...` folders; parts alike are checked and
converted together (`tasks.readers.generic._interaction_rows`, since 2026-12-06), where each part was
converted by itself before (`batched=False`, what a part a fallback reads still gets).

    python -m benchmarks.readers                          # amazon: 1,000,000 reviews (~660 MB), 3 rounds
    python -m benchmarks.readers --source movielens       # 25,000,000 ratings (~570 MB), 3 rounds
    python -m benchmarks.readers --source lake            # 2,000,000 events in 90 day partitions, 3 rounds
    python -m benchmarks.readers --source lake-json       # 1,000,000 events as gzipped JSON lines, 3 rounds
    python -m benchmarks.readers --source lake-json-mixed # 200,000 such events, read line by line, 3 rounds
    python -m benchmarks.readers --source lake-json-file  # 1,000,000 events in one gzipped JSON-lines file, 3 rounds
    python -m benchmarks.readers --source lake-parts      # 100,000 events in 5,000 parts, 3 rounds
    python -m benchmarks.readers --rows 200000 --rounds 5

Files are seeded. Each round runs every reader, in an order that alternates between rounds; a
ratio is a reader's time (or peak memory) over the first reader's in the same round, reported as
the median with its range. Results: benchmarks/results/readers.json and .md (amazon),
readers-movielens.json and .md, readers-lake[-json[-mixed|-file]|-parts].json and .md.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.provenance import machine, write_result
from benchmarks.rounds import (
    median_over_rounds,
    peak_memory_mb,
    ratio_text,
    ratios_over_rounds,
    round_order,
    rounds_heading,
    run_child,
)

RESULTS = Path(__file__).parent / "results"
READERS = {"amazon": ("arrow", "by_line", "whole_text"), "movielens": ("grouplens", "generic", "generic_before"),
           "lake": ("lake", "lake_every_column"), "lake-json": ("lake", "lake_every_column"),
           "lake-json-mixed": ("lake", "lake_every_column"), "lake-json-file": ("lake", "lake_every_field_parsed"),
           "lake-parts": ("lake_together", "lake_one_by_one")}
LABELS = {"arrow": "pyarrow JSON reader (now)", "by_line": "line by line (its fallback)",
          "whole_text": "whole text + json.loads (before)", "grouplens": "grouplens: pyarrow CSV (now)",
          "generic": "generic: pyarrow CSV (now)", "generic_before": "generic: pandas CSV and numbers (as before)",
          "lake": "generic: the mapped columns (now)", "lake_every_column": "generic: every column (before)",
          "lake_every_field_parsed": "generic: every field parsed, the mapped kept (before)",
          "lake_together": "generic: parts alike converted together (now)",
          "lake_one_by_one": "generic: each part converted by itself (before)"}
DEFAULT_ROWS = {"amazon": 1_000_000, "movielens": 25_000_000, "lake": 2_000_000, "lake-json": 1_000_000,
                "lake-json-mixed": 200_000, "lake-json-file": 1_000_000, "lake-parts": 100_000}
EVENTS_PER_PART = 20  # a delivery stream flushes small files: a buffer's worth of events, every minute or so
LAKE_DAYS = 90
WORDS = ["game", "great", "fun", "hard", "play", "graphics", "story", "buy", "controller", "love", "bad", "the", "a", "is", "it", "and", "to", "of"]


def write_reviews(path: Path, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with gzip.open(path, "wt", encoding="utf-8", compresslevel=1) as f:
        for _ in range(n):
            f.write(json.dumps({
                "overall": float(rng.randint(1, 5)), "verified": True, "reviewTime": "10 17, 2015",
                "reviewerID": f"A{rng.randrange(n // 5 + 1):013d}", "asin": f"B{rng.randrange(n // 20 + 1):09d}",
                "reviewerName": "Some Name", "style": {"Format:": " Video Game"},
                "reviewText": " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 150))),
                "summary": "Five Stars", "unixReviewTime": 1_400_000_000 + rng.randrange(100_000_000)}) + "\n")


def write_movielens(folder: Path, n: int, seed: int = 0) -> None:
    """ratings.csv (n rows, sorted by user as GroupLens writes it) and movies.csv (60,000 titles)."""
    rng = np.random.default_rng(seed)
    users = np.sort(rng.integers(1, n // 150 + 2, n))
    items = rng.zipf(1.3, n) % 60_000 + 1  # a long tail, as ratings are
    stars = rng.integers(1, 11, n) / 2
    times = rng.integers(789_652_009, 1_574_327_703, n)
    with open(folder / "ratings.csv", "w") as f:
        f.write("userId,movieId,rating,timestamp\n")
        for start in range(0, n, 1_000_000):
            part = slice(start, start + 1_000_000)
            f.writelines(f"{u},{i},{r:g},{t}\n" for u, i, r, t in zip(
                users[part].tolist(), items[part].tolist(), stars[part].tolist(), times[part].tolist(), strict=True))
    with open(folder / "movies.csv", "w", encoding="utf-8") as f:
        f.write("movieId,title,genres\n")
        f.writelines(f'{i},"Movie {i}, The ({1900 + i % 120})",Drama|Comedy\n' if i % 7 == 0
                     else f"{i},Movie {i} – Café ({1900 + i % 120}),Drama\n" for i in range(1, 60_001))


def write_lake(folder: Path, n: int, seed: int = 0) -> None:
    """An event table of n rows, 30 columns, partitioned by day (`dt=2026-09-01/...`)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    day = rng.integers(0, LAKE_DAYS, n)
    times = 1_788_220_800 + day * 86400 + rng.integers(0, 86400, n)  # 2026-09-01 on
    sku = rng.zipf(1.3, n) % 50_000
    columns = {
        "customer_id": rng.integers(0, n // 20, n), "sku": pa.array([f"SKU-{i:06d}" for i in sku]),
        "event_time": pa.array(times * 1000, pa.timestamp("ms", tz="UTC")),
        "product_name": pa.array([f"Product {i} – size M" for i in sku]),
        "dt": pa.array([f"2026-{9 + d // 30:02d}-{d % 30 + 1:02d}" for d in day]),
    }
    words = np.array(["home", "cart", "search", "product", "checkout", "account", "sale", "new"])
    for k in range(5):  # what else a tracker logs: pages, referrers, sessions, devices ...
        columns[f"page_{k}"] = pa.array(np.char.add("/shop/", words[rng.integers(0, 8, n)]).astype(object))
        columns[f"session_{k}"] = pa.array(np.char.add("s-", rng.integers(0, 10**9, n).astype(str)).astype(object))
        columns[f"agent_{k}"] = pa.array(np.char.add("Mozilla/5.0 (X11; Linux x86_64) build ", rng.integers(0, 999, n)
                                                     .astype(str)).astype(object))
        columns[f"price_{k}"] = rng.random(n) * 100
        columns[f"quantity_{k}"] = rng.integers(1, 5, n)
    pq.write_to_dataset(pa.table(columns), folder, partition_cols=["dt"])


def lake_as_json(folder: Path, mixed: bool = False) -> None:
    """Each day's Parquet part of `write_lake` as a gzipped JSON-lines file in its place (`mixed`:
    the customer id text on every other line, a number on the rest)."""
    import pyarrow.parquet as pq

    for part in sorted(folder.rglob("*.parquet")):
        frame = pq.read_table(part).to_pandas()
        frame["event_time"] = frame["event_time"].astype("int64") // 10**6  # (unix ms, as trackers send it)
        if mixed:
            frame["customer_id"] = [str(c) if i % 2 else int(c) for i, c in enumerate(frame["customer_id"])]
        with gzip.open(part.with_suffix(".json.gz"), "wt", compresslevel=1) as f:
            frame.to_json(f, orient="records", lines=True)
        part.unlink()


def lake_as_one_json_file(folder: Path) -> None:
    """`write_lake`'s parts as one gzipped JSON-lines file in the folder (the day a field)."""
    import pyarrow.parquet as pq

    frame = pq.read_table(folder).to_pandas()
    frame["event_time"] = frame["event_time"].astype("int64") // 10**6  # (unix ms, as trackers send it)
    frame["dt"] = frame["dt"].astype(str)
    with gzip.open(folder / "events.json.gz", "wt", compresslevel=1) as f:
        frame.to_json(f, orient="records", lines=True)
    for part in [p for p in folder.iterdir() if p.is_dir()]:
        shutil.rmtree(part)


def read(reader: str, path: Path):
    """The source's rows as a DataFrame, as `reader` reads them (`path`: the file or folder)."""
    import pandas as pd

    from tasks import readers
    from tasks.readers import amazon, generic, tables, values

    if reader == "grouplens":
        return readers.read_grouplens(path)[0]
    if reader in ("generic", "generic_before"):
        from schemas.config import DataConfig

        if reader == "generic_before":  # the reader before 2026-12-05: pandas for the text and the numbers
            values.to_numbers = lambda column: pd.to_numeric(column, errors="coerce")
            tables.string_table_arrow = lambda *args: None  # (None: the file is pandas' to read)
        cfg = DataConfig.model_validate({"data_root": str(path), "source": {
            "format": "generic", "path": str(path / "ratings.csv"), "items_path": str(path / "movies.csv"),
            "columns": {"user_id": "userId", "item_id": "movieId", "title": "title"}}})
        return readers.read_generic(cfg, path / "ratings.csv", path / "movies.csv")[0]
    if reader in ("lake", "lake_every_column", "lake_every_field_parsed", "lake_together", "lake_one_by_one"):
        from schemas.config import DataConfig

        if reader == "lake_every_field_parsed":  # as before 2026-12-07: a JSON-lines file's every field parsed
            tables._json_fields_typed_by_first_block = lambda path, columns: None

        if reader == "lake_every_column":  # as before 2026-12-06: a part's every column read
            every = generic.read_source_table
            generic.read_source_table = lambda p, encoding, delimiter=None, columns=None, sheet=None: every(
                p, encoding, delimiter, None, sheet)
        if reader == "lake_one_by_one":  # as before 2026-12-06: each part converted by itself
            batched = generic._interaction_rows
            generic._interaction_rows = lambda *a, **kw: batched(*a, **{**kw, "batched": False})
        cfg = DataConfig.model_validate({"data_root": str(path), "source": {"format": "generic", "path": str(path),
            "columns": {"user_id": "customer_id", "item_id": "sku", "timestamp": "event_time", "title": "product_name"}}})
        return readers.read_generic(cfg, path, None)[0]
    if reader == "arrow":  # the fields `read_amazon_raw` asks for: both releases' (it tells them apart after)
        return amazon._amazon_reviews(path)[0]
    if reader == "by_line":
        return amazon._json_lines_by_line(path, [name for spec in amazon.AMAZON_RELEASES.values() for name in spec["fields"]])
    text = gzip.decompress(path.read_bytes()).decode("utf-8")  # the reader before 2026-12-05
    return pd.DataFrame([json.loads(line) for line in text.splitlines() if line.strip()])


def child(reader: str, path: Path) -> None:
    """Run in a process of its own: read, then print seconds and peak memory (MB) as JSON."""
    start = time.perf_counter()
    frame = read(reader, path)
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "peak_mb": peak_memory_mb(), "rows": len(frame)}))


def write_lake_parts(folder: Path, n: int, seed: int = 0) -> None:
    """n events as a delivery stream writes them: gzipped JSON-lines files of EVENTS_PER_PART events,
    in hourly folders (`dt=2026-09-01+00d/hour=00/`), the time in unix ms."""
    rng = np.random.default_rng(seed)
    start = 1_788_220_800_000  # 2026-09-01, in unix ms
    times = np.sort(start + rng.integers(0, 90 * 86_400_000, n))
    customers, skus = rng.integers(0, max(n // 20, 1), n), rng.zipf(1.3, n) % 50_000
    for first in range(0, n, EVENTS_PER_PART):
        hour = int(times[first] // 3_600_000 - start // 3_600_000)
        part = folder / f"dt=2026-09-01+{hour // 24:02d}d" / f"hour={hour % 24:02d}" / f"events-{first:09d}.json.gz"
        part.parent.mkdir(parents=True, exist_ok=True)
        with gzip.open(part, "wt", compresslevel=1) as f:
            for i in range(first, min(first + EVENTS_PER_PART, n)):
                f.write(json.dumps({"customer_id": int(customers[i]), "event_time": int(times[i]),
                                    "event": "view", "sku": f"SKU-{skus[i]:06d}",
                                    "product_name": f"Product {skus[i]} – size M"}) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", choices=sorted(READERS), default="amazon")
    ap.add_argument("--rows", type=int, help="reviews (amazon) or ratings (movielens); default: "
                    + ", ".join(f"{k} {v:,}" for k, v in DEFAULT_ROWS.items()))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--child", nargs=2, metavar=("READER", "PATH"), help=argparse.SUPPRESS)
    ns = ap.parse_args()
    if ns.child:
        return child(ns.child[0], Path(ns.child[1]))
    rows, names = ns.rows or DEFAULT_ROWS[ns.source], READERS[ns.source]
    scratch = Path(tempfile.mkdtemp(prefix="bench-readers-"))
    try:
        if ns.source == "amazon":
            path = scratch / "Video_Games_5.json.gz"
            write_reviews(path, rows)
            with gzip.open(path, "rb") as f:  # in chunks: the runs fork from this process
                size = sum(len(chunk) for chunk in iter(lambda: f.read(1 << 24), b""))
            what = f"{rows:,} synthetic Amazon 2018 review lines, {size / 1e6:,.0f} MB of JSON, gzipped."
        elif ns.source == "movielens":
            path = scratch
            write_movielens(path, rows)
            size = (path / "ratings.csv").stat().st_size
            what = (f"{rows:,} synthetic ML-25M-shaped ratings, ratings.csv {size / 1e6:,.0f} MB, "
                    "movies.csv 60,000 titles.")
        elif ns.source == "lake-parts":
            path = scratch / "events"
            write_lake_parts(path, rows)
            files = list(path.rglob("*.json.gz"))
            size = sum(f.stat().st_size for f in files)
            what = (f"{rows:,} synthetic events, {EVENTS_PER_PART} a part: {len(files):,} gzipped JSON-lines parts in "
                    f"hourly folders, {size / 1e6:,.1f} MB.")
        else:
            path = scratch / "events"
            write_lake(path, rows)
            if ns.source == "lake-json-file":
                lake_as_one_json_file(path)
            elif ns.source.startswith("lake-json"):
                lake_as_json(path, mixed=ns.source == "lake-json-mixed")
            files = [f for f in path.rglob("*") if f.is_file()]
            size = sum(f.stat().st_size for f in files)
            kind = {"lake": "Parquet partitioned by day", "lake-json": "gzipped JSON lines partitioned by day",
                    "lake-json-file": "one gzipped JSON-lines file",
                    "lake-json-mixed": "gzipped JSON lines partitioned by day, the customer id a number or text "
                                       "(read line by line)"}[ns.source]
            what = (f"{rows:,} synthetic events, 30 columns (4 mapped), {kind}: {len(files)} part(s), "
                    f"{size / 1e6:,.0f} MB.")
        rounds = []
        for r in range(ns.rounds):
            rounds.append({reader: run_child("benchmarks.readers", reader, str(path)) for reader in round_order(names, r)})
            assert len({v["rows"] for v in rounds[-1].values()}) == 1  # every reader read every row
            print(f"round {r + 1}: {rounds[-1]}", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    def median(reader: str, part: str) -> float:
        return median_over_rounds(rounds, reader, part)

    result = {"source": ns.source, "rows": rows, "bytes": size, "rounds": rounds,
              "ratios": {reader: ratios_over_rounds(rounds, reader, names[0], ("seconds", "peak_mb"))
                         for reader in names[1:]},
              **machine()}
    stem = "readers" if ns.source == "amazon" else f"readers-{ns.source}"
    first = names[0]
    lines = [rounds_heading(f"readers: {ns.source}", result), "", what, "",
             f"| reader | seconds | peak memory | time / {first} | memory / {first} |", "|---|---|---|---|---|"]
    for reader in names:
        row = f"| {LABELS[reader]} | {median(reader, 'seconds'):.2f} s | {median(reader, 'peak_mb'):,.0f} MB |"
        if reader == first:
            row += " 1 | 1 |"
        else:
            t, m = result["ratios"][reader]["seconds"], result["ratios"][reader]["peak_mb"]
            row += f" {ratio_text(t, 1)} | {ratio_text(m, 1)} |"
        lines.append(row)
    write_result(stem, result, lines, ns.out)


if __name__ == "__main__":
    main()
