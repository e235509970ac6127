"""benchmarks/readers.py replaces parts of `tasks.readers` to time the readers before: every
variant of every source must still run and read every row, or the ratios it writes compare
nothing (a variant's stand-in that no longer fits the code it replaces fails here, not on the
day someone measures)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from benchmarks import readers as bench

# Sources whose variants are, together, every variant (lake-json and lake-json-mixed time lake's two
# on other files): each source is a subprocess per variant, ~5 s of the suite.
SOURCES = ("amazon", "movielens", "lake", "lake-json-file", "lake-parts")


def test_the_sources_run_cover_every_variant():
    assert {v for s in SOURCES for v in bench.READERS[s]} == {v for vs in bench.READERS.values() for v in vs}


@pytest.mark.parametrize("source", SOURCES)
def test_every_variant_reads_every_row(tmp_path, source):
    rows = 400 if source == "lake-parts" else 3000
    run = subprocess.run([sys.executable, "-m", "benchmarks.readers", "--source", source, "--rows", str(rows),
                          "--rounds", "1", "--out", str(tmp_path)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    stem = "readers" if source == "amazon" else f"readers-{source}"
    result = json.loads((tmp_path / f"{stem}.json").read_text())
    (round_,) = result["rounds"]
    assert set(round_) == set(bench.READERS[source])
    counts = {reader: run["rows"] for reader, run in round_.items()}
    assert len(set(counts.values())) == 1 and next(iter(counts.values())) > 0, counts
    assert set(result["ratios"]) == set(bench.READERS[source][1:])
