"""`cft serve`: an HTTP server for a registered model, built for many users at once.

`mlflow models serve` works with our models too, but it runs every request in a thread of a
small pool (min(32, cores + 4): 6 on 2 cores), so requests beyond it wait unseen until they time
out. Here a request costs no thread while it waits: the handler queues it on the model's
`BatchingRecommender` (cft_core/serving.py), which ranks what is waiting in shared generation
calls, and awaits the answer. The queue is bounded: when it is full the answer is 503 with
Retry-After, at once.

Endpoints (JSON, UTF-8):
  POST /recommend    {"history": [...], "k": 10, "exclude_history": true, "free_text": false}
                     -> {"item_ids": [...], "titles": [...], "scores": [...], "unmatched": [...]}
  POST /invocations  MLflow's scoring format, so clients of `mlflow models serve` work unchanged:
                     {"dataframe_records": [{"history": [...]}, ...]} (or "dataframe_split", or
                     "inputs": {"history": [[...], ...]}), optional "params"
                     -> {"predictions": [{"item_ids": ..., "titles": ..., ...}, ...]}
  GET  /health       {"status": "ok", "model": <uri>, "method": ..., "catalogue": <items>}

Mistakes in a request get 400 (or 415 for a body that is not UTF-8 JSON, 413 for one over 1 MB)
with {"error_code", "message"} naming the problem; an internal error gets 500 with a short message
and its traceback goes to the server log only: no stack trace or server path reaches a client.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import asdict

from fastapi import Request  # at module level: FastAPI reads the handlers' annotations by name

from cft_core.ranking import InputError
from cft_core.serving import Overloaded, RequestParams

log = logging.getLogger("cft.serve")
MAX_BODY_BYTES = 1 << 20  # 1 MB: thousands of histories; anything larger is a mistake


class RequestError(Exception):
    """An HTTP error answer: status, MLflow-style error code, message."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _histories_of(body: dict) -> list:
    """The histories of an /invocations body, in any of MLflow's JSON forms."""
    if "dataframe_records" in body:
        records = body["dataframe_records"]
        if not isinstance(records, list) or not all(isinstance(r, dict) and "history" in r for r in records):
            raise InputError("dataframe_records must be a list of objects with a `history` field")
        return [r["history"] for r in records]
    if "dataframe_split" in body:
        split = body["dataframe_split"]
        if not isinstance(split, dict) or "history" not in split.get("columns", []):
            raise InputError("dataframe_split needs `columns` with `history` and `data`")
        column = split["columns"].index("history")
        return [row[column] for row in split.get("data", [])]
    if "inputs" in body:
        inputs = body["inputs"]
        if isinstance(inputs, dict) and "history" in inputs:
            return list(inputs["history"])
        if isinstance(inputs, list) and all(isinstance(r, dict) and "history" in r for r in inputs):
            return [r["history"] for r in inputs]
        raise InputError("inputs must be {\"history\": [[...], ...]} or a list of {\"history\": [...]}")
    raise InputError("the body needs one of dataframe_records, dataframe_split or inputs")


def create_app(model_uri: str):
    """The FastAPI app serving `model_uri` (a pyfunc logged by tasks/registry.py)."""
    import mlflow
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse
    from starlette.concurrency import run_in_threadpool

    pyfunc = mlflow.pyfunc.load_model(model_uri)
    model = pyfunc.unwrap_python_model()
    batching = getattr(model, "recommender", None)  # the LLM recommender; popularity answers at once
    catalogue = model.catalogue
    method = batching.ranker.settings.method if batching is not None else "popularity"
    app = FastAPI(title="cft recommender", docs_url=None, redoc_url=None)
    app.state.model = model

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

    async def recommend(histories: list, params: dict) -> list[dict]:
        p = RequestParams.parse(params, model.default_k)
        if batching is not None:
            recs = await asyncio.wrap_future(batching.submit(histories, p.k, p.exclude_history, p.free_text))
        else:
            import pandas as pd

            frame = await run_in_threadpool(model.predict, None, pd.DataFrame({"history": histories}),
                                            {"k": p.k, "exclude_history": p.exclude_history, "free_text": p.free_text})
            return frame.to_dict(orient="records")
        return [asdict(r) for r in recs]

    async def answer(handler, request: Request) -> JSONResponse:
        try:
            return JSONResponse(await handler(await read_json(request)))
        except RequestError as e:
            return JSONResponse({"error_code": e.code, "message": e.message}, status_code=e.status)
        except InputError as e:
            return JSONResponse({"error_code": "INVALID_PARAMETER_VALUE", "message": str(e)}, status_code=400)
        except Overloaded as e:
            return JSONResponse({"error_code": "TEMPORARILY_UNAVAILABLE", "message": str(e)}, status_code=503,
                                headers={"Retry-After": "5"})
        except mlflow.exceptions.MlflowException as e:  # the popularity model's input errors
            return JSONResponse({"error_code": e.error_code, "message": e.message}, status_code=e.get_http_status_code())
        except Exception:
            log.exception("internal error answering %s", request.url.path)
            return JSONResponse({"error_code": "INTERNAL_ERROR", "message": "internal error; see the server log"},
                                status_code=500)

    async def one_user(body: dict) -> dict:
        if "history" not in body:
            raise InputError("the body needs a `history`: a list of titles or item ids, oldest first")
        (rec,) = await recommend([body["history"]], {k: v for k, v in body.items() if k != "history"})
        return rec

    async def invocations(body: dict) -> dict:
        unknown = sorted(set(body) - {"dataframe_records", "dataframe_split", "inputs", "params"})
        if unknown:
            raise InputError(f"unknown field(s) {', '.join(unknown)}")
        return {"predictions": await recommend(_histories_of(body), body.get("params") or {})}

    @app.post("/recommend")
    async def recommend_endpoint(request: Request):
        return await answer(one_user, request)

    @app.post("/invocations")
    async def invocations_endpoint(request: Request):
        return await answer(invocations, request)

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_uri, "method": method, "catalogue": len(catalogue)}

    return app


def serve(model_uri: str, host: str, port: int) -> None:
    """Load the model and answer until interrupted."""
    import uvicorn

    app = create_app(model_uri)
    log.info("serving %s on http://%s:%d", model_uri, host, port)
    uvicorn.run(app, host=host, port=port, log_level="warning")
