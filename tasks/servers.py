"""Whether the servers a command talks to answer: the MLflow tracking server and the Prefect API.

Asked before any work, so that a server that is not running (a stack stopped while its
`PREFECT_API_URL` and `MLFLOW_TRACKING_URI` stay exported in the shell, a wrong port) is named in
one line, `ServerUnavailable`: the CLI prints it and exits 2, a flow's task retries it. Without
the check, MLflow's client retried a refused connection with growing waits (`cft recommend`:
497 s) and both clients then raised a traceback.
"""

from __future__ import annotations

import importlib.util
import re

CHECK_TIMEOUT_S = 10.0  # a server on this machine or a team's answers /health in milliseconds


def no_answer(url: str) -> str | None:
    """Why `<url>/health` got no answer ("[Errno 111] Connection refused", "no answer within 10 s"),
    None if anything answered: an HTTP error (a proxy's 401 or 404) or a TLS one is the client's to
    report, with its own settings (MLflow's MLFLOW_TRACKING_INSECURE_TLS, CA path, client certificates)."""
    import requests

    try:
        requests.get(f"{url.rstrip('/')}/health", timeout=CHECK_TIMEOUT_S)
    except requests.exceptions.SSLError:  # something answers; its certificate is not ours to judge
        return None
    except requests.Timeout:
        return f"no answer within {CHECK_TIMEOUT_S:.0f} s"
    except requests.RequestException as e:  # refused, unknown host: the innermost reason
        found = re.findall(r"\[Errno -?\d+\][^)'\"]*", str(e))
        return found[-1].strip() if found else type(e).__name__
    return None


def check_tracking_server(uri: str) -> None:
    """Raise `ServerUnavailable` when an http(s) tracking URI does not answer, and `InputError` when
    it answers but refuses this client's credentials (other stores: nothing to ask)."""
    from schemas.errors import ServerUnavailable

    if not uri.startswith(("http://", "https://")):
        return
    if reason := no_answer(uri):
        raise ServerUnavailable(
            f"the MLflow server at {uri} does not answer ({reason}): start it (`cft stack up` starts the local "
            "one), or point tracking.tracking_uri (or MLFLOW_TRACKING_URI) at a server that runs")
    check_credentials(uri)


def check_credentials(uri: str) -> None:
    """InputError when the MLflow server at `uri` refuses the credentials MLflow would send (a
    server with users: MLFLOW_TRACKING_USERNAME and _PASSWORD, or MLFLOW_TRACKING_TOKEN): one
    read that any account may make, sent with MLflow's own credentials and TLS settings. Without
    it, a wrong password surfaced at the first write, after the data stage and the training, and
    reads that found nothing read as "no registered model"."""
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    from schemas.errors import MLFLOW_ACCESS_CODES, InputError, mlflow_access_message

    request = "/api/2.0/mlflow/experiments/search"
    try:
        response = http_request(get_default_host_creds(uri), request, "GET", params={"max_results": 1},
                                max_retries=0, timeout=CHECK_TIMEOUT_S, raise_on_status=False)
    except Exception:  # noqa: BLE001 (TLS, a proxy: the real request reports it with MLflow's words)
        return
    code = {401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED"}.get(response.status_code)
    if code in MLFLOW_ACCESS_CODES:  # (anything else is the real request's to report)
        raise InputError(mlflow_access_message(code, f"GET {request}", uri))


def check_prefect_api() -> None:
    """Raise `ServerUnavailable` when Prefect is pointed at an API (PREFECT_API_URL, from the
    environment or the Prefect profile) that does not answer, and `InputError` when it answers but
    refuses this client's credentials (a server started with PREFECT_SERVER_API_AUTH_STRING, which
    answers /health to anyone); without an API URL, Prefect starts a temporary local server and
    there is nothing to ask."""
    from prefect.settings import get_current_settings

    from schemas.errors import ServerUnavailable

    url = get_current_settings().api.url
    if not url:
        return
    if reason := no_answer(url):
        raise ServerUnavailable(
            f"the Prefect server at {url} (PREFECT_API_URL) does not answer ({reason}): start it (`cft stack "
            "up` starts the local one), or unset PREFECT_API_URL to run on a temporary local server")
    check_prefect_credentials(url)


def check_prefect_credentials(url: str) -> None:
    """InputError when the Prefect server at `url` refuses the credentials Prefect's client sends
    (PREFECT_API_AUTH_STRING, PREFECT_API_KEY): one request that needs them (`/hello`), made by
    Prefect's own client with its settings. Without it, the refusal was a traceback from
    wherever the command first spoke to the server (a `cft run`: the flow's start)."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import PrefectHTTPStatusError

    from schemas.errors import PREFECT_ACCESS_STATUSES, InputError, prefect_access_message

    try:
        with get_client(sync_client=True) as client:
            client.hello()
    except PrefectHTTPStatusError as e:  # (any other status is the real request's to report)
        if e.response.status_code in PREFECT_ACCESS_STATUSES:
            raise InputError(prefect_access_message(e.response.status_code, url)) from None


# The library MLflow needs on this machine to write artifacts where the store keeps them, when a
# server hands out that location instead of proxying it (`mlflow server --default-artifact-root
# s3://... --no-serve-artifacts`): scheme -> (module, package to install).
ARTIFACT_CLIENTS = {"s3": ("boto3", "boto3"), "gs": ("google.cloud.storage", "google-cloud-storage"),
                    "wasbs": ("azure.storage.blob", "azure-storage-blob"),
                    "abfss": ("azure.storage.filedatalake", "azure-storage-file-datalake")}


def check_artifact_client(location: str, uri: str) -> None:
    """InputError when the experiment's artifact `location` needs a client library this machine
    lacks. Asked when a run starts: MLflow imports the library only at the first artifact, so a
    training (hours, for a real model) used to end in `ModuleNotFoundError: No module named 'boto3'`."""
    from schemas.errors import InputError

    scheme = location.partition("://")[0]
    if scheme not in ARTIFACT_CLIENTS:
        return
    module, package = ARTIFACT_CLIENTS[scheme]
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package (google, azure) is missing
        found = False
    if not found:
        raise InputError(
            f"the MLflow store at {uri} keeps this experiment's artifacts at {location}, which this machine must "
            f"write itself: install {package} here (pip install {package}) with the bucket's credentials, or have "
            f"the MLflow server proxy them (mlflow server --artifacts-destination {scheme}://...)")

