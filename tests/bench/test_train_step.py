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
                                 "batch_size": 2, "iters": 3, "warmup": 1, "threads": 1, "peak_tflops": 0.5})
    assert set(result["variants"]) == set(train_step.VARIANTS)
    # FLOPs counted per step: the naive step builds full [B, T, V] logits, the CFT step label rows
    # only; the SFT step runs no counterfactual half. MFU: the counted rate over the given peak.
    rows = result["variants"]
    assert rows["sft"]["step_flops"] < rows["cft"]["step_flops"] < rows["naive"]["step_flops"]
    for row in rows.values():
        assert row["flops_error"] is None and row["attention"] == "eager" and row["attention_kernels"] == []
        assert row["achieved_tflops_per_s"] == pytest.approx(row["step_flops"] / row["median_step_s"] / 1e12)
        assert row["mfu"] == pytest.approx(row["achieved_tflops_per_s"] / 0.5)
    assert "| MFU |" in train_step.markdown([result])
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


def test_a_pass_of_some_variants_gives_only_their_ratios():
    # sft and cft only: cft/sft per round 1.5, 2.0, 1.0 -> median 1.5; no memory ratios (no naive).
    rows = {"sft": {"step_s": [2.0, 1.0, 4.0]}, "cft": {"step_s": [3.0, 2.0, 4.0]}}
    got = train_step.compare(rows)
    assert got["ratios"] == {"cft_over_sft_time": 1.5}
    assert set(got["ratio_spread"]) == {"cft_over_sft_time"}
    assert (got["ratio_spread"]["cft_over_sft_time"]["min"], got["ratio_spread"]["cft_over_sft_time"]["max"]) == (1.0, 2.0)
    # naive and cft: naive/cft per round 4, 2 -> median 3; the memory ratios come with them.
    rows = {"cft": {"step_s": [1.0, 2.0], "logits_MB": 2.0, "peak_mem_MB": 100.0},
            "naive": {"step_s": [4.0, 4.0], "logits_MB": 30.0, "peak_mem_MB": 250.0}}
    assert train_step.compare(rows)["ratios"] == {"naive_over_cft_time": 3.0, "naive_over_cft_logits_memory": 15.0,
                                                  "naive_over_cft_peak_memory": 2.5}


def test_passes_are_kept_per_data_shape_and_variants_and_tabled_with_gaps():
    def entry(data, variants, ratios, spread=True):
        rows = {v: {"shape_factual": [8, 10], "shape_counterfactual": [8, 4], "median_step_s": 1.0,
                    "tokens_per_s": 10.0, "peak_mem_MB": 100.0, "logits_MB": 1.0} for v in variants}
        r = {"config": {"model": "smollm2", "data": data, "device": "cpu", "dtype": "fp32", "variants": variants},
             "variants": rows, "ratios": ratios}
        if spread:
            r["ratio_spread"] = {k: {"median": v, "min": v - 0.1, "max": v + 0.1} for k, v in ratios.items()}
        return r

    old = entry("amazon", list(train_step.LEGACY_VARIANTS), {"cft_over_sft_time": 1.14, "cft_padded_over_sft_time": 1.1,
                                                      "naive_over_cft_time": 2.17, "naive_over_cft_logits_memory": 17.1,
                                                      "naive_over_cft_peak_memory": 2.1}, spread=False)
    del old["config"]["variants"]  # written before passes had variants: it ran them all
    part = entry("amazon", ["sft", "cft", "cft_padded"], {"cft_over_sft_time": 1.05, "cft_padded_over_sft_time": 1.02})
    assert train_step.pass_key(old) == ("amazon", train_step.LEGACY_VARIANTS)
    assert train_step.pass_key(part) == ("amazon", ("sft", "cft", "cft_padded"))
    table = train_step.markdown([old, part])
    assert "| smollm2 | amazon | sft, cft, cft_padded, naive | 1.14x (sequential run) | 1.10x (sequential run) | - | " \
           "2.17x (sequential run) | 17.1x | 2.10x |" in table
    assert "| smollm2 | amazon | sft, cft, cft_padded | 1.05x (0.95-1.15) | 1.02x (0.92-1.12) | - | - | - | - |" in table
    # Each step row says which pass it comes from.
    assert "| smollm2 | amazon | cpu/fp32 | [8, 10] / [8, 4] | sequential | naive | 1.0000 |" in table
    assert "| smollm2 | amazon | cpu/fp32 | [8, 10] / [8, 4] | interleaved with sft, cft, cft_padded | cft | 1.0000 |" in table
