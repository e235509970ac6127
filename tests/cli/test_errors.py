"""One error style: a user's mistake prints `error: ...` naming the file, field or value, exits 2,
and leaves nothing behind; `--debug` shows the traceback instead."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cft_cli.main import app
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str):
    return CliRunner().invoke(app, list(args), prog_name="cft")


def profile(tmp_path, text: str) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(f"extends: {ROOT / 'configs/smoke.yaml'}\ndata: {{data_root: {tmp_path / 'data'}}}\n" + text)
    return path


@pytest.mark.parametrize(("extra", "overrides", "message"), [
    ("train: {alpah: 0.2}\n", [], r"train.alpah: Extra inputs are not permitted"),
    ("train: {alpha: lots}\n", [], r"train.alpha: Input should be a valid number.*\(got 'lots'\)"),
    ("", ["data.max_samples={train: -5}"], r"data: max_samples caps must be at least 1, got \{'train': -5\}"),
    ("", ["data.split_ratios=[1, 0, 0]"], r"split_ratios must leave every split non-empty"),
    ("", ["train.beta"], r"override 'train.beta' is not of the form section.field=value"),
    ("", ["data.source.format=grouplens"], r"source.path is required for source.format='grouplens'"),
    ("data: [1, 2\n", [], r"is not valid YAML"),
    ("eval: {ks: [0, 10]}\n", [], r"eval.ks.0: Input should be greater than or equal to 1 \(got 0\)"),
    ("", ["eval.ks=[]"], r"eval.ks: List should have at least 1 item"),
    ("", ["registry.gate_metric=constrained/NDCG@0"], r"registry.gate_metric: String should match pattern"),
])
def test_config_mistakes(tmp_path, extra, overrides, message):
    args = ["data", "prepare", "-c", str(profile(tmp_path, extra))]
    for item in overrides:
        args += ["--set", item]
    res = run(*args)
    assert res.exit_code == 2, res.output
    assert res.output.startswith("error: ") and re.search(message, res.output, flags=re.S), res.output
    assert "Traceback" not in res.output and len(res.output.splitlines()) <= 6
    assert not (tmp_path / "data").exists()  # nothing written


def test_a_missing_profile_and_a_data_root_that_is_a_file(tmp_path):
    res = run("train", "-c", str(tmp_path / "nope.yaml"))
    assert res.exit_code == 2 and f"error: config file {tmp_path / 'nope.yaml'} not found" in res.output
    (tmp_path / "file").write_text("x")
    res = run("data", "prepare", "-c", str(ROOT / "configs/smoke.yaml"), "--set", f"data.data_root={tmp_path / 'file'}")
    assert res.exit_code == 2 and "data_root" in res.output and "is a file, not a folder" in res.output


def test_a_folder_that_holds_no_model(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    p = profile(tmp_path, "")
    res = run("evaluate", "-c", str(p), "--model-dir", str(empty))
    assert res.exit_code == 2, res.output
    assert f"error: {empty} is not a model folder: it holds no *.safetensors weights" in res.output
    res = run("train", "-c", str(p), "--set", f"model.source={empty}")
    assert res.exit_code == 2, res.output
    assert f"error: model source '{empty}' is neither 'smollm2', 'tiny' nor a Hugging Face model folder" in res.output
    assert not list((tmp_path / "data").glob("training/*/model"))  # no model written

    from transformers import BertConfig, BertModel  # a model, but not a causal LM

    from cft_core.tiny import build_tiny_tokenizer

    bert = tmp_path / "bert"
    BertModel(BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(bert)
    build_tiny_tokenizer(["a b c d", "hello world"], vocab_size=64).save_pretrained(bert)
    res = run("train", "-c", str(p), "--set", f"model.source={bert}")
    assert res.exit_code == 2, res.output
    assert f"error: {bert} is not a causal-LM checkpoint for BertLMHeadModel: its weights lack" in res.output
    assert not list((tmp_path / "data").glob("training/*"))  # no training folder begun

    from cft_core.tiny import save_tiny_model_folder

    mixed = save_tiny_model_folder(tmp_path / "mixed", ["a b c d"], vocab_size=64)
    build_tiny_tokenizer([" ".join(f"w{i}x{j}" for i in range(40) for j in range(40))],
                         vocab_size=500).save_pretrained(mixed)  # another model's tokenizer
    res = run("evaluate", "-c", str(p), "--model-dir", str(mixed))
    assert res.exit_code == 2, res.output
    assert re.search(f"error: {mixed}: the tokenizer has \\d+ tokens but the model embeds \\d+", res.output), res.output


@pytest.mark.parametrize(("deepspeed", "message"), [
    ("nope.json", r"train.deepspeed: DeepSpeed config nope.json not found \(looked at .*nope.json\)"),
    ("README.md", r"train.deepspeed: .*README.md is not valid JSON: Expecting value at line 1, column 1"),
    ("configs", r"train.deepspeed: cannot read the DeepSpeed config .*configs \(.*Is a directory"),
])
def test_a_deepspeed_config_that_cannot_be_read(tmp_path, deepspeed, message):
    import re

    res = run("train", "-c", str(profile(tmp_path, "")), "--set", f"train.deepspeed={deepspeed}")
    assert res.exit_code == 2 and re.search(message, res.output), res.output  # was a traceback
    assert not (tmp_path / "data" / "training").exists()  # nothing trained


def test_gc_without_a_store_or_with_tracking_off_removes_nothing(tmp_path):
    model = tmp_path / "data" / "training" / "run" / "model"
    model.mkdir(parents=True)
    (model / "training.json").write_text("{}")  # a finished training
    p = profile(tmp_path, "")
    res = run("gc", "-c", str(p))
    assert res.exit_code == 2 and "error: there is no tracking store at" in res.output, res.output
    assert "cannot tell which trainings are registered" in res.output
    res = run("gc", "-c", str(p), "--set", "tracking.enabled=false")
    assert res.exit_code == 2 and "tracking is disabled in this profile" in res.output, res.output
    assert (model / "training.json").is_file() and not (tmp_path / "data" / "mlflow").exists()


@pytest.mark.parametrize(("option", "message"), [
    (["--periods", "0"], "error: periods (--periods) must be at least 1, got 0"),
    (["--every", "abc"], "error: every (--every) must look like 30d, 2w or 12h, got 'abc'"),
    (["--every", "0d"], "error: every (--every) must look like 30d, 2w or 12h, got '0d'"),
])
def test_replay_options_out_of_range(tmp_path, option, message):
    res = run("replay", "-c", str(profile(tmp_path, "")), *option)
    assert res.exit_code == 2 and message in res.output, res.output
    assert not (tmp_path / "data" / "training").exists()  # nothing trained


def test_a_taken_port_is_named_before_anything_starts(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        res = run("serve", "-c", str(profile(tmp_path, "")), "--port", str(port))
        assert res.exit_code == 2 and f"error: port {port} is taken by another program: choose --port" in res.output
        res = run("stack", "up", "--data-root", str(tmp_path / "data"), "--prefect-port", str(port))
        assert res.exit_code == 2 and f"error: port {port} is taken by another program: choose --prefect-port" in res.output
    assert not (tmp_path / "data" / "stack" / "pids.json").exists()  # nothing started


@pytest.mark.parametrize(("args", "message"), [
    (["serve", "--port", "99999"], "Invalid value for '--port': Input should be less than or equal to 65535"),
    (["stack", "up", "--mlflow-port", "0"], "Invalid value for '--mlflow-port': Input should be greater than or equal to 1"),
    (["serve", "--host", "no-such-host.invalid"], "error: host 'no-such-host.invalid' is not an address"),
    # TEST-NET-1 (RFC 5737): an address, but never one of this machine's
    (["serve", "--host", "192.0.2.1"], "error: host 192.0.2.1 is not an address of this machine: choose --host"),
])
def test_an_address_a_server_cannot_listen_on_is_named(tmp_path, args, message):
    res = run(*args, "-c", str(profile(tmp_path, ""))) if args[0] == "serve" else \
        run(*args, "--data-root", str(tmp_path / "data"))
    assert res.exit_code == 2 and message in res.output, res.output  # was a traceback (OverflowError, gaierror)
    assert not (tmp_path / "data" / "stack").exists()


def test_stack_up_checks_every_port_before_starting_anything(tmp_path):
    import socket

    root = str(tmp_path / "data")
    res = run("stack", "up", "--data-root", root, "--prefect-port", "4711", "--mlflow-port", "4711")
    assert res.exit_code == 2 and "error: port 4711 is given to both --prefect-port and --mlflow-port" in res.output
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # The recommender starts last: its port was checked only after both servers were up, and
        # the failed `up` left them running.
        res = run("stack", "up", "--data-root", root, "--serve", str(profile(tmp_path, "")), "--serve-port", str(port))
        assert res.exit_code == 2 and f"error: port {port} is taken by another program: choose --serve-port" in res.output
    assert not (tmp_path / "data" / "stack").exists()  # nothing started, no log written


def test_debug_shows_the_traceback(tmp_path, monkeypatch):
    monkeypatch.setenv("CFT_DEBUG", "0")  # restored after the test, which --debug sets to 1
    res = run("--debug", "train", "-c", str(tmp_path / "nope.yaml"))
    assert res.exit_code == 1 and "ConfigError" in repr(res.exception)


def test_promote_an_unknown_version(tmp_path):
    from mlflow import MlflowClient

    store = tmp_path / "mlflow" / "mlflow.db"  # where the config's default tracking URI points
    store.parent.mkdir()
    MlflowClient(f"sqlite:///{store}").search_experiments()  # an existing store without the model
    res = run("promote", "-c", str(ROOT / "configs/smoke.yaml"), "--set", f"data.data_root={tmp_path}",
              "--version", "99", "--reason", "because")
    assert res.exit_code == 2 and res.output.startswith("error: ") and "99" in res.output, res.output


@pytest.mark.parametrize("command", [["promote", "--version", "1", "--reason", "because"],
                                     ["rollback", "--reason", "because"], ["recommend", "Heat"], ["versions"]])
def test_registry_commands_without_a_store(tmp_path, command):
    """No store under the data root: say so, and do not create an empty one."""
    res = run(*command, "-c", str(ROOT / "configs/smoke.yaml"), "--set", f"data.data_root={tmp_path}")
    assert res.exit_code == 2, res.output
    assert res.output.startswith(f"error: there is no tracking store at {tmp_path.resolve() / 'mlflow' / 'mlflow.db'}")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", [["run"], ["train"], ["recommend", "Heat"], ["gc", "--dry-run"],
                                     ["promote", "--version", "1", "--reason", "because"], ["versions"]])
def test_a_tracking_server_that_does_not_answer_is_named(tmp_path, command):
    """A profile tracking to an MLflow server that is not running: `error:` naming the server, exit
    2, before anything is written (MLflow's client would retry for minutes, then raise a traceback)."""
    uri = f"http://127.0.0.1:{free_port()}"
    res = run(command[0], "-c", str(profile(tmp_path, "")), "--set", f"tracking.tracking_uri={uri}", *command[1:])
    assert res.exit_code == 2, res.output
    assert res.output.startswith(f"error: the MLflow server at {uri} does not answer (")
    assert "Connection refused" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "data").exists()  # checked before the data stages


