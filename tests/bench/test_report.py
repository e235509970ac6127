"""docs/results.md is generated from result files: check its numbers against hand computation."""

from __future__ import annotations

import json

from benchmarks import report


def _run(objective, seed, ndcg10, nohist10, alpha=0.1, beta=0.25):
    metrics = {f"grounding_adjusted/{m}@{k}": 0.0 for m in ("HR", "NDCG") for k in (5, 10, 20)}
    metrics.update({f"most_popular/{m}@{k}": 0.01 for m in ("HR", "NDCG") for k in (5, 10, 20)})
    metrics["grounding_adjusted/NDCG@10"] = ndcg10
    metrics["nohist_grounding_adjusted/NDCG@10"] = nohist10
    metrics["grounding_original/NDCG@10"] = ndcg10 / 2
    return {"objective": objective, "seed": seed, "alpha": alpha, "beta": beta, "steps": 8, "examples_seen": 64,
            "best_valid_loss": 2.0, "metrics": metrics, "eval_split": "test", "eval_examples": 64,
            "catalogue": 1349, "train_samples": 78675, "train_s": 1.0, "eval_s": 1.0, "mlflow_run_id": "r"}


def _data(runs):
    cfg = {"data": {"name": "toy"}, "model": {"source": "smollm2"},
           "train": {"effective_batch_size": 8, "learning_rate": 1e-4, "warmup_steps": 2, "precision": "fp32"},
           "eval": {"num_beams": 5}}
    meta = {"config": "c.yaml", "overrides": [], "config_resolved": cfg, "machine": "m", "cpu_count": 2,
            "started": "s", "finished": "f"}
    return {"meta": meta, "runs": runs}


def test_means_spreads_gap_and_verdict_by_hand(tmp_path, monkeypatch):
    # cft NDCG@10: 0.03, 0.05 -> mean 0.04, sample std 0.0141; sft: 0.01, 0.01 -> 0.01 ± 0
    runs = [_run("cft", 0, 0.03, 0.01), _run("sft", 0, 0.01, 0.01, 0.0, 1.0),
            _run("cft", 1, 0.05, 0.02), _run("sft", 1, 0.01, 0.00, 0.0, 1.0)]
    runs[1]["metrics"].update({f"sasrec/{m}@{k}": 0.5 for m in ("HR", "NDCG") for k in (5, 10, 20)})
    text = report.section(_data(runs))
    assert "| most popular | | | 0.0100 | 0.0100 |" in text
    assert "| SASRec | | | 0.5000 | 0.5000 |" in text
    assert "| cft | 0.1 | 0.25 |" in text and "0.0400 ± 0.0141" in text
    assert "| sft | 0.0 | 1.0 |" in text and "0.0100 ± 0.0000" in text
    # gap = with - without history: cft 0.02, 0.03 -> 0.0250 ± 0.0071
    assert "0.0250 ± 0.0071" in text
    # paired differences 0.02, 0.04 -> 0.0300 ± 0.0141; 0.04 - 0.0141 > 0.01 + 0: outside the spread
    assert "paired by seed: 0.0300 ± 0.0141" in text
    assert "CFT is above SFT outside the seed spread" in text


def test_overlapping_spreads_are_reported_as_not_established(tmp_path, monkeypatch):
    runs = [_run("cft", 0, 0.02, 0.0), _run("cft", 1, 0.04, 0.0),
            _run("sft", 0, 0.03, 0.0, 0.0, 1.0), _run("sft", 1, 0.01, 0.0, 0.0, 1.0)]
    text = report.section(_data(runs))
    assert "**not** outside the seed spread" in text
    assert "alpha/beta settings tried for CFT: (0.1, 0.25)" in text


def test_main_writes_the_report_from_every_result_file(tmp_path, monkeypatch):
    results = tmp_path / "results"
    results.mkdir()
    (results / "reproduction-toy.json").write_text(json.dumps(_data([_run("cft", 0, 0.02, 0.0)])))
    monkeypatch.setattr(report, "RESULTS", results)
    monkeypatch.setattr(report, "REPORT", tmp_path / "docs" / "results.md")
    report.main()
    text = (tmp_path / "docs" / "results.md").read_text()
    assert "reproduction-toy.json" in text and "## toy" in text
