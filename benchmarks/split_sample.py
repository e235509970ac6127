"""A seeded sample of a large split as the evaluation reads it (`tasks.training.read_records`, its
`eval.max_samples` or the gate's cap): a batch of records at a time, keeping the sampled ones
(now), or the whole split as one table, then the sampled rows (before 2026-12-05). Each variant in
a process of its own, interleaved, so that its peak memory (VmHWM, Linux) is its own.

The split is shaped like an uncapped ML-25M test split (2,483,332 records, 60,000 titles,
histories of up to 10 titles; `benchmarks.training_records.write_split`), seeded:

    python -m benchmarks.split_sample                          # 2,500,000 records, 2,000 kept, 3 rounds
    python -m benchmarks.split_sample --records 500000 --sample 200 --rounds 5

Per variant and round: seconds to read the sample (with each row's `occurrence`, which counts
over the whole split) and peak memory. A ratio is `whole`'s over `batches`' in the same round, the
median with its range. Both variants must return the same records. Results:
benchmarks/results/split_sample.json and .md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import tempfile
import time
from pathlib import Path

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
VARIANTS = ("batches", "whole")
LABELS = {"batches": "a batch at a time (now)", "whole": "the whole split, then the sample (before)"}
PARTS = ("read_s", "peak_mb")


def read_whole(path: Path, limit: int, seed: int) -> list[dict]:
    """`read_records` before 2026-12-05: the split as one table, its user ids as Python strings."""
    import pyarrow.parquet as pq

    from tasks.training import sampled_rows

    table = pq.read_table(path)
    keys = table.select(["user_id", "target_item_id"]).to_pandas()
    occurrence = keys.groupby(["user_id", "target_item_id"], sort=False, dropna=False).cumcount().to_numpy()
    keep = sampled_rows(table.num_rows, limit, seed)
    rows = table.take(keep).to_pylist()
    return [{**r, "split_row": i, "occurrence": int(occurrence[i])} for r, i in zip(rows, keep, strict=True)]


def child(variant: str, path: Path, sample: int) -> None:
    """Run in a process of its own: read the sample, print the measures as JSON."""
    from tasks.training import read_records

    start = time.perf_counter()
    rows = read_records(path, sample, 0) if variant == "batches" else read_whole(path, sample, 0)
    read_s = time.perf_counter() - start
    digest = hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()
    print(json.dumps({"read_s": read_s, "peak_mb": peak_memory_mb(), "rows": len(rows), "digest": digest}))


def main() -> None:
    from benchmarks.training_records import write_split

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=2_500_000)
    ap.add_argument("--sample", type=int, default=2_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--child", nargs=3, metavar=("VARIANT", "PATH", "SAMPLE"), help=argparse.SUPPRESS)
    ns = ap.parse_args()
    if ns.child:
        return child(ns.child[0], Path(ns.child[1]), int(ns.child[2]))
    scratch = Path(tempfile.mkdtemp(prefix="bench-sample-"))
    try:
        path = scratch / "test.parquet"
        write_split(path, ns.records)
        size = path.stat().st_size
        rounds = []
        for r in range(ns.rounds):
            rounds.append({v: run_child("benchmarks.split_sample", v, str(path), str(ns.sample))
                           for v in round_order(VARIANTS, r)})
            if len({m["digest"] for m in rounds[-1].values()}) != 1:
                raise SystemExit(f"round {r + 1}: the variants read different records")
            print(f"round {r + 1}: {rounds[-1]}", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    result = {"records": ns.records, "sample": ns.sample, "bytes": size, "rounds": rounds,
              "ratios": {"whole": ratios_over_rounds(rounds, "whole", "batches", PARTS)},
              **machine()}
    lines = [rounds_heading("a sample of a split", result), "",
             f"{ns.sample:,} of {ns.records:,} synthetic ML-25M-shaped records (60,000 titles, histories of 1-10), "
             f"{size / 1e6:,.0f} MB.", "",
             "| read | seconds | peak memory |", "|---|---|---|"]
    for v in VARIANTS:
        lines.append(f"| {LABELS[v]} | {median_over_rounds(rounds, v, 'read_s'):.2f} s | "
                     f"{median_over_rounds(rounds, v, 'peak_mb'):,.0f} MB |")
    lines += ["", ratios_line("whole", "batches", result["ratios"]["whole"])]
    write_result("split_sample", result, lines, ns.out)


if __name__ == "__main__":
    main()
