"""docs/results.md is generated from result files: check its numbers against hand computation."""

from __future__ import annotations

import json

import pytest

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
           "train": {"alpha": 0.1, "beta": 0.25, "effective_batch_size": 8, "learning_rate": 1e-4, "warmup_steps": 2, "precision": "fp32"},
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
    assert "Markov chain" not in text  # runs evaluated before it existed: no row
    runs[0]["metrics"].update({f"markov/{m}@{k}": 0.2 for m in ("HR", "NDCG") for k in (5, 10, 20)})
    text = report.section(_data(runs))
    assert "| most popular | | | 0.0100 | 0.0100 |" in text
    assert "| Markov chain | | | 0.2000 | 0.2000 |" in text
    assert "| SASRec | | | 0.5000 | 0.5000 |" in text
    assert "| cft | 0.1 | 0.25 | 0.0000 ± 0.0000 |" in text and "0.0400 ± 0.0141" in text
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
    report.main([])
    text = (tmp_path / "docs" / "results.md").read_text()
    assert "reproduction-toy.json" in text and "## toy" in text


def test_a_sweep_lists_every_setting_and_judges_the_configured_one():
    # Configured (0.1, 0.25): 0.02, 0.02 vs SFT 0.01, 0.03 -> not outside the spread.
    # Swept (0.3, 0.25): 0.06, 0.08 -> mean 0.07 - 0.0141 > 0.02 + 0.0141: outside, listed apart.
    runs = [_run("cft", 0, 0.02, 0.0), _run("cft", 1, 0.02, 0.0),
            _run("sft", 0, 0.01, 0.0, 0.0, 1.0), _run("sft", 1, 0.03, 0.0, 0.0, 1.0),
            _run("cft", 0, 0.06, 0.0, 0.3), _run("cft", 1, 0.08, 0.0, 0.3)]
    runs[-1]["overrides"] = runs[-2]["overrides"] = ["train.alpha=0.3"]
    text = report.section(_data(runs))
    assert "CFT (0.1, 0.25) mean NDCG@10 0.0200 vs SFT 0.0200" in text
    assert "**not** outside the seed spread" in text
    assert "alpha/beta settings tried for CFT: (0.1, 0.25), (0.3, 0.25)." in text
    assert "- CFT (0.3, 0.25): mean NDCG@10 0.0700 vs SFT 0.0200 (+0.0500); paired by seed: 0.0500 ± 0.0000. " \
           "Above SFT outside the seed spread." in text
    # one table row per setting, and the sweep's command next to the first one
    assert "| cft | 0.3 | 0.25 | " in text and "| cft | 0.1 | 0.25 | " in text
    assert "`python -m benchmarks.reproduce --config c.yaml --set train.alpha=0.3`" in text


def test_reproduce_keeps_other_settings_and_replaces_a_redone_one(tmp_path, monkeypatch):
    from benchmarks import reproduce

    calls = []

    def fake_run_one(config, overrides, objective, seed, sequences=None):
        from schemas.config import load_config

        cfg = load_config(config, [*overrides, f"train.objective={objective}"])
        calls.append((objective, seed))
        alpha, beta = cfg.train.loss_settings()
        return {**_run(objective, seed, 0.5, 0.0, alpha, beta), "overrides": list(overrides)}

    monkeypatch.setattr(reproduce, "RESULTS", tmp_path)
    monkeypatch.setattr(reproduce, "run_isolated", fake_run_one)
    old = [_run("cft", 0, 0.01, 0.0), _run("sft", 0, 0.02, 0.0, 0.0, 1.0)]
    (tmp_path / "reproduction-ml-100k.json").write_text(json.dumps(_data(old)))
    argv = ["reproduce", "--config", "configs/repro-ml100k-cpu.yaml", "--objectives", "cft", "--seeds", "0"]
    monkeypatch.setattr("sys.argv", [*argv, "--set", "train.alpha=0.3"])
    reproduce.main()
    runs = json.loads((tmp_path / "reproduction-ml-100k.json").read_text())["runs"]
    assert [(r["objective"], r["alpha"], r["metrics"]["grounding_adjusted/NDCG@10"]) for r in runs] == [
        ("cft", 0.1, 0.01), ("sft", 0.0, 0.02), ("cft", 0.3, 0.5)]
    # Redoing the configured setting replaces its run where it stood and keeps the sweep's.
    monkeypatch.setattr("sys.argv", argv)
    reproduce.main()
    runs = json.loads((tmp_path / "reproduction-ml-100k.json").read_text())["runs"]
    assert [(r["objective"], r["alpha"], r["metrics"]["grounding_adjusted/NDCG@10"]) for r in runs] == [
        ("cft", 0.1, 0.5), ("sft", 0.0, 0.02), ("cft", 0.3, 0.5)]
    assert calls == [("cft", 0), ("cft", 0)]


