"""Ranking: histories -> catalogue items, best first. The only ranking code of the project:
the evaluation (what is measured) and the served model (what is served) both call `Ranker`, so
the two cannot drift (cft-method.md, section 3).

    grounding:   prompt -> free beam search (B beams) -> embed each generated title with the
                 model -> L2-rank the whole catalogue per beam
                   original: beam 1's ranking
                   adjusted: the beams' rankings interleaved round-robin, repeats dropped
    constrained: prompt -> beam search inside the prefix tree of catalogue titles, less the
                 items this prompt must not yield (`exclude`, placeholder titles) -> each beam
                 is an item (exact title match); repeats dropped, beam order kept

The prompt holds the last `max_history` titles of a history (the length the model was trained
on), fewer where they would make it longer than `cutoff_len` tokens (oldest dropped first, the
rule training cuts its records by). Beam search is deterministic, so each distinct prompt is
generated once (the no-history prompt of the history-reliance diagnostic is the same for every row: one generation).

Scores, one per returned item, never increase along the list (higher is better):
- grounding: the interleave's own order as a number. The adjusted ranking walks the beams'
  rankings round-robin (round r, beam j: walk position p = r * beams + j) and keeps first
  occurrences, so an item's score is beams / (beams + p): 1 for the first item, then decreasing.
  (The L2 distance itself is not monotone along an interleaved list, so it is not the score.)
- constrained: the beam's score (summed log-probability / length ** length_penalty), which
  does not increase along the list. Constrained beams may run to the longest catalogue title
  whatever `max_new_tokens` says: a beam cut short would be no item at all.

Backfill (`RankingSettings.backfill`, constrained only). A constrained search returns at most
`num_return_sequences` items, and often fewer distinct ones (a finished beam has no alternative
inside the title tree: the demo's SmolLM2 gave 2.8 of 5). With `popularity`, the rest of the
requested depth is filled with the catalogue's most frequent training items, less the excluded
ones and those already listed: k asked, k answered, as a served top-K must. Their score is NaN
(None in a served answer): they are not the model's. `none` is the reference protocol (D3,
BIGRec): the list ends where the beams end.

Histories, as people type them: titles (case-insensitive, and cleaned as ingest cleans titles:
`cft_core.titles.title_key`) or item ids. An entry that is neither
(a typo, or an item newer than the model's catalogue: data keeps arriving between retrains) is
reported back as `unmatched` and left out of the prompt, so a user who touched a new item still
gets an answer; unless the caller asks for free text (`free_text=True`), when a text entry is
shown to the model, cleaned as titles are (and still reported as typed). A history left with no title (a new user, or
one whose items are all newer than the model) gets the no-history ranking: the counterfactual
prompt, which CFT trains against and the evaluation measures as `nohist_<method>`.

Item ids are the caller's: a served model's catalogue is built with the source's own ids
(`source_item_id`: a SKU, a MovieLens movie id), which mean the same item in every data window,
whereas the dense ids 0..I-1 of a sequences folder are a per-window shuffle (D3 step 4) that a
client must never see. Ids are opaque strings; an integer in a history is read as its digits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Literal

import numpy as np
import torch

from cft_core.constrained import TitleTrie
from cft_core.generation import GenerationSettings, generate_titles, response_token_ids
from cft_core.grounding import embed_texts, interleave_dedup, l2_topk
from cft_core.modeling import model_device
from cft_core.prefix import PromptPrefixCache
from cft_core.prompts import PromptBuilder
from cft_core.sequences import PLACEHOLDER_TITLE
from cft_core.titles import display_title, normalize_title, title_key

Method = Literal["grounding", "constrained"]


class InputError(ValueError):
    """A history or k the ranking cannot serve (unknown item id, empty history, k out of range).
    `user_error` tells callers (the CLI) that it is the input's fault: a message, not a traceback."""

    user_error = True


