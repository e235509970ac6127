"""Evaluation stage end to end on a briefly trained tiny model and real (capped) ML-100K."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tasks.evaluation import evaluate, popularity_groups
from tasks.tracking import log_evaluation
from tasks.training import train
from tests.train.conftest import make_config

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore")]
KS = (1, 3, 5, 10, 20, 50)


def test_evaluate_metrics_predictions_baseline_and_mlflow(tmp_path, small_sequences):
    from mlflow import MlflowClient

    seq, fp = small_sequences
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = make_config(tmp_path, max_steps=2, eval_steps=2, tracking={"enabled": True, "tracking_uri": uri,
                                                                    "log_model_folder": False})
    cfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={
        "methods": ["grounding", "constrained"], "max_samples": 16, "num_beams": 3,
        "num_return_sequences": 3, "max_new_tokens": 40, "batch_size": 8, "sasrec": True})})
    trained = train(cfg, seq, fp)
    result = evaluate(cfg, trained.model_dir, seq, progress=False)

    methods = ["grounding_original", "grounding_adjusted", "constrained", "most_popular"]
    methods += [f"nohist_{m}" for m in methods[:3]] + ["markov", "sasrec"]
    assert set(result.metrics) == {f"{m}/{n}@{k}" for m in methods for n in ("HR", "NDCG") for k in KS}
    for m in methods:
        hr = [result.metrics[f"{m}/HR@{k}"] for k in KS]
        assert hr == sorted(hr) and all(0 <= v <= 1 for v in hr)
        assert all(result.metrics[f"{m}/NDCG@{k}"] <= result.metrics[f"{m}/HR@{k}"] + 1e-12 for k in KS)

    # The most-popular baseline, recomputed independently with pandas.
    train_df = pd.read_parquet(seq / "train.parquet")
    catalogue = pd.read_parquet(seq / "catalogue.parquet").set_index("item_id")["title"]
    counts = train_df["target_item_id"].value_counts().reindex(catalogue.index, fill_value=0)
    top = counts.sort_values(ascending=False, kind="stable").index[:50].tolist()
    preds = pd.read_parquet(result.path / "predictions.parquet")
    assert len(preds) == 16
    # split_row names each evaluated row by its position in the split file.
    split = pd.read_parquet(seq / "test.parquet").iloc[preds["split_row"]]
    assert split["user_id"].tolist() == preds["user_id"].tolist()
    assert split["target_item_id"].tolist() == preds["target_item_id"].tolist()
    # SASRec ranks distinct catalogue items.
    assert all(len(set(top)) == len(top) == 10 and set(top) <= set(catalogue.index) for top in preds["sasrec_top10"])
    ranks = []
    for title in preds["target_title"]:
        hits = [i for i, item in enumerate(top) if catalogue[item] == title]
        ranks.append(hits[0] if hits else None)
    for k in (10, 50):
        expected_hr = np.mean([r is not None and r < k for r in ranks])
        expected_ndcg = np.mean([1 / math.log2(r + 2) if r is not None and r < k else 0.0 for r in ranks])
        assert result.metrics[f"most_popular/HR@{k}"] == pytest.approx(expected_hr)
        assert result.metrics[f"most_popular/NDCG@{k}"] == pytest.approx(expected_ndcg)

    # Constrained beams are catalogue titles; ranks agree with the stored top lists.
    titles = set(catalogue.str.strip())
    assert all(t in titles for row in preds["constrained_generated"] for t in row)
    popularity = json.loads((result.path / "popularity.json").read_text())
    assert sum(popularity["history"]) == pytest.approx(1.0)
    assert {p.name for p in (result.path / "plots").iterdir()} == {"metrics_at_k.png", "popularity.png"}

    # What each part took: the methods (with their no-history rankings), the diagnostics, the whole.
    seconds = json.loads((result.path / "summary.json").read_text())["seconds"]
    assert set(seconds) == {"grounding", "constrained", "diagnostics", "total"}
    assert all(t > 0 for t in seconds.values())
    assert seconds["total"] >= seconds["grounding"] + seconds["constrained"] + seconds["diagnostics"] - 0.02  # rounding
    # How each method ranked, for `cft compare` to name where two runs differ.
    from tasks.settings import ranking_settings

    recorded = json.loads((result.path / "summary.json").read_text())["ranking"]
    assert recorded == {m: ranking_settings(cfg, m).to_dict() for m in ("constrained", "grounding")}
    assert recorded["constrained"]["backfill"] == "popularity" and recorded["grounding"]["backfill"] == "none"

    again = evaluate(cfg, trained.model_dir, seq, progress=False)
    assert again.reused and again.metrics == result.metrics

    run_id = trained.summary["mlflow_run_id"]
    assert log_evaluation(result, run_id, uri, seq)
    assert not log_evaluation(again, run_id, uri, seq)  # one evaluation folder is logged once per run
    client = MlflowClient(tracking_uri=uri)
    # The evaluated split joins the run's dataset inputs, beside the splits it trained on.
    inputs = {(d.dataset.name, {t.key: t.value for t in d.tags}["mlflow.data.context"])
              for d in client.get_run(run_id).inputs.dataset_inputs}
    assert inputs == {(f"{seq.name}/train", "training"), (f"{seq.name}/valid", "validation"), (f"{seq.name}/test", "test")}
    logged = client.get_run(run_id).data.metrics
    assert logged["test/grounding_adjusted/NDCG_at_10"] == pytest.approx(result.metrics["grounding_adjusted/NDCG@10"])
    # Headline cut-offs only, zero-padded so that the UI sorts them (every K is in metrics.json).
    assert logged["test/constrained/HR_at_05"] == pytest.approx(result.metrics["constrained/HR@5"])
    assert not any(name.endswith(("_at_01", "_at_50")) for name in logged)
    assert {f"test/seconds/{part}": t for part, t in seconds.items()}.items() <= logged.items()
    paths = {a.path for a in client.list_artifacts(run_id, "evaluation/test")}
    assert "evaluation/test/predictions.parquet" in paths and "evaluation/test/metrics.json" in paths
    # The predictions table: one row per evaluated example, list columns kept as JSON text.
    local = client.download_artifacts(run_id, "evaluation/test/predictions_table.json", str(tmp_path))
    stored = json.loads(Path(local).read_text())  # MLflow's table format: {"columns": [...], "data": [...]}
    table = pd.DataFrame(stored["data"], columns=stored["columns"])
    assert len(table) == len(preds)
    assert [json.loads(h) for h in table["history_titles"]] == [list(h) for h in preds["history_titles"]]


def test_the_markov_baseline_ranks_what_followed_the_newest_item_in_training(tmp_path, small_sequences):
    """The `markov` rows, recomputed with pandas from the folder's training records: the items that
    came right after the row's newest history item, most often first, then by training count,
    then by id. The test rows' own transitions are put in training, so each target was seen after
    its newest item (the capped fixture's own training has almost none) and ranks near the top."""
    from cft_core.sequences import PLACEHOLDER_TITLE
    from tasks.training import model_folder
    from tests.train.conftest import with_rows_in_train

    seq, _ = small_sequences
    cfg = make_config(tmp_path)
    cfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={
        "methods": ["constrained"], "max_samples": 16, "num_beams": 2, "num_return_sequences": 2,
        "max_new_tokens": 8, "min_new_tokens": 1, "diagnostics": False, "history_reliance": False})})
    planted = with_rows_in_train(seq, tmp_path / "test-in-train", "test")
    result = evaluate(cfg, model_folder(cfg, seq), planted, progress=False)
    preds = pd.read_parquet(result.path / "predictions.parquet")
    train_df = pd.read_parquet(planted / "train.parquet")
    catalogue = pd.read_parquet(planted / "catalogue.parquet").set_index("item_id")["title"]
    counts = train_df["target_item_id"].value_counts().reindex(catalogue.index, fill_value=0)
    pairs = pd.DataFrame({"previous": train_df["history_item_ids"].map(lambda h: h[-1]),
                          "following": train_df["target_item_id"]}).value_counts()
    never = {i for i, t in catalogue.items() if PLACEHOLDER_TITLE.match(t.strip())}
    for history, top10, target in zip(preds["history_item_ids"], preds["markov_top10"], preds["target_item_id"],
                                      strict=True):
        after = pairs[history[-1]]
        key = {i: (-after.get(i, 0), -counts[i], i) for i in catalogue.index if i not in never}
        assert list(top10) == sorted(key, key=key.get)[:10]
        assert target in list(top10)[: len(after)]  # among the items seen after the newest one
    assert result.metrics["markov/HR@10"] == 1.0 > result.metrics["most_popular/HR@10"]


