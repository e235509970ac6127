"""Serving benchmark: latency and throughput of the served recommender under concurrent users.

    python -m benchmarks.serving                    # the demo's model, `cft serve` and `mlflow models serve`
    python -m benchmarks.serving --servers cft --rounds 5

What it does: takes the model the demo trains (`configs/demo.yaml`; trained first when missing,
reused otherwise), logs it as the registered pyfunc with this checkout's code into a throw-away
MLflow store, and starts each server on 127.0.0.1 as a user would (`cft serve`, and MLflow's own
`mlflow models serve --env-manager local`). Clients are threads, each sending one real history
(the demo's test split, fixed seed) per request and waiting for the answer (k = 10, 60 s client
timeout). Concurrency levels 1, 4 and 16 are interleaved (round 1: 1, 4, 16 on every server;
round 2: the same ...), so a change of load on the machine hits all variants alike; each ratio is
reported as the median of the per-round ratios with their range.

Results: benchmarks/results/serving.json (every request's latency and outcome) and the table
printed at the end (docs/serving.md). Targets (issue 15): at 16 concurrent users no request
fails within 60 s, and throughput is at least 2.5x the one-at-a-time throughput.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from benchmarks.provenance import machine

RESULTS = Path(__file__).parent / "results" / "serving.json"
CLIENT_TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def served_model(config: Path, store: Path) -> tuple[str, list[list[str]], object]:
    """(model URI in a fresh store at `store`, test histories as titles, config)."""
    import pandas as pd
    from mlflow import MlflowClient

    from schemas.config import load_config
    from tasks.chain import train_model
    from tasks.data import prepare
    from tasks.registry import log_recommender

    cfg = load_config(config)
    _, sequences, _ = prepare(cfg.data)
    trained = train_model(cfg, sequences)  # reused when the demo ran before
    uri = f"sqlite:///{store / 'mlflow.db'}"
    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment("serving-benchmark", artifact_location=str(store / "artifacts")))
    model_uri = log_recommender(cfg, run.info.run_id, trained.model_dir, sequences.path, uri)
    test = pd.read_parquet(sequences.path / "test.parquet")
    histories = [list(h) for h in test.sample(frac=1.0, random_state=0)["history_titles"]]
    return model_uri, histories, cfg


def start_server(kind: str, model_uri: str, store: Path, port: int, log: Path) -> subprocess.Popen:
    # Not the distributed variables training set in this process; the venv's bin for `uvicorn`.
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE",
                                                             "MASTER_ADDR", "MASTER_PORT")}
    env |= {"MLFLOW_TRACKING_URI": f"sqlite:///{store / 'mlflow.db'}",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"}
    if kind == "cft":
        cmd = [sys.executable, "-m", "cft_cli", "serve", "--model", model_uri, "--port", str(port),
               "--set", f"tracking.tracking_uri=sqlite:///{store / 'mlflow.db'}"]
    else:
        cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local",
               "-h", "127.0.0.1", "-p", str(port)]
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)


def wait_ready(url: str, server: subprocess.Popen, log: Path, timeout: float = 300.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"server exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(f"{url}/health", timeout=5).read()
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(1.0)
    raise RuntimeError(f"server at {url} not ready after {timeout:.0f} s")


def ask(url: str, history: list[str], k: int) -> tuple[float, int]:
    """(seconds, HTTP status; 0 for a client timeout or connection error) of one request."""
    body = json.dumps({"dataframe_records": [{"history": history}], "params": {"k": k}}).encode()
    request = urllib.request.Request(f"{url}/invocations", data=body, headers={"Content-Type": "application/json"})
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=CLIENT_TIMEOUT_S) as r:
            r.read()
            status = r.status
    except urllib.error.HTTPError as e:
        status = e.code
    except (urllib.error.URLError, TimeoutError, ConnectionError):
        status = 0
    return time.perf_counter() - started, status


def burst(url: str, histories: list[list[str]], concurrency: int, requests: int, k: int) -> dict:
    """`concurrency` users, each sending its next request as soon as the last is answered, until
    `requests` are answered; latencies, statuses and wall time."""
    queue = list(range(requests))
    lock, results = threading.Lock(), []

    def user():
        while True:
            with lock:
                if not queue:
                    return
                i = queue.pop()
            results.append(ask(url, histories[i % len(histories)], k))

    started = time.perf_counter()
    users = [threading.Thread(target=user) for _ in range(concurrency)]
    for u in users:
        u.start()
    for u in users:
        u.join()
    wall = time.perf_counter() - started
    latencies = sorted(s for s, _ in results)
    ok = sum(status == 200 for _, status in results)
    return {"concurrency": concurrency, "requests": requests, "ok": ok, "wall_s": wall, "rps": ok / wall,
            "p50_s": statistics.median(latencies), "p95_s": latencies[max(0, round(0.95 * len(latencies)) - 1)],
            "statuses": sorted({status for _, status in results}), "latencies_s": latencies}


def summarise(runs: list[dict], servers: list[str], levels: list[int]) -> list[dict]:
    rows = []
    for server in servers:
        for c in levels:
            mine = [r for r in runs if r["server"] == server and r["concurrency"] == c]
            single = {r["round"]: r["rps"] for r in runs if r["server"] == server and r["concurrency"] == 1}
            ratios = [r["rps"] / single[r["round"]] for r in mine if single.get(r["round"])]
            latencies = sorted(s for r in mine for s in r["latencies_s"])
            rows.append({"server": server, "concurrency": c, "requests": sum(r["requests"] for r in mine),
                         "failed": sum(r["requests"] - r["ok"] for r in mine),
                         "p50_s": statistics.median(latencies),
                         "p95_s": latencies[max(0, round(0.95 * len(latencies)) - 1)],
                         "rps": statistics.median(r["rps"] for r in mine),
                         "speedup_median": statistics.median(ratios), "speedup_min": min(ratios),
                         "speedup_max": max(ratios)})
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| server | users | requests | failed | p50 (s) | p95 (s) | req/s | vs 1 user (median, range) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['server']} | {r['concurrency']} | {r['requests']} | {r['failed']} | {r['p50_s']:.2f} | "
                     f"{r['p95_s']:.2f} | {r['rps']:.2f} | {r['speedup_median']:.2f}x "
                     f"({r['speedup_min']:.2f}-{r['speedup_max']:.2f}) |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=Path("configs/demo.yaml"))
    ap.add_argument("--servers", default="cft,mlflow", help="comma-separated: cft, mlflow")
    ap.add_argument("--levels", default="1,4,16", help="concurrent users, comma-separated")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests-per-user", type=int, default=2, help="requests per user and burst (at least 4 in all)")
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    servers, levels = args.servers.split(","), [int(c) for c in args.levels.split(",")]

    with tempfile.TemporaryDirectory(prefix="cft-serving-") as tmp:
        store = Path(tmp)
        model_uri, histories, cfg = served_model(args.config, store)
        procs, urls = {}, {}
        try:
            for kind in servers:
                port = free_port()
                log = store / f"{kind}.log"
                procs[kind], urls[kind] = start_server(kind, model_uri, store, port, log), f"http://127.0.0.1:{port}"
                wait_ready(urls[kind], procs[kind], log)
            for kind in servers:  # warm-up: first-call costs (trie, caches) are not what users see
                burst(urls[kind], histories, 1, 2, args.k)
            runs = []
            for rnd in range(args.rounds):
                for kind in servers:
                    for c in levels:
                        r = burst(urls[kind], histories, c, max(4, c * args.requests_per_user), args.k)
                        runs.append({"server": kind, "round": rnd, **r})
                        print(f"round {rnd} {kind:6s} users {c:2d}: {r['ok']}/{r['requests']} ok, "
                              f"{r['rps']:.2f} req/s, p50 {r['p50_s']:.2f} s, p95 {r['p95_s']:.2f} s", flush=True)
        finally:
            for p in procs.values():
                p.terminate()
                p.wait(30)
    rows = summarise(runs, servers, levels)
    from dataclasses import asdict

    import torch

    from cft_core.serving import ServingSettings

    meta = {"command": "python -m benchmarks.serving " + " ".join(argv if argv is not None else sys.argv[1:]),
            **machine(),
            "torch_threads": torch.get_num_threads(), "config": str(args.config), "model": cfg.model.source,
            "method": cfg.gate_method(), "num_beams": cfg.eval.num_beams, "k": args.k,
            "serving": asdict(ServingSettings.from_env()), "client_timeout_s": CLIENT_TIMEOUT_S, "rounds": args.rounds}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "summary": rows, "runs": runs}, indent=1))
    print(table(rows))
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()
