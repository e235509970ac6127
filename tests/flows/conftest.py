"""The flow tests share the training tests' capped ML-100K data."""

from tests.train.conftest import small_sequences  # noqa: F401  (a session fixture)
