"""ML-100K as Spark's own jobs leave it in a data lake, read back by the pipeline (infra/lake-rehearsal.sh).

    python infra/lake_rehearsal.py write OUT   (with pyspark: Spark writes five layouts into OUT)
    python infra/lake_rehearsal.py check OUT   (with the project: ingests each, compares with the log)

The layouts: Parquet partitioned by month with the time as Spark's native timestamp; CSV with a
header, partitioned by month; gzipped JSON lines partitioned by month and a user bucket, the item
nested (`context.item`); CSV without a header (Spark's default), which must be named as such; and
Parquet partitioned by the hour itself, whose folder names escape ':' ("hour=1997-09-20 03%3A00%3A00").
`check` prints one line a layout and exits 1 when a layout's rows differ from ML-100K's.
"""

from __future__ import annotations

import sys
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-100k_recbole" / "ml-100k.inter"


def write(out: Path) -> None:
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    spark = (SparkSession.builder.master("local[2]").config("spark.sql.session.timeZone", "UTC")
             .config("spark.ui.enabled", "false").getOrCreate())
    log = (spark.read.option("sep", "\t").option("header", True).csv(str(SHARED))
           .toDF("user_id", "item_id", "rating", "timestamp")
           .select(F.col("user_id").cast("long"), F.col("item_id").cast("long"), F.col("rating").cast("double"),
                   F.col("timestamp").cast("long")))
    log = (log.withColumn("event_time", F.timestamp_seconds("timestamp"))
              .withColumn("month", F.date_format("event_time", "yyyy-MM"))
              .withColumn("context", F.struct(F.col("item_id").cast("string").alias("item"))))
    plain = log.drop("timestamp", "context").repartition(3)
    plain.write.mode("overwrite").partitionBy("month").parquet(str(out / "parquet"))
    plain.write.mode("overwrite").option("header", True).partitionBy("month").csv(str(out / "csv"))
    (log.drop("event_time", "item_id").withColumn("bucket", F.col("user_id") % 4).repartition(2).write
        .mode("overwrite").option("compression", "gzip").partitionBy("month", "bucket").json(str(out / "json")))
    log.drop("context").limit(1000).write.mode("overwrite").csv(str(out / "noheader"))
    (log.where(F.col("month") == "1997-09").withColumn("hour", F.date_trunc("hour", "event_time"))
        .drop("timestamp", "event_time", "context", "month").write.mode("overwrite").partitionBy("hour")
        .parquet(str(out / "hourly")))
    spark.stop()


# layout -> its data.source.columns (the rest of our names are Spark's column names)
LAYOUTS = {
    "parquet": {"timestamp": "event_time"},
    "csv": {"timestamp": "event_time"},
    "json": {"item_id": "context.item"},
    "noheader": {},
    "hourly": {"timestamp": "hour"},
}


def check(out: Path) -> int:
    import logging
    import tempfile

    import pandas as pd

    from schemas.config import DataConfig, SourceConfig
    from schemas.errors import DataError
    from tasks.data import ingest

    logging.disable(logging.WARNING)
    raw = pd.read_csv(SHARED, sep="\t")
    raw.columns = ["user_id", "item_id", "rating", "timestamp"]
    columns = ["user_id", "item_id", "timestamp", "rating"]

    def rows(df: pd.DataFrame) -> pd.DataFrame:
        df = df[columns].astype({"user_id": str, "item_id": str, "timestamp": "int64", "rating": "float64"})
        return df.sort_values(columns, ignore_index=True)

    failed = 0
    with tempfile.TemporaryDirectory() as root:
        items = Path(root) / "items.csv"
        pd.DataFrame({"item_id": sorted(raw["item_id"].unique()), "title": "t"}).to_csv(items, index=False)
        for name, mapping in LAYOUTS.items():
            cfg = DataConfig(name=name, data_root=Path(root), input_roots=[out], k_core=0, source=SourceConfig(
                format="generic", path=str(out / name), items_path=str(items), columns=mapping,
                items_columns={"item_id": "item_id"}))
            try:
                got = rows(pd.read_parquet(ingest(cfg).path / "interactions.parquet"))
            except DataError as e:
                said = "refused as it should be" if name == "noheader" and "written without a header" in str(e) else "FAILED"
                failed += said == "FAILED"
                print(f"{name}: {said}: {str(e)[:160]}...")
                continue
            want = raw
            if name == "hourly":  # September's rows, each at its hour
                want = raw[pd.to_datetime(raw["timestamp"], unit="s").dt.strftime("%Y-%m") == "1997-09"]
                want = want.assign(timestamp=want["timestamp"] // 3600 * 3600)
            same = got.equals(rows(want))
            failed += not same
            print(f"{name}: {len(got):,} rows, identical to ML-100K's: {same}")
    return 1 if failed else 0


if __name__ == "__main__":
    command, folder = sys.argv[1], Path(sys.argv[2]).resolve()
    if command == "write":
        write(folder)
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        sys.exit(check(folder))