def test_popularity_groups_are_equal_sized_by_frequency():
    counts = np.array([3, 2, 1, 0, 0, 4])  # items 0..5
    group = popularity_groups(counts, 3)
    # ascending popularity: item 3 (0), 4 (0), 2 (1), 1 (2), 0 (3), 5 (4) -> groups 0 0 1 1 2 2
    assert group.tolist() == [2, 1, 1, 0, 0, 2]


def test_model_fingerprint_covers_every_shard_and_keeps_the_single_file_key(tmp_path):
    import os

    from tasks.evaluation import model_fingerprint
    from tasks.storage import fingerprint

    single = tmp_path / "single"
    single.mkdir()
    (single / "model.safetensors").write_bytes(b"w" * 10)
    st = (single / "model.safetensors").stat()
    assert model_fingerprint(single) == fingerprint({"model": str(single.resolve()), "size": st.st_size,
                                                     "mtime": st.st_mtime_ns})  # existing evaluations stay reused
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    for i in (1, 2):
        (sharded / f"model-0000{i}-of-00002.safetensors").write_bytes(b"w" * 10)
    before = model_fingerprint(sharded)
    second = sharded / "model-00002-of-00002.safetensors"
    os.utime(second, ns=(second.stat().st_atime_ns, second.stat().st_mtime_ns + 1_000_000))  # the 2nd shard rewritten
    assert model_fingerprint(sharded) != before


