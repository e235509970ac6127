"""Constrained vs unconstrained beam search: cost per decoding step (issue 5).

    python -m benchmarks.decoding                      # SmolLM2-135M, ML-100K titles, 8 prompts x 5 beams
    python -m benchmarks.decoding --model tiny         # a 2-layer body with the 49k vocabulary

Both variants decode the same prompts with the same settings; a counting logits processor gives
the number of decoding steps, so time per step compares the two even though constrained beams
stop at a title's end. The trie mask alone (TrieLogitsProcessor on the step's [beams, V] scores)
is timed separately, plain and with `--excluded` items taken out of each prompt's tree (as serving
and the batch job exclude a user's items), interleaved. Results: benchmarks/results/decoding-<model>.json|md.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch
from transformers import LogitsProcessor

from benchmarks.provenance import machine, write_result
from benchmarks.train_step import amazon_titles, build_model, ml100k_titles
from cft_core.constrained import TitleTrie, TrieLogitsProcessor
from cft_core.generation import GenerationSettings, response_token_ids, shared_prefill
from cft_core.model_sources import load_tokenizer
from cft_core.prompts import PromptBuilder


class StepClock(LogitsProcessor):
    """Counts decoding steps (generate calls the processors once per step)."""

    def __init__(self):
        self.steps = 0

    def __call__(self, input_ids, scores):
        self.steps += 1
        return scores


def decode(model, tok, prompts, settings, trie):
    ids = tok(prompts, add_special_tokens=True, padding=True, padding_side="left", return_tensors="pt")
    width = ids["input_ids"].shape[1]
    clock = StepClock()
    processors = [TrieLogitsProcessor(trie, width, tok.eos_token_id)] if trie is not None else []
    cache = shared_prefill(model, ids["input_ids"], ids["attention_mask"], settings.num_beams,
                           room=1 + settings.max_new_tokens)
    t = time.perf_counter()
    with torch.no_grad():
        model.generate(
            input_ids=ids["input_ids"], attention_mask=ids["attention_mask"], past_key_values=cache,
            num_beams=settings.num_beams, num_return_sequences=settings.num_return_sequences,
            min_new_tokens=1, max_new_tokens=settings.max_new_tokens, length_penalty=settings.length_penalty,
            do_sample=False, early_stopping=True, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
            logits_processor=[*processors, clock],
        )
    return time.perf_counter() - t, clock.steps


def mask_only(trie, tok, beams: int, width: int, steps: int, prompts: int, excluded: int,
              repeats: int = 20) -> dict:
    """Seconds per call of the trie mask on [beams, V] scores with `steps` generated tokens, plain
    and with `excluded` items taken out of each prompt's tree (`TitleTrie.banned_edges`: what
    serving and the batch job do with a user's history and `exclude` list), timed interleaved:
    medians and the per-pair ratio (median, min, max)."""
    # Real prefixes: the first `steps` tokens of catalogue titles.
    seqs = [s for s in response_token_ids(tok, PromptBuilder.for_domain("movies"), ml100k_titles()) if len(s) > steps]
    ids = torch.full((beams, width + steps), tok.pad_token_id, dtype=torch.long)
    for b in range(beams):
        ids[b, width:] = torch.tensor(seqs[b % len(seqs)][:steps])
    rng = random.Random(0)
    banned = [trie.banned_edges(rng.sample(sorted(set(trie.end_of)), excluded)) for _ in range(prompts)]
    variants = {"plain": TrieLogitsProcessor(trie, width, tok.eos_token_id),
                "excluding": TrieLogitsProcessor(trie, width, tok.eos_token_id, banned, beams // prompts)}
    scores = torch.randn(beams, len(tok))
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, proc in variants.items():
            t = time.perf_counter()
            proc(ids, scores.clone())
            times[name].append(time.perf_counter() - t)
    ratios = [e / p for e, p in zip(times["excluding"], times["plain"], strict=True)]
    return {"plain": statistics.median(times["plain"]), "excluding": statistics.median(times["excluding"]),
            "ratio": (statistics.median(ratios), min(ratios), max(ratios))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2", choices=["tiny", "smollm2"])
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--beams", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--excluded", type=int, default=200,
                    help="Items taken out of each prompt's tree in the excluding mask timing (a user's history and more).")
    ns = ap.parse_args()

    torch.manual_seed(0)
    tok = load_tokenizer("smollm2")
    model = build_model(ns.model, len(tok)).eval()
    builder = PromptBuilder.for_domain("movies")
    titles = ml100k_titles()
    prompts = [builder.factual(titles[i * 10 : i * 10 + 10]) for i in range(ns.prompts)]
    settings = GenerationSettings(ns.beams, ns.beams, 1, 32, 1.0, ns.prompts)
    rows = []
    catalogues = {"ml-100k": titles}
    if (amazon := amazon_titles()) is not None:
        catalogues["amazon-industrial"] = amazon
    for name, cat in catalogues.items():
        trie = TitleTrie(response_token_ids(tok, builder, cat), len(tok))
        for variant, t in (("unconstrained", None), ("constrained", trie)):
            runs = [decode(model, tok, prompts, settings, t) for _ in range(ns.repeats)]
            secs = statistics.median(r[0] for r in runs)
            steps = runs[0][1]
            rows.append({"catalogue": name, "titles": len(cat), "trie_nodes": trie.num_nodes, "variant": variant,
                         "median_s": secs, "steps": steps, "s_per_step": secs / steps})
        width = tok(prompts[0])["input_ids"].__len__()
        mask = mask_only(trie, tok, ns.prompts * ns.beams, width, 4, ns.prompts, ns.excluded)
        rows.append({"catalogue": name, "titles": len(cat), "trie_nodes": trie.num_nodes, "variant": "trie mask only",
                     "median_s": None, "steps": 1, "s_per_step": mask["plain"]})
        rows.append({"catalogue": name, "titles": len(cat), "trie_nodes": trie.num_nodes,
                     "variant": f"trie mask, {ns.excluded} items excluded per prompt", "median_s": None, "steps": 1,
                     "s_per_step": mask["excluding"], "vs_plain_mask": mask["ratio"]})
    stem = f"decoding-{ns.model}"
    meta = {"model": ns.model, "prompts": ns.prompts, "beams": ns.beams, "threads": torch.get_num_threads(),
            **machine()}
    lines = [f"# {stem}", "", str(meta), "",
             "| catalogue | titles | trie nodes | variant | steps | s / step | vs unconstrained | vs the plain mask |",
             "|---|---|---|---|---|---|---|---|"]
    base = {r["catalogue"]: r["s_per_step"] for r in rows if r["variant"] == "unconstrained"}
    for r in rows:
        vs_mask = "{:.2f}x ({:.2f}-{:.2f})".format(*r["vs_plain_mask"]) if "vs_plain_mask" in r else ""
        lines.append(f"| {r['catalogue']} | {r['titles']:,} | {r['trie_nodes']:,} | {r['variant']} | {r['steps']} | "
                     f"{r['s_per_step'] * 1000:.2f} ms | {r['s_per_step'] / base[r['catalogue']]:.2f}x | {vs_mask} |")
    write_result(stem, {"meta": meta, "rows": rows}, lines)


if __name__ == "__main__":
    main()
