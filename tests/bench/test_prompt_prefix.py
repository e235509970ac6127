"""The prompt-prefix benchmark's speed-ups: taken per round, by hand."""

from __future__ import annotations

from benchmarks import prompt_prefix


def test_prompt_prefix_speedups_are_per_round():
    # Round 1 ran on a busy machine (everything 2x slower): its ratios are the same as round 0's.
    seconds = {(0, "per-row"): 10.0, (0, "per-batch"): 8.0, (0, "cached"): 5.0,
               (1, "per-row"): 20.0, (1, "per-batch"): 16.0, (1, "cached"): 10.0,
               (2, "per-row"): 12.0, (2, "per-batch"): 12.0, (2, "cached"): 8.0}
    runs = [{"round": r, "batch": 16, "variant": v, "seconds": s} for (r, v), s in seconds.items()]
    table = {row["variant"]: row for row in prompt_prefix.speedup_table(runs, rounds=3)}
    # per-batch: 1.25, 1.25, 1.0; cached: 2.0, 2.0, 1.5
    assert (table["per-batch"]["speedup_median"], table["per-batch"]["speedup_min"]) == (1.25, 1.0)
    assert (table["cached"]["speedup_median"], table["cached"]["speedup_min"], table["cached"]["speedup_max"]) == (2.0, 1.5, 2.0)
    assert table["per-row"]["speedup_median"] == 1.0 and table["cached"]["median_s"] == 8.0