def test_a_test_history_too_long_for_cutoff_len_names_its_split_row(tmp_path, tiny_tokenizer):
    """The evaluation cuts its prompts as training does (`Ranker.prompt`); a row whose newest title
    alone outgrows train.cutoff_len is the data's error, naming the split file and row. And the
    cut is part of the evaluation folder's key."""
    from cft_core.prompts import PromptBuilder
    from cft_core.ranking import Ranker
    from cft_core.tiny import build_tiny_model
    from schemas.errors import DataError
    from tasks.evaluation import evaluation_dir, factual_prompt
    from tasks.settings import ranking_settings

    cfg = make_config(tmp_path, cutoff_len=256)
    model = build_tiny_model(len(tiny_tokenizer), hidden_size=32, num_layers=2, num_heads=4, seed=0)
    ranker = Ranker(model, tiny_tokenizer, PromptBuilder.for_domain("movies"), ["1", "2"], ["Heat", "Babe"],
                    ranking_settings(cfg, "constrained"), popularity=[1, 1])
    split = tmp_path / "test.parquet"
    assert factual_prompt(ranker, {"history_titles": ["Heat"], "split_row": 6}, split) == ranker.prompts.factual(["Heat"])
    with pytest.raises(DataError, match=r"test.parquet, row 7: the history: its newest title \(2,999 characters\)"):
        factual_prompt(ranker, {"history_titles": ["Heat", " ".join(["words"] * 500)], "split_row": 7}, split)
    model_dir = tmp_path / "run" / "model"
    model_dir.mkdir(parents=True)
    (model_dir / "model.safetensors").write_bytes(b"w")
    assert evaluation_dir(cfg, model_dir, tmp_path) != evaluation_dir(make_config(tmp_path), model_dir, tmp_path)


def test_evaluation_at_bf16_ranks_with_embeddings_close_to_fp32(tmp_path, small_sequences):
    """The precision a GPU evaluates at (`eval.precision: auto` there), run on the CPU: every method
    ranks, the constrained beams are catalogue titles, and the catalogue's title embeddings (kept
    per precision) agree with fp32's up to bf16's rounding."""
    import torch

    from tasks.evaluation import embeddings_cache

    seq, fp = small_sequences
    cfg = make_config(tmp_path, max_steps=2, eval_steps=2)
    trained = train(cfg, seq, fp)
    results = {}
    for precision in ("fp32", "bf16"):
        c = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={
            "methods": ["grounding", "constrained"], "max_samples": 16, "num_beams": 3, "num_return_sequences": 3,
            "max_new_tokens": 40, "batch_size": 8, "precision": precision})})
        results[precision] = evaluate(c, trained.model_dir, seq, progress=False)

    assert results["bf16"].metrics.keys() == results["fp32"].metrics.keys()
    preds = pd.read_parquet(results["bf16"].path / "predictions.parquet")
    titles = set(pd.read_parquet(seq / "catalogue.parquet")["title"].str.strip())
    assert len(preds) == 16 and all(t in titles for row in preds["constrained_generated"] for t in row)
    emb = {p: torch.from_numpy(np.load(embeddings_cache(trained.model_dir, seq, p))) for p in ("fp32", "bf16")}
    assert emb["bf16"].shape == emb["fp32"].shape and not torch.equal(emb["bf16"], emb["fp32"])
    assert torch.nn.functional.cosine_similarity(emb["bf16"].float(), emb["fp32"], dim=1).min() > 0.99
