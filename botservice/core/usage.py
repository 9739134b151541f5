"""Usage and cost: what each model call spent, who it was for, and the quotas on it.

Every answer's tokens are kept as one row of the usage ledger (`UsageLedger`, in
storage/usage_ledger.py) with the platform, workspace, channel, person and model, and its
cost at the prices configured when it was spent. The rows hold no text and outlive
the messages (`storage.usage_retention_days`); forget-me removes the person from them.
Quotas read the ledger before a message is taken, so they hold across processes.
"""

from __future__ import annotations

import calendar
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from datetime import time as clock_time
from typing import Literal, Protocol

from botservice.core.events import IncomingMessage
from botservice.core.limits import SpentBudget
from botservice.core.ports import Usage, UsageRecord
from botservice.core.settings import Settings

UsageGrouping = Literal["user", "channel", "model"]


@dataclass(frozen=True, slots=True)
class UsageTotals:
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    cost: float = 0.0

    @property
    def tokens(self) -> int:
        """Tokens in and out (cached and reasoning tokens are counted within them)."""
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class UsageRow:
    """Totals of one group in a report: a person (`platform:user`), a channel
    (`platform:workspace/channel`) or a model."""

    key: str
    totals: UsageTotals


class UsageLedger(Protocol):
    """The usage rows (storage/usage_ledger.py implements it over the service's database)."""

    async def record_usage(self, record: UsageRecord) -> None: ...

    async def usage_totals(
        self,
        *,
        platform: str,
        since: datetime,
        user_id: str | None = None,
        workspace: str | None = None,
        channel: str | None = None,
    ) -> UsageTotals:
        """Totals since `since` on `platform`, of one person and/or one channel."""
        ...

    async def usage_report(self, *, since: datetime, by: UsageGrouping) -> list[UsageRow]:
        """Totals since `since` grouped `by`, largest cost (then tokens) first."""
        ...

    async def forget_usage_of(self, platform: str, user_id: str) -> int:
        """Remove the person's id from their usage rows (the counts stay). Returns rows."""
        ...

    async def purge_usage(self, *, before: datetime, batch_size: int) -> int:
        """Delete rows older than `before`, in batches. Returns rows deleted."""
        ...


def usage_record(
    settings: Settings,
    *,
    turn_id: int | None,
    message_platform: str,
    workspace: str,
    channel: str,
    user_id: str,
    model: str,
    usage: Usage | None,
    estimated_prompt_tokens: int,
    estimated_completion_tokens: int,
) -> UsageRecord:
    """The row for one call: the endpoint's counts when it reported them, else estimates
    (an interrupted stream, or an endpoint that sends no usage), priced as configured."""
    if usage is not None:
        prompt, completion = usage.prompt_tokens, usage.completion_tokens
        cached, reasoning = usage.cached_tokens, usage.reasoning_tokens
    else:
        prompt, completion, cached, reasoning = (
            estimated_prompt_tokens,
            estimated_completion_tokens,
            0,
            0,
        )
    return UsageRecord(
        turn_id=turn_id,
        platform=message_platform,
        workspace=workspace,
        channel=channel,
        user_id=user_id,
        model=model,
        prompt_tokens=prompt,
        completion_tokens=completion,
        cached_tokens=cached,
        reasoning_tokens=reasoning,
        cost=settings.token_cost(model, prompt=prompt, completion=completion, cached=cached),
        estimated=usage is None,
    )


# --- periods -----------------------------------------------------------------------


def start_of_day(now: datetime) -> datetime:
    return datetime.combine(now.astimezone(UTC).date(), clock_time(), UTC)


def start_of_month(now: datetime) -> datetime:
    return start_of_day(now).replace(day=1)


def start_of_next_month(now: datetime) -> datetime:
    first = start_of_month(now)
    days = calendar.monthrange(first.year, first.month)[1]
    return first + timedelta(days=days)


# --- quotas ------------------------------------------------------------------------


Period = Literal["day", "month"]


