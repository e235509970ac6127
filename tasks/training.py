"""Training stage: instruction records + a model source -> a fine-tuned model folder.

The plain function `train` does the I/O around `cft_core.trainer.CFTTrainer`:

    <data_root>/training/<dataset>-<fingerprint>/
        checkpoints/checkpoint-<step>/   the Trainer's (and DeepSpeed's) checkpoints; a re-run
                                         with the same inputs resumes from the latest one
        model/                           the final (best) model: safetensors + tokenizer, written
                                         atomically; LoRA runs hold the merged model and adapter/
        model/training.json              config, metrics, log history, MLflow run id
        evaluation/, embeddings/         what tasks/evaluation.py computed with the model
    <data_root>/locks/training/<dataset>-<fingerprint>.lock   held while a process trains it

The fingerprint covers the dataset's fingerprint and every model and training setting, so a
finished run is reused and an interrupted one resumes, rather than starting over.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from schemas.config import PipelineConfig
from schemas.errors import ConfigError, DataError
from tasks.storage import fingerprint, with_code_versions, write_json_atomic

PROJECT_ROOT = Path(__file__).resolve().parent.parent
READ_BATCH_ROWS = 1 << 16  # records decoded at a time where only a sample of a split is kept
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainOutput:
    run_dir: Path
    model_dir: Path
    reused: bool
    summary: dict  # contents of model/training.json


def sampled_rows(n: int, limit: int | None, seed: int) -> list[int]:
    """The rows of an n-row split a cap keeps: all of them, or a seeded sample of `limit`, in
    file order."""
    if limit is None or n <= limit:
        return list(range(n))
    return sorted(random.Random(seed).sample(range(n), limit))


def read_records(path: Path, limit: int | None = None, seed: int = 0) -> list[dict]:
    """Records of one split as dicts (history_titles, target_title, ...) in file order, each with
    `split_row`, its 0-based position in the file (what evaluation outputs name a row by), and
    `occurrence`, how many earlier rows of the file have its (user_id, target_item_id) (a user
    can meet the same target twice in a split; `cft compare` pairs rows by the three). A cap keeps
    a seeded sample of `limit` of them (`sampled_rows`, read by `read_sample`); both numbers count
    over the whole file. Only the kept rows become dicts."""
    file = pq.ParquetFile(path, read_dictionary=["user_id"])  # the ids as categories: 0.5 GB, not 1.3, at 2.5M rows
    keys = file.read(columns=["user_id", "target_item_id"]).to_pandas()
    occurrence = keys.groupby(["user_id", "target_item_id"], sort=False, dropna=False,
                              observed=True).cumcount().to_numpy()
    keep = sampled_rows(file.metadata.num_rows, limit, seed)
    rows = read_sample(path, keep).to_pylist()
    return [{**r, "split_row": i, "occurrence": int(occurrence[i])} for r, i in zip(rows, keep, strict=True)]


def read_sample(path: Path, keep: list[int], columns: list[str] | None = None,
                read_dictionary: list[str] | None = None) -> pa.Table:
    """The rows `keep` (ascending, `sampled_rows`) of the Parquet file at `path`, with `columns`
    (None: all). Every row: the file read whole, the leaves in `read_dictionary` dictionary-encoded.
    A sample: READ_BATCH_ROWS records decoded at a time, keeping the sampled ones, so a sample
    of a large split never holds the split in memory (2,000 of 2.5M records: 2.0 s and 0.6 GB
    peak in `read_records`, where reading the whole table and then the sample took 5.4-6.6 s and
    2.0-2.2 GB). A sample's strings stay plain: it holds its own rows
    only, and ParquetFile's batches cannot decode a list's elements dictionary-encoded."""
    file = pq.ParquetFile(path)
    if len(keep) == file.metadata.num_rows:
        return pq.read_table(path, columns=columns, read_dictionary=read_dictionary)
    parts, start, kept = [], 0, np.asarray(keep, dtype=np.int64)
    for batch in file.iter_batches(batch_size=READ_BATCH_ROWS, columns=columns):
        end = start + batch.num_rows
        local = kept[np.searchsorted(kept, start):np.searchsorted(kept, end)] - start  # kept is ascending
        if local.size:
            parts.append(batch.take(local))
        start = end
    return pa.Table.from_batches(parts)  # a cap is at least 1, so a sample holds a row


class SplitRecords:
    """A split's records as the trainer reads them (a map-style dataset): its Arrow table, only
    the columns the collator reads, kept columnar; a record becomes a dict when the data loader
    asks for it. (Every record as a dict, `read_records`, took 76 s and 19 GB for the
    7.9M training records of 10M interactions.) The titles are read dictionary-encoded: a title
    recurs in many histories, so each record holds 4-byte indices into the split's distinct
    titles, not the text again. `split_rows`: each record's row in the file; a cap keeps a
    seeded sample of `limit` (`sampled_rows`, as `read_records` keeps; `read_sample`: its titles
    plain, only its rows read into memory)."""

    COLUMNS = ["history_titles", "target_title"]

    def __init__(self, path: Path, limit: int | None = None, seed: int = 0):
        # The Parquet leaves of the title columns ("history_titles.list.element", "target_title").
        file = pq.ParquetFile(path)
        leaves = [c.path for c in file.schema if c.path.split(".")[0] in self.COLUMNS]
        self.path = path
        self.split_rows = sampled_rows(file.metadata.num_rows, limit, seed)
        self.table = read_sample(path, self.split_rows, self.COLUMNS, read_dictionary=leaves)

    def __len__(self) -> int:
        return self.table.num_rows

    def __getitem__(self, i: int) -> dict:
        # A one-row slice: ~6 us. (`Table.take` of a batch's rows took 240 ms for 64 of 7.9M.)
        return self.table.slice(i, 1).to_pylist()[0]

    def newest_and_target_titles(self):
        """(newest history title, target title) of every record, as Arrow arrays of titles
        (dictionary-encoded, plain for a capped sample): what `PairedCollator.records_too_long`
        checks."""
        histories = self.table.column("history_titles")
        newest = []
        for chunk in histories.chunks:  # (every history has a title)
            ends = np.asarray(chunk.offsets)[1:] - 1
            newest.append(chunk.values.take(pa.array(ends)))
        return pa.chunked_array(newest, histories.type.value_type), self.table.column("target_title")


# Records past which reading a whole split is long enough to say so, when no cap is set:
# - MANY_EVAL_RECORDS, forward passes (the validation loss at each evaluation, the diagnostics): ~3 min
#   at the ~300 records/s of the tiny model on 2 CPU cores, far more for a real model (a full
#   ML-25M's valid split holds 2.5M: hours each time);
# - MANY_RANKED_RECORDS, beam searches (the evaluation's ranking, the gate's): SmolLM2 ranked ~1 row
#   a second on 2 CPU cores (docs/serving.md), so ~3 h; ML-100K's whole test split (9,835) is below it.
MANY_EVAL_RECORDS = 50_000
MANY_RANKED_RECORDS = 10_000


def warn_if_uncapped_split_is_long(path: Path, cap: int | None, bound: int, what: str, setting: str) -> None:
    """A warning, before anything is read, when `what` reads every record of the split at `path`
    (`cap` None) and they are more than `bound`; `setting` names the cap."""
    if cap is None and (n := pq.ParquetFile(path).metadata.num_rows) > bound:
        log.warning("%s reads all %s records of %s; %s caps them (a seeded sample)", what, f"{n:,}", path, setting)


def check_records_fit(collator, splits: list[SplitRecords]) -> None:
    """ConfigError, before anything is trained or written, when records of a split do not fit
    train.cutoff_len even with their newest history title alone (`PairedCollator.records_too_long`;
    they would stop the run at the batch that holds the first one)."""
    for records in splits:
        too_long = collator.records_too_long(*records.newest_and_target_titles())
        if too_long:
            needs = max(n for _, n in too_long)
            shown = ", ".join(f"{records.split_rows[i]} ({n:,} tokens)" for i, n in too_long[:3])
            more = f" and {len(too_long) - 3:,} more" if len(too_long) > 3 else ""
            raise ConfigError(
                f"train.cutoff_len={collator.cutoff_len} is too short for {len(too_long):,} record(s) of "
                f"{records.path} even with only their newest history title: rows (0-based) {shown}{more}. "
                f"Raise train.cutoff_len to at least {needs:,}, or shorten the titles (data.max_title_chars).")


def model_folder(cfg: PipelineConfig, sequences: Path) -> Path:
    """Resolve the model to start from to a Hugging Face folder: `model.source`, or `model.base`
    when the source is `champion` and no warm start was found; `tiny` is built once per dataset."""
    from cft_core.model_sources import resolve_model_folder

    source = cfg.model.base_model()
    if source != "tiny":
        return resolve_model_folder(source)
    from cft_core.prompts import PromptBuilder
    from cft_core.tiny import save_tiny_model_folder
    from tasks.storage import atomic_dir

    tiny = cfg.model.tiny
    catalogue = pq.read_table(sequences / "catalogue.parquet").column("title").to_pylist()
    fp = fingerprint({"tiny": tiny.model_dump(), "catalogue": sequences.name, "domain": cfg.data.domain,
                      "seed": cfg.train.seed})
    folder = cfg.data.data_root / "models" / f"tiny-{fp}"
    if not (folder / "config.json").is_file() and is_rank_zero():  # one builder, the others wait
        prompts = PromptBuilder.for_domain(cfg.data.domain)
        texts = [prompts.factual(catalogue[i : i + 10]) for i in range(0, len(catalogue), 10)]
        texts += [prompts.counterfactual()] + [prompts.response(t) for t in catalogue]
        with atomic_dir(folder) as tmp:
            save_tiny_model_folder(
                tmp, texts, arch=tiny.arch, hidden_size=tiny.hidden_size, num_layers=tiny.num_layers,
                num_heads=tiny.num_heads, vocab_size=tiny.vocab_size, seed=cfg.train.seed,
            )
    _barrier()
    return folder


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def deepspeed_config(path: str | None) -> dict | None:
    if path is None:
        return None
    p = Path(path)
    if not p.is_absolute() and not p.exists():
        p = PROJECT_ROOT / p
    try:
        config = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"train.deepspeed: DeepSpeed config {path} not found (looked at {p})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"train.deepspeed: cannot read the DeepSpeed config {p} ({e})") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"train.deepspeed: {p} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"train.deepspeed: {p} must hold a JSON object, got {type(config).__name__}")
    return config


# Bump when a training writes another model for the same data and settings (the loss, the
# collation, the trainer's schedule): its folder, its model and what was evaluated of it are then
# made afresh instead of reused as if current (a run in progress under the old version is not
# resumed). tests/train/test_training_stage.py pins each version's losses. Version 1 was never in
# the key, so the trainings written before this constant stay reused.
# 2: bf16 without DeepSpeed or LoRA trains fp32 weights under autocast (`weights_dtype`); it
#    stepped bf16 weights, which lost most updates. fp32 trainings are the same as in version 1.
TRAINING_VERSION = 2


def run_fingerprint(cfg: PipelineConfig, data_fingerprint: str, warm_start: str | None = None) -> str:
    """Names the run folder: the data, every model and training setting (not whether checkpoints
    are kept), the warm-start version, the process count (it changes the accumulation steps,
    and ZeRO checkpoints are sharded per process) and the training code's version."""
    # `base` as the model it resolves to (an unset base was "smollm2" before it could be inherited).
    model = {**cfg.model.model_dump(), "base": cfg.model.base or "smollm2"}
    payload = {"data": data_fingerprint, "model": model,
               "train": cfg.train.model_dump(exclude={"keep_checkpoints"}), "world_size": world_size()}
    if warm_start:
        payload["warm_start"] = warm_start
    payload = with_code_versions(payload, training=TRAINING_VERSION)
    return fingerprint(payload)


