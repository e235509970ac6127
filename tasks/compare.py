"""`cft compare`: runs compared row by row, with bootstrap intervals of the differences.

Each evaluated run has per-row results: `predictions.parquet` (the first-hit rank of every
ranking method) and `diagnostics.parquet` (teacher-forced log-likelihoods). Two runs evaluated on
the same split share rows, identified by (user_id, target_item_id, occurrence): a user can have
the same target at several times in a split (a time-based split keeps several rows per user), and
the occurrence numbers those rows in the split file's order, which evaluation writes into both
files, so runs that evaluated different samples of the split still pair. A comparison uses only
the rows every run has. A *side* is one run, or several runs of one method with different seeds:
its per-row value is the mean over its seeds. When both sides have the same seeds (param
`train.seed`) they are paired seed by seed: the mean over s of (B_s - A_s) per row, which is the
difference of the seed means, so the intervals (rows resampled) are the same either way; the
table says whether the seeds matched.

For every quantity (HR/NDCG@K per method; history effect per title and per token; target NLL)
the table holds mean(A), mean(B), mean(B - A) and the percentile-bootstrap interval of
mean(B - A), resampling rows (`cft_core.metrics.paired_bootstrap_ci`), with a verdict read from
the interval: "B higher", "B lower", or "no difference at this budget" when it holds 0. Runs
whose methods ranked with different settings (beams, `eval.backfill`, precision: recorded in the
evaluation's summary.json) still compare, since that may be the question, but the table says so
first (`ranking_differences`): B - A then holds the settings' effect too.

A run is named by its MLflow run id, its evaluation folder, or a registered version
(`models:/cft-ml-100k/3`, `models:/cft-ml-100k@champion`): the version's run.

Runs that evaluated different data windows (sequences folders) are refused: their rows are other
interactions, and their item ids are each window's own shuffle, so a (user, target) key would pair
rows by chance. Two versions trained on different windows are compared by evaluating both on one
window (`cft evaluate --model models:/NAME/N` for each), then comparing those evaluation folders.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cft_core.metrics import paired_bootstrap_ci, per_row_metric
from schemas.errors import InputError, mlflow_absent
from tasks.tracking import missing_store

KEY = ["user_id", "target_item_id", "occurrence"]


def keyed(frame: pd.DataFrame) -> pd.DataFrame:
    """Per-row results (split order) indexed by KEY: user, target, and which of that user's rows
    with that target this is in the split file (the `occurrence` column evaluation writes; for
    folders written before it, counted within the evaluated rows, which agrees unless two runs
    evaluated different samples of a split where a user meets a target twice)."""
    if "occurrence" not in frame.columns:
        frame = frame.assign(occurrence=frame.groupby(["user_id", "target_item_id"]).cumcount())
    return frame.set_index(KEY)
DIAGNOSTIC_COLUMNS = {  # quantity -> per-row value from diagnostics.parquet (cft_core.diagnostics)
    "history_effect": lambda d: d["logp_factual"] - d["logp_counterfactual"],
    "history_effect_per_token": lambda d: (d["logp_factual"] - d["logp_counterfactual"]) / d["label_tokens"],
    "target_nll": lambda d: -d["logp_factual"] / d["label_tokens"],
}


@dataclass(frozen=True)
class Evaluated:
    """One run's per-row results: `rows` indexed by KEY, a column per quantity; `seed` (None if
    unknown); `window`: the sequences folder it evaluated (None for folders written before it was
    recorded) and `catalogue`, its size; `ranking`: each method's `RankingSettings` as a dict
    (None for folders written before it was recorded, 2026-12-06)."""

    label: str
    rows: pd.DataFrame
    seed: int | None = None
    window: str | None = None
    catalogue: int | None = None
    ranking: dict | None = None


def evaluated(label: str, folder: Path, metrics: list[str], seed: int | None = None) -> Evaluated:
    """An evaluation folder as one run of a side (its per-row quantities and its data window)."""
    import json

    rows = per_row_quantities(folder, metrics)
    summary = json.loads((folder / "summary.json").read_text()) if (folder / "summary.json").is_file() else {}
    return Evaluated(label, rows, seed, summary.get("sequences"), summary.get("catalogue"), summary.get("ranking"))


def _flat(settings: dict, prefix: str = "") -> dict:
    """{"constrained": {"generation": {"num_beams": 5}}} -> {"constrained.generation.num_beams": 5}."""
    out = {}
    for key, value in settings.items():
        out.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


def ranking_differences(a: list[Evaluated], b: list[Evaluated]) -> list[str]:
    """The ranking settings in which side B's runs differ from side A's, one line each ("constrained
    backfill: popularity (A) vs none (B)"), and the runs whose settings were not recorded, where
    some were. Generation batch sizes are left out: they do not change a ranking."""
    flat = [[_flat(r.ranking) for r in side if r.ranking is not None] for side in (a, b)]
    if not flat[0] and not flat[1]:
        return []
    lines = []
    for key in sorted({k for side in flat for f in side for k in f if not k.endswith(".batch_size")}):
        values = [sorted({str(f.get(key, "-")) for f in side}) for side in flat]
        if all(values) and values[0] != values[1]:
            method, _, name = key.partition(".")
            lines.append(f"{method} {name}: {', '.join(values[0])} (A) vs {', '.join(values[1])} (B)")
    if unknown := [r.label for r in a + b if r.ranking is None]:
        lines.append(f"ranking settings not recorded for {', '.join(unknown)} (evaluated before they were)")
    return lines



def check_one_window(runs: list[Evaluated]) -> None:
    """InputError when the runs evaluated different data windows (module docstring), naming them.
    Folders that predate the recorded window are told apart by their catalogue sizes."""
    windows = {r.window for r in runs if r.window}
    sizes = {r.catalogue for r in runs if r.catalogue is not None}
    if len(windows) <= 1 and len(sizes) <= 1:
        return
    what = "; ".join(f"{r.label}: {r.window or 'window not recorded'}, {r.catalogue} items" for r in runs)
    raise InputError(f"the runs evaluated different data windows ({what}): those are other rows, and each "
                     "window numbers its items its own way. Evaluate the models on one window, then compare "
                     "those folders: cft evaluate -c PROFILE --model models:/NAME/N (or --model-dir FOLDER) "
                     "for each, then cft compare FOLDER_A FOLDER_B")


def per_row_quantities(folder: Path, metrics: list[str]) -> pd.DataFrame:
    """An evaluation folder -> DataFrame indexed by KEY: one column per `<method>/<HR|NDCG>@K`
    (for each method the folder ranked) and per diagnostic (when the folder has them)."""
    if not (folder / "predictions.parquet").is_file():
        raise InputError(f"{folder} is not an evaluation folder (no predictions.parquet)")
    preds = pd.read_parquet(folder / "predictions.parquet")
    methods = [c.removesuffix("_rank") for c in preds.columns if c.endswith("_rank")]
    out = preds[[c for c in ("user_id", "target_item_id", "occurrence") if c in preds.columns]].copy()
    for method in methods:
        for metric in metrics:
            out[f"{method}/{metric}"] = per_row_metric(preds[f"{method}_rank"].to_numpy(), metric)
    out = keyed(out)
    if (folder / "diagnostics.parquet").is_file():
        d = keyed(pd.read_parquet(folder / "diagnostics.parquet"))
        diag = pd.DataFrame({name: f(d) for name, f in DIAGNOSTIC_COLUMNS.items()}, index=d.index)
        out = out.join(diag, how="outer")
    return out


def verdict(low: float, high: float, b: str = "B") -> str:
    """What an interval of B - A supports: B higher (it excludes 0 from above), B lower, or no
    difference at this budget (it holds 0)."""
    return f"{b} higher" if low > 0 else f"{b} lower" if high < 0 else "no difference at this budget"


def _side_values(side: list[Evaluated], quantity: str, rows: pd.Index) -> np.ndarray:
    """[S, R]: the quantity per seed (run) of a side on the shared rows."""
    return np.stack([run.rows.loc[rows, quantity].to_numpy(dtype=float) for run in side])


def compare(a: list[Evaluated], b: list[Evaluated], level: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Side B against side A: one row per quantity both sides have, on the rows all runs share."""
    runs = a + b
    check_one_window(runs)
    quantities = [q for q in runs[0].rows.columns if all(q in r.rows.columns for r in runs)]
    seeds_a, seeds_b = [r.seed for r in a], [r.seed for r in b]
    by_seed = None not in seeds_a and sorted(seeds_a) == sorted(seeds_b) and len(set(seeds_a)) == len(seeds_a)
    shared = runs[0].rows.index
    for r in runs[1:]:
        shared = shared.intersection(r.rows.index)
    out = []
    for q in quantities:
        # The shared rows where every run has this quantity (diagnostics may cover other rows).
        rows = shared[np.all([r.rows.loc[shared, q].notna().to_numpy() for r in runs], axis=0)]
        if len(rows) == 0:
            continue
        va, vb = _side_values(a, q, rows), _side_values(b, q, rows)
        per_row_a, per_row_b = va.mean(axis=0), vb.mean(axis=0)  # [R]: each side's mean over its seeds
        diff, low, high = paired_bootstrap_ci(per_row_b, per_row_a, level=level, seed=seed)
        out.append({"quantity": q, "rows": len(rows), "seeds": f"{len(a)} vs {len(b)}" + (" (paired)" if by_seed else ""),
                    "A": float(per_row_a.mean()), "B": float(per_row_b.mean()), "B - A": diff,
                    "ci_low": low, "ci_high": high, "verdict": verdict(low, high)})
    if not out:
        raise InputError("the runs share no evaluated rows (different splits or datasets?)")
    return pd.DataFrame(out)


def markdown(table: pd.DataFrame, a_label: str, b_label: str, level: float, differences: list[str] = ()) -> str:
    """The comparison as a Markdown table, after the ranking settings the sides differ in (`ranking_differences`)."""
    lines = [f"A = {a_label}; B = {b_label}. Intervals: {level:.0%} percentile bootstrap of mean(B - A) over rows.", ""]
    if differences:
        lines += ["The sides ranked with different settings, so B - A holds their effect too:",
                  *[f"- {d}" for d in differences], ""]
    lines += ["| quantity | rows | seeds | A | B | B - A | interval | verdict |", "|---|---|---|---|---|---|---|---|"]
    for r in table.itertuples(index=False):
        lines.append(f"| {r.quantity} | {r.rows} | {r.seeds} | {r.A:.4f} | {r.B:.4f} | {r[5]:+.4f} | "
                     f"[{r.ci_low:+.4f}, {r.ci_high:+.4f}] | {r.verdict} |")
    return "\n".join(lines)


def plot(table: pd.DataFrame, path: Path, title: str) -> None:
    """Forest plot: B - A per quantity with its interval; a dashed line at 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.45 * len(table) + 1.2))
    y = np.arange(len(table))[::-1]
    diff = table["B - A"].to_numpy()
    ax.errorbar(diff, y, xerr=[diff - table["ci_low"].to_numpy(), table["ci_high"].to_numpy() - diff], fmt="o",
                capsize=3)
    ax.axvline(0, ls="--", c="grey")
    ax.set_yticks(y, table["quantity"])
    ax.set_xlabel("B - A (per-row mean), bootstrap interval")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def evaluation_of_run(run_id: str, split: str, tracking_uri: str, into: Path) -> tuple[Path, int | None]:
    """An MLflow run's logged evaluation folder of `split`, downloaded into `into`, and the run's
    training seed (param `train.seed`, None when absent)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    store = missing_store(tracking_uri)
    if store is not None:
        raise InputError(f"{run_id} is neither an evaluation folder nor a run: there is no tracking store at {store}")
    client = MlflowClient(tracking_uri)
    try:
        run = client.get_run(run_id)
    except MlflowException as e:
        if not mlflow_absent(e):
            raise
        raise InputError(f"run {run_id} is not in the tracking store {tracking_uri}") from None
    if f"cft.evaluation.{split}" not in run.data.tags:
        raise InputError(f"run {run_id} has no {split} evaluation logged (run `cft evaluate` for it first)")
    local = client.download_artifacts(run_id, f"evaluation/{split}", str(into))
    seed = run.data.params.get("train.seed")
    return Path(local), int(seed) if seed is not None and str(seed).lstrip("-").isdigit() else None


def run_of_version(uri: str, tracking_uri: str) -> str:
    """The run a registered version (models:/NAME/VERSION or models:/NAME@ALIAS) was made from."""
    from tasks.registry import llm_version

    return llm_version(uri, tracking_uri).run_id


def load_side(spec: str, split: str, tracking_uri: str, metrics: list[str], into: Path) -> list[Evaluated]:
    """A side as typed: comma-separated run ids, registered versions or evaluation folders (one
    per seed)."""
    side = []
    for item in [s.strip() for s in spec.split(",") if s.strip()]:
        path = Path(item)
        if path.is_dir():  # an evaluation folder: its seed is not recorded in it
            side.append(evaluated(item, path, metrics))
        else:
            run_id = run_of_version(item, tracking_uri) if item.startswith("models:/") else item
            folder, seed = evaluation_of_run(run_id, split, tracking_uri, into / run_id)
            side.append(evaluated(item, folder, metrics, seed))
    if not side:
        raise InputError(f"no run in {spec!r}")
    return side
