"""The interleaving and the per-round ratios the benchmarks report, on hand-computed rounds."""

from benchmarks.rounds import median_over_rounds, peak_memory_mb, ratio_over_rounds, round_order


def test_rounds_alternate_their_order():
    assert [round_order(["a", "b", "c"], r) for r in range(3)] == [("a", "b", "c"), ("c", "b", "a"), ("a", "b", "c")]


def test_ratios_are_taken_within_each_round():
    # Round 2 ran on a machine twice as slow: each ratio is still 2, their median too.
    rounds = [{"new": {"s": 1.0}, "old": {"s": 2.0}}, {"new": {"s": 2.0}, "old": {"s": 4.0}},
              {"new": {"s": 1.0}, "old": {"s": 3.0}}]
    assert ratio_over_rounds(rounds, "old", "new", "s") == {"median": 2.0, "min": 2.0, "max": 3.0}
    assert median_over_rounds(rounds, "old", "s") == 3.0


def test_peak_memory_grows_with_what_is_held():
    before = peak_memory_mb()
    held = bytearray(64 * 2**20)
    held[:: 4096] = b"x" * len(held[:: 4096])  # touch every page
    assert peak_memory_mb() >= before + 60
