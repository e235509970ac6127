"""The trainer's dataset (`tasks.training.SplitRecords`) on a large training split: its titles
read dictionary-encoded (now) or as plain strings (before 2026-12-05), each variant in its own
process, interleaved, so that its peak memory (VmHWM, Linux) is its own.

The split is shaped like the uncapped training split of ML-25M (19,866,650 records of 166,667
users, 60,000 titles, histories of up to 10 titles, a long tail of popular films), seeded:

    python -m benchmarks.training_records                       # 20,000,000 records, 3 rounds
    python -m benchmarks.training_records --records 2000000 --rounds 5

Per variant and round: seconds to load the split, peak memory, the table's bytes, microseconds per
record the data loader asks for (10,000 records in a seeded random order, as a shuffled epoch asks)
and seconds for the cutoff check's input (`newest_and_target_titles`). A ratio is a variant's over
`dictionary`'s in the same round, the median with its range. Results:
benchmarks/results/training_records.json and .md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.provenance import machine, write_result
from benchmarks.rounds import (
    median_over_rounds,
    peak_memory_mb,
    ratios_line,
    ratios_over_rounds,
    round_order,
    rounds_heading,
    run_child,
)

RESULTS = Path(__file__).parent / "results"
VARIANTS = ("dictionary", "plain")
LABELS = {"dictionary": "titles dictionary-encoded (now)", "plain": "titles as plain strings (before)"}
PARTS = ("load_s", "peak_mb", "table_mb", "record_us", "cutoff_input_s")


def write_split(path: Path, n: int, seed: int = 0, titles: int = 60_000) -> None:
    """A records file (`schemas.tables.RECORDS`) of `n` records, 1,000,000 per row group."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from schemas import tables

    rng = np.random.default_rng(seed)
    names = pa.array([f"Movie {i}, The ({1900 + i % 120})" if i % 7 == 0 else f"Movie {i} – Café ({1900 + i % 120})"
                      for i in range(titles)])
    with pq.ParquetWriter(path, tables.RECORDS) as writer:
        for start in range(0, n, 1_000_000):
            m = min(1_000_000, n - start)
            lengths = rng.integers(1, 11, m)
            offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
            history = (rng.zipf(1.3, int(offsets[-1])) % titles).astype(np.int64)
            target = (rng.zipf(1.3, m) % titles).astype(np.int64)
            writer.write_table(pa.table({
                "user_id": pa.array((np.arange(start, start + m) // 120).astype(str)),
                "history_item_ids": pa.ListArray.from_arrays(pa.array(offsets), pa.array(history)),
                "history_titles": pa.ListArray.from_arrays(pa.array(offsets), names.take(pa.array(history))),
                "target_item_id": pa.array(target),
                "target_title": names.take(pa.array(target)),
                "timestamp": pa.array(np.arange(start, start + m, dtype=np.int64)),
            }, schema=tables.RECORDS))


def child(variant: str, path: Path) -> None:
    """Run in a process of its own: load, read records, print the measures as JSON."""
    import pyarrow.parquet as pq

    from tasks import training

    if variant == "plain":  # the dataset before 2026-12-05: the same table, titles not encoded
        read_table = pq.read_table
        training.pq.read_table = lambda p, columns, read_dictionary: read_table(p, columns=columns)
    start = time.perf_counter()
    records = training.SplitRecords(path)
    load_s = time.perf_counter() - start
    order = np.random.default_rng(1).permutation(len(records))[:10_000]
    start = time.perf_counter()
    titles = sum(len(records[int(i)]["history_titles"]) for i in order)
    record_us = (time.perf_counter() - start) / len(order) * 1e6
    start = time.perf_counter()
    newest, targets = records.newest_and_target_titles()
    cutoff_input_s = time.perf_counter() - start
    print(json.dumps({"load_s": load_s, "peak_mb": peak_memory_mb(), "table_mb": records.table.nbytes / 1e6,
                      "record_us": record_us, "cutoff_input_s": cutoff_input_s, "records": len(records),
                      "titles_read": titles, "checked": len(newest) + len(targets)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=20_000_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--child", nargs=2, metavar=("VARIANT", "PATH"), help=argparse.SUPPRESS)
    ns = ap.parse_args()
    if ns.child:
        return child(ns.child[0], Path(ns.child[1]))
    scratch = Path(tempfile.mkdtemp(prefix="bench-records-"))
    try:
        path = scratch / "train.parquet"
        write_split(path, ns.records)
        size = path.stat().st_size
        rounds = []
        for r in range(ns.rounds):
            rounds.append({v: run_child("benchmarks.training_records", v, str(path)) for v in round_order(VARIANTS, r)})
            # Both read the same records, and the same titles of the same sample.
            assert len({(m["records"], m["titles_read"], m["checked"]) for m in rounds[-1].values()}) == 1
            print(f"round {r + 1}: {rounds[-1]}", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    def median(variant: str, part: str) -> float:
        return median_over_rounds(rounds, variant, part)

    result = {"records": ns.records, "bytes": size, "rounds": rounds,
              "ratios": {"plain": ratios_over_rounds(rounds, "plain", "dictionary", PARTS)},
              **machine()}
    lines = [rounds_heading("training records", result), "",
             f"{ns.records:,} synthetic ML-25M-shaped training records (60,000 titles, histories of 1-10), "
             f"train.parquet {size / 1e6:,.0f} MB.", "",
             "| dataset | load | peak memory | table | per record | cutoff check input |", "|---|---|---|---|---|---|"]
    for v in VARIANTS:
        lines.append(f"| {LABELS[v]} | {median(v, 'load_s'):.1f} s | {median(v, 'peak_mb'):,.0f} MB | "
                     f"{median(v, 'table_mb'):,.0f} MB | {median(v, 'record_us'):.1f} us | {median(v, 'cutoff_input_s'):.2f} s |")
    lines += ["", ratios_line("plain", "dictionary", result["ratios"]["plain"])]
    write_result("training_records", result, lines, ns.out)


if __name__ == "__main__":
    main()
