"""One error style: a user's mistake prints `error: ...` naming the file, field or value, exits 2,
and leaves nothing behind; `--debug` shows the traceback instead."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cft_cli.main import app
from schemas.errors import InputError
from tests.conftest import StandIn, free_port, serving

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


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory) -> tuple[Path, Path]:
    """(certificate, key) PEM files: a self-signed certificate for 127.0.0.1, as a team's internal CA
    would issue one (no client trusts it until told to)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cft test server")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    folder = tmp_path_factory.mktemp("tls")
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    return folder / "cert.pem", folder / "key.pem"


def test_any_http_answer_counts_as_a_running_tracking_server():
    """A server whose /health answers with an error (a proxy's 401 or 404) runs: only a missing
    answer, a refusal of the credentials, a failed TLS, no MLflow API or an old release is ours to name."""
    from tasks.servers import check_tracking_server

    class HealthNotFound(StandIn):
        routes = {"/health": (404, b"")}

    with serving(HealthNotFound) as port:
        check_tracking_server(f"http://127.0.0.1:{port}/")
    check_tracking_server("sqlite:////nowhere/mlflow.db")  # not a server: nothing to ask


@pytest.mark.parametrize(("url", "said"), [
    ("127.0.0.1:5000", "'127.0.0.1:5000' names no server: a server's URL begins with http:// or https:// "
                       "(http://127.0.0.1:5000?)"),
    ("mlflow.team.example:443/", "'mlflow.team.example:443/' names no server: a server's URL begins with http:// or "
                                 "https:// (http://mlflow.team.example:443/?)"),
    ("http://127.0.0.1:5000/#/experiments/1", "http://127.0.0.1:5000/#/experiments/1 holds '#/experiments/1', a page "
                                              "of the server's UI: the server's URL ends before the '#' "
                                              "(http://127.0.0.1:5000?)")])
def test_a_server_url_that_cannot_be_meant_as_written_is_named(url, said, monkeypatch):
    """A server's address without its scheme (MLflow read "127.0.0.1:5000" as a folder and answered
    that the file store is in maintenance mode; Prefect's check said the server "does not answer
    (InvalidSchema)"), or the UI's address copied from the browser (MLflow: "response body was not in
    a valid JSON format", a traceback). Named before any request, for both settings; a folder or a
    database URI is no server URL and is left alone."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tasks.servers import check_prefect_api, check_tracking_server

    monkeypatch.setattr("tasks.servers.no_answer", lambda url: pytest.fail(f"asked {url}"))
    with pytest.raises(InputError) as mlflow_said:
        check_tracking_server(url)
    assert str(mlflow_said.value) == f"the tracking URI (tracking.tracking_uri or MLFLOW_TRACKING_URI) {said}"
    with temporary_settings(updates={PREFECT_API_URL: url}), pytest.raises(InputError) as prefect_said:
        check_prefect_api()
    assert str(prefect_said.value) == f"PREFECT_API_URL {said}"
    for store in ("mlruns", "sqlite:////nowhere/mlflow.db", "databricks", "file:///tmp/mlruns"):
        check_tracking_server(store)


def test_a_url_with_no_api_there_is_named_before_any_work():
    """The tracking URI or PREFECT_API_URL at a server with no such API there: the other server's
    port, or Prefect's URL without its /api. MLflow's client then failed at its first request
    (`cft versions`: "no registered model"); Prefect's said "RuntimeError: Failed to reach API at
    http://127.0.0.1:4200" at the flow's start, a traceback. The stand-in answers 404 to all, as a
    Prefect server does outside its API (and an MLflow server outside its)."""
    from tasks.servers import check_tracking_server

    class NotFound(StandIn):
        status = 404

    with serving(NotFound) as port:
        url = f"http://127.0.0.1:{port}"
        with pytest.raises(InputError) as mlflow_said:
            check_tracking_server(url)
        with pytest.raises(InputError) as prefect_said:
            prefect_checked_at(url)
        with pytest.raises(InputError) as prefixed_said:
            prefect_checked_at(f"{url}/prefect/api")
        with pytest.raises(InputError) as page_said:
            prefect_checked_at(f"{url}/dashboard")
    assert str(mlflow_said.value) == (
        f"the server at {url} has no MLflow API there (GET /api/2.0/mlflow/experiments/search: HTTP 404): the tracking "
        "URI (tracking.tracking_uri or MLFLOW_TRACKING_URI) is the MLflow server's own URL, the one its UI opens at")
    assert str(prefect_said.value) == (
        f"the server at {url} (PREFECT_API_URL) has no Prefect API there (GET /hello: HTTP 404): PREFECT_API_URL is "
        f"the server's URL with /api at the end ({url}/api?)")
    assert str(prefixed_said.value).endswith("(GET /prefect/api/hello: HTTP 404): PREFECT_API_URL is the server's URL "
                                             "with /api at the end")
    assert str(page_said.value).endswith(f"(GET /dashboard/hello: HTTP 404): PREFECT_API_URL is the server's URL with "
                                         f"/api at the end ({url}/api?)")


def test_https_to_a_plain_http_server_is_named_as_such():
    from tasks.servers import check_tracking_server

    with serving(StandIn) as port:
        url = f"https://127.0.0.1:{port}"
        with pytest.raises(InputError) as mlflow_said:
            check_tracking_server(url)
        with pytest.raises(InputError) as prefect_said:
            prefect_checked_at(f"{url}/api")
    assert str(mlflow_said.value) == (f"the MLflow server at {url} does not speak TLS (wrong version number): it "
                                      "serves plain HTTP, so use http:// in its URL")
    assert str(prefect_said.value) == (f"the Prefect server at {url}/api (PREFECT_API_URL) does not speak TLS (wrong "
                                       "version number): it serves plain HTTP, so use http:// in its URL")


def prefect_checked_at(url: str, **settings) -> None:
    """`check_prefect_client(url)` with Prefect's client pointed at `url` (and the other settings given)."""
    import prefect.settings as ps
    from prefect.settings import temporary_settings

    from tasks.servers import check_prefect_client

    with temporary_settings(updates={ps.PREFECT_API_URL: url, **{getattr(ps, k): v for k, v in settings.items()}}):
        check_prefect_client(url)


