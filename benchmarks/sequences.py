"""Sequence-building throughput: D3-style records from N synthetic interactions.

    python -m benchmarks.sequences                 # 1,000,000 interactions (issue target: < 20 s on 2 cores)
    python -m benchmarks.sequences --n 200000

Synthetic logs: 20k users, 10k items with Zipf-like popularity, random times; the full build
(5-core, histories of 10, chronological 80/10/10 split) is timed, I/O excluded.
Results: benchmarks/results/sequences.json and .md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.provenance import machine
from cft_core.sequences import build_records
from schemas.config import DataConfig
from tasks.settings import sequence_settings

RESULTS = Path(__file__).parent / "results"


def synthetic(n: int, users: int = 20_000, items: int = 10_000, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    pop = 1.0 / np.arange(1, items + 1) ** 0.8
    inter = pd.DataFrame(
        {
            "user_id": pd.Series(rng.integers(0, users, n)).map("u{}".format),
            "item_id": pd.Series(rng.choice(items, n, p=pop / pop.sum())).map("i{}".format),
            "timestamp": rng.integers(1_500_000_000, 1_600_000_000, n),
        }
    ).drop_duplicates(["user_id", "item_id", "timestamp"])
    # as the ingested Parquet files read back: Arrow-backed strings
    inter = inter.astype({"user_id": pd.StringDtype("pyarrow"), "item_id": pd.StringDtype("pyarrow")})
    titles = pd.DataFrame({"item_id": [f"i{i}" for i in range(items)], "title": [f"Item number {i}" for i in range(items)]})
    return inter, titles


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=3)
    ns = ap.parse_args()
    inter, items = synthetic(ns.n)
    times, stats = [], None
    for _ in range(ns.repeats):
        t = time.perf_counter()
        _, _, stats = build_records(inter, items, sequence_settings(DataConfig()))
        times.append(time.perf_counter() - t)
    result = {
        "interactions_in": len(inter), "median_s": float(np.median(times)), "times_s": times, "stats": stats,
        **machine(),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "sequences.json").write_text(json.dumps(result, indent=1))
    md = (f"# sequences\n\n| interactions | samples | median build s | interactions/s |\n|---|---|---|---|\n"
          f"| {len(inter):,} | {sum(stats[f'samples_{k}'] for k in ('train', 'valid', 'test')):,} | "
          f"{result['median_s']:.2f} | {len(inter) / result['median_s']:,.0f} |\n")
    (RESULTS / "sequences.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
