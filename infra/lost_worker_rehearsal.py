"""A worker's machine lost in the middle of a run, rehearsed on the local stack with the settings
a team gets: `cft stack up` (servers, deployments, the automation of cft_cli/unresponsive.py, a
worker), `cft alerts` pointed at a receiver on 127.0.0.1, a smoke run through the worker; once the
run is Running and has sent a heartbeat, the worker and the run's process are killed (SIGKILL:
nothing reports anything, as when the machine goes). The automation must set the run Crashed
four missed heartbeats later (prefect.yaml: one a minute), and the alert must reach the receiver.
Everything lives in a temporary folder, which goes at the end. About 6 minutes, most of it the wait.

    .venv/bin/python infra/lost_worker_rehearsal.py
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import psutil

PROJECT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
WAIT_S = 420  # four beats of a minute, the server's next look, and room for a slow machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def receiver() -> tuple[str, list[str]]:
    """An endpoint on 127.0.0.1 that keeps the texts POSTed to it."""
    texts: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            texts.append(json.loads(self.rfile.read(int(self.headers["Content-Length"])))["text"])
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_port}/alerts", texts


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="cft-lost-worker-"))
    data_root, prefect_port = work / "data", free_port()
    api = f"http://127.0.0.1:{prefect_port}/api"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PREFECT_API_URL": api}

    def cft(*args: str) -> str:
        res = subprocess.run([str(BIN / "cft"), *args], env=env, cwd=PROJECT, capture_output=True, text=True)
        assert res.returncode == 0, res.stdout + res.stderr
        return res.stdout

    def call(path: str, body: dict | None = None):
        req = urllib.request.Request(api + path, method="POST" if body is not None else "GET",
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:  # noqa: S310 (loopback)
            return json.loads(r.read())

    try:
        print(f"== cft stack up (Prefect on {prefect_port}), cft alerts to a receiver")
        cft("stack", "up", "--data-root", str(data_root), "--prefect-port", str(prefect_port),
            "--mlflow-port", str(free_port()))
        url, texts = receiver()
        cft("alerts", url)
        print("== a smoke run through the worker")
        params = {"profile": "configs/smoke.yaml", "overrides": {"data.data_root": str(data_root)}}
        started = subprocess.run([str(BIN / "prefect"), "deployment", "run", "cft/full-pipeline", "--params",
                                  json.dumps(params)], env=env, cwd=PROJECT, capture_output=True, text=True)
        run_id = re.search(r"UUID:\s*([0-9a-f-]{36})", started.stdout).group(1)
        beats = {"filter": {"event": {"name": ["prefect.flow-run.heartbeat"]},
                            "resource": {"id": [f"prefect.flow-run.{run_id}"]}}}
        deadline = time.monotonic() + 180
        while not (call(f"/flow_runs/{run_id}")["state"]["type"] == "RUNNING" and call("/events/filter", beats)["events"]):
            assert time.monotonic() < deadline, call(f"/flow_runs/{run_id}")["state"]
            time.sleep(1)
        worker = psutil.Process(json.loads((data_root / "stack" / "pids.json").read_text())["worker"]["pid"])
        lost = [worker, *worker.children(recursive=True)]
        beating = {p.environ().get("PREFECT_FLOWS_HEARTBEAT_FREQUENCY") for p in lost[1:]}
        assert beating == {"60"}, f"the run's processes beat every {beating} s, not prefect.yaml's 60"
        print(f"== the machine lost: SIGKILL to {', '.join(f'{p.pid} ({p.name()})' for p in lost)}")
        for process in lost:
            process.kill()
        killed = time.monotonic()
        while (state := call(f"/flow_runs/{run_id}")["state"])["type"] != "CRASHED":
            assert time.monotonic() - killed < WAIT_S, f"still {state['type']} {WAIT_S} s after the kill"
            time.sleep(5)
        print(f"== Crashed {time.monotonic() - killed:.0f} s after the kill: {state['message']}")
        deadline = time.monotonic() + 60
        while not [t for t in texts if " Crashed: no heartbeat" in t] and time.monotonic() < deadline:
            time.sleep(1)
        (alert,) = [t for t in texts if " Crashed: no heartbeat" in t]
        print(f"== the alert: {alert}")
        print("== lost-worker rehearsal passed")
    finally:
        subprocess.run([str(BIN / "cft"), "stack", "down", "--data-root", str(data_root)], env=env, cwd=PROJECT,
                       capture_output=True, text=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
