"""Ranking (cft_core/ranking.py): history -> beams -> L2 grounding or trie-constrained beams ->
catalogue items with scores, checked against straightforward re-computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cft_core.generation import GenerationSettings, generate_titles
from cft_core.grounding import embed_texts
from cft_core.prompts import PromptBuilder
from cft_core.ranking import Catalogue, InputError, Ranker, Ranking, RankingSettings
from cft_core.tiny import build_tiny_model
from tests.conftest import TITLES

IDS = [str(i) for i in range(100, 100 + len(TITLES))]  # the source's ids, as text; need not be 0..N-1
SETTINGS = GenerationSettings(num_beams=3, num_return_sequences=3, min_new_tokens=1, max_new_tokens=6,
                              length_penalty=1.0, batch_size=4)


# Long enough for every catalogue title, so that no constrained beam is cut short.
CONSTRAINED = GenerationSettings(num_beams=4, num_return_sequences=4, min_new_tokens=1, max_new_tokens=24,
                                 length_penalty=0.0, batch_size=4)


def ranking_settings(method: str, max_history: int = 10, cutoff_len: int | None = 1024) -> RankingSettings:
    generation = CONSTRAINED if method == "constrained" else SETTINGS
    return RankingSettings(method=method, max_history=max_history, generation=generation, precision="fp32",
                           search_beams=None, cutoff_len=cutoff_len)


@pytest.fixture(scope="module")
def model(tiny_tokenizer):
    torch.manual_seed(0)
    return build_tiny_model(len(tiny_tokenizer), hidden_size=32, num_layers=2, num_heads=4, seed=0).eval()


@pytest.fixture(scope="module")
def recommender(model, tiny_tokenizer):
    emb = embed_texts(model, tiny_tokenizer, TITLES)
    return Ranker(model, tiny_tokenizer, PromptBuilder.for_domain("movies"), IDS, TITLES,
                  ranking_settings("grounding"), emb)


def reference(rec: Ranker, history_titles: list[str], seen_rows: list[int], k: int, exclude: bool):
    """Straight from the definition: candidates are the catalogue minus the history (when
    excluded); per beam, candidates by L2 distance (cdist); round-robin over beams, first
    occurrence kept; score = beams / (beams + p), p the walk position where the item was taken."""
    beams = generate_titles(rec.model, rec.tokenizer, [rec.prompts.factual(history_titles)], SETTINGS, progress=False)[0]
    dist = torch.cdist(embed_texts(rec.model, rec.tokenizer, beams), rec.item_embeddings)  # [beams, I]
    orders = [[r for r in torch.argsort(d, stable=True).tolist() if not (exclude and r in seen_rows)]
              for d in dist]
    rows: list[int] = []
    scores: list[float] = []
    p = 0  # position in the round-robin walk
    for rank in range(len(orders[0])):
        for order in orders:
            if order[rank] not in rows:
                rows.append(order[rank])
                scores.append(len(orders) / (len(orders) + p))
            p += 1
    return [IDS[r] for r in rows[:k]], scores[:k]


@pytest.mark.parametrize("exclude", [True, False])
def test_recommend_matches_reference(recommender, exclude):
    history = ["Heat", "Babe", "Seven"]
    seen = [TITLES.index(t) for t in history]
    (rec,) = recommender.recommend([history], k=5, exclude_history=exclude)
    ids, scores = reference(recommender, history, seen, 5, exclude)
    assert rec.item_ids == ids
    assert rec.titles == [TITLES[int(i) - 100] for i in ids]
    np.testing.assert_allclose(rec.scores, scores, rtol=1e-12)
    assert rec.scores[0] == 1.0 and all(np.diff(rec.scores) < 0)  # strictly decreasing with rank
    if exclude:
        assert not set(rec.item_ids) & {IDS[r] for r in seen}


def test_items_to_exclude_are_never_returned(recommender):
    """`exclude`: items the user has beyond the history shown (ids or titles, unknown ones
    ignored) leave the ranking exactly as if they were in the history, without entering the prompt."""
    history = ["Heat", "Babe"]
    (plain,) = recommender.recommend([history], k=5)
    extra = plain.item_ids[:2]  # the two best items for this history: excluding them must change the answer
    (rec,) = recommender.recommend([history], k=5, exclude=[[extra[0], TITLES[int(extra[1]) - 100].upper(), "SKU-404"]])
    seen = [TITLES.index(t) for t in history] + [int(i) - 100 for i in extra]
    ids, scores = reference(recommender, history, seen, 5, True)  # the same prompt, more rows excluded
    assert rec.item_ids == ids and not set(rec.item_ids) & set(extra)
    np.testing.assert_allclose(rec.scores, scores, rtol=1e-12)
    # exclude_history=False keeps the history's items available but still leaves out `exclude`'s.
    (kept,) = recommender.recommend([history], k=len(TITLES), exclude_history=False, exclude=[[extra[0]]])
    assert extra[0] not in kept.item_ids and {IDS[TITLES.index(t)] for t in history} <= set(kept.item_ids)


def test_excluded_rows_by_hand():
    catalogue = Catalogue(["a", "b", "c", "d"], ["Heat", "Babe", "Seven", "Fargo"])
    resolved = catalogue.resolve_histories([["a"], [], ["seven"]])
    assert catalogue.excluded_rows(resolved, True) == [[0], [], [2]]
    assert catalogue.excluded_rows(resolved, False) == [[], [], []]
    got = catalogue.excluded_rows(resolved, True, [["d", "unknown-id"], ["FARGO", " b "], []])
    assert got == [[0, 3], [3, 1], [2]]
    with pytest.raises(InputError, match="3 exclude lists for 2 histories"):
        catalogue.excluded_rows(resolved[:2], True, [[], [], []])
    with pytest.raises(InputError, match="exclude list 1 must be a list of titles or item ids, got str"):
        catalogue.excluded_rows(resolved, True, [[], "d", []])


def test_recommend_batches_like_single_calls(recommender):
    histories = [["Heat"], ["Toy Story", "Copycat"], ["Babe", "Seven", "Heat", "GoldenEye"]]
    together = recommender.recommend(histories, k=4)
    one_by_one = [recommender.recommend([h], k=4)[0] for h in histories]
    assert [r.item_ids for r in together] == [r.item_ids for r in one_by_one]
    assert all(len(r.item_ids) == 4 and len(set(r.item_ids)) == 4 for r in together)


def test_resolve_ids_titles_and_unmatched(recommender):
    resolved = recommender.resolve([100, "101", "heat", "A Film Not In The Catalogue"])
    assert resolved.titles == [TITLES[0], TITLES[1], "Heat"]  # the unmatched title is left out ...
    assert resolved.rows == [0, 1, TITLES.index("Heat")]
    assert resolved.unmatched == ["A Film Not In The Catalogue"]  # ... and reported
    free = recommender.resolve([100, "A Film Not In The Catalogue"], free_text=True)
    assert free.titles == [TITLES[0], "A Film Not In The Catalogue"] and free.unmatched == ["A Film Not In The Catalogue"]
    # An id the catalogue lacks (an item newer than the model) is left out and reported, like a
    # title; an integer is never shown to the model as text.
    newer = recommender.resolve(["heat", "999", 998])
    assert newer.rows == [TITLES.index("Heat")] and newer.unmatched == ["999", "998"]
    assert recommender.resolve(["heat", "999", 998], free_text=True).titles == ["Heat", "999"]
    for k in (0, len(TITLES) + 1):  # refused before any generation
        with pytest.raises(InputError, match=f"k must be between 1 and the catalogue size {len(TITLES)}, got {k}"):
            recommender.recommend([["Heat"]], k=k)


def test_catalogue_speaks_the_sources_ids():
    """Ids are the caller's text, whatever they look like: an SKU resolves to its row and comes
    back as itself; an unknown SKU is unmatched text, unknown digits an unknown id; an id wins
    over a title spelled the same; repeated ids are refused."""
    ids = ["SKU-7", "b0042", "12", "SKU-8"]
    catalogue = Catalogue(ids, ["Heat", "Babe", "SKU-8", "Seven"])
    resolved = catalogue.resolve(["SKU-7", " b0042 ", 12, "seven", "SKU-9", "SKU-8"])
    assert resolved.rows == [0, 1, 2, 3, 3] and resolved.unmatched == ["SKU-9"]  # "SKU-8": the id, not row 2's title
    assert resolved.titles == ["Heat", "Babe", "SKU-8", "Seven", "Seven"]
    assert catalogue.resolve(["Heat", 13]).unmatched == ["13"]
    ranking = Ranking(np.array([[3, 0, -1]]), np.array([[2.0, 1.0, np.nan]]), None, [[]])
    (rec,) = catalogue.recommendations(ranking)
    assert rec.item_ids == ["SKU-8", "SKU-7"] and rec.titles == ["Seven", "Heat"] and rec.scores == [2.0, 1.0]
    with pytest.raises(ValueError, match="not unique: 1 repeated"):
        Catalogue(["a", "b", "a"], ["x", "y", "z"])


def test_a_history_with_no_known_item_gets_the_no_history_ranking(model, tiny_tokenizer):
    """A new user (empty history), or one whose items are all newer than the model: the ranking
    of the counterfactual prompt (what the evaluation measures as nohist_constrained), with the
    unknown entries reported."""
    ranker = Ranker(model, tiny_tokenizer, PromptBuilder.for_domain("movies"), IDS, TITLES,
                    ranking_settings("constrained"))
    expected = ranker.catalogue.recommendations(ranker.rank([ranker.prompts.counterfactual()], depth=3))[0]
    new_user, newer_items = ranker.recommend([[], ["999", "Not A Film"]], k=3)
    assert new_user.item_ids == newer_items.item_ids == expected.item_ids and len(expected.item_ids) > 0
    assert new_user.unmatched == [] and newer_items.unmatched == ["999", "Not A Film"]


def test_recommend_reports_unmatched_titles(recommender):
    (rec,) = recommender.recommend([["Heat", "Not A Film"]], k=3)
    assert rec.unmatched == ["Not A Film"]
    (alone,) = recommender.recommend([["Heat"]], k=3)
    assert rec.item_ids == alone.item_ids  # left out of the prompt: as if never typed
    (free,) = recommender.recommend([["Heat", "Not A Film"]], k=3, free_text=True)
    assert free.unmatched == ["Not A Film"]


@pytest.mark.parametrize("history, message", [
    ("Heat", "must be a list of titles or item ids, got str"),
    ([["Heat"]], "entry \\['Heat'\\] is a list"),
    ([1.5], "entry 1.5 is a float"),
    ([True], "entry True is a bool"),
    (["Heat", "  "], "an entry is empty"),
])
def test_malformed_histories_are_refused_before_generation(recommender, history, message, monkeypatch):
    monkeypatch.setattr(recommender, "rank", lambda *a, **k: pytest.fail("generated for a malformed history"))
    with pytest.raises(InputError, match=message):
        recommender.recommend([history], k=3)


def test_prompt_keeps_the_last_max_history_titles(model, tiny_tokenizer):
    emb = embed_texts(model, tiny_tokenizer, TITLES)
    ranker = Ranker(model, tiny_tokenizer, PromptBuilder.for_domain("movies"), IDS, TITLES,
                    ranking_settings("grounding", max_history=2), emb)
    assert ranker.prompt(["Heat", "Babe", "Seven"]) == ranker.prompts.factual(["Babe", "Seven"])


def newest_that_fit(tokenizer, prompts: PromptBuilder, titles: list[str], budget: int) -> list[str]:
    """Reference: of the history's suffixes, longest first, the first whose factual prompt has at
    most `budget` tokens."""
    for start in range(len(titles)):
        if len(tokenizer(prompts.factual(titles[start:]))["input_ids"]) <= budget:
            return titles[start:]
    return []


def test_prompt_keeps_the_newest_titles_that_fit_cutoff_len(model, tiny_tokenizer):
    """A ranked prompt is cut as training cuts a record: the newest titles whose prompt has at
    most cutoff_len tokens, for every budget from one title's prompt to the whole history's."""
    prompts = PromptBuilder.for_domain("movies")
    history = ["Toy Story", "Mr. Holland's Opus", "Heat", "French Twist (Gazon maudit)", "Seven"]
    lengths = [len(tiny_tokenizer(prompts.factual(history[s:]))["input_ids"]) for s in range(len(history))]
    for budget in range(lengths[-1], lengths[0] + 2):
        ranker = Ranker(model, tiny_tokenizer, prompts, IDS, TITLES, ranking_settings("constrained", cutoff_len=budget))
        kept = newest_that_fit(tiny_tokenizer, prompts, history, budget)
        assert ranker.prompt(history) == prompts.factual(kept)
        assert len(tiny_tokenizer(ranker.prompt(history))["input_ids"]) <= budget
    assert len(kept) == len(history)  # the largest budget keeps the whole history
    # A version stored before the setting existed is bounded by the model's context length.
    old = Ranker(model, tiny_tokenizer, prompts, IDS, TITLES, ranking_settings("constrained", cutoff_len=None))
    assert old.prompt_budget == model.config.max_position_embeddings
    with pytest.raises(InputError, match=r"the model reads at most 2,048 \(its context length\)$"):
        old.prompt(["Heat", " ".join(["words"] * 3000)])


def test_a_history_too_long_for_cutoff_len_is_refused_before_generating(model, tiny_tokenizer, monkeypatch):
    """A free-text entry whose prompt alone outgrows cutoff_len is the caller's error, named with
    its history, before any generation (the serving batcher builds its prompts the same way); an
    older title that long is dropped like any other."""
    from cft_core.serving import BatchingRecommender

    ranker = Ranker(model, tiny_tokenizer, PromptBuilder.for_domain("movies"), IDS, TITLES,
                    ranking_settings("constrained", cutoff_len=128))
    essay = " ".join(["words"] * 500)
    monkeypatch.setattr(ranker, "rank", lambda *a, **k: pytest.fail("generated for a history too long"))
    with pytest.raises(InputError, match=r"^history 1: its newest title \(2,999 characters\) alone makes a prompt "
                                         r"of [0-9,]+ tokens; the model reads at most 128 \(train.cutoff_len\)"):
        ranker.recommend([["Heat"], ["Heat", essay]], k=3, free_text=True)
    batcher = BatchingRecommender(ranker, max_batch=4, max_queue=4)
    try:
        with pytest.raises(InputError, match="^the history: its newest title"):
            batcher.submit([["Heat", essay]], k=3, free_text=True)
    finally:
        batcher.close()
    assert ranker.prompt([essay, "Heat"]) == ranker.prompts.factual(["Heat"])


def test_constrained_ranking_is_the_beams_as_items(model, tiny_tokenizer):
    """Constrained: every returned item is a catalogue title the beams spelled, in beam order,
    without repeats; the scores are the beams' and do not increase along the list."""
    from cft_core.constrained import TitleTrie
    from cft_core.generation import response_token_ids

    prompts = PromptBuilder.for_domain("movies")
    ranker = Ranker(model, tiny_tokenizer, prompts, IDS, TITLES, ranking_settings("constrained"))
    assert ranker._trie is not None  # built with the ranker (a served model's load), not by its first request
    histories = [["Heat", "Babe"], ["Toy Story"]]
    texts = [ranker.prompt(h) for h in histories]
    ranking = ranker.rank(texts, depth=5)
    trie = TitleTrie(response_token_ids(tiny_tokenizer, prompts, TITLES), vocab_size=len(tiny_tokenizer))
    beams, scores = generate_titles(model, tiny_tokenizer, texts, CONSTRAINED, trie=trie, progress=False,
                                    with_scores=True)
    for b in range(len(histories)):
        expected_rows, expected_scores = [], []
        for title, score in zip(beams[b], scores[b], strict=True):
            row = TITLES.index(title)
            if row not in expected_rows:
                expected_rows.append(row)
                expected_scores.append(score)
        got = ranking.rows[b][ranking.rows[b] >= 0].tolist()
        assert got == expected_rows
        np.testing.assert_allclose(ranking.scores[b][: len(got)], expected_scores, rtol=1e-5)
        assert all(np.diff(ranking.scores[b][: len(got)]) <= 1e-6)
    # Serving through the same ranker leaves out the history and maps rows to catalogue ids.
    (rec,) = ranker.recommend([["Heat", "Babe"]], k=5)
    assert not {"Heat", "Babe"} & set(rec.titles)
    assert rec.item_ids == [IDS[TITLES.index(t)] for t in rec.titles]


