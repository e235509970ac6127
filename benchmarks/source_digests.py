"""The ingest key of an unchanged source: every file read and hashed (as before 2026-12-06) against
the digests cached by size, mtime, ctime and inode (`tasks.storage.source_digests`), timed
interleaved on the same files. A scheduled retrain computes this key at every run, and an
unchanged lake is the common case between its parts' arrivals.

    python -m benchmarks.source_digests                 # 2 GB in 200 parts, 5 rounds
    python -m benchmarks.source_digests --gb 0.5 --parts 50 --rounds 3

The files are random bytes (hashing does not care what they hold) and sit in the page cache
after the first round, so the "read" times are a floor: a lake on a disk or a network share
that does not fit in memory reads slower. Results: benchmarks/results/source-digests.json, .md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from benchmarks.provenance import machine, write_result
from benchmarks.rounds import (
    median_over_rounds,
    ratio_text,
    ratios_over_rounds,
    round_order,
    rounds_heading,
)

RESULTS = Path(__file__).parent / "results"
VARIANTS = ("cached", "read")
LABELS = {"cached": "digests cached by size, mtime, ctime, inode (now)", "read": "every file read and hashed (before)"}


def main() -> None:
    from tasks.storage import file_digest, source_digests

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gb", type=float, default=2.0)
    ap.add_argument("--parts", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ns = ap.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="bench-digests-"))
    try:
        size = int(ns.gb * 1e9) // ns.parts
        files = []
        for i in range(ns.parts):
            files.append(scratch / "lake" / f"dt={i:04d}" / "part-00000.parquet")
            files[-1].parent.mkdir(parents=True)
            files[-1].write_bytes(os.urandom(size))
        cache = scratch / "cache" / "source-digests.json"
        expected = source_digests(files, cache)  # (fills the cache, as the run before would have)
        run = {"cached": lambda: source_digests(files, cache), "read": lambda: [file_digest(f) for f in files]}
        rounds = []
        for r in range(ns.rounds):
            timings = {}
            for variant in round_order(VARIANTS, r):
                start = time.perf_counter()
                assert run[variant]() == expected
                timings[variant] = {"seconds": time.perf_counter() - start}
            rounds.append(timings)
            print(f"round {r + 1}: {timings}", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    result = {"bytes": size * ns.parts, "parts": ns.parts, "rounds": rounds,
              "ratios": {"read": ratios_over_rounds(rounds, "read", "cached", ("seconds",))}, **machine()}
    lines = [rounds_heading("source digests of an unchanged source", result), "",
             f"{ns.parts} files, {size * ns.parts / 1e9:.1f} GB in all, in the page cache.", "",
             "| variant | seconds | time / cached |", "|---|---|---|"]
    for variant in VARIANTS:
        ratio = "1" if variant == "cached" else ratio_text(result["ratios"]["read"]["seconds"], 0)
        lines.append(f"| {LABELS[variant]} | {median_over_rounds(rounds, variant, 'seconds'):.3f} s | {ratio} |")
    write_result("source-digests", result, lines, ns.out)


if __name__ == "__main__":
    main()
