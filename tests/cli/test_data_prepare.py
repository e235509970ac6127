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


def test_the_own_data_template_prepares_the_files_it_describes(tmp_path, monkeypatch):
    """configs/own-data.yaml as a user meets it: the files its comment describes, at the paths it
    names (relative to the working directory), prepare with no other change; the catalogue keeps
    the data's own ids (the SKUs), which are what the served models speak."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    (tmp_path / "my-data").mkdir()
    skus = [f"SKU-{i:04d}" for i in range(30)]
    pd.DataFrame({"product_sku": skus, "product_name": [f"Oak chair model {i}" for i in range(30)],
                  "price": rng.uniform(5, 50, 30).round(2)}).to_csv(tmp_path / "my-data/products.csv", index=False)
    start = pd.Timestamp("2025-01-01", tz="UTC")
    rows = [(f"cust-{u:03d}", skus[(u + 3 * j) % 30], (start + pd.Timedelta(hours=24 * j + u)).isoformat(), 1 + j % 5)
            for u in range(60) for j in range(8)]
    pd.DataFrame(rows, columns=["customer_id", "product_sku", "purchased_at", "stars"]).to_csv(
        tmp_path / "my-data/orders.csv", index=False)
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["data", "prepare", "-c", str(ROOT / "configs/own-data.yaml"),
                                   "--set", f"data.data_root={tmp_path / 'data'}"])
    assert res.exit_code == 0, res.output
    assert "│    60 │    30 │          480 │" in res.output  # users, items, interactions: none dropped
    (sequences,) = (tmp_path / "data" / "sequences").iterdir()
    catalogue = pd.read_parquet(sequences / "catalogue.parquet")
    assert sorted(catalogue["source_item_id"]) == skus
    assert dict(zip(catalogue["source_item_id"], catalogue["title"], strict=True))["SKU-0007"] == "Oak chair model 7"


def test_the_summary_never_cuts_a_number_short():
    """Rich shrinks a table to the terminal (80 columns when output is not a terminal: logs, the
    Prefect worker): ML-25M's counts were printed as "24,999,9…"."""
    import io

    from rich.console import Console

    from cft_cli.main import _summary

    stats = {"users": 166_667, "items": 59_995, "interactions": 24_999_980, "samples_train": 19_866_652,
             "samples_valid": 2_483_331, "samples_test": 2_483_332, "mean_history_train": 9.62}
    out = io.StringIO()
    Console(file=out, width=80).print(_summary({"stats": stats}, Path("/data/sequences/ml-25m-0123456789abcdef"), False))
    for number in ("166,667", "59,995", "24,999,980", "19,866,652", "2,483,331", "2,483,332", "9.62"):
        assert number in out.getvalue()


def test_prepare_says_the_window_it_widened_to(tmp_path):
    """ML-100K from 1997-12-01 holds fewer than its 1,349 items: `window_min_items` moves the start
    a year back, to before the data's first rating, and the summary says the window it built."""
    res = CliRunner().invoke(app, ["data", "prepare", "-c", str(ROOT / "configs/smoke.yaml"),
                                   "--set", f"data.data_root={tmp_path}", "--set", "data.window_start=1997-12-01",
                                   "--set", "data.window_min_items=1349"])
    assert res.exit_code == 0, res.output
    assert "│   943 │ 1,349 │       99,287 │" in res.output and "window: 1996-12-01 00:00 UTC to ..." in res.output
    res = CliRunner().invoke(app, ["data", "prepare", "-c", str(ROOT / "configs/smoke.yaml"),
                                   "--set", f"data.data_root={tmp_path}", "--set", "data.window_start=1997-12-01"])
    assert res.exit_code == 0, res.output
    assert "│   643 │ 1,237 │       58,139 │" in res.output and "window: 1997-12-01 00:00 UTC to ..." in res.output


def test_prepare_says_what_ingest_left_out_each_time(tmp_path):
    """An Amazon 2023 category whose meta gives item B03 a title of 21 words: D3's cleaning drops it
    and its 10 reviews, which the warning says once and the summary says at every run (reused too)."""
    import json

    reviews = [{"user_id": f"AG{u}", "parent_asin": item, "rating": 5.0, "timestamp": 1_600_000_000_000 + 60_000 * (3 * u + k)}
               for u in range(10) for k, item in enumerate(["B01", "B02", "B03"])]
    (tmp_path / "Tools.jsonl").write_text("\n".join(map(json.dumps, reviews)))
    meta = [{"parent_asin": "B01", "title": "Drill"}, {"parent_asin": "B02", "title": "Saw"},
            {"parent_asin": "B03", "title": " ".join(["word"] * 21)}]
    (tmp_path / "meta_Tools.jsonl").write_text("\n".join(map(json.dumps, meta)))
    args = ["data", "prepare", "-c", str(ROOT / "configs/smoke.yaml"), "--set", f"data.data_root={tmp_path / 'data'}",
            "--set", f"data.input_roots=[{tmp_path}]", "--set", "data.k_core=0", "--set", "data.source.format=amazon_raw",
            "--set", f"data.source.path={tmp_path / 'Tools.jsonl'}", "--set", f"data.source.meta_path={tmp_path / 'meta_Tools.jsonl'}"]
    for _ in range(2):
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 0, res.output
        assert "left out at ingest: amazon title cleaning: 1 items, 10 interactions" in res.output
    assert "(reused)" in res.output