@dataclass(frozen=True)
class RankingSettings:
    """Everything that decides a ranking besides the model and the catalogue. Built from the run
    config in one place (`tasks.settings.ranking_settings`) and stored with the served model."""

    method: Method
    max_history: int  # the prompt holds the last <= max_history history titles
    generation: GenerationSettings
    precision: Literal["fp32", "bf16"]  # weights and activations; changes the embeddings too
    # Constrained only: beams the search keeps, of which the best `generation.num_return_sequences`
    # distinct items are returned (None: `generation.num_beams`; `EvalConfig.constrained_search_beams`).
    search_beams: int | None
    # Tokens a prompt may have: train.cutoff_len, the length training fits each record into
    # (`Ranker.prompt`). None: stored before the field existed; the model's context length bounds it.
    cutoff_len: int | None
    # Constrained only: "popularity" fills a list the beams leave short with the most frequent
    # training items (module docstring; `Ranker(popularity=...)`); "none": it stays short.
    backfill: Literal["none", "popularity"] = "none"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> RankingSettings:
        """A stored model's settings; those stored before `search_beams` existed searched `num_beams`,
        those stored before `cutoff_len` existed cut prompts at the model's context length, those
        stored before `backfill` existed left a short list short."""
        return cls(**{"search_beams": None, "cutoff_len": None, "backfill": "none", **d,
                      "generation": GenerationSettings(**d["generation"])})

    @property
    def torch_dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.precision == "bf16" else torch.float32


def resolve_precision(precision: str) -> Literal["fp32", "bf16"]:
    """'auto' -> 'bf16' on a CUDA GPU with bf16 support, else 'fp32' (exact, and on CPUs without
    bf16 instructions several times faster: benchmarks/precision.py). The one rule for training,
    evaluation and serving."""
    if precision != "auto":
        return precision  # type: ignore[return-value]
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"


@dataclass(frozen=True)
class Ranking:
    """Rankings of B prompts, as catalogue rows (0..I-1, -1 pads a short list).

    rows [B, depth]: the method's ranking (adjusted grounding, or the constrained beams, then any
    backfill); scores [B, depth] (NaN where rows is -1 and for backfilled rows); original [B, depth]: beam 1's grounding ranking
    (grounding only, else None); beams: per prompt, the generated titles, best beam first.
    """

    rows: np.ndarray
    scores: np.ndarray
    original: np.ndarray | None
    beams: list[list[str]]


@dataclass(frozen=True)
class Recommendation:
    """Top-K items for one history, best first; `unmatched`: the history's entries that are no
    catalogue id or title (see the module docstring)."""

    item_ids: list[str]
    titles: list[str]
    scores: list[float | None]  # None: an item the backfill added (RankingSettings.backfill), not the model's
    unmatched: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ResolvedHistory:
    """A history as the ranking uses it: `titles` for the prompt (oldest first), `rows`: the
    catalogue rows it names (left out of its recommendations), `unmatched`: entries that are no
    catalogue id or title."""

    titles: list[str]
    rows: list[int]
    unmatched: list[str]


def check_history(history, index: int = 0, field: str = "history") -> list[str | int]:
    """A history as received (a list of titles or item ids) -> its entries; InputError naming
    the history (`index`, 0-based) and the entry otherwise. Runs before anything is generated.
    `field` names the list in messages (an `exclude` list has the same shape)."""
    where = f"{field} {index}" if index else f"the {field}"
    if isinstance(history, (str, bytes)) or not isinstance(history, (Sequence, np.ndarray)):
        shown = repr(history)[:60]
        raise InputError(f"{where} must be a list of titles or item ids, got {type(history).__name__} {shown}")
    entries = list(history)
    for entry in entries:
        if isinstance(entry, (bool, np.bool_)) or not isinstance(entry, (str, int, np.integer)):
            raise InputError(f"{where}: entry {entry!r} is a {type(entry).__name__}; entries are titles (text) "
                             "or item ids (integers)")
        if isinstance(entry, str) and not entry.strip():
            raise InputError(f"{where}: an entry is empty")
    return entries


