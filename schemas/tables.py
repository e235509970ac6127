"""Arrow schemas of every data-stage table (architecture.md, "Stage contracts").

Ids are strings at ingest (sources spell them differently: ints, ASINs, "A6948"); the sequence
stage maps them to dense integer ids 0..N-1 for the catalogue.
"""

import pyarrow as pa

INTERACTIONS = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("timestamp", pa.int64(), nullable=False),  # unix seconds
        pa.field("rating", pa.float64()),  # null where the source has none
    ]
)

ITEMS = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("title", pa.string(), nullable=False),
    ]
)

# One instruction record per (user, position): the history (oldest first) and the next item.
RECORDS = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("history_item_ids", pa.list_(pa.int64()), nullable=False),
        pa.field("history_titles", pa.list_(pa.string()), nullable=False),
        pa.field("target_item_id", pa.int64(), nullable=False),
        pa.field("target_title", pa.string(), nullable=False),
        pa.field("timestamp", pa.int64(), nullable=False),  # of the target interaction
    ]
)

CATALOGUE = pa.schema(
    [
        pa.field("item_id", pa.int64(), nullable=False),  # dense 0..N-1
        pa.field("title", pa.string(), nullable=False),
        pa.field("source_item_id", pa.string(), nullable=False),
    ]
)
