"""config/grafana/botservice.json: it loads, and every query asks for metrics (and groups
by labels) that `/metrics` really exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from botservice.app.metrics import EXPORTED, PrometheusTelemetry
from botservice.core.conversation import CoreLoad
from botservice.core.settings import ModelInfo, Settings

DASHBOARD = Path(__file__).resolve().parents[1] / "config" / "grafana" / "botservice.json"
_METRIC = re.compile(r"\bbotservice_[a-z_]+\b")
_BY = re.compile(r"\bby \(([^)]*)\)")
# Labels Prometheus adds to every scraped series, and a histogram's bucket bound.
_SCRAPE_LABELS = {"job", "instance", "le"}


def exported_series() -> dict[str, set[str]]:
    """Every sample name `/metrics` shows once each metric has been touched, with its labels."""
    # A priced model, so its cost is counted too.
    priced = {"m": ModelInfo(price_input_per_mtok=1.0, price_output_per_mtok=1.0)}
    telemetry = PrometheusTelemetry(Settings(models=priced))
    telemetry.message_accepted("slack")
    telemetry.message_redelivered("slack")
    telemetry.turn_started("slack", resumed=False)
    telemetry.turn_finished("slack", "failed", "refused")
    telemetry.first_text("slack", "m", 1.0)
    telemetry.final_text("slack", "m", 2.0)
    telemetry.model_request("m", "429")
    telemetry.model_retry("m", 1.0, rate_limited=True)
    telemetry.tokens("m", prompt=1, completion=1, cached=1, reasoning=1)
    telemetry.platform_call("slack", "chat_update", "ok")
    telemetry.edit_budget("slack", 0.5)
    telemetry.edit_skipped("slack")
    telemetry.purged("messages", 1)
    telemetry.voice_session("discord", 1)
    telemetry.spoken("discord", 1.0)
    telemetry.store_operation("accept", 0.001)
    telemetry.watch_core(lambda: CoreLoad(1, 1, 1, 1))
    series: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(telemetry.exposition().decode()):
        for sample in family.samples:
            series.setdefault(sample.name, set()).update(sample.labels)
    return series


def queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    found = [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            found.append((variable["name"], query["query"]))
    return found


def test_the_dashboard_loads_with_the_panels_the_issue_asks_for() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "botservice"
    titles = " / ".join(panel["title"] for panel in dashboard["panels"]).lower()
    for wanted in (
        "answers per minute",
        "first text",
        "final text",
        "failures by reason",
        "429",
        "tokens",
        "cost",
        "pending turns",
        "edit budget",
    ):
        assert wanted in titles, wanted
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_every_query_names_an_exported_metric_and_its_labels() -> None:
    series = exported_series()
    for title, expr in queries():
        names = _METRIC.findall(expr)
        assert names, f"{title}: no botservice metric in {expr!r}"
        labels = set(_SCRAPE_LABELS)
        for name in names:
            assert name in series, f"{title}: {name} is not exported"
            labels |= series[name]
        for grouping in _BY.findall(expr):
            for label in (part.strip() for part in grouping.split(",")):
                assert label in labels, f"{title}: no label {label!r} on {names}"


def test_every_exported_metric_is_listed() -> None:
    series = exported_series()
    for name in series:
        base = re.sub(r"_(bucket|sum|count|created)$", "", name)
        assert name in EXPORTED or base in EXPORTED or f"{base}_total" in EXPORTED, name
