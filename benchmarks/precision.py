"""bf16 vs fp32 on the CPU: what serving a version evaluated on a GPU costs on a CPU server.

    python -m benchmarks.precision                                  # this CPU's own kernels
    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 python -m benchmarks.precision
                                                                    # as on a CPU without bf16 instructions

A version serves at the precision it was evaluated at (docs/serving.md), and
`eval.precision: auto` picks bf16 on a GPU. Both copies of SmolLM2-135M (fp32 and bf16) are
loaded in this one process and timed in interleaved rounds (fp32 then bf16, then the other way
round), on the two things a served request does:
- prefill: one forward pass over 8 factual prompts of ML-100K titles (10 each, 154 tokens padded);
- ranking: constrained beam search for those prompts (5 beams, the demo's), the trie over the
  ML-100K catalogue, as `benchmarks.decoding` runs it.
Each round's bf16/fp32 time ratio is reported as the median over rounds with its range.
The two environment variables hold oneDNN (the bf16 matrix products) and ATen's own kernels to
AVX2 on a CPU that has more. Results: benchmarks/results/precision-smollm2-<isa>.json|md, isa
being `native` or the value of ONEDNN_MAX_CPU_ISA.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

from benchmarks.decoding import decode
from benchmarks.provenance import machine, write_result
from benchmarks.train_step import ml100k_titles
from cft_core.constrained import TitleTrie
from cft_core.generation import GenerationSettings, response_token_ids
from cft_core.model_sources import load_causal_lm, load_tokenizer, smollm2_folder
from cft_core.prompts import PromptBuilder


def prefill(model, batch) -> float:
    t = time.perf_counter()
    with torch.no_grad():
        model(**batch)
    return time.perf_counter() - t


def ratio_rows(times: dict[str, dict[str, list[float]]]) -> list[dict]:
    """Per task ({task: {"fp32": [s per round], "bf16": [...]}}): each precision's median seconds and
    the bf16/fp32 ratio taken round by round (a round slowed by other load cancels in its own
    ratio), as its median and range."""
    rows = []
    for task, by in times.items():
        ratios = [b / f for b, f in zip(by["bf16"], by["fp32"], strict=True)]
        rows.append({"task": task, "fp32_median_s": statistics.median(by["fp32"]),
                     "bf16_median_s": statistics.median(by["bf16"]), "bf16_over_fp32": statistics.median(ratios),
                     "ratio_min": min(ratios), "ratio_max": max(ratios), "times": by})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--beams", type=int, default=5)
    ns = ap.parse_args()

    torch.manual_seed(0)
    tok = load_tokenizer("smollm2")
    models = {p: load_causal_lm(smollm2_folder(), dtype=d).eval() for p, d in (("fp32", torch.float32),
                                                                                ("bf16", torch.bfloat16))}
    builder = PromptBuilder.for_domain("movies")
    titles = ml100k_titles()
    prompts = [builder.factual(titles[i * 10: i * 10 + 10]) for i in range(ns.prompts)]
    batch = tok(prompts, padding=True, padding_side="left", return_tensors="pt")
    trie = TitleTrie(response_token_ids(tok, builder, titles), len(tok))
    settings = GenerationSettings(ns.beams, ns.beams, 1, 32, 1.0, ns.prompts)
    tasks = {"prefill": lambda m: prefill(m, batch), "ranking": lambda m: decode(m, tok, prompts, settings, trie)[0]}

    for model in models.values():  # warm-up: first calls allocate and pick kernels
        for run in tasks.values():
            run(model)
    times = {task: {p: [] for p in models} for task in tasks}
    for r in range(ns.rounds):
        order = ["fp32", "bf16"] if r % 2 == 0 else ["bf16", "fp32"]
        for task, run in tasks.items():
            for p in order:
                times[task][p].append(run(models[p]))

    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "native")
    rows = ratio_rows(times)
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []
    flags = sorted({f for line in cpuinfo if line.startswith("flags") for f in line.split() if "bf16" in f or "amx" in f})
    meta = {"model": "smollm2", "prompts": ns.prompts, "beams": ns.beams, "rounds": ns.rounds,
            "tokens": list(batch["input_ids"].shape), "isa": isa, "aten": os.environ.get("ATEN_CPU_CAPABILITY", "default"),
            "cpu_bf16_flags": flags, "threads": torch.get_num_threads(), "torch": torch.__version__,
            **machine()}
    stem = f"precision-smollm2-{isa.lower()}"
    lines = [f"# {stem}", "", f"kernels: oneDNN {isa}, ATen {meta['aten']}; CPU bf16 flags: {', '.join(flags) or 'none'}; "
             f"{meta['threads']} threads; {ns.rounds} interleaved rounds", "",
             "| task | fp32 median s | bf16 median s | bf16 / fp32 (median of rounds) | range |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['fp32_median_s']:.3f} | {r['bf16_median_s']:.3f} | {r['bf16_over_fp32']:.2f}x "
                     f"| {r['ratio_min']:.2f}-{r['ratio_max']:.2f} |")
    write_result(stem, {"meta": meta, "rows": rows}, lines)


if __name__ == "__main__":
    main()
