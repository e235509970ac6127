"""Shared prompt prefix: ranking time with the prompts' common start run once.

    python -m benchmarks.prompt_prefix                 # SmolLM2-135M, the demo's test histories
    python -m benchmarks.prompt_prefix --rounds 5 --rows 32

Every factual prompt starts with the same ~70 tokens (preamble, instruction, the history's
introduction); with 10 history titles that is about half of the prompt, and the prompt pass is
most of a beam search's time on 2 CPU cores. Three variants of the same constrained beam search
(`cft_core.generation.generate_titles`, the demo's ranking settings: 5 beams, the ML-100K title
trie), on the same prompts:

- `per-row`: every row runs its whole prompt (the layout before this change);
- `per-batch`: the rows' common start runs once per batch;
- `cached`: the common start comes from a `PromptPrefixCache` filled earlier (what a `Ranker`,
  hence evaluation and serving, does after its first batch).

Two batch sizes: 16 prompts per call (a server's full batch) and 1 (one user at a time, where
only the cache helps). Then the evaluation's teacher-forced diagnostics (`cft_core.diagnostics`,
two passes per row, the demo's batches of 8) on the same rows, `per-row` against `shared` (the
factual prompts' common start and the counterfactual prompt, which is the same for every row,
run once per call). Rounds interleave the variants (A B C, B C A, C A B, ...),
so a change of load hits all alike; each ratio is the median of the per-round ratios with its
range. The base model stands in for a fine-tuned one (the prompt pass does not depend on the
weights). Results: benchmarks/results/prompt_prefix.json (every timing) and the table printed at
the end (docs/serving.md).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from benchmarks.provenance import machine
from benchmarks.train_step import pair_ratios

RESULTS = Path(__file__).parent / "results" / "prompt_prefix.json"
VARIANTS = ("per-row", "per-batch", "cached")
DIAGNOSTIC_VARIANTS = ("per-row", "shared")  # shared: the factual start and the counterfactual prompt once per call


def demo_records(rows: int) -> tuple[list[dict], object, Path]:
    """A seeded sample of `rows` records of the demo's test split (as the evaluation draws them),
    the demo config and its sequences folder."""
    from schemas.config import load_config
    from tasks.data import prepare
    from tasks.training import read_records

    cfg = load_config(Path(__file__).parents[1] / "configs" / "demo.yaml")
    _, sequences, _ = prepare(cfg.data)
    return read_records(sequences.path / "test.parquet", rows, cfg.eval.seed), cfg, sequences.path


def speedup_table(runs: list[dict], rounds: int, variants: tuple[str, ...] = VARIANTS) -> list[dict]:
    """Per batch size and variant: median seconds and the speed-up over `per-row`, taken per round
    (per-row seconds / variant seconds in the same round, `train_step.pair_ratios`), as median and
    range over the rounds."""
    table = []
    for batch in sorted({r["batch"] for r in runs}, reverse=True):
        # seconds[v][round]: each variant's time in each round
        seconds = {v: [next(r["seconds"] for r in runs if r["round"] == rnd and r["batch"] == batch
                            and r["variant"] == v) for rnd in range(rounds)] for v in variants}
        for v in variants:
            speedup = pair_ratios(seconds, "per-row", v)
            table.append({"batch": batch, "variant": v, "median_s": statistics.median(seconds[v]),
                          "speedup_median": speedup["median"], "speedup_min": speedup["min"],
                          "speedup_max": speedup["max"]})
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rows", type=int, default=32, help="test rows per measurement (batch 16: 2 calls)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()

    from dataclasses import replace

    from cft_core.constrained import TitleTrie
    from cft_core.diagnostics import label_likelihoods
    from cft_core.generation import generate_titles, response_token_ids
    from cft_core.model_sources import load_causal_lm, load_tokenizer
    from cft_core.prefix import PromptPrefixCache
    from cft_core.prompts import PromptBuilder
    from tasks.evaluation import read_catalogue
    from tasks.settings import ranking_settings

    records, cfg, sequences = demo_records(args.rows)
    prompts = PromptBuilder.for_domain(cfg.data.domain)
    texts = [prompts.factual(r["history_titles"][-cfg.data.max_history :]) for r in records]
    tokenizer, model = load_tokenizer(cfg.model.source), load_causal_lm(cfg.model.source).eval()
    # As `Ranker` does for constrained ranking: the catalogue's trie, room for its longest title.
    titles = read_catalogue(sequences)["title"].tolist()
    trie_rows = response_token_ids(tokenizer, prompts, titles)
    trie = TitleTrie(trie_rows, len(tokenizer))
    base = replace(ranking_settings(cfg, "constrained").generation, max_new_tokens=max(len(r) for r in trie_rows))
    prompt_tokens = [len(r) for r in tokenizer(texts)["input_ids"]]

    def measure(variant: str, batch: int) -> dict:
        settings = replace(base, batch_size=batch)
        cache = PromptPrefixCache()
        if variant == "cached":  # filled by an earlier, unrelated request, as in a running server
            generate_titles(model, tokenizer, [texts[-1]], settings, trie=trie, progress=False, prefix_cache=cache)
        t = time.perf_counter()
        beams = generate_titles(model, tokenizer, texts, settings, trie=trie, progress=False,
                                prefix_cache=cache if variant == "cached" else None,
                                share_prefix=variant != "per-row")
        return {"seconds": time.perf_counter() - t, "beams": beams}

    def diagnose(variant: str) -> dict:
        t = time.perf_counter()
        ll = label_likelihoods(model, tokenizer, prompts, records, cfg.eval.batch_size, cfg.train.cutoff_len,
                               share_prefix=variant != "per-row")
        return {"seconds": time.perf_counter() - t, "values": ll.history_effect}

    runs, diagnostics, reference = [], [], {}
    for rnd in range(args.rounds):
        for batch in (16, 1):
            order = VARIANTS[rnd % 3 :] + VARIANTS[: rnd % 3]
            for variant in order:
                r = measure(variant, batch)
                same = reference.setdefault(batch, r["beams"]) == r["beams"]
                runs.append({"round": rnd, "batch": batch, "variant": variant, "seconds": r["seconds"],
                             "same_titles_as_first": same})
                print(f"round {rnd} batch {batch:2d} {variant:9s}: {r['seconds']:6.2f} s  same titles: {same}")
        for variant in DIAGNOSTIC_VARIANTS[rnd % 2 :] + DIAGNOSTIC_VARIANTS[: rnd % 2]:
            r = diagnose(variant)
            gap = float(abs(reference.setdefault("diagnostics", r["values"]) - r["values"]).max())
            diagnostics.append({"round": rnd, "batch": cfg.eval.batch_size, "variant": variant,
                                "seconds": r["seconds"], "max_abs_difference_nats": gap})
            print(f"round {rnd} diagnostics {variant:9s}: {r['seconds']:6.2f} s  "
                  f"largest history-effect difference {gap:.1e} nats")

    table = speedup_table(runs, args.rounds)
    diagnostics_table = speedup_table(diagnostics, args.rounds, DIAGNOSTIC_VARIANTS)
    result = {
        "model": cfg.model.source, "rows": len(texts), "rounds": args.rounds, "threads": torch.get_num_threads(),
        "num_beams": base.num_beams, "prompt_tokens_median": statistics.median(prompt_tokens),
        **machine(), "table": table, "runs": runs,
        "diagnostics_table": diagnostics_table, "diagnostics_runs": diagnostics,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"\n{len(texts)} demo test prompts (median {result['prompt_tokens_median']} tokens), "
          f"constrained, {base.num_beams} beams, {result['threads']} threads, {args.rounds} rounds\n")
    print("| prompts per call | variant | seconds (median) | speed-up vs per-row (median, range) |")
    print("|---|---|---|---|")
    for row in table:
        print(f"| {row['batch']} | {row['variant']} | {row['median_s']:.2f} | {row['speedup_median']:.2f}x "
              f"({row['speedup_min']:.2f}-{row['speedup_max']:.2f}) |")
    print(f"\nDiagnostics (two teacher-forced passes per row, batches of {cfg.eval.batch_size}):\n")
    print("| variant | seconds (median) | speed-up vs per-row (median, range) |")
    print("|---|---|---|")
    for row in diagnostics_table:
        print(f"| {row['variant']} | {row['median_s']:.2f} | {row['speedup_median']:.2f}x "
              f"({row['speedup_min']:.2f}-{row['speedup_max']:.2f}) |")


if __name__ == "__main__":
    main()
