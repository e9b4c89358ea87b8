"""The dead-letter reason table of docs/reference.md is the code's list of reasons, word for word; it is the
only such table, the README links to it, and the DLQ runbook of docs/operations.md covers the same codes."""

from __future__ import annotations

import re
from pathlib import Path

from detector.codec import REASONS

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "docs" / "reference.md"
OPERATIONS = ROOT / "docs" / "operations.md"
HEADER = "| reason | meaning |"


def table_after(text: str, header: str) -> list[str]:
    """The body rows of the table whose header line is ``header``."""
    return text[text.index(header) :].split("\n\n", 1)[0].splitlines()[2:]


def test_the_reference_reason_table_lists_exactly_the_reasons_the_code_gives():
    """Every row of the reference's reason table is a reason in REASONS with the same meaning, and every
    reason has a row, in the same order."""
    text = REFERENCE.read_text()
    reasons = text[text.index("### Dead-letter reasons") :]
    rows = [re.fullmatch(r"\| `([a-z_]+)` \| (.*) \|", line) for line in table_after(reasons, HEADER)]
    assert all(rows), table_after(reasons, HEADER)
    assert [(m[1], m[2]) for m in rows if m] == list(REASONS.items())


def test_the_reason_table_is_kept_once_and_the_readme_links_to_it():
    """No other doc holds a reason table (the README, docs/*.md); the README points at the reference's."""
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    holders = [path.relative_to(ROOT) for path in docs if HEADER in path.read_text()]
    assert holders == [REFERENCE.relative_to(ROOT)], holders
    assert "(docs/reference.md#dead-letter-reasons)" in (ROOT / "README.md").read_text()


def test_the_dlq_runbook_covers_exactly_the_reasons():
    """docs/operations.md's table of causes and fixes (Handle the DLQ) names every reason code, and no
    other: a new reason needs its usual fix there too."""
    text = OPERATIONS.read_text()
    runbook = table_after(text[text.index("## Handle the DLQ") :], "| `error.reason` | cause | usual fix |")
    named = [code for row in runbook for code in re.findall(r"`([a-z_]+)`", row.split("|")[1])]
    assert sorted(named) == sorted(REASONS), {
        "missing": set(REASONS) - set(named),
        "unknown": set(named) - set(REASONS),
    }
