"""Evaluation stage: a model folder + a split + the catalogue -> HR/NDCG@K over the full catalogue.

    <run_dir>/evaluation/<split>-<fingerprint>/
        metrics.json        every metric, flat: "<method>/<metric>", e.g. "grounding_adjusted/NDCG@10"
        predictions.parquet per example: its split_row (position in the split file), history,
                            target, generated beams, top-10 items per method
        diagnostics.parquet per diagnosed example (eval.diagnostics): split_row, user, target,
                            teacher-forced log-likelihoods with and without the history
        popularity.json     share of history items and of top-K recommendations per popularity group
        summary.json        split, rows, the sequences folder (the data window: its rows and item
                            ids), catalogue size, and the wall-clock seconds of each method
                            (its no-history ranking included), the diagnostics and the whole stage
        plots/*.png

Methods (cft-method.md, section 3): `grounding_original` / `grounding_adjusted` (free beam
search + L2 grounding), `constrained` (trie-constrained beams, exact match), each also with the
history removed (`nohist_...`: the history-reliance diagnostic), and `most_popular` (the
training split's most frequent items, the same list for everyone) for context.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from schemas.config import PipelineConfig
from schemas.errors import DataError
from tasks.storage import atomic_dir, fingerprint, with_code_versions
from tasks.training import (
    MANY_EVAL_RECORDS,
    MANY_RANKED_RECORDS,
    read_records,
    warn_if_uncapped_split_is_long,
)

TOP_K_MAX = 50  # rankings are kept to the largest K reported

# Code versions in the keys of the folders below. Bump EVALUATION_VERSION when `evaluate` writes
# something else for the same model, data and settings (the ranking, the metrics, the diagnostics,
# the baselines), and EMBEDDINGS_VERSION when the catalogue's title embeddings change
# (`cft_core.ranking.embed_titles`): folders written before are then computed afresh instead of
# being reused as if current. tests/train/test_evaluation_content.py pins each version's output.
# Version 1 was never in a key, so what was written before these constants stays reused.
# 2: beam search no longer takes fields from the model folder's generation_config.json (an
#    Instruct model's repetition_penalty re-ranked the beams); same output for models without them.
# 3: constrained search takes the items it must not yield (placeholder titles such as ML-100K's
#    "unknown"; in serving the history and `exclude` too) out of the title tree, instead of
#    dropping their beams afterwards, which left fewer items; the same where no beam was one.
# 4: a ranked prompt holds only the newest history titles that fit train.cutoff_len tokens, as
#    training's records do (before: all of the last max_history, however long); the same output
#    wherever those fit.
# 5: the Markov-chain baseline (`markov/...` metrics, `markov_top10`/`markov_rank` columns), which
#    the gate's floor needs on every gate row; everything else the same.
# 6: a constrained list the beams leave short is filled with the most frequent training items where
#    eval.backfill is popularity (the default), up to TOP_K_MAX; with backfill none, version 5's output.
EVALUATION_VERSION = 6
EMBEDDINGS_VERSION = 1


@dataclass(frozen=True)
class EvalOutput:
    path: Path  # the evaluation folder (layout above)
    metrics: dict[str, float]
    reused: bool

    @cached_property
    def summary(self) -> dict:
        """`summary.json` (read once): split, examples, catalogue, model_dir, seconds."""
        return json.loads((self.path / "summary.json").read_text())

    @property
    def split(self) -> str:
        return self.summary["split"]

    @property
    def rows(self) -> int:
        return self.summary["examples"]

    @property
    def diagnostics(self) -> dict[str, float]:
        """{name: mean, name_ci_low, name_ci_high, rows} of `diagnostics.json` ({} when off)."""
        path = self.path / "diagnostics.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    @property
    def seconds(self) -> dict[str, float]:
        """{part: wall-clock seconds} of the run that computed this folder, "total" included ({}
        for folders written before evaluations recorded them)."""
        return self.summary.get("seconds", {})


def seconds_text(seconds: dict[str, float]) -> str:
    """One line: "evaluation took 63.8 s (constrained 25.4 s, diagnostics 38.1 s)"."""
    if not seconds:
        return "evaluation time: not recorded"
    parts = ", ".join(f"{part} {t:.1f} s" for part, t in seconds.items() if part != "total")
    return f"evaluation took {seconds['total']:.1f} s ({parts})"


DIAGNOSTICS = ("history_effect", "history_effect_per_token", "target_nll")  # cft_core.diagnostics


def diagnostics_text(d: dict[str, float]) -> str:
    """One line: each diagnostic with its 95 % interval (what the CLI and the artifacts print)."""
    if not d:
        return "diagnostics: off (eval.diagnostics)"
    parts = [f"{name.replace('_', ' ')} {d[name]:+.4f} [{d[name + '_ci_low']:+.4f}, {d[name + '_ci_high']:+.4f}]"
             for name in DIAGNOSTICS]
    return f"diagnostics on {int(d['rows']):,} rows (95 % CI): " + "; ".join(parts)


def run_diagnostics(cfg: PipelineConfig, model, tokenizer, sequences: Path) -> tuple[pd.DataFrame, dict[str, float]]:
    """Per-row teacher-forced log-likelihoods of the split (`cft_core.diagnostics`) and their
    summary: the mean of each diagnostic with its 95 % bootstrap interval."""
    from cft_core.diagnostics import label_likelihoods
    from cft_core.metrics import bootstrap_ci
    from cft_core.prompts import PromptBuilder

    e = cfg.eval
    path = sequences / f"{e.split}.parquet"
    warn_if_uncapped_split_is_long(path, e.diagnostics_max_samples, MANY_EVAL_RECORDS, "the diagnostics pass",
                                   "eval.diagnostics_max_samples")
    rows = read_records(path, e.diagnostics_max_samples, e.seed)
    ll = label_likelihoods(model, tokenizer, PromptBuilder.for_domain(cfg.data.domain), rows, e.batch_size,
                           cfg.train.cutoff_len)
    table = pd.DataFrame({"split_row": [r["split_row"] for r in rows], "user_id": [r["user_id"] for r in rows],
                          "target_item_id": [r["target_item_id"] for r in rows],
                          "occurrence": [r["occurrence"] for r in rows],
                          "logp_factual": ll.factual, "logp_counterfactual": ll.counterfactual,
                          "label_tokens": ll.tokens.astype(int)})
    summary: dict[str, float] = {"rows": len(rows)}
    for name in DIAGNOSTICS:
        mean, low, high = bootstrap_ci(getattr(ll, name), seed=e.seed)
        summary |= {name: mean, f"{name}_ci_low": low, f"{name}_ci_high": high}
    return table, summary


HEADLINE_KS = (5, 10, 20)  # the cut-offs tables show (metrics.json holds every K)


def metrics_rows(metrics: dict[str, float], ks) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of HR/NDCG at the headline Ks per method: the one metrics table that the
    CLI, the Prefect artifact and the model card print."""
    shown = [k for k in HEADLINE_KS if k in ks]
    header = ["method"] + [f"{n}@{k}" for k in shown for n in ("HR", "NDCG")]
    def cell(key: str) -> str:
        return f"{metrics[key]:.4f}" if key in metrics else "-"

    rows = [[m] + [cell(f"{m}/{n}@{k}") for k in shown for n in ("HR", "NDCG")]
            for m in sorted({key.split("/")[0] for key in metrics})]
    return header, rows


