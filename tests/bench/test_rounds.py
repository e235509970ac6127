"""The interleaving and the per-round ratios the benchmarks report, on hand-computed rounds."""

from benchmarks.rounds import (
    median_over_rounds,
    ratio_over_rounds,
    ratio_text,
    ratios_line,
    ratios_over_rounds,
    round_order,
    rounds_heading,
)


def test_rounds_alternate_their_order():
    assert [round_order(["a", "b", "c"], r) for r in range(3)] == [("a", "b", "c"), ("c", "b", "a"), ("a", "b", "c")]


def test_ratios_are_taken_within_each_round():
    # Round 2 ran on a machine twice as slow: each ratio is still 2, their median too.
    rounds = [{"new": {"s": 1.0}, "old": {"s": 2.0}}, {"new": {"s": 2.0}, "old": {"s": 4.0}},
              {"new": {"s": 1.0}, "old": {"s": 3.0}}]
    assert ratio_over_rounds(rounds, "old", "new", "s") == {"median": 2.0, "min": 2.0, "max": 3.0}
    assert median_over_rounds(rounds, "old", "s") == 3.0
    assert ratio_text(ratio_over_rounds(rounds, "old", "new", "s")) == "2.00x (2.00-3.00)"
    assert ratio_text({"median": 1.666, "min": 1.571, "max": 2.19}, 1) == "1.7x (1.6-2.2)"


def test_ratios_of_several_parts_and_their_line():
    rounds = [{"new": {"s": 1.0, "mb": 4.0}, "old": {"s": 2.0, "mb": 2.0}},
              {"new": {"s": 2.0, "mb": 4.0}, "old": {"s": 5.0, "mb": 1.0}}]
    ratios = ratios_over_rounds(rounds, "old", "new", ("s", "mb"))
    assert ratios == {"s": {"median": 2.25, "min": 2.0, "max": 2.5}, "mb": {"median": 0.375, "min": 0.25, "max": 0.5}}
    assert ratios_line("old", "new", ratios) == (
        "old / new, median (range) over rounds: s 2.25x (2.00-2.50), mb 0.38x (0.25-0.50)")


def test_the_heading_names_the_rounds_the_time_and_the_machine():
    result = {"rounds": [{}, {}, {}], "time": "2026-12-05 21:37", "cpu_count": 2, "commit": "db2196e"}
    assert rounds_heading("a sample of a split", result) == (
        "# a sample of a split (3 interleaved rounds, 2026-12-05 21:37, 2 CPUs, commit db2196e)")
    assert rounds_heading("x", {"rounds": [{}], "time": "t"}) == "# x (1 interleaved rounds, t, ? CPUs, commit ?)"


def test_peak_memory_grows_with_what_is_held():
    """In a process of its own (a test worker's peak is whatever its heaviest test held)."""
    import subprocess
    import sys

    script = ("from benchmarks.rounds import peak_memory_mb\n"
              "before = peak_memory_mb()\n"
              "held = bytearray(256 * 2**20)\n"
              "held[::4096] = b'x' * len(held[::4096])\n"  # touch every page
              "print(before, peak_memory_mb())")
    before, after = map(float, subprocess.run([sys.executable, "-c", script], check=True, capture_output=True,
                                              text=True).stdout.split())
    assert after >= before + 250
