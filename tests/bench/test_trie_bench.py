"""benchmarks/trie.py: the build it kept as "before" makes the tree the array build makes."""

from __future__ import annotations

import torch

from benchmarks.trie import VOCAB, DictTitleTrie, catalogue
from cft_core.constrained import TitleTrie


def test_the_dict_build_makes_the_same_tree():
    """Both builds on the benchmark's own catalogue (with repeated brands, so shared prefixes): the
    same node count, and every edge the same as a (prefix, token) pair, each side's ids renamed to
    their prefixes; the same end for each title."""
    seqs = catalogue(600)
    now, before = TitleTrie(seqs, VOCAB), DictTitleTrie(seqs, VOCAB)
    assert now.num_nodes == before.num_nodes

    def named(trie) -> tuple[set, list]:
        parent, token = [int(p) for p in trie.parent], [int(t) for t in trie.token]
        names = [()] * trie.num_nodes
        for node in range(1, trie.num_nodes):  # (ids in order: every child comes after its parent in both builds)
            names[node] = (*names[parent[node]], token[node])
        edges = {(names[int(k) // VOCAB], int(k) % VOCAB) for k in trie.edge_keys}
        children = {names[int(c)] for c in trie.edge_child}
        assert len(children) == trie.num_nodes - 1 and torch.all(trie.edge_keys[1:] > trie.edge_keys[:-1])
        return edges, [names[int(e)] for e in trie.end_of]

    assert named(now) == named(before)
