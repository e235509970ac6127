"""Reproduction: CFT vs SFT vs token weighting alone ("pos"), same budget, several seeds.

    python -m benchmarks.reproduce --config configs/repro-ml100k-cpu.yaml            # 3 seeds x 3 methods
    python -m benchmarks.reproduce --config configs/gpu.yaml --seeds 0 1 2 3 4       # on a GPU machine
    python -m benchmarks.report                                                     # -> docs/results.md

Each (objective, seed) runs the pipeline's own stages: prepare the data (shared by all runs),
train with `train.objective` and `train.seed` overridden, evaluate on the configured split, and
log to MLflow (experiment `cft-<dataset>`), so the runs are comparable in the MLflow UI too.
Only the objective and the seed change between runs; the evaluated rows are the same. The
evaluation follows the reference protocol: a constrained list ends with its beams
(`eval.backfill=none`, ahead of the config's own settings and `--set`, which may change it).

Stages are content-addressed, so an interrupted reproduction resumes where it stopped (finished
trainings and evaluations are reused). After every run the result file
benchmarks/results/reproduction-<dataset>.json is rewritten atomically with all runs so far;
runs of other (objective, seed) pairs already in it are kept. Keep the config the same across
invocations that share a result file (the report describes the budget from its first one).

A run is keyed by (objective, seed, alpha, beta), so an alpha/beta sweep adds runs instead of
replacing the reference setting's:

    python -m benchmarks.reproduce --config configs/repro-ml100k-cpu.yaml --objectives cft \
        --set train.alpha=0.3
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from benchmarks.provenance import commit, machine

RESULTS = Path(__file__).parent / "results"


def result_path(dataset: str) -> Path:
    return RESULTS / f"reproduction-{dataset}.json"


def _write_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def run_key(run: dict) -> tuple[str, int, float, float]:
    return run["objective"], run["seed"], run["alpha"], run["beta"]


def per_row_outcomes(eval_dir: Path) -> dict:
    """An evaluation folder's per-row results, JSON-able, so that the report computes paired
    intervals from the result file alone: the ranked rows with each method's 0-based first-hit rank
    (-1: miss), and the diagnosed rows with their teacher-forced log-likelihoods
    (`cft_core.diagnostics`). A row is named by its position in the evaluated split (`split_row`),
    in that order: the result file, which is committed, keeps no user or item ids, since MovieLens
    and Amazon data are research-use and must not be copied into the repository."""
    import pandas as pd

    preds = pd.read_parquet(eval_dir / "predictions.parquet").sort_values("split_row")
    out = {"ranked_rows": preds["split_row"].astype(int).tolist(),
           "ranks": {c.removesuffix("_rank"): preds[c].astype(int).tolist() for c in preds.columns if c.endswith("_rank")}}
    if (eval_dir / "diagnostics.parquet").is_file():
        d = pd.read_parquet(eval_dir / "diagnostics.parquet").sort_values("split_row")
        out.update({"diagnosed_rows": d["split_row"].astype(int).tolist(),
                    "logp_factual": d["logp_factual"].round(4).tolist(),
                    "logp_counterfactual": d["logp_counterfactual"].round(4).tolist(),
                    "label_tokens": d["label_tokens"].astype(int).tolist()})
    return out


def prepared_sequences(folder: Path) -> tuple[Path, str, dict]:
    """(folder, fingerprint, manifest) of a sequences folder `cft data prepare` wrote, for
    --sequences: a GPU box with the model stack only trains and evaluates on it (no source, no
    Great Expectations there)."""
    from schemas.errors import InputError

    manifest_path = folder / "manifest.json"
    if not manifest_path.is_file():
        raise InputError(f"--sequences {folder}: no manifest.json there (give a folder under <data_root>/sequences/)")
    manifest = json.loads(manifest_path.read_text())
    missing = [f"{split}.parquet" for split in ("train", "valid", "test", "catalogue")
               if not (folder / f"{split}.parquet").is_file()]
    if missing or "fingerprint" not in manifest:
        raise InputError(f"--sequences {folder}: not a finished sequences folder (missing: "
                         f"{', '.join(missing) or 'the fingerprint in manifest.json'})")
    return folder, manifest["fingerprint"], manifest


# The paper's evaluation (cft-method.md, section 3): no popularity backfill after the beams.
REFERENCE_PROTOCOL = "eval.backfill=none"


def run_one(config: Path, overrides: list[str], objective: str, seed: int, sequences: Path | None = None) -> dict:
    """Train + evaluate one (objective, seed); returns its record for the result file. The data:
    the config's, prepared (reused when unchanged), or the prepared folder `sequences`."""
    from schemas.config import load_config
    from tasks.chain import evaluate_run
    from tasks.data import prepare
    from tasks.training import train

    cfg = load_config(config, [REFERENCE_PROTOCOL, *overrides, f"train.objective={objective}", f"train.seed={seed}"])
    if sequences is None:
        _, prepared, manifest = prepare(cfg.data)
        sequences, fingerprint = prepared.path, prepared.fingerprint
    else:
        sequences, fingerprint, manifest = prepared_sequences(sequences)
    t0 = time.perf_counter()
    trained = train(cfg, sequences, fingerprint)
    t1 = time.perf_counter()
    result = evaluate_run(cfg, trained, sequences)
    t2 = time.perf_counter()
    alpha, beta = cfg.train.loss_settings()
    summary = result.summary
    train_s = round(t1 - t0, 1)
    if trained.reused:
        # Trained by an earlier invocation: this one only loaded it. Take the trainer's own measure
        # of that training from its summary (`train_runtime`: the optimizer steps, without the ~45 s
        # of model loading and DeepSpeed set-up that the wall-clock time holds). Where the result
        # file already has that run's record, `keep_measured_times` keeps its wall-clock time
        # instead; this covers an invocation that stopped before writing the record.
        train_s = round(trained.summary.get("train_metrics", {}).get("train_runtime", train_s), 1)
    eval_s = round(t2 - t1, 1)
    if result.reused:  # likewise: the evaluation's own measure of itself, where its summary has one
        eval_s = round(summary.get("seconds", {}).get("total", eval_s), 1)
    return {
        "objective": objective,
        "seed": seed,
        "alpha": alpha,
        "beta": beta,
        "steps": trained.summary.get("global_step"),
        "examples_seen": (trained.summary.get("global_step") or 0) * cfg.train.effective_batch_size,
        "best_valid_loss": trained.summary.get("best_eval_loss"),
        "metrics": result.metrics,
        "eval_split": summary["split"],
        "eval_examples": summary["examples"],
        "catalogue": summary["catalogue"],
        "train_samples": manifest["stats"]["samples_train"],
        # Wall-clock seconds of this invocation (for reused stages: their own measures, above).
        "train_s": train_s,
        "eval_s": eval_s,
        "eval_seconds": summary.get("seconds"),  # per method, diagnostics, total
        "reused": trained.reused and result.reused,
        "model_dir": str(trained.model_dir),
        "eval_dir": str(result.path),
        "per_row": per_row_outcomes(result.path),
        "mlflow_run_id": trained.summary.get("mlflow_run_id"),
        "overrides": list(overrides),
    }


