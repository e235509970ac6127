"""Registry: pyfunc logging (models-from-code), idempotent registration, the gate, overrides.

A real MLflow SQLite store; the model is the tiny model built for the capped ML-100K data.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from schemas.errors import InputError, RegistryError
from tasks import registry
from tasks.registry import gate, loading, registration
from tasks.tracking import local_artifact_location
from tests.train.conftest import make_config, with_rows_in_train


@pytest.fixture
def setup(tmp_path, small_sequences):
    """(cfg, tracking uri, model folder, sequences folder)."""
    from tasks.training import model_folder

    seq, _ = small_sequences
    cfg = make_config(tmp_path)
    cfg = cfg.updated({"eval.num_beams": 2, "eval.num_return_sequences": 2, "eval.max_new_tokens": 8,
                       "eval.min_new_tokens": 1})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return cfg, uri, model_folder(cfg, seq), seq


def new_run(uri: str) -> str:
    """A finished run in the store at `uri` (through a client: no global MLflow state)."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("registry-test")
    # Artifacts beside the store, as the pipeline's experiments keep them (not under ./mlruns).
    location = local_artifact_location(uri)
    exp_id = exp.experiment_id if exp else client.create_experiment("registry-test", artifact_location=location)
    run = client.create_run(exp_id)
    client.log_param(run.info.run_id, "p", 1)
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def source_ids(seq) -> pd.Series:
    """dense item id -> the source's item id, from a sequences folder's catalogue (served models
    speak the source's ids; the folder's dense ids are its own shuffle)."""
    return pd.read_parquet(seq / "catalogue.parquet").set_index("item_id")["source_item_id"].astype(str)


def registered(cfg, uri, model_dir, seq, run_id):
    model_uri = registry.log_recommender(cfg, run_id, model_dir, seq, uri)
    return registry.register(cfg, run_id, model_uri, {"data_fingerprint": "fp"}, uri)


ROWS = np.array([1.0, 0.5, 0.0, 0.0, 0.3, 0.0, 1.0, 0.0])  # per-row NDCG of some model on 8 rows


@pytest.mark.parametrize(("ours", "champion", "floor", "margin", "rule", "promoted", "why"), [
    (ROWS + 0.1, ROWS, None, 0.0, "point", True, "beats the champion"),
    (ROWS, ROWS, None, 0.0, "point", False, "does not beat"),                 # a tie is no improvement
    (ROWS + 0.05, ROWS, None, 0.1, "point", False, "not above the margin 0.1"),
    (ROWS + 0.2, ROWS, None, 0.1, "point", True, "margin 0.1"),
    (ROWS + 0.1, ROWS, {"popularity": ROWS + 0.2}, 0.0, "point", False, "not the popularity floor"),
    (ROWS + 0.1, ROWS, {"popularity": ROWS, "markov": ROWS + 0.2}, 0.0, "point", False, "not the markov floor"),
    (ROWS + 0.1, ROWS, {"popularity": ROWS, "markov": ROWS + 0.05}, 0.0, "point", True,
     "and the popularity and markov floors"),
    (ROWS * 0 + 0.01, ROWS * 0, None, 0.0, "ci", True, "beats"),             # the same gain on every row
    (np.roll(ROWS, 1) + 0.01, ROWS, None, 0.0, "ci", False, "does not beat"),  # mean +0.01, interval spans 0
])
def test_decide(ours, champion, floor, margin, rule, promoted, why):
    got, reason, (diff, low, high) = registry.decide(ours, champion, floor, margin, rule)
    assert got is promoted and why in reason
    assert diff == pytest.approx(float(np.mean(ours - champion)))
    assert low <= diff <= high


def test_popularity_baseline_is_registered_once_and_becomes_the_first_champion(setup):
    import mlflow
    from mlflow import MlflowClient

    cfg, uri, model_dir, seq = setup
    cfg = cfg.updated({"tracking.enabled": True, "tracking.tracking_uri": uri})
    v = registry.register_baseline(cfg, seq, "fp-A", "popularity")
    assert registry.register_baseline(cfg, seq, "fp-A", "popularity") == v == "1"  # once per data window
    client = MlflowClient(uri, registry_uri=uri)
    name = cfg.registered_model_name()
    assert str(client.get_model_version_by_alias(name, "champion").version) == "1"
    assert client.get_model_version(name, "1").tags["cft.kind"] == "popularity"
    counted = client.get_run(client.get_model_version(name, "1").run_id).inputs.dataset_inputs
    assert [(d.dataset.name, d.tags[0].value) for d in counted] == [(f"{seq.name}/train", "training")]  # what it counted
    # The same input and output as the LLM recommender: the training split's most frequent items.
    served = mlflow.pyfunc.load_model(f"models:/{name}/1")
    counts = pd.read_parquet(seq / "train.parquet")["target_item_id"].value_counts()
    catalogue = pd.read_parquet(seq / "catalogue.parquet").set_index("item_id")
    top = counts.sort_index().sort_values(ascending=False, kind="stable").index.tolist()
    source = source_ids(seq)
    assert not (source.index.astype(str) == source).all()  # the ids below say which numbering answered
    out = served.predict(pd.DataFrame({"history": [[source[top[0]]], [catalogue["title"][top[5]]]]}), params={"k": 3})
    assert list(out["item_ids"][0]) == [source[i] for i in top[1:4]]  # the history's item is left out
    assert list(out["item_ids"][1]) == [source[i] for i in top[:3]]
    assert list(out["scores"][1]) == [float(counts[i]) for i in top[:3]]  # scores: training counts
    # `exclude` (optional in the signature): items the user already has, besides the history.
    out = served.predict(pd.DataFrame({"history": [[source[top[0]]], [source[top[0]]]],
                                       "exclude": [[source[top[1]], catalogue["title"][top[2]]], None]}), params={"k": 3})
    assert list(out["item_ids"][0]) == [source[i] for i in top[3:6]]
    assert list(out["item_ids"][1]) == [source[i] for i in top[1:4]]  # None: nothing more to leave out
    assert registry.takes_exclude(served)
    new_user = served.predict(pd.DataFrame({"history": [[], ["an item newer than the window"]]}), params={"k": 3})
    assert [list(r) for r in new_user["item_ids"]] == [[source[i] for i in top[:3]]] * 2  # the top sellers
    assert registry.register_baseline(cfg, seq, "fp-B", "popularity") == "2"  # a new window: a new baseline
    assert str(client.get_model_version_by_alias(name, "champion").version) == "1"  # not promoted by itself