def metrics_table(metrics: dict[str, float], ks) -> str:
    """`metrics_rows` as a Markdown table."""
    header, rows = metrics_rows(metrics, ks)
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                     + ["| " + " | ".join(r) + " |" for r in rows])


def popularity_groups(counts: np.ndarray, groups: int) -> np.ndarray:
    """Group id 0 (least popular) .. groups-1 (most) per item id: equal-sized item groups by
    training frequency `counts` [I] (ties broken by item id, so the split is deterministic)."""
    num_items = len(counts)
    order = np.lexsort((np.arange(num_items), counts))  # ascending popularity
    group = np.empty(num_items, dtype=np.int64)
    group[order] = np.arange(num_items) * groups // num_items
    return group


def model_fingerprint(model_dir: Path) -> str:
    """Identity of a model folder's weights: its path, and the size and time of each safetensors
    file (one, or a large model's shards)."""
    from cft_core.model_sources import weight_files

    files = weight_files(model_dir)
    if [f.name for f in files] == ["model.safetensors"]:  # the key it always had: existing evaluations stay reused
        st = files[0].stat()
        return fingerprint({"model": str(model_dir.resolve()), "size": st.st_size, "mtime": st.st_mtime_ns})
    return fingerprint({"model": str(model_dir.resolve()),
                        "files": [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]})