def test_an_interrupted_resume_keeps_the_runs_it_had_not_redone_yet(tmp_path, monkeypatch):
    """A resumed invocation re-invokes every run; stopped after its first, the file still holds
    the finished runs it had not reached (they were once dropped until redone, and lost)."""
    from benchmarks import reproduce

    def fake_run_one(config, overrides, objective, seed, sequences=None):
        if objective == "cft":
            raise KeyboardInterrupt  # the session ends before cft is re-invoked
        return {**_run(objective, seed, 0.7, 0.0, 0.0, 1.0), "overrides": list(overrides)}

    monkeypatch.setattr(reproduce, "RESULTS", tmp_path)
    monkeypatch.setattr(reproduce, "run_isolated", fake_run_one)
    done = [_run("cft", 1, 0.01, 0.0), _run("sft", 0, 0.02, 0.0, 0.0, 1.0)]
    (tmp_path / "reproduction-toy.json").write_text(json.dumps(_data(done)))
    monkeypatch.setattr("sys.argv", ["reproduce", "--config", "configs/repro-ml100k-cpu.yaml", "--name", "toy",
                                     "--objectives", "sft", "cft", "--seeds", "1"])
    with pytest.raises(KeyboardInterrupt):
        reproduce.main()
    runs = json.loads((tmp_path / "reproduction-toy.json").read_text())["runs"]
    assert [(r["objective"], r["seed"], r["metrics"]["grounding_adjusted/NDCG@10"]) for r in runs] == [
        ("cft", 1, 0.01), ("sft", 0, 0.02), ("sft", 1, 0.7)]


def test_a_resumed_reproduction_keeps_the_times_of_the_runs_it_reuses(tmp_path, monkeypatch):
    """Resuming re-invokes finished runs, whose stages are reused in ~0 s: the record keeps the
    time the run took when it was computed, not the reuse's; a recomputed run gets its new time."""
    from benchmarks import reproduce

    def fake_run_one(config, overrides, objective, seed, sequences=None):
        folder = "m1" if objective == "cft" else "m2"  # sft's folders changed: a new computation
        return {**_run(objective, seed, 0.5, 0.0, *({"cft": (0.1, 0.25), "sft": (0.0, 1.0)}[objective])),
                "train_s": 0.0, "eval_s": 2.0, "reused": True, "model_dir": folder, "eval_dir": folder + "/e"}

    monkeypatch.setattr(reproduce, "RESULTS", tmp_path)
    monkeypatch.setattr(reproduce, "run_isolated", fake_run_one)
    done = [{**_run("cft", 0, 0.5, 0.0), "train_s": 2087.0, "eval_s": 1450.0, "reused": False,
             "model_dir": "m1", "eval_dir": "m1/e", "commit": "computed-at"},
            {**_run("sft", 0, 0.5, 0.0, 0.0, 1.0), "train_s": 2100.0, "eval_s": 1500.0, "reused": False,
             "model_dir": "old", "eval_dir": "old/e"}]
    (tmp_path / "reproduction-toy.json").write_text(json.dumps(_data(done)))
    monkeypatch.setattr("sys.argv", ["reproduce", "--config", "configs/repro-ml100k-cpu.yaml", "--name", "toy",
                                     "--objectives", "cft", "sft", "--seeds", "0"])
    reproduce.main()
    runs = json.loads((tmp_path / "reproduction-toy.json").read_text())["runs"]
    assert [(r["objective"], r["train_s"], r["eval_s"], r["reused"]) for r in runs] == [
        ("cft", 2087.0, 1450.0, False), ("sft", 0.0, 2.0, True)]
    assert runs[0]["commit"] == "computed-at" and runs[1]["commit"] == reproduce.commit()  # (the code that ran it)


def test_a_d3_csv_dataset_is_labelled_as_history_derived():
    data = _data([_run("cft", 0, 0.02, 0.0)])
    assert "derived from histories" not in report.section(data)
    data["meta"]["config_resolved"]["data"]["source"] = {"format": "d3_csv", "path": "amazon18"}
    assert "**Train split derived from histories**: the amazon18 files hold valid and test rows only" \
        in report.section(data)