def test_the_markov_baseline_serves_what_followed_the_newest_known_item(setup):
    """The Markov-chain version of a window: registered once beside popularity (which stays the
    first champion), served by the source's ids through MLflow and `cft serve` (method "markov"):
    the items seen right after the newest history item the catalogue knows, history and `exclude`
    left out; a new user gets the top sellers."""
    import mlflow
    from fastapi.testclient import TestClient
    from mlflow import MlflowClient

    from cft_cli.server import create_app
    from tests.conftest import mlflow_uris_restored

    cfg, uri, model_dir, seq = setup
    cfg = cfg.updated({"tracking.enabled": True, "tracking.tracking_uri": uri})
    versions = registry.register_baselines(cfg, seq, "fp-A")
    assert versions == {"popularity": "1", "markov": "2"} == registry.register_baselines(cfg, seq, "fp-A")
    client = MlflowClient(uri, registry_uri=uri)
    name = cfg.registered_model_name()
    assert str(client.get_model_version_by_alias(name, "champion").version) == "1"
    assert client.get_model_version(name, "2").tags["cft.kind"] == "markov"
    train = pd.read_parquet(seq / "train.parquet")
    pairs = pd.DataFrame({"previous": train["history_item_ids"].map(lambda h: h[-1]),
                          "following": train["target_item_id"]}).value_counts()
    counts = train["target_item_id"].value_counts()
    busiest = pairs.index.get_level_values(0).value_counts().index[0]  # the item with the most followers
    after = pairs[busiest].sort_values(ascending=False, kind="stable")
    source = source_ids(seq)
    expected = sorted(after.index, key=lambda i: (-after[i], -counts.get(i, 0), i))
    with mlflow_uris_restored(uri):
        served = mlflow.pyfunc.load_model(f"models:/{name}/2")
        assert served.unwrap_python_model().transitions._ordered  # sorted on load, not at the first request
        # The newest entry is unknown (left out): the newest known one, `busiest`, decides.
        out = served.predict(pd.DataFrame({"history": [[source[busiest], "an item newer than the window"]],
                                           "exclude": [[source[expected[0]]]]}), params={"k": len(expected) - 1})
        assert list(out["item_ids"][0]) == [source[i] for i in expected[1:] if i != busiest][: len(expected) - 1]
        assert list(out["unmatched"][0]) == ["an item newer than the window"]
        new_user = served.predict(pd.DataFrame({"history": [[]]}), params={"k": 3})
        top = counts.sort_index().sort_values(ascending=False, kind="stable").index[:3]
        assert list(new_user["item_ids"][0]) == [source[i] for i in top]
        with TestClient(create_app(f"models:/{name}/2", follow_every_s=0)) as http:
            assert http.get("/health").json()["method"] == "markov"
            answer = http.post("/recommend", json={"history": [source[busiest]], "k": 2})
            assert answer.json()["item_ids"] == [source[i] for i in expected if i != busiest][:2]


@pytest.mark.parametrize("quiet", ["1", "0"])
def test_registration_notices_are_muted_in_a_quiet_process_only(setup, monkeypatch, capfd, quiet):
    """MLflow prints "Created version 'N' of model ..." to stderr at each registration; `cft`
    (quiet unless --verbose) logs the version itself."""
    from tasks.quiet import QUIET_ENV

    cfg, uri, _, seq = setup
    cfg = cfg.updated({"tracking.enabled": True, "tracking.tracking_uri": uri})
    monkeypatch.setenv(QUIET_ENV, quiet)
    capfd.readouterr()
    assert registry.register_baseline(cfg, seq, "fp-A", "popularity") == "1"
    err = capfd.readouterr().err
    assert ("Created version '1'" in err) is (quiet == "0"), err
    from mlflow.utils.logging_utils import MLFLOW_LOGGING_STREAM

    assert MLFLOW_LOGGING_STREAM.enabled  # muted for the call only


