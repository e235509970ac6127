"""A replay in progress resumes when started again with its settings, also after an upgrade that
adds settings at their defaults, and starts again where a setting it ran with differs. The
periods are stubbed: what is under test is which of them run."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import Field

from schemas.config import PipelineConfig
from tasks import replay as replay_module
from tasks.replay import replay, same_settings

START = datetime(1998, 1, 1, tzinfo=UTC)


class LaterConfig(PipelineConfig):
    """The config as a later version may have it: one more setting, at its default."""

    future_setting: int = Field(7)


@pytest.fixture
def ran(monkeypatch) -> list[str]:
    """The as_of of each period that ran."""
    monkeypatch.setattr(replay_module, "period_record", lambda cfg, out, seconds: {
        "as_of": cfg.data.as_of.isoformat(), "interactions": 1, "decision": "promoted", "seconds": 0})
    return []


def _replay(cfg, out, ran, periods=2):
    return replay(cfg, periods, "30d", out, start=START, run_period=lambda c: ran.append(c.data.as_of.isoformat()),
                  say=lambda _: None)


def test_a_replay_resumes_after_an_upgrade_adds_a_setting_and_not_after_a_setting_changes(tmp_path, ran):
    out, cfg = tmp_path / "timeline.json", PipelineConfig()
    _replay(cfg, out, ran, periods=1)
    assert len(ran) == 1
    _replay(cfg, out, ran)  # the same settings, one period more: only the new one runs
    assert len(ran) == 2

    later = LaterConfig.model_validate(cfg.model_dump())
    _replay(later, out, ran)  # upgraded: a new setting at its default names the same replay
    assert len(ran) == 2
    _replay(LaterConfig.model_validate({**cfg.model_dump(), "future_setting": 8}), out, ran)  # ... set otherwise: not
    assert len(ran) == 4
    _replay(cfg.updated({"train.learning_rate": 5e-4}), out, ran)
    assert len(ran) == 6


def test_same_settings_field_by_field():
    default = {"a": 1, "nested": {"b": 2, "map": {}}}
    assert same_settings({"a": 1, "nested": {"map": {}}}, {"a": 1, "nested": {"b": 2, "map": {}}}, default)
    assert not same_settings({"a": 1, "nested": {"map": {}}}, {"a": 1, "nested": {"b": 3, "map": {}}}, default)
    assert not same_settings({"a": 1}, {"a": 2}, default)
    # a mapping the user added (no default for its key) or removed is another setting
    assert not same_settings({"nested": {"map": {}}}, {"nested": {"map": {"user_id": "u"}}}, default)
    assert not same_settings({"nested": {"map": {"user_id": "u"}}}, {"nested": {"map": {}}}, default)