def test_each_run_gets_a_fresh_process():
    import os

    from benchmarks import reproduce

    assert reproduce.in_fresh_process(os.getpid) != os.getpid()


def _study_run(objective, seed, ranks, logp_f, logp_cf, alpha=0.1):
    n = len(ranks)
    metrics = {"constrained/HR@1": 0.5, "most_popular/HR@1": 0.25, "most_popular/HR@10": 0.5,
               "most_popular/NDCG@10": 0.3, "markov/HR@1": 0.5, "markov/HR@10": 0.75, "markov/NDCG@10": 0.6}
    return {"setting": "p0.5", "objective": objective, "seed": seed, "alpha": alpha if objective == "cft" else 0.0,
            "beta": 1.0 if objective == "sft" else 0.25, "steps": 4, "examples_seen": 128, "train_samples": 64,
            "best_valid_loss": 1.0, "eval_examples": n, "train_s": 10.0, "eval_s": 2.0, "reused": False,
            "overrides": [], "metrics": metrics, "rows": list(range(n)), "rank": ranks,
            "logp_factual": [logp_f] * n, "logp_counterfactual": [logp_cf] * n, "label_tokens": [2] * n}


def test_the_controlled_study_section_by_hand(tmp_path, monkeypatch):
    """4 rows, 2 seeds. sft and pos miss every row; cft hits every row first: cft - sft is +1 on
    NDCG@10 in every (seed, row) cell, so the interval is [1, 1] and the verdict 'cft higher';
    pos - sft is 0 everywhere: 'no difference'. History effect per token: sft (-4 - -4) / 2 = 0,
    cft (-2 - -6) / 2 = 2; target NLL per token: sft 4 / 2 = 2, cft 2 / 2 = 1."""
    from benchmarks import synthetic_study

    runs = [_study_run(o, s, [0] * 4 if o == "cft" else [-1] * 4, -2.0 if o == "cft" else -4.0,
                       -6.0 if o == "cft" else -4.0) for s in (0, 1) for o in ("sft", "pos", "cft")]
    path = tmp_path / "results" / "synthetic-study.json"
    monkeypatch.setattr(synthetic_study, "RESULTS", path)
    synthetic_study._write_atomic(path, {"meta": {"config": "c.yaml", "machine": "m", "cpu_count": 2, "started": "s"},
                                         **synthetic_study.store(runs)})
    meta, loaded = synthetic_study.load(path)
    assert loaded == runs  # rows stored once per setting, re-attached to every run
    text = report.synthetic_section(meta, loaded, tmp_path / "results" / "study.png")
    assert "| p0.5 | sft | 2 | 0.5000 ± 0.0000 | 0.0000 ± 0.0000 | 0.0000 ± 0.0000 | 0.0000 ± 0.0000 | 2.0000 ± 0.0000 |" in text
    assert "| p0.5 | cft | 2 | 0.5000 ± 0.0000 | 1.0000 ± 0.0000 | 1.0000 ± 0.0000 | 2.0000 ± 0.0000 | 1.0000 ± 0.0000 |" in text
    assert "| p0.5 | most popular | | 0.2500 | 0.5000 | 0.3000 | | |" in text
    assert "| p0.5 | Markov chain | | 0.5000 | 0.7500 | 0.6000 | | |" in text
    assert ("| p0.5 | cft - sft | 2 | +1.0000 [+1.0000, +1.0000] | +1.0000 [+1.0000, +1.0000] | "
            "+2.0000 [+2.0000, +2.0000] | cft higher |") in text
    assert "| p0.5 | pos - sft | 2 | +0.0000 [+0.0000, +0.0000] |" in text and "no difference at this budget |" in text
    assert (tmp_path / "results" / "study.png").stat().st_size > 0
    assert "does the history effect grow with alpha" not in text.lower()  # no sweep runs yet
    sweep = [_study_run("cft", s, [0] * 4, -3.0, -5.0, alpha=0.5) for s in (0, 1)]
    text = report.synthetic_section(meta, loaded + sweep, tmp_path / "results" / "study.png")
    # alpha 0.5: history effect (-3 - -5) / 2 = 1, NLL 3 / 2 = 1.5; it hits every row, sft none: +1.
    assert ("| p0.5 | 0.1 | 2 | 1.0000 ± 0.0000 | 2.0000 ± 0.0000 | 1.0000 ± 0.0000 | "
            "+1.0000 [+1.0000, +1.0000] | cft higher |") in text
    assert ("| p0.5 | 0.5 | 2 | 1.0000 ± 0.0000 | 1.0000 ± 0.0000 | 1.5000 ± 0.0000 | "
            "+1.0000 [+1.0000, +1.0000] | cft higher |") in text