def test_constrained_excluded_items_leave_the_tree_so_the_list_stays_full(model, tiny_tokenizer):
    """The items a user must not get (the history, `exclude`) are taken out of the search: the
    beams are those of a search over the catalogue without them (the reference: a trie of the other
    titles only), so the answer holds k items however many of the model's favourites are excluded.
    (Dropping excluded beams after the search returned k minus those, or nothing.)"""
    from cft_core.constrained import TitleTrie
    from cft_core.generation import response_token_ids

    prompts = PromptBuilder.for_domain("movies")
    ranker = Ranker(model, tiny_tokenizer, prompts, IDS, TITLES, ranking_settings("constrained"))
    history = ["Heat", "Babe"]
    k = CONSTRAINED.num_beams
    (favourites,) = ranker.recommend([history], k=k, exclude_history=False)
    assert len(favourites.item_ids) == k
    (rec,) = ranker.recommend([history], k=k, exclude=[favourites.item_ids])  # every beam of before excluded
    gone = set(history) | set(favourites.titles)
    others = [t for t in TITLES if t not in gone]
    trie = TitleTrie(response_token_ids(tiny_tokenizer, prompts, others), vocab_size=len(tiny_tokenizer))
    (beams,), (scores,) = generate_titles(model, tiny_tokenizer, [ranker.prompt(history)], CONSTRAINED, trie=trie,
                                          progress=False, with_scores=True)
    assert rec.titles == beams and len(rec.item_ids) == k and not gone & set(rec.titles)
    np.testing.assert_allclose(rec.scores, scores, rtol=1e-5)


