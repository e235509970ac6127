#!/usr/bin/env bash
# The team stack of compose.yaml, without Docker, on this machine's loopback: PostgreSQL behind an
# MLflow server (artifacts proxied to S3) and a Prefect server, an S3 endpoint (moto's server in
# place of MinIO), a process worker on pool cft-team. MLflow checks who asks (its basic-auth app):
# the worker has an account, alice may promote, bob may only read; Prefect's server asks every
# client for the team's auth string (a client without it is refused in one line). Deploys with `cft deploy`, runs the
# smoke profile through the worker, then reads the registry and recommends from a second folder with
# only the two URLs and an account, as a teammate's machine would: bob is refused a promotion, alice
# promotes and rolls back, and the champion's history names each account. Everything lives in a temporary folder and goes at
# the end. Needs PostgreSQL's server binaries (Debian: postgresql) and PyPI (moto, psycopg2, boto3
# are installed into that folder, not into .venv). Last, a log kept in the bucket as a Spark job
# leaves it (an s3:// source: monthly partitions, `_SUCCESS`, an attempt still in `_temporary/`)
# is prepared, a month's partition lands, and it is prepared again. About 4
# minutes on 2 cores.
#
#   bash infra/team-rehearsal.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PROJECT=$PWD
VENV=$PROJECT/.venv/bin
PG_BIN=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)}
[ -x "$PG_BIN/initdb" ] || { echo "error: PostgreSQL's server binaries not found (set PG_BIN)" >&2; exit 2; }
WORK=$(mktemp -d /tmp/cft-team.XXXXXX)
chmod 755 "$WORK"
free_port() { "$VENV/python" -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"; }
PG_PORT=$(free_port) S3_PORT=$(free_port) MLFLOW_PORT=$(free_port) PREFECT_PORT=$(free_port)
PIDS=()
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }  # initdb refuses root
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  sleep 3  # a Prefect worker may outlive SIGTERM: then it goes by SIGKILL
  for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  as_pg "$PG_BIN/pg_ctl" -D "$WORK/pg" -m fast stop >/dev/null 2>&1 || true
  sleep 1; rm -rf "$WORK"
}
trap cleanup EXIT
step() { echo "== $*"; }
wait_http() { for _ in $(seq 120); do curl -fs "$1" >/dev/null 2>&1 && return 0; sleep 1; done; echo "error: $1 did not answer" >&2; exit 1; }

step "PostgreSQL on 127.0.0.1:$PG_PORT, databases mlflow and prefect"
[ "$(id -u)" = 0 ] && chown postgres "$WORK"
as_pg "$PG_BIN/initdb" -D "$WORK/pg" -U cft --auth=trust >/dev/null
as_pg "$PG_BIN/pg_ctl" -D "$WORK/pg" -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $WORK" -l "$WORK/pg.log" start >/dev/null
psql -q -h 127.0.0.1 -p "$PG_PORT" -U cft -d postgres -c "CREATE DATABASE mlflow" -c "CREATE DATABASE mlflow_auth" \
  -c "CREATE DATABASE prefect"

step "S3 endpoint (moto) on 127.0.0.1:$S3_PORT; server-side drivers into $WORK"
python3 -m venv "$WORK/s3env"
"$WORK/s3env/bin/pip" install -q "moto[server]" >"$WORK/pip.log" 2>&1 || { tail -n 20 "$WORK/pip.log"; exit 1; }
"$VENV/pip" install -q --target "$WORK/pylibs" psycopg2-binary boto3 >>"$WORK/pip.log" 2>&1 || { tail -n 20 "$WORK/pip.log"; exit 1; }
export AWS_ACCESS_KEY_ID=cft AWS_SECRET_ACCESS_KEY=rehearsal AWS_DEFAULT_REGION=us-east-1
"$WORK/s3env/bin/moto_server" -H 127.0.0.1 -p "$S3_PORT" >"$WORK/s3.log" 2>&1 & PIDS+=($!)
wait_http "http://127.0.0.1:$S3_PORT/"
"$WORK/s3env/bin/python" -c "import boto3; boto3.client('s3', endpoint_url='http://127.0.0.1:$S3_PORT').create_bucket(Bucket='mlflow')"

