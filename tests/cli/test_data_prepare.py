"""`cft data prepare` from the command line: summary table, overrides, clean error exit."""

import logging
from pathlib import Path

from typer.testing import CliRunner

from cft_cli.main import app

ROOT = Path(__file__).resolve().parents[2]


def test_prepare_prints_the_summary(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    res = CliRunner().invoke(app, ["data", "prepare", "-c", str(ROOT / "configs/smoke.yaml"),
                                   "--set", f"data.data_root={tmp_path}"])
    assert res.exit_code == 0, res.output
    assert "ephemeral docs site" not in caplog.text  # Great Expectations' INFO line on every validation
    assert "users" in res.output and "943" in res.output and "512" in res.output  # train cap of the smoke profile
    assert list((tmp_path / "sequences").iterdir())


def test_bad_source_exits_2_with_the_reason(tmp_path):
    res = CliRunner().invoke(app, ["data", "prepare", "-c", str(ROOT / "configs/smoke.yaml"),
                                   "--set", f"data.data_root={tmp_path}", "--set", "data.source.format=grouplens",
                                   "--set", f"data.source.path={tmp_path}"])
    assert res.exit_code == 2
    assert "expected GroupLens u.data/u.item" in res.output