def training_run_dir(cfg: PipelineConfig, data_fingerprint: str, warm_start: str | None = None) -> Path:
    """Folder of one training run: checkpoints/ (until it succeeds), model/ (final), mlflow_run_id."""
    return cfg.data.data_root / "training" / f"{cfg.data.name}-{run_fingerprint(cfg, data_fingerprint, warm_start)}"


def weights_dtype(precision: str, *, deepspeed: bool, lora: bool):
    """The dtype a model is loaded in to train at `precision` (resolved: "fp32" or "bf16").

    bf16 is mixed precision, as `TrainingArguments(bf16=True)` means it: the matrix products run
    in bf16 (autocast), and the weights the optimizer updates stay fp32. Weights loaded in bf16
    and stepped by a plain AdamW lose most updates to rounding: bf16 keeps 8 significant bits, so
    an update under half the spacing of the values around w (between |w| / 2^9 and |w| / 2^8) is
    rounded away, and at lr 1e-4 an Adam step (at most about lr per element) cannot move any
    |w| >= 1/32: 84 % of SmolLM2-135M's weights (counted), every norm weight among them. bf16
    weights are loaded only where something else keeps the fp32 copy or nothing is updated:
    under DeepSpeed, whose ZeRO optimizer steps fp32 master weights and copies them into the bf16
    module, and with LoRA, whose base is frozen (peft keeps the adapters fp32:
    `autocast_adapter_dtype`)."""
    import torch

    if precision == "bf16" and (deepspeed or lora):
        return torch.bfloat16
    return torch.float32


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_rank_zero() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def log_line(logs: dict) -> str | None:
    """One Trainer log entry as a line a person reads, e.g. "loss 3.362 (normal 2.561, causal
    9.719), lr 6.67e-05, grad norm 10.6, 278 tokens/s" or "valid loss 2.656"; None for the
    entry that sums the whole training up (train_runtime, ...)."""
    if "eval_loss" in logs:
        return f"valid loss {logs['eval_loss']:.4g}"
    if "loss" not in logs:
        return None
    line = f"loss {logs['loss']:.4g}"
    if "normal" in logs and "causal" in logs:
        line += f" (normal {logs['normal']:.4g}, causal {logs['causal']:.4g})"
    for key, name, fmt in (("learning_rate", "lr", ".3g"), ("grad_norm", "grad norm", ".3g")):
        if key in logs:
            line += f", {name} {logs[key]:{fmt}}"
    if "tokens_per_second" in logs:
        line += f", {logs['tokens_per_second']:.0f} tokens/s"
    return line