@pytest.mark.parametrize(("says", "refused"), [("2.22.1", True), ("1.30.0", True), ("3.0.1", False),
                                               ("3.17.2", False), (None, False)])
def test_a_tracking_server_older_than_mlflow_3_is_named_before_any_work(says, refused):
    """Against a team's MLflow 2.22.1 server, `cft run` prepared the data and trained, then failed at
    registration on MLflow 3's logged-models route (a 404: MLflow 2 has no such route). Its
    `/version` now refuses it first. The stand-in answers `/version` as MLflow's server does (its
    release as text), or not at all (None: a proxy without the route), which passes."""
    from tasks.servers import check_tracking_server

    class Says(StandIn):
        routes = {"/version": (200, says.encode()) if says else (404, b"")}

    with serving(Says) as port:
        url = f"http://127.0.0.1:{port}"
        if not refused:
            check_tracking_server(url)
            return
        with pytest.raises(InputError) as said:
            check_tracking_server(url)
    major = says.split(".")[0]
    assert str(said.value).startswith(f"the MLflow server at {url} runs MLflow {says}, and this client (MLflow 3.")
    assert f"needs 3.0 or later: it logs models as logged models (/api/2.0/mlflow/logged-models), which a {major}.x " \
           "server does not have. Upgrade the server (pip install 'mlflow>=3' where it runs" in str(said.value)


@pytest.mark.parametrize(("says", "refused"), [("2.20.16", True), ("4.0.0", True), ("3.0.0", None), ("3.8.8", None)])
def test_a_prefect_server_of_another_major_release_is_named_before_any_work(says, refused):
    """Against a team's Prefect 2.20.16 server, `cft run` was Prefect's RuntimeError "Found
    incompatible versions: client: 3.8.8, server: 2.20.16. Major versions must match.", a
    traceback. Now one line says both releases and how to move the server. The stand-in answers
    `/api/admin/version` as Prefect's server does (the release as a JSON string)."""
    import prefect

    class Says(StandIn):
        routes = {"/api/admin/version": (200, f'"{says}"'.encode())}

    with serving(Says) as port:
        url = f"http://127.0.0.1:{port}/api"
        if not refused:
            prefect_checked_at(url)
            return
        with pytest.raises(InputError) as said:
            prefect_checked_at(url)
    ours = prefect.__version__
    assert str(said.value) == (
        f"the Prefect server at {url} (PREFECT_API_URL) runs Prefect {says}, and this client runs Prefect {ours}: their "
        f"major releases must match. Run a Prefect 3.x server (pip install 'prefect=={ours}' where it runs; `prefect "
        "server database upgrade` migrates its database), or unset PREFECT_API_URL to run on a temporary local server")


