"""Evaluation stage: a model folder + a split + the catalogue -> HR/NDCG@K over the full catalogue.

    <run_dir>/evaluation/<split>-<fingerprint>/
        metrics.json        every metric, flat: "<method>/<metric>", e.g. "grounding_adjusted/NDCG@10"
        predictions.parquet per example: history, target, generated beams, top-10 items per method
        popularity.json     share of history items and of top-K recommendations per popularity group
        plots/*.png

Methods (cft-method.md, section 3): `grounding_original` / `grounding_adjusted` (free beam
search + L2 grounding), `constrained` (trie-constrained beams, exact match), each also with the
history removed (`nohist_...`: the history-reliance diagnostic), and `most_popular` (the
training split's most frequent items, the same list for everyone) for context.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from schemas.config import PipelineConfig
from tasks.storage import atomic_dir, fingerprint
from tasks.training import read_records

TOP_K_MAX = 50  # rankings are kept to the largest K reported


@dataclass(frozen=True)
class EvalOutput:
    path: Path
    metrics: dict[str, float]
    reused: bool


def popularity_groups(train_targets: np.ndarray, num_items: int, groups: int) -> np.ndarray:
    """Group id 0 (least popular) .. groups-1 (most) per item id: equal-sized item groups by
    training frequency (ties broken by item id, so the split is deterministic)."""
    counts = np.bincount(train_targets, minlength=num_items)
    order = np.lexsort((np.arange(num_items), counts))  # ascending popularity
    group = np.empty(num_items, dtype=np.int64)
    group[order] = np.arange(num_items) * groups // num_items
    return group


def _model_fingerprint(model_dir: Path) -> str:
    st = (model_dir / "model.safetensors").stat()
    return fingerprint({"model": str(model_dir.resolve()), "size": st.st_size, "mtime": st.st_mtime_ns})


def evaluation_dir(cfg: PipelineConfig, model_dir: Path, sequences: Path) -> Path:
    """Output folder of `evaluate`: named by the eval settings, the records and the model."""
    fp = fingerprint({"eval": cfg.eval.model_dump(), "data": sequences.name, "model": _model_fingerprint(model_dir),
                      "domain": cfg.data.domain})
    return model_dir.parent / "evaluation" / f"{cfg.eval.split}-{fp}"


def embeddings_cache(cfg: PipelineConfig, model_dir: Path, sequences: Path) -> Path:
    """Where the catalogue's title embeddings of this model are kept (.npy, no pickle)."""
    return cfg.data.data_root / "embeddings" / f"{_model_fingerprint(model_dir)}-{sequences.name}.npy"


def catalogue_embeddings(model, tokenizer, titles: list[str], cache: Path, progress: bool = False):
    """FloatTensor[I, D] of the catalogue titles (BIGRec grounding), computed once per model and
    catalogue and cached at `cache`."""
    import torch

    from cft_core.grounding import embed_texts

    if cache.is_file():
        return torch.from_numpy(np.load(cache, allow_pickle=False))
    emb = embed_texts(model, tokenizer, titles, batch_size=64, progress=progress)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp.npy")
    np.save(tmp, emb.numpy(), allow_pickle=False)
    tmp.replace(cache)
    return emb


def ensure_catalogue_embeddings(cfg: PipelineConfig, model_dir: Path, sequences: Path) -> Path:
    """The cache file of `catalogue_embeddings`, computing it if the evaluation did not."""
    cache = embeddings_cache(cfg, model_dir, sequences)
    if not cache.is_file():
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        catalogue = pq.read_table(sequences / "catalogue.parquet").to_pandas().sort_values("item_id")
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, use_safetensors=True)
        catalogue_embeddings(model, AutoTokenizer.from_pretrained(model_dir), catalogue["title"].tolist(), cache)
    return cache


