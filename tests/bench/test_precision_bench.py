"""The precision benchmark's ratios: taken per round, by hand."""

from __future__ import annotations

from benchmarks.precision import ratio_rows


def test_bf16_over_fp32_is_taken_round_by_round():
    # Round 1 ran on a busy machine (both 3x slower): its ratio is round 0's. Round 2: bf16 as fast.
    times = {"prefill": {"fp32": [2.0, 6.0, 2.0], "bf16": [1.0, 3.0, 2.0]}}
    (row,) = ratio_rows(times)
    assert row["task"] == "prefill" and (row["fp32_median_s"], row["bf16_median_s"]) == (2.0, 2.0)
    # ratios 0.5, 0.5, 1.0; the ratio of the medians would say 1.0
    assert (row["bf16_over_fp32"], row["ratio_min"], row["ratio_max"]) == (0.5, 0.5, 1.0)