def test_a_wider_constrained_search_returns_its_best_distinct_items(model, tiny_tokenizer):
    """`search_beams`: the search keeps that many beams and the ranking returns the best
    `num_return_sequences` distinct items of them (the reference: the same search run directly,
    repeats and dead ends dropped, cut to num_return_sequences)."""
    from dataclasses import replace

    from cft_core.constrained import TitleTrie
    from cft_core.generation import response_token_ids

    prompts = PromptBuilder.for_domain("movies")
    wide = replace(ranking_settings("constrained"), search_beams=3 * CONSTRAINED.num_beams)
    ranker = Ranker(model, tiny_tokenizer, prompts, IDS, TITLES, wide)
    histories = [["Heat", "Babe"], ["Toy Story"], ["Seven", "Copycat", "GoldenEye"]]
    ranking = ranker.rank([ranker.prompt(h) for h in histories], depth=50)
    trie = TitleTrie(response_token_ids(tiny_tokenizer, prompts, TITLES), vocab_size=len(tiny_tokenizer))
    searched = replace(CONSTRAINED, num_beams=wide.search_beams, num_return_sequences=wide.search_beams)
    beams = generate_titles(model, tiny_tokenizer, [ranker.prompt(h) for h in histories], searched, trie=trie,
                            progress=False)
    narrow = ranker_of(model, tiny_tokenizer).rank([ranker.prompt(h) for h in histories], depth=50)
    for b in range(len(histories)):
        expected = list(dict.fromkeys(TITLES.index(t) for t in beams[b] if t in TITLES))[: CONSTRAINED.num_return_sequences]
        got = ranking.rows[b][ranking.rows[b] >= 0].tolist()
        assert got == expected and len(got) == CONSTRAINED.num_return_sequences
        assert len(got) >= int((narrow.rows[b] >= 0).sum())  # never fewer items than the narrow search
    # Settings stored with a model before the field existed read as the plain search.
    stored = ranking_settings("constrained").to_dict()
    del stored["search_beams"], stored["cutoff_len"]
    assert RankingSettings.from_dict(stored) == ranking_settings("constrained", cutoff_len=None)


