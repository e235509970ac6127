"""docs/results.md from the result files: the controlled study (benchmarks/results/
synthetic-study.json) and the reproductions (benchmarks/results/reproduction-*.json).

    python -m benchmarks.report            # rewrites docs/results.md (and synthetic-study.png)

Nothing in the report is typed by hand: every number comes from a result file written by
`python -m benchmarks.synthetic_study` or `python -m benchmarks.reproduce`. Spread = sample
standard deviation over seeds. "Outside the seed spread" means the two methods' mean +- 1 std
intervals do not overlap. The controlled study's verdicts come from paired 95% intervals that
resample both training seeds and test rows (`cft_core.metrics.paired_bootstrap_ci_seeds`).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np
import pandas as pd

from cft_core.metrics import paired_bootstrap_ci_seeds, per_row_metric
from tasks.compare import plot, verdict

RESULTS = Path(__file__).parent / "results"
REPORT = Path(__file__).resolve().parents[1] / "docs" / "results.md"
KS = (5, 10, 20)
# The evaluation's baselines, as the tables label them: the same ranking in every run of a setting.
BASELINE_LABELS = (("most popular", "most_popular"), ("Markov chain", "markov"), ("SASRec", "sasrec"))
MAIN = "grounding_adjusted"  # the CFT code's default grounding (cft-method.md, section 3)


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def fmt(values: list[float]) -> str:
    m, s = mean_std(values)
    return f"{m:.4f} ± {s:.4f}"


Setting = tuple[str, float, float]  # (objective, alpha, beta)


def by_setting(runs: list[dict]) -> dict[Setting, list[dict]]:
    """Runs grouped by method and loss setting, in order of first appearance."""
    out: dict[Setting, list[dict]] = {}
    for r in runs:
        out.setdefault((r["objective"], r["alpha"], r["beta"]), []).append(r)
    return out


def command(meta: dict, overrides: list[str], name: str | None = None) -> str:
    return (f"python -m benchmarks.reproduce --config {meta['config']}" + (f" --name {name}" if name else "")
            + (f" --sequences {meta['sequences']}" if meta.get("sequences") else "")
            + "".join(f" --set {o}" for o in overrides))


def headline(runs: list[dict]) -> str:
    """The ranking a reproduction's tables and verdict are read from: adjusted grounding (MAIN)
    where every run scored it, else constrained decoding (a profile that scores only D3's
    decoding: configs/study-amazon-cpu.yaml)."""
    for method in (MAIN, "constrained"):
        if all(f"{method}/NDCG@10" in r["metrics"] for r in runs):
            return method
    raise ValueError(f"the runs share neither {MAIN} nor constrained NDCG@10")


def cft_vs_sft(cft: list[dict], sft: list[dict], method: str = MAIN) -> tuple[str, bool]:
    """One verdict sentence for `method`'s NDCG@10 of one CFT setting against SFT, and whether CFT wins."""
    c = [r["metrics"][f"{method}/NDCG@10"] for r in cft]
    s = [r["metrics"][f"{method}/NDCG@10"] for r in sft]
    (mc, sc), (ms, ss) = mean_std(c), mean_std(s)
    paired = {r["seed"]: r["metrics"][f"{method}/NDCG@10"] for r in cft}
    diffs = [paired[r["seed"]] - r["metrics"][f"{method}/NDCG@10"] for r in sft if r["seed"] in paired]
    outside = mc - sc > ms + ss
    text = (f"mean NDCG@10 {mc:.4f} vs SFT {ms:.4f} ({'+' if mc >= ms else ''}{mc - ms:.4f}); "
            f"paired by seed: {fmt(diffs) if diffs else 'n/a'}.")
    return text, outside


def per_row_values(run: dict, quantity: str) -> tuple[list, np.ndarray] | None:
    """(rows, float[R]) of one reproduction run's per-row quantity: `<method>/NDCG@10` from the
    ranked rows, `history effect / token` and `target NLL / token` from the diagnosed rows."""
    rows = run.get("per_row")
    if rows is None:
        return None
    if quantity in ("history effect / token", "target NLL / token"):
        return None if "logp_factual" not in rows else (rows["diagnosed_rows"], STUDY_QUANTITIES[quantity](rows))
    method, metric = quantity.split("/")
    ranks = rows["ranks"].get(method)
    return None if ranks is None else (rows["ranked_rows"], per_row_metric(ranks, metric))