def factual_prompt(ranker, record: dict, split_file: Path) -> str:
    """`Ranker.prompt` of a record's history; DataError naming the split row whose newest history
    title alone makes a longer prompt than train.cutoff_len (training would not fit it either)."""
    from cft_core.ranking import InputError

    try:
        return ranker.prompt(record["history_titles"])
    except InputError as e:
        raise DataError(f"{split_file}, row {record['split_row']}: the history: {e}") from None


def evaluation_dir(cfg: PipelineConfig, model_dir: Path, sequences: Path) -> Path:
    """Output folder of `evaluate`: named by the eval settings, the records, the model and the
    code versions of the evaluation and of the embeddings its grounding ranks with."""
    fp = fingerprint(with_code_versions({
        "eval": cfg.eval.model_dump(), "data": sequences.name, "model": model_fingerprint(model_dir),
        "domain": cfg.data.domain, "max_history": cfg.data.max_history, "cutoff_len": cfg.train.cutoff_len},
        evaluation=EVALUATION_VERSION, embeddings=EMBEDDINGS_VERSION))
    return model_dir.parent / "evaluation" / f"{cfg.eval.split}-{fp}"


def embeddings_cache(model_dir: Path, sequences: Path, precision: str) -> Path:
    """Where the catalogue's title embeddings of this model are kept (.npy, no pickle): beside the
    model, as its evaluations are, so that they go when its training folder goes (`cft gc`).
    Keyed by everything that changes them: the weights, the catalogue, the precision they ran at
    and the code version that computed them."""
    key = fingerprint(with_code_versions({"model": model_fingerprint(model_dir), "catalogue": sequences.name,
                                          "precision": precision}, embeddings=EMBEDDINGS_VERSION))
    return model_dir.parent / "embeddings" / f"{key}.npy"


def load_model(model_dir: Path, precision: str):
    """(model on the best device at `precision`, tokenizer) from a model folder (safetensors)."""
    import torch

    from cft_core.model_sources import check_tokenizer_fits, load_causal_lm, load_tokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    model, tokenizer = load_causal_lm(model_dir, dtype=dtype), load_tokenizer(model_dir)
    check_tokenizer_fits(model, tokenizer, model_dir)
    return model.to(device).eval(), tokenizer


def catalogue_embeddings(model, tokenizer, titles: list[str], cache: Path, progress: bool = False):
    """FloatTensor[I, D] of the catalogue titles (BIGRec grounding), computed once per model,
    catalogue and precision, and cached at `cache`."""
    import torch

    from cft_core.ranking import embed_titles

    if cache.is_file():
        return torch.from_numpy(np.load(cache, allow_pickle=False))
    emb = embed_titles(model, tokenizer, titles, progress=progress)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp.npy")
    np.save(tmp, emb.numpy(), allow_pickle=False)
    tmp.replace(cache)
    return emb


def read_catalogue(sequences: Path) -> pd.DataFrame:
    """The catalogue (item_id 0..N-1, title), in item id order."""
    catalogue = pq.read_table(sequences / "catalogue.parquet").to_pandas().sort_values("item_id")
    if catalogue["item_id"].tolist() != list(range(len(catalogue))):
        raise DataError(f"{sequences / 'catalogue.parquet'}: item ids are not 0..N-1")
    return catalogue


def ensure_catalogue_embeddings(cfg: PipelineConfig, model_dir: Path, sequences: Path) -> Path:
    """The cache file of `catalogue_embeddings` at the configured precision, computing it if the
    evaluation did not (the served model ships it)."""
    from tasks.settings import ranking_settings

    precision = ranking_settings(cfg, "grounding").precision
    cache = embeddings_cache(model_dir, sequences, precision)
    if not cache.is_file():
        model, tokenizer = load_model(model_dir, precision)
        catalogue_embeddings(model, tokenizer, read_catalogue(sequences)["title"].tolist(), cache)
    return cache