step "MLflow server with users on 127.0.0.1:$MLFLOW_PORT (compose.yaml's flags), Prefect server on 127.0.0.1:$PREFECT_PORT"
WEBHOOK_KEY=$("$VENV/python" -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())")
ADMIN_PASSWORD=admin-$RANDOM$RANDOM WORKER_PASSWORD=worker-$RANDOM$RANDOM PREFECT_AUTH=cft:prefect-$RANDOM$RANDOM
sed "s#POSTGRES_USER:POSTGRES_PASSWORD@postgres/#cft@127.0.0.1:$PG_PORT/#" "$PROJECT/infra/mlflow-auth.ini" >"$WORK/mlflow-auth.ini"
PYTHONPATH=$WORK/pylibs MLFLOW_S3_ENDPOINT_URL=http://127.0.0.1:$S3_PORT MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY=$WEBHOOK_KEY MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false \
  MLFLOW_AUTH_CONFIG_PATH=$WORK/mlflow-auth.ini MLFLOW_AUTH_ADMIN_PASSWORD=$ADMIN_PASSWORD \
  MLFLOW_FLASK_SERVER_SECRET_KEY=rehearsal-$RANDOM "$VENV/mlflow" server --app-name basic-auth \
  --backend-store-uri "postgresql+psycopg2://cft@127.0.0.1:$PG_PORT/mlflow" --artifacts-destination s3://mlflow \
  --host 127.0.0.1 --port "$MLFLOW_PORT" --allowed-hosts "localhost:*,127.0.0.1:*,mlflow:*" >"$WORK/mlflow.log" 2>&1 & PIDS+=($!)
PREFECT_HOME=$WORK/prefect PREFECT_API_DATABASE_CONNECTION_URL="postgresql+asyncpg://cft@127.0.0.1:$PG_PORT/prefect" \
  PREFECT_SERVER_API_AUTH_STRING=$PREFECT_AUTH "$VENV/prefect" server start --host 127.0.0.1 --port "$PREFECT_PORT" --analytics-off >"$WORK/prefect.log" 2>&1 & PIDS+=($!)
wait_http "http://127.0.0.1:$MLFLOW_PORT/health"
wait_http "http://127.0.0.1:$PREFECT_PORT/api/health"
# compose.yaml's mlflow-accounts: the worker's account; and two people's, as an admin adds them.
accounts() { MLFLOW_TRACKING_USERNAME=admin MLFLOW_TRACKING_PASSWORD=$ADMIN_PASSWORD "$VENV/python" "$PROJECT/infra/mlflow_accounts.py" \
  "http://127.0.0.1:$MLFLOW_PORT" "$@"; }
accounts user cft-worker "$WORKER_PASSWORD"
accounts user alice alice-rehearsal
accounts user bob bob-rehearsal

# From here on, the clients hold no S3 credentials: the MLflow server proxies the artifacts.
unset AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY
export PREFECT_API_URL=http://127.0.0.1:$PREFECT_PORT/api MLFLOW_TRACKING_URI=http://127.0.0.1:$MLFLOW_PORT
export PREFECT_HOME=$WORK/client HF_HUB_OFFLINE=1 MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=1
export PREFECT_API_AUTH_STRING=$PREFECT_AUTH  # compose.yaml's PREFECT_AUTH_STRING, which every client sends

step "cft deploy --pool cft-team; a process worker on it"
"$VENV/cft" deploy --pool cft-team --project-dir "$PROJECT"
"$VENV/prefect" automation inspect "cft: crash runs that stopped answering" --json | grep -q '"posture": "Proactive"' \
  || { echo "no automation for runs whose machine is lost (cft_cli/unresponsive.py)"; exit 1; }
USER=cft CFT_QUIET=1 MLFLOW_TRACKING_USERNAME=cft-worker MLFLOW_TRACKING_PASSWORD=$WORKER_PASSWORD \
  "$VENV/prefect" worker start --pool cft-team >"$WORK/worker.log" 2>&1 & PIDS+=($!)

step "prefect deployment run cft/full-pipeline (smoke profile, data root $WORK/data)"
"$VENV/prefect" deployment run cft/full-pipeline --param profile=configs/smoke.yaml \
  --params "{\"overrides\": {\"data.data_root\": \"$WORK/data\"}}" --watch --watch-timeout 900 | tail -n 1 || true
grep -q "Flow run '.*' - Finished in state Completed()" "$WORK/worker.log" || { tail -n 40 "$WORK/worker.log"; exit 1; }

step "a teammate's machine: another folder, the two URLs and an account only"
mkdir "$WORK/laptop" && cd "$WORK/laptop"
as() { local who=$1; shift; MLFLOW_TRACKING_USERNAME=$who MLFLOW_TRACKING_PASSWORD=$who-rehearsal "$VENV/cft" "$@" \
  -c "$PROJECT/configs/smoke.yaml" --set "data.data_root=$WORK/laptop/data"; }
as bob versions
as bob recommend -k 5 "Star Wars (1977)" "Fargo (1996)"
if as bob promote --version 3 --reason "not bob's to do" 2>"$WORK/refused.log"; then
  echo "error: bob, who may only read, promoted" >&2; exit 1; fi
cat "$WORK/refused.log"; grep -q "denied user 'bob'" "$WORK/refused.log"
if PREFECT_API_AUTH_STRING= as alice promote --version 3 --reason "no Prefect credentials" 2>"$WORK/refused.log"; then
  echo "error: a promotion went ahead without the Prefect server's credentials" >&2; exit 1; fi
