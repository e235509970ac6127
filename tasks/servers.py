"""Whether the servers a command talks to answer, and whether this client can use them: the MLflow
tracking server and the Prefect API.

Asked before any work, so that a server that is not running (a stack stopped while its
`PREFECT_API_URL` and `MLFLOW_TRACKING_URI` stay exported in the shell, a wrong port) is named in
one line, `ServerUnavailable`: the CLI prints it and exits 2, a flow's task retries it. Without
the check, MLflow's client retried a refused connection with growing waits (`cft recommend`:
497 s) and both clients then raised a traceback. A server that answers is then asked, with the
client's own settings, what would otherwise fail later: its credentials, its TLS, whether the URL
holds its API, and its release. Those are the user's to fix: `InputError`, never retried.
"""

from __future__ import annotations

import importlib.util
import re

CHECK_TIMEOUT_S = 10.0  # a server on this machine or a team's answers /health in milliseconds


def no_answer(url: str) -> str | None:
    """Why `<url>/health` got no answer ("[Errno 111] Connection refused", "no answer within 10 s"),
    None if anything answered: an HTTP error (a proxy's 401 or 404) or a TLS one is left to the
    credentials check, which makes its request with the client's own TLS settings (a CA bundle this
    plain request does not know)."""
    import requests

    from schemas.errors import ERRNO_REASON

    try:
        requests.get(f"{url.rstrip('/')}/health", timeout=CHECK_TIMEOUT_S)
    except requests.exceptions.SSLError:  # something answers; its certificate is judged by the client's settings
        return None
    except requests.Timeout:
        return f"no answer within {CHECK_TIMEOUT_S:.0f} s"
    except requests.RequestException as e:  # refused, unknown host: the innermost reason
        found = ERRNO_REASON.findall(str(e))
        return found[-1].strip() if found else type(e).__name__
    return None


# A TLS failure's reason as Python's ssl module words it, wherever a client wrapped it:
# "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed certificate (_ssl.c:1006)".
_SSL_REASON = re.compile(r"\[SSL(?:: \w+)?\] (.+?) \(_ssl\.c:\d+\)")


def tls_failure(error: BaseException) -> str | None:
    """The reason a client's request failed in TLS ("certificate verify failed: self-signed
    certificate", "wrong version number" for https:// to a plain HTTP server), or None when
    `error` is no TLS failure. Read from the message, since MLflow's client passes the error on as
    text inside its own."""
    found = _SSL_REASON.findall(str(error))
    return found[-1].replace("\\'", "'") if found else None


def tls_message(server: str, reason: str, settings: str) -> str:
    """The line for a server whose TLS the client cannot complete: what failed, and either the
    client's `settings` to set or, where the answer was not TLS at all, the scheme to use."""
    if reason == "wrong version number":  # https:// to a server that answers in plain HTTP
        return f"the {server} does not speak TLS ({reason}): it serves plain HTTP, so use http:// in its URL"
    return f"the {server} failed TLS ({reason}): {settings}"


MLFLOW_TLS_SETTINGS = ("set MLFLOW_TRACKING_SERVER_CERT_PATH to the CA bundle that signed its certificate (and "
                       "MLFLOW_TRACKING_CLIENT_CERT_PATH where it asks for a client certificate)")
PREFECT_TLS_SETTINGS = "set PREFECT_API_SSL_CERT_FILE to the CA bundle that signed its certificate"


# "127.0.0.1:5000", "mlflow.team:443/": a server's address written without its scheme (MLflow would
# read it as a local folder for a file store).
_HOST_PORT = re.compile(r"^[A-Za-z0-9.-]+:\d+(/.*)?$")


def check_server_url(url: str, setting: str) -> None:
    """InputError for a server URL that cannot be meant as written: one without http:// or https://,
    or with a '#' part (a page of the server's UI, copied from the browser's address bar, which the
    client never sends: the checks then met the UI's page, and the first real request failed on
    it with MLflow's "response body was not in a valid JSON format", a traceback)."""
    from urllib.parse import urlsplit

    from schemas.errors import InputError

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise InputError(f"{setting} {url!r} names no server: a server's URL begins with http:// or https:// "
                         f"(http://{url}?)")
    if parts.fragment:
        raise InputError(f"{setting} {url} holds '#{parts.fragment}', a page of the server's UI: the server's "
                         f"URL ends before the '#' ({url.partition('#')[0].rstrip('/')}?)")


