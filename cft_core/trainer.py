"""The Hugging Face Trainer, taught the CFT objective.

`CFTTrainer` changes three things and nothing else, so DeepSpeed ZeRO, checkpoints, resume,
schedulers and early stopping stay the Trainer's own:

1. `compute_loss` calls `cft_core.loss.compute_cft_loss` on a paired batch. In training it is
   L = L_n + alpha * L_c; in evaluation it is the weighted normal term L_n alone, the validation
   loss the reference uses for early stopping and the best checkpoint (cft-method.md, sec. 2).
2. `get_batch_samples` computes, once per optimizer step, the total token weight of the whole
   accumulation window over all processes, and every micro-batch divides by it: micro-batch 8 x
   accumulation 1 and micro-batch 1 x accumulation 8 (or 2 processes x 4) give the same update.
3. `log` adds the normal and causal terms, and throughput, to the Trainer's own logs. Throughput
   counts the optimizer steps' own time (fetching the window, forward, backward, the optimizer):
   not the evaluation, the checkpoint or the logging between them, which made the step after an
   evaluation look 3x slower than it was.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import Trainer, TrainerCallback

from cft_core.loss import check_model_supported, compute_cft_loss, window_normalizers


def ensure_distributed_env(port: int | None = None) -> None:
    """Make a launcher-less single process look like rank 0 of 1 to torch.distributed.

    DeepSpeed needs RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT even for one
    process (without them it tries MPI discovery and fails). torchrun and the deepspeed launcher
    set them; this fills only what is missing, on loopback, with a free port.
    """
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return
    import socket

    if port is None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(port))


# DeepSpeed JIT-compiles an op on first use in an environment (g++ and ninja; fused Adam ~50 s,
# cpu_adam ~53 s, on quiet cores). A build `lock` file older than this is far past any real build:
# a killed build left it.
STALE_BUILD_LOCK_S = 10 * 60


def ensure_op_build_dir() -> Path:
    """Point DeepSpeed's op builds at this environment's own directory, free of stale locks.

    torch compiles extensions into TORCH_EXTENSIONS_DIR, by default one directory per user that
    every checkout shares. A build is tied to its source path, so two virtualenvs rebuild each
    other's op in turn, and a build killed half-way leaves a `lock` file on which every later
    process waits forever (torch's FileBaton has no timeout): that hung a CI run for 90 minutes.
    So the default here is `<sys.prefix>/torch_extensions` (one build per venv; an explicit
    TORCH_EXTENSIONS_DIR is kept), and locks older than STALE_BUILD_LOCK_S are removed.
    The project's DeepSpeed configs build no op (`skip_shm_comm_op`; no "optimizer" section, no
    DeepSpeed CPU Adam): this matters once a config of your own asks for one. Returns the directory.
    """
    import sys

    root = Path(os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "torch_extensions")))
    now = time.time()
    # Under an explicit TORCH_EXTENSIONS_DIR (always, from here) torch builds op X in <root>/X/.
    for lock in root.glob("*/lock") if root.is_dir() else []:
        try:
            if now - lock.stat().st_mtime > STALE_BUILD_LOCK_S:
                lock.unlink()
                print(f"removed a stale op-build lock left by a killed build: {lock}", file=sys.stderr)
        except FileNotFoundError:  # its build finished meanwhile
            pass
    return root


def skip_shm_comm_op() -> None:
    """Keep DeepSpeed from building its shared-memory communication op, which training never uses.

    DeepSpeed's torch backend loads the op as it sets up the process group, and on a CPU the first
    load in an environment compiles it: about 41 s of g++ before the first step of every new
    environment (each CI run, each user's first training), and a C++ toolchain required. Its one
    caller is `inference_all_reduce` (tensor-parallel inference), which falls back to
    torch.distributed's all_reduce without it; ZeRO training reduces through torch.distributed.
    The backend builds the op only where DeepSpeed's table of compatible ops
    (`deepspeed.ops.__compatible_ops__`, probed once per process; edits to it persist) allows it,
    so the op is marked incompatible there. GPU accelerators have no such op: nothing to do. Call
    before the process group is set up (before `TrainingArguments`)."""
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator

    builder = get_accelerator().get_op_builder("ShareMemCommBuilder")  # what the backend asks for
    if builder is not None:
        deepspeed.ops.__compatible_ops__[builder.NAME] = False


@dataclass(frozen=True)
class CFTObjective:
    """Loss settings (`schemas.config.TrainConfig` documents them; the reference uses alpha 0.1,
    beta 0.25, weights on both terms). `alpha = 0` skips the counterfactual forward pass (SFT, +Pos)."""

    alpha: float
    beta: float
    weight_causal_only: bool

    @property
    def run_counterfactual(self) -> bool:
        return self.alpha > 0


class CFTTrainer(Trainer):
    """`transformers.Trainer` with the CFT loss. Inputs come from `PairedCollator`."""

    # compute_loss already divides by the window's total weight: no extra division by the
    # number of accumulation steps.
    loss_is_scaled_for_ga = True

    def __init__(self, *args, objective: CFTObjective, **kwargs):
        super().__init__(*args, **kwargs)
        self.objective = objective
        self._window: tuple[torch.Tensor, torch.Tensor] | None = None
        self._terms = {"normal": 0.0, "causal": 0.0}
        self._windows_since_log = 0
        self._tokens_since_log = 0
        self._samples_since_log = 0
        self._step_started: float | None = None  # when this optimizer step's window was fetched
        self._step_seconds = 0.0  # the optimizer steps' own time since the last log
        self._model_checked = False
        self.add_callback(_StepClock(self))

    # -- normalisation over the accumulation window ---------------------------------------
    def get_batch_samples(self, epoch_iterator, num_batches, device):
        self._step_started = time.perf_counter()  # (the step ends at on_step_end: `_StepClock`)
        batch_samples = []
        for _ in range(num_batches):
            try:
                batch_samples.append(next(epoch_iterator))
            except StopIteration:
                break
        weight, tokens = window_normalizers(batch_samples, self.objective.beta)
        totals = torch.stack([weight, tokens]).to(device)
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if world > 1:
            dist.all_reduce(totals)  # sum over processes
        # Gradients are averaged over processes, so each divides by total / world: the mean of
        # the processes' gradients is then the gradient of sum(w l) / total over the window.
        self._window = (totals[0] / world, totals[1] / world)
        self._windows_since_log += 1
        return batch_samples, None

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not model.training:
            # Validation loss: weighted normal term, factual half only.
            out = compute_cft_loss(model, inputs, 0.0, self.objective.beta, run_counterfactual=False)
            return (out.normal, {}) if return_outputs else out.normal
        if not self._model_checked:  # once, on the first row (every process runs it: ZeRO-3 gathers)
            check_model_supported(model, inputs["input_ids"][:1], inputs["attention_mask"][:1])
            self._model_checked = True
        weight, tokens = self._window if self._window is not None else (None, None)
        out = compute_cft_loss(
            model, inputs, self.objective.alpha, self.objective.beta,
            normalizer=weight,
            weight_causal_only=self.objective.weight_causal_only,
            token_normalizer=tokens,
            run_counterfactual=self.objective.run_counterfactual,
        )
        # Each micro-batch's terms are already divided by the window total: their sum over
        # the window is the window's value.
        self._terms["normal"] += float(out.normal.detach())
        self._terms["causal"] += float(out.causal.detach())
        self._tokens_since_log += int(inputs["attention_mask"].sum())
        if "cf_attention_mask" in inputs and self.objective.run_counterfactual:
            self._tokens_since_log += int(inputs["cf_attention_mask"].sum())
        self._samples_since_log += int(inputs["input_ids"].shape[0])
        return (out.loss, {}) if return_outputs else out.loss

    # -- logging -------------------------------------------------------------------------
    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._windows_since_log:
            stats = torch.tensor(
                [self._terms["normal"], self._terms["causal"], self._windows_since_log,
                 self._tokens_since_log, self._samples_since_log], dtype=torch.float64,
            )
            if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                dist.all_reduce(stats)  # windows are counted once per process: the means hold
            elapsed = max(self._step_seconds, 1e-9)
            logs["normal"] = round(float(stats[0] / stats[2]), 6)
            logs["causal"] = round(float(stats[1] / stats[2]), 6)
            logs["tokens_per_second"] = round(float(stats[3]) / elapsed, 1)
            logs["samples_per_second"] = round(float(stats[4]) / elapsed, 2)
            self._terms = {"normal": 0.0, "causal": 0.0}
            self._windows_since_log = self._tokens_since_log = self._samples_since_log = 0
            self._step_seconds = 0.0
        super().log(logs, start_time)

    def _end_step_clock(self) -> None:
        if self._step_started is not None:
            self._step_seconds += time.perf_counter() - self._step_started
            self._step_started = None


class _StepClock(TrainerCallback):
    """Stops the trainer's step clock when an optimizer step ends, before the Trainer logs,
    evaluates or saves a checkpoint (the step's clock starts in `get_batch_samples`)."""

    def __init__(self, trainer: CFTTrainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        self.trainer._end_step_clock()


def reset_accelerate_state() -> None:
    """Forget what an earlier training in this process left behind in accelerate, which the
    Trainer would reuse: after a DeepSpeed training, a training without DeepSpeed in the same
    process (a notebook, a test session) ran under DeepSpeed all the same, because accelerate sets
    ACCELERATE_USE_DEEPSPEED=true in the environment for good once given a DeepSpeed plugin (and
    the Trainer then makes a default plugin) and keeps its process-wide state. Whether a training
    uses DeepSpeed is `train.deepspeed`'s to say; accelerate sets the variable again for one that
    does. Call before `init_cpu_deepspeed_state` and `TrainingArguments`. (`_reset_state` is
    private: accelerate's own tests and transformers' reset the state this way.) The process
    group itself is kept."""
    from accelerate.state import AcceleratorState

    os.environ.pop("ACCELERATE_USE_DEEPSPEED", None)
    AcceleratorState._reset_state(reset_partial_state=True)


def init_cpu_deepspeed_state() -> bool:
    """Make accelerate count the processes of a multi-process DeepSpeed run on CPU.

    Call before creating `TrainingArguments`. With DeepSpeed on CPU, accelerate (1.15)
    initialises the process group through DeepSpeed but then finds no GPU backend, so its shared
    state says 1 process: each process would read the whole dataset, and the Trainer would fill
    DeepSpeed's "auto" batch sizes for 1 process (DeepSpeed's batch check then fails). The
    process group itself is right, so we create the shared state the way TrainingArguments
    would and copy the group's size and rank into it. Returns True when it did: then pass
    `accelerator_config={"use_configured_state": True}` so TrainingArguments reuses it.
    A no-op (False) on GPUs and for a single process.
    """
    import torch

    if torch.cuda.is_available() or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return False
    from accelerate.state import PartialState

    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"  # what TrainingArguments sets around this call
    try:
        state = PartialState()
    finally:
        del os.environ["ACCELERATE_USE_DEEPSPEED"]
    if dist.is_initialized() and state.num_processes == 1:
        state.num_processes = dist.get_world_size()
        state.process_index = dist.get_rank()
        state.local_process_index = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    return True
