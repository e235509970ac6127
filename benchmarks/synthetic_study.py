"""The controlled study: when does CFT beat SFT? Synthetic data where the truth is known.

    python -m benchmarks.synthetic_study                       # every setting x sft/pos/cft x seeds 0-4
    python -m benchmarks.synthetic_study --settings p0.5 --seeds 0 1
    python -m benchmarks.synthetic_study --alphas 0.02 0.5     # CFT alpha sweep (on --alpha-setting)
    python -m benchmarks.report                                # -> docs/results.md

The data (`data.source.format: synthetic`, tasks/synthetic.py) plants a history signal of known
strength: the next item is the last item's planted successor with probability p, else a Zipf
popularity draw. A setting fixes p and the skew (SETTINGS); the data seed stays 0, so every run of
a setting is scored on the same 2000 test rows. Each run is a tiny model trained from scratch with
one objective and one training seed (configs/synthetic-study.yaml; `benchmarks.reproduce.run_one`
in a fresh process), scored with constrained decoding and the teacher-forced diagnostics.

Per run the result file keeps the per-row outcomes (first-hit rank, log p(y | history), log p(y |
no history), label tokens) aligned with its setting's rows, so the report computes paired
intervals (rows x seeds, `tasks.compare.compare`) from the committed file alone.

Resumable: after every run benchmarks/results/synthetic-study.json is rewritten atomically;
runs already in it are skipped (a run is keyed by setting, objective, seed, alpha, beta). Runs go
seed-major, so after each seed every setting and objective has the same number of runs.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from benchmarks.provenance import commit, machine
from benchmarks.reproduce import _write_atomic, in_fresh_process

RESULTS = Path(__file__).parent / "results" / "synthetic-study.json"
CONFIG = Path("configs/synthetic-study.yaml")
# name -> the synthetic knobs it sets (p: share of next items only the history predicts).
SETTINGS: dict[str, dict[str, float]] = {
    "p0.2": {"p": 0.2, "popularity_skew": 1.0},
    "p0.5": {"p": 0.5, "popularity_skew": 1.0},
    "p0.8": {"p": 0.8, "popularity_skew": 1.0},
    "p0.5-skew1.5": {"p": 0.5, "popularity_skew": 1.5},  # popularity alone explains more
}
METHOD = "constrained"


def setting_overrides(name: str) -> list[str]:
    return [f"data.source.synthetic.{k}={v}" for k, v in SETTINGS[name].items()]


def run_key(run: dict) -> tuple:
    return run["setting"], run["objective"], run["seed"], run["alpha"], run["beta"]


def per_row(outcomes: dict) -> dict:
    """A run's per-row outcomes (`benchmarks.reproduce.per_row_outcomes`) -> the study's arrays,
    one entry per ranked row (split order): rows, rank (0-based first hit, -1 miss), logp_factual,
    logp_counterfactual, label_tokens. Every ranked row must have its diagnostics."""
    diagnosed = {k: i for i, k in enumerate(outcomes["diagnosed_rows"])}
    missing = [k for k in outcomes["ranked_rows"] if k not in diagnosed]
    if missing:
        raise RuntimeError(f"{len(missing)} ranked rows have no diagnostics, e.g. {missing[0]}")
    pick = [diagnosed[k] for k in outcomes["ranked_rows"]]
    return {"rows": outcomes["ranked_rows"], "rank": outcomes["ranks"][METHOD],
            **{name: [outcomes[name][i] for i in pick] for name in ("logp_factual", "logp_counterfactual",
                                                                    "label_tokens")}}


def run_one(setting: str, objective: str, seed: int, extra: list[str]) -> dict:
    """Train and evaluate one run (in this process); its record with per-row outcomes."""
    from benchmarks.reproduce import run_one as train_and_evaluate

    record = train_and_evaluate(CONFIG, [*setting_overrides(setting), *extra], objective, seed)
    keep = ("objective", "seed", "alpha", "beta", "steps", "examples_seen", "best_valid_loss", "eval_examples",
            "train_samples", "train_s", "eval_s", "reused", "overrides")
    return {"setting": setting, **{k: record[k] for k in keep},
            "metrics": {k: v for k, v in record["metrics"].items() if k.endswith(("@1", "@10"))},
            **per_row(record["per_row"])}


def run_isolated(setting: str, objective: str, seed: int, extra: list[str]) -> dict:
    from benchmarks import (
        synthetic_study,  # importable module, not __main__ (see reproduce.run_isolated)
    )

    return in_fresh_process(synthetic_study.run_one, setting, objective, seed, extra)


def store(runs: list[dict]) -> dict:
    """The result file's content: per-row rows stored once per setting, each run's arrays aligned."""
    settings: dict[str, dict] = {}
    out_runs = []
    for r in runs:
        s = settings.setdefault(r["setting"], {"knobs": SETTINGS.get(r["setting"]), "rows": r["rows"]})
        if r["rows"] != s["rows"]:
            raise RuntimeError(f"run {run_key(r)} scored other rows than its setting's first run")
        out_runs.append({k: v for k, v in r.items() if k != "rows"})
    return {"settings": settings, "runs": out_runs}


def load(path: Path = RESULTS) -> tuple[dict, list[dict]]:
    """(meta, runs with their setting's rows attached) from the result file; empty when absent."""
    if not path.is_file():
        return {}, []
    data = json.loads(path.read_text())
    return data["meta"], [{**r, "rows": data["settings"][r["setting"]]["rows"]} for r in data["runs"]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--objectives", nargs="+", default=["sft", "pos", "cft"], choices=["cft", "sft", "pos"])
    ap.add_argument("--alphas", type=float, nargs="*", default=[],
                    help="Instead of the objectives: CFT runs with these alphas, on --alpha-setting.")
    ap.add_argument("--alpha-setting", default="p0.5", choices=list(SETTINGS))
    ns = ap.parse_args()

    meta, runs = load()
    meta = meta or {"config": str(CONFIG), **machine(),
                    "started": time.strftime("%Y-%m-%d %H:%M"), "settings": SETTINGS}
    done = {run_key(r) for r in runs}
    if ns.alphas:
        plan = [(ns.alpha_setting, "cft", seed, [f"train.alpha={a}"]) for seed in ns.seeds for a in ns.alphas]
    else:
        plan = [(s, o, seed, []) for seed in ns.seeds for s in ns.settings for o in ns.objectives]
    from schemas.config import load_config

    for setting, objective, seed, extra in plan:
        alpha, beta = load_config(CONFIG, [*extra, f"train.objective={objective}"]).train.loss_settings()
        if (setting, objective, seed, alpha, beta) in done:
            continue
        print(f"== {setting} {objective} seed {seed} alpha {alpha}", flush=True)
        runs.append({**run_isolated(setting, objective, seed, extra), "commit": commit()})
        meta["finished"] = time.strftime("%Y-%m-%d %H:%M")
        _write_atomic(RESULTS, {"meta": meta, **store(runs)})
        r = runs[-1]
        hits = np.asarray(r["rank"])
        print(f"   HR@10 {np.mean((hits >= 0) & (hits < 10)):.4f} (train {r['train_s']} s, eval {r['eval_s']} s)",
              flush=True)
    print(f"wrote {RESULTS}; now: python -m benchmarks.report")


if __name__ == "__main__":
    main()