ALL_LINEAR = "all-linear"  # peft's shorthand: every linear layer but the output head


def _lora_matches(path: str, module, target_modules) -> bool:
    """Whether peft's LoRA puts an adapter on this module: for a list of names, the module's path
    or its end after a dot; for `all-linear`, any linear layer but the output head."""
    import torch

    if target_modules == ALL_LINEAR:
        return isinstance(module, torch.nn.Linear) and path.rsplit(".", 1)[-1] != "lm_head"
    return any(path == t or path.endswith("." + t) for t in target_modules)


def check_lora_targets(model, target_modules: list[str] | str, source, frozen: list[str] = ()) -> None:
    """ConfigError unless `model.lora.target_modules` matches modules of the model outside
    `frozen` (the modules that take no part in reading text), as peft matches them. The defaults
    are Llama's and Qwen2's attention projections; a Mamba or LFM2 model has none of them, and
    peft's own error would come as a traceback."""
    import torch

    from schemas.errors import ConfigError

    modules = [(path, module) for path, module in model.named_modules()
               if not any(path == f or path.startswith(f + ".") for f in frozen)]
    if any(_lora_matches(path, module, target_modules) for path, module in modules):
        return
    linear = sorted({path.rsplit(".", 1)[-1] for path, module in modules if isinstance(module, torch.nn.Linear)}
                    - {"lm_head"})
    raise ConfigError(
        f"model.lora.target_modules {target_modules}: "
        f"no module of {source} (model type {model.config.model_type!r}) matches; its linear layers are "
        f"named {', '.join(linear) or '(none)'} (`{ALL_LINEAR}` names them all)")