def paired_difference(a: list[dict], b: list[dict], values) -> tuple[float, float, float, int, int] | None:
    """B - A paired by seed and row (the rows both runs of a seed have, in split order): (mean,
    low, high, seeds, rows), two-level bootstrap over seeds and rows; None without shared seeds,
    values or rows. values(run) -> (row keys, float[R]) or None (the run lacks the quantity)."""
    by_seed = {r["seed"]: r for r in a}
    pairs = [(by_seed[r["seed"]], r) for r in b if r["seed"] in by_seed]
    per_pair = [(values(ra), values(rb)) for ra, rb in pairs]
    if not per_pair or any(va is None or vb is None for va, vb in per_pair):
        return None
    shared = set.intersection(*(set(v[0]) for pair in per_pair for v in pair))
    order = sorted(shared)
    if not order:
        return None
    diffs = []
    for va, vb in per_pair:
        ia = {k: i for i, k in enumerate(va[0])}
        ib = {k: i for i, k in enumerate(vb[0])}
        diffs.append(vb[1][[ib[k] for k in order]] - va[1][[ia[k] for k in order]])
    return (*paired_bootstrap_ci_seeds(np.stack(diffs), seed=0), len(pairs), len(order))


def paired_section(groups: dict, main: tuple[float, float]) -> list[str]:
    """Paired differences between the methods (CFT at the configured alpha/beta) from the runs'
    per-row results, when the result file has them."""
    sides = {"sft": [r for (o, _, _), rs in groups.items() if o == "sft" for r in rs],
             "pos": [r for (o, _, _), rs in groups.items() if o == "pos" for r in rs],
             "cft": groups.get(("cft", *main), [])}
    runs = [r for rs in sides.values() for r in rs]
    if not runs or any("per_row" not in r for r in runs):
        return []
    baselines = tuple(key for _, key in BASELINE_LABELS)  # the same ranking in every run: nothing to compare
    methods = sorted({m for r in runs for m in r["per_row"]["ranks"] if not m.startswith(("nohist_", *baselines))})
    quantities = [f"{m}/NDCG@10" for m in methods] + ["history effect / token", "target NLL / token"]
    lines = ["", "### Paired differences (B - A), by seed and row", "",
             "95% intervals resampling both the training seeds and the test rows "
             "(`cft_core.metrics.paired_bootstrap_ci_seeds`); the verdict is read from the interval.", "",
             "| B - A | quantity | seeds | rows | difference | interval | verdict |", "|---|---|---|---|---|---|---|"]
    header = len(lines)
    for a, b in STUDY_PAIRS:
        for q in quantities:
            d = paired_difference(sides[a], sides[b], lambda run, q=q: per_row_values(run, q))
            if d is not None:
                caveat = " (one seed: no training-seed spread in the interval)" if d[3] < 2 else ""
                lines.append(f"| {b} - {a} | {q} | {d[3]} | {d[4]} | {d[0]:+.4f} | [{d[1]:+.4f}, {d[2]:+.4f}] | "
                             f"{verdict(d[1], d[2], b)}{caveat} |")
    return lines if len(lines) > header else []  # no pair of methods shares a seed yet


def history_reliance_table(groups: dict) -> list[str]:
    """Original grounding and NDCG@10 with the history removed from the prompt (when the runs
    re-ranked without it: `eval.history_reliance`)."""
    lines = ["", "### Original grounding (beam 1) and history reliance", "",
             "History reliance: NDCG@10 with the history in the prompt minus NDCG@10 with it removed "
             "(adjusted grounding); CFT is meant to widen this gap.", "",
             "| method | alpha | beta | original NDCG@10 | adjusted NDCG@10 | without history NDCG@10 | gap |",
             "|---|---|---|---|---|---|---|"]
    for (obj, alpha, beta), rs in groups.items():
        with_h = [r["metrics"][f"{MAIN}/NDCG@10"] for r in rs]
        no_h = [r["metrics"].get(f"nohist_{MAIN}/NDCG@10", float("nan")) for r in rs]
        gap = [a - b for a, b in zip(with_h, no_h, strict=True)]
        lines.append(f"| {obj} | {alpha} | {beta} | {fmt([r['metrics']['grounding_original/NDCG@10'] for r in rs])} | "
                     f"{fmt(with_h)} | {fmt(no_h)} | {fmt(gap)} |")
    return lines