def make_ranker(cfg: PipelineConfig, method: str, model, tokenizer, sequences: Path, model_dir: Path,
                titles: list[str], counts: np.ndarray, progress: bool = False):
    """The `cft_core.ranking.Ranker` of this run's settings for `method` over the catalogue
    `titles` (item ids 0..N-1, as `read_catalogue` gives them); `counts` [I]: the window's training
    counts (`window_counts`), which a backfilled ranking fills by."""
    from cft_core.prompts import PromptBuilder
    from cft_core.ranking import Ranker
    from tasks.settings import ranking_settings

    settings = ranking_settings(cfg, method)
    emb = None
    if method == "grounding":
        emb = catalogue_embeddings(model, tokenizer, titles, embeddings_cache(model_dir, sequences,
                                                                              settings.precision), progress)
    popularity = counts if settings.backfill == "popularity" else None
    return Ranker(model, tokenizer, PromptBuilder.for_domain(cfg.data.domain), list(range(len(titles))), titles,
                  settings, emb, popularity)


def evaluate(cfg: PipelineConfig, model_dir: Path, sequences: Path, *, progress: bool = True) -> EvalOutput:
    """Evaluate `model_dir` on `cfg.eval.split` of `sequences`."""
    e = cfg.eval
    out_dir = evaluation_dir(cfg, model_dir, sequences)
    if (out_dir / "metrics.json").is_file():
        return EvalOutput(out_dir, json.loads((out_dir / "metrics.json").read_text()), True)

    from cft_core.metrics import item_hit_ranks, ranking_metrics, title_ids
    from cft_core.ranking import Catalogue, markov_ranking, popularity_ranking
    from tasks.baselines import EVALUATION_NAMES, window_counts
    from tasks.settings import ranking_settings

    started = time.perf_counter()
    seconds: dict[str, float] = {}  # wall-clock seconds per part, into summary.json and MLflow
    path = sequences / f"{e.split}.parquet"
    warn_if_uncapped_split_is_long(path, e.max_samples, MANY_RANKED_RECORDS, "ranking (a beam search each)",
                                   "eval.max_samples (the gate's: registry.gate_max_samples)")
    rows = read_records(path, e.max_samples, e.seed)
    if not rows:
        raise DataError(f"{sequences / (e.split + '.parquet')} holds no records to evaluate")
    titles = read_catalogue(sequences)["title"].tolist()
    title_of_item, table = title_ids(titles)
    target_tid = np.array([table[r["target_title"]] for r in rows])
    ks = sorted(set(e.ks))
    model, tokenizer = load_model(model_dir, ranking_settings(cfg, "grounding").precision)

    metrics: dict[str, float] = {}
    preds = pd.DataFrame({
        "split_row": [r["split_row"] for r in rows],
        "user_id": [r["user_id"] for r in rows],
        "history_titles": [list(r["history_titles"]) for r in rows],
        "history_item_ids": [list(r["history_item_ids"]) for r in rows],
        "target_item_id": [r["target_item_id"] for r in rows],
        "occurrence": [r["occurrence"] for r in rows],
        "target_title": [r["target_title"] for r in rows],
    })
    top_lists: dict[str, np.ndarray] = {}
    counts, transitions = window_counts(sequences)  # the backfill's order and the baselines' counts

    def record(name: str, ranked_items: np.ndarray) -> None:
        """ranked_items [B, L] item ids (-1 = none) -> metrics and the top-10 column."""
        ranks = item_hit_ranks(ranked_items, title_of_item, target_tid)
        for key, value in ranking_metrics(ranks, ks).items():
            metrics[f"{name}/{key}"] = value
        preds[f"{name}_top10"] = [[int(i) for i in r[:10] if i >= 0] for r in ranked_items]
        preds[f"{name}_rank"] = ranks
        top_lists[name] = ranked_items

    for method in e.methods:
        method_started = time.perf_counter()
        ranker = make_ranker(cfg, method, model, tokenizer, sequences, model_dir, titles, counts, progress)
        variants = [("", [factual_prompt(ranker, r, sequences / f"{e.split}.parquet") for r in rows])]
        if e.history_reliance:  # the same ranking without the history: what CFT should widen
            variants.append(("nohist_", [ranker.prompts.counterfactual()] * len(rows)))
        for prefix, texts in variants:
            ranking = ranker.rank(texts, TOP_K_MAX, progress=progress)
            if method == "grounding":
                if not prefix:
                    preds["generated"] = ranking.beams
                record(f"{prefix}grounding_original", ranking.original)
                record(f"{prefix}grounding_adjusted", ranking.rows)
            else:
                if not prefix:
                    preds["constrained_generated"] = ranking.beams
                record(f"{prefix}constrained", ranking.rows)
        seconds[method] = time.perf_counter() - method_started  # with the no-history ranking

    diagnostics = None
    if e.diagnostics:
        diagnostics_started = time.perf_counter()
        diagnostics = run_diagnostics(cfg, model, tokenizer, sequences)
        seconds["diagnostics"] = time.perf_counter() - diagnostics_started

    # The simple baselines, as their registered versions serve (tasks/baselines.py), and the
    # popularity analysis.
    never = Catalogue(range(len(titles)), titles).never  # placeholder titles: never recommended
    record(EVALUATION_NAMES["popularity"], popularity_ranking(counts, len(rows), TOP_K_MAX, never=never).rows)
    newest = [r["history_item_ids"][-1] for r in rows]
    record(EVALUATION_NAMES["markov"],
           markov_ranking(transitions, counts, newest, TOP_K_MAX, never=never).rows)
    if e.sasrec:
        from cft_core.sasrec import SASRecSettings, sasrec_rank, train_sasrec

        train = pq.read_table(sequences / "train.parquet", columns=["history_item_ids", "target_item_id"]).to_pydict()
        sasrec = train_sasrec(train["history_item_ids"], train["target_item_id"], len(titles),
                              SASRecSettings(max_len=cfg.data.max_history, seed=e.seed))
        record("sasrec", sasrec_rank(sasrec, [r["history_item_ids"] for r in rows], TOP_K_MAX))
    group = popularity_groups(counts, e.popularity_groups)
    hist_items = np.concatenate([np.asarray(r["history_item_ids"], dtype=np.int64) for r in rows])
    popularity = {"groups": e.popularity_groups, "history": _shares(group[hist_items], e.popularity_groups)}
    for name, ranked in top_lists.items():
        top = ranked[:, :10]
        popularity[f"{name}/top10"] = _shares(group[top[top >= 0]], e.popularity_groups)

    with atomic_dir(out_dir) as tmp:
        (tmp / "plots").mkdir()
        preds.to_parquet(tmp / "predictions.parquet", index=False)
        (tmp / "popularity.json").write_text(json.dumps(popularity, indent=1))
        _plots(metrics, popularity, ks, tmp / "plots", f"{e.split} split, {len(rows):,} rows")
        # total: from reading the split to here (model loading and the baselines included)
        seconds["total"] = time.perf_counter() - started
        summary = {"split": e.split, "examples": len(rows), "sequences": sequences.name, "catalogue": len(titles),
                   "model_dir": str(model_dir),
                   # how each method ranked (beams, backfill, precision, ...): `cft compare` names the differences
                   "ranking": {method: ranking_settings(cfg, method).to_dict() for method in e.methods},
                   "seconds": {part: round(t, 2) for part, t in seconds.items()}}
        (tmp / "summary.json").write_text(json.dumps(summary, indent=1))
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True))
        if diagnostics is not None:
            diagnostics[0].to_parquet(tmp / "diagnostics.parquet", index=False)
            (tmp / "diagnostics.json").write_text(json.dumps(diagnostics[1], indent=1))
    del model
    return EvalOutput(out_dir, metrics, False)