def test_a_version_that_answers_dense_ids_is_refused_by_the_batch(setup, monkeypatch, tmp_path):
    """Versions registered before served models spoke the source's ids have `item_ids` of type
    long in their signature: their ids name items of their own window only, so the batch job
    refuses them, and one registered now is accepted."""
    import mlflow
    from mlflow.types import ColSpec, DataType, Schema
    from mlflow.types.schema import Array

    from tasks.batch import recommend_all
    from tests.conftest import mlflow_uris_restored

    cfg, uri, model_dir, seq = setup
    cfg = cfg.updated({"tracking.enabled": True, "tracking.tracking_uri": uri})
    now = registry.register_baseline(cfg, seq, "fp-A", "popularity")
    signature = registration._signature(cfg)
    before = signature.outputs.inputs.copy()
    before[0] = ColSpec(Array(DataType.long), "item_ids")
    monkeypatch.setattr(signature, "outputs", Schema(before))
    monkeypatch.setattr(registration, "_signature", lambda cfg: signature)
    old = registry.register_baseline(cfg, seq, "fp-B", "popularity")
    name = cfg.registered_model_name()
    interactions = Path(json.loads((seq / "manifest.json").read_text())["ingested"]) / "interactions.parquet"
    with mlflow_uris_restored(uri):
        assert registry.answers_source_ids(mlflow.pyfunc.load_model(f"models:/{name}/{now}"))
        assert not registry.answers_source_ids(mlflow.pyfunc.load_model(f"models:/{name}/{old}"))
        with pytest.raises(InputError, match=f"models:/{name}/{old} answers with the dense item ids of its own data window"):
            recommend_all(interactions, (None, None), 10, f"models:/{name}/{old}", 3, tmp_path / "recs.parquet",
                          progress=False)
        assert not (tmp_path / "recs.parquet").exists()
        done = recommend_all(interactions, (None, None), 10, f"models:/{name}/{now}", 3, tmp_path / "recs.parquet",
                             progress=False)
        assert done.users > 0 and (tmp_path / "recs.parquet").is_file()


def test_the_batch_leaves_out_all_a_user_has_and_older_versions_the_history_only(setup, monkeypatch, tmp_path):
    """A version registered now takes `exclude`: the batch leaves out every item the user has
    (not only the newest max_history); one registered before (no `exclude` in its signature)
    is still used, leaving out the history only, and the output says which."""
    from mlflow.types import Schema

    from tasks.batch import recommend_all
    from tests.conftest import mlflow_uris_restored

    cfg, uri, model_dir, seq = setup
    cfg = cfg.updated({"tracking.enabled": True, "tracking.tracking_uri": uri})
    now = registry.register_baseline(cfg, seq, "fp-A", "popularity")
    signature = registration._signature(cfg)
    monkeypatch.setattr(signature, "inputs", Schema([c for c in signature.inputs.inputs if c.name != "exclude"]))
    monkeypatch.setattr(registration, "_signature", lambda cfg: signature)
    before = registry.register_baseline(cfg, seq, "fp-B", "popularity")
    name = cfg.registered_model_name()
    interactions = Path(json.loads((seq / "manifest.json").read_text())["ingested"]) / "interactions.parquet"
    rows = pd.read_parquet(interactions)
    seen = {u: set(items) for u, items in rows.groupby("user_id")["item_id"]}
    with mlflow_uris_restored(uri):
        got = {}
        for version in (now, before):
            out = tmp_path / f"recs-{version}.parquet"
            done = recommend_all(interactions, (None, None), 3, f"models:/{name}/{version}", 5, out, progress=False)
            got[version] = (done, pd.read_parquet(out))
    done, recs = got[now]
    assert done.excluded_seen and all(not set(r.item_ids) & seen[r.user_id] for r in recs.itertuples())
    assert done.users_short == (recs["item_ids"].map(len) < 5).sum()
    with mlflow_uris_restored(uri):  # the whole catalogue asked: every user has some, so every user is short
        size = len(pd.read_parquet(seq / "catalogue.parquet"))
        everything = recommend_all(interactions, (None, None), 3, f"models:/{name}/{now}", size, tmp_path / "all.parquet",
                                   progress=False)
    assert everything.users_short == everything.users > 0
    done, recs = got[before]
    assert not done.excluded_seen
    assert all(not set(r.item_ids) & set(r.history_item_ids) for r in recs.itertuples())  # the history, at least
    assert any(set(r.item_ids) & seen[r.user_id] for r in recs.itertuples())  # what the new input fixed


def test_the_batch_writes_an_llm_list_filled_to_k_with_null_scores_after_the_beams(setup, tmp_path):
    """An LLM version (constrained, 2 beams, eval.backfill popularity): every user gets k items in
    the batch file, the beams' items scored and the popular ones after them null."""
    from tasks.batch import recommend_all
    from tests.conftest import mlflow_uris_restored

    cfg, uri, model_dir, seq = setup
    version = registered(cfg, uri, model_dir, seq, new_run(uri)).version
    ingested = pd.read_parquet(Path(json.loads((seq / "manifest.json").read_text())["ingested"]) / "interactions.parquet")
    few = ingested[ingested["user_id"].isin(ingested["user_id"].unique()[:6])]  # six users: six searches
    few.to_parquet(tmp_path / "interactions.parquet", index=False)
    with mlflow_uris_restored(uri):
        done = recommend_all(tmp_path / "interactions.parquet", (None, None), 3,
                             f"models:/{cfg.registered_model_name()}/{version}", 8, tmp_path / "recs.parquet",
                             progress=False)
    recs = pd.read_parquet(tmp_path / "recs.parquet")
    assert done.users == 6 and done.users_short == 0 and all(len(r) == 8 for r in recs["item_ids"])
    for scores in recs["scores"]:
        scored = int(pd.notna(scores).sum())
        assert 1 <= scored <= 2 and pd.isna(scores[scored:]).all()


STORED = Path(__file__).resolve().parents[1] / "fixtures" / "stored_pyfuncs"


