"""`cft serve`: an HTTP server for a registered model, built for many users at once.

`mlflow models serve` works with our models too, but it runs every request in a thread of a
small pool (min(32, cores + 4): 6 on 2 cores), so requests beyond it wait unseen until they time
out. Here a request costs no thread while it waits: the handler queues it on the model's
`BatchingRecommender` (cft_core/serving.py), which ranks what is waiting in shared generation
calls, and awaits the answer. The queue is bounded: when it is full the answer is 503 with
Retry-After, at once.

Endpoints (JSON, UTF-8):
  POST /recommend    {"history": [...], "k": 10, "exclude_history": true, "free_text": false,
                      "exclude": [...]}  (optional: items never to return, e.g. all the user has)
                     -> {"item_ids": [...], "titles": [...], "scores": [...], "unmatched": [...]}
  POST /invocations  MLflow's scoring format, so clients of `mlflow models serve` work unchanged:
                     {"dataframe_records": [{"history": [...], "exclude": [...]}, ...]} (or
                     "dataframe_split", or "inputs": {"history": [[...], ...]}), optional "params";
                     `exclude` is an optional column, as in the registered model's signature
                     -> {"predictions": [{"item_ids": ..., "titles": ..., ...}, ...]}
  GET  /metrics      Prometheus' text format: answers by endpoint and status, their times, history
                     entries the catalogue did not know, the served version, the batching queue
                     and the process (cft_cli/server_metrics.py)
  GET  /health       {"status": "ok", "model": <uri>, "version": <registered version served>,
                      "method": ..., "catalogue": <items>}; 503 {"status": "waiting", ...} while a
                      server started with `wait` has nothing to serve yet
Answers of /recommend and /invocations carry the version that ranked them in `X-Model-Version`.
Item ids, in histories and answers, are the data's own ids as text (cft_core/ranking.py).

Served through an alias (`models:/cft-ml-100k@champion`, the default), the server follows it:
every `follow_every_s` seconds it asks the registry where the alias points, and when a promotion,
the gate or a rollback moved it, loads that version beside the current one and switches to it.
Requests in flight finish on the model they started with; the old model's batching worker then
ends, so its memory is freed. A version that fails to load is logged, /health lists it in
`failed_versions`, and the current one keeps serving; it is tried again with a back-off.
(`mlflow models serve` resolves the alias once, at start.) Started with `wait` (`cft serve --wait`,
the local stack's recommender) before any version has the alias, it answers 503 until one has.

Mistakes in a request get 400 (or 415 for a body that is not UTF-8 JSON, 413 for one over 1 MB)
with {"error_code", "message"} naming the problem; an internal error gets 500 with a short message
and its traceback goes to the server log only: no stack trace or server path reaches a client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

from fastapi import Request  # at module level: FastAPI reads the handlers' annotations by name

from cft_core.ranking import InputError
from cft_core.serving import Overloaded, RequestParams, Retired

log = logging.getLogger("cft.serve")
MAX_BODY_BYTES = 1 << 20  # 1 MB: thousands of histories; anything larger is a mistake


class RequestError(Exception):
    """An HTTP error answer: status, MLflow-style error code, message."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _columns_of(body: dict) -> tuple[list, list | None]:
    """(histories, exclude lists or None) of an /invocations body, in any of MLflow's JSON forms;
    `exclude` is the optional column of items never to return (missing in a row: none)."""
    if "dataframe_records" in body:
        records = body["dataframe_records"]
        if not isinstance(records, list) or not all(isinstance(r, dict) and "history" in r for r in records):
            raise InputError("dataframe_records must be a list of objects with a `history` field")
        rows = records
    elif "dataframe_split" in body:
        split = body["dataframe_split"]
        if not isinstance(split, dict) or "history" not in split.get("columns", []):
            raise InputError("dataframe_split needs `columns` with `history` and `data`")
        rows = [dict(zip(split["columns"], row, strict=False)) for row in split.get("data", [])]
    elif "inputs" in body:
        inputs = body["inputs"]
        if isinstance(inputs, dict) and "history" in inputs:
            histories, exclude = list(inputs["history"]), inputs.get("exclude")
            if exclude is not None and (not isinstance(exclude, list) or len(exclude) != len(histories)):
                raise InputError(f"inputs.exclude must be a list of one list per history ({len(histories)})")
            return histories, exclude
        if not (isinstance(inputs, list) and all(isinstance(r, dict) and "history" in r for r in inputs)):
            raise InputError("inputs must be {\"history\": [[...], ...]} or a list of {\"history\": [...]}")
        rows = inputs
    else:
        raise InputError("the body needs one of dataframe_records, dataframe_split or inputs")
    exclude = [r.get("exclude") or [] for r in rows] if any("exclude" in r for r in rows) else None
    return [r["history"] for r in rows], exclude