def in_fresh_process(fn, *args):
    """fn(*args) in a new (spawned) process, so whatever it leaves resident is freed with it.

    One SmolLM2 run left ~3 GB resident in the process (model copies, the DeepSpeed engine,
    allocator caches): run in one process, the 9th Amazon run was OOM-killed on 24 GB."""
    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def run_isolated(config: Path, overrides: list[str], objective: str, seed: int, sequences: Path | None = None) -> dict:
    # Refer to run_one through the importable module, not `__main__` (python -m runs this file
    # as `__main__`, which the spawned child would re-run).
    from benchmarks import reproduce

    return in_fresh_process(reproduce.run_one, config, overrides, objective, seed, sequences)


def keep_measured_times(new: dict, old: dict | None) -> dict:
    """A resumed invocation reuses the finished stages of a run already in the result file and
    measures ~0 s for them; the record keeps the times of the invocation that computed them (the
    same training and evaluation folders, so the same work), and the commit it ran at."""
    if old is None or not new.get("reused") or old.get("reused", True):
        return new
    if (old.get("model_dir"), old.get("eval_dir")) != (new.get("model_dir"), new.get("eval_dir")):
        return new
    return {**new, "train_s": old["train_s"], "eval_s": old["eval_s"], "reused": False,
            "commit": old.get("commit", new.get("commit"))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=Path("configs/repro-ml100k-cpu.yaml"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--objectives", nargs="+", default=["cft", "sft", "pos"], choices=["cft", "sft", "pos"])
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    help="Override a config field, e.g. --set train.alpha=0.2 (repeatable).")
    ap.add_argument("--name", default=None,
                    help="Result file benchmarks/results/reproduction-<name>.json (default: data.name); "
                         "a study with another budget on the same dataset gets its own file.")
    ap.add_argument("--budget-note", default="",
                    help="Free text for the report: the hardware and why this budget.")
    ap.add_argument("--sequences", type=Path, default=None,
                    help="A prepared sequences folder (<data_root>/sequences/<name>-<fp>, from `cft data prepare`) "
                         "to train and evaluate on instead of preparing the config's data: for a GPU box with "
                         "the model stack only (infra/gpu/README.md)")
    ns = ap.parse_args()

    from schemas.config import load_config
    from schemas.errors import InputError

    cfg = load_config(ns.config, ns.overrides)
    if ns.sequences is not None:
        try:
            prepared_sequences(ns.sequences)
        except InputError as error:  # bad input: its message and exit status 2, no traceback
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)
    out = result_path(ns.name or cfg.data.name)
    # Runs already in the result file stay in it; a run this invocation redoes (same objective,
    # seed and alpha/beta) is replaced where it stands once its new record is in, so an
    # interrupted invocation loses no finished run.
    previous = json.loads(out.read_text()) if out.is_file() else {"runs": []}
    before = {run_key(r): r for r in previous["runs"]}
    runs = dict(before)
    # The first invocation's description of the budget stays; later ones (sweeps) record
    # their overrides per run.
    meta = previous.get("meta") or {
        "config": str(ns.config),
        "overrides": ns.overrides,
        "config_resolved": json.loads(cfg.model_dump_json()),
        **machine(),
        "budget_note": ns.budget_note,
        "started": time.strftime("%Y-%m-%d %H:%M"),
        "sequences": str(ns.sequences) if ns.sequences else None,  # a prepared folder, not the config's data
    }
    if ns.budget_note:
        meta["budget_note"] = ns.budget_note
    # Seed-major order: after each full seed, every method has the same number of runs.
    for seed in ns.seeds:
        for objective in ns.objectives:
            print(f"== {objective} seed {seed}", flush=True)
            record = run_isolated(ns.config, ns.overrides, objective, seed, ns.sequences)
            record = keep_measured_times({**record, "commit": commit()}, before.get(run_key(record)))
            runs[run_key(record)] = record
            meta["finished"] = time.strftime("%Y-%m-%d %H:%M")
            _write_atomic(out, {"meta": meta, "runs": list(runs.values())})
            ndcg = {k: v for k, v in record["metrics"].items()  # each ranking method the profile scores
                    if k.endswith("/NDCG@10") and k.split("/")[0] in ("grounding_adjusted", "constrained")}
            shown = ", ".join(f"{k} {v:.4f}" for k, v in sorted(ndcg.items())) or "no NDCG@10"
            print(f"   {shown} (train {record['train_s']} s, eval {record['eval_s']} s)", flush=True)
    print(f"wrote {out}; now: python -m benchmarks.report")


if __name__ == "__main__":
    main()