def _per_row(hit: bool, logp_f: float, logp_cf: float) -> dict:
    rows = [0, 1, 2, 3]  # split positions
    return {"ranked_rows": rows, "ranks": {"constrained": [0 if hit else -1] * 4},
            "diagnosed_rows": rows, "logp_factual": [logp_f] * 4, "logp_counterfactual": [logp_cf] * 4,
            "label_tokens": [2] * 4}


def test_reproduction_paired_differences_by_hand():
    """cft hits all 4 rows first in both seeds, sft none: +1 NDCG@10 in every cell, interval
    [1, 1]; history effect per token cft (-2 - -6) / 2 = 2, sft 0: +2; pos = sft: 0."""
    runs = []
    for seed in (0, 1):
        for obj, a, b, hit, lf, lcf in [("sft", 0.0, 1.0, False, -4.0, -4.0), ("pos", 0.0, 0.25, False, -4.0, -4.0),
                                        ("cft", 0.1, 0.25, True, -2.0, -6.0)]:
            r = _run(obj, seed, 0.01, 0.0, a, b)
            r["per_row"] = _per_row(hit, lf, lcf)
            runs.append(r)
    text = report.section(_data(runs))
    assert "| cft - sft | constrained/NDCG@10 | 2 | 4 | +1.0000 | [+1.0000, +1.0000] | cft higher |" in text
    assert "| cft - sft | history effect / token | 2 | 4 | +2.0000 | [+2.0000, +2.0000] | cft higher |" in text
    assert "| cft - sft | target NLL / token | 2 | 4 | -1.0000 | [-1.0000, -1.0000] | cft lower |" in text
    assert "| pos - sft | constrained/NDCG@10 | 2 | 4 | +0.0000 | [+0.0000, +0.0000] | no difference at this budget |" in text


def test_per_row_outcomes_name_rows_by_split_position(tmp_path):
    """Rows are named by their position in the split (no user or item ids in the committed file),
    sorted by it; a repeated (user, target) pair keeps both of its rows."""
    import pandas as pd

    from benchmarks.reproduce import per_row_outcomes

    pd.DataFrame({"split_row": [3, 1, 2], "user_id": ["1", "1", "2"], "target_item_id": [5, 5, 7],
                  "constrained_rank": [-1, 0, 3], "constrained_top10": [[1], [2], [3]]}).to_parquet(
        tmp_path / "predictions.parquet")
    pd.DataFrame({"split_row": [2, 1, 3], "user_id": ["2", "1", "1"], "target_item_id": [7, 5, 5],
                  "logp_factual": [-1.0, -2.0, -3.0], "logp_counterfactual": [-4.0, -5.0, -6.0],
                  "label_tokens": [3, 4, 5]}).to_parquet(tmp_path / "diagnostics.parquet")
    out = per_row_outcomes(tmp_path)
    assert out["ranked_rows"] == [1, 2, 3]
    assert out["ranks"] == {"constrained": [0, 3, -1]}
    assert out["diagnosed_rows"] == [1, 2, 3]
    assert out["logp_factual"] == [-2.0, -1.0, -3.0] and out["label_tokens"] == [4, 3, 5]