def evaluate(cfg: PipelineConfig, model_dir: Path, sequences: Path, *, progress: bool = True) -> EvalOutput:
    """Evaluate `model_dir` on `cfg.eval.split` of `sequences`."""
    e = cfg.eval
    out_dir = evaluation_dir(cfg, model_dir, sequences)
    if (out_dir / "metrics.json").is_file():
        return EvalOutput(out_dir, json.loads((out_dir / "metrics.json").read_text()), True)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cft_core.constrained import TitleTrie
    from cft_core.generation import GenerationSettings, generate_titles, response_token_ids
    from cft_core.grounding import embed_texts, interleave_dedup, l2_topk
    from cft_core.metrics import first_hit_ranks, ranking_metrics, title_ids
    from cft_core.prompts import PromptBuilder

    rows = read_records(sequences / f"{e.split}.parquet", e.max_samples, e.seed)
    if not rows:
        raise ValueError(f"{sequences / (e.split + '.parquet')} holds no records to evaluate")
    catalogue = pq.read_table(sequences / "catalogue.parquet").to_pandas().sort_values("item_id")
    titles = catalogue["title"].tolist()
    if catalogue["item_id"].tolist() != list(range(len(titles))):
        raise ValueError(f"{sequences / 'catalogue.parquet'}: item ids are not 0..N-1")
    title_of_item, table = title_ids(titles)
    target_tid = np.array([table[r["target_title"]] for r in rows])
    ks = sorted(set(e.ks))

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, use_safetensors=True).to(device).eval()
    prompts = PromptBuilder.for_domain(cfg.data.domain)
    settings = GenerationSettings(e.num_beams, min(e.num_return_sequences, e.num_beams), e.min_new_tokens,
                                  e.max_new_tokens, e.length_penalty, e.batch_size)

    metrics: dict[str, float] = {}
    preds = pd.DataFrame({
        "user_id": [r["user_id"] for r in rows],
        "history_titles": [list(r["history_titles"]) for r in rows],
        "target_item_id": [r["target_item_id"] for r in rows],
        "target_title": [r["target_title"] for r in rows],
    })
    top_lists: dict[str, np.ndarray] = {}

    def record(name: str, ranked_items: np.ndarray) -> None:
        """ranked_items [B, L] item ids (-1 = none) -> metrics and the top-10 column."""
        ranked_tid = np.where(ranked_items >= 0, title_of_item[np.maximum(ranked_items, 0)], -1)
        ranks = first_hit_ranks(ranked_tid, target_tid)
        for key, value in ranking_metrics(ranks, ks).items():
            metrics[f"{name}/{key}"] = value
        preds[f"{name}_top10"] = [[int(i) for i in r[:10] if i >= 0] for r in ranked_items]
        preds[f"{name}_rank"] = ranks
        top_lists[name] = ranked_items

    variants = [("", [prompts.factual(r["history_titles"]) for r in rows])]
    if e.history_reliance:
        variants.append(("nohist_", [prompts.counterfactual()] * len(rows)))

    def generate_unique(model, texts: list[str], trie=None) -> list[list[str]]:
        """Beam search is deterministic: generate each distinct prompt once (the no-history
        prompt is the same for every row, so that variant costs one generation)."""
        unique = list(dict.fromkeys(texts))
        beams = dict(zip(unique, generate_titles(model, tokenizer, unique, settings, trie=trie, progress=progress),
                         strict=True))
        return [beams[t] for t in texts]

    if "grounding" in e.methods:
        item_emb = catalogue_embeddings(model, tokenizer, titles, embeddings_cache(cfg, model_dir, sequences), progress)
        for prefix, texts in variants:
            beams = generate_unique(model, texts)
            if not prefix:
                preds["generated"] = beams
            width = settings.num_return_sequences
            flat = [t for b in beams for t in b]
            emb = embed_texts(model, tokenizer, flat, batch_size=64)
            per_beam = l2_topk(emb.to(item_emb.dtype), item_emb, TOP_K_MAX).numpy().reshape(len(rows), width, -1)
            record(f"{prefix}grounding_original", per_beam[:, 0])
            record(f"{prefix}grounding_adjusted", interleave_dedup(per_beam, TOP_K_MAX))

    if "constrained" in e.methods:
        trie = TitleTrie(response_token_ids(tokenizer, prompts, titles), vocab_size=len(tokenizer))
        by_title = {t.strip(): table[t] for t in titles}
        first_item = {tid: i for i, tid in reversed(list(enumerate(title_of_item)))}
        for prefix, texts in variants:
            beams = generate_unique(model, texts, trie)
            if not prefix:
                preds["constrained_generated"] = beams
            ranked = np.array([[first_item[by_title[t]] if t in by_title else -1 for t in b] for b in beams])
            # A hypothesis can come back twice (once per length at which it emitted EOS): keep
            # the first, as a ranked list has each item once.
            record(f"{prefix}constrained", interleave_dedup(ranked[:, None, :], ranked.shape[1]))

    # Most-popular baseline and the popularity analysis.
    train_targets = pq.read_table(sequences / "train.parquet", columns=["target_item_id"]).column(0).to_numpy()
    counts = np.bincount(train_targets, minlength=len(titles))
    popular = np.argsort(-counts, kind="stable")[:TOP_K_MAX]
    record("most_popular", np.tile(popular, (len(rows), 1)))
    if e.sasrec:
        from cft_core.sasrec import SASRecSettings, sasrec_rank, train_sasrec

        train = pq.read_table(sequences / "train.parquet", columns=["history_item_ids", "target_item_id"]).to_pydict()
        sasrec = train_sasrec(train["history_item_ids"], train["target_item_id"], len(titles),
                              SASRecSettings(max_len=cfg.data.max_history, seed=e.seed))
        record("sasrec", sasrec_rank(sasrec, [r["history_item_ids"] for r in rows], TOP_K_MAX))
    group = popularity_groups(train_targets, len(titles), e.popularity_groups)
    hist_items = np.concatenate([np.asarray(r["history_item_ids"], dtype=np.int64) for r in rows])
    popularity = {"groups": e.popularity_groups, "history": _shares(group[hist_items], e.popularity_groups)}
    for name, ranked in top_lists.items():
        top = ranked[:, :10]
        popularity[f"{name}/top10"] = _shares(group[top[top >= 0]], e.popularity_groups)

    with atomic_dir(out_dir) as tmp:
        (tmp / "plots").mkdir()
        preds.to_parquet(tmp / "predictions.parquet", index=False)
        (tmp / "popularity.json").write_text(json.dumps(popularity, indent=1))
        _plots(metrics, popularity, ks, tmp / "plots")
        summary = {"split": e.split, "examples": len(rows), "catalogue": len(titles), "model_dir": str(model_dir)}
        (tmp / "summary.json").write_text(json.dumps(summary, indent=1))
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True))
    del model
    return EvalOutput(out_dir, metrics, False)