def test_versions_registered_with_older_pyfunc_files_still_answer(setup, monkeypatch):
    """A registered version runs the pyfunc file stored with it (models-from-code) against the
    installed cft_core: the files of versions registered at 937b889 (the last landed before the
    `exclude` input; tests/fixtures/stored_pyfuncs) must still load and answer, here through
    MLflow and through `cft serve`'s app, an `exclude` column or field included (ignored by them)."""
    import mlflow
    from fastapi.testclient import TestClient

    from cft_cli.server import create_app
    from tests.conftest import mlflow_uris_restored

    cfg, uri, model_dir, seq = setup
    cfg = cfg.updated({"eval.backfill": "none"})  # as every version of then was ranked (RankingSettings.from_dict)
    monkeypatch.setitem(registry.BASELINE_PYFUNCS, "popularity", STORED / "popularity_pyfunc_2026_11.py")
    monkeypatch.setattr(registration, "PYFUNC_FILE", STORED / "recommender_pyfunc_2026_11.py")
    llm = str(registered(cfg, uri, model_dir, seq, new_run(uri)).version)
    cfg = cfg.updated({"tracking.enabled": True, "tracking.tracking_uri": uri})
    popularity = registry.register_baseline(cfg, seq, "fp-old", "popularity")
    name = cfg.registered_model_name()
    history = pd.read_parquet(seq / "catalogue.parquet")["title"].tolist()[:2]
    with mlflow_uris_restored(uri):
        for version in (popularity, llm):
            out = mlflow.pyfunc.load_model(f"models:/{name}/{version}").predict(
                pd.DataFrame({"history": [history], "exclude": [[]]}), params={"k": 3})
            assert len(out["item_ids"][0]) > 0 and set(out["titles"][0]).isdisjoint(history), version
            with TestClient(create_app(f"models:/{name}/{version}", follow_every_s=0)) as client:
                answer = client.post("/recommend", json={"history": history, "exclude": [], "k": 3})
                assert answer.status_code == 200 and answer.json()["titles"] == list(out["titles"][0]), version


def test_the_floor_replaces_a_standing_champion_that_fell_below_it(setup):
    """The champion must never be worse than the simple baselines: a champion the gate did not
    choose (here a person's promotion of an untrained model) is replaced by the best of this
    window's baselines that beats it by the gate's rule, at the next gate, even though the
    challenger is not promoted; once that baseline is champion, nothing more moves."""
    from mlflow import MlflowClient

    from cft_core.metrics import per_row_metric

    cfg, uri, model_dir, seq = setup
    # The gate rows' own transitions in training: the Markov chain ranks their targets first.
    seq = with_rows_in_train(seq, cfg.data.data_root / "sequences" / "valid-in-train", "valid")
    # NDCG@50: on these 32 capped gate rows the top sellers hit only below rank 10.
    cfg = cfg.updated({"tracking.enabled": True, "tracking.tracking_uri": uri,
                       "registry.gate_metric": "constrained/NDCG@50"})
    client = MlflowClient(uri, registry_uri=uri)
    name = cfg.registered_model_name()
    window = json.loads((seq / "manifest.json").read_text())["fingerprint"]
    llm = [str(registered(cfg, uri, model_dir, seq, new_run(uri)).version) for _ in range(2)]
    baselines = registry.register_baselines(cfg, seq, window)
    assert client.get_model_version_by_alias(name, "champion").version == int(baselines["popularity"])  # the first
    registry.promote(cfg, name, llm[0], "tried by hand", uri)

    # The same model again as challenger: a tie with the champion, so not promoted.
    d = registry.gate_model(cfg.updated({"registry.gate_floor": False}), llm[1], model_dir, seq)
    assert not d.promoted and d.champion_version == llm[0] and d.floor_promoted is None  # the floor switched off
    assert str(client.get_model_version_by_alias(name, "champion").version) == llm[0]
    d = registry.gate_model(cfg, llm[1], model_dir, seq)
    assert not d.promoted and "does not beat the champion" in d.reason
    # The untrained model is below both baselines on the gate rows (what the decision rests on),
    # and the Markov chain is the better of the two here.
    ours, floors, preds = gate._gate_rows(cfg, model_dir, seq)
    means = {kind: per_row_metric(ranks, "NDCG@50").mean() for kind, ranks in floors.items()}
    assert means["markov"] > means["popularity"] > per_row_metric(ours, "NDCG@50").mean() == d.champion_value
    assert (d.popularity_value, d.markov_value) == (means["popularity"], means["markov"])
    # The floors a challenger is held to (the evaluation's baselines) are the registered baseline
    # versions that replace the champion, ranked as they serve: one floor each.
    for kind, version in baselines.items():
        served = gate._served_ranks(cfg, client.get_model_version(name, version), preds, seq, "rows")
        np.testing.assert_array_equal(served, floors[kind])
    best = baselines["markov"]
    assert d.floor_promoted == best and f"champion v{llm[0]} (" in d.floor_reason and "markov baseline" in d.floor_reason
    assert str(client.get_model_version_by_alias(name, "champion").version) == best
    history = json.loads(client.get_registered_model(name).tags["champion_history"])
    assert (history[-1]["version"], history[-1]["action"]) == (best, "gate") and "fell below" in history[-1]["reason"]
    tags = client.get_model_version(name, llm[1]).tags
    assert tags["gate.floor_promoted"].startswith(f"v{best}: ") and float(tags["gate.markov_value"]) == means["markov"]
    assert "**The floor**" in client.get_model_version(name, llm[1]).description
    assert "| Markov-chain baseline |" in client.get_model_version(name, llm[1]).description
    # A rollback undoes it like any change of champion; the next gate replaces it again.
    assert registry.rollback(cfg, name, "checking the undo", uri) == llm[0]
    assert registry.gate_model(cfg, llm[1], model_dir, seq).floor_promoted == best
    # The best baseline is champion now: the challenger beats nothing, and nothing moves.
    d = registry.gate_model(cfg, llm[1], model_dir, seq)
    assert not d.promoted and d.champion_version == best and d.floor_promoted is None
    # A window registered before the Markov baseline existed has popularity only: that one replaces.
    registry.promote(cfg, name, llm[0], "tried by hand again", uri)
    client.delete_model_version(name, best)
    assert registry.gate_model(cfg, llm[1], model_dir, seq).floor_promoted == baselines["popularity"]