def test_a_reproduction_run_records_its_rows_by_split_position(tmp_path, monkeypatch):
    """One real (tiny) reproduction run, train + evaluate on synthetic data: its record names the
    ranked and diagnosed rows by split position, the same rows, and every rank is a real outcome."""
    from pathlib import Path

    from benchmarks.reproduce import run_one

    overrides = [f"data.data_root={tmp_path}", "data.source.synthetic.users=60", "data.source.synthetic.items=20",
                 "data.max_samples.train=32", "data.max_samples.valid=8", "data.max_samples.test=12",
                 "train.max_steps=2", "train.micro_batch_size=8", "train.effective_batch_size=8",
                 "train.eval_steps=2", "eval.max_samples=6", "eval.num_beams=4", "eval.num_return_sequences=4",
                 "tracking.enabled=false"]
    record = run_one(Path("configs/synthetic.yaml"), overrides, "cft", 0)
    rows = record["per_row"]
    assert rows["ranked_rows"] == sorted(rows["ranked_rows"]) and len(rows["ranked_rows"]) == 6
    assert rows["diagnosed_rows"] == list(range(12))  # diagnostics on the whole (capped) split
    assert all(-1 <= r < 4 for r in rows["ranks"]["constrained"])
    # Each named position is the row that was evaluated: the same user and target in the split file.
    import pandas as pd

    from schemas.config import load_config
    from tasks.data import prepare

    _, sequences, _ = prepare(load_config(Path("configs/synthetic.yaml"), overrides).data)
    split = pd.read_parquet(sequences.path / "test.parquet")
    preds = pd.read_parquet(Path(record["eval_dir"]) / "predictions.parquet").sort_values("split_row")
    at = split.iloc[rows["ranked_rows"]]
    assert at["user_id"].tolist() == preds["user_id"].tolist()
    assert at["target_item_id"].tolist() == preds["target_item_id"].tolist()

    # Invoked again, the run reuses both stages; its training time is then the trainer's own
    # measure from the training summary, not the ~0 s this invocation spent loading the model.
    again = run_one(Path("configs/synthetic.yaml"), overrides, "cft", 0)
    trained = json.loads((Path(again["model_dir"]) / "training.json").read_text())
    assert again["reused"] and again["model_dir"] == record["model_dir"]
    assert again["train_s"] == round(trained["train_metrics"]["train_runtime"], 1)

    # On a prepared sequences folder (--sequences: a GPU box without the data stack) the data is
    # not prepared at all, and the run is the same one.
    import tasks.data
    from benchmarks.reproduce import prepared_sequences
    from schemas.errors import InputError

    monkeypatch.setattr(tasks.data, "prepare", lambda *_: pytest.fail("prepared the data"))
    on_folder = run_one(Path("configs/synthetic.yaml"), overrides, "cft", 0, sequences.path)
    assert on_folder["model_dir"] == record["model_dir"] and on_folder["eval_dir"] == record["eval_dir"]
    with pytest.raises(InputError, match=f"--sequences {tmp_path}: no manifest.json"):
        prepared_sequences(tmp_path)


def test_a_study_without_no_history_reranking_reports_diagnostics_and_constrained(tmp_path):
    """The real-data study's layout: constrained + grounding, no no-history re-ranking, per-row
    diagnostics. History effect per token: sft (-4 - -4) / 2 = 0, cft (-2 - -6) / 2 = 2; NLL per
    token 4 / 2 = 2 and 2 / 2 = 1. Constrained NDCG@10 0.2 and 0.4 for cft: 0.3000 ± 0.1414."""
    runs = []
    for seed in (0, 1):
        for obj, a, b, hit, lf, lcf in [("sft", 0.0, 1.0, False, -4.0, -4.0), ("cft", 0.1, 0.25, True, -2.0, -6.0)]:
            r = _run(obj, seed, 0.01, 0.0, a, b)
            del r["metrics"]["nohist_grounding_adjusted/NDCG@10"]
            r["metrics"].update({f"constrained/{m}@{k}": 0.1 for m in ("HR", "NDCG") for k in (5, 10, 20)})
            r["metrics"]["constrained/NDCG@10"] = 0.2 * (seed + 1) if obj == "cft" else 0.1
            r["per_row"] = _per_row(hit, lf, lcf)
            r["per_row"]["ranks"]["most_popular"] = [3, 3, 3, 3]
            r["per_row"]["ranks"]["markov"] = [0, 0, 0, 0]
            runs.append(r)
    text = report.section(_data(runs))
    assert "history reliance" not in text.lower()  # not measured: no table of NaNs
    assert "; the diagnostics on 4 rows." in text
    assert "| sft | 0.0 | 1.0 | 2 | 0.0000 ± 0.0000 | 2.0000 ± 0.0000 |" in text
    assert "| cft | 0.1 | 0.25 | 2 | 2.0000 ± 0.0000 | 1.0000 ± 0.0000 |" in text
    assert ("| cft | 0.1 | 0.25 | 0.1000 ± 0.0000 | 0.1000 ± 0.0000 | 0.1000 ± 0.0000 | 0.3000 ± 0.1414 |"
            in text)
    assert "most_popular/NDCG@10" not in text and "markov/NDCG@10" not in text  # a baseline ranks the same in every run: not paired