def test_a_constrained_list_the_beams_leave_short_is_filled_with_popular_items(model, tiny_tokenizer):
    """backfill "popularity": the beams' items first, as without it (rows and scores), then the
    most frequent training items (ties by row) that are neither listed, in the history nor
    excluded, up to k, with no score (None when served). The reference: the plain ranking and a
    sort of the whole catalogue by count."""
    from dataclasses import replace

    counts = np.random.default_rng(0).integers(0, 5, len(TITLES))  # small counts: many ties
    filling = replace(ranking_settings("constrained"), backfill="popularity")
    ranker = Ranker(model, tiny_tokenizer, PromptBuilder.for_domain("movies"), IDS, TITLES, filling, popularity=counts)
    history, exclude, k = ["Heat", "Babe"], [IDS[int(np.argmax(counts))]], 12  # the most popular item excluded
    (plain,) = ranker_of(model, tiny_tokenizer).recommend([history], k=k, exclude=[exclude])
    (rec,) = ranker.recommend([history], k=k, exclude=[exclude])
    found = len(plain.item_ids)
    assert found <= CONSTRAINED.num_return_sequences < k and len(rec.item_ids) == k
    assert rec.item_ids[:found] == plain.item_ids and rec.scores[:found] == pytest.approx(plain.scores)
    gone = set(plain.item_ids) | set(exclude) | {IDS[TITLES.index(t)] for t in history}
    by_count = [IDS[r] for r in sorted(range(len(TITLES)), key=lambda r: (-counts[r], r)) if IDS[r] not in gone]
    assert rec.item_ids[found:] == by_count[: k - found] and rec.scores[found:] == [None] * (k - found)

    with pytest.raises(ValueError, match="backfill by popularity needs a training count per catalogue title"):
        Ranker(model, tiny_tokenizer, PromptBuilder.for_domain("movies"), IDS, TITLES, filling)
    stored = filling.to_dict()
    del stored["backfill"]  # a version registered before the field existed: its lists stay short
    assert RankingSettings.from_dict(stored).backfill == "none"