class Catalogue:
    """The items a ranking chooses from: ids [I] (the ids callers use, kept as strings; see the
    module docstring) and titles [I], row r = item r, with the lookups that turn what people type
    (ids, titles) into rows."""

    def __init__(self, item_ids: Sequence[str | int], titles: Sequence[str]):
        if len(item_ids) != len(titles):
            raise ValueError(f"catalogue mismatch: {len(item_ids)} ids, {len(titles)} titles")
        self.item_ids = [str(i) for i in item_ids]
        self.titles = list(titles)
        self.row_of_id = {i: r for r, i in enumerate(self.item_ids)}
        if len(self.row_of_id) != len(self.item_ids):
            raise ValueError(f"catalogue ids are not unique: {len(self.item_ids) - len(self.row_of_id)} repeated")
        # Placeholder titles ("unknown", ...) stay resolvable in histories but are never recommended.
        self.never = [r for r, t in enumerate(self.titles) if PLACEHOLDER_TITLE.match(t.strip())]
        self.row_of_title: dict[str, int] = {}  # exact (stripped) title -> its first row
        self._row_of_key: dict[str, int] = {}  # title_key: for what people type
        for r, t in enumerate(self.titles):
            self.row_of_title.setdefault(t.strip(), r)
            self._row_of_key.setdefault(title_key(t), r)

    def __len__(self) -> int:
        return len(self.titles)

    def row_of(self, key: str) -> int | None:
        """The row of a stripped entry: an id the catalogue has, else a title (`title_key`: as
        ingest cleans titles, and case-insensitive), else None. The one rule for what people type,
        in histories and exclude lists."""
        row = self.row_of_id.get(key)
        return self._row_of_key.get(title_key(key)) if row is None else row

    def resolve(self, history: Sequence[str | int], free_text: bool = False) -> ResolvedHistory:
        """History entries (item ids or titles) -> `ResolvedHistory`.

        An entry is an id if the catalogue has it (exact, after stripping spaces), else a title
        (`row_of`), else `unmatched`: left out, or shown to the model when `free_text` (text only:
        an integer is an id, with no title to show), cleaned as ingest cleans titles
        (`normalize_title`), so that a pasted line break cannot start a part of the prompt of its
        own. A history may resolve to no title at all (a new user): `Ranker.prompt` gives it the
        no-history prompt.
        """
        titles, rows, unmatched = [], [], []
        for entry in history:
            key = str(entry).strip()
            row = self.row_of(key)
            if row is None:
                unmatched.append(key)
                if free_text and not isinstance(entry, (int, np.integer)) and (shown := normalize_title(key)):
                    titles.append(shown)  # (cleaned as the titles the model was trained on: one line)
                continue
            titles.append(self.titles[row])
            rows.append(row)
        return ResolvedHistory(titles, rows, unmatched)

    def resolve_histories(self, histories: Sequence, free_text: bool = False) -> list[ResolvedHistory]:
        """Histories as received -> `ResolvedHistory` each: shape checked (`check_history`), then
        resolved; InputError naming the history at fault. The one intake of every ranking path."""
        return [self.resolve(check_history(h, i), free_text) for i, h in enumerate(histories)]

    def excluded_rows(self, resolved: Sequence[ResolvedHistory], exclude_history: bool,
                      exclude: Sequence | None = None) -> list[list[int]]:
        """Per history, the catalogue rows never to return: its own items when `exclude_history`,
        and the entries of `exclude[b]` (ids or titles, as in a history: everything the user
        already has, say, which is more than the history shown to the model). An exclude entry
        the catalogue lacks is ignored (it cannot be recommended anyway); a list's shape is
        checked as a history's. The one place every ranking path takes its exclusions from."""
        if exclude is not None and len(exclude) != len(resolved):
            raise InputError(f"{len(exclude)} exclude lists for {len(resolved)} histories")
        out = []
        for b, r in enumerate(resolved):
            rows = list(r.rows) if exclude_history else []
            for entry in check_history(exclude[b], b, "exclude list") if exclude is not None else []:
                if (row := self.row_of(str(entry).strip())) is not None:
                    rows.append(row)
            out.append(rows)
        return out

    def check_k(self, k: int) -> int:
        """k itself when 1 <= k <= the catalogue's size; else InputError (before any generation)."""
        if not 1 <= k <= len(self.titles):
            raise InputError(f"k must be between 1 and the catalogue size {len(self.titles):,}, got {k}")
        return k

    def recommendations(self, ranking: Ranking, depth: int | None = None,
                        unmatched: Sequence[list[str]] | None = None) -> list[Recommendation]:
        """Rows of a `Ranking` -> item ids, titles (as shown: `display_title`) and scores per
        history (padding dropped; the first `depth` only, when given), with each history's
        `unmatched` titles."""
        out = []
        for b, (rows, scores) in enumerate(zip(ranking.rows, ranking.scores, strict=True)):
            keep = np.flatnonzero(rows >= 0)[:depth]
            out.append(Recommendation([self.item_ids[r] for r in rows[keep]], [display_title(self.titles[r]) for r in rows[keep]],
                                      [None if np.isnan(v) else float(v) for v in scores[keep]],  # None: backfilled
                                      list(unmatched[b]) if unmatched else []))
        return out