@pytest.mark.filterwarnings("ignore:Unverified HTTPS request")  # (MLFLOW_TRACKING_INSECURE_TLS, on purpose)
def test_a_tracking_server_whose_certificate_is_not_trusted_is_named_before_any_work(self_signed, monkeypatch):
    """A server behind TLS with a certificate the client does not trust (a team's own CA): MLflow's
    client retried it for minutes, and `cft versions` then said "no registered model ... in this
    store". Now the check names the failure and MLflow's setting, at once, exit 2; with the setting
    (or MLflow's switch to skip verification), the same server passes."""
    from tasks.servers import check_tracking_server

    cert, _ = self_signed
    with serving(StandIn, self_signed) as port:
        url = f"https://127.0.0.1:{port}"
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        res = run("versions", "-c", str(ROOT / "configs/smoke.yaml"))
        assert res.exit_code == 2, res.output
        assert res.output == (f"error: the MLflow server at {url} failed TLS (certificate verify failed: self-signed "
                              "certificate): set MLFLOW_TRACKING_SERVER_CERT_PATH to the CA bundle that signed its "
                              "certificate (and MLFLOW_TRACKING_CLIENT_CERT_PATH where it asks for a client "
                              "certificate)\n")
        monkeypatch.setenv("MLFLOW_TRACKING_SERVER_CERT_PATH", str(cert))
        check_tracking_server(url)
        monkeypatch.delenv("MLFLOW_TRACKING_SERVER_CERT_PATH")
        monkeypatch.setenv("MLFLOW_TRACKING_INSECURE_TLS", "true")
        check_tracking_server(url)


def test_a_prefect_server_whose_certificate_is_not_trusted_is_named_before_any_work(self_signed, tmp_path):
    """The same for Prefect: `cft run` was a traceback (httpx.ConnectError, exit 1) at the flow's
    start. Now: one line naming Prefect's setting, exit 2, no data written; with the setting, the
    check passes."""
    cert, _ = self_signed
    with serving(StandIn, self_signed) as port:
        url = f"https://127.0.0.1:{port}/api"
        res = subprocess.run([sys.executable, "-m", "cft_cli", "run", "-c", str(profile(tmp_path, ""))],
                             env={**os.environ, "PREFECT_API_URL": url}, capture_output=True, text=True, cwd=ROOT)
        assert res.returncode == 2, res.stdout + res.stderr
        assert res.stderr == (f"error: the Prefect server at {url} (PREFECT_API_URL) failed TLS (certificate verify "
                              "failed: self-signed certificate): set PREFECT_API_SSL_CERT_FILE to the CA bundle that "
                              "signed its certificate\n")
        assert not (tmp_path / "data").exists()
        prefect_checked_at(url, PREFECT_API_SSL_CERT_FILE=str(cert))
        prefect_checked_at(url, PREFECT_API_TLS_INSECURE_SKIP_VERIFY=True)


@pytest.mark.parametrize(("status", "said"), [
    (500, "did not complete a request (/api/2.0/mlflow/registered-models/get: too many 500 error responses): run "
          "the command again once it answers; its log says why"),
    (404, "does not serve a request (/api/2.0/mlflow/registered-models/get: HTTP 404): check that the URL is that "
          "of an MLflow server, release 3 or later")])