def ranker_of(model, tiny_tokenizer):
    return Ranker(model, tiny_tokenizer, PromptBuilder.for_domain("movies"), IDS, TITLES, ranking_settings("constrained"))


def test_ranker_runs_the_prompts_common_start_once(model, tiny_tokenizer):
    """A ranker keeps the keys/values of the prompts' common start (preamble, instruction, the
    history's introduction) from its first call: a later request's prompt pass runs only the
    tokens after it, and ranks as a fresh ranker does."""
    ranker = Ranker(model, tiny_tokenizer, PromptBuilder.for_domain("movies"), IDS, TITLES,
                    ranking_settings("constrained"))
    ranker.recommend([["Heat", "Babe"]], k=3)
    text = ranker.prompt(["Toy Story", "Seven"])
    tokens = tiny_tokenizer(text)["input_ids"]
    constant = tiny_tokenizer(ranker.prompts.factual(["Heat"]).split('"')[0])["input_ids"]  # up to the first title
    shapes: list[tuple] = []
    hook = model.get_input_embeddings().register_forward_hook(lambda m, a, o: shapes.append(tuple(a[0].shape)))
    try:
        ranking = ranker.rank([text], depth=3)
    finally:
        hook.remove()
    assert shapes[0][1] <= len(tokens) - len(constant)  # the prompt pass skipped the constant part
    fresh = Ranker(model, tiny_tokenizer, ranker.prompts, IDS, TITLES, ranking_settings("constrained"))
    np.testing.assert_array_equal(ranking.rows, fresh.rank([text], depth=3).rows)


