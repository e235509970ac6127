"""Training-loop benchmark: the real training step against the bare kernel step, interleaved.

    python -m benchmarks.train_loop                          # configs/demo.yaml (SmolLM2-135M), 10 rounds
    python -m benchmarks.train_loop --config configs/smoke.yaml --rounds 20

"loop" is what `cft train` runs: `tasks.training.train` with the config (Trainer, DeepSpeed ZeRO
on CPU as configured, the paired collator, the window normaliser, logging), for warm-up + rounds
optimizer steps; validation and checkpoints are pushed past the end so that only training steps
are timed. A callback holds the Trainer at the end of every optimizer step until the parent says
go, and the time from go to the next step's end is that step: data loading, collation, every
micro-batch's forward and backward, clipping, the optimizer, logging.

"kernel" is the same model and objective without the machinery: `compute_cft_loss` + backward +
torch AdamW on batches collated from the same training split, one micro-batch of the whole
effective batch per step (what `benchmarks.train_step` times).

Rounds alternate the two (loop, kernel; kernel, loop; ...), one process computing at a time, and
the ratio loop/kernel per training example is taken per round: the median with its range.
Tokens/s: the tokens of both halves of every example (the factual prompt + target and the
counterfactual one), per second of step time. Results: benchmarks/results/train_loop-<data>.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.provenance import machine

RESULTS = Path(__file__).parent / "results"


def batch_tokens(batch: dict) -> int:
    return int(batch["attention_mask"].sum()) + int(batch["cf_attention_mask"].sum())


def run_loop(config: str, overrides: list[str], rounds: int, warmup: int, conn) -> None:
    """Child: the real training, held at every optimizer step's end by the parent."""
    from transformers import TrainerCallback

    import cft_core.collate as collate
    from schemas.config import load_config
    from tasks.data import prepare
    from tasks.training import train

    tokens: list[int] = []
    collate_call = collate.PairedCollator.__call__

    def counting_call(self, records):  # instrumentation: count what the Trainer collates
        batch = collate_call(self, records)
        tokens.append(batch_tokens(batch))
        return batch

    collate.PairedCollator.__call__ = counting_call
    steps = warmup + rounds
    # Validation and checkpoints only after the last step: training steps alone are timed.
    cfg = load_config(Path(config), [*overrides, f"train.max_steps={steps}", f"train.eval_steps={steps + 1}",
                                     "tracking.enabled=false", "registry.enabled=false"])
    _, sequences, _ = prepare(cfg.data)  # prepared by the parent: reused

    class Gate(TrainerCallback):
        def __init__(self):
            self.started, self.times, self.step_tokens, self.seen = None, [], [], 0

        def on_step_end(self, args, state, control, **kwargs):
            now = time.perf_counter()
            if self.started is not None and state.global_step > warmup:
                self.times.append(now - self.started)
                self.step_tokens.append(sum(tokens[self.seen :]))
                conn.send(self.times[-1])
            self.seen = len(tokens)
            if state.global_step == warmup:
                conn.send("ready")
            if warmup <= state.global_step < steps:
                conn.recv()  # "step": go on
            self.started = time.perf_counter()

    gate = Gate()
    train(cfg, sequences.path, sequences.fingerprint, extra_callbacks=[gate])
    conn.send({"step_s": gate.times, "tokens": gate.step_tokens, "examples_per_step": cfg.train.effective_batch_size})