cat "$WORK/refused.log"; grep -q "Prefect server at .* asks for credentials" "$WORK/refused.log"
accounts grant alice registered_model cft-ml-100k-smoke EDIT
as alice promote --version 3 --reason "rehearsal: promoted from a laptop, through the server's cft-promotion limit"
as alice rollback --reason "rehearsal: undone"
MLFLOW_TRACKING_USERNAME=bob MLFLOW_TRACKING_PASSWORD=bob-rehearsal "$VENV/python" - "$MLFLOW_TRACKING_URI" <<'EOF'
import sys
from mlflow import MlflowClient
from tasks.registry import champion_history
client = MlflowClient(sys.argv[1])
versions = client.search_model_versions("name='cft-ml-100k-smoke'")
locations = {client.get_logged_model(v.source.removeprefix("models:/")).artifact_location for v in versions}
assert len(versions) == 3 and all(loc.startswith("mlflow-artifacts:/") for loc in locations), locations
print(f"{len(versions)} versions, their models behind the server's proxy (mlflow-artifacts:/ -> s3://mlflow)")
history = champion_history(client.get_registered_model("cft-ml-100k-smoke"))
assert [(h["action"], h["by"]) for h in history][-2:] == [("promote", "alice"), ("rollback", "alice")], history
assert {h["by"] for h in history if h["action"] == "gate"} == {"cft-worker"}, history
print("champion history names the accounts:", ", ".join(f"{h['action']} by {h['by']}" for h in history))
EOF
step "a log in the bucket: ML-100K as Spark's monthly CSV partitions under s3://logs/orders/, April's later"
cd "$PROJECT"
"$VENV/python" - "$WORK/parts" <<'PY'
import sys
from pathlib import Path

import pandas as pd

from tasks import readers

out = Path(sys.argv[1])
out.mkdir()
inter, items = readers.read_recbole(readers.recbole_package_folder())
for month, part in inter.groupby(pd.to_datetime(inter["timestamp"], unit="s").dt.strftime("%Y-%m")):
    part.to_csv(out / f"orders-{month}.csv", index=False)
items.to_csv(out / "products.csv", index=False)
(out / "attempt.csv").write_text("user_id,item_id,timestamp\n1,1,not yet\n")  # a task's output before its commit
PY
s3() { "$WORK/s3env/bin/python" -c "import boto3, sys; c = boto3.client('s3', endpoint_url='http://127.0.0.1:$S3_PORT',
aws_access_key_id='cft', aws_secret_access_key='rehearsal', region_name='us-east-1')
c.create_bucket(Bucket='logs') if sys.argv[1] == 'mb' else c.upload_file(sys.argv[2], 'logs', sys.argv[3])" "$@"; }
s3 mb
month() { basename "$1" .csv | sed 's/^orders-//'; }
for f in "$WORK"/parts/orders-*.csv; do [[ $f == *1998-04.csv ]] || s3 put "$f" "orders/month=$(month "$f")/part-00000.csv"; done
s3 put "$WORK/parts/attempt.csv" orders/_temporary/0/_temporary/attempt_0/month=1998-05/part-00000.csv
s3 put "$WORK/parts/attempt.csv" orders/_SUCCESS
s3 put "$WORK/parts/products.csv" catalog/products.csv
cat >"$WORK/bucket.yaml" <<YAML
extends: $PROJECT/configs/smoke.yaml
data:
  name: bucket-log
  data_root: $WORK/bucket-data
  source: {format: generic, path: "s3://logs/orders/", items_path: "s3://logs/catalog/products.csv"}
YAML
prepare() {
  AWS_ENDPOINT_URL=http://127.0.0.1:$S3_PORT AWS_ACCESS_KEY_ID=cft AWS_SECRET_ACCESS_KEY=rehearsal AWS_DEFAULT_REGION=us-east-1 \
    "$VENV/cft" data prepare -c "$WORK/bucket.yaml" >"$WORK/prepare.log" 2>&1 || { tail -n 20 "$WORK/prepare.log"; exit 1; }
  grep "^ingested:" "$WORK/prepare.log"
}
before=$(prepare); echo "$before"
s3 put "$WORK/parts/orders-1998-04.csv" orders/month=1998-04/part-00000.csv
after=$(prepare); echo "$after   <- after April's partition landed"
[[ "$after" != "$before" && "$after" != *"(reused)" ]] || { echo "error: the new part made no new ingest" >&2; exit 1; }
again=$(prepare); echo "$again   <- the bucket unchanged"
[[ "$again" == "$after (reused)" ]] || { echo "error: an unchanged bucket did not reuse the ingest" >&2; exit 1; }
step "team rehearsal passed"