def test_a_study_run_takes_each_ranked_rows_own_diagnostics():
    from benchmarks import synthetic_study

    outcomes = {"ranked_rows": [1, 3], "ranks": {"constrained": [0, -1]}, "diagnosed_rows": [0, 1, 2, 3],
                "logp_factual": [-1.0, -2.0, -3.0, -4.0], "logp_counterfactual": [-5.0, -6.0, -7.0, -8.0],
                "label_tokens": [1, 2, 3, 4]}
    assert synthetic_study.per_row(outcomes) == {"rows": [1, 3], "rank": [0, -1], "logp_factual": [-2.0, -4.0],
                                                 "logp_counterfactual": [-6.0, -8.0], "label_tokens": [2, 4]}
    outcomes["ranked_rows"] = [1, 5]
    with pytest.raises(RuntimeError, match="1 ranked rows have no diagnostics, e.g. 5"):
        synthetic_study.per_row(outcomes)


def test_a_named_reproduction_gets_its_own_heading_and_command():
    data = _data([_run("cft", 0, 0.02, 0.0)])
    text = report.section(data, "toy-study")
    assert "## toy-study" in text and "`python -m benchmarks.reproduce --config c.yaml --name toy-study`" in text
    assert "## toy\n" in report.section(data, "toy") and "--name" not in report.section(data, "toy")
    data["meta"]["sequences"] = "/kit/ml-100k-e4ef"  # trained on a prepared folder (a GPU box)
    assert "`python -m benchmarks.reproduce --config c.yaml --name gpu --sequences /kit/ml-100k-e4ef`" in \
        report.section(data, "gpu")


def test_a_study_with_only_cft_says_no_verdict_yet_and_has_no_empty_table():
    r = _run("cft", 0, 0.02, 0.0)
    r["per_row"] = _per_row(True, -2.0, -6.0)
    text = report.section(_data([r]))
    assert "No verdict yet: it needs runs of both CFT at the configured setting and SFT." in text
    assert "Paired differences" not in text


def test_a_constrained_only_study_is_read_from_constrained_decoding():
    """A profile that scores only D3's constrained decoding (configs/study-amazon-cpu.yaml: no
    grounding, so no grounding_adjusted metrics) gets its tables and verdict from constrained NDCG@10;
    the report raised KeyError: 'grounding_adjusted/HR@5' on it. cft 0.03, 0.05 vs sft 0.01, 0.01:
    mean 0.0400 ± 0.0141, paired +0.0300 ± 0.0141, outside the spread."""
    runs = []
    for seed, (c, s) in enumerate([(0.03, 0.01), (0.05, 0.01)]):
        for obj, a, b, v in [("cft", 0.1, 0.25, c), ("sft", 0.0, 1.0, s)]:
            r = _run(obj, seed, 0.0, 0.0, a, b)
            r["metrics"] = {k.replace("grounding_adjusted", "constrained"): 0.1 for k in r["metrics"]
                            if k.startswith("grounding_adjusted/")} | {k: 0.01 for k in r["metrics"] if k.startswith("most_popular/")}
            r["metrics"]["constrained/NDCG@10"] = v
            runs.append(r)
    text = report.section(_data(runs))
    assert "### constrained decoding (mean ± std over seeds)" in text and "grounding adjusted" not in text
    assert text.count("### constrained decoding") == 1  # (one table, not the headline and a copy)
    assert "| cft | 0.1 | 0.25 | 0.1000 ± 0.0000 | 0.1000 ± 0.0000 | 0.1000 ± 0.0000 | 0.0400 ± 0.0141 |" in text
    assert "CFT (0.1, 0.25) with constrained decoding: mean NDCG@10 0.0400 vs SFT 0.0100 (+0.0300); " \
           "paired by seed: 0.0300 ± 0.0141. CFT is above SFT outside the seed spread." in text
    assert "| constrained NDCG@10 |" in text and "| cft | 0.1 | 0.25 | 1 | 8 | 2.0000 | 0.0500 |" in text
    with pytest.raises(ValueError, match="neither grounding_adjusted nor constrained"):
        report.headline([{"metrics": {"markov/NDCG@10": 0.1}}])


def test_one_seed_is_not_judged_by_a_seed_spread():
    """With one seed of each method the spreads are 0, so "outside the seed spread" would be read
    from nothing: the verdict says so and points at the paired intervals over rows."""
    text = report.section(_data([_run("cft", 0, 0.05, 0.0), _run("sft", 0, 0.01, 0.0, 0.0, 1.0)]))
    assert ("CFT (0.1, 0.25) mean NDCG@10 0.0500 vs SFT 0.0100 (+0.0400); paired by seed: 0.0400 ± 0.0000. "
            "With one seed of a method there is no seed spread to judge by") in text
    assert "outside the seed spread" not in text.split("### Verdict")[1].split("alpha/beta")[0]

