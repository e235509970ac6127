#!/usr/bin/env bash
# ML-100K written by Apache Spark itself in five data-lake layouts (partitioned Parquet with native
# timestamps, partitioned CSV, gzipped JSON lines with a nested item, a headerless CSV, partitions
# by the hour with escaped folder names), then ingested by the pipeline and compared with the log
# (infra/lake_rehearsal.py). Needs Java 11+ and PyPI: pyspark is installed into a temporary
# folder, not into .venv; everything goes at the end. About 1 minute on 2 cores, most of it
# pyspark's install.
#
#   bash infra/lake-rehearsal.sh
set -euo pipefail
cd "$(dirname "$0")/.."
command -v java >/dev/null || { echo "error: Spark needs Java (11 or later) on PATH" >&2; exit 2; }
WORK=$(mktemp -d /tmp/cft-lake.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
echo "== pyspark into $WORK/spark"
python3 -m venv "$WORK/spark"
"$WORK/spark/bin/pip" install -q "pyspark==3.5.3" pandas pyarrow
echo "== Spark writes the layouts"
"$WORK/spark/bin/python" infra/lake_rehearsal.py write "$WORK/lake" > "$WORK/spark.log" 2>&1 || { tail -20 "$WORK/spark.log"; exit 1; }
echo "== the pipeline reads them"
HF_HUB_OFFLINE=1 GX_ANALYTICS_ENABLED=false .venv/bin/python infra/lake_rehearsal.py check "$WORK/lake"
