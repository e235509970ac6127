"""Source readers: every supported layout -> (interactions, items) DataFrames in our columns.

interactions: user_id (str), item_id (str), timestamp (int64 unix s), rating (float, may be null)
items:        item_id (str), title (str)

One module a job, read in this order:
- `files`: opening a file safely (pickles refused, gzip, text decoding, delimited text, JSON lines);
- `values`: columns as our types (timestamps, ratings, ids, titles), errors naming the rows;
- `movielens`, `amazon`, `d3`: the readers of the public datasets' layouts;
- `tables`, `parts`, `generic`: your own logs: one file as a table, a folder of parts, the reader.

Every reader opens files through `files`, which refuses pickles, names the file and byte offset
of non-UTF-8 text, and turns a truncated gzip into a clear error. List columns of D3 CSVs are
parsed with `ast.literal_eval` (literals only), never `eval`.

What the ingest stage (`tasks/data.py`) calls is imported here, so it reads `readers.read_generic`.
"""

from tasks.readers.amazon import read_amazon_raw
from tasks.readers.d3 import d3_files, read_d3_csv
from tasks.readers.generic import read_generic
from tasks.readers.movielens import (
           grouplens_files,
           read_grouplens,
           read_recbole,
           recbole_files,
           recbole_package_folder,
)
from tasks.readers.parts import hidden, interaction_parts, part_name, refuse_table_format
from tasks.readers.values import normalize_titles

__all__ = ["d3_files", "grouplens_files", "hidden", "interaction_parts", "normalize_titles", "part_name",
           "read_amazon_raw", "read_d3_csv", "read_generic", "read_grouplens", "read_recbole", "recbole_files",
           "recbole_package_folder", "refuse_table_format"]
