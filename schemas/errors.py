"""Errors of the data contracts: each names the file, column or rows at fault."""


class DataError(ValueError):
    """Bad input that cannot be read into the stage's schema (unreadable, wrong shape, unsafe)."""


class DataValidationError(DataError):
    """A Great Expectations suite failed; `report` is the JSON-able summary that was written."""

    def __init__(self, message: str, report: dict, report_path=None):
        super().__init__(message)
        self.report = report
        self.report_path = report_path


class SourceUnavailable(ConnectionError):
    """A source URL could not be fetched (network). Transient, so the flow retries it; the
    message says where to place the file by hand when there is no network."""
