"""Trie-constrained beam search: every beam spells a catalogue title (cft-method.md, section 3).

The catalogue's responses (title + closing quote + EOS, tokenised exactly as in training) form a
prefix tree over token ids. The tree is stored as flat tensors, so one decoding step needs a
handful of batched tensor ops for all beams at once, not a Python walk per beam:

    edge_keys  [E]  node * V + token, sorted      edge_child [E]  child node of that edge
    offsets    [S+1], allowed [E]                 CSR: tokens allowed after node s are
                                                  allowed[offsets[s]:offsets[s+1]]

Each step re-derives every beam's node from its generated tokens (searchsorted per position),
which stays correct however beam search reorders its beams.

Items a prompt must never yield (its user's history, an `exclude` list) are taken out of the tree
for that prompt's beams alone: `TitleTrie.banned_edges` names the edges into the subtrees whose
every title is excluded, and `TrieLogitsProcessor` masks them for that prompt's rows. A beam is
then never spent on an item the caller would drop (dropping excluded beams after the search left
fewer items, or none). A search may still end with fewer items than beams: inside the tree a beam
often has one allowed token, and as beams finish, beam search has no alternative left to replace
them (`EvalConfig.constrained_search_beams` searches more beams than it returns).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from transformers import LogitsProcessor

DEAD = -1  # node of a prefix that left the tree (cannot happen under the mask; kept safe)


class TitleTrie:
    """Prefix tree of token sequences, as flat tensors.

    Built with array operations, not a dict per node: the sequences are sorted, each one's
    common prefix with the one before it says which of its nodes are new, and nodes are numbered
    in that sorted order, depth first (so every child comes after its parent, and a node's
    children in token order). A 300,000-title catalogue (7.7M nodes) took 21 s and kept 2.3 GB
    with a dict per node, 3.9 s and 360 MB so (`benchmarks/trie.py`).

    Per node (numpy, int32): `parent` (the root's is DEAD), `token` (the token from its parent),
    `ends_under` (distinct sequence ends in its subtree, itself included); per sequence: `end_of`
    (the node it ends at; equal sequences share one, an empty one ends at the root, node 0).
    """

    def __init__(self, sequences: Sequence[Sequence[int]], vocab_size: int):
        self.vocab_size = vocab_size
        n = len(sequences)
        lengths = np.fromiter((len(seq) for seq in sequences), dtype=np.int64, count=n)
        width = int(lengths.max()) if n else 0
        # One row per sequence, padded with -1: a sequence then sorts before every longer one it begins.
        padded = np.full((n, width), -1, dtype=np.int32)
        padded[np.arange(width) < lengths[:, None]] = np.fromiter(
            itertools.chain.from_iterable(sequences), dtype=np.int32, count=int(lengths.sum()))
        order = np.lexsort(padded.T[::-1]) if width else np.arange(n)
        rows, lens = padded[order], lengths[order]
        # Tokens each sorted row shares with the row before it; it adds the nodes below that depth.
        shared = np.zeros(n, dtype=np.int64)
        if n > 1:
            differs = rows[1:] != rows[:-1]
            shared[1:] = np.minimum(np.where(differs.any(axis=1), differs.argmax(axis=1), width), lens[1:])
        added = lens - shared  # row r adds the nodes of depths shared[r] .. lens[r] - 1 (depth d: after token d)
        first = 1 + np.cumsum(added) - added  # the id of the first node row r adds
        self.num_nodes = 1 + int(added.sum())
        node_row = np.repeat(np.arange(n), added)
        node_depth = np.arange(self.num_nodes - 1) - np.repeat(first - 1 - shared, added)

        def on_path(row: np.ndarray, depth: np.ndarray) -> np.ndarray:
            """The node at `depth` on the path of sorted row `row` (which reaches that depth): added
            by the last row up to it that shares no more than `depth` tokens with its own before."""
            out = np.empty(row.size, dtype=np.int64)
            for d in np.unique(depth):
                last = np.maximum.accumulate(np.where(shared <= d, np.arange(n), 0))
                at = depth == d
                adder = last[row[at]]
                out[at] = first[adder] + d - shared[adder]
            return out

        # A row's first new node hangs under the node the row before it reached at the depth above
        # (the root at depth 0); each further new node under the one before it.
        parent = np.arange(-1, self.num_nodes - 1, dtype=np.int64)
        opens = first[added > 0] - 1  # (ids - 1: node_row and node_depth start at node 1)
        branch = opens[shared[added > 0] > 0]
        parent[1 + opens] = 0
        parent[1 + branch] = on_path(node_row[branch] - 1, node_depth[branch] - 1)
        parent[0] = DEAD
        end_sorted = np.where(added > 0, first + added - 1, 0)
        again = (added == 0) & (lens > 0)  # equal to the row before: its end
        end_sorted[again] = on_path(np.flatnonzero(again) - 1, lens[again] - 1)
        end_of = np.empty(n, dtype=np.int64)
        end_of[order] = end_sorted

        token = np.full(self.num_nodes, DEAD, dtype=np.int64)
        token[1:] = rows[node_row, node_depth]
        ends_under = np.zeros(self.num_nodes, dtype=np.int64)
        ends_under[end_of] = 1
        by_depth = np.argsort(node_depth.astype(np.int16 if width < 2**15 else np.int64), kind="stable") + 1  # (radix)
        cuts = np.searchsorted(node_depth[by_depth - 1], np.arange(width + 1))
        for d in range(width - 1, -1, -1):  # deepest first: each level adds its counts to its parents
            level = by_depth[cuts[d]:cuts[d + 1]]  # (ids ascending, so their parents too: one run each)
            if level.size:
                runs = np.flatnonzero(np.diff(parent[level], prepend=-2))
                ends_under[parent[level[runs]]] += np.add.reduceat(ends_under[level], runs)
        self.parent, self.token = parent.astype(np.int32), token.astype(np.int32)
        self.ends_under, self.end_of = ends_under.astype(np.int32), end_of.astype(np.int32)

        # Edges sorted by (node, token): the searchsorted keys and the CSR of allowed tokens.
        keys = parent[1:] * vocab_size + token[1:]
        child = np.argsort(keys, kind="stable") + 1
        self.edge_keys = torch.from_numpy(keys[child - 1])
        self.edge_child = torch.from_numpy(child.astype(np.int64))
        self.offsets = torch.from_numpy(np.concatenate([[0], np.cumsum(np.bincount(parent[1:], minlength=self.num_nodes))]))
        self.allowed = torch.from_numpy(token[child])

    def banned_edges(self, ends: Iterable[int]) -> list[tuple[int, int]]:
        """(node, token) edges that lead only to the sequence ends `ends` (node ids from `end_of`):
        the topmost edge into every subtree whose every sequence is in `ends`. Masking them leaves
        exactly the other sequences reachable (a prefix of a kept sequence is never cut)."""
        left: dict[int, int] = {}  # node -> sequences under it that are not excluded
        for end in set(map(int, ends)):
            node = end
            while node != 0:  # every node on the way up loses this one sequence
                left[node] = left.get(node, int(self.ends_under[node])) - 1
                node = int(self.parent[node])
        return sorted((int(self.parent[n]), int(self.token[n])) for n, count in left.items()
                      if count == 0 and (self.parent[n] == 0 or left[int(self.parent[n])] > 0))

    def to(self, device) -> TitleTrie:
        for name in ("edge_keys", "edge_child", "offsets", "allowed"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def walk(self, tokens: torch.Tensor) -> torch.Tensor:
        """Node reached by each row of `tokens` [R, T] from the root: LongTensor[R] (DEAD if none)."""
        node = torch.zeros(tokens.shape[0], dtype=torch.long, device=tokens.device)
        for j in range(tokens.shape[1]):
            key = node * self.vocab_size + tokens[:, j]
            idx = torch.searchsorted(self.edge_keys, key).clamp(max=self.edge_keys.numel() - 1)
            found = (self.edge_keys[idx] == key) & (node != DEAD)
            node = torch.where(found, self.edge_child[idx], torch.full_like(node, DEAD))
        return node

    def allowed_mask(self, nodes: torch.Tensor, extra_ok: int | None = None) -> torch.Tensor:
        """BoolTensor[R, V]: tokens allowed after each node (`extra_ok` for DEAD/leaf rows)."""
        r = nodes.shape[0]
        mask = torch.zeros(r, self.vocab_size, dtype=torch.bool, device=nodes.device)
        live = nodes.clamp(min=0)
        start, end = self.offsets[live], self.offsets[live + 1]
        counts = torch.where(nodes == DEAD, torch.zeros_like(start), end - start)
        rows = torch.repeat_interleave(torch.arange(r, device=nodes.device), counts)
        first = torch.repeat_interleave(start, counts)
        within = torch.arange(rows.numel(), device=nodes.device) - torch.repeat_interleave(
            torch.cumsum(counts, 0) - counts, counts
        )
        mask[rows, self.allowed[first + within]] = True
        if extra_ok is not None:  # a row with nothing allowed may only end
            mask[counts == 0, extra_ok] = True
        return mask


class TrieLogitsProcessor(LogitsProcessor):
    """Masks every token that would leave the catalogue trie, and for each prompt the edges of
    `banned[b]` (`TitleTrie.banned_edges`: the items prompt b must not yield). One instance per
    `generate` call; rows are prompt-major, `num_beams` per prompt, as beam search lays them out."""

    def __init__(self, trie: TitleTrie, prompt_length: int, eos_token_id: int,
                 banned: Sequence[Sequence[tuple[int, int]]] | None = None, num_beams: int = 1):
        self.trie = trie
        self.prompt_length = prompt_length  # prompts are left-padded to this common length
        self.eos_token_id = eos_token_id
        self.num_beams = num_beams
        self.banned_node = self.banned_token = None  # [P, M] per prompt, padded with DEAD (matches no node)
        if banned is not None and any(banned):
            width = max(len(edges) for edges in banned)
            node = torch.full((len(banned), width), DEAD, dtype=torch.long)
            token = torch.zeros((len(banned), width), dtype=torch.long)
            for b, edges in enumerate(banned):
                if edges:
                    node[b, : len(edges)], token[b, : len(edges)] = torch.tensor(edges, dtype=torch.long).T
            device = trie.edge_keys.device
            self.banned_node, self.banned_token = node.to(device), token.to(device)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        nodes = self.trie.walk(input_ids[:, self.prompt_length :])
        mask = self.trie.allowed_mask(nodes, extra_ok=self.eos_token_id)
        if self.banned_node is not None:
            by_prompt = nodes.view(-1, self.num_beams, 1)  # [P, beams, 1]
            prompt, beam, edge = torch.nonzero(by_prompt == self.banned_node[:, None, :], as_tuple=True)
            mask[prompt * self.num_beams + beam, self.banned_token[prompt, edge]] = False
            mask[~mask.any(dim=1), self.eos_token_id] = True  # every item excluded: the beam ends, empty
        return scores.masked_fill(~mask[:, : scores.shape[1]], float("-inf"))