def test_a_champion_is_gated_as_it_serves_with_its_own_catalogue(setup):
    """The gate scores a standing champion as it serves: its own pyfunc, catalogue and settings.
    Here it was registered on an older window, whose catalogue lacked the targets of some gate
    rows (items new since) and named every item otherwise (all renamed since, so only ids match
    them across windows): those rows are never its hits, although the same model ranking this
    window's catalogue hits them (what the gate measured before); its ranks are its served answers
    to the rows' histories sent as a client sends them (the source's ids), matched to the targets
    by source id. Ranked once per version and gate rows."""
    import mlflow
    from mlflow import MlflowClient

    from cft_core.metrics import first_hit_ranks, per_row_metric
    from tests.conftest import mlflow_uris_restored

    cfg, uri, model_dir, seq = setup
    # Grounding ranks the whole catalogue: an untrained model hits some targets within 50.
    cfg = cfg.updated({"tracking.enabled": True, "tracking.tracking_uri": uri,
                       "registry.gate_metric": "grounding_adjusted/NDCG@50"})
    this_window, _, preds = gate._gate_rows(cfg, model_dir, seq)
    new = set(preds["target_item_id"][this_window >= 0])
    assert 0 < len(new) < len(preds)
    # The older window: the same folder with those items missing from its catalogue (ids 0..N-1 again).
    old = cfg.data.data_root / "sequences" / "older-window"
    old.mkdir(parents=True)
    catalogue = pd.read_parquet(seq / "catalogue.parquet").sort_values("item_id")
    kept = catalogue[~catalogue["item_id"].isin(new)].assign(item_id=lambda c: range(len(c)))
    kept["title"] += " [older name]"  # every item renamed since: matched by source id, not by title
    kept.to_parquet(old / "catalogue.parquet", index=False)
    name = cfg.registered_model_name()
    champion = str(registered(cfg, uri, model_dir, old, new_run(uri)).version)
    challenger = str(registered(cfg, uri, model_dir, seq, new_run(uri)).version)
    registry.promote(cfg, name, champion, "the older window's model", uri)

    d = registry.gate_model(cfg, challenger, model_dir, seq)
    client = MlflowClient(uri, registry_uri=uri)
    champion_ranks = gate._served_ranks(cfg, client.get_model_version(name, champion), preds, seq, d.rows_fingerprint)
    assert (champion_ranks[preds["target_item_id"].isin(new)] == -1).all()
    assert d.champion_version == champion and d.champion_value == per_row_metric(champion_ranks, "NDCG@50").mean()
    assert d.challenger_value == per_row_metric(this_window, "NDCG@50").mean()  # the same model, this window's items
    with mlflow_uris_restored(uri):
        source = source_ids(seq)  # what a client sends: the source's ids
        served = mlflow.pyfunc.load_model(f"models:/{name}/{champion}").predict(
            pd.DataFrame({"history": [[source[i] for i in h] for h in preds["history_item_ids"]]}),
            params={"k": 50, "exclude_history": False})
    target = source[preds["target_item_id"]].to_numpy()
    expected = first_hit_ranks(np.array([list(r) + [""] * (50 - len(r)) for r in served["item_ids"]]), target)
    np.testing.assert_array_equal(champion_ranks, expected)
    assert (champion_ranks >= 0).any()  # hits on items renamed since: found by their ids
    # Ranked once per version and rows: the cached ranks are read back, whatever the model does now.
    cached = next((cfg.data.data_root / "registry" / "gate").glob(f"{name}-v{champion}-*/ranks.json"))
    cached.write_text(json.dumps([0] * len(preds)))
    again = gate._served_ranks(cfg, client.get_model_version(name, champion), preds, seq, d.rows_fingerprint)
    assert (again == 0).all()


@pytest.mark.parametrize("in_place", [True, False])
def test_a_loaded_version_frees_its_model_and_download_when_done(setup, monkeypatch, in_place):
    """`LoadedPyfunc` (how the gate, the batch job, `cft recommend` and `cft serve` load a
    version) ends an LLM version's batching worker on leaving the block, an error included: the
    worker thread would otherwise hold the model for the life of the process. A local folder store
    is read in place; from any other store (an MLflow server's proxied artifacts, S3: here the
    local store treated as one) the model is downloaded into a folder of its own that goes with
    the block, where MLflow's own download would stay in the temporary directory for good."""

    from tests.conftest import mlflow_uris_restored

    cfg, uri, model_dir, seq = setup
    version = registered(cfg, uri, model_dir, seq, new_run(uri)).version
    model_uri = f"models:/{cfg.registered_model_name()}/{version}"
    workers, downloads = [], []
    with mlflow_uris_restored(uri):
        assert registry.artifacts_read_in_place(model_uri)  # the SQLite set-up keeps artifacts in a folder
        if not in_place:
            monkeypatch.setattr(loading, "artifacts_read_in_place", lambda uri: False)
        for fail in (False, True):
            with (pytest.raises(RuntimeError) if fail else contextlib.nullcontext(),
                  registry.LoadedPyfunc(model_uri) as loaded):
                workers.append(loaded.batching._worker)
                downloads.append(loaded.download)
                assert workers[-1].is_alive()
                assert len(loaded.pyfunc.predict(pd.DataFrame({"history": [[]]}), params={"k": 2})["item_ids"][0]) > 0
                if in_place:
                    assert loaded.download is None
                else:
                    assert (loaded.download / "MLmodel").is_file()
                if fail:
                    raise RuntimeError("the caller failed")
    for worker, download in zip(workers, downloads, strict=True):
        worker.join(10)
        assert not worker.is_alive()
        assert download is None or not download.exists()