def check_tracking_server(uri: str) -> None:
    """Raise `ServerUnavailable` when an http(s) tracking URI does not answer, and `InputError` when
    it cannot be meant as written (`check_server_url`) or answers but this client cannot use it
    (`check_mlflow_client`); other stores: nothing to ask."""
    if not uri.startswith(("http://", "https://")) and not _HOST_PORT.match(uri):
        return
    check_server_url(uri, "the tracking URI (tracking.tracking_uri or MLFLOW_TRACKING_URI)")
    check_tracking_server_answers(uri)
    check_mlflow_client(uri)


def check_tracking_server_answers(uri: str) -> None:
    """`ServerUnavailable` when the MLflow server at an http(s) `uri` does not answer: the check a
    long-lived process repeats (`cft serve` before each look at its alias), once the server was
    found usable at its start."""
    from schemas.errors import ServerUnavailable

    if uri.startswith(("http://", "https://")) and (reason := no_answer(uri)):
        raise ServerUnavailable(
            f"the MLflow server at {uri} does not answer ({reason}): start it (`cft stack up` starts the local "
            "one), or point tracking.tracking_uri (or MLFLOW_TRACKING_URI) at a server that runs")


def check_mlflow_client(uri: str) -> None:
    """InputError when the MLflow server at `uri` refuses the credentials MLflow would send (a
    server with users: MLFLOW_TRACKING_USERNAME and _PASSWORD, or MLFLOW_TRACKING_TOKEN), when its
    TLS fails with MLflow's settings (MLFLOW_TRACKING_SERVER_CERT_PATH, _INSECURE_TLS, client
    certificates), when it has no MLflow API at `uri`, or when it runs a release too old
    (`check_server_version`): one read that any account may make, sent with MLflow's own
    credentials and TLS settings, then its release. Without it, a wrong password surfaced at the first write, after the data stage and
    the training; reads that found nothing read as "no registered model"; and a certificate the
    client does not trust was retried for minutes (`cft versions`: 250 s) and then read as "no
    registered model" too."""
    from schemas.errors import MLFLOW_ACCESS_STATUSES, InputError, mlflow_access_message

    request = "/api/2.0/mlflow/experiments/search"
    try:
        response = _ask_mlflow(uri, request, params={"max_results": 1})
    except Exception as e:  # noqa: BLE001 (a proxy, a reset: the real request reports it with MLflow's words)
        if reason := tls_failure(e):
            raise InputError(tls_message(f"MLflow server at {uri}", reason, MLFLOW_TLS_SETTINGS)) from None
        return
    if code := MLFLOW_ACCESS_STATUSES.get(response.status_code):  # (anything else but a 404 is the real request's to report)
        raise InputError(mlflow_access_message(code, f"GET {request}", uri))
    if response.status_code == 404:  # a server, but no MLflow API at that path (another server's port)
        raise InputError(f"the server at {uri} has no MLflow API there (GET {request}: HTTP 404): the tracking "
                         "URI (tracking.tracking_uri or MLFLOW_TRACKING_URI) is the MLflow server's own URL, the one "
                         "its UI opens at")
    check_server_version(uri)


def _ask_mlflow(uri: str, path: str, **kwargs):
    """One GET of `path` from the MLflow server at `uri`, as MLflow's client sends it (its
    credentials and TLS settings), without its retries; the response whatever its status."""
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    return http_request(get_default_host_creds(uri), path, "GET", max_retries=0, timeout=CHECK_TIMEOUT_S,
                        raise_on_status=False, **kwargs)


# The oldest MLflow server this client can use. MLflow 3 keeps a model as a "logged model"
# (/api/2.0/mlflow/logged-models), which a 2.x server does not have: against MLflow 2.22.1, `cft
# run` prepared the data and trained, then failed at registration on that route's 404.
MLFLOW_SERVER_MAJOR = 3


def check_server_version(uri: str) -> None:
    """InputError when the MLflow server at `uri` says (`/version`, asked with MLflow's credentials
    and TLS settings) that it runs a release older than MLFLOW_SERVER_MAJOR. A server that does not
    say (a proxy without the route, a managed service) is let through."""
    import mlflow

    from schemas.errors import InputError

    try:
        response = _ask_mlflow(uri, "/version")
    except Exception:  # noqa: BLE001 (the request just before it answered: the real requests report it)
        return
    said = response.text.strip() if response.status_code == 200 else ""
    if (major := re.match(r"(\d+)\.\d+", said)) and int(major.group(1)) < MLFLOW_SERVER_MAJOR:
        raise InputError(
            f"the MLflow server at {uri} runs MLflow {said}, and this client (MLflow {mlflow.__version__}) needs "
            f"{MLFLOW_SERVER_MAJOR}.0 or later: it logs models as logged models (/api/2.0/mlflow/logged-models), "
            f"which a {major.group(1)}.x server does not have. Upgrade the server (pip install 'mlflow>="
            f"{MLFLOW_SERVER_MAJOR}' where it runs, then `mlflow db upgrade` on its backend store), or point "
            "tracking.tracking_uri elsewhere")