class Quotas:
    """Monthly token limits and daily and monthly cost limits, per person and per channel
    (0: off); the daily token budgets are `botservice.core.limits.Limits`'.

    Checked when a message arrives, before anything is stored or the model called; a
    message over a quota is answered with one sentence that says which limit and when
    it resets. The bot's admins (`access.admin_user_ids`) are exempt while
    `limits.quota_exempt_admins` is true.
    """

    def __init__(
        self,
        settings: Settings,
        ledger: UsageLedger,
        *,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._settings = settings
        self._ledger = ledger
        self._now = now

    @property
    def enabled(self) -> bool:
        limits = self._settings.limits
        return any(
            (
                limits.user_monthly_tokens,
                limits.channel_monthly_tokens,
                limits.user_daily_cost,
                limits.user_monthly_cost,
                limits.channel_daily_cost,
                limits.channel_monthly_cost,
            )
        )

    async def refusal(self, message: IncomingMessage) -> str | None:
        """The sentence to answer instead of taking the message, or None to take it."""
        spent = await self.spent_budget(message)
        return spent.sentence if spent is not None else None

    async def spent_budget(
        self, message: IncomingMessage, *, person: bool = True
    ) -> SpentBudget | None:
        """The quota of `message`'s author (unless `person` is False) or of its channel
        that is spent, or None."""
        if not self.enabled or message.from_operator:
            return None
        limits = self._settings.limits
        exempt = limits.quota_exempt_admins and (
            message.user_id in self._settings.access.admin_user_ids
        )
        if person and exempt:
            return None
        now = self._now()
        checks: tuple[tuple[str, Period, int, float], ...] = (
            # Daily token budgets are `Limits`' (from the tokens stored with the answers).
            ("user", "day", 0, limits.user_daily_cost),
            ("user", "month", limits.user_monthly_tokens, limits.user_monthly_cost),
            ("channel", "day", 0, limits.channel_daily_cost),
            ("channel", "month", limits.channel_monthly_tokens, limits.channel_monthly_cost),
        )
        totals: dict[tuple[str, Period], UsageTotals] = {}
        for who, period, token_limit, cost_limit in checks:
            if not token_limit and not cost_limit:
                continue
            if who == "user" and not person:
                continue
            key = (who, period)
            since = start_of_day(now) if period == "day" else start_of_month(now)
            if key not in totals:
                totals[key] = await self._ledger.usage_totals(
                    platform=message.platform,
                    since=since,
                    user_id=message.user_id if who == "user" else None,
                    workspace=message.workspace if who == "channel" else None,
                    channel=message.channel if who == "channel" else None,
                )
            used = totals[key]
            renews_at = since + timedelta(days=1) if period == "day" else start_of_next_month(now)
            if token_limit and used.tokens >= token_limit:
                sentence = _over(who, period, f"{token_limit:,} tokens", now)
                return SpentBudget(sentence, f"{who}:{period}:tokens", renews_at)
            if cost_limit and used.cost >= cost_limit:
                sentence = _over(who, period, f"${cost_limit:,.2f}", now)
                return SpentBudget(sentence, f"{who}:{period}:cost", renews_at)
        return None


def _over(who: str, period: Period, limit: str, now: datetime) -> str:
    subject = "You have" if who == "user" else "This channel has"
    span = "today" if period == "day" else "this month"
    return f"{subject} used the {limit} allowed {span}; the limit resets {resets(period, now)}."


def resets(period: Period, now: datetime) -> str:
    """When a period's quota resets, in words: "at 00:00 UTC (in 5 hours)"."""
    if period == "day":
        at = start_of_day(now) + timedelta(days=1)
        return f"at 00:00 UTC (in {_duration(at - now)})"
    at = start_of_next_month(now)
    return f"on {at.day} {at:%B} at 00:00 UTC (in {_duration(at - now)})"


def _duration(delta: timedelta) -> str:
    seconds = max(0, int(delta.total_seconds()))
    if seconds >= 2 * 86400:
        return f"{seconds // 86400} days"
    if seconds >= 3600:
        hours = seconds // 3600
        return f"{hours} hour{'' if hours == 1 else 's'}"
    minutes = max(1, seconds // 60)
    return f"{minutes} minute{'' if minutes == 1 else 's'}"
