"""Trie-constrained beam search: every beam spells a catalogue title (cft-method.md, section 3).

The catalogue's responses (title + closing quote + EOS, tokenised exactly as in training) form a
prefix tree over token ids. The tree is stored as flat tensors, so one decoding step needs a
handful of batched tensor ops for all beams at once, not a Python walk per beam:

    edge_keys  [E]  node * V + token, sorted      edge_child [E]  child node of that edge
    offsets    [S+1], allowed [E]                 CSR: tokens allowed after node s are
                                                  allowed[offsets[s]:offsets[s+1]]

Each step re-derives every beam's node from its generated tokens (searchsorted per position),
which stays correct however beam search reorders its beams.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import LogitsProcessor

DEAD = -1  # node of a prefix that left the tree (cannot happen under the mask; kept safe)


class TitleTrie:
    """Prefix tree of token sequences, as flat tensors."""

    def __init__(self, sequences: Sequence[Sequence[int]], vocab_size: int):
        children: list[dict[int, int]] = [{}]
        for seq in sequences:
            node = 0
            for tok in seq:
                nxt = children[node].get(tok)
                if nxt is None:
                    nxt = len(children)
                    children[node][tok] = nxt
                    children.append({})
                node = nxt
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
    """Masks every token that would leave the catalogue trie. One instance per `generate` call."""

    def __init__(self, trie: TitleTrie, prompt_length: int, eos_token_id: int):
        self.trie = trie
        self.prompt_length = prompt_length  # prompts are left-padded to this common length
        self.eos_token_id = eos_token_id

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        nodes = self.trie.walk(input_ids[:, self.prompt_length :])
        mask = self.trie.allowed_mask(nodes, extra_ok=self.eos_token_id)
        return scores.masked_fill(~mask[:, : scores.shape[1]], float("-inf"))