def test_grounding_needs_embeddings(model, tiny_tokenizer):
    with pytest.raises(ValueError, match="one embedding per catalogue title"):
        Ranker(model, tiny_tokenizer, PromptBuilder.for_domain("movies"), IDS, TITLES, ranking_settings("grounding"))


def test_popularity_order_is_a_stable_sort_cut_short():
    """The first `size` rows by count, ties by row, less the never rows, for every size: the head
    of a stable sort of the whole catalogue (counts with many ties, so the cut often falls inside a
    run of equal counts)."""
    from cft_core.ranking import popularity_order

    counts = np.random.default_rng(3).integers(0, 4, 40)
    whole = np.argsort(-counts, kind="stable")
    for size in range(0, 43):
        assert popularity_order(counts, size).tolist() == whole[:size].tolist(), size
    assert popularity_order([2, 5, 5, 1, 5], 2).tolist() == [1, 2]  # by hand: the 5s, by row
    never = [int(r) for r in whole[:3]] + [int(whole[-1])]  # in the head and past it
    kept = [int(r) for r in whole if r not in never]
    for size in range(0, 40):
        assert popularity_order(counts, size, never).tolist() == kept[:size], size
    assert popularity_order([2, 5, 5, 1, 5], 2, never=[1]).tolist() == [2, 4]


