"""Great Expectations validation of stage tables against the suites in `schemas/suites/`.

Suites are JSON (reviewable, versioned with the code); `${name}` placeholders in their kwargs
are filled from the run's settings. A failed critical expectation raises `DataValidationError`
whose message lists each failure with counts and example values; warnings are reported only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

from schemas.errors import DataValidationError
from tasks.storage import file_digest, write_json_atomic

SUITES_DIR = Path(__file__).resolve().parents[1] / "schemas" / "suites"


def _camel(snake: str) -> str:
    return "".join(part.capitalize() for part in snake.split("_"))


def _fill(value: Any, params: dict[str, Any]) -> Any:
    if isinstance(value, str) and value.startswith("${") and value.endswith("}"):
        return params[value[2:-1]]
    if isinstance(value, list):
        return [_fill(v, params) for v in value]
    return value


def load_suite(name: str, params: dict[str, Any]):
    """The named suite with placeholders filled, as a gx.ExpectationSuite."""
    import great_expectations as gx

    spec = json.loads((SUITES_DIR / f"{name}.json").read_text(encoding="utf-8"))
    suite = gx.ExpectationSuite(name=spec["name"])
    for e in spec["expectations"]:
        cls = getattr(gx.expectations, _camel(e["type"]))
        kwargs = {k: _fill(v, params) for k, v in e["kwargs"].items()}
        suite.add_expectation(
            cls(**kwargs, severity=e.get("severity", "critical"), notes=e.get("notes"))
        )
    return suite


_CONTEXT = None


def _context():
    """One ephemeral GX context per process (instant; progress bars off)."""
    global _CONTEXT
    if _CONTEXT is None:
        os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        _CONTEXT = gx.get_context(mode="ephemeral")
        _CONTEXT.variables.progress_bars = ProgressBarsConfig(globally=False)
        _CONTEXT.data_sources.add_pandas("frames")
    return _CONTEXT


def _summarise(result, table: str) -> list[dict]:
    rows = []
    for r in result.results:
        cfg = r.expectation_config
        res = r.result or {}
        rows.append(
            {
                "table": table,
                "expectation": cfg.type,
                "column": cfg.kwargs.get("column") or cfg.kwargs.get("column_list"),
                "severity": str(getattr(cfg.severity, "value", cfg.severity) or "critical"),
                "success": bool(r.success),
                "unexpected_count": res.get("unexpected_count"),
                "element_count": res.get("element_count"),
                "observed_value": res.get("observed_value"),
                "examples": [str(v) for v in (res.get("partial_unexpected_list") or [])[:5]],
                "error": (r.exception_info or {}).get("exception_message") if r.exception_info else None,
            }
        )
    return rows


def suites_key(suites: list[str], params: dict[str, Any]) -> dict:
    """What decides the outcome of the named suites on given tables: the suite files' bytes, the
    parameters filled into them and the Great Expectations version that runs them. A report
    written under this key (`validate_tables(key=...)`) holds for the same tables while it is."""
    from importlib.metadata import version

    return {"suites": {name: file_digest(SUITES_DIR / f"{name}.json") for name in sorted(set(suites))},
            "params": params, "great_expectations": version("great_expectations")}


def validate_tables(
    tables: dict[str, tuple[str, pd.DataFrame]], params: dict[str, Any], report_path: Path, what: str,
    key: str | None = None,
) -> dict:
    """Validate {table: (suite name, frame)}; write the report JSON; raise on critical failures.

    Returns the report: {"success", "failures", "warnings", "results"} and `key`, when given:
    the fingerprint of what the report holds for (the tables and `suites_key`).
    """
    ctx = _context()
    source = ctx.data_sources.get("frames")
    results = []
    for table, (suite_name, frame) in tables.items():
        asset_name = f"{what}-{table}"
        try:
            asset = source.get_asset(asset_name)
        except LookupError:
            asset = source.add_dataframe_asset(asset_name)
        try:
            batch_def = asset.get_batch_definition("whole")
        except (KeyError, LookupError):
            batch_def = asset.add_batch_definition_whole_dataframe("whole")
        batch = batch_def.get_batch(batch_parameters={"dataframe": frame})
        results += _summarise(batch.validate(load_suite(suite_name, params), result_format="SUMMARY"), table)
    failures = [r for r in results if not r["success"] and r["severity"] == "critical"]
    warnings = [r for r in results if not r["success"] and r["severity"] != "critical"]
    report = {"what": what, "success": not failures, "failures": failures, "warnings": warnings, "results": results}
    if key is not None:
        report["key"] = key
    report_path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(report_path, report)
    if failures:
        lines = [f"{what}: {len(failures)} expectation(s) failed (full report: {report_path})"]
        for f in failures:
            count = f"{f['unexpected_count']} of {f['element_count']} rows" if f["unexpected_count"] is not None else f"observed {f['observed_value']}"
            detail = f"; e.g. {f['examples']}" if f["examples"] else ""
            err = f"; error: {f['error']}" if f["error"] else ""
            where = f"{f['table']}.{f['column']}" if f["column"] else f["table"]  # (a table-level expectation: no column)
            lines.append(f"  - {where}: {f['expectation']} failed: {count}{detail}{err}")
        raise DataValidationError("\n".join(lines), report, report_path)
    return report