def diagnostics_table(groups: dict) -> list[str]:
    """Per method: the teacher-forced history effect and target NLL per token (mean over the
    diagnosed rows, then mean ± std over seeds), when the runs kept their per-row diagnostics."""
    rows = []
    for (obj, alpha, beta), rs in groups.items():
        per_run = {q: [] for q in ("history effect / token", "target NLL / token")}
        for r in rs:
            for q, values in per_run.items():
                v = per_row_values(r, q)
                if v is not None:
                    values.append(float(np.mean(v[1])))
        if per_run["history effect / token"]:
            rows.append(f"| {obj} | {alpha} | {beta} | {len(per_run['history effect / token'])} | "
                        f"{fmt(per_run['history effect / token'])} | {fmt(per_run['target NLL / token'])} |")
    if not rows:
        return []
    return ["", "### Diagnostics (teacher-forced, per target token; mean ± std over seeds)", "",
            "History effect: log p(y | history) - log p(y | no history) per token of the target title "
            "(cft-method.md, section 6). Under CFT the causal term itself pushes log p(y | no history) "
            "down, so a larger effect there is the objective at work; the ranking metrics are the verdict.", "",
            "| method | alpha | beta | seeds | history effect / token | target NLL / token |",
            "|---|---|---|---|---|---|", *rows]