def test_popularity_ranking_equals_sorting_the_whole_catalogue():
    """Each history's top `depth`: the catalogue by count (ties by row), less `never` and its
    excluded rows, written out as a sort of the whole catalogue per history; excluded rows in
    and beyond the head, repeated, none; depth past what is left."""
    from cft_core.ranking import popularity_ranking

    rng = np.random.default_rng(0)
    counts = rng.integers(0, 6, 50)  # many ties
    never = [3, 7]
    exclude = [[], [int(r) for r in np.argsort(-counts, kind="stable")[:8]], [1, 1, 2, 49, 0], list(range(50)),
               [int(r) for r in rng.integers(0, 50, 30)]]
    for depth in (1, 5, 45, 60):
        got = popularity_ranking(counts, len(exclude), depth, exclude, never=never)
        for b, ex in enumerate(exclude):
            kept = sorted((r for r in range(50) if r not in never and r not in ex), key=lambda r: (-counts[r], r))[:depth]
            assert got.rows[b].tolist() == kept + [-1] * (depth - len(kept)), (depth, b)
            assert np.array_equal(got.scores[b][: len(kept)], counts[kept].astype(float))
            assert np.isnan(got.scores[b][len(kept):]).all()
    unexcluded = popularity_ranking(counts, 2, 5, None, never=never)
    assert unexcluded.rows.tolist() == [sorted(set(range(50)) - set(never), key=lambda r: (-counts[r], r))[:5]] * 2


def test_transitions_count_each_pair_as_a_loop_would():
    from cft_core.ranking import Transitions

    rng = np.random.default_rng(1)
    previous, following = rng.integers(0, 12, 200), rng.integers(0, 12, 200)
    t = Transitions.count(previous, following, 12)
    for i in range(12):
        followers, times = t.of(i)
        expected = {}
        for p, f in zip(previous.tolist(), following.tolist(), strict=True):
            if p == i:
                expected[f] = expected.get(f, 0) + 1
        assert dict(zip(followers.tolist(), times.tolist(), strict=True)) == expected
        assert followers.tolist() == sorted(expected)
    empty = Transitions.count([5], [2], 8)  # items with no followers, past the last one too
    assert [empty.of(i)[0].tolist() for i in range(8)] == [[], [], [], [], [], [2], [], []]