def served_catalogue(path) -> tuple[list[str], list[str]]:
    """(ids [I], titles [I]) of a sequences folder's `catalogue.parquet` as a served model reads
    it: rows in dense-id order (the order of the model's embeddings, the popularity counts and
    the evaluation), ids the source's own (`source_item_id`, module docstring)."""
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=["item_id", "title", "source_item_id"]).sort_by("item_id")
    return [str(i) for i in table["source_item_id"].to_pylist()], table["title"].to_pylist()


def popularity_order(counts: np.ndarray, size: int, never: Sequence[int] = ()) -> np.ndarray:
    """The first `size` rows of the catalogue by `counts` [I], most frequent first, ties by row
    (a stable sort's order), less the `never` rows, without sorting all I rows: only the rows at
    least as frequent as the (size + len(never))-th are sorted (a 60k catalogue: 0.3 ms, not 1.7,
    for each call of a batch job)."""
    counts = np.asarray(counts)
    never = np.asarray(list(never), dtype=np.int64)
    wanted = size + never.size  # (the never rows may all lie in the head)
    if size <= 0:
        return np.zeros(0, dtype=np.int64)
    if wanted >= counts.size:
        order = np.argsort(-counts, kind="stable")
    else:
        cut = np.partition(counts, counts.size - wanted)[counts.size - wanted]  # the wanted-th largest count
        rows = np.flatnonzero(counts >= cut)  # ascending, so the stable sort breaks ties by row
        order = rows[np.argsort(-counts[rows], kind="stable")][:wanted]
    return order[~np.isin(order, never)][:size]


def _row_lists(exclude: Sequence[Sequence[int]] | None, histories: int) -> list[np.ndarray]:
    """Each history's excluded rows as an int64 array (none when `exclude` is None)."""
    if exclude is None:
        return [np.zeros(0, dtype=np.int64)] * histories
    return [np.asarray(e, dtype=np.int64).reshape(-1) for e in exclude]


def popularity_ranking(counts: np.ndarray, histories: int, depth: int,
                       exclude: Sequence[Sequence[int]] | None = None, never: Sequence[int] = ()) -> Ranking:
    """The most-popular baseline: every history gets the catalogue by `counts` [I] (training
    frequency), most frequent first (ties by row), less its excluded rows and the `never` rows
    (placeholder titles, `Catalogue.never`); scores are the counts."""
    counts = np.asarray(counts)
    excluded = _row_lists(exclude, histories)
    # At most len(excluded[b]) of a history's rows lie in the head, so its first `depth` rows kept
    # are among the first depth + len(excluded[b]) (not the whole catalogue: 60k rows a user).
    order = popularity_order(counts, depth + max((e.size for e in excluded), default=0), never)
    is_excluded = np.zeros(counts.size, dtype=bool)  # one history's excluded rows at a time (np.isin sorts)
    rows = np.full((histories, depth), -1, dtype=np.int64)
    for b, ex in enumerate(excluded):
        ranked = order[: depth + ex.size]
        if ex.size:
            is_excluded[ex] = True
            ranked = ranked[~is_excluded[ranked]]
            is_excluded[ex] = False
        rows[b, : min(depth, ranked.size)] = ranked[:depth]
    scores = np.where(rows >= 0, np.asarray(counts, dtype=float)[np.maximum(rows, 0)], np.nan)
    return Ranking(rows, scores, None, [[] for _ in range(histories)])


