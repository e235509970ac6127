"""Building the catalogue's title tree (`cft_core.constrained.TitleTrie`), which constrained
decoding needs in every evaluation and in every served model once it is loaded: the array build
(now) against the build with a Python dict per node (before 2026-12-06, kept below as
`DictTitleTrie`), each in a process of its own, interleaved.

The catalogue is synthetic and seeded, shaped like an Amazon category's responses in SmolLM2
tokens (vocab 49,152): a brand of 1-3 tokens shared by ~60 titles, then 15-35 Zipf-drawn word
tokens and EOS. At 300,000 titles (a large Amazon Reviews 2023 category after 5-core holds
100k-370k items) the tree has ~7.7M nodes.

    python -m benchmarks.trie                       # 300,000 titles, 3 rounds
    python -m benchmarks.trie --titles 100000 --rounds 5

Per variant: build seconds, the process's peak memory, and what the tree keeps once built (RSS
after the build and a collection, less RSS before it). Results: benchmarks/results/trie.json, .md.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.provenance import machine, write_result
from benchmarks.rounds import (
    median_over_rounds,
    peak_memory_mb,
    ratio_text,
    ratios_over_rounds,
    resident_memory_mb,
    round_order,
    rounds_heading,
    run_child,
)

RESULTS = Path(__file__).parent / "results"
VARIANTS = ("arrays", "dicts")
LABELS = {"arrays": "array build (now)", "dicts": "a dict per node (before)"}
VOCAB = 49_152


class DictTitleTrie:
    """The build before 2026-12-06: a dict of children per node, filled sequence by sequence, then
    flattened into the same tensors; `parent`, `token`, `ends_under` and `end_of` kept as lists."""

    def __init__(self, sequences, vocab_size):
        children: list[dict[int, int]] = [{}]
        self.parent, self.token, self.end_of = [-1], [-1], []
        for seq in sequences:
            node = 0
            for tok in seq:
                nxt = children[node].get(tok)
                if nxt is None:
                    nxt = len(children)
                    children[node][tok] = nxt
                    children.append({})
                    self.parent.append(node)
                    self.token.append(tok)
                node = nxt
            self.end_of.append(node)
        self.ends_under = [0] * len(children)
        for end in set(self.end_of):
            self.ends_under[end] = 1
        for node in range(len(children) - 1, 0, -1):
            self.ends_under[self.parent[node]] += self.ends_under[node]
        self.num_nodes = len(children)
        keys, child, offsets, allowed = [], [], [0], []
        for s, edges in enumerate(children):
            toks = sorted(edges)
            allowed += toks
            offsets.append(len(allowed))
            keys += [s * vocab_size + t for t in toks]
            child += [edges[t] for t in toks]
        order = sorted(range(len(keys)), key=keys.__getitem__)
        self.edge_keys = torch.tensor([keys[i] for i in order], dtype=torch.long)
        self.edge_child = torch.tensor([child[i] for i in order], dtype=torch.long)
        self.offsets = torch.tensor(offsets, dtype=torch.long)
        self.allowed = torch.tensor(allowed, dtype=torch.long)


def catalogue(titles: int, seed: int = 0) -> list[list[int]]:
    """Seeded token sequences shaped like an Amazon category's responses (module docstring)."""
    rng = np.random.default_rng(seed)
    brands = [rng.integers(100, VOCAB, rng.integers(1, 4)).tolist() for _ in range(max(1, titles // 60))]
    return [brands[rng.integers(len(brands))] + ((rng.zipf(1.2, rng.integers(15, 36)) % 49_000) + 100).tolist() + [2]
            for _ in range(titles)]


def child(variant: str, titles: int) -> None:
    """Run in a process of its own: build, then print seconds, memory (MB) and a digest as JSON."""
    from cft_core.constrained import TitleTrie

    seqs = catalogue(titles)
    gc.collect()
    before = resident_memory_mb()
    start = time.perf_counter()
    trie = (TitleTrie if variant == "arrays" else DictTitleTrie)(seqs, VOCAB)
    seconds = time.perf_counter() - start
    gc.collect()
    # The same tree both ways: its size, and the allowed tokens of the root (node 0 in both numberings).
    root = trie.allowed[trie.offsets[0]:trie.offsets[1]].tolist()
    print(json.dumps({"seconds": seconds, "peak_mb": peak_memory_mb(), "kept_mb": resident_memory_mb() - before,
                      "nodes": trie.num_nodes, "edges": int(trie.edge_keys.numel()), "root": hash(tuple(root))}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--titles", type=int, default=300_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--child", nargs=2, metavar=("VARIANT", "TITLES"), help=argparse.SUPPRESS)
    ns = ap.parse_args()
    if ns.child:
        return child(ns.child[0], int(ns.child[1]))
    rounds = []
    for r in range(ns.rounds):
        rounds.append({v: run_child("benchmarks.trie", v, str(ns.titles)) for v in round_order(VARIANTS, r)})
        assert len({(x["nodes"], x["edges"], x["root"]) for x in rounds[-1].values()}) == 1  # the same tree
        print(f"round {r + 1}: {rounds[-1]}", flush=True)
    result = {"titles": ns.titles, "nodes": rounds[0]["arrays"]["nodes"], "rounds": rounds,
              "ratios": ratios_over_rounds(rounds, "dicts", "arrays", ("seconds", "peak_mb", "kept_mb")), **machine()}
    lines = [rounds_heading("catalogue title tree", result), "",
             f"{ns.titles:,} synthetic Amazon-shaped titles in SmolLM2 tokens, {result['nodes']:,} nodes.", "",
             "| build | seconds | peak memory | kept once built |", "|---|---|---|---|"]
    for v in VARIANTS:
        lines.append(f"| {LABELS[v]} | {median_over_rounds(rounds, v, 'seconds'):.1f} s | "
                     f"{median_over_rounds(rounds, v, 'peak_mb'):,.0f} MB | {median_over_rounds(rounds, v, 'kept_mb'):,.0f} MB |")
    ratios = result["ratios"]
    lines += ["", f"before / now, median (range) over rounds: time {ratio_text(ratios['seconds'])}, "
              f"peak memory {ratio_text(ratios['peak_mb'])}, kept {ratio_text(ratios['kept_mb'])}"]
    write_result("trie", result, lines, ns.out)


if __name__ == "__main__":
    main()