def test_register_is_idempotent_and_the_pyfunc_recommends(setup):
    """A version that serves by grounding: K items for any K (constrained serving returns at
    most its beams, see test_served_model_ranks_as_the_evaluation_measured)."""
    import mlflow
    from mlflow import MlflowClient

    cfg, uri, model_dir, seq = setup
    cfg = cfg.updated({"registry.gate_metric": "grounding_adjusted/NDCG@10"})
    run_id = new_run(uri)
    v1 = registered(cfg, uri, model_dir, seq, run_id)
    again = registered(cfg, uri, model_dir, seq, run_id)
    client = MlflowClient(uri, registry_uri=uri)
    name = cfg.registered_model_name()
    assert str(again.version) == str(v1.version) == "1"
    # The logged model knows its registered version (the MLflow UI shows it as registered).
    logged = mlflow.get_logged_model(client.get_model_version(cfg.registered_model_name(), "1").source.removeprefix("models:/"))
    assert json.loads(logged.tags["mlflow.modelVersions"]) == [{"name": cfg.registered_model_name(), "version": 1}]
    assert len(client.search_model_versions(f"name='{name}'")) == 1
    assert client.get_model_version(name, "1").tags["data_fingerprint"] == "fp"

    # Models-from-code: the stored model is our source file, not a pickled object.
    local = mlflow.artifacts.download_artifacts(f"models:/{name}/1")
    files = {p.name for p in __import__("pathlib").Path(local).rglob("*")}
    assert "recommender_pyfunc.py" in files and not any(f.endswith((".pkl", ".pickle")) for f in files)

    model = mlflow.pyfunc.load_model(f"models:/{name}/1")
    catalogue = pd.read_parquet(seq / "catalogue.parquet")
    history = catalogue["title"].tolist()[:3]
    out = model.predict(pd.DataFrame({"history": [history, [str(catalogue["source_item_id"][5])]]}), params={"k": 7})
    assert len(out) == 2
    title_of = dict(zip(catalogue["source_item_id"].astype(str), catalogue["title"], strict=True))
    for row, seen in zip(out.itertuples(), [history, [catalogue["title"][5]]], strict=True):
        assert len(row.item_ids) == 7 == len(set(row.item_ids)) == len(row.scores)
        assert [title_of[i] for i in row.item_ids] == list(row.titles)  # the source's ids, each with its title
        assert not set(row.titles) & set(seen)  # history excluded by default


def test_overrides_are_recorded_and_rollbacks_undo_the_changes_of_champion_in_order(setup):
    from mlflow import MlflowClient

    cfg, uri, model_dir, seq = setup
    client = MlflowClient(uri, registry_uri=uri)
    name = cfg.registered_model_name()
    versions = [str(registered(cfg, uri, model_dir, seq, new_run(uri)).version) for _ in range(3)]
    alias = lambda a: str(client.get_model_version_by_alias(name, a).version)  # noqa: E731

    registry.promote(cfg, name, versions[0], "first release", uri)
    with pytest.raises(RegistryError, match=f"{name} has no earlier champion to roll back to"):
        registry.rollback(cfg, name, "nothing to go back to", uri)  # a user error: `cft rollback` exits 2
    registry.promote(cfg, name, versions[2], "hotfix approved by on-call", uri)
    assert alias("champion") == versions[2]
    assert registry.rollback(cfg, name, "hotfix regressed", uri) == versions[0]
    assert alias("champion") == versions[0]
    history = json.loads(client.get_registered_model(name).tags["champion_history"])
    assert [(h["version"], h["action"]) for h in history] == [
        (versions[0], "promote"), (versions[2], "promote"), (versions[0], "rollback")]
    assert history[1]["reason"] == "hotfix approved by on-call"
    with pytest.raises(InputError, match="reason"):
        registry.promote(cfg, name, versions[1], "  ", uri)
    # A reason a SQL registry could not keep (its tags hold 5,000 characters; SQLite takes more) is
    # refused before anything moves: on PostgreSQL it used to fail after the alias had moved, with
    # champion_history left without the change and the challenger alias left in place.
    too_long = "x" * (registry.REASON_MAX_CHARS + 1)
    for move in (lambda: registry.promote(cfg, name, versions[1], too_long, uri),
                 lambda: registry.rollback(cfg, name, too_long, uri)):
        with pytest.raises(InputError, match=f"reason is {registry.REASON_MAX_CHARS + 1:,} characters long"):
            move()
        assert alias("champion") == versions[0]
        assert json.loads(client.get_registered_model(name).tags["champion_history"]) == history
    # Rollbacks undo in order: v0, v1, v2, then two rollbacks walk back to v1 and v0, never
    # forth to the v2 just rolled back; then there is nothing left to undo.
    registry.promote(cfg, name, versions[1], "second release", uri)
    registry.promote(cfg, name, versions[1], "the same again: no change", uri)
    registry.promote(cfg, name, versions[2], "third release", uri)
    assert registry.rollback(cfg, name, "third regressed", uri) == versions[1]
    assert registry.rollback(cfg, name, "second regressed too", uri) == versions[0]
    assert alias("champion") == versions[0]
    with pytest.raises(RegistryError, match="no earlier champion"):
        registry.rollback(cfg, name, "nothing before v0", uri)


