"""Interleaved rounds, the one way the benchmarks compare variants: each round runs every variant,
in an order that alternates between rounds (A B, B A, ...), so that a machine growing slower or
faster over a run weighs on each alike; a ratio is taken within a round and reported as the median
over rounds with its range."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def round_order(names: Sequence[str], r: int) -> tuple[str, ...]:
    """The variants in the order round `r` (0-based) runs them: as given, then reversed."""
    return tuple(names) if r % 2 == 0 else tuple(names)[::-1]


def ratio_over_rounds(rounds: list[dict], variant: str, base: str, part: str) -> dict:
    """{"median", "min", "max"} of `variant`'s `part` over `base`'s, round by round (`rounds`:
    one {variant: {part: value}} per round)."""
    values = [r[variant][part] / r[base][part] for r in rounds]
    return {"median": float(np.median(values)), "min": min(values), "max": max(values)}


def ratios_over_rounds(rounds: list[dict], variant: str, base: str, parts: Sequence[str]) -> dict[str, dict]:
    """`ratio_over_rounds` of each of `parts`, by part (in the order given)."""
    return {part: ratio_over_rounds(rounds, variant, base, part) for part in parts}


def ratio_text(ratio: dict, digits: int = 2) -> str:
    """A `ratio_over_rounds` as the result tables print it: "1.67x (1.57-2.19)"."""
    return f"{ratio['median']:.{digits}f}x ({ratio['min']:.{digits}f}-{ratio['max']:.{digits}f})"


def ratios_line(variant: str, base: str, ratios: dict[str, dict]) -> str:
    """A `ratios_over_rounds` as one line under a result table: "whole / batches, median (range)
    over rounds: read_s 1.67x (1.57-2.19), peak_mb 2.97x (2.88-2.99)"."""
    return f"{variant} / {base}, median (range) over rounds: " + ", ".join(
        f"{part} {ratio_text(ratio)}" for part, ratio in ratios.items())


def rounds_heading(what: str, result: dict) -> str:
    """The first line of an interleaved benchmark's table: what it measured, its rounds, when, and
    the machine's CPUs and commit (`provenance.machine`, in `result`)."""
    return (f"# {what} ({len(result['rounds'])} interleaved rounds, {result['time']}, "
            f"{result.get('cpu_count', '?')} CPUs, commit {result.get('commit', '?')})")


def median_over_rounds(rounds: list[dict], variant: str, part: str) -> float:
    return float(np.median([r[variant][part] for r in rounds]))


def _status_mb(field: str) -> float:
    status = Path("/proc/self/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith(f"{field}:")).split()[1]) / 1024


def peak_memory_mb() -> float:
    """This process's peak resident memory (VmHWM, Linux), MB: run a variant in a process of its
    own for it to be its own (ru_maxrss would keep a forking parent's)."""
    return _status_mb("VmHWM")


def resident_memory_mb() -> float:
    """This process's resident memory now (VmRSS, Linux), MB: what a structure keeps is the
    difference across building it (after a `gc.collect()`)."""
    return _status_mb("VmRSS")


def run_child(module: str, *args: str) -> dict:
    """Run `python -m <module> --child <args>` (a variant in a process of its own, for its own peak
    memory) and return the JSON object its last line of output prints."""
    out = subprocess.run([sys.executable, "-m", module, "--child", *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])