def _shares(groups: np.ndarray, n: int) -> list[float]:
    c = np.bincount(groups, minlength=n).astype(float)
    return (c / max(c.sum(), 1.0)).round(6).tolist()


def _plots(metrics: dict[str, float], popularity: dict, ks: list[int], folder: Path, what: str) -> None:
    """metrics_at_k.png and popularity.png, titled with `what` (split and row count)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = sorted({k.split("/")[0] for k in metrics})
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, name in zip(axes, ("NDCG", "HR"), strict=True):
        for m in methods:
            ax.plot(ks, [metrics[f"{m}/{name}@{k}"] for k in ks], marker="o", label=m)
        ax.set_xscale("log")
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_xlabel("K")
        ax.set_title(f"{name}@K ({what})")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(folder / "metrics_at_k.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    keys = ["history"] + [k for k in popularity if k.endswith("/top10")]
    width = 0.8 / len(keys)
    x = np.arange(popularity["groups"])
    for i, k in enumerate(keys):
        ax.bar(x + i * width, popularity[k], width, label=k)
    ax.set_xlabel("popularity group (0 = least popular items)")
    ax.set_ylabel("share")
    ax.set_title(f"popularity of history and top-10 items ({what})")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(folder / "popularity.png", dpi=100)
    plt.close(fig)
