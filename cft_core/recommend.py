"""Recommend catalogue items for a user's history: the serving path of a trained model.

The same steps as the evaluation's adjusted grounding (cft-method.md, section 3), for one or a
few histories at a time:

    history titles -> factual prompt -> beam search (B beams) -> embed each generated title
    -> L2-rank the catalogue per beam -> interleave the beams, drop repeats -> top K

Each item's score is minus its smallest L2 distance to any generated title (higher is closer);
the order is the interleaved one the evaluation measured, so the scores need not be sorted. Items already in the history are left out by default (a
recommender should not suggest what the user has just watched; the offline metrics keep them,
as the reference does).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from cft_core.generation import GenerationSettings, generate_titles
from cft_core.grounding import embed_texts, interleave_dedup
from cft_core.prompts import PromptBuilder


@dataclass(frozen=True)
class Recommendation:
    """Top-K items for one history, best first."""

    item_ids: list[int]
    titles: list[str]
    scores: list[float]


class Recommender:
    """A causal LM, its catalogue and the catalogue's title embeddings.

    item_ids: [I] catalogue ids; titles: [I]; item_embeddings: FloatTensor[I, D], computed by
    `embed_texts` with this very model (the evaluation caches them).
    """

    def __init__(self, model, tokenizer, item_ids: Sequence[int], titles: Sequence[str],
                 item_embeddings: torch.Tensor, prompts: PromptBuilder,
                 settings: GenerationSettings | None = None):
        if len(item_ids) != len(titles) or item_embeddings.shape[0] != len(titles):
            raise ValueError(f"catalogue mismatch: {len(item_ids)} ids, {len(titles)} titles, "
                             f"{item_embeddings.shape[0]} embeddings")
        self.model, self.tokenizer, self.prompts = model.eval(), tokenizer, prompts
        self.settings = settings or GenerationSettings(max_new_tokens=64)
        self.item_ids = np.asarray(item_ids, dtype=np.int64)
        self.titles = list(titles)
        self.item_embeddings = item_embeddings.float()
        self._sq_norms = (self.item_embeddings * self.item_embeddings).sum(dim=1)  # [I]
        self._row_of_id = {int(i): r for r, i in enumerate(self.item_ids)}
        self._row_of_title = {}
        for r, t in enumerate(self.titles):
            self._row_of_title.setdefault(t.strip().casefold(), r)

    def resolve(self, history: Sequence[str | int]) -> tuple[list[str], list[int]]:
        """History entries (item ids, as ints or digit strings, or titles) -> (titles, known rows).

        A title not in the catalogue is kept as text (the model reads titles, not ids); an id not
        in the catalogue is an error, since it has no title to show the model.
        """
        titles, rows = [], []
        for entry in history:
            key = str(entry).strip()
            if key.lstrip("-").isdigit() and int(key) in self._row_of_id:
                row = self._row_of_id[int(key)]
            elif key.casefold() in self._row_of_title:
                row = self._row_of_title[key.casefold()]
            elif isinstance(entry, int) or key.isdigit():
                raise KeyError(f"item id {key} is not in the catalogue")
            else:
                titles.append(key)
                continue
            titles.append(self.titles[row])
            rows.append(row)
        if not titles:
            raise ValueError("a history needs at least one item")
        return titles[-10:], rows  # the model was trained on the last <= 10 items

    def _distances(self, queries: torch.Tensor) -> torch.Tensor:
        """[Q, I] L2 distances (the same expansion as `l2_topk`, kept whole for the scores)."""
        q = queries.float()
        sq = (q * q).sum(dim=1, keepdim=True) + self._sq_norms[None, :] - 2.0 * (q @ self.item_embeddings.T)
        return sq.clamp_min(0.0).sqrt()

    @torch.no_grad()
    def recommend(self, histories: Sequence[Sequence[str | int]], k: int = 10,
                  exclude_history: bool = True) -> list[Recommendation]:
        """One `Recommendation` of up to k items per history."""
        if k < 1:
            raise ValueError("k must be at least 1")
        resolved = [self.resolve(h) for h in histories]
        beams = generate_titles(self.model, self.tokenizer, [self.prompts.factual(t) for t, _ in resolved],
                                self.settings, progress=False)
        width = self.settings.num_return_sequences
        flat = [t for b in beams for t in b]
        emb = embed_texts(self.model, self.tokenizer, flat, batch_size=64).to(self.item_embeddings.device)
        dist = self._distances(emb).view(len(resolved), width, -1)  # [H, beams, I]
        out = []
        for h, (_, seen) in enumerate(resolved):
            d = dist[h].clone()
            if exclude_history and seen:
                d[:, seen] = float("inf")
            depth = min(k + len(seen), d.shape[1])
            per_beam = torch.topk(d, depth, dim=1, largest=False).indices.numpy()  # [beams, depth]
            rows = interleave_dedup(per_beam[None], k)[0]
            rows = rows[rows >= 0]
            if exclude_history:
                rows = rows[~np.isin(rows, seen)]
            best = d[:, rows].min(dim=0).values  # distance to the nearest beam's title
            out.append(Recommendation(self.item_ids[rows].tolist(), [self.titles[r] for r in rows],
                                      (-best).tolist()))
        return out
