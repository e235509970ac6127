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

from collections.abc import Iterable, Sequence

import torch
from transformers import LogitsProcessor

DEAD = -1  # node of a prefix that left the tree (cannot happen under the mask; kept safe)


class TitleTrie:
    """Prefix tree of token sequences, as flat tensors."""

    def __init__(self, sequences: Sequence[Sequence[int]], vocab_size: int):
        children: list[dict[int, int]] = [{}]
        self.parent, self.token = [DEAD], [DEAD]  # per node: the node above it, the token between
        self.end_of: list[int] = []  # per sequence: the node it ends at (equal sequences share one)
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
        # Distinct sequence ends under each node (itself included); the nodes were numbered in
        # creation order, so every child comes after its parent and one backward pass sums them.
        self.ends_under = [0] * len(children)
        for end in set(self.end_of):
            self.ends_under[end] = 1
        for node in range(len(children) - 1, 0, -1):
            self.ends_under[self.parent[node]] += self.ends_under[node]
        self.vocab_size = vocab_size
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

    def banned_edges(self, ends: Iterable[int]) -> list[tuple[int, int]]:
        """(node, token) edges that lead only to the sequence ends `ends` (node ids from `end_of`):
        the topmost edge into every subtree whose every sequence is in `ends`. Masking them leaves
        exactly the other sequences reachable (a prefix of a kept sequence is never cut)."""
        left: dict[int, int] = {}  # node -> sequences under it that are not excluded
        for end in set(ends):
            node = end
            while node != 0:  # every node on the way up loses this one sequence
                left[node] = left.get(node, self.ends_under[node]) - 1
                node = self.parent[node]
        return sorted((self.parent[n], self.token[n]) for n, count in left.items()
                      if count == 0 and (self.parent[n] == 0 or left[self.parent[n]] > 0))

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