def test_a_prefect_server_that_does_not_answer_is_named(tmp_path):
    """`cft run` in a shell that still exports the PREFECT_API_URL of a stopped stack: `error:`
    naming the server, exit 2, nothing written (Prefect raised "Failed to reach API" with a traceback).
    A process of its own: Prefect reads its settings once, when it is imported."""
    import os
    import subprocess
    import sys

    url = f"http://127.0.0.1:{free_port()}/api"
    res = subprocess.run([sys.executable, "-m", "cft_cli", "run", "-c", str(profile(tmp_path, ""))],
                         env={**os.environ, "PREFECT_API_URL": url}, capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 2, res.stdout + res.stderr
    assert res.stderr.startswith(f"error: the Prefect server at {url} (PREFECT_API_URL) does not answer (")
    assert "Connection refused" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "data").exists()


def test_an_artifact_store_this_machine_cannot_write_is_named_before_training(tmp_path, monkeypatch):
    """An MLflow server that hands out s3:// locations instead of proxying them (`--default-artifact-root
    s3://... --no-serve-artifacts`) needs boto3 on the machine that logs: without it, MLflow raised
    `ModuleNotFoundError: No module named 'boto3'` at the first artifact, after the training. Now
    the run's start names the location and the package, exit 2, and no model is trained, nor a
    training folder left."""
    from mlflow import MlflowClient

    from tasks import servers

    monkeypatch.setitem(servers.ARTIFACT_CLIENTS, "s3", ("cft_test_no_such_module", "boto3"))  # boto3 may be installed
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    MlflowClient(uri).create_experiment("cft-ml-100k-smoke", artifact_location="s3://team-bucket/cft")
    res = run("train", "-c", str(profile(tmp_path, "")), "--set", f"tracking.tracking_uri={uri}")
    assert res.exit_code == 2, res.output
    said = [line for line in res.output.splitlines() if line.startswith("error: ")]  # (after the tiny model's bars)
    assert len(said) == 1 and said[0].startswith(f"error: the MLflow store at {uri} keeps this experiment's artifacts "
                                                 "at s3://team-bucket/cft, which this machine must write itself"), res.output
    assert "(pip install boto3)" in said[0] and "mlflow server --artifacts-destination s3://" in said[0]
    assert not list((tmp_path / "data" / "training").iterdir())  # (an empty training folder stayed until 2026-12-06)


def test_any_http_answer_counts_as_a_running_tracking_server():
    """A server that answers /health with an error (a proxy's 401 or 404), or whose TLS this check
    cannot verify (here: https to a plain HTTP server), is left for MLflow to report (it has its own
    certificate settings); only a missing answer is ours to name."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from tasks.servers import check_tracking_server

    class NotFound(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_error(404)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        check_tracking_server(f"http://127.0.0.1:{server.server_port}/")
        check_tracking_server(f"https://127.0.0.1:{server.server_port}")
    finally:
        server.shutdown()
    check_tracking_server("sqlite:////nowhere/mlflow.db")  # not a server: nothing to ask


def test_k_zero_is_a_usage_error():
    res = run("recommend", "-k", "0", "Heat")
    assert res.exit_code == 2 and "Invalid value for '-k'" in res.output and "greater than or equal to 1" in res.output


def test_a_history_entry_that_is_not_utf8():
    """On Linux, argv bytes that are not UTF-8 reach Python as lone surrogates."""
    res = run("recommend", "Heat", "Caf\udce9")
    assert res.exit_code == 2 and res.output.startswith("error: history entry 2 (Caf\\udce9) is not valid UTF-8")
