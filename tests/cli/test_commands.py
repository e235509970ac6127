"""Every `cft` command invoked as a user types it (typer's CliRunner, in-process), in the order
a user meets them: train -> evaluate -> run (flow, register, gate) -> recommend -> a second run
-> promote -> rollback; plus --version, -h and `stack status`. The tiny model keeps it fast."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from cft_cli.main import app
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def profile(tmp_path_factory) -> Path:
    """A profile that extends the smoke profile: tiny model, a few steps, a few rows."""
    root = tmp_path_factory.mktemp("cli")
    path = root / "cli.yaml"
    path.write_text(f"""
extends: {ROOT / "configs/smoke.yaml"}
data: {{name: cli-test, data_root: {root / "data"}, max_samples: {{train: 64, valid: 16, test: 8}}}}
model: {{tiny: {{hidden_size: 32, num_layers: 1, num_heads: 2, vocab_size: 600}}}}
train: {{max_steps: 2, eval_steps: 2, micro_batch_size: 8, effective_batch_size: 16, early_stopping_patience: 0}}
eval: {{max_samples: 8, num_beams: 2, num_return_sequences: 2, max_new_tokens: 8, min_new_tokens: 1,
       history_reliance: false}}
registry: {{gate_max_samples: 8}}
tracking: {{tracking_uri: "sqlite:///{root / "mlflow.db"}", log_model_folder: false}}
""")
    return path


def cft(*args: str, code: int = 0) -> str:
    res = CliRunner().invoke(app, list(args), prog_name="cft")
    assert res.exit_code == code, res.output + repr(res.exception)
    return res.output


def test_version_and_help():
    assert re.fullmatch(r"cft \d+\.\d+\.\d+\n", cft("--version"))
    assert "Usage: cft" in cft("-h") and "recommend" in cft("--help")
    text = cft("recommend", "-h")
    assert "--include-history / --no-include-history" in text and "<bool>" not in text


def test_train_then_evaluate_reuses_the_training(profile):
    out = cft("train", "-c", str(profile))
    assert "training" in out and "cft" in out
    # The run as `cft run` names it: the id whole, and how to open its page.
    assert re.search(r"^MLflow run: run \w+ in sqlite:///\S+; to see it: mlflow ui .*/#/experiments/\w+/runs/\w+$", out,
                     flags=re.M), out
    trainings = list((profile.parent / "data" / "training").iterdir())
    assert len(trainings) == 1 and (trainings[0] / "model" / "model.safetensors").is_file()
    out = cft("evaluate", "-c", str(profile))
    assert "grounding_adjusted" in out and "most_popular" in out and "NDCG@10" in out
    took = re.search(r"^evaluation took [0-9.]+ s \((.*)\)$", out, flags=re.M)  # the parts: "constrained 0.1 s, ..."
    assert took and re.findall(r"(\w+) [0-9.]+ s", took[1]) == ["constrained", "grounding", "diagnostics"]
    assert list((profile.parent / "data" / "training").iterdir()) == trainings  # reused, not retrained


def test_run_registers_a_champion_and_prints_a_recommend_hint_from_the_dataset(profile, prefect_harness):
    out = cft("run", "-c", str(profile))
    # v1, v2: the popularity (the first champion) and Markov-chain baselines; v3: the model, gated.
    assert "cft-cli-test v3" in out and "popularity baseline" in out and "Markov-chain baseline" in out
    assert "**Gate**" in out
    assert "Downloading artifacts" not in out  # MLflow's bar per model logged or loaded (shown with --verbose)
    # One line says how to see the training's run: the UI on its store, and the run's page there.
    link = re.search(r"^MLflow run: run (\w+) in (\S+); to see it: mlflow ui --backend-store-uri (\S+) --host 127.0.0.1, "
                     r"then http://127.0.0.1:5000/#/experiments/(\w+)/runs/(\w+)$", out, flags=re.M)
    assert link and link[2] == link[3] and link[5] == link[1] and out.count("mlflow ui") == 1, out
    from mlflow import MlflowClient

    assert MlflowClient(link[2]).get_run(link[1]).info.experiment_id == link[4]
    # One line, longer than 80 columns, to copy and paste whole: the profile, the alias, the titles.
    hint = next(line for line in out.splitlines() if line.startswith("Recommend:"))
    args = shlex.split(hint.removeprefix("Recommend:"))
    assert args[:6] == ["cft", "recommend", "-c", str(profile), "--model", "models:/cft-cli-test@champion"]
    titles = args[6:]
    catalogue = next((profile.parent / "data" / "sequences").iterdir()) / "catalogue.parquet"
    assert titles and set(titles) <= set(pd.read_parquet(catalogue)["title"])


def test_the_recommend_hint_survives_the_shell_and_keeps_the_run_overrides():
    from cft_cli.main import recommend_hint

    titles = ['Widget "39", size 4', "It's $HOME `now`!", "Amélie (2001)"]
    overrides = ["data.data_root=/srv/my data", "data.unknown_items=drop"]
    hint = recommend_hint(Path("my profile.yaml"), overrides, "cft-shop", titles)
    assert shlex.split(hint) == ["cft", "recommend", "-c", "my profile.yaml", "--set", overrides[0], "--set",
                                 overrides[1], "--model", "models:/cft-shop@champion", *titles]


def test_recommend_from_the_champion(profile):
    catalogue = next((profile.parent / "data" / "sequences").iterdir()) / "catalogue.parquet"
    title = pd.read_parquet(catalogue)["title"][0]
    out = cft("recommend", "-c", str(profile), "--model", "models:/cft-cli-test/1", "-k", "3", title)
    assert "models:/cft-cli-test/1: top 3" in out  # the popularity baseline: any k
    assert re.findall(r"^│ ([0-9]+) ", out, flags=re.M) == ["1", "2", "3"]  # the rank column
    top = re.findall(r"^│ [0-9]+ +│ (\S+) ", out, flags=re.M)  # the item id column
    fewer = cft("recommend", "-c", str(profile), "--model", "models:/cft-cli-test/1", "-k", "2", title,
                "--exclude", top[0], "--exclude", "an item it does not know")
    assert re.findall(r"^│ [0-9]+ +│ (\S+) ", fewer, flags=re.M) == top[1:]  # the popularity order, less the first
    out = cft("recommend", "-c", str(profile), "-k", "2", title)  # the champion, whichever it is
    assert "models:/cft-cli-test@champion: top" in out and re.findall(r"^│ ([0-9]+) ", out, flags=re.M)
    asked = cft("recommend", "-c", str(profile), "--model", "models:/cft-cli-test/3", "-k", "5", title)
    assert re.findall(r"^│ ([0-9]+) ", asked, flags=re.M) == ["1", "2", "3", "4", "5"]  # 2 beams, then backfill
    filled = len(re.findall(r"│ popular +│$", asked, flags=re.M))
    assert filled >= 3 and f"note: the last {filled}, marked popular, are the most frequent training items" in asked
    # Every item asked: the history's and the placeholder titles (ML-100K's "unknown", never recommended) are left out.
    from cft_core.sequences import PLACEHOLDER_TITLE

    titles = pd.read_parquet(catalogue)["title"]
    size, never = len(titles), sum(bool(PLACEHOLDER_TITLE.match(t.strip())) for t in titles)
    assert never >= 1
    everything = cft("recommend", "-c", str(profile), "--model", "models:/cft-cli-test/3", "-k", str(size), title)
    assert (f"note: {size - 1 - never} of the {size} items asked: the catalogue has no more items this history may "
            "get") in everything
    typo = title[:-1] + "x" if len(title) > 4 else title + " 2"  # not in the catalogue, close to a title
    out = cft("recommend", "-c", str(profile), "--model", "models:/cft-cli-test/3", "-k", "2", title, typo)
    assert f"not in the catalogue: '{typo}', left out (--free-text to use it as typed); close: '{title}'" in out
    out = cft("recommend", "-c", str(profile), "--model", "models:/cft-cli-test/3", "-k", "2", typo)
    assert "the no-history ranking, as for a new user" in out and re.findall(r"^│ ([0-9]+) ", out, flags=re.M)
    new_user = cft("recommend", "-c", str(profile), "--model", "models:/cft-cli-test/3", "-k", "2")
    assert "no history: the no-history ranking" in new_user
    assert new_user.split("top", 1)[1] == out.split("top", 1)[1]  # the same table as for the unknown title


def test_recommend_all_writes_every_users_top_k(profile, tmp_path):
    """The batch job: a row per user of the data, ranked as the served model ranks that history."""
    import json

    import mlflow
    import pyarrow.parquet as pq

    target = tmp_path / "recs.parquet"
    out = cft("recommend-all", "-c", str(profile), "--model", "models:/cft-cli-test/1", "-k", "3", "--out", str(target))
    interactions = ingested_interactions(profile)  # the profile sets no window: every user of the data
    users = set(interactions["user_id"])
    assert f"{len(users)} users: top 3 from models:/cft-cli-test/1 (version 1) -> {target}" in out
    table = pq.read_table(target)
    written = json.loads(table.schema.metadata[b"cft"])
    assert written["version"] == "1" and written["excluded_seen"]
    recs = table.to_pandas()
    assert set(recs["user_id"]) == users and recs["item_ids"].map(len).eq(3).all()
    seen = {user: set(items) for user, items in interactions.groupby("user_id")["item_id"]}
    assert all(not set(row.item_ids) & seen[row.user_id] for row in recs.itertuples())  # nothing they already have
    served = mlflow.pyfunc.load_model("models:/cft-cli-test/1")
    known = set(served.unwrap_python_model().catalogue.row_of_id)
    for row in recs.sample(5, random_state=0).itertuples():
        alone = served.predict(pd.DataFrame({"history": [list(row.history_item_ids)],
                                             "exclude": [sorted(seen[row.user_id])]}), params={"k": 3})
        assert list(row.item_ids) == list(alone["item_ids"][0])
        # The user's own newest data.max_history items, which the profile's sampled test split
        # (8 rows) does not hold for most users; those the model knows.
        assert list(row.history_item_ids) == [i for i in newest_items(interactions, row.user_id, 10) if i in known]


def ingested_interactions(profile: Path) -> pd.DataFrame:
    (ingested,) = (profile.parent / "data" / "ingested").iterdir()
    return pd.read_parquet(ingested / "interactions.parquet")


def newest_items(interactions: pd.DataFrame, user: str, n: int) -> list[str]:
    """A user's newest n items, oldest first (ties in time by item id), from the ingested rows."""
    mine = interactions[interactions["user_id"] == user].sort_values(["timestamp", "item_id"])
    return mine["item_id"].tolist()[-n:]


