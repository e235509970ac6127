"""The one place where the run config (`schemas.config.PipelineConfig`) becomes the library's
settings objects. `cft_core` settings have no defaults of their own: every value, and why it is
what it is, lives in the config's documented fields."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cft_core.sequences import SequenceSettings
from schemas.config import DataConfig, EvalConfig, PipelineConfig, TrainConfig, unix_seconds

if TYPE_CHECKING:  # torch and transformers load only where a model is used (fast data commands)
    from cft_core.generation import GenerationSettings
    from cft_core.ranking import Method, RankingSettings
    from cft_core.trainer import CFTObjective


def sequence_settings(data: DataConfig, newest_seen: int | None = None) -> SequenceSettings:
    """D3-style sequence building (cft-method.md, section 4). `newest_seen`: the newest interaction
    before `data.as_of` (unix seconds; `tasks.data.newest_seen`), which anchors the data window:
    it ends just after that interaction and, with `train_window`, starts that much before it."""
    start = unix_seconds(data.window_start) if data.window_start else None
    end = unix_seconds(data.window_end) if data.window_end else None
    if newest_seen is not None:
        end = newest_seen + 1 if end is None else min(end, newest_seen + 1)
        if data.train_window:
            begin = newest_seen + 1 - data.train_window_seconds()
            start = begin if start is None else max(start, begin)
    return SequenceSettings(
        k_core=data.k_core, max_history=data.max_history, split=data.split, split_ratios=data.split_ratios,
        seed=data.seed, sample_fraction=data.sample_fraction, max_samples=tuple(sorted(data.max_samples.items())),
        window_start=start, window_end=end,
    )


def cft_objective(train: TrainConfig) -> CFTObjective:
    """The loss settings after applying the objective: sft -> alpha 0, beta 1; pos -> alpha 0."""
    from cft_core.trainer import CFTObjective

    alpha, beta = train.loss_settings()
    return CFTObjective(alpha=alpha, beta=beta, weight_causal_only=train.weight_causal_only)


def generation_settings(ev: EvalConfig) -> GenerationSettings:
    from cft_core.generation import GenerationSettings

    return GenerationSettings(
        num_beams=ev.num_beams, num_return_sequences=min(ev.num_return_sequences, ev.num_beams),
        min_new_tokens=ev.min_new_tokens, max_new_tokens=ev.max_new_tokens,
        length_penalty=ev.length_penalty, batch_size=ev.batch_size,
    )


def resolved_precision(field: str, value: str) -> str:
    """A precision field's value resolved (`cft_core.ranking.resolve_precision`: auto -> bf16 on a
    GPU that has it, else fp32). bf16 asked of a GPU without it (older than Ampere: a V100, a T4)
    is a ConfigError naming `field`; the CPU runs bf16 (slowly without AVX-512-BF16 or AMX)."""
    import torch

    from cft_core.ranking import resolve_precision
    from schemas.errors import ConfigError

    precision = resolve_precision(value)
    if precision == "bf16" and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"{field}=bf16: {torch.cuda.get_device_name()} has no bf16 support; "
                          f"set {field} to auto (fp32 there) or fp32")
    return precision


def ranking_settings(cfg: PipelineConfig, method: Method) -> RankingSettings:
    """How `method` ranks for this run: evaluation and the served model use the same object.
    The precision is resolved here (auto: bf16 on a GPU that has it), so it is part of what the
    served model stores and of the embedding cache key."""
    from cft_core.ranking import RankingSettings

    return RankingSettings(method=method, max_history=cfg.data.max_history, generation=generation_settings(cfg.eval),
                           precision=resolved_precision("eval.precision", cfg.eval.precision),
                           search_beams=cfg.eval.constrained_search_beams if method == "constrained" else None,
                           cutoff_len=cfg.train.cutoff_len,
                           backfill=cfg.eval.backfill if method == "constrained" else "none")  # (grounding ranks all)