@dataclass(frozen=True)
class Transitions:
    """First-order item-to-item counts, an [I, I] matrix in CSR form: the items seen right after
    item i in training are `followers[starts[i]:starts[i + 1]]` (ascending), each `times[...]`
    times. What the Markov-chain baseline ranks by (`markov_ranking`)."""

    starts: np.ndarray  # int64 [I + 1]
    followers: np.ndarray  # int64 [T]
    times: np.ndarray  # int64 [T]
    # `in_markov_order`'s last answer, [(counts, followers, times)]; a served model ranks with one
    # counts array, so each item's followers are sorted once, not once per request.
    _ordered: list = field(default_factory=list, repr=False, compare=False)

    @classmethod
    def count(cls, previous: np.ndarray, following: np.ndarray, num_items: int) -> Transitions:
        """From pairs (item, the item right after it) [N] each, rows 0..num_items-1."""
        previous, following = np.asarray(previous, dtype=np.int64), np.asarray(following, dtype=np.int64)
        # One key per pair, ordered by (previous, following): I**2 fits int64 up to 3e9 items.
        pairs, times = np.unique(previous * num_items + following, return_counts=True)
        starts = np.zeros(num_items + 1, dtype=np.int64)
        np.cumsum(np.bincount(pairs // num_items, minlength=num_items), out=starts[1:])
        return cls(starts, pairs % num_items, times.astype(np.int64))

    def span(self, item: int) -> slice:
        """Where `item`'s followers lie in `followers` and `times` (and in `in_markov_order`'s)."""
        return slice(self.starts[item], self.starts[item + 1])

    def of(self, item: int) -> tuple[np.ndarray, np.ndarray]:
        """(followers, times) of `item`."""
        span = self.span(item)
        return self.followers[span], self.times[span]

    def in_markov_order(self, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(followers [T], times [T]) with each item's followers (still `starts[i]:starts[i + 1]`)
        in `markov_ranking`'s order: most times first, then by `counts` [I] (most first), then by
        row. One sort of all T pairs, kept for the next call with equal counts."""
        counts = np.asarray(counts)
        last = self._ordered[0] if self._ordered else None  # (one read: another thread may replace it)
        if last is not None and np.array_equal(last[0], counts):
            return last[1], last[2]
        item = np.repeat(np.arange(self.starts.size - 1), np.diff(self.starts))
        order = np.lexsort((self.followers, -counts[self.followers], -self.times, item))
        self._ordered[:] = [(counts.copy(), self.followers[order], self.times[order])]
        return self._ordered[0][1], self._ordered[0][2]

    def save(self, path) -> None:
        """An .npz of the three arrays, followers and counts as int32: half the bytes (ML-25M-sized
        windows hold ~2M pairs; an item id or a count past 2**31 is not in sight)."""
        np.savez(path, starts=self.starts, followers=self.followers.astype(np.int32),
                 times=self.times.astype(np.int32))

    @classmethod
    def load(cls, path) -> Transitions:
        """What `save` wrote, read without unpickling (a registered Markov baseline calls this:
        keep its signature)."""
        with np.load(path, allow_pickle=False) as arrays:
            return cls(arrays["starts"], arrays["followers"], arrays["times"])


def markov_ranking(transitions: Transitions, counts: np.ndarray, newest: Sequence[int], depth: int,
                   exclude: Sequence[Sequence[int]] | None = None, never: Sequence[int] = ()) -> Ranking:
    """The first-order Markov-chain baseline: for each history, the items seen most often right
    after its newest item (`newest[b]`, a row; -1: none, as for a new user) in training, then the
    rest of the catalogue by `counts` [I] (training frequency), less its excluded rows and the
    `never` rows. Score of item j after item i: times(i -> j) + counts[j] / (max(counts) + 1), so
    the order is by transitions, then popularity, then row; with no transitions it is
    `popularity_ranking`'s."""
    counts = np.asarray(counts, dtype=np.int64)
    tiebreak = counts / (counts.max(initial=0) + 1.0)  # in [0, 1): popularity orders equal transitions
    followers_by_score, times_by_score = transitions.in_markov_order(counts)  # (by times, count, row: the score's order)
    excluded = _row_lists(exclude, len(newest))
    never = np.asarray(list(never), dtype=np.int64)
    is_never = np.zeros(counts.size, dtype=bool)
    is_never[never] = True
    # A history takes the popularity head only when it has fewer than depth + len(excluded) +
    # len(never) followers, and then its first depth + len(excluded) + len(followers) rows: fewer
    # than 2 * (depth + len(excluded)) + len(never) of them, after the never rows.
    longest = max((e.size for e in excluded), default=0)
    order = popularity_order(counts, 2 * (depth + longest) + never.size, never)
    marked = np.zeros(counts.size, dtype=bool)  # scratch: one history's exclusions (and followers, to fill) (np.isin sorts)
    rows = np.full((len(newest), depth), -1, dtype=np.int64)
    scores = np.full((len(newest), depth), np.nan)
    for b, (item, ex) in enumerate(zip(newest, excluded, strict=True)):
        span = transitions.span(item) if item >= 0 else slice(0, 0)
        followers, times = followers_by_score[span], times_by_score[span]
        # The followers come first (score >= 1), best first: at most len(excluded) + len(never) of
        # the first depth + len(excluded) + len(never) are dropped, so the rest are never needed.
        marked[ex] = True
        top = followers[: depth + ex.size + never.size]
        keep = ~(marked[top] | is_never[top])
        chosen, score = top[keep][:depth], (times[: top.size][keep] + tiebreak[top[keep]])[:depth]
        if chosen.size < depth:  # every follower was looked at: then the popularity order (scores < 1),
            # less the followers, at most len(followers) + len(excluded) of its first items dropped.
            head = order[: depth + ex.size + followers.size]
            marked[followers] = True
            rest = head[~marked[head]][: depth - chosen.size]
            marked[followers] = False
            chosen, score = np.concatenate([chosen, rest]), np.concatenate([score, tiebreak[rest]])
        marked[ex] = False
        rows[b, : chosen.size], scores[b, : chosen.size] = chosen, score
    return Ranking(rows, scores, None, [[] for _ in range(len(newest))])


class Ranker:
    """A causal LM over a catalogue.

    item_ids [I]: the ids callers use (a served model: the source's ids; the evaluation: rows);
    titles [I]; item_embeddings FloatTensor[I, D]: the titles embedded by `embed_titles` with
    this very model at `settings.precision` (grounding only; the evaluation caches them and the
    served model ships them); popularity [I]: each item's count in the training split, the
    backfill's order (where `settings.backfill` is "popularity").
    """

    def __init__(self, model, tokenizer, prompts: PromptBuilder, item_ids: Sequence[str | int], titles: Sequence[str],
                 settings: RankingSettings, item_embeddings: torch.Tensor | None = None,
                 popularity: np.ndarray | None = None):
        self.catalogue = Catalogue(item_ids, titles)
        self.popularity = None
        if settings.method == "constrained" and settings.backfill == "popularity":
            if popularity is None or len(popularity) != len(titles):
                got = None if popularity is None else len(popularity)
                raise ValueError(f"backfill by popularity needs a training count per catalogue title: "
                                 f"{len(titles)} titles, {got}")
            self.popularity = np.asarray(popularity)
        if settings.method == "grounding":
            if item_embeddings is None or item_embeddings.shape[0] != len(titles):
                got = None if item_embeddings is None else item_embeddings.shape[0]
                raise ValueError(f"grounding needs one embedding per catalogue title: {len(titles)} titles, {got}")
            self.item_embeddings = item_embeddings.to(model_device(model)).float()
        self.model, self.tokenizer, self.prompts, self.settings = model.eval(), tokenizer, prompts, settings
        self.titles = self.catalogue.titles
        self._trie: TitleTrie | None = None
        self._prompt_prefix = PromptPrefixCache()  # the prompts' common start, computed once
        # Most tokens a prompt may have (`prompt`); a version stored before `cutoff_len`: the context length.
        self.prompt_budget: int | None = settings.cutoff_len or getattr(model.config, "max_position_embeddings", None)
        if settings.method == "constrained":  # built with the model, not by the first request: a server
            self._title_trie()  # switching to a new version loads it beside the old one (~4 s at 300k titles)

    # ---------------------------------------------------------------- prompts and histories

    def prompt(self, history_titles: Sequence[str]) -> str:
        """The factual prompt of a history: its newest titles, at most `max_history` and as many
        as make a prompt of at most `prompt_budget` tokens (`PromptBuilder.fitted_history`, as
        training cuts its records, prompt and response, to `cutoff_len`: the model is not shown
        prompts far longer than it was trained on, and a long free-text entry cannot hold a server
        for minutes). For no titles at all (a new user), the counterfactual prompt: the no-history
        ranking (module docstring). InputError when even the newest title alone makes too long a
        prompt."""
        titles = list(history_titles)[-self.settings.max_history :]
        if not titles:
            return self.prompts.counterfactual()
        if self.prompt_budget is not None:
            fitted = self.prompts.fitted_history(titles, self._count_tokens, self.prompt_budget)
            if not fitted:
                bound = "train.cutoff_len" if self.settings.cutoff_len else "its context length"
                raise InputError(f"its newest title ({len(titles[-1]):,} characters) alone makes a prompt of "
                                 f"{self._count_tokens(self.prompts.factual(titles[-1:])):,} tokens; the model "
                                 f"reads at most {self.prompt_budget:,} ({bound})")
            titles = fitted
        return self.prompts.factual(titles)

    def prompts_for(self, histories: Sequence[Sequence[str]]) -> list[str]:
        """`prompt` of each history's titles; InputError naming the history (0-based) at fault."""
        texts = []
        for index, titles in enumerate(histories):
            try:
                texts.append(self.prompt(titles))
            except InputError as e:
                raise InputError(f"{f'history {index}' if index else 'the history'}: {e}") from None
        return texts

    def _count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=True)["input_ids"])

    def resolve(self, history: Sequence[str | int], free_text: bool = False) -> ResolvedHistory:
        return self.catalogue.resolve(history, free_text)

    # ---------------------------------------------------------------- ranking

    @torch.no_grad()
    def rank(self, prompt_texts: Sequence[str], depth: int, exclude: Sequence[Sequence[int]] | None = None,
             progress: bool = False) -> Ranking:
        """Rank the catalogue for each prompt; `exclude[b]`: rows never returned for prompt b."""
        never = self.catalogue.never
        if never:  # placeholder titles are never recommended
            exclude = [[*never, *(exclude[b] if exclude is not None else [])] for b in range(len(prompt_texts))]
        constrained = self.settings.method == "constrained"
        generation = self.settings.generation
        # Constrained, the excluded items leave the prompt's tree (`_banned_edges`), so a search is
        # a prompt and its exclusions; grounding excludes after the search (`l2_topk`).
        banned = [self._banned_edges(exclude[b]) if constrained and exclude is not None else ()
                  for b in range(len(prompt_texts))]
        searches = list(zip(prompt_texts, banned, strict=True))
        unique = list(dict.fromkeys(searches))  # each distinct search run once
        if constrained:  # a beam cut short is no item: allow the longest title (beams stop at EOS anyway)
            generation = replace(generation, max_new_tokens=self._title_trie_depth())
        if constrained and self.settings.search_beams:  # a wider search; its best items are kept below
            generation = replace(generation, num_beams=self.settings.search_beams,
                                 num_return_sequences=self.settings.search_beams)
        beams, beam_scores = generate_titles(self.model, self.tokenizer, [prompt for prompt, _ in unique], generation,
                                             trie=self._title_trie() if constrained else None,
                                             progress=progress, with_scores=True,
                                             prefix_cache=self._prompt_prefix,
                                             banned=[edges for _, edges in unique] if constrained else None)
        by_search = {u: (b, s) for u, b, s in zip(unique, beams, beam_scores, strict=True)}
        beams = [by_search[u][0] for u in searches]
        if constrained:  # at most the settings' returned beams, however many were searched, then any backfill
            found = min(depth, self.settings.generation.num_return_sequences)
            ranking = self._rank_constrained(beams, [by_search[u][1] for u in searches], found, exclude)
            return ranking if self.popularity is None else self._backfilled(ranking, depth, exclude)
        return self._rank_grounded(beams, depth, exclude)

    def _banned_edges(self, rows: Sequence[int]) -> tuple[tuple[int, int], ...]:
        """The trie edges to mask so that a constrained search never yields the items `rows`: the
        title of each row that its title stands for (`Catalogue.row_of_title`: a title two items
        share is answered with its first row, so it goes only when that row is excluded)."""
        trie = self._title_trie()
        ends = [trie.end_of[r] for r in set(rows) if self.catalogue.row_of_title.get(self.titles[r].strip()) == r]
        return tuple(trie.banned_edges(ends))

    def _rank_grounded(self, beams: list[list[str]], depth: int, exclude) -> Ranking:
        n, width = len(beams), len(beams[0])
        emb = embed_texts(self.model, self.tokenizer, [t for b in beams for t in b], batch_size=64)
        emb = emb.to(self.item_embeddings.device)
        per_query_excluded = None if exclude is None else [rows for rows in exclude for _ in range(width)]
        per_beam = l2_topk(emb, self.item_embeddings, depth, excluded=per_query_excluded).cpu().numpy()
        per_beam = per_beam.reshape(n, width, -1)  # [B, beams, depth]
        adjusted = interleave_dedup(per_beam, depth)
        return Ranking(adjusted, walk_scores(per_beam, adjusted), per_beam[:, 0], beams)

    def _rank_constrained(self, beams: list[list[str]], beam_scores: list[list[float]], depth: int,
                          exclude) -> Ranking:
        rows = np.full((len(beams), depth), -1, dtype=np.int64)
        scores = np.full((len(beams), depth), np.nan)
        for b, (titles, values) in enumerate(zip(beams, beam_scores, strict=True)):
            skip = set(exclude[b]) if exclude is not None else set()
            kept = 0
            # A hypothesis can come back twice (once per length at which it emitted EOS): keep
            # the first, as a ranked list has each item once.
            for title, value in zip(titles, values, strict=True):
                row = self.catalogue.row_of_title.get(title.strip(), -1)
                if row < 0 or row in skip or kept == depth:
                    continue
                skip.add(row)
                rows[b, kept], scores[b, kept] = row, value
                kept += 1
        return Ranking(rows, scores, None, beams)

    def _backfilled(self, ranking: Ranking, depth: int, exclude) -> Ranking:
        """`ranking` [B, <= depth] widened to `depth` columns, each row's empty places (-1) filled
        with the popularity baseline's list (`popularity_ranking` by `self.popularity`) less what
        the row lists or excludes; their scores NaN (module docstring, Backfill)."""
        found = ranking.rows.shape[1]
        listed = [row[row >= 0] for row in ranking.rows]
        skip = [np.concatenate([ids, np.asarray(exclude[b] if exclude is not None else [], dtype=np.int64)])
                for b, ids in enumerate(listed)]
        popular = popularity_ranking(self.popularity, len(listed), depth, exclude=skip).rows  # (-1 where none is left)
        rows = np.full((len(listed), depth), -1, dtype=np.int64)
        scores = np.full((len(listed), depth), np.nan)
        rows[:, :found], scores[:, :found] = ranking.rows, ranking.scores
        for b, ids in enumerate(listed):
            rows[b, ids.size:] = popular[b, : depth - ids.size]
        return replace(ranking, rows=rows, scores=scores)

    def _title_trie(self) -> TitleTrie:
        if self._trie is None:
            ids = response_token_ids(self.tokenizer, self.prompts, self.titles)
            self._trie = TitleTrie(ids, vocab_size=len(self.tokenizer))
            self._trie_depth = max(len(r) for r in ids)
        return self._trie

    def _title_trie_depth(self) -> int:
        """Tokens of the longest catalogue response (title, closing quote, EOS)."""
        self._title_trie()
        return self._trie_depth

    # ---------------------------------------------------------------- serving

    def recommend(self, histories: Sequence[Sequence[str | int]], k: int, exclude_history: bool = True,
                  free_text: bool = False, exclude: Sequence | None = None) -> list[Recommendation]:
        """One `Recommendation` of up to k items per history. Items already in the history are
        left out by default (a recommender should not suggest what the user has just watched;
        the offline metrics keep them, as the reference does), and so are `exclude[b]`'s
        (`Catalogue.excluded_rows`). Everything about the input is checked before anything is
        generated."""
        self.catalogue.check_k(k)
        resolved = self.catalogue.resolve_histories(histories, free_text)
        excluded = self.catalogue.excluded_rows(resolved, exclude_history, exclude)
        ranking = self.rank(self.prompts_for([r.titles for r in resolved]), depth=k, exclude=excluded)
        return self.catalogue.recommendations(ranking, unmatched=[r.unmatched for r in resolved])


def walk_scores(per_beam: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Scores of an interleaved grounding ranking (module docstring): per_beam [B, beams, L] the
    beams' rankings, rows [B, k] the interleaved one -> [B, k], beams / (beams + p) with p the
    item's first position in the round-robin walk (round-major); NaN where rows is -1."""
    n, width, _ = per_beam.shape
    walk = per_beam.transpose(0, 2, 1).reshape(n, -1)  # [B, L * beams]: round 0 beam 0, round 0 beam 1, ...
    scores = np.full(rows.shape, np.nan)
    for b in range(n):
        first: dict[int, int] = {}
        for p, item in enumerate(walk[b].tolist()):
            first.setdefault(item, p)
        for j, item in enumerate(rows[b].tolist()):
            if item >= 0:
                scores[b, j] = width / (width + first[item])
    return scores


def embed_titles(model, tokenizer, titles: Sequence[str], progress: bool = False) -> torch.Tensor:
    """FloatTensor[I, D]: the catalogue titles as grounding embeds them (last layer, last token)."""
    return embed_texts(model, tokenizer, titles, batch_size=64, progress=progress)