@pytest.mark.parametrize(("actions", "stack"), [
    ([("1", "gate"), ("2", "promote"), ("3", "gate")], ["1", "2", "3"]),
    ([("1", "gate"), ("2", "gate"), ("1", "rollback"), ("3", "promote")], ["1", "3"]),
    ([("1", "gate"), ("2", "gate"), ("2", "promote")], ["1", "2"]),           # the champion again: no change
    ([("1", "gate"), ("2", "gate"), ("1", "rollback"), ("1", "promote")], ["1"]),
    ([("2", "gate"), ("1", "rollback")], ["1"]),  # the history's start was cut (tag size): the target stays
])
def test_champion_stack(actions, stack):
    assert registry.champion_stack([{"version": v, "action": a} for v, a in actions]) == stack


def test_champion_history_stays_within_a_sql_tag_and_names_a_user_without_a_login(setup, monkeypatch):
    """Changes with the longest reasons allowed keep champion_history within HISTORY_MAX_CHARS (a SQL
    registry's tag holds 5,000), newest entries kept; a process whose uid has no passwd entry (a
    container run as an arbitrary uid) is named by its uid, where getpass raised KeyError."""
    import getpass

    from mlflow import MlflowClient

    cfg, uri, model_dir, seq = setup
    client = MlflowClient(uri, registry_uri=uri)
    name = cfg.registered_model_name()
    versions = [str(registered(cfg, uri, model_dir, seq, new_run(uri)).version) for _ in range(2)]

    def no_login():
        raise KeyError(f"getpwuid(): uid not found: {os.getuid()}")

    monkeypatch.setattr(getpass, "getuser", no_login)
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)  # (a registry account would name it instead)
    for i in range(8):
        registry.promote(cfg, name, versions[i % 2], f"{i}" + "r" * (registry.REASON_MAX_CHARS - 1), uri)
        text = client.get_registered_model(name).tags["champion_history"]
        assert len(text) <= registry.HISTORY_MAX_CHARS
    history = json.loads(text)
    assert 1 < len(history) < 8 and history[-1]["reason"].startswith("7")
    assert [h["reason"][0] for h in history] == [str(i) for i in range(8 - len(history), 8)]
    assert {h["by"] for h in history} == {f"uid {os.getuid()}"}


def test_promotions_are_serialised(setup):
    """While one promotion holds the model's lock, another waits for it."""
    cfg, uri, model_dir, seq = setup
    version = registered(cfg, uri, model_dir, seq, new_run(uri)).version
    done = threading.Event()
    lock = registry.promotion_lock(cfg, cfg.registered_model_name())
    with lock:
        worker = threading.Thread(target=lambda: (registry.promote(cfg, cfg.registered_model_name(), version,
                                                                   "release", uri), done.set()))
        worker.start()
        time.sleep(1.5)
        assert not done.is_set()
    worker.join(30)
    assert done.is_set()


@pytest.mark.parametrize("method", ["grounding", "constrained"])
def test_served_model_ranks_as_the_evaluation_measured(setup, method):
    """The registered pyfunc and `evaluate` share `cft_core.ranking`: for the same rows and
    settings they return the same ranked items (history kept, as the offline metrics keep it)."""
    import mlflow

    from tasks.evaluation import evaluate

    cfg, uri, model_dir, seq = setup
    metric = "constrained/NDCG@10" if method == "constrained" else "grounding_adjusted/NDCG@10"
    cfg = cfg.updated({"registry.gate_metric": metric, "eval.methods": [method], "eval.max_samples": 6,
                       "eval.history_reliance": False})
    version = registered(cfg, uri, model_dir, seq, new_run(uri)).version
    served = mlflow.pyfunc.load_model(f"models:/{cfg.registered_model_name()}/{version}")
    preds = pd.read_parquet(evaluate(cfg, model_dir, seq, progress=False).path / "predictions.parquet")
    column = "constrained_top10" if method == "constrained" else "grounding_adjusted_top10"
    source = source_ids(seq)  # the evaluation's rows are dense ids; the served model speaks the source's
    histories = [[source[i] for i in ids] for ids in preds["history_item_ids"]]
    out = served.predict(pd.DataFrame({"history": histories}), params={"k": 10, "exclude_history": False})
    assert [list(r) for r in out["item_ids"]] == [[source[i] for i in r] for r in preds[column]]
    assert all(len(r) > 0 for r in out["item_ids"])
    if method == "constrained":  # the beams' items (at most num_return_sequences), then popular ones, to k
        assert all(len(r) == 10 for r in out["item_ids"])
        beams = [sum(s is not None for s in scores) for scores in out["scores"]]
        assert all(1 <= n <= cfg.eval.num_return_sequences for n in beams)
        assert all(all(s is None for s in scores[n:]) for n, scores in zip(beams, out["scores"], strict=True))


