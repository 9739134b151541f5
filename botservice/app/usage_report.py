"""`botservice usage`: tokens and cost from the usage ledger, as a table or as CSV."""

from __future__ import annotations

import argparse
import csv
import io
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from botservice.core.usage import UsageGrouping, UsageLedger, UsageRow, UsageTotals

_SPAN = re.compile(r"^(\d{1,5})([hdw])$")
_UNIT = {"h": timedelta(hours=1), "d": timedelta(days=1), "w": timedelta(weeks=1)}
COLUMNS = (
    "calls",
    "prompt_tokens",
    "cached_tokens",
    "completion_tokens",
    "reasoning_tokens",
    "cost",
)


def since_argument(text: str, *, now: datetime | None = None) -> datetime:
    """`30d`, `12h`, `2w`, or a date (`2026-11-01`, UTC midnight): when the report starts."""
    now = now or datetime.now(UTC)
    if match := _SPAN.match(text.strip().lower()):
        return now - int(match[1]) * _UNIT[match[2]]
    try:
        day = datetime.strptime(text.strip(), "%Y-%m-%d")
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a span like 30d, 12h or 2w, nor a date like 2026-11-01"
        ) from None
    return day.replace(tzinfo=UTC)


async def usage_report(
    ledger: UsageLedger, *, since: datetime, by: UsageGrouping, as_csv: bool
) -> str:
    rows = await ledger.usage_report(since=since, by=by)
    return to_csv(rows, by) if as_csv else to_table(rows, by, since)


def to_csv(rows: Sequence[UsageRow], by: UsageGrouping) -> str:
    """One line per group, no total line (a spreadsheet sums the columns)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow((by, *COLUMNS))
    for row in rows:
        writer.writerow((row.key, *_cells(row.totals, cost_format="{:.6f}")))
    return out.getvalue()


def to_table(rows: Sequence[UsageRow], by: UsageGrouping, since: datetime) -> str:
    header = (by, "calls", "input", "cached", "output", "reasoning", "cost $")
    total = UsageTotals(
        calls=sum(r.totals.calls for r in rows),
        prompt_tokens=sum(r.totals.prompt_tokens for r in rows),
        cached_tokens=sum(r.totals.cached_tokens for r in rows),
        completion_tokens=sum(r.totals.completion_tokens for r in rows),
        reasoning_tokens=sum(r.totals.reasoning_tokens for r in rows),
        cost=sum(r.totals.cost for r in rows),
    )
    body = [(row.key, *_cells(row.totals, thousands=True)) for row in rows]
    lines: list[tuple[str, ...]] = [header, *body, ("total", *_cells(total, thousands=True))]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]

    def render(line: tuple[str, ...]) -> str:
        first = line[0].ljust(widths[0])
        rest = (cell.rjust(width) for cell, width in zip(line[1:], widths[1:], strict=True))
        return "  ".join((first, *rest))

    title = f"usage since {since:%Y-%m-%d %H:%M} UTC, by {by}"
    if not rows:
        return f"{title}: nothing recorded\n"
    rule = "-" * len(render(header))
    return (
        "\n".join([title, render(header), rule, *map(render, body), rule, render(lines[-1])]) + "\n"
    )


def _cells(
    totals: UsageTotals, *, thousands: bool = False, cost_format: str = "{:.4f}"
) -> tuple[str, ...]:
    number = "{:,}" if thousands else "{}"
    return (
        number.format(totals.calls),
        number.format(totals.prompt_tokens),
        number.format(totals.cached_tokens),
        number.format(totals.completion_tokens),
        number.format(totals.reasoning_tokens),
        cost_format.format(totals.cost),
    )