def section(data: dict, name: str | None = None) -> str:
    """One reproduction's section; `name` is its result file's --name (reproduction-<name>.json)
    when that differs from the dataset's name."""
    meta, runs = data["meta"], data["runs"]
    cfg = meta["config_resolved"]
    groups = by_setting(runs)
    method = headline(runs)
    first = runs[0]
    t, e = cfg["train"], cfg["eval"]
    name = name if name != cfg["data"]["name"] else None
    commands = list(dict.fromkeys(command(meta, r.get("overrides", meta["overrides"]), name) for r in runs))
    lines = [
        f"## {name or cfg['data']['name']}",
        "",
        "- Commands: " + "; ".join(f"`{c}`" for c in commands),
        f"- Model: `{cfg['model']['source']}`; training budget per run: {first['steps']} optimizer steps x "
        f"{t['effective_batch_size']} examples = {first['examples_seen']} of {first['train_samples']:,} "
        f"training samples; lr {t['learning_rate']}, warm-up {t['warmup_steps']}, precision {t['precision']}.",
        f"- Evaluation: {first['eval_examples']} {first['eval_split']} rows (seeded subsample, the same rows "
        f"for every run), {e['num_beams']} beams, full ranking over {first['catalogue']:,} items"
        + (f"; the diagnostics on {len(first['per_row']['diagnosed_rows']):,} rows."
           if "diagnosed_rows" in first.get("per_row", {}) else "."),
        *([f"- **Train split derived from histories**: the {cfg['data']['source'].get('path')} files hold "
           "valid and test rows only, so every user's sequence is stitched back from their rows' histories "
           "and targets and re-split chronologically. Not the paper's train split: compare methods with "
           "each other here, not with published numbers."]
          if cfg["data"].get("source", {}).get("format") == "d3_csv" else []),
        f"- Machine: {meta['machine']}, {meta['cpu_count']} CPUs"
        + (f", GPU {meta['gpu']} (torch {meta.get('torch')}, transformers {meta.get('transformers')})"
           if meta.get("gpu") else "") + f". {meta.get('budget_note', '')}",
        "- Runs: " + ", ".join(f"{o} ({a}, {b}): seeds {sorted(r['seed'] for r in v)}"
                               for (o, a, b), v in groups.items()) + "; "
        f"{meta['started']} to {meta.get('finished', '?')}.",
        "",
        f"### {method.replace('_', ' ')}{' decoding' if method == 'constrained' else ''} (mean ± std over seeds)",
        "",
        "| method | alpha | beta | " + " | ".join(f"HR@{k} | NDCG@{k}" for k in KS) + " |",
        "|---|---|---|" + "---|---|" * len(KS),
    ]
    for (obj, alpha, beta), rs in groups.items():
        cells = []
        for k in KS:
            cells += [fmt([r["metrics"][f"{method}/HR@{k}"] for r in rs]),
                      fmt([r["metrics"][f"{method}/NDCG@{k}"] for r in rs])]
        lines.append(f"| {obj} | {alpha} | {beta} | " + " | ".join(cells) + " |")
    # Baselines do not depend on the LLM run: most popular is in every run, the Markov chain in
    # runs evaluated since it exists, SASRec where enabled.
    for label, key in BASELINE_LABELS:
        m = next((r["metrics"] for r in runs if f"{key}/HR@10" in r["metrics"]), None)
        if m is not None:
            lines.append(f"| {label} | | | " + " | ".join(
                f"{m[f'{key}/HR@{k}']:.4f} | {m[f'{key}/NDCG@{k}']:.4f}" for k in KS) + " |")

    if method != "constrained" and all("constrained/HR@10" in r["metrics"] for r in runs):  # D3's, when scored too
        lines += ["", "### constrained decoding (mean ± std over seeds)", "",
                  "| method | alpha | beta | " + " | ".join(f"HR@{k} | NDCG@{k}" for k in KS) + " |",
                  "|---|---|---|" + "---|---|" * len(KS)]
        for (obj, alpha, beta), rs in groups.items():
            cells = [fmt([r["metrics"][f"constrained/{m}@{k}"] for r in rs]) for k in KS for m in ("HR", "NDCG")]
            lines.append(f"| {obj} | {alpha} | {beta} | " + " | ".join(cells) + " |")
    if any(f"nohist_{MAIN}/NDCG@10" in r["metrics"] for r in runs):
        lines += history_reliance_table(groups)
    lines += diagnostics_table(groups)

    lines += ["", "### Verdict", ""]
    cft = {(a, b): rs for (o, a, b), rs in groups.items() if o == "cft"}
    sft = [r for (o, _, _), rs in groups.items() if o == "sft" for r in rs]
    # The verdict is on the configured setting (the reference defaults unless the config says
    # otherwise); the other settings of a sweep are listed, not picked from: choosing the best
    # of several settings on the same test rows would flatter CFT.
    main = (cfg["train"]["alpha"], cfg["train"]["beta"])
    if not (main in cft and sft):
        lines.append("No verdict yet: it needs runs of both CFT at the configured setting and SFT.")
    if main in cft and sft:
        text, outside = cft_vs_sft(cft[main], sft, method)
        if min(len(cft[main]), len(sft)) < 2:  # (a spread of one seed is 0: no verdict to read from it)
            judged = ("With one seed of a method there is no seed spread to judge by: the paired intervals "
                      "below, over rows only, are the evidence so far.")
        elif outside:
            judged = "CFT is above SFT outside the seed spread."
        else:
            judged = "The difference is **not** outside the seed spread: at this budget CFT's gain over SFT is not established."
        lines.append(f"CFT ({main[0]}, {main[1]}) {'' if method == MAIN else 'with constrained decoding: '}{text} {judged}")
        lines.append("")
        lines.append(f"alpha/beta settings tried for CFT: {', '.join(f'({a}, {b})' for a, b in sorted(cft))}.")
        others = [k for k in sorted(cft) if k != main]
        if others:
            lines += ["", "Other settings, each against SFT on the same rows (several settings on one test set: "
                          "one of them looking better is weak evidence):", ""]
            for a, b in others:
                text, outside = cft_vs_sft(cft[(a, b)], sft, method)
                lines.append(f"- CFT ({a}, {b}): {text} "
                             + ("Above SFT outside the seed spread." if outside else "Not outside the seed spread."))

    lines += paired_section(groups, main)

    lines += ["", "### Runs", "",
              "The validation loss is the weighted normal term, whose token weights depend on beta: "
              "it compares runs of one setting, not sft (beta 1) with cft or pos (beta 0.25). "
              "Train and eval s: wall-clock seconds of the invocation that computed the stage; for a "
              "training that an interrupted invocation finished, the trainer's own runtime (without "
              "the model loading).", "",
              f"| method | alpha | beta | seed | steps | best valid loss | {'adjusted' if method == MAIN else method} "
              "NDCG@10 | train s | eval s | MLflow run |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        loss = "-" if r["best_valid_loss"] is None else f"{r['best_valid_loss']:.4f}"
        lines.append(f"| {r['objective']} | {r['alpha']} | {r['beta']} | {r['seed']} | {r['steps']} | {loss} | "
                     f"{r['metrics'][f'{method}/NDCG@10']:.4f} | {r['train_s']} | {r['eval_s']} | `{r['mlflow_run_id']}` |")
    return "\n".join(lines) + "\n"


STUDY_QUANTITIES = {  # label -> per-row value from a study run's arrays
    "NDCG@10": lambda r: per_row_metric(r["rank"], "NDCG@10"),
    "HR@10": lambda r: per_row_metric(r["rank"], "HR@10"),
    "history effect / token": lambda r: (np.subtract(r["logp_factual"], r["logp_counterfactual"])
                                         / np.asarray(r["label_tokens"])),
    "target NLL / token": lambda r: -np.asarray(r["logp_factual"]) / np.asarray(r["label_tokens"]),
}
STUDY_PAIRS = [("sft", "cft"), ("sft", "pos"), ("pos", "cft")]  # (A, B): B - A


def synthetic_section(meta: dict, runs: list[dict], plot_path: Path) -> str:
    """The controlled study: methods per setting, paired differences with intervals, alpha sweep."""
    reference = [r for r in runs if r["objective"] != "cft" or r["alpha"] == 0.1]  # the study grid
    sweep = [r for r in runs if r["objective"] == "cft" and r["alpha"] != 0.1]
    settings = list(dict.fromkeys(r["setting"] for r in runs))
    group: dict[tuple[str, str], list[dict]] = {}
    for r in reference:
        group.setdefault((r["setting"], r["objective"]), []).append(r)
    first = runs[0]
    lines = [
        "## Controlled study: synthetic data with a planted history signal",
        "",
        "- Command: `python -m benchmarks.synthetic_study` (resumable), then `python -m benchmarks.report`; "
        f"config `{meta['config']}`.",
        "- Data (`tasks/synthetic.py`): 2,000 users x 20 interactions over 100 items; the next item is the "
        "last item's planted successor with probability p, else a Zipf popularity draw (exponent = skew). "
        "p is the share of next items that only the history predicts.",
        f"- Training: a tiny Llama (2 layers, hidden 64) from scratch, {first['steps']} optimizer steps x 32 = "
        f"{first['examples_seen']:,} examples ({first['train_samples']:,} training samples, 2 epochs), the same "
        "budget for every objective. Scored on the same "
        f"{len(first['rank']):,} test rows per setting: constrained decoding (10 beams) and the teacher-forced "
        "diagnostics.",
        f"- Machine: {meta['machine']}, {meta['cpu_count']} CPUs; {meta['started']} to {meta.get('finished', '?')}; "
        f"median run {statistics.median(r['train_s'] + r['eval_s'] for r in runs):.0f} s.",
        f"- Runs so far: {len(reference)} of the grid's {len(meta.get('settings', settings)) * 3 * 5} "
        "(settings x sft/pos/cft x seeds 0-4); the study resumes where it stopped"
        + (f", plus {len(sweep)} alpha-sweep runs." if sweep else "."),
        "- Intervals: 95%, paired by seed and row, resampling both training seeds and test rows. The "
        "history effect is log p(y | history) - log p(y | no history) per target token: CFT's causal "
        "term pushes exactly this difference up, so a large CFT value shows the objective at work, "
        "not by itself better recommendations; the ranking metrics are the verdict.",
        "",
        "### Methods per setting (mean ± std over seeds)",
        "",
        "| setting | method | seeds | HR@1 | HR@10 | NDCG@10 | history effect / token | target NLL / token |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for setting in settings:
        for obj in ("sft", "pos", "cft"):
            rs = group.get((setting, obj), [])
            if not rs:
                continue
            per_run = {q: [float(np.mean(f(r))) for r in rs] for q, f in STUDY_QUANTITIES.items()}
            lines.append(f"| {setting} | {obj} | {len(rs)} | {fmt([r['metrics']['constrained/HR@1'] for r in rs])} | "
                         f"{fmt(per_run['HR@10'])} | {fmt(per_run['NDCG@10'])} | "
                         f"{fmt(per_run['history effect / token'])} | {fmt(per_run['target NLL / token'])} |")
        m = next(r["metrics"] for r in runs if r["setting"] == setting)
        for label, key in BASELINE_LABELS[:2]:  # (the study does not train SASRec)
            if f"{key}/HR@1" in m:  # (the Markov chain: runs evaluated since it exists)
                lines.append(f"| {setting} | {label} | | {m[f'{key}/HR@1']:.4f} | {m[f'{key}/HR@10']:.4f} | "
                             f"{m[f'{key}/NDCG@10']:.4f} | | |")

    lines += ["", "### Paired differences (B - A)", "",
              "| setting | B - A | seeds | NDCG@10 | HR@10 | history effect / token | verdict on NDCG@10 |",
              "|---|---|---|---|---|---|---|"]
    forest = []
    for setting in settings:
        for a, b in STUDY_PAIRS:
            ra, rb = group.get((setting, a), []), group.get((setting, b), [])
            cells, ndcg = [], None
            for q in ("NDCG@10", "HR@10", "history effect / token"):
                d = paired_difference(ra, rb, lambda run, q=q: (run["rows"], STUDY_QUANTITIES[q](run)))
                if d is None:
                    break
                cells.append(f"{d[0]:+.4f} [{d[1]:+.4f}, {d[2]:+.4f}]")
                ndcg = ndcg or d
            if len(cells) < 3:
                continue
            caveat = " (one seed: the interval holds no training-seed spread)" if ndcg[3] < 2 else ""
            lines.append(f"| {setting} | {b} - {a} | {ndcg[3]} | " + " | ".join(cells)
                         + f" | {verdict(ndcg[1], ndcg[2], b)}{caveat} |")
            forest.append({"quantity": f"{setting}: {b} - {a}", "B - A": ndcg[0], "ci_low": ndcg[1],
                           "ci_high": ndcg[2]})
    if forest:
        plot(pd.DataFrame(forest), plot_path, "NDCG@10, B - A per setting (95% interval over seeds and rows)")
        lines += ["", f"![paired NDCG@10 differences](../benchmarks/results/{plot_path.name})"]

    if sweep:
        lines += ["", "### Does the history effect grow with alpha? (CFT, beta 0.25)", "",
                  "Each alpha against SFT on the same seeds and rows (NDCG@10, paired, 95% interval).", "",
                  "| setting | alpha | seeds | NDCG@10 | history effect / token | target NLL / token "
                  "| NDCG@10: cft - sft | verdict |", "|---|---|---|---|---|---|---|---|"]
        by_alpha: dict[tuple[str, float], list[dict]] = {}
        for r in [*sweep, *(r for r in reference if r["objective"] == "cft")]:
            by_alpha.setdefault((r["setting"], r["alpha"]), []).append(r)
        for (setting, alpha), rs in sorted(by_alpha.items()):
            if setting not in {r["setting"] for r in sweep}:
                continue
            per_run = {q: [float(np.mean(STUDY_QUANTITIES[q](r))) for r in rs]
                       for q in ("NDCG@10", "history effect / token", "target NLL / token")}
            d = paired_difference(group.get((setting, "sft"), []), rs,
                                  lambda run: (run["rows"], STUDY_QUANTITIES["NDCG@10"](run)))
            paired = f"{d[0]:+.4f} [{d[1]:+.4f}, {d[2]:+.4f}] | {verdict(d[1], d[2], 'cft')}" if d else "- | -"
            lines.append(f"| {setting} | {alpha} | {len(rs)} | {fmt(per_run['NDCG@10'])} | "
                         f"{fmt(per_run['history effect / token'])} | {fmt(per_run['target NLL / token'])} | {paired} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    import argparse

    argparse.ArgumentParser(description="Rewrite docs/results.md (and synthetic-study.png) from the result files "
                                        "in benchmarks/results/.").parse_args(argv)  # (-h: this, and nothing written)
    files = sorted(RESULTS.glob("reproduction-*.json"))
    parts = []
    study = RESULTS / "synthetic-study.json"
    if study.is_file():
        from benchmarks.synthetic_study import load

        meta, runs = load(study)
        if runs:
            parts.append(synthetic_section(meta, runs, RESULTS / "synthetic-study.png"))
    parts = [
        "# Results: CFT vs SFT vs token weighting alone",
        "",
        "Generated by `python -m benchmarks.report` from "
        + ", ".join(f"`benchmarks/results/{f.name}`" for f in ([study] if parts else []) + files)
        + "; do not edit by hand. Methods (cft-method.md): **sft** = plain cross-entropy (alpha 0, beta 1, "
        "BIGRec); **pos** = decaying token weights only (alpha 0); **cft** = token weights + the causal "
        "term. Grounding: BIGRec L2 over the full catalogue.",
        "",
        *parts,
    ]
    if not files:
        parts.append("No reproduction results yet: run `python -m benchmarks.reproduce`.\n")
    for f in files:
        parts.append(section(json.loads(f.read_text()), f.stem.removeprefix("reproduction-")))
    REPORT.parent.mkdir(exist_ok=True)
    REPORT.write_text("\n".join(parts))
    print(f"wrote {REPORT}")


if __name__ == "__main__":
    main()
