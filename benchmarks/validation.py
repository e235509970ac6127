"""Great Expectations validation of a large catalogue's tables: the membership checks as a value
set of the catalogue's ids (the suites before 2026-12-03) against a derived column expected to be
null (now: `tasks.data.outside`), timed interleaved on the same tables.

    python -m benchmarks.validation                       # 2,000,000 interactions, 300,000 items, 3 rounds
    python -m benchmarks.validation --interactions 200000 --items 30000 --rounds 3

Tables: interactions over `--items` items (ids "i0", "i1", ...; uniform, so most items appear)
and the items table, validated with the interactions and items suites as `cft data prepare` does
(`tasks.data.validate_ingested`); and 1,000 built records of one split with the records suite
(`tasks.data.validate_records` for one split), against a catalogue of every item. Each round times
both variants, in alternating order; a ratio is value set / derived per round, reported as the
median with its range. Results: benchmarks/results/validation.json and .md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.provenance import machine, write_result
from benchmarks.rounds import (
    median_over_rounds,
    ratio_over_rounds,
    ratio_text,
    round_order,
    rounds_heading,
)
from tasks import validation
from tasks.data import outside

RESULTS = Path(__file__).parent / "results"
# The membership expectations as they were: the ids as a value set, a ${placeholder} filled per run.
VALUE_SET = {
    "interactions": {"type": "expect_column_values_to_be_in_set",
                     "kwargs": {"column": "item_id", "value_set": "${catalogue_item_ids}"}},
    "records": {"type": "expect_column_values_to_be_in_set",
                "kwargs": {"column": "target_item_id", "value_set": "${catalogue_ids}"}},
}
DERIVED = {"interactions": "item_id_not_in_items", "records": "target_item_id_not_in_catalogue"}


def tables(n: int, items: int, seed: int = 0) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    item_ids = pd.Series([f"i{i}" for i in range(items)])
    inter = pd.DataFrame({
        "user_id": pd.Series(rng.integers(0, max(1, n // 20), n)).map("u{}".format),
        "item_id": item_ids.iloc[rng.integers(0, items, n)].to_numpy(),
        "timestamp": rng.integers(1_500_000_000, 1_600_000_000, n),
        "rating": rng.integers(1, 6, n).astype(float),
    }).drop_duplicates(["user_id", "item_id", "timestamp"], ignore_index=True)
    titles = pd.DataFrame({"item_id": item_ids, "title": [f"Item number {i}" for i in range(items)]})
    histories = [rng.integers(0, items, 10).tolist() for _ in range(1000)]
    records = pd.DataFrame({
        "user_id": [f"u{i}" for i in range(1000)], "history_item_ids": histories,
        "history_titles": [[f"Item number {i}" for i in h] for h in histories],
        "target_item_id": rng.integers(0, items, 1000), "target_title": "Item", "timestamp": 1_600_000_000,
    })
    records["history_len"] = records["history_item_ids"].map(len)
    records["history_in_catalogue"] = True
    return {"interactions": inter, "items": titles, "records": records}


def value_set_suites(into: Path) -> Path:
    """A copy of schemas/suites/ whose membership checks are the value sets they were."""
    for name in ("interactions", "items", "records"):
        spec = json.loads((validation.SUITES_DIR / f"{name}.json").read_text())
        if name in VALUE_SET:
            spec["expectations"] = [VALUE_SET[name] if e["kwargs"].get("column") == DERIVED[name] else e
                                    for e in spec["expectations"]]
        (into / f"{name}.json").write_text(json.dumps(spec))
    return into


def validate(variant: str, data: dict[str, pd.DataFrame], suites: Path, scratch: Path) -> dict[str, float]:
    """Seconds to validate the ingested tables and the records, as the stage does for `variant`."""
    inter, items, records = data["interactions"], data["items"], data["records"]
    params = {"min_timestamp": 0, "max_timestamp": 2**40, "min_rating": 1.0, "max_rating": 5.0,
              "max_title_chars": 500, "placeholder_title": "^unknown$", "max_history": 10,
              "min_split_timestamp": -(2**62), "max_split_timestamp": 2**62}
    saved = validation.SUITES_DIR
    validation.SUITES_DIR = suites if variant == "value_set" else saved
    try:
        start = time.perf_counter()
        if variant == "value_set":
            params["catalogue_item_ids"] = sorted(items["item_id"].unique().tolist())
        else:
            inter = inter.assign(item_id_not_in_items=outside(inter["item_id"], items["item_id"]))
        validation.validate_tables({"interactions": ("interactions", inter), "items": ("items", items)},
                                   params, scratch / "ingested.json", what=f"{variant} ingested")
        ingested = time.perf_counter() - start

        start = time.perf_counter()
        ids = pd.Series(np.arange(len(items)))
        if variant == "value_set":
            params["catalogue_ids"] = ids.tolist()
        else:
            records = records.assign(target_item_id_not_in_catalogue=outside(records["target_item_id"], ids))
        validation.validate_tables({"test": ("records", records)}, params, scratch / "records.json",
                                   what=f"{variant} records")
        return {"ingested_s": ingested, "records_s": time.perf_counter() - start}
    finally:
        validation.SUITES_DIR = saved


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--interactions", type=int, default=2_000_000)
    ap.add_argument("--items", type=int, default=300_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ns = ap.parse_args()
    data = tables(ns.interactions, ns.items)
    scratch = Path(tempfile.mkdtemp(prefix="bench-validation-"))
    try:
        suites = value_set_suites(Path(tempfile.mkdtemp(dir=scratch)))
        validate("derived", data, suites, scratch)  # warm-up: GE's context, imports
        rounds = []
        for r in range(ns.rounds):
            rounds.append({variant: validate(variant, data, suites, scratch)
                           for variant in round_order(("value_set", "derived"), r)})
            print(f"round {r + 1}: {rounds[-1]}", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    def ratio(part: str) -> dict:
        return ratio_over_rounds(rounds, "value_set", "derived", part)

    def median(variant: str, part: str) -> float:
        return median_over_rounds(rounds, variant, part)

    result = {"interactions": len(data["interactions"]), "items": ns.items, "records": len(data["records"]),
              "rounds": rounds, "ratio_ingested": ratio("ingested_s"), "ratio_records": ratio("records_s"),
              **machine()}
    rows = []
    for part, label in (("ingested_s", f"ingested tables ({result['interactions']:,} interactions, {ns.items:,} items)"),
                        ("records_s", f"records ({result['records']:,}, catalogue of {ns.items:,})")):
        r = result["ratio_" + part.removesuffix("_s")]
        rows.append(f"| {label} | {median('value_set', part):.2f} s | {median('derived', part):.2f} s | "
                    f"{ratio_text(r, 1)} |")
    write_result("validation", result, [rounds_heading("validation", result), "",
                                        "| tables | value set | derived column | value set / derived |", "|---|---|---|---|",
                                        *rows], ns.out)


if __name__ == "__main__":
    main()