@pytest.mark.parametrize("layout", ["training", "renamed-sharded"])
def test_a_version_whose_folder_is_gone_is_downloaded_once_from_the_configured_store(setup, monkeypatch, layout):
    """Warm start from a version whose training folder is not on this machine: its model comes
    from the registry the profile names (not MLflow's global default), into one folder, and a
    process that finishes the same download first wins without leaving temporary folders.
    Also for a model logged from a folder with another name, saved in shards (a large model)."""
    import filecmp
    import shutil

    import mlflow

    from tests.conftest import mlflow_uris_restored

    cfg, uri, tiny_dir, seq = setup
    if layout == "training":
        model_dir = shutil.copytree(tiny_dir, cfg.data.data_root / "training" / "run" / "model")  # as training lays it out
    else:
        from transformers import AutoModelForCausalLM

        model_dir = shutil.copytree(tiny_dir, cfg.data.data_root / "elsewhere" / "checkpoint-final")
        (model_dir / "model.safetensors").unlink()
        AutoModelForCausalLM.from_pretrained(tiny_dir).save_pretrained(model_dir, max_shard_size="200KB")
        assert len(list(model_dir.glob("model-*-of-*.safetensors"))) > 1
    cfg = cfg.updated({"tracking.enabled": True, "tracking.tracking_uri": uri})
    version = registered(cfg, uri, model_dir, seq, new_run(uri))  # no model_dir tag: nothing local
    with mlflow_uris_restored():
        elsewhere = f"sqlite:///{cfg.data.data_root / 'other.db'}"  # MLflow's defaults point to another store
        mlflow.set_tracking_uri(elsewhere)
        mlflow.set_registry_uri(elsewhere)
        got = registry.download_version_model(cfg, version)
    downloads = cfg.data.data_root / "registry" / "downloads"
    assert got == downloads / f"{version.name}-v{version.version}" / "artifacts" / model_dir.name
    weights = sorted(p.name for p in model_dir.glob("*.safetensors"))
    assert sorted(p.name for p in got.glob("*.safetensors")) == weights
    assert all(filecmp.cmp(got / w, model_dir / w, shallow=False) for w in weights)
    assert [p.name for p in downloads.iterdir()] == [f"{version.name}-v{version.version}"]

    # Another process moved its copy into place while this one downloaded: this one's copy is dropped.
    real = mlflow.artifacts.download_artifacts
    target = got.parents[1]
    winner = target.with_name("winner")
    target.rename(winner)

    def racing(*args, **kwargs):
        out = real(*args, **kwargs)
        winner.rename(target)
        return out

    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", racing)
    with mlflow_uris_restored():
        assert registry.download_version_model(cfg, version) == got
    assert sorted(p.name for p in got.glob("*.safetensors")) == weights
    assert [p.name for p in downloads.iterdir()] == [target.name]


def test_drop_challenger_removes_the_alias_only_from_the_versions_named(tmp_path):
    """After a promotion the challenger alias leaves the new champion; the gate also takes it from
    the champion it replaces (left there by an account allowed to move the champion but not to
    remove an alias: tests/cli/test_registry_users.py). Any other version keeps it."""
    from mlflow import MlflowClient

    from tasks.registry import champion

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    client.create_registered_model("cft-shop")
    for _ in range(3):
        client.create_model_version("cft-shop", source=str(tmp_path / "model"))
    client.set_registered_model_alias("cft-shop", "challenger", "2")
    assert champion.drop_challenger(client, "cft-shop", {"3"}) is None
    assert registry.alias_version(client, "cft-shop", "challenger") == "2"
    assert champion.drop_challenger(client, "cft-shop", {"3", "2"}) is None
    assert registry.alias_version(client, "cft-shop", "challenger") is None
    assert champion.drop_challenger(client, "cft-shop", {"2"}) is None  # (no alias: nothing to do)


@pytest.mark.parametrize(("status", "code", "none_there"), [
    (404, "RESOURCE_DOES_NOT_EXIST", True), (400, "INVALID_PARAMETER_VALUE", True),
    (500, "INTERNAL_ERROR", False), (503, "TEMPORARILY_UNAVAILABLE", False), (403, "PERMISSION_DENIED", False)])
def test_a_registry_read_that_failed_is_never_read_as_none_there(monkeypatch, status, code, none_there):
    """Only MLflow's "not there" (or "no such reference") answers read as no champion, no model, no
    run. A read that failed (a server's 500 or 503, a refusal) is raised: read as "no champion", it
    had the gate compare a challenger with the baselines alone (one worse than the champion could
    replace it), and `cft versions` said "no registered model". The server is a stand-in that
    answers every request with `status` and `code`, as MLflow's server words an error; MLflow's own
    client reads it, without its retries."""
    import json

    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from tasks.registry.retention import versions_summary
    from tasks.tracking import _active_run
    from tests.conftest import StandIn, serving

    fails = type("Fails", (StandIn,), {
        "status": status, "body": json.dumps({"error_code": code, "message": f"{code} from the stand-in"}).encode()})

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # (MLflow retries a 5xx for minutes)
    with serving(fails) as port:
        url = f"http://127.0.0.1:{port}"
        client = MlflowClient(url, registry_uri=url)
        reads = {"alias": lambda: registry.alias_version(client, "cft-shop", "champion"),
                 "versions": lambda: versions_summary(client, "cft-shop"),
                 "run": lambda: _active_run(client, "0123456789abcdef")}
        for what, read in reads.items():
            if none_there and what == "versions":
                with pytest.raises(RegistryError, match=r"^no registered model cft-shop in this store"):
                    read()
            elif none_there:
                assert read() is None, what
            else:  # (a 5xx as MLflow words a request it would have retried: "too many 500 error responses")
                with pytest.raises(MlflowException, match=code if status < 500 else f"too many {status} error"):
                    read()
