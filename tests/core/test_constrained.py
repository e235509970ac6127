"""The catalogue trie: its mask against a per-beam walk, and constrained beams on real catalogues."""

from __future__ import annotations

import random

import pytest
import torch

from cft_core.constrained import DEAD, TitleTrie, TrieLogitsProcessor
from cft_core.generation import GenerationSettings, generate_titles, response_token_ids
from cft_core.prompts import PromptBuilder
from cft_core.tiny import build_tiny_model, build_tiny_tokenizer
from tests.conftest import SHARED_DATA


def test_trie_mask_matches_a_per_beam_walk():
    rng = random.Random(0)
    seqs = [[rng.randrange(30) for _ in range(rng.randint(1, 6))] + [31] for _ in range(200)]
    trie = TitleTrie(seqs, vocab_size=32)
    prefixes = [s[: rng.randint(0, len(s) - 1)] for s in seqs[:50]] + [[99 % 32, 0, 0, 0]]
    width = max(len(p) for p in prefixes)
    for length in range(width + 1):
        rows = [p[:length] for p in prefixes if len(p) >= length]
        nodes = trie.walk(torch.tensor(rows, dtype=torch.long).reshape(len(rows), length))
        mask = trie.allowed_mask(nodes)
        for row, node, m in zip(rows, nodes.tolist(), mask, strict=True):
            nexts = {s[length] for s in seqs if len(s) > length and s[:length] == row}
            assert set(torch.nonzero(m).flatten().tolist()) == nexts
            assert (node == DEAD) == (not nexts and not any(s == row for s in seqs))


def reference_trie(seqs: list[list[int]]) -> tuple[dict[tuple, list[int]], dict[tuple, int], list[tuple]]:
    """The tree written plainly, a prefix per node: (prefix -> the tokens allowed after it, in
    order; prefix -> distinct sequence ends at or under it; each sequence's end, as its prefix)."""
    prefixes = {()} | {tuple(seq[:d]) for seq in seqs for d in range(1, len(seq) + 1)}
    allowed = {p: sorted({q[-1] for q in prefixes if len(q) == len(p) + 1 and q[:-1] == p}) for p in prefixes}
    ends = {tuple(seq) for seq in seqs}
    under = {p: sum(e[:len(p)] == p for e in ends) for p in prefixes}
    return allowed, under, [tuple(seq) for seq in seqs]


@pytest.mark.parametrize("seed", range(6))
def test_trie_is_the_tree_written_plainly(seed):
    """Every node of the vectorised build, named by its prefix (walked up its parents): the same
    nodes, tokens allowed after each (in the CSR and through the sorted edge keys), ends under each,
    and end of each sequence, as `reference_trie`. The sequences repeat, begin one another, and
    include an empty one; node ids are a depth-first numbering, each child after its parent."""
    rng = random.Random(seed)
    seqs = [[rng.randrange(5) for _ in range(rng.randint(1, 7))] for _ in range(rng.randint(1, 60))]
    seqs += [seqs[0], seqs[-1][:2], []] if seed % 2 else [seqs[0][:1]]
    trie = TitleTrie(seqs, vocab_size=8)
    allowed, under, ends = reference_trie(seqs)

    def prefix(node: int) -> tuple:
        out = []
        while node != 0:
            assert trie.parent[node] < node
            out.append(int(trie.token[node]))
            node = int(trie.parent[node])
        return tuple(reversed(out))

    names = [prefix(node) for node in range(trie.num_nodes)]
    assert sorted(names) == sorted(allowed) and len(set(names)) == trie.num_nodes
    for node, name in enumerate(names):
        csr = trie.allowed[trie.offsets[node]:trie.offsets[node + 1]].tolist()
        assert csr == allowed[name] and int(trie.ends_under[node]) == under[name]
        for tok in csr:  # the edge (node, tok) leads to the node named name + (tok,)
            child = trie.edge_child[torch.searchsorted(trie.edge_keys, node * 8 + tok)]
            assert names[int(child)] == (*name, tok)
    assert [names[e] for e in trie.end_of] == ends


def test_a_beam_with_nothing_allowed_may_only_end_never_decode_freely():
    """The processor's scores after each beam's generated tokens (prompt columns first): a live
    prefix keeps exactly its children, while a finished title (a leaf: its EOS is in the tree) and a
    prefix that left the tree get EOS alone, never the free vocabulary."""
    eos, vocab = 9, 10
    trie = TitleTrie([[1, 2, eos], [1, 3, eos], [4, eos]], vocab_size=vocab)
    prompt = [7, 7]  # two prompt columns, skipped by prompt_length
    generated = [[], [1], [1, 2], [1, 2, eos], [5], [1, 4]]  # root, live, live, leaf, off the tree x 2
    allowed = []  # rows of different lengths: one call each
    for g in generated:
        scores = TrieLogitsProcessor(trie, len(prompt), eos)(torch.tensor([prompt + g]), torch.zeros(1, vocab))
        assert torch.isin(scores, torch.tensor([0.0, float("-inf")])).all()
        allowed.append(set(torch.nonzero(scores[0] == 0).flatten().tolist()))
    assert allowed == [{1, 4}, {2, 3}, {eos}, {eos}, {eos}, {eos}]


