"""The train-step benchmark's interleaved timing: per-round ratios by hand, and a tiny run."""

from __future__ import annotations

import pytest

from benchmarks import train_step


def test_ratios_are_taken_per_round_then_summarised():
    # Round 2 ran while the machine was busy (both variants 10x slower): its ratio is still 2.
    steps = {"cft": [2.0, 20.0, 3.0, 2.2], "sft": [1.0, 10.0, 1.0, 1.0]}
    s = train_step.pair_ratios(steps, "cft", "sft")
    # per-round ratios 2.0, 2.0, 3.0, 2.2 -> sorted 2.0, 2.0, 2.2, 3.0
    assert s["median"] == pytest.approx(2.1)
    assert (s["min"], s["max"], s["rounds"]) == (2.0, 3.0, 4)
    assert s["q1"] <= s["median"] <= s["q3"]


@pytest.mark.timeout(600)
def test_every_variant_is_timed_in_every_round():
    result = train_step.measure({"model": "tiny", "data": "ml100k", "device": "cpu", "dtype": "fp32",
                                 "batch_size": 2, "iters": 3, "warmup": 1, "threads": 1})
    assert set(result["variants"]) == set(train_step.VARIANTS)
    assert all(len(v["step_s"]) == 3 for v in result["variants"].values())
    spread = result["ratio_spread"]["cft_over_sft_time"]
    assert spread["rounds"] == 3 and spread["min"] <= result["ratios"]["cft_over_sft_time"] <= spread["max"]


def test_train_loop_ratio_is_per_example_and_per_round():
    from benchmarks import train_loop

    # loop: 8 examples per step; kernel: 8 too. Round ratios 12/10 = 1.2, 26/20 = 1.3 (a busy round), 11/10 = 1.1.
    rows = {"loop": {"step_s": [12.0, 26.0, 11.0], "tokens": [900, 900, 900], "examples_per_step": 8},
            "kernel": {"step_s": [10.0, 20.0, 10.0], "tokens": [1000, 1000, 1000], "examples_per_step": 8}}
    s = train_loop.summary(rows)
    assert s["loop_over_kernel_per_example"] == {"median": pytest.approx(1.2), "min": pytest.approx(1.1),
                                                  "max": pytest.approx(1.3), "rounds": 3}
    assert s["loop_tokens_per_s"] == pytest.approx(2700 / 49.0)
    assert s["kernel_median_step_s"] == 10.0