def run_kernel(config: str, overrides: list[str], warmup: int, conn) -> None:
    """Child: compute_cft_loss + backward + AdamW on collated training batches, one per step."""
    import random

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cft_core.collate import PairedCollator
    from cft_core.loss import compute_cft_loss
    from cft_core.prompts import PromptBuilder
    from schemas.config import load_config
    from tasks.data import prepare
    from tasks.training import model_folder, read_records

    cfg = load_config(Path(config), overrides)
    t = cfg.train
    _, sequences, _ = prepare(cfg.data)
    source = model_folder(cfg, sequences.path)
    tok = AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, use_safetensors=True)
    model.config.use_cache = False
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=t.learning_rate, weight_decay=t.weight_decay)
    alpha, beta = t.loss_settings()
    records = read_records(sequences.path / "train.parquet")
    random.Random(t.seed).shuffle(records)
    collator = PairedCollator(tok, PromptBuilder.for_domain(cfg.data.domain), cutoff_len=t.cutoff_len)
    size = t.effective_batch_size
    batches = (collator(records[i : i + size]) for i in range(0, len(records) - size, size))

    def step() -> int:
        batch = next(batches)
        opt.zero_grad(set_to_none=True)
        out = compute_cft_loss(model, batch, alpha=alpha, beta=beta, run_counterfactual=alpha > 0)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), t.max_grad_norm)
        opt.step()
        return batch_tokens(batch)

    for _ in range(warmup):
        step()
    conn.send("ready")
    times, tokens = [], []
    while conn.recv() == "step":
        started = time.perf_counter()
        tokens.append(step())
        times.append(time.perf_counter() - started)
        conn.send(times[-1])
    conn.send({"step_s": times, "tokens": tokens, "examples_per_step": size})


def summary(rows: dict) -> dict:
    from benchmarks.train_step import pair_ratios

    per_example = {k: [s / v["examples_per_step"] for s in v["step_s"]] for k, v in rows.items()}
    spread = pair_ratios(per_example, "loop", "kernel")
    return {
        "loop_over_kernel_per_example": {k: spread[k] for k in ("median", "min", "max", "rounds")},
        **{f"{k}_median_step_s": statistics.median(v["step_s"]) for k, v in rows.items()},
        **{f"{k}_tokens_per_s": sum(v["tokens"]) / sum(v["step_s"]) for k, v in rows.items()},
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="config override (repeatable)")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ns = ap.parse_args(argv)
    from schemas.config import load_config
    from tasks.data import prepare
    from tasks.training import model_folder

    # A throw-away data root: the loop trains from scratch in a fresh folder, nothing is reused
    # or left behind; the data is prepared (and a tiny model built) once here for both children.
    tmp = tempfile.TemporaryDirectory()
    overrides = [f"data.data_root={tmp.name}", *ns.overrides]
    cfg = load_config(Path(ns.config), overrides)
    _, sequences, _ = prepare(cfg.data)
    model_folder(cfg, sequences.path)
    ctx = mp.get_context("spawn")
    pipes, procs = {}, {}
    for name, target, args in (("loop", run_loop, (ns.config, overrides, ns.rounds, ns.warmup)),
                               ("kernel", run_kernel, (ns.config, overrides, ns.warmup))):
        parent, child = ctx.Pipe()
        procs[name] = ctx.Process(target=target, args=(*args, child))
        procs[name].start()
        pipes[name] = parent
        assert parent.recv() == "ready"  # set up and warmed up, one after the other
    for r in range(ns.rounds):
        for name in (("loop", "kernel") if r % 2 == 0 else ("kernel", "loop")):
            pipes[name].send("step")
            step_s = pipes[name].recv()
            print(f"round {r} {name:6s} {step_s:.2f} s", flush=True)
    pipes["kernel"].send("done")
    rows = {"kernel": pipes["kernel"].recv()}
    rows["loop"] = pipes["loop"].recv()  # the Trainer ends by itself after its last step
    for p in procs.values():
        p.join()
    tmp.cleanup()
    result = {"meta": {"command": "python -m benchmarks.train_loop " + " ".join(argv if argv is not None else []),
                       **machine(),
                       "config": ns.config, "overrides": ns.overrides,
                       "model": cfg.model.source, "micro_batch_size": cfg.train.micro_batch_size,
                       "effective_batch_size": cfg.train.effective_batch_size, "deepspeed": cfg.train.deepspeed},
              "summary": summary(rows), "runs": rows}
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"train_loop-{cfg.data.name}.json"
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result["summary"], indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