@dataclass(frozen=True)
class Loaded:
    """One loaded model: what a request reads of it, captured once per request."""

    uri: str  # what was loaded, e.g. models:/cft-ml-100k/3
    version: str | None  # its registered version (None for a run or folder URI)
    loaded: Any  # tasks.registry.LoadedPyfunc: the pyfunc, its batching worker, its download

    @property
    def model(self):
        """The pyfunc's Python model: tasks/recommender_pyfunc.py or tasks/popularity_pyfunc.py."""
        return self.loaded.model

    @property
    def batching(self):
        """The LLM recommender's BatchingRecommender; None for the popularity baseline."""
        return self.loaded.batching

    @property
    def method(self) -> str:
        if self.batching is not None:
            return self.batching.ranker.settings.method
        return getattr(self.model, "method", "popularity")  # a baseline (stored before `method`: popularity)

    def close(self) -> None:
        """After the requests it holds are answered: end its worker and remove its download."""
        self.loaded.close()


def _load(uri: str, version: str | None) -> Loaded:
    from tasks.registry import LoadedPyfunc, answers_source_ids

    loaded = LoadedPyfunc(uri)
    if not answers_source_ids(loaded.pyfunc):
        log.warning("%s was registered before served models spoke the source's item ids: the ids it takes and "
                    "returns are the dense ids of its own data window", uri)
    return Loaded(uri, version, loaded)


class ServedModel:
    """The model a server answers with, following the registry alias it was given (if any).

    `models:/<name>@<alias>` is resolved to a version and that version is loaded, so the server
    always knows which version answers; `refresh()` resolves the alias again and switches when it
    moved (module docstring). Any other URI is served as it is, for the life of the process.
    """

    def __init__(self, uri: str, wait: bool = False):
        import mlflow

        from tasks.registry import MODEL_URI

        self.uri = uri
        named = MODEL_URI.match(uri)
        self.alias = (named["name"], named["alias"]) if named and named["alias"] else None
        # The tracking and registry store the CLI pointed MLflow at.
        self.registry_uri = mlflow.get_registry_uri()
        self.client = mlflow.MlflowClient(mlflow.get_tracking_uri(), registry_uri=self.registry_uri)
        # None until the alias names a version (`wait`: a server started before the first run).
        self.current: Loaded | None = None
        if self.alias is None:
            self.current = _load(uri, named["version"] if named else None)
        elif (version := self._resolve(missing_ok=wait)) is not None:
            self.current = self._load_version(version)
        # version -> (why it did not load, tries, when to try again): a version that fails is
        # tried again after 1, 2, 4, ... checks' time, up to an hour, not downloaded every check.
        self.failed: dict[str, tuple[str, int, float]] = {}
        self.switches = 0  # changes of served version, loads that failed, checks that failed (for /metrics)
        self.load_failures = 0
        self.check_failures = 0

    def _resolve(self, missing_ok: bool = False) -> str | None:
        """The version the alias names; None when there is none yet and `missing_ok`."""
        from mlflow.exceptions import MlflowException

        from schemas.errors import mlflow_absent
        from tasks.registry import registered_version

        try:
            return str(registered_version(self.client, self.uri).version)
        except MlflowException as error:  # no such registered model / no version has the alias yet
            if missing_ok and mlflow_absent(error):
                return None
            raise

    def _load_version(self, version: str) -> Loaded:
        return _load(f"models:/{self.alias[0]}/{version}", version)

    def refresh(self, every_s: float = 30.0) -> bool:
        """Switch to the version the alias names now, if it moved; say whether it switched.
        `every_s`: the time between checks, the unit of a failed version's back-off. Registry
        errors propagate (the caller logs them and tries again later). A registry server that does
        not answer is one of them at once (`ServerUnavailable`), not after the MLflow client's own
        retries, which kept a check silent for minutes while the server was down. (Whether this
        client can use the server was asked once, at the start.)"""
        from tasks.servers import check_tracking_server_answers

        if self.alias is None:
            return False
        check_tracking_server_answers(self.registry_uri)
        version = self._resolve(missing_ok=self.current is None)  # (waiting: not there yet is no error)
        if version is None:
            return False
        current = self.current.version if self.current else None
        if version == current:
            self.failed.clear()  # (moved back before a broken version loaded: nothing is pending)
            return False
        _, tries, retry_at = self.failed.get(version, ("", 0, 0.0))
        if time.monotonic() < retry_at:
            return False
        started = time.perf_counter()
        moved = f"moved: version {current} ->" if current else "names"
        log.info("%s %s version %s; loading it", self.uri, moved, version)
        try:
            new = self._load_version(version)
        except Exception as error:  # a broken version must not take the serving one down
            wait = min(every_s * 2**tries, 3600.0)
            self.load_failures += 1
            self.failed[version] = (f"{type(error).__name__}: {error}", tries + 1, time.monotonic() + wait)
            log.warning("%s names version %s, which did not load (%s); still serving version %s; "
                        "trying it again in %.0f s", self.uri, version, self.failed[version][0], current, wait)
            return False
        self.failed.clear()
        old, self.current = self.current, new
        self.switches += 1
        log.info("serving %s version %s (loaded in %.1f s)", self.alias[0], version, time.perf_counter() - started)
        if old is not None:
            old.close()  # after the requests it holds are answered
        return True

    def close(self) -> None:
        if self.current is not None:
            self.current.close()


