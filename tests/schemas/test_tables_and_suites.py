"""The data contracts: Arrow schemas and the Great Expectations suites that guard them."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from schemas import tables
from tasks.validation import SUITES_DIR, _context, load_suite

PARAMS = {"max_title_chars": 500, "placeholder_title": "^unknown$", "min_timestamp": 0, "max_timestamp": 2**40, "min_rating": 0.0,
          "max_rating": 5.0, "max_history": 10, "min_split_timestamp": 0,
          "max_split_timestamp": 2**40}


def test_record_schema_round_trips_a_record():
    row = {"user_id": "u1", "history_item_ids": [0, 1], "history_titles": ["A", "B"], "target_item_id": 2,
           "target_title": "C", "timestamp": 1}
    table = pa.Table.from_pylist([row], schema=tables.RECORDS)
    assert table.to_pylist() == [row]
    with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError)):
        pa.Table.from_pylist([{**row, "target_item_id": "two"}], schema=tables.RECORDS)


@pytest.mark.parametrize("name", ["interactions", "items", "records"])
def test_each_suite_loads_with_its_placeholders_filled(name):
    _context()  # suites are built inside the (ephemeral) GX context, as the stage does
    spec = json.loads((SUITES_DIR / f"{name}.json").read_text())
    suite = load_suite(name, PARAMS)
    assert len(suite.expectations) == len(spec["expectations"])
    text = json.dumps([e.configuration.kwargs for e in suite.expectations], default=str)
    assert "${" not in text  # every placeholder replaced by its parameter
    assert {e.severity for e in suite.expectations} <= {"critical", "warning"}


def test_a_suite_names_the_columns_of_its_schema():
    """Every column a suite checks exists in the table it guards (a renamed column would make a
    suite silently check nothing)."""
    derived = {"interactions": [pa.field("item_id_not_in_items", pa.string())],  # tasks/data.py adds these
               "records": [pa.field("history_len", pa.int64()), pa.field("target_item_id_not_in_catalogue", pa.int64()),
                           pa.field("history_in_catalogue", pa.bool_())]}
    schema_of = {"interactions": tables.INTERACTIONS, "items": tables.ITEMS, "records": tables.RECORDS}
    schema_of = {name: pa.schema([*schema, *derived.get(name, [])]) for name, schema in schema_of.items()}
    for name, schema in schema_of.items():
        spec = json.loads((SUITES_DIR / f"{name}.json").read_text())
        columns = {e["kwargs"]["column"] for e in spec["expectations"] if "column" in e["kwargs"]}
        assert columns <= set(schema.names), (name, columns - set(schema.names))


def test_a_failed_table_expectation_is_named_by_its_table_alone(tmp_path):
    """A table-level expectation (the row count) has no column: its line names the table, where it
    read "valid.None" before."""
    import pandas as pd

    from schemas.errors import DataValidationError
    from tasks.validation import validate_tables

    empty = pd.DataFrame({"history_len": pd.Series([], dtype="int64"), "history_in_catalogue": pd.Series([], dtype=bool),
                          "target_item_id_not_in_catalogue": pd.Series([], dtype="string"),
                          "target_title": pd.Series([], dtype="string"), "timestamp": pd.Series([], dtype="int64")})
    params = {"max_history": 10, "min_split_timestamp": 0, "max_split_timestamp": 2**62}
    with pytest.raises(DataValidationError) as failed:
        validate_tables({"valid": ("records", empty)}, params, tmp_path / "report.json", what="x valid records")
    assert "\n  - valid: expect_table_row_count_to_be_between failed: observed 0" in str(failed.value)