def lora_exclusions(model, target_modules: list[str] | str, frozen: list[str]) -> str | None:
    """peft's `exclude_modules` (a regex over module paths) for the frozen modules that hold
    layers `target_modules` would match (a vision tower's own q_proj ...), so that no adapter is
    put where no gradient comes; None when there are none (peft warns about an unused exclusion)."""
    hit = [f for f in frozen if any(_lora_matches(path, module, target_modules)
                                   for path, module in model.get_submodule(f).named_modules(prefix=f))]
    return "|".join(rf"{re.escape(f)}\..*" for f in hit) or None


def train(cfg: PipelineConfig, sequences: Path, data_fingerprint: str, *, extra_callbacks=(),
          warm_start: tuple[Path, str] | None = None, console_progress: bool = True) -> TrainOutput:
    """Fine-tune `cfg.model` on `sequences` (a build_sequences folder) with `cfg.train`.

    warm_start: (model folder, label such as "cft-ml-100k v3") to start from instead of the
    configured model (`model.source: champion`; `tasks.registry.warm_start_source` finds it).
    console_progress: the Trainer's own step bar and printed log entries; off when one of
    `extra_callbacks` reports progress instead (the flow's task logs a `log_line` per entry).
    """
    run_dir = training_run_dir(cfg, data_fingerprint, warm_start[1] if warm_start else None)
    with one_training_per_folder(run_dir):
        final = run_dir / "model"
        if (final / "training.json").is_file():  # (also when another process finished it while we waited)
            return TrainOutput(run_dir, final, True, json.loads((final / "training.json").read_text()))
        return _train(cfg, sequences, data_fingerprint, run_dir, extra_callbacks=extra_callbacks,
                      warm_start=warm_start, console_progress=console_progress)


