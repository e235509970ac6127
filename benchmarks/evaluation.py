"""Ranking + metrics throughput after embeddings are computed (issue 5's target: < 1 s for
1,000 test rows x 5 beams over a 17k-title catalogue).

    python -m benchmarks.evaluation            # writes benchmarks/results/evaluation.json|md

Embeddings are random (speed does not depend on their values); width 576 is SmolLM2-135M's.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.provenance import machine
from cft_core.grounding import interleave_dedup, l2_topk
from cft_core.metrics import item_hit_ranks, ranking_metrics

RESULTS = Path(__file__).parent / "results"


def run(rows: int = 1000, beams: int = 5, items: int = 17408, dim: int = 576, repeats: int = 5) -> dict:
    g = torch.Generator().manual_seed(0)
    item_emb = torch.randn(items, dim, generator=g)
    gen_emb = torch.randn(rows * beams, dim, generator=g)
    title_of_item = np.arange(items) % (items - 100)  # ~100 duplicated titles, as real catalogues have
    target = title_of_item[np.random.default_rng(0).integers(0, items, rows)]
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        per_beam = l2_topk(gen_emb, item_emb, 50).numpy().reshape(rows, beams, 50)
        for ranked in (per_beam[:, 0], interleave_dedup(per_beam, 50)):
            ranking_metrics(item_hit_ranks(ranked, title_of_item, target), (1, 3, 5, 10, 20, 50))
        times.append(time.perf_counter() - t0)
    return {"rows": rows, "beams": beams, "items": items, "dim": dim, "threads": torch.get_num_threads(),
            "median_s": statistics.median(times), "min_s": min(times), "repeats": repeats}


def main() -> None:
    res = {**run(), **machine()}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "evaluation.json").write_text(json.dumps(res, indent=1))
    md = ("| rows x beams | catalogue | dim | threads | ranking + metrics (both groundings), median |\n"
          "|---|---|---|---|---|\n"
          f"| {res['rows']} x {res['beams']} | {res['items']:,} | {res['dim']} | {res['threads']} | {res['median_s']:.3f} s |\n")
    (RESULTS / "evaluation.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