def _reachable(trie: TitleTrie, eos: int, banned, prefix=()) -> set[tuple[int, ...]]:
    """Every whole sequence (ending in EOS) a beam can spell under the processor's mask, by a
    depth-first walk that asks the processor, one prefix at a time, what may come next."""
    processor = TrieLogitsProcessor(trie, 0, eos, [banned], num_beams=1)
    scores = processor(torch.tensor([list(prefix)], dtype=torch.long).reshape(1, len(prefix)),
                       torch.zeros(1, trie.vocab_size))
    found = set()
    for tok in torch.nonzero(scores[0] == 0).flatten().tolist():
        if tok == eos:
            found.add((*prefix, tok))
        else:
            found |= _reachable(trie, eos, banned, (*prefix, tok))
    return found


def test_banned_edges_leave_exactly_the_titles_not_excluded():
    """Excluding sequences (some shared by two items, some prefixes of others) leaves every other
    sequence reachable and none of the excluded, for many random exclusion sets."""
    rng = random.Random(1)
    eos = 31
    seqs = [[rng.randrange(4) for _ in range(rng.randint(1, 4))] + [eos] for _ in range(40)]
    seqs += [seqs[3], seqs[3][:1] + [eos]]  # a duplicate and a prefix of another title
    trie = TitleTrie(seqs, vocab_size=32)
    everything = {tuple(s) for s in seqs}
    assert _reachable(trie, eos, []) == everything
    for trial in range(60):
        excluded = rng.sample(range(len(seqs)), rng.randint(1, len(seqs)))
        banned = trie.banned_edges(trie.end_of[i] for i in excluded)
        left = everything - {tuple(seqs[i]) for i in excluded}
        assert _reachable(trie, eos, banned) == (left or {(eos,)}), trial  # none left: an empty ending only
    # Everything excluded: nothing but an empty ending is left (a beam the caller drops).
    assert _reachable(trie, eos, trie.banned_edges(trie.end_of)) == {(eos,)}
    assert trie.banned_edges([]) == []


def test_banned_edges_apply_to_their_own_prompts_beams_only():
    eos, vocab = 9, 10
    trie = TitleTrie([[1, 2, eos], [1, 3, eos], [4, eos]], vocab_size=vocab)
    banned = [trie.banned_edges([trie.end_of[0]]), [], trie.banned_edges([trie.end_of[2]])]
    processor = TrieLogitsProcessor(trie, 0, eos, banned, num_beams=2)
    rows = torch.tensor([[1], [4], [1], [4], [1], [1]])  # prompt-major: 3 prompts x 2 beams
    scores = processor(rows, torch.zeros(6, vocab))
    allowed = [set(torch.nonzero(r == 0).flatten().tolist()) for r in scores]
    assert allowed == [{3}, {eos}, {2, 3}, {eos}, {2, 3}, {2, 3}]
    root = processor(torch.zeros(6, 0, dtype=torch.long), torch.zeros(6, vocab))
    assert [set(torch.nonzero(r == 0).flatten().tolist()) for r in root] == [{1, 4}] * 4 + [{1}] * 2


def _catalogue(name: str) -> list[str]:
    if name == "cjk":  # Japanese, Chinese and Korean product titles: each character several byte-level tokens
        brands = ["任天堂", "ソニー", "小米", "华为", "삼성", "パナソニック", "东芝", "엘지"]
        things = ["スイッチ 有機ELモデル", "ワイヤレスイヤホン", "手环 8", "智能手表", "갤럭시 버즈", "電動歯ブラシ",
                  "空气净化器", "노트북 15인치", "ゲームソフト『ゼルダの伝説』", "充電器（急速）"]
        extras = ["", " ブラック", " 白色", " 2個セット", " (2023)", " 블루"]
        titles = [f"{b} {t}{e}" for b in brands for t in things for e in extras]
        random.Random(0).shuffle(titles)
        return titles[:300]
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not available")
    if name == "video_games":
        path = SHARED_DATA / "bigrec_video_games_titles" / "id2name.txt"
        titles = [line.rsplit("\t", 1)[0] for line in path.read_text(encoding="utf-8").splitlines()]
    else:
        path = next((SHARED_DATA / "amazon18_minionerec" / "info").glob("*.txt"))
        titles = [line.split("\t")[1] for line in path.read_text(encoding="utf-8").splitlines()]
    return titles


@pytest.mark.parametrize(("name", "vocab_size"), [("video_games", 2000), ("industrial", 2000), ("cjk", 2000),
                                                 ("cjk", 300)])  # (300: CJK characters stay split into bytes)
def test_constrained_beams_are_catalogue_titles(name, vocab_size):
    titles = _catalogue(name)
    prompts = PromptBuilder.for_domain("games" if name == "video_games" else "products")
    texts = titles + [prompts.factual(titles[i : i + 10]) for i in range(0, 200, 10)] + [prompts.counterfactual()]
    tokenizer = build_tiny_tokenizer(texts, vocab_size=vocab_size)
    responses = response_token_ids(tokenizer, prompts, titles)
    trie = TitleTrie(responses, vocab_size=len(tokenizer))
    model = build_tiny_model(len(tokenizer), hidden_size=32, seed=2)
    settings = GenerationSettings(num_beams=4, num_return_sequences=4, batch_size=3, min_new_tokens=4,
                                  max_new_tokens=max(len(r) for r in responses), length_penalty=0.0)
    histories = [titles[5:8], titles[100:110], titles[min(2000, len(titles) - 1):][:1]]
    beams = generate_titles(model, tokenizer, [prompts.factual(h) for h in histories], settings, trie=trie,
                            progress=False)
    catalogue = {t.strip() for t in titles}
    assert len(beams) == 3 and all(len(b) == 4 for b in beams)
    for row in beams:
        assert len(set(row)) == 4  # distinct beams
        for title in row:
            assert title in catalogue, title
