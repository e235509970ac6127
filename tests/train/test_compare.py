"""`cft compare` (tasks/compare.py): per-row quantities from evaluation folders, paired
differences with bootstrap intervals that cover a known difference, and the command itself."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from cft_cli.main import app
from tasks.compare import Evaluated, compare, per_row_quantities

ROWS = 300


def write_folder(folder, ranks: np.ndarray, logp_factual: np.ndarray, users: np.ndarray):
    """A minimal evaluation folder: predictions (one method's first-hit ranks) and diagnostics."""
    folder.mkdir(parents=True)
    key = {"user_id": users, "target_item_id": users * 10}
    pd.DataFrame({**key, "constrained_rank": ranks}).to_parquet(folder / "predictions.parquet")
    pd.DataFrame({**key, "logp_factual": logp_factual, "logp_counterfactual": np.full(len(users), -30.0),
                  "label_tokens": np.full(len(users), 5)}).to_parquet(folder / "diagnostics.parquet")
    return folder


def test_per_row_quantities_are_the_hand_computed_values(tmp_path):
    folder = write_folder(tmp_path / "a", np.array([0, 2, -1]), np.array([-10.0, -20.0, -25.0]), np.arange(3))
    q = per_row_quantities(folder, ["HR@1", "NDCG@10"])
    assert q["constrained/HR@1"].tolist() == [1.0, 0.0, 0.0]
    np.testing.assert_allclose(q["constrained/NDCG@10"], [1.0, 1 / np.log2(4), 0.0])  # rank 2 -> 1/log2(2+2)
    np.testing.assert_allclose(q["history_effect"], [20.0, 10.0, 5.0])  # logp_factual - (-30)
    np.testing.assert_allclose(q["history_effect_per_token"], [4.0, 2.0, 1.0])
    np.testing.assert_allclose(q["target_nll"], [2.0, 4.0, 5.0])


def test_rows_pair_by_their_occurrence_in_the_split_not_in_the_sample(tmp_path):
    """User 7 meets target 70 twice in the split (occurrences 0 and 1). Run A evaluated both rows;
    run B's sample holds only the second: B's row pairs with A's second row, not its first."""
    users = np.array([7, 7, 8])
    a = write_folder(tmp_path / "a", np.array([0, 5, 1]), np.array([-10.0, -20.0, -12.0]), users)
    b = write_folder(tmp_path / "b", np.array([5, 1]), np.array([-20.0, -12.0]), users[1:])
    for folder, occurrence in ((a, [0, 1, 0]), (b, [1, 0])):  # as evaluation writes them
        for name in ("predictions.parquet", "diagnostics.parquet"):
            frame = pd.read_parquet(folder / name)
            frame.assign(occurrence=occurrence).to_parquet(folder / name)
    table = compare([Evaluated("a", per_row_quantities(a, ["HR@1"]))],
                    [Evaluated("b", per_row_quantities(b, ["HR@1"]))], seed=0).set_index("quantity")
    assert table.loc["history_effect", "rows"] == 2
    assert table.loc["history_effect", "B - A"] == 0.0  # the same rows, so the same values
    assert table.loc["constrained/HR@1", "B - A"] == 0.0


def test_records_count_occurrences_over_the_whole_split_file(tmp_path):
    from tasks.training import read_records

    users, targets = [1, 2, 1, 1, 2, 3], [10, 20, 10, 11, 20, 10]
    path = tmp_path / "test.parquet"
    pd.DataFrame({"user_id": users, "target_item_id": targets, "target_title": list("abcdef")}).to_parquet(path)
    rows = read_records(path)
    assert [r["occurrence"] for r in rows] == [0, 0, 1, 0, 1, 0]  # by hand: (1,10) twice, (2,20) twice
    sample = read_records(path, limit=3, seed=1)
    assert [(r["split_row"], r["occurrence"]) for r in sample] == [(r["split_row"], [0, 0, 1, 0, 1, 0][r["split_row"]])
                                                                    for r in sample]


@pytest.mark.parametrize("batch_rows", [4, 1 << 16])
def test_a_sample_read_a_batch_at_a_time_is_the_rows_it_names(tmp_path, monkeypatch, batch_rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tasks import training
    from tasks.training import read_records, sampled_rows

    monkeypatch.setattr(training, "READ_BATCH_ROWS", batch_rows)  # batches across the row groups, or one per group

    n = 23
    table = pa.table({"user_id": [f"u{i % 5}" for i in range(n)], "target_item_id": [i % 4 for i in range(n)],
                      "history_titles": [[f"t{i}", f"t{i + 1}"] for i in range(n)],
                      "target_title": [f"title {i}" for i in range(n)]})
    path = tmp_path / "test.parquet"
    pq.write_table(table, path, row_group_size=5)  # 5 groups, the last one short
    assert pq.ParquetFile(path).num_row_groups == 5
    everything = read_records(path)
    for limit, seed in [(1, 0), (7, 1), (7, 2), (22, 3)]:
        sample = read_records(path, limit=limit, seed=seed)
        assert [r["split_row"] for r in sample] == sampled_rows(n, limit, seed)
        assert sample == [everything[r["split_row"]] for r in sample]
        assert [r["target_title"] for r in sample] == [f"title {r['split_row']}" for r in sample]


def test_runs_of_different_data_windows_are_refused(tmp_path):
    """Two windows number their items each their own way: rows with the same (user, target id)
    are other interactions, so the comparison is refused, naming the windows; folders of one
    window compare; folders written before the window was recorded are told apart by their
    catalogue sizes."""
    import json

    from schemas.errors import InputError
    from tasks.compare import evaluated

    users = np.arange(20)
    folders = {}
    for name, window, size in [("a", "ml-100k-aaaa", 900), ("b", "ml-100k-bbbb", 900), ("a2", "ml-100k-aaaa", 900),
                               ("old1", None, 900), ("old2", None, 950)]:
        folder = write_folder(tmp_path / name, np.zeros(20, dtype=int), np.full(20, -10.0), users)
        summary = {"split": "test", "examples": 20, "catalogue": size} | ({"sequences": window} if window else {})
        (folder / "summary.json").write_text(json.dumps(summary))
        folders[name] = evaluated(name, folder, ["HR@1"])
    assert folders["a"].window == "ml-100k-aaaa" and folders["old1"].window is None
    with pytest.raises(InputError, match="different data windows \\(a: ml-100k-aaaa, 900 items; b: ml-100k-bbbb"):
        compare([folders["a"]], [folders["b"]])
    with pytest.raises(InputError, match="cft evaluate -c PROFILE --model models:/NAME/N"):
        compare([folders["old1"]], [folders["old2"]])  # 900 vs 950 items: not one window
    assert compare([folders["a"]], [folders["a2"]]).set_index("quantity").loc["constrained/HR@1", "rows"] == 20
    assert compare([folders["a"]], [folders["old1"]]).set_index("quantity").loc["constrained/HR@1", "rows"] == 20


def test_the_table_names_the_ranking_settings_the_sides_differ_in(tmp_path):
    """A compare of runs ranked with and without the popularity backfill (or with other beams)
    still runs, but says so above the table; runs ranked alike get no such lines, and a folder
    written before the settings were recorded is named."""
    import json

    from tasks.compare import evaluated, markdown, ranking_differences

    def ranking(backfill: str, beams: int, batch: int) -> dict:
        return {"constrained": {"method": "constrained", "backfill": backfill,
                                "generation": {"num_beams": beams, "batch_size": batch}}}

    users = np.arange(20)
    runs = {}
    for name, settings in [("filled", ranking("popularity", 5, 8)), ("plain", ranking("none", 5, 8)),
                           ("wide", ranking("popularity", 10, 16)), ("batched", ranking("popularity", 5, 16)),
                           ("old", None)]:
        folder = write_folder(tmp_path / name, np.zeros(20, dtype=int), np.full(20, -10.0), users)
        summary = {"split": "test", "examples": 20, "catalogue": 900, "sequences": "w"}
        (folder / "summary.json").write_text(json.dumps(summary | ({"ranking": settings} if settings else {})))
        runs[name] = evaluated(name, folder, ["HR@1"])
    assert ranking_differences([runs["filled"]], [runs["plain"]]) == ["constrained backfill: popularity (A) vs none (B)"]
    assert ranking_differences([runs["filled"]], [runs["wide"]]) == ["constrained generation.num_beams: 5 (A) vs 10 (B)"]
    assert ranking_differences([runs["filled"]], [runs["batched"]]) == []  # a batch size ranks the same
    assert ranking_differences([runs["old"]], [runs["old"]]) == []
    assert ranking_differences([runs["filled"]], [runs["old"]]) == [
        "ranking settings not recorded for old (evaluated before they were)"]
    table = compare([runs["filled"]], [runs["plain"]])
    text = markdown(table, "filled", "plain", 0.95, ranking_differences([runs["filled"]], [runs["plain"]]))
    assert "The sides ranked with different settings, so B - A holds their effect too:\n" \
           "- constrained backfill: popularity (A) vs none (B)\n\n| quantity |" in text
    assert "different settings" not in markdown(table, "filled", "batched", 0.95, [])


def test_the_interval_covers_a_known_difference(tmp_path):
    """B's history effect is A's + 0.5 + noise on every row: the 95 % interval should hold 0.5 in
    about 95 % of simulated studies, and declare B higher when the effect is clear."""
    rng = np.random.default_rng(0)
    covered, verdicts = 0, []
    sims = 60
    for s in range(sims):
        base = rng.normal(-20, 3, ROWS)
        a = write_folder(tmp_path / f"a{s}", rng.integers(-1, 20, ROWS), base, np.arange(ROWS))
        b_logp = base + 0.5 + rng.normal(0, 2, ROWS)
        # B's rows come in another order and one extra row: pairing is by (user, target), not position.
        perm = rng.permutation(ROWS)
        b = write_folder(tmp_path / f"b{s}", rng.integers(-1, 20, ROWS + 1), np.append(b_logp[perm], -1.0),
                         np.append(perm, ROWS))
        table = compare([Evaluated("a", per_row_quantities(a, ["NDCG@10"]))],
                        [Evaluated("b", per_row_quantities(b, ["NDCG@10"]))], seed=s).set_index("quantity")
        row = table.loc["history_effect"]
        assert row["rows"] == ROWS
        covered += row["ci_low"] <= 0.5 <= row["ci_high"]
        verdicts.append(row["verdict"])
    assert covered >= 0.88 * sims
    assert verdicts.count("B higher") >= 0.8 * sims  # 0.5 against a standard error of ~0.12


def test_compare_command_writes_the_table_and_the_plot(tmp_path):
    rng = np.random.default_rng(1)
    base = rng.normal(-20, 3, ROWS)
    a = write_folder(tmp_path / "a", rng.integers(-1, 20, ROWS), base, np.arange(ROWS))
    b = write_folder(tmp_path / "b", rng.integers(-1, 20, ROWS), base + 3.0, np.arange(ROWS))
    res = CliRunner().invoke(app, ["compare", str(a), str(b), "--out-dir", str(tmp_path / "out"),
                                   "--set", f"data.data_root={tmp_path}"], prog_name="cft")
    assert res.exit_code == 0, res.output
    assert re.search(r"\| history_effect \| 300 \| 1 vs 1 \| [0-9.]+ \| [0-9.]+ \| \+3\.0000 \| \[\+3\.0000, "
                     r"\+3\.0000\] \| B higher \|", res.output), res.output
    assert (tmp_path / "out" / "compare.md").is_file() and (tmp_path / "out" / "compare-1.png").stat().st_size > 0
    assert not (tmp_path / "mlflow").exists()  # two folders: the tracking store was not needed, nor created
    # A side that is neither a folder nor a run: exit 2, and neither an output folder nor an empty
    # tracking store is left behind (the default out dir and store are relative to the working directory).
    missing, existing = tmp_path / "missing" / "mlflow.db", tmp_path / "mlflow.db"
    MlflowClient(f"sqlite:///{existing}").search_experiments()  # creates the (empty) store
    for store, message in [(missing, f"there is no tracking store at {missing}"),
                           (existing, "is not in the tracking store")]:
        res = CliRunner().invoke(app, ["compare", str(a), str(tmp_path / "nothing-here"), "--out-dir",
                                       str(tmp_path / "not-written"), "--set", f"tracking.tracking_uri=sqlite:///{store}"],
                                 prog_name="cft")
        assert res.exit_code == 2 and message in res.output, res.output
        assert not (tmp_path / "not-written").exists()
    assert not missing.exists()
