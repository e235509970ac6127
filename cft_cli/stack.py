"""`cft stack up|down|status`: a local Prefect server, process worker and MLflow server, and
with `--serve PROFILE` a recommender (`cft serve --wait`) that serves the profile's champion from
the stack's registry as soon as the first run registers one, and each new champion after that.

Everything binds to 127.0.0.1 and keeps its state under `<data_root>/stack/`:

    stack/prefect/      PREFECT_HOME (the server's SQLite database, results of flow runs)
    stack/logs/         one log file per process
    stack/pids.json     the processes `up` started (pid, start, command line): `down` stops those
                        and nothing else; `status` asks each running server whether it answers, and
                        `up` again reuses the running ones on their ports (`running_stack`)
    stack/mlflow-webhook.key
                        the key the MLflow server encrypts webhook secrets with (`webhook_key`)

MLflow serves the same SQLite store that in-process runs (`cft run`) write
(`<data_root>/mlflow/mlflow.db`), so every run shows up in one UI.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path

import psutil

from cft_cli.deploy import PROJECT_ROOT, console_script, deploy_project, prefect_api
from schemas.errors import InputError
from tasks.quiet import QUIET_ENV

POOL = "cft-local"
SERVER_START_S = 120.0  # a Prefect or MLflow server answers within seconds; its first start migrates a database
RECOMMENDER_START_S = 300.0  # loads a champion (a SmolLM2 version: a minute on 2 cores) before it answers
# The stack's servers: the `Stack` field of each one's port, and the option that sets it.
SERVER_PORTS = {"prefect-server": ("prefect_port", "--prefect-port"), "mlflow-server": ("mlflow_port", "--mlflow-port"),
                "recommender": ("serve_port", "--serve-port")}


@dataclass(frozen=True)
class Stack:
    data_root: Path
    host: str = "127.0.0.1"
    prefect_port: int = 4200
    mlflow_port: int = 5000
    serve_port: int = 8080

    @property
    def state(self) -> Path:
        return self.data_root.resolve() / "stack"

    @property
    def pid_file(self) -> Path:
        return self.state / "pids.json"

    @property
    def prefect_api(self) -> str:
        return f"http://{self.host}:{self.prefect_port}/api"

    @property
    def mlflow_uri(self) -> str:
        return f"http://{self.host}:{self.mlflow_port}"

    @property
    def recommender_url(self) -> str:
        return f"http://{self.host}:{self.serve_port}"

    def log_of(self, name: str) -> Path:
        """The log file of the stack's process `name` (its output, from `_spawn`)."""
        return self.state / "logs" / f"{name}.log"

    def url_of(self, name: str) -> str:
        """The address clients use for the server `name` (Prefect's API, not its UI)."""
        return {"prefect-server": self.prefect_api, "mlflow-server": self.mlflow_uri,
                "recommender": self.recommender_url}[name]

    def env(self) -> dict[str, str]:
        """Environment of every stack process and of the commands run against the stack."""
        # Not the caller's torch.distributed rendezvous: each flow run picks its own free port.
        env = {k: v for k, v in os.environ.items()
               if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
        env.update({
            "PREFECT_HOME": str(self.state / "prefect"), "PREFECT_API_URL": self.prefect_api,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
            "MLFLOW_TRACKING_URI": self.mlflow_uri, "MLFLOW_DISABLE_TELEMETRY": "true",
            "HF_HUB_OFFLINE": "1", "GX_ANALYTICS_ENABLED": "false",
        })
        env.setdefault(QUIET_ENV, "1")  # flow runs log into files: quiet unless `cft --verbose` said "0"
        return env


def _wait_http(url: str, timeout: float, proc: subprocess.Popen | psutil.Process, log: Path,
               answers: tuple[int, ...] = (200,)) -> None:
    """Until `url` gives one of `answers` (the process answering); ServerUnavailable naming its
    log when the process ends first or `timeout` passes. `proc`: one just started, or one of the
    stack's that already ran (it may still be starting, or hang)."""
    from schemas.errors import ServerUnavailable

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (proc.poll() is not None) if isinstance(proc, subprocess.Popen) else not proc.is_running():
            code = f" with {proc.returncode}" if isinstance(proc, subprocess.Popen) else ""
            raise ServerUnavailable(f"{url}: the process (pid {proc.pid}) exited{code}; see {log}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:  # noqa: S310 (loopback URL we built)
                if r.status in answers:
                    return
        except urllib.error.HTTPError as e:
            if e.code in answers:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise ServerUnavailable(f"{url} did not answer within {timeout:.0f} s (pid {proc.pid}); see {log}, and stop the "
                            "stack (cft stack down) before starting it again")


def running_stack(data_root: Path, **ports: int | None) -> Stack:
    """The stack under `data_root` with the ports `up` should use: a server of it that runs keeps
    the port it was started on (its command line in pids.json), so `cft stack up` again, with no port
    options, reuses it and prints its addresses (it used to deploy to the default port, where
    nothing listened, and fail with a traceback). A port given (not None) for a server that runs
    on another one is an InputError; for the others, None is the default port."""
    stack = Stack(data_root)
    pids = _read_pids(stack)
    chosen = {}
    for name, (field, option) in SERVER_PORTS.items():
        given = ports.get(field)
        entry = pids.get(name)
        running = _port_of(entry) if _running(pids, name) else None
        if running is not None and given is not None and given != running:
            raise InputError(f"the stack's {name} already runs on port {running} (pid {entry['pid']}): leave "
                             f"{option} out to use it, or stop the stack first (cft stack down --data-root {data_root})")
        chosen[field] = running or given or getattr(stack, field)
    return replace(stack, **chosen)


def _port_of(entry: dict) -> int:
    """The port a recorded server was started on: its command line's `--port` (every server the
    stack starts is given one)."""
    cmd = entry["cmd"]
    return int(cmd[cmd.index("--port") + 1])


def check_listenable(host: str, port: int, option: str) -> None:
    """Raise InputError unless a server could listen on host:port now: checked before a server
    starts, so a taken port or an address not of this machine is the user's error at once (exit
    2), not a traceback in a server's log after a model has loaded. Binds as the servers do
    (SO_REUSEADDR), so a port left in TIME_WAIT by a stopped server counts as free."""
    import errno
    import socket

    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as e:
        raise InputError(f"host {host!r} is not an address ({e.strerror}): choose --host") from None
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(address)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise InputError(f"port {port} is taken by another program: choose {option}") from None
            if e.errno == errno.EADDRNOTAVAIL:
                raise InputError(f"host {host} is not an address of this machine: choose --host") from None
            raise InputError(f"cannot listen on {host}:{port} ({e.strerror}): choose {option}") from None


def check_ports(stack: Stack, serve: bool) -> None:
    """Before `up` starts anything: the port of every server it would start (those of this stack
    not already running) is distinct from the others and free, so a mistake leaves nothing running."""
    pids = _read_pids(stack)
    wanted = {name: (getattr(stack, field), option) for name, (field, option) in SERVER_PORTS.items()
              if serve or name != "recommender"}
    for name, (port, option) in wanted.items():
        same = [other for other_port, other in wanted.values() if other_port == port]
        if len(same) > 1:
            raise InputError(f"port {port} is given to both {same[0]} and {same[1]}")
        if not _running(pids, name):
            check_listenable(stack.host, port, option)


def _spawn(stack: Stack, name: str, cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
    log = stack.log_of(name)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        # Its own process group, so `down` can stop the process and its children together.
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=PROJECT_ROOT,
                                start_new_session=True)


def _record(stack: Stack, name: str, proc: subprocess.Popen) -> None:
    pids = _read_pids(stack)
    process = psutil.Process(proc.pid)
    pids[name] = {"pid": proc.pid, "started_after_boot": _started_after_boot(process),
                  "create_time": process.create_time(), "cmd": proc.args}
    stack.pid_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = stack.pid_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(pids, indent=1))
    tmp.replace(stack.pid_file)


def _read_pids(stack: Stack) -> dict:
    return json.loads(stack.pid_file.read_text()) if stack.pid_file.is_file() else {}


# psutil's create_time is the boot time plus the process's age since boot, and the boot time the
# kernel reports moves when the clock is stepped (NTP, a resumed VM): a server seen again after a
# step counted as stopped, and `cft stack down` would have left it running (seen in the e2e test:
# both servers "stopped" 47 s after they started, while they answered; and `stack up` starting a
# second worker beside a running one). Its age since boot is not moved by a step, and is known to
# the kernel's clock tick (0.01 s).
# The kernel's boot time (/proc/stat btime) is whole seconds of wall time less uptime, so it can move
# by one second between two reads, and psutil fixes a process's create_time with the btime of its
# first read: the same process then seemed to start a second later, and `up` started a second worker
# beside the recorded one (3 of some 25 CI runs). Within 2 s, at the same pid, with the same command.
SAME_START_S = 2.0
CLOCK_STEP_S = 60.0  # (entries recorded before `started_after_boot`: create_time, give or take a step)


def _started_after_boot(proc: psutil.Process) -> float:
    """Seconds from boot to the process's start (create_time less the boot time, each as the
    kernel reports it now: a clock step moves both alike)."""
    return proc.create_time() - psutil.boot_time()


def _alive(entry: dict) -> psutil.Process | None:
    """The recorded process if it still runs and is the same one: a reused pid would run another
    command, or have started at another time."""
    try:
        proc = psutil.Process(entry["pid"])
        command = entry["cmd"]  # argv as spawned; a script's shows after its interpreter
        if "started_after_boot" in entry:
            same_start = abs(_started_after_boot(proc) - entry["started_after_boot"]) < SAME_START_S
        else:
            same_start = abs(proc.create_time() - entry["create_time"]) < CLOCK_STEP_S
        same = same_start and proc.cmdline()[-len(command):] == command
        return proc if same and proc.is_running() else None
    except psutil.Error:
        return None


def _running(pids: dict, name: str) -> psutil.Process | None:
    """The process recorded as `name`, if it still runs (`_alive`)."""
    return _alive(pids[name]) if name in pids else None


WEBHOOK_KEY_ENV = "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY"


def webhook_key(stack: Stack) -> str:
    """The key the stack's MLflow server encrypts webhook secrets with in its store: $WEBHOOK_KEY_ENV
    where set, else `stack/mlflow-webhook.key`, made on first use (a Fernet key, readable by its
    owner only). Without one, the server makes a new key each start, so a webhook registered with a
    secret (to sign its deliveries) could no longer be signed after `cft stack down` and `up`."""
    if key := os.environ.get(WEBHOOK_KEY_ENV):
        return key
    path = stack.state / "mlflow-webhook.key"
    if not path.is_file():
        # (cryptography: MLflow's own dependency, and the key form it reads)
        from cryptography.fernet import Fernet

        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            f.write(Fernet.generate_key().decode())
        try:
            os.link(tmp, path)  # (whole or not at all; a key another `up` made first stays)
        except FileExistsError:
            pass
        except OSError:  # a filesystem without hard links (some FUSE mounts): whole, if not exclusive
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return path.read_text().strip()


# MLflow's job execution (a runner process and a huey consumer of five workers, for its GenAI jobs:
# prompt optimisation, trace roll-ups) is nothing the pipeline uses: without it the MLflow server is 2
# processes in 0.5 GB rather than 10 in 2.0 GB, and answers 6 s sooner (13 s rather than 19.5 s on 2
# cores, 2026-12-07, the two interleaved twice beside a training). Registry webhooks are sent without it. Set to true in the environment, it is kept.
JOB_EXECUTION_ENV = "MLFLOW_SERVER_ENABLE_JOB_EXECUTION"


def start_servers(stack: Stack, say=print) -> None:
    """Prefect server, then MLflow server, each answering before the next step. One that this
    stack already runs is not started again, but waited for all the same: `up` run twice in a
    row finds it still starting, and one that hangs is named here rather than failing `deploy`."""
    store = stack.data_root.resolve() / "mlflow"
    commands = {
        "prefect-server": [console_script("prefect"), "server", "start", "--host", stack.host, "--port", str(stack.prefect_port),
                           "--analytics-off"],
        "mlflow-server": [console_script("mlflow"), "server", "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
                          "--artifacts-destination", str(store / "artifacts"), "--host", stack.host,
                          "--port", str(stack.mlflow_port), "--workers", "1"]}
    labels = {"prefect-server": "Prefect server  ", "mlflow-server": "MLflow server   "}
    pids = _read_pids(stack)
    for name, command in commands.items():
        url, log = stack.url_of(name), stack.log_of(name)
        shown = f"{labels[name]}{url.removesuffix('/api')}"
        if running := _running(pids, name):
            _wait_http(f"{url}/health", SERVER_START_S, running, log)
            say(f"{shown} (already running, pid {running.pid})")
            continue
        env = stack.env()
        if name == "mlflow-server":
            store.mkdir(parents=True, exist_ok=True)
            env[WEBHOOK_KEY_ENV] = webhook_key(stack)  # (the server's alone: no flow run needs it)
            env.setdefault(JOB_EXECUTION_ENV, "false")
        proc = _spawn(stack, name, command, env)
        _record(stack, name, proc)
        _wait_http(f"{url}/health", SERVER_START_S, proc, log)
        say(shown)


def deploy(stack: Stack) -> None:
    """The stack's own work pool (made anew), the promotion concurrency limit, and every
    deployment in prefect.yaml, run in this project folder (`cft_cli.deploy`)."""
    deploy_project(stack.env(), stack.prefect_api, POOL, str(PROJECT_ROOT), replace_pool=True, again="cft stack up")


def start_worker(stack: Stack) -> psutil.Process | None:
    """A process worker on the pool, unless one `up` started still runs: then that one."""
    if running := _running(_read_pids(stack), "worker"):
        return running
    proc = _spawn(stack, "worker", [console_script("prefect"), "worker", "start", "--pool", POOL], stack.env())
    _record(stack, "worker", proc)
    return None


def start_recommender(stack: Stack, profile: Path, follow_every_s: float = 30.0, say=print) -> None:
    """`cft serve --wait` of `profile`'s champion from the stack's registry: 503 until the first
    run registers a champion, then that version, then each new one (cft_cli/server.py)."""
    log = stack.log_of("recommender")
    if running := _running(_read_pids(stack), "recommender"):
        _wait_http(f"{stack.recommender_url}/health", RECOMMENDER_START_S, running, log, answers=(200, 503))
        say(f"Recommender     {stack.recommender_url} (already running, pid {running.pid}: its profile and "
            "--follow-every stay as they were; `cft stack down` first to change them)")
        return
    proc = _spawn(stack, "recommender", [
        console_script("cft"), "serve", "-c", str(profile.resolve()), "--host", stack.host, "--port", str(stack.serve_port),
        "--wait", "--follow-every", f"{follow_every_s:g}"], stack.env())
    _record(stack, "recommender", proc)
    _wait_http(f"{stack.recommender_url}/health", RECOMMENDER_START_S, proc, log, answers=(200, 503))  # 503: waiting
    say(f"Recommender     {stack.recommender_url} (the champion of {profile}; log: {log})")


def down(stack: Stack, timeout: float = 30.0, say=print) -> list[str]:
    """Stop the processes `up` recorded (worker first); returns their names."""
    pids = _read_pids(stack)
    stopped = []
    for name in sorted(pids, key=lambda n: n != "worker"):
        proc = _alive(pids[name])
        if proc is None:
            continue
        # A worker ignores the first SIGTERM (it forwards SIGINT to its runs): send two.
        for _ in range(2 if name == "worker" else 1):
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                break
            time.sleep(0.5)
        try:
            proc.wait(timeout)
        except psutil.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        stopped.append(name)
        say(f"stopped {name} (pid {proc.pid})")
    stack.pid_file.unlink(missing_ok=True)
    return stopped


@dataclass(frozen=True)
class ProcessStatus:
    """One recorded process: whether it runs; for a server, its address and, when it runs, why its
    /health did not answer (None: it answered; a 503 of a recommender waiting for a champion counts)."""

    running: bool
    url: str | None = None  # None: the worker
    no_answer: str | None = None


def status(stack: Stack) -> dict[str, ProcessStatus]:
    """Each process `up` recorded; a running server is asked for its /health (a process can run
    and not serve: still starting, stuck, or its port taken by another program since)."""
    from tasks.servers import no_answer

    out = {}
    for name, entry in _read_pids(stack).items():
        running = _alive(entry) is not None
        if name not in SERVER_PORTS:
            out[name] = ProcessStatus(running)
            continue
        url = replace(stack, **{SERVER_PORTS[name][0]: _port_of(entry)}).url_of(name)
        out[name] = ProcessStatus(running, url, no_answer(url) if running else None)
    return out


# Flow-run states that hold a deployment's concurrency slot (Prefect's ReleaseFlowConcurrencySlots).
IN_FLIGHT = ["PENDING", "RUNNING", "CANCELLING"]


def crash_orphaned_runs(stack: Stack) -> list[str]:
    """Set Crashed the flow runs of the stack's pool that are still in flight (`IN_FLIGHT`) though
    the process running them is gone (their `infrastructure_pid` on this machine): the stack was
    stopped, or the machine went down, while they ran. Returns "name (pid N)" of each.

    Why: such a run keeps its deployment's concurrency slot. The lease that would expire it lives in
    the Prefect server's memory, which a restart loses, so the slot stays taken for good, and every
    later run of a deployment with `concurrency_limit: 1` is cancelled at once: after `cft stack
    down` during a scheduled retrain, every retrain after it was cancelled. Leaving Running for
    Crashed releases the slot (the server decrements the deployment's limit when the lease is gone).
    A run whose pid still exists is left alone (another worker's, or a reused pid: not ours to judge).
    So is a Pending run without a pid (taken by a worker, its process not started yet) while the
    stack's worker runs; with no worker running, nothing will ever start it: it is Crashed too."""
    orphans = []
    worker_runs = _running(_read_pids(stack), "worker") is not None
    in_flight = {"flow_runs": {"state": {"type": {"any_": IN_FLIGHT}}}, "work_pools": {"name": {"any_": [POOL]}}}
    for run in prefect_api(stack.prefect_api, "/flow_runs/filter", in_flight):
        pid = (run.get("infrastructure_pid") or "").rpartition(":")[2]  # "pid", or "host:pid" from older workers
        if not pid and run["state"]["type"] == "PENDING" and not worker_runs:
            said, why = "never started", "the worker that took it stopped before starting its process"
        elif not pid.isdigit() or psutil.pid_exists(int(pid)):
            continue
        else:
            said, why = f"pid {pid}", f"its process (pid {pid}) ended without a word: the stack or the machine stopped " \
                "while it ran"
        prefect_api(stack.prefect_api, f"/flow_runs/{run['id']}/set_state", {"force": True, "state": {
            "type": "CRASHED", "name": "Crashed", "message": why}})
        orphans.append(f"{run['name']} ({said})")
    return orphans
