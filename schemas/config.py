"""Validated run configuration (pydantic). One object describes a run; YAML profiles in
`configs/` fill it, CLI flags and Prefect parameters override fields of it."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

SourceFormat = Literal["recbole_package", "recbole", "grouplens", "amazon_raw", "d3_csv", "generic"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceConfig(_Strict):
    """Where the interaction logs come from and how they are laid out."""

    format: SourceFormat = Field(
        "recbole_package",
        description="recbole_package: MovieLens-100K shipped in the recbole==1.2.1 wheel (the "
        "default, needs no network); recbole: a folder of RecBole atomic files (<name>.inter, "
        "<name>.item); grouplens: ML-100K (u.data, u.item) or ML-1M (ratings.dat, movies.dat) "
        "folders; amazon_raw: Amazon Reviews 2018 reviews JSON lines (+ meta_path); d3_csv: a "
        "folder of D3/BIGRec CSV splits (train/valid/test) and its info file; generic: CSV or "
        "Parquet interactions (+ items_path) with a column mapping.",
    )
    path: str | None = Field(None, description="File or folder of the source (not for recbole_package).")
    meta_path: str | None = Field(None, description="amazon_raw: the meta_<Category>.json(.gz) file.")
    items_path: str | None = Field(None, description="generic: the items file (item id -> title).")
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="generic: our column -> the file's column, for user_id, item_id, timestamp, "
        "rating (optional) and title (items file). Unmapped columns keep our names.",
    )
    timestamp_unit: Literal["s", "ms", "iso"] = Field(
        "s", description="generic: unit of the timestamp column (unix s, unix ms or ISO-8601 text)."
    )


class DataConfig(_Strict):
    """Ingest, validation and D3-style sequence building (cft-method.md, section 4)."""

    name: str = Field("ml-100k", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
                      description="Dataset name: names output folders and the registered model.")
    domain: Literal["movies", "games", "products"] = Field("movies", description="Prompt wording.")
    source: SourceConfig = Field(default_factory=SourceConfig)
    data_root: Path = Field(Path("data"), description="Where every stage writes (content-addressed).")
    input_roots: list[Path] = Field(
        default_factory=list,
        description="Folders, besides data_root, that sources may be read from. A source path "
        "outside all of them is refused (no reading arbitrary files from a config).",
    )
    window_start: datetime | None = Field(None, description="Keep interactions at or after this time.")
    window_end: datetime | None = Field(None, description="Keep interactions before this time.")
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

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        if abs(sum(self.split_ratios) - 1.0) > 1e-6:
            raise ValueError(f"split_ratios must sum to 1, got {self.split_ratios}")
        if self.source.format != "recbole_package" and not self.source.path:
            raise ValueError(f"source.path is required for source.format={self.source.format!r}")
        return self

    def timestamp_bounds(self) -> tuple[int, int]:
        hi = self.max_timestamp or datetime.now(UTC).replace(microsecond=0)
        hi_s = int(hi.timestamp()) + (86400 if self.max_timestamp is None else 0)
        return int(self.min_timestamp.timestamp()), hi_s


class PipelineConfig(_Strict):
    """A whole run. Stages not built yet ignore their sections."""

    data: DataConfig = Field(default_factory=DataConfig)


def load_config(path: str | Path, overrides: list[str] | None = None) -> PipelineConfig:
    """Read a YAML profile; `overrides` are `section.field=value` strings (value parsed as YAML)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise FileNotFoundError(f"config file {path} not found") from None
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} is not of the form section.field=value")
        node = raw
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(value)
    return PipelineConfig.model_validate(raw)