class NothingServed(RuntimeError):
    """Waiting for the alias to name a version: no model to answer with yet (HTTP 503)."""


def create_app(model_uri: str, follow_every_s: float = 30.0, wait: bool = False):
    """The FastAPI app serving `model_uri` (a pyfunc logged by tasks/registry/registration.py); an alias URI is
    checked every `follow_every_s` seconds (0: never) and followed (module docstring). `wait`: an
    alias that names no version yet is waited for (503 until then) instead of an error."""
    import mlflow
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, Response
    from starlette.concurrency import run_in_threadpool

    from cft_cli.server_metrics import ServerMetrics

    served = ServedModel(model_uri, wait)
    metrics = ServerMetrics(served)
    waiting = f"nothing to serve yet: no version is {model_uri} (the first pipeline run registers one)"

    async def follow() -> None:
        while True:
            await asyncio.sleep(follow_every_s)
            try:
                await run_in_threadpool(served.refresh, follow_every_s)
            except Exception as error:  # the registry is unreachable, the alias was deleted, ...
                served.check_failures += 1
                log.warning("could not check %s (%s: %s); still serving version %s", model_uri,
                            type(error).__name__, error, served.current.version if served.current else None)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        task = asyncio.create_task(follow()) if served.alias and follow_every_s > 0 else None
        yield
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        served.close()

    app = FastAPI(title="cft recommender", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.served = served
    app.state.metrics = metrics

    async def read_json(request: Request) -> dict:
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            raise RequestError(413, "REQUEST_TOO_LARGE", f"the body has {len(body):,} bytes; at most {MAX_BODY_BYTES:,}")
        try:
            parsed = json.loads(body.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise RequestError(415, "INVALID_PARAMETER_VALUE", f"the body is not UTF-8 (byte {e.start})") from None
        except json.JSONDecodeError as e:
            raise RequestError(400, "INVALID_PARAMETER_VALUE",
                               f"the body is not JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
        if not isinstance(parsed, dict):
            raise RequestError(400, "INVALID_PARAMETER_VALUE", "the body must be a JSON object")
        return parsed

    async def recommend(endpoint: str, histories: list, params: dict,
                        exclude: list | None = None) -> tuple[list[dict], Loaded]:
        """One answer per history (`exclude`: per history, items never returned), and the model
        that gave them."""
        recs, now = await ranked(histories, params, exclude)
        metrics.answered(endpoint, histories, recs)
        return recs, now

    async def ranked(histories: list, params: dict, exclude: list | None) -> tuple[list[dict], Loaded]:
        for _ in range(3):  # a model replaced between reading it and queuing: ask the new one
            now = served.current
            if now is None:
                raise NothingServed(waiting)
            p = RequestParams.parse(params, now.model.default_k)
            if now.batching is None:
                import pandas as pd

                columns = {"history": histories} if exclude is None else {"history": histories, "exclude": exclude}
                frame = await run_in_threadpool(now.model.predict, None, pd.DataFrame(columns),
                                                {"k": p.k, "exclude_history": p.exclude_history, "free_text": p.free_text})
                return frame.to_dict(orient="records"), now
            try:  # (in a thread: resolving and fitting the histories tokenises them, up to 1 MB of text)
                future = await run_in_threadpool(now.batching.submit, histories, p.k, p.exclude_history,
                                                 p.free_text, exclude)
            except Retired:
                continue
            return [asdict(r) for r in await asyncio.wrap_future(future)], now
        raise Overloaded("the model is being replaced; retry in a few seconds")

    async def answer(endpoint: str, handler, request: Request) -> JSONResponse:
        started = time.perf_counter()
        response = await answer_of(handler, request)
        metrics.observe(endpoint, response.status_code, time.perf_counter() - started)
        return response

    async def answer_of(handler, request: Request) -> JSONResponse:
        try:
            body, now = await handler(await read_json(request))
            return JSONResponse(body, headers={"X-Model-Version": now.version} if now.version else None)
        except RequestError as e:
            return JSONResponse({"error_code": e.code, "message": e.message}, status_code=e.status)
        except InputError as e:
            return JSONResponse({"error_code": "INVALID_PARAMETER_VALUE", "message": str(e)}, status_code=400)
        except (Overloaded, NothingServed) as e:
            return JSONResponse({"error_code": "TEMPORARILY_UNAVAILABLE", "message": str(e)}, status_code=503,
                                headers={"Retry-After": "5"})
        except mlflow.exceptions.MlflowException as e:  # the popularity model's input errors
            return JSONResponse({"error_code": e.error_code, "message": e.message}, status_code=e.get_http_status_code())
        except Exception:
            log.exception("internal error answering %s", request.url.path)
            return JSONResponse({"error_code": "INTERNAL_ERROR", "message": "internal error; see the server log"},
                                status_code=500)

    async def one_user(body: dict) -> tuple[dict, Loaded]:
        if "history" not in body:
            raise InputError("the body needs a `history`: a list of titles or item ids, oldest first")
        exclude = [body["exclude"]] if "exclude" in body else None
        (rec,), now = await recommend("/recommend", [body["history"]], {k: v for k, v in body.items() if k not in ("history", "exclude")},
                                      exclude)
        return rec, now

    async def invocations(body: dict) -> tuple[dict, Loaded]:
        unknown = sorted(set(body) - {"dataframe_records", "dataframe_split", "inputs", "params"})
        if unknown:
            raise InputError(f"unknown field(s) {', '.join(unknown)}")
        histories, exclude = _columns_of(body)
        recs, now = await recommend("/invocations", histories, body.get("params") or {}, exclude)
        return {"predictions": recs}, now

    @app.post("/recommend")
    async def recommend_endpoint(request: Request):
        return await answer("/recommend", one_user, request)

    @app.post("/invocations")
    async def invocations_endpoint(request: Request):
        return await answer("/invocations", invocations, request)

    @app.get("/health")
    async def health():
        now = served.current
        if now is None:  # not ready: a load balancer sends no one here yet
            return JSONResponse({"status": "waiting", "model": model_uri, "version": None, "message": waiting,
                                 **({"failed_versions": sorted(served.failed)} if served.failed else {})},
                                status_code=503)
        answer = {"status": "ok", "model": model_uri, "version": now.version, "method": now.method,
                  "catalogue": len(now.model.catalogue)}
        if served.failed:  # the alias names a version that did not load (the log says why)
            answer["failed_versions"] = sorted(served.failed)
        return answer

    @app.get("/metrics")
    async def metrics_endpoint():
        return Response(metrics.exposition(), media_type=metrics.content_type)

    return app


def serve(model_uri: str, host: str, port: int, follow_every_s: float = 30.0, wait: bool = False) -> None:
    """Load the model and answer until interrupted."""
    import uvicorn

    logger = logging.getLogger("cft")  # the switches to a new version, the errors, with their times
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    app = create_app(model_uri, follow_every_s, wait)
    now = app.state.served.current
    follows = f"; following {model_uri} every {follow_every_s:g} s" if app.state.served.alias and follow_every_s else ""
    if now is None:
        log.info("waiting: no version is %s yet (503 until one is)%s", model_uri, follows)
    else:
        log.info("ready: %s (%s)%s", now.uri, now.method, follows)
    uvicorn.run(app, host=host, port=port, log_level="warning")