def test_a_request_the_tracking_server_did_not_complete_is_one_line(monkeypatch, status, said):
    """A server that answers but fails the request (500s until MLflow's retries are spent), or has
    no such route (a 404 page: a proxy's, an old server's): `cft versions` said "no registered
    model ... in this store"; a read that failed is not "none there". Now one line names the
    server, the request and the failure, exit 2, as for a server that does not answer (a flow's
    task retries it instead: it is not the input's fault). The stand-in's /version says nothing."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from schemas.errors import input_error_message

    class Fails(StandIn):
        def do_GET(self):
            if self.path.startswith("/api/2.0/mlflow/experiments/search"):  # (the credentials check)
                return super().do_GET()
            body = b"<html><h1>Not Found</h1></html>" if status == 404 else b"{}"
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # (MLflow retries a 500 for minutes)
    with serving(Fails) as port:
        url = f"http://127.0.0.1:{port}"
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        res = run("versions", "-c", str(ROOT / "configs/smoke.yaml"))
        with pytest.raises(MlflowException) as failed:
            MlflowClient(url).get_registered_model("cft-shop")
    assert res.exit_code == 2, res.output
    assert res.output == f"error: the MLflow server at {url} {said}\n"
    assert input_error_message(failed.value) is None  # (so a flow's task retries it)


def test_a_request_the_prefect_server_did_not_complete_is_one_line(tmp_path):
    """The same for Prefect's API: a 500 (which its client does not retry) was a traceback from
    `cft alerts`, exit 1. A process of its own: Prefect reads its settings when it is imported."""

    class Fails(StandIn):
        status = 500

    with serving(Fails) as port:
        url = f"http://127.0.0.1:{port}/api"
        res = subprocess.run([sys.executable, "-m", "cft_cli", "alerts", "--off"], capture_output=True, text=True,
                             env={**os.environ, "PREFECT_API_URL": url, "PREFECT_HOME": str(tmp_path)}, cwd=ROOT)
    assert res.returncode == 2, res.stdout + res.stderr
    assert re.fullmatch(rf"error: the Prefect server at {url} did not complete a request \((GET|POST|DELETE) /api/\S+: "
                        r"HTTP 500\): run the command again once it answers; its log says why\n", res.stderr), res.stderr


def test_k_zero_is_a_usage_error():
    res = run("recommend", "-k", "0", "Heat")
    assert res.exit_code == 2 and "Invalid value for '-k'" in res.output and "greater than or equal to 1" in res.output


def test_a_history_entry_that_is_not_utf8():
    """On Linux, argv bytes that are not UTF-8 reach Python as lone surrogates."""
    res = run("recommend", "Heat", "Caf\udce9")
    assert res.exit_code == 2 and res.output.startswith("error: history entry 2 (Caf\\udce9) is not valid UTF-8")


@pytest.mark.parametrize(("status", "said"), [
    (413, "HTTP 413 Request Entity Too Large. A proxy in front of it caps the size of a request (nginx: "
          "client_max_body_size, 1 MB unless set): raise the cap above the largest artifact, the model's weights "
          "(SmolLM2-135M in fp32: 540 MB). Finished stages are reused: run the command again once it is raised"),
    (400, "HTTP 400 Bad Request; the server's log, or its proxy's, says why"),
    (403, None)])  # (a server with users: the lines its REST API's refusals get)
def test_an_upload_the_artifact_proxy_refuses_is_one_line_and_not_retried(tmp_path, monkeypatch, status, said):
    """A team's MLflow server behind nginx, whose default cap on a request's body is 1 MB: `cft run`
    trained, then its evaluation's first upload (the predictions table) was refused with a 413,
    and the run ended in requests' HTTPError traceback, exit 1 (seen by hand through a capping
    proxy; the model's weights are refused the same). MLflow's own artifact client makes the
    upload here, to a stand-in that refuses every PUT."""
    from mlflow.store.artifact.http_artifact_repo import HttpArtifactRepository

    from schemas.errors import input_error_message, mlflow_access_message, user_error_message

    reason = {413: "Request Entity Too Large", 400: "Bad Request", 403: "Forbidden"}[status]  # (nginx's words; Python 3.13's differ)

    class Refuses(StandIn):
        def do_PUT(self):
            body = f"<html><center><h1>{status} {reason}</h1></center></html>".encode()
            self.send_response(status, reason)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")  # (as nginx does: it does not read the body it refuses)
            self.end_headers()
            self.wfile.write(body)

    table = tmp_path / "predictions_table.json"
    table.write_bytes(b"[]" * 1_250_000)  # 2.5 MB
    with serving(Refuses) as port:
        server = f"http://127.0.0.1:{port}"
        repo = HttpArtifactRepository(f"{server}/api/2.0/mlflow-artifacts/artifacts/1/0a1b2c/artifacts")
        with pytest.raises(Exception) as refused:  # noqa: PT011 (which one is MLflow's choice: the point)
            repo.log_artifact(str(table), "evaluation/test")
    line = user_error_message(refused.value)
    if said is None:
        said = mlflow_access_message("PERMISSION_DENIED", "an upload of evaluation/test/predictions_table.json", server)
        assert line == said and "denied this client a request (an upload of evaluation/test/predictions_table.json)" in line
    else:
        assert line == f"the MLflow server at {server} refused an upload of evaluation/test/predictions_table.json (2.5 MB): {said}"
    assert input_error_message(refused.value) == line  # the input's sorting: a flow's task does not retry it
