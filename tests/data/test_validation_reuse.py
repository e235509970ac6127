"""A passed validation of the ingested tables is reused while what decides it holds (the tables,
the suites, the settings filled into them, the Great Expectations version), and run again when
any of them changes; a failed one is never reused."""

from __future__ import annotations

import json
import shutil

import pytest

import tasks.data
import tasks.validation
from schemas.config import DataConfig
from schemas.errors import DataValidationError
from tasks.data import ingest, validate_ingested
from tests.data.test_malformed import GOOD_INTER, _write


@pytest.fixture
def runs(monkeypatch):
    """The tables each call validated (empty for a reused report)."""
    seen = []
    real = tasks.data.validate_tables

    def counting(tables, *args, **kwargs):
        seen.append(sorted(tables))
        return real(tables, *args, **kwargs)

    monkeypatch.setattr(tasks.data, "validate_tables", counting)
    return seen


def _update(cfg: DataConfig, **changes) -> DataConfig:
    return DataConfig.model_validate({**cfg.model_dump(), **changes})


def test_a_passed_report_is_reused_until_its_key_changes(tmp_path, runs, monkeypatch):
    cfg = _write(tmp_path)
    ingested = ingest(cfg).path
    first = validate_ingested(ingested, cfg)
    assert first["success"] and runs == [["interactions", "items"]]
    assert validate_ingested(ingested, cfg) == first and len(runs) == 1  # reused, as written

    # "now" moved on (max_timestamp unset: the bound is a day past now): still the same rule.
    lo, hi = cfg.timestamp_bounds()
    monkeypatch.setattr(DataConfig, "timestamp_bounds", lambda self: (lo, hi + 86_400))
    assert validate_ingested(ingested, cfg) == first and len(runs) == 1
    monkeypatch.undo()
    monkeypatch.setattr(tasks.data, "validate_tables", lambda *a, **k: runs.append("again") or first)

    # Each thing the key covers, changed alone, validates again.
    validate_ingested(ingested, _update(cfg, rating_range=(0.0, 10.0)))
    validate_ingested(ingested, _update(cfg, max_timestamp="2030-01-01T00:00:00Z"))
    validate_ingested(ingested, _update(cfg, max_title_chars=cfg.max_title_chars + 1))
    assert runs[1:] == ["again"] * 3

    suites, shipped = tmp_path / "suites", tasks.validation.SUITES_DIR
    shutil.copytree(shipped, suites)
    monkeypatch.setattr(tasks.validation, "SUITES_DIR", suites)
    validate_ingested(ingested, cfg)  # the same suite files elsewhere: reused
    assert len(runs) == 4
    spec = json.loads((suites / "items.json").read_text())
    spec["expectations"][0]["severity"] = "warning"
    (suites / "items.json").write_text(json.dumps(spec))
    validate_ingested(ingested, cfg)
    assert len(runs) == 5
    monkeypatch.setattr(tasks.validation, "SUITES_DIR", shipped)
    validate_ingested(ingested, cfg)  # (the stored report is still the first: reused)
    assert len(runs) == 5

    import importlib.metadata
    real_version = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version",
                        lambda name: "9.9.9" if name == "great_expectations" else real_version(name))
    validate_ingested(ingested, cfg)
    assert len(runs) == 6


def test_a_failed_report_is_never_reused(tmp_path, runs):
    cfg = _write(tmp_path, inter=GOOD_INTER.replace(",1\n", ",9\n", 1))  # a rating above the range
    ingested = ingest(cfg).path
    for attempt in (1, 2):
        with pytest.raises(DataValidationError, match="rating"):
            validate_ingested(ingested, cfg)
        assert len(runs) == attempt
    # Fixed by the setting instead of the data: the same tables pass, and that report is reused.
    wider = _update(cfg, rating_range=(0.0, 10.0))
    assert validate_ingested(ingested, wider)["success"] and validate_ingested(ingested, wider)["success"]
    assert len(runs) == 3
