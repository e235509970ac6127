"""`cft versions`: the registered model's versions and its champion history, read from a real
MLflow SQLite store written as the pipeline writes it (tags, aliases, the history tag)."""

from __future__ import annotations

from datetime import UTC, datetime

from mlflow import MlflowClient
from typer.testing import CliRunner

from cft_cli.main import app
from tasks import registry
from tasks.registry import champion


def test_versions_lists_each_version_its_gate_and_aliases_then_the_champion_history(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    profile = tmp_path / "shop.yaml"
    profile.write_text(f"data: {{name: shop, data_root: {tmp_path / 'data'}}}\ntracking: {{tracking_uri: '{uri}'}}\n")
    client = MlflowClient(uri, registry_uri=uri)
    client.create_registered_model("cft-shop")
    gate = {"gate.metric": "constrained/NDCG@10", "gate.value": "0.0512", "gate.champion_version": "1",
            "gate.champion_value": "0.03125", "gate.decision": "promoted"}
    for kind, tags in (("popularity", {}), ("markov", {}), ("llm", gate)):
        client.create_model_version("cft-shop", source=str(tmp_path / "model"),
                                    tags={"cft.kind": kind, "data_fingerprint": "0123456789abcdef", **tags})
    registry.set_champion(client, "cft-shop", "1", "gate", "first champion")
    registry.set_champion(client, "cft-shop", "3", "promote", "release 3", by="alice", via="Prefect flow run red-fox")
    client.set_registered_model_alias("cft-shop", "staging", "3")
    when = {str(mv.version): datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC).strftime("%Y-%m-%d %H:%M")
            for mv in client.search_model_versions("name='cft-shop'")}
    history = champion._history(client, "cft-shop")

    shown = CliRunner().invoke(app, ["versions", "-c", str(profile)], prog_name="cft")
    assert shown.exit_code == 0, shown.output
    assert shown.output.splitlines() == [
        "cft-shop: 3 version(s), newest first",
        f"  v3  llm         {when['3']} UTC  data 0123456789abcdef  [champion, staging]  promoted: constrained/NDCG@10 "
        "0.0512 (champion v1 0.0312)",
        f"  v2  markov      {when['2']} UTC  data 0123456789abcdef",
        f"  v1  popularity  {when['1']} UTC  data 0123456789abcdef",
        "champion history, newest first:",
        f"  {history[1]['at']}  v3  promote by alice via Prefect flow run red-fox: release 3",
        f"  {history[0]['at']}  v1  gate by {history[0]['by']}: first champion"], shown.output
    one = CliRunner().invoke(app, ["versions", "-c", str(profile), "--history", "1"], prog_name="cft").output
    assert one.splitlines()[-2:] == ["champion history, newest first:", f"  {history[1]['at']}  v3  promote by "
                                                                         "alice via Prefect flow run red-fox: release 3"]
    unknown = CliRunner().invoke(app, ["versions", "-c", str(profile), "--model-name", "nope"], prog_name="cft")
    assert unknown.exit_code == 2 and unknown.output.startswith("error: no registered model nope in this store ("), \
        unknown.output


def test_a_training_registered_again_with_other_ranking_settings_is_named_so(tmp_path):
    """Two versions of one run (the second after eval settings changed: tasks.registry.served_ranking_key):
    the later line names the first version's training; the first and a version of another run do not."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    profile = tmp_path / "shop.yaml"
    profile.write_text(f"data: {{name: shop, data_root: {tmp_path / 'data'}}}\ntracking: {{tracking_uri: '{uri}'}}\n")
    client = MlflowClient(uri, registry_uri=uri)
    client.create_registered_model("cft-shop")
    experiment = client.create_experiment("shop", artifact_location=str(tmp_path / "artifacts"))
    first, other = client.create_run(experiment).info.run_id, client.create_run(experiment).info.run_id
    for run_id in (first, other, first):
        client.create_model_version("cft-shop", source=str(tmp_path / "model"), run_id=run_id, tags={"cft.kind": "llm"})
    lines = CliRunner().invoke(app, ["versions", "-c", str(profile)], prog_name="cft").output.splitlines()
    assert lines[1].startswith("  v3") and lines[1].endswith("(v1's training, ranked otherwise)")
    assert not any(line.endswith("ranked otherwise)") for line in lines[2:])