def _shares(groups: np.ndarray, n: int) -> list[float]:
    c = np.bincount(groups, minlength=n).astype(float)
    return (c / max(c.sum(), 1.0)).round(6).tolist()


def _plots(metrics: dict[str, float], popularity: dict, ks: list[int], folder: Path) -> None:
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
        ax.set_title(f"{name}@K")
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
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(folder / "popularity.png", dpi=100)
    plt.close(fig)


def mlflow_metric_name(split: str, key: str) -> str:
    """"grounding_adjusted/NDCG@10" -> "test/grounding_adjusted/NDCG_at_10" (MLflow forbids '@')."""
    return f"{split}/{key.replace('@', '_at_')}"


def log_to_mlflow(result: EvalOutput, run_id: str, tracking_uri: str) -> None:
    """Metrics, predictions table and plots into the training's MLflow run."""
    import time

    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client = MlflowClient(tracking_uri=tracking_uri)
    split = json.loads((result.path / "summary.json").read_text())["split"]

    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(mlflow_metric_name(split, k), v, now, 0) for k, v in result.metrics.items()])
    client.log_artifacts(run_id, str(result.path), artifact_path=f"evaluation/{split}")
    # The per-example predictions also as an MLflow table (shown in the run's Evaluation view).
    preds = pd.read_parquet(result.path / "predictions.parquet")
    for col in preds.columns:  # list columns -> JSON text, which the table format stores as is
        if preds[col].map(lambda v: isinstance(v, (list, np.ndarray))).any():
            preds[col] = preds[col].map(lambda v: json.dumps([x.item() if hasattr(x, "item") else x for x in v]))
    client.log_table(run_id, data=preds, artifact_file=f"evaluation/{split}/predictions_table.json")