def training_lock_path(run_dir: Path) -> Path:
    """`<data_root>/locks/training/<run folder>.lock`: beside training/, not in it."""
    return run_dir.parent.parent / "locks" / "training" / f"{run_dir.name}.lock"


def is_being_trained(run_dir: Path) -> bool:
    """Whether a process holds the folder's training lock now (`one_training_per_folder`)."""
    from filelock import FileLock, Timeout

    path = training_lock_path(run_dir)
    if not path.is_file():  # never trained by one process, or its lock went with the data root
        return False
    lock = FileLock(path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return True
    lock.release()
    return False


@contextmanager
def one_training_per_folder(run_dir: Path) -> Iterator[None]:
    """Hold `<data_root>/locks/training/<run folder>.lock` while a training runs, so that a second
    process with the same inputs (the same deployment run twice, `cft run` beside the stack) waits
    for the first and then reuses its model, instead of writing checkpoints and the model into the
    same folder at once (seen: the second failed renaming its model into place, after training it
    again). One process only: the ranks of a multi-process launch train one folder together, so
    they take no lock (two such launches on one folder are not kept apart). The lock files stay:
    empty files, one per training."""
    if world_size() > 1:
        yield
        return
    from filelock import FileLock, Timeout

    path = training_lock_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.warning("another process is training %s; waiting for it to finish (lock: %s)", run_dir, path)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _train(cfg: PipelineConfig, sequences: Path, data_fingerprint: str, run_dir: Path, *, extra_callbacks,
           warm_start: tuple[Path, str] | None, console_progress: bool) -> TrainOutput:
    """`train` once it holds the run folder: resume from its last checkpoint or start."""
    t = cfg.train
    final = run_dir / "model"
    import torch
    from transformers import (
        EarlyStoppingCallback,
        TrainingArguments,
    )
    from transformers.trainer_utils import get_last_checkpoint

    from cft_core.collate import PairedCollator
    from cft_core.loss import UnsupportedModelError
    from cft_core.model_sources import (
        check_tokenizer_fits,
        first_line,
        load_causal_lm,
        load_tokenizer,
    )
    from cft_core.modeling import modules_outside_text_model
    from cft_core.prompts import PromptBuilder
    from cft_core.trainer import (
        CFTTrainer,
        ensure_distributed_env,
        ensure_op_build_dir,
        init_cpu_deepspeed_state,
        reset_accelerate_state,
        skip_shm_comm_op,
    )
    from tasks.settings import cft_objective, resolved_precision
    from tasks.tracking import TrainingRun, end_stopped_run

    objective = cft_objective(t)
    alpha, beta = objective.alpha, objective.beta
    ds = deepspeed_config(t.deepspeed)
    reset_accelerate_state()
    configured_state = False
    if ds is not None:
        ensure_distributed_env()
        ensure_op_build_dir()
        skip_shm_comm_op()
        configured_state = init_cpu_deepspeed_state()
    world = world_size()
    per_step = t.micro_batch_size * world
    if t.effective_batch_size % per_step:
        raise ConfigError(
            f"train.effective_batch_size={t.effective_batch_size} is not a multiple of "
            f"micro_batch_size x processes = {t.micro_batch_size} x {world}"
        )
    precision = resolved_precision("train.precision", t.precision)

    source = warm_start[0] if warm_start else model_folder(cfg, sequences)
    tokenizer = load_tokenizer(source)
    train_rows = SplitRecords(sequences / "train.parquet")
    valid_rows = SplitRecords(sequences / "valid.parquet", t.max_eval_samples, t.seed)
    if not len(train_rows):
        raise DataError(f"{sequences / 'train.parquet'} holds no records to train on")
    collator = PairedCollator(
        tokenizer, PromptBuilder.for_domain(cfg.data.domain), cutoff_len=t.cutoff_len,
        with_counterfactual=objective.run_counterfactual,
    )
    check_records_fit(collator, [train_rows, valid_rows])
    warn_if_uncapped_split_is_long(valid_rows.path, t.max_eval_samples, MANY_EVAL_RECORDS,
                                   "the validation loss at every evaluation", "train.max_eval_samples")

    eval_strategy = "steps" if t.eval_steps else "epoch"
    args = TrainingArguments(
        output_dir=str(run_dir / "checkpoints"),
        per_device_train_batch_size=t.micro_batch_size,
        per_device_eval_batch_size=t.micro_batch_size,
        gradient_accumulation_steps=t.effective_batch_size // per_step,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_steps,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps or -1,
        eval_strategy=eval_strategy,
        save_strategy=eval_strategy,
        eval_steps=t.eval_steps,
        save_steps=t.eval_steps,
        logging_steps=t.logging_steps,
        logging_first_step=True,
        save_total_limit=t.save_total_limit,
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        bf16=precision == "bf16",
        # The Trainer refuses bf16 without a GPU unless told the CPU is meant (autocast runs there).
        use_cpu=precision == "bf16" and not torch.cuda.is_available(),
        seed=t.seed,
        data_seed=t.seed,
        deepspeed=ds,
        report_to="none",
        remove_unused_columns=False,  # records are dicts of titles; the collator reads them
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),  # pinned pages only speed up copies to a GPU
        # The step bar on a terminal only; in a log file (a flow run's, `make run > log`) the
        # Trainer prints each logging step's line instead.
        disable_tqdm=not (is_rank_zero() and sys.stderr.isatty()),
        accelerator_config={"use_configured_state": configured_state},
    )
    dtype = weights_dtype(precision, deepspeed=ds is not None, lora=cfg.model.lora.enabled)
    model = load_causal_lm(source, dtype=dtype)  # a folder that holds none stops here, nothing written
    check_tokenizer_fits(model, tokenizer, source)
    # A multimodal checkpoint (Gemma-3 4B and up) loads with its image towers, which a text prompt
    # never reaches: frozen, so that no optimizer state is kept for them.
    frozen = modules_outside_text_model(model)
    for name in frozen:
        model.get_submodule(name).requires_grad_(False)
    if cfg.model.lora.enabled:
        from peft import LoraConfig, get_peft_model

        lc = cfg.model.lora
        check_lora_targets(model, lc.target_modules, source, frozen)
        try:
            model = get_peft_model(model, LoraConfig(
                r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout, target_modules=lc.target_modules,
                task_type="CAUSAL_LM", exclude_modules=lora_exclusions(model, lc.target_modules, frozen),
            ))
        except ValueError as e:  # peft refuses a target on this architecture (Mamba's out_proj, which its kernel bypasses)
            raise ConfigError(f"model.lora.target_modules {lc.target_modules}: peft refuses them for {source}: "
                              f"{first_line(e)}") from None
    new_folder = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    from tasks import checkpoints

    callbacks = [checkpoints.digest_callback(run_dir), *extra_callbacks]  # digests first: before any crash
    if t.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=t.early_stopping_patience))

    warm_label = warm_start[1] if warm_start else None
    try:
        tracker = (TrainingRun(cfg, run_dir, sequences, data_fingerprint, source, warm_label)
                   if cfg.tracking.enabled and is_rank_zero() else None)
    except BaseException:  # the store refused the run (its artifacts unwritable from here, a server gone)
        if new_folder:  # nothing of this training is in it yet: a run stopped at its start leaves no folder
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    if tracker:
        callbacks.append(tracker.callback())
    trainer = CFTTrainer(
        model=model, args=args, train_dataset=train_rows, eval_dataset=valid_rows,
        data_collator=collator, callbacks=callbacks, objective=objective,
    )
    if not console_progress:
        from transformers.trainer_callback import PrinterCallback, ProgressCallback

        trainer.remove_callback(ProgressCallback)
        trainer.remove_callback(PrinterCallback)
    last = get_last_checkpoint(str(run_dir / "checkpoints")) if (run_dir / "checkpoints").is_dir() else None
    try:
        if last is not None:
            checkpoints.verify(run_dir, Path(last))  # before anything in it is unpickled
        result = trainer.train(resume_from_checkpoint=last)
    except BaseException as error:
        if tracker:  # the run shows what happened; the next try resumes into it
            end_stopped_run(error)
        if isinstance(error, UnsupportedModelError):  # the first step found it: the user's model folder
            raise ConfigError(f"model.source {source}: {error}") from None
        raise

    summary = {
        "config": cfg.model_dump(mode="json"),
        "data_fingerprint": data_fingerprint,
        "model_source": str(source),
        "warm_start": warm_label,
        "objective": {"alpha": alpha, "beta": beta, "weight_causal_only": t.weight_causal_only},
        "precision": precision,
        "frozen_modules": frozen,
        "world_size": world,
        "resumed_from": last,
        "global_step": trainer.state.global_step,
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "best_eval_loss": trainer.state.best_metric,
        "train_metrics": result.metrics,
        "log_history": trainer.state.log_history,
        "mlflow_run_id": tracker.run_id if tracker else None,
    }
    _save_final(trainer, cfg, source, tokenizer, run_dir, summary)
    if ds is not None:
        # The Trainer registers its DeepSpeed config globally; while set, every later
        # from_pretrained in this process (evaluation, LoRA merge) would build ZeRO-3
        # partitioned, empty parameters.
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()
    if tracker:
        tracker.finish(summary, final)
    if not t.keep_checkpoints and is_rank_zero():
        # Checkpoints exist to resume an interrupted run; a finished one keeps model/ only
        # (they hold the optimizer state, ~8x the model, as pickles: not worth keeping).
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    return TrainOutput(run_dir, final, False, summary)


