"""The README's dead-letter reason table is the code's list of reasons, word for word."""

from __future__ import annotations

import re
from pathlib import Path

from detector.codec import REASONS

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_reason_table_lists_exactly_the_reasons_the_code_gives():
    """Every row of the README's reason table is a reason in REASONS with the same meaning, and every reason
    has a row, in the same order."""
    text = README.read_text()
    table = text[text.index("| reason | meaning |") :].split("\n\n", 1)[0].splitlines()[2:]
    rows = [re.fullmatch(r"\| `([a-z_]+)` \| (.*) \|", line) for line in table]
    assert all(rows), table
    assert [(m[1], m[2]) for m in rows if m] == list(REASONS.items())