def test_markov_order_is_kept_for_equal_counts_only():
    """`Transitions.in_markov_order` sorts once per counts array: a call with other counts (or
    the first counts again, after them) ranks as a fresh Transitions does."""
    from cft_core.ranking import Transitions, markov_ranking

    rng = np.random.default_rng(4)
    previous, following = rng.integers(0, 20, 200), rng.integers(0, 20, 200)
    t = Transitions.count(previous, following, 20)
    first, second = rng.integers(0, 3, 20), rng.integers(0, 3, 20)
    newest = [int(i) for i in previous[:6]]
    for counts in (first, second, first, second.copy()):
        fresh = markov_ranking(Transitions.count(previous, following, 20), counts, newest, 8)
        again = markov_ranking(t, counts, newest, 8)
        assert np.array_equal(again.rows, fresh.rows) and np.allclose(again.scores, fresh.scores)
    cached = t.in_markov_order(second)
    assert t.in_markov_order(second.copy())[0] is cached[0]  # equal counts: not sorted again


def test_markov_ranking_by_hand():
    """Five items; in training 0 was followed by 3 twice and by 1 and 4 once; counts make the
    popularity order 2, 4, 1, 3, 0."""
    from cft_core.ranking import Transitions, markov_ranking

    t = Transitions.count([0, 0, 0, 0, 2], [3, 1, 3, 4, 0], 5)
    counts = np.array([1, 3, 9, 2, 5])
    got = markov_ranking(t, counts, [0, -1, 4, 0], depth=5, exclude=[[], [], [], [3]])
    assert got.rows.tolist() == [[3, 4, 1, 2, 0],  # 3 (twice), then 4 and 1 (once each: 4 is more popular)
                                 [2, 4, 1, 3, 0],  # no newest item: the popularity order
                                 [2, 4, 1, 3, 0],  # 4 was never followed by anything: the same
                                 [4, 1, 2, 0, -1]]  # 3 excluded
    assert got.scores[0].tolist() == pytest.approx([2 + 2 / 10, 1 + 5 / 10, 1 + 3 / 10, 9 / 10, 1 / 10])


def test_markov_ranking_equals_sorting_the_whole_catalogue():
    """Each history's top `depth`: the catalogue sorted by (transitions from the newest item,
    count, row), less `never` and its excluded rows, written out per history; with followers
    inside and beyond the popularity head, excluded followers, never rows among the followers."""
    from cft_core.ranking import Transitions, markov_ranking, popularity_ranking

    rng = np.random.default_rng(2)
    n = 40
    previous, following = rng.integers(0, n, 300), rng.integers(0, n, 300)
    t = Transitions.count(previous, following, n)
    counts = rng.integers(0, 5, n)  # many ties
    never = [int(following[0]), 11]
    newest = [int(previous[0]), -1, int(previous[1]), int(previous[2]), int(previous[3])]
    exclude = [[], [1, 2], [int(r) for r in t.of(newest[2])[0][:2]], list(range(n)), [int(r) for r in rng.integers(0, n, 15)]]
    pairs = {}
    for p, f in zip(previous.tolist(), following.tolist(), strict=True):
        pairs[p, f] = pairs.get((p, f), 0) + 1
    for depth in (1, 4, 30, 50):
        got = markov_ranking(t, counts, newest, depth, exclude, never=never)
        for b, (item, ex) in enumerate(zip(newest, exclude, strict=True)):
            key = lambda r, item=item: (-pairs.get((item, r), 0), -counts[r], r)  # noqa: E731
            kept = sorted((r for r in range(n) if r not in never and r not in ex), key=key)[:depth]
            assert got.rows[b].tolist() == kept + [-1] * (depth - len(kept)), (depth, b)
            scores = got.scores[b][: len(kept)]
            assert (np.diff(scores) <= 0).all() and np.isnan(got.scores[b][len(kept):]).all()
    no_history = markov_ranking(t, counts, [-1, -1], 7, None, never=never)
    assert np.array_equal(no_history.rows, popularity_ranking(counts, 2, 7, None, never=never).rows)