def _save_final(trainer, cfg: PipelineConfig, source: Path, tokenizer, run_dir: Path, summary: dict) -> None:
    """Write run_dir/model atomically: every process takes part (ZeRO-3 gathers weights)."""
    from cft_core.model_sources import give_weights_the_usual_mode

    tmp = run_dir / ".tmp-model"
    if trainer.is_world_process_zero() and tmp.exists():
        shutil.rmtree(tmp)
    trainer.accelerator.wait_for_everyone()
    if cfg.model.lora.enabled:
        trainer.save_model(str(tmp / "adapter"))
    elif trainer.is_deepspeed_enabled and trainer.deepspeed.zero_optimization_partition_weights():
        trainer.save_model(str(tmp))  # ZeRO-3: every process gives its part of the weights
    elif trainer.is_world_process_zero():
        # Every process holds the whole model. Not trainer.save_model: under DeepSpeed it hands
        # save_pretrained cloned tensors, which writes a tied head (SmolLM2's, Gemma's) as a
        # second copy of the input embedding.
        trainer.accelerator.unwrap_model(trainer.model).save_pretrained(tmp)
    trainer.accelerator.wait_for_everyone()
    if trainer.is_world_process_zero():
        if cfg.model.lora.enabled:
            from transformers.integrations.deepspeed import unset_hf_deepspeed_config

            unset_hf_deepspeed_config()  # load the base as a plain model, not ZeRO-3 partitions
            _merge_lora(source, tmp / "adapter", tmp)
        give_weights_the_usual_mode(tmp)
        tokenizer.save_pretrained(tmp)
        for junk in ("training_args.bin",):  # a pickle; the settings live in training.json
            for p in tmp.rglob(junk):
                p.unlink()
        write_json_atomic(tmp / "training.json", summary)
        os.rename(tmp, run_dir / "model")
    trainer.accelerator.wait_for_everyone()


def _merge_lora(base: Path, adapter: Path, out: Path) -> None:
    """Base weights + adapter -> one plain model folder (serving needs no peft)."""
    from peft import PeftModel

    from cft_core.model_sources import load_causal_lm

    model = load_causal_lm(base)  # fp32
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    merged.save_pretrained(out, safe_serialization=True)
