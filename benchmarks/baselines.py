"""The simple baselines on a profile's full splits: most popular against the first-order Markov
chain, on the same rows, with the paired bootstrap interval of the difference. The bar an LLM
version must clear to serve (the gate's floor), measured on the whole of each split:

    python -m benchmarks.baselines                              # configs/gpu.yaml: ML-100K, full splits
    python -m benchmarks.baselines --config configs/amazon-industrial.yaml

The data is prepared as the profile prepares it (reused when unchanged); the baselines are ranked
as the evaluation ranks them (`tasks.baselines`, `cft_core.ranking`), hits counted by title as the
evaluation counts them. Results: benchmarks/results/baselines-<data.name>.json and .md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from benchmarks.provenance import machine, write_result

KS = (5, 10, 20)


def split_metrics(sequences: Path, split: str, counts, transitions, level: float = 0.95) -> dict:
    """Per baseline, HR@K and NDCG@K over every record of `split`; the paired interval of
    markov - most popular on NDCG@10."""
    import pyarrow.parquet as pq

    from cft_core.metrics import item_hit_ranks, paired_bootstrap_ci, per_row_metric, title_ids
    from cft_core.ranking import Catalogue, markov_ranking, popularity_ranking

    titles = pq.read_table(sequences / "catalogue.parquet", columns=["item_id", "title"]).sort_by("item_id")
    titles = titles["title"].to_pylist()
    tid, table = title_ids(titles)
    never = Catalogue(range(len(titles)), titles).never
    rows = pq.read_table(sequences / f"{split}.parquet", columns=["history_item_ids", "target_title"]).to_pydict()
    target = np.array([table[t] for t in rows["target_title"]])
    started = time.perf_counter()
    ranked = {"most_popular": popularity_ranking(counts, len(target), max(KS), never=never),
              "markov": markov_ranking(transitions, counts, [h[-1] for h in rows["history_item_ids"]], max(KS),
                                       never=never)}
    seconds = time.perf_counter() - started
    per_row = {name: item_hit_ranks(r.rows, tid, target) for name, r in ranked.items()}
    metrics = {name: {f"{m}@{k}": float(per_row_metric(ranks, f"{m}@{k}").mean()) for k in KS for m in ("HR", "NDCG")}
               for name, ranks in per_row.items()}
    diff, low, high = paired_bootstrap_ci(per_row_metric(per_row["markov"], "NDCG@10"),
                                          per_row_metric(per_row["most_popular"], "NDCG@10"), level)
    return {"split": split, "rows": len(target), "metrics": metrics, "ranking_s": round(seconds, 2),
            "markov_minus_popular_ndcg10": [diff, low, high]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/gpu.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="config overrides")
    args = parser.parse_args()

    from schemas.config import load_config
    from tasks.baselines import window_counts
    from tasks.data import prepare

    cfg = load_config(args.config, args.set)
    _, sequences, _ = prepare(cfg.data)
    counts, transitions = window_counts(sequences.path)
    splits = [split_metrics(sequences.path, s, counts, transitions) for s in ("valid", "test")]

    lines = [f"# Baselines on {cfg.data.name} ({sequences.path.name}), every record of each split", "",
             f"`python -m benchmarks.baselines --config {args.config}`. Hits by title, as the evaluation counts them; "
             "the interval is a 95% paired bootstrap interval over the rows.", "",
             "| split | rows | baseline | " + " | ".join(f"HR@{k} | NDCG@{k}" for k in KS) + " |",
             "|---|---|---|" + "---|---|" * len(KS)]
    for s in splits:
        for name in ("most_popular", "markov"):
            m = s["metrics"][name]
            lines.append(f"| {s['split']} | {s['rows']:,} | {name} | "
                         + " | ".join(f"{m[f'HR@{k}']:.4f} | {m[f'NDCG@{k}']:.4f}" for k in KS) + " |")
    lines += ["", "| split | markov - most popular, NDCG@10 | 95% interval | verdict |", "|---|---|---|---|"]
    for s in splits:
        diff, low, high = s["markov_minus_popular_ndcg10"]
        verdict = "markov better" if low > 0 else "most popular better" if high < 0 else "no difference"
        lines.append(f"| {s['split']} | {diff:+.4f} | [{low:+.4f}, {high:+.4f}] | {verdict} |")
    write_result(f"baselines-{cfg.data.name}", {"meta": {**machine(), "config": args.config, "overrides": args.set,
                                                         "sequences": sequences.path.name}, "splits": splits}, lines)


if __name__ == "__main__":
    main()