def check_prefect_api() -> None:
    """Raise `ServerUnavailable` when Prefect is pointed at an API (PREFECT_API_URL, from the
    environment or the Prefect profile) that does not answer, and `InputError` when the URL cannot
    be meant as written (`check_server_url`) or the server answers but this client cannot use it
    (`check_prefect_client`); without an API URL, Prefect starts a temporary local server and
    there is nothing to ask."""
    from prefect.settings import get_current_settings

    from schemas.errors import ServerUnavailable

    url = get_current_settings().api.url
    if not url:
        return
    check_server_url(url, "PREFECT_API_URL")
    if reason := no_answer(url):
        raise ServerUnavailable(
            f"the Prefect server at {url} (PREFECT_API_URL) does not answer ({reason}): start it (`cft stack "
            "up` starts the local one), or unset PREFECT_API_URL to run on a temporary local server")
    check_prefect_client(url)


def check_prefect_client(url: str) -> None:
    """InputError when the Prefect server at `url` refuses the credentials Prefect's client sends
    (PREFECT_API_AUTH_STRING, PREFECT_API_KEY), when its TLS fails with Prefect's settings
    (PREFECT_API_SSL_CERT_FILE, PREFECT_API_TLS_INSECURE_SKIP_VERIFY), or when it runs another major
    release (`check_prefect_version`), or has no Prefect API at `url` (a 404; PREFECT_API_URL without
    its /api): one request that needs the credentials (`/hello`), made by
    Prefect's own client with its settings, then its release. Without it, each was
    a traceback from wherever the command first spoke to the server (a `cft run`: the flow's start)."""
    import httpx
    from prefect.client.base import ServerType
    from prefect.client.orchestration import get_client
    from prefect.exceptions import PrefectHTTPStatusError

    from schemas.errors import PREFECT_ACCESS_STATUSES, InputError, prefect_access_message

    try:
        with get_client(sync_client=True) as client:
            cloud = client.server_type == ServerType.CLOUD  # (Prefect's own client asks Cloud neither)
            client.hello()
            if not cloud:
                check_prefect_version(client, url)
    except PrefectHTTPStatusError as e:  # (any other status is the real request's to report)
        if e.response.status_code in PREFECT_ACCESS_STATUSES:
            raise InputError(prefect_access_message(e.response.status_code, url)) from None
        if e.response.status_code == 404 and not cloud:  # a server, but no Prefect API at that path
            root = re.match(r"https?://[^/]+", url).group(0)  # (the UI's pages, e.g. /dashboard, are beside /api)
            hint = f" ({root}/api?)" if not url.rstrip("/").endswith("/api") else ""
            raise InputError(
                f"the server at {url} (PREFECT_API_URL) has no Prefect API there ({e.request.method} "
                f"{e.request.url.path}: HTTP 404): PREFECT_API_URL is the server's URL with /api at the end{hint}"
            ) from None
    except httpx.TransportError as e:  # (anything but TLS: the real request's to report)
        if reason := tls_failure(e):
            raise InputError(tls_message(f"Prefect server at {url} (PREFECT_API_URL)", reason,
                                         PREFECT_TLS_SETTINGS)) from None


def check_prefect_version(client, url: str) -> None:
    """InputError when the self-hosted Prefect server at `url` runs another major release than this
    client (`/admin/version`). Prefect's own rule: its client raised "Found incompatible versions:
    client: 3.8.8, server: 2.20.16. Major versions must match." as a RuntimeError at the flow's
    start, a traceback."""
    import prefect

    from schemas.errors import InputError

    said = client.api_version()
    ours = prefect.__version__
    if not isinstance(said, str) or not re.match(r"\d+\.", said):  # (not Prefect's answer: the real requests tell)
        return
    if said.split(".")[0] != ours.split(".")[0]:
        raise InputError(
            f"the Prefect server at {url} (PREFECT_API_URL) runs Prefect {said}, and this client runs Prefect {ours}: "
            f"their major releases must match. Run a Prefect {ours.split('.')[0]}.x server (pip install "
            f"'prefect=={ours}' where it runs; `prefect server database upgrade` migrates its database), or unset "
            "PREFECT_API_URL to run on a temporary local server")


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

