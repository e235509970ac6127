"""Reading an Amazon Reviews 2018 file (`amazon_raw`): pyarrow's JSON reader (`tasks.readers.
_json_lines`, since 2026-12-05), the line-by-line fallback it uses for files it refuses
(`_json_lines_by_line`), and the reader before (the whole file decoded, `json.loads` per line,
a DataFrame of every field), timed interleaved on the same gzipped file, each run in its own
process so that its peak memory (VmHWM, Linux) is its own.

    python -m benchmarks.readers                   # 1,000,000 reviews (~660 MB of JSON), 3 rounds
    python -m benchmarks.readers --reviews 200000 --rounds 5

The file is synthetic, shaped like a 2018 review line (overall, verified, reviewTime, reviewerID,
asin, reviewerName, style, reviewText of 20..150 words, summary, unixReviewTime: ~660 bytes),
seeded. Each round runs the three readers, in an order that alternates between rounds; a ratio
is a reader's time (or peak memory) over the arrow reader's in the same round, reported as the
median with its range. Results: benchmarks/results/readers.json and .md.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.provenance import machine

RESULTS = Path(__file__).parent / "results"
FIELDS = {"reviewerID": "string", "asin": "string", "overall": "float64", "unixReviewTime": "int64"}
READERS = ("arrow", "by_line", "whole_text")
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


def read(reader: str, path: Path):
    """The reviews' four fields as a DataFrame, as `reader` reads them."""
    import pandas as pd

    from tasks import readers

    if reader == "arrow":
        return readers._json_lines(path, FIELDS)
    if reader == "by_line":
        return readers._json_lines_by_line(path, list(FIELDS))
    text = gzip.decompress(path.read_bytes()).decode("utf-8")  # the reader before 2026-12-05
    return pd.DataFrame([json.loads(line) for line in text.splitlines() if line.strip()])


def child(reader: str, path: Path) -> None:
    """Run in a process of its own: read, then print seconds and peak memory (MB) as JSON."""
    start = time.perf_counter()
    frame = read(reader, path)
    seconds = time.perf_counter() - start
    # VmHWM: this process image's peak resident memory (ru_maxrss would keep the forking parent's)
    status = Path("/proc/self/status").read_text()
    peak_mb = int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]) / 1024
    print(json.dumps({"seconds": seconds, "peak_mb": peak_mb, "rows": len(frame)}))


def run(reader: str, path: Path) -> dict:
    out = subprocess.run([sys.executable, "-m", "benchmarks.readers", "--child", reader, str(path)],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reviews", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--child", nargs=2, metavar=("READER", "PATH"), help=argparse.SUPPRESS)
    ns = ap.parse_args()
    if ns.child:
        return child(ns.child[0], Path(ns.child[1]))
    scratch = Path(tempfile.mkdtemp(prefix="bench-readers-"))
    try:
        path = scratch / "Video_Games_5.json.gz"
        write_reviews(path, ns.reviews)
        with gzip.open(path, "rb") as f:  # in chunks: the runs fork from this process
            size = sum(len(chunk) for chunk in iter(lambda: f.read(1 << 24), b""))
        rounds = []
        for r in range(ns.rounds):
            order = READERS if r % 2 == 0 else READERS[::-1]
            rounds.append({reader: run(reader, path) for reader in order})
            assert len({v["rows"] for v in rounds[-1].values()}) == 1  # every reader read every line
            print(f"round {r + 1}: {rounds[-1]}", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    def ratio(reader: str, part: str) -> dict:
        values = [r[reader][part] / r["arrow"][part] for r in rounds]
        return {"median": float(np.median(values)), "min": min(values), "max": max(values)}

    def median(reader: str, part: str) -> float:
        return float(np.median([r[reader][part] for r in rounds]))

    result = {"reviews": ns.reviews, "json_bytes": size, "rounds": rounds,
              "ratios": {reader: {part: ratio(reader, part) for part in ("seconds", "peak_mb")}
                         for reader in READERS[1:]},
              **machine(), "time": time.strftime("%Y-%m-%d %H:%M")}
    ns.out.mkdir(parents=True, exist_ok=True)
    (ns.out / "readers.json").write_text(json.dumps(result, indent=1))
    labels = {"arrow": "pyarrow JSON reader (now)", "by_line": "line by line (its fallback)",
              "whole_text": "whole text + json.loads (before)"}
    lines = [f"# readers ({ns.rounds} interleaved rounds, {result['time']}, {result.get('cpu_count', '?')} CPUs, "
             f"commit {result.get('commit', '?')})", "",
             f"{ns.reviews:,} synthetic Amazon 2018 review lines, {size / 1e6:,.0f} MB of JSON, gzipped.", "",
             "| reader | seconds | peak memory | time / arrow | memory / arrow |", "|---|---|---|---|---|"]
    for reader in READERS:
        row = f"| {labels[reader]} | {median(reader, 'seconds'):.2f} s | {median(reader, 'peak_mb'):,.0f} MB |"
        if reader == "arrow":
            row += " 1 | 1 |"
        else:
            t, m = result["ratios"][reader]["seconds"], result["ratios"][reader]["peak_mb"]
            row += (f" {t['median']:.1f}x ({t['min']:.1f}-{t['max']:.1f}) |"
                    f" {m['median']:.1f}x ({m['min']:.1f}-{m['max']:.1f}) |")
        lines.append(row)
    (ns.out / "readers.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