def test_serve_answers_over_http(profile):
    """`cft serve` as a user starts it: a real process on a free port, asked over HTTP."""
    import json
    import os
    import subprocess
    import sys
    import time
    import urllib.error
    import urllib.request

    port = free_port()
    catalogue = next((profile.parent / "data" / "sequences").iterdir()) / "catalogue.parquet"
    title = pd.read_parquet(catalogue)["title"][0]
    server = subprocess.Popen([sys.executable, "-m", "cft_cli", "serve", "-c", str(profile), "--model",
                               "models:/cft-cli-test/3", "--port", str(port), "--max-queue", "4"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=os.environ.copy())
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                health = json.load(urllib.request.urlopen(f"{url}/health", timeout=5))
                break
            except (urllib.error.URLError, ConnectionError):
                assert server.poll() is None, server.stdout.read().decode()
                time.sleep(0.5)
        assert health["status"] == "ok" and health["model"] == "models:/cft-cli-test/3"

        def post(body: dict):
            request = urllib.request.Request(f"{url}/recommend", data=json.dumps(body).encode(),
                                             headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=60) as r:
                    return r.status, json.load(r)
            except urllib.error.HTTPError as e:
                return e.code, json.load(e)

        status, body = post({"history": [title], "k": 2})
        assert status == 200 and 1 <= len(body["item_ids"]) <= 2 and body["unmatched"] == []
        status, body = post({"history": ["123456789"], "k": 0})
        assert status == 400 and body["message"].startswith("k must be between 1 and the catalogue size")
    finally:
        server.terminate()
        server.wait(30)
    log = server.stdout.read().decode()
    assert "INFO ready: models:/cft-cli-test/3 (constrained)" in log and "following" not in log  # a fixed version


def test_promote_and_rollback(profile, prefect_harness, monkeypatch):
    import contextlib

    from cft_cli import deploy

    assert "nothing new" in cft("run", "-c", str(profile))  # same data, same settings: not retrained
    cft("run", "-c", str(profile), "--set", "train.seed=1")  # new settings: version 4 (the gate decides its alias)
    held = []  # each move of the champion holds the Prefect server's promotion slot (tests/e2e/test_stack.py)
    monkeypatch.setattr(deploy, "promotion_slot", lambda: contextlib.nullcontext(held.append(1)))
    assert "champion -> version 3" in cft("promote", "-c", str(profile), "--version", "3", "--reason", "approved")
    assert "champion -> version 4" in cft("promote", "-c", str(profile), "--version", "4", "--reason", "try v4")
    assert "champion -> version 3" in cft("rollback", "-c", str(profile), "--reason", "regressed")
    assert len(held) == 3


def test_compare_registered_versions(profile, tmp_path):
    """Versions as users name them in the registry: the champion (v3 after the rollback) vs v4."""
    out = cft("compare", "models:/cft-cli-test@champion", "models:/cft-cli-test/4", "-c", str(profile),
              "--out-dir", str(tmp_path))
    from mlflow import MlflowClient

    assert "A = models:/cft-cli-test@champion; B = models:/cft-cli-test/4." in out
    table = pd.read_json(tmp_path / "compare-1.json").set_index("quantity")
    uri = f"sqlite:///{profile.parent / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    for side, version in (("A", "3"), ("B", "4")):  # each side is its version's run, on the same 8 rows
        run = client.get_run(client.get_model_version("cft-cli-test", version).run_id)
        assert table.loc["constrained/NDCG@10", side] == pytest.approx(run.data.metrics["test/constrained/NDCG_at_10"])
    assert table.loc["constrained/NDCG@10", "rows"] == 8
    out = cft("compare", "models:/cft-cli-test/1", "models:/cft-cli-test/4", "-c", str(profile), code=2)
    assert "models:/cft-cli-test/1 is version 1, a popularity baseline" in out
    out = cft("compare", "models:/cft-cli-test/2", "models:/cft-cli-test/4", "-c", str(profile), code=2)
    assert "models:/cft-cli-test/2 is version 2, a markov baseline" in out
    out = cft("compare", "models:/cft-cli-test/9", "models:/cft-cli-test/4", "-c", str(profile), code=2)
    assert "models:/cft-cli-test/9 is not in the registry" in out


def test_stack_status_says_not_running(tmp_path):
    assert "not running" in cft("stack", "status", "--data-root", str(tmp_path), code=3)


def test_gc_removes_what_no_alias_and_no_run_in_progress_uses(profile):
    """After the registry tests: v3 is champion (the rollback), v4 holds no alias, v1 and v2 are
    the baselines (no training folder). gc keeps the champion's training, and what finished
    less than a day ago (a pipeline run registers and gates it after its evaluation); once old,
    an unregistered training goes, and so does v4's (the registry keeps its model: evaluating v4
    downloads it)."""
    import os
    import time

    from mlflow import MlflowClient

    uri = f"sqlite:///{profile.parent / 'mlflow.db'}"
    registry = MlflowClient(uri, registry_uri=uri)
    champion, v4 = (Path(registry.get_model_version("cft-cli-test", v).tags["model_dir"]).parent for v in ("3", "4"))
    root = profile.parent / "data" / "training"
    trained = set(root.iterdir())
    cft("train", "-c", str(profile), "--set", "train.seed=7")  # trained, never registered
    (unregistered,) = set(root.iterdir()) - trained
    out = cft("gc", "-c", str(profile), "--dry-run")
    lines = out.splitlines()  # each folder on one line with its full path, however long
    assert f"kept {unregistered}: finished less than a day ago (a pipeline run registers it after its evaluation)" in lines
    assert f"kept {v4}: a registered version's model, finished less than a day ago (its gate may be running)" in lines
    two_days_ago = time.time() - 2 * 24 * 3600
    for folder in (unregistered, v4, champion):
        os.utime(folder / "model" / "training.json", (two_days_ago, two_days_ago))
    elsewhere = profile.parent / "elsewhere.db"  # tracked in another store: this one cannot judge it
    cft("train", "-c", str(profile), "--set", "train.seed=8", "--set", f"tracking.tracking_uri=sqlite:///{elsewhere}")
    before = sorted(root.iterdir())
    out = cft("gc", "-c", str(profile), "--dry-run")
    lines = out.splitlines()
    assert any(re.fullmatch(rf"would remove {re.escape(str(unregistered))} \([0-9]+ MiB\)", line) for line in lines)
    assert any(re.fullmatch(rf"would remove {re.escape(str(v4))} \([0-9]+ MiB\): cft-cli-test v4 without an alias "
                            r"\(the registry keeps its model\)", line) for line in lines)
    assert f"kept {champion}: the model of cft-cli-test v3 (champion)" in lines
    assert out.count(f": its MLflow run is not in {uri}") == 1
    # v1 was champion when v3 and v4 were gated (one cache of its ranks: same rows); v3 is now (rollback)
    caches = root.parent / "registry" / "gate"
    assert sorted(p.name.rsplit("-", 1)[0] for p in caches.iterdir()) == ["cft-cli-test-v1"]
    assert f"would remove {next(caches.iterdir())} (0 MiB): a registry cache of a version that is not champion" in lines
    assert re.match(r"would remove 1 training folder\(s\) \([0-9]+ MiB\), 0 unfinished training\(s\) \(0 MiB\), 1 of versions without an alias", lines[-1])
    assert "1 registry cache(s)" in lines[-1]
    assert sorted(root.iterdir()) == before  # a dry run removes nothing
    out = cft("gc", "-c", str(profile))
    assert re.match(r"removed 1 training folder\(s\) \([0-9]+ MiB\), 0 unfinished training\(s\) \(0 MiB\), 1 of versions without an alias", out.splitlines()[-1])
    assert sorted(root.iterdir()) == sorted(set(before) - {unregistered, v4}) and not any(caches.iterdir())
    assert "nothing new" in cft("run", "-c", str(profile))  # the registered versions say what was gated
    # v4's model comes back from the registry, once, when asked for.
    assert "test metrics" in cft("evaluate", "-c", str(profile), "--model", "models:/cft-cli-test/4")
    assert (root.parent / "registry" / "downloads" / "cft-cli-test-v4" / "MLmodel").is_file()


def test_train_starts_from_the_champion_as_run_does(profile):
    """`model.source: champion`: `cft train` warm-starts from the champion (v3 after the rollback),
    as `cft run` and the scheduled retraining do."""
    out = cft("train", "-c", str(profile), "--set", "model.source=champion")
    assert "training: cft from cft-cli-test v3, 2 steps" in out, out
    model = re.search(r"^model: (.+)$", out, flags=re.M)[1]  # whole, however long
    assert (Path(model) / "model.safetensors").is_file()
    out = cft("train", "-c", str(profile), "--set", "train.seed=7")
    assert "training: cft from the base model, 2 steps" in out, out  # gc removed it: trained again


def test_run_with_tracking_off_names_no_store(profile):
    """Tracking off: no command to open the MLflow UI on the store (it named one that this run did
    not write to, and created its folder on a fresh data root), and nothing registered to recommend."""
    out = cft("run", "-c", str(profile), "--set", "tracking.enabled=false")
    assert "### cli-test: cft, test split" in out, out
    assert "MLflow run: (tracking disabled)" in out and "mlflow ui" not in out, out
    assert not any(line.startswith("Recommend:") for line in out.splitlines()), out


def test_replay_writes_the_timeline_report_and_an_mlflow_run(profile, tmp_path):
    import json

    from mlflow import MlflowClient

    timeline, report = tmp_path / "timeline.json", tmp_path / "docs" / "replay.md"
    out = cft("replay", "-c", str(profile), "--periods", "2", "--every", "30d", "--out", str(timeline),
              "--report", str(report), "--set", "model.source=champion")
    assert "period 1/2" in out and "period 2/2" in out
    periods = json.loads(timeline.read_text())["periods"]
    assert len(periods) == 2 and periods[0]["interactions"] < periods[1]["interactions"]
    assert all(p["decision"] in ("promoted", "kept challenger") for p in periods)
    text = report.read_text()
    assert text.count("\n| 1998-") == 2 and "![timeline](../timeline.png)" in text
    assert (tmp_path / "timeline.png").stat().st_size > 0
    run_id = re.search(r"^MLflow run: run (\w+) in sqlite:///\S+; to see it: mlflow ui .*/runs/\1$", out, flags=re.M).group(1)
    uri = f"sqlite:///{profile.parent / 'mlflow.db'}"
    history = MlflowClient(uri).get_metric_history(run_id, "replay/challenger")
    assert [m.step for m in history] == [0, 1]
    # Started again: both periods are already there; nothing runs.
    again = cft("replay", "-c", str(profile), "--periods", "2", "--every", "30d", "--out", str(timeline),
                "--set", "model.source=champion")
    assert again.count("already in") == 2


def test_recommend_all_leaves_out_items_an_older_model_does_not_know(profile, tmp_path):
    """The replay's first period registered a popularity baseline of an earlier data window: the
    items that came later are not in its catalogue, so they are left out of the histories (and
    counted), and a user left with nothing is ranked as a new user."""
    import mlflow
    from mlflow import MlflowClient

    from tasks.batch import latest_histories
    from tests.conftest import mlflow_uris_restored

    uri = f"sqlite:///{profile.parent / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    baselines = [v.version for v in client.search_model_versions("name='cft-cli-test'") if v.tags.get("cft.kind") == "popularity"]
    with mlflow_uris_restored(uri):  # (a version's model resolves through the tracking store)
        catalogues = {v: set(mlflow.pyfunc.load_model(f"models:/cft-cli-test/{v}").unwrap_python_model().catalogue.row_of_id)
                      for v in baselines}
    older, known = min(catalogues.items(), key=lambda kv: len(kv[1]))
    interactions = ingested_interactions(profile)  # the profile's window: no as_of, the whole data
    histories = latest_histories(next((profile.parent / "data" / "ingested").iterdir()) / "interactions.parquet",
                                 (None, None), 10)["history_item_ids"]
    unknown = sum(i not in known for h in histories for i in h)
    new_users = sum(not any(i in known for i in h) for h in histories)
    assert unknown > 0, "the replay's first window should lack some of the later items"

    target = tmp_path / "recs.parquet"
    out = cft("recommend-all", "-c", str(profile), "--model", f"models:/cft-cli-test/{older}", "-k", "2", "--out", str(target))
    assert f"left out: {unknown} history item(s) the model's catalogue lacks" in out
    assert f"{new_users} user(s) with none it knows, ranked as new users" in out
    recs = pd.read_parquet(target)
    assert len(recs) == len(histories) and recs["history_item_ids"].map(len).eq(0).sum() == new_users
    assert all(set(h) <= known for h in recs["history_item_ids"])
    # The history the older model ranked is the user's own newest items, those it knows: the
    # source's ids (the two windows number their items differently; only those mean the same item).
    for row in recs.sample(20, random_state=0).itertuples():
        assert list(row.history_item_ids) == [i for i in newest_items(interactions, row.user_id, 10) if i in known]


def test_versions_of_different_windows_are_compared_on_one_window(profile, tmp_path):
    """After the replay, LLM versions were trained and evaluated on different data windows:
    `cft compare` refuses to pair their rows; `cft evaluate --model` evaluates each version on the
    profile's window, and those two folders compare on the same rows."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{profile.parent / 'mlflow.db'}"
    versions = MlflowClient(uri, registry_uri=uri).search_model_versions("name='cft-cli-test'")
    by_window = {v.tags["data_fingerprint"]: v.version for v in sorted(versions, key=lambda v: int(v.version))
                 if v.tags.get("cft.kind") == "llm"}
    assert len(by_window) >= 2, "the replay should have registered versions of other windows"
    first, last = (f"models:/cft-cli-test/{v}" for v in list(by_window.values())[:: len(by_window) - 1])
    out = cft("compare", first, last, "-c", str(profile), "--out-dir", str(tmp_path / "refused"), code=2)
    assert "the runs evaluated different data windows" in out and "cft evaluate" in out
    assert not (tmp_path / "refused").exists()

    folders = []
    for version in (first, last):
        out = cft("evaluate", "-c", str(profile), "--model", version)
        folders.append(re.search(r"test metrics: (\S+)", out).group(1))
    assert folders[0] != folders[1]
    out = cft("compare", *folders, "-c", str(profile), "--out-dir", str(tmp_path / "one-window"))
    table = pd.read_json(tmp_path / "one-window" / "compare-1.json").set_index("quantity")
    assert table.loc["constrained/NDCG@10", "rows"] == 8  # the profile's 8 test rows, in both
    out = cft("evaluate", "-c", str(profile), "--model", "models:/cft-cli-test/1", code=2)
    assert "a popularity baseline" in out


def test_titles_print_as_they_are_not_as_rich_markup():
    from rich.table import Table

    from cft_cli.main import console, labelled

    titles = ["Movie [remastered] (1999)", "Sale [b]50%[/b]", "Odd [/] title"]  # a tag, a style, a lone closing tag
    table = Table()
    table.add_column("title")
    for title in titles:
        table.add_row(title)
    with console.capture() as captured:
        console.print(table)
        console.print(labelled("not in the catalogue:", repr(titles[2])), highlight=False)
    out = captured.get()
    assert all(title in out for title in titles)
    assert "not in the catalogue: 'Odd [/] title'" in out


def test_the_promotion_slot_says_when_a_gate_keeps_it_and_passes_the_promotions_own_errors(prefect_harness):
    """`cft promote` waits for the server's cft-promotion slot; one a gate keeps past the wait is an
    error saying so (exit 2), and a TimeoutError of the promotion itself, raised while the slot is
    held, stays that error (it used to be reported as the slot staying taken)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.concurrency.sync import concurrency

    from cft_cli.deploy import promotion_slot
    from schemas.errors import InputError

    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name="tag:cft-promotion", limit=1))
    try:
        gate_holds_it = concurrency("tag:cft-promotion")
        with gate_holds_it, pytest.raises(InputError, match="stayed taken for 1 s"), promotion_slot(timeout_s=1):
            pass
        with pytest.raises(TimeoutError, match="the registry did not answer"), promotion_slot():
            raise TimeoutError("the registry did not answer")
    finally:
        with get_client(sync_client=True) as client:
            client.delete_global_concurrency_limit_by_name("tag:cft-promotion")
