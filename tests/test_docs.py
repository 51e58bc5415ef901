"""The README documents what the code does (reasons, columns, commands)."""

from pathlib import Path

from pipelines.errors import Reason
from pipelines.schema import INDEX_SCHEMA

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_every_quarantine_reason_is_documented():
    missing = [r.value for r in Reason if f"`{r.value}`" not in README]
    assert missing == []


def test_every_index_column_is_documented():
    missing = [name for name in INDEX_SCHEMA.names if f"`{name}`" not in README]
    assert missing == []
