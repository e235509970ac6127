"""benchmarks/validation.py times two forms of the same check: they must agree on what they
accept and refuse, or the ratio would compare different work."""

from __future__ import annotations

import pytest

from benchmarks import validation as bench
from schemas.errors import DataValidationError


@pytest.mark.parametrize("variant", ["value_set", "derived"])
def test_both_forms_accept_good_tables_and_name_an_unknown_item(tmp_path, variant):
    data = bench.tables(2000, 300)
    (tmp_path / "suites").mkdir()
    suites = bench.value_set_suites(tmp_path / "suites")
    seconds = bench.validate(variant, data, suites, tmp_path)
    assert set(seconds) == {"ingested_s", "records_s"}

    bad = dict(data, interactions=data["interactions"].assign(
        item_id=data["interactions"]["item_id"].mask(data["interactions"].index == 7, "i999")))
    with pytest.raises(DataValidationError, match=r"interactions\.item_id\S*: expect_column_values_to_be_\S+ "
                                                  r"failed: 1 of \d+ rows; e.g. \['i999'\]"):
        bench.validate(variant, bad, suites, tmp_path)
