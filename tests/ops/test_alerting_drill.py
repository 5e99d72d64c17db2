"""The alerting drill: real faults in two running service processes travel through the shipped
Prometheus configuration and rules and the shipped Alertmanager routes to a webhook receiver,
whose notifications must name the right instance, job and severity, render their summary and
description, and link a runbook section that exists.

What differs from the shipped stack, and nothing else: the targets (two processes on loopback
ports, this Prometheus, this Alertmanager), the receiver's webhook URL, and time. The shipped
``for:`` durations and the SLO windows (up to 6 h) cannot run in minutes, so the drill runs a
copy of the rules with every ``for:`` and range duration divided by ``DRILL_TIME_SCALE``, and
Alertmanager's group timings with them; the scrape and evaluation intervals stay 15 s. The
test says so in its output. Scaled, ``RerankerDown``'s ``for:`` (6 s) is shorter than one
scrape interval, so its ``absent()`` branch could fire at Prometheus's own start, before the
first scrape; the drill therefore loads the rules (a configuration reload) once both instances
have been scraped. The shipped ``for:`` of 1 min spans four scrapes, so a real start cannot
fire it (``test_absent_alerts_outlast_the_first_scrape`` holds the shipped files to that).

The faults, each while the other instance serves a steady trickle of requests:

1. down: instance A is killed. ``RerankerDown`` fires for A alone, and inhibits A's other
   alerts (shown with a stand-in alert posted to Alertmanager for A and for B: A's is muted,
   B's is sent). A is started again.
2. errors: A gets a request a second that fails inside the engine (a non-finite score) until
   the availability burn-rate pair fires; the trickle and a run of good requests then bring the
   error ratio back down.
3. saturation: B's small queue is held over half full by clients whose passes are slow.
   ``RerankerQueueSaturated`` fires for B alone; the clients stop.

Then every alert resolves, and the receiver gets each resolved notification.
"""

from __future__ import annotations

import contextlib
import copy
import json
import re
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support.alertmanager_server import (
    AlertmanagerServer,
    Notification,
    WebhookReceiver,
    start_alertmanager,
)
from tests.support.faulty_runners import OVERFLOW_WORD, SLOW_WORD
from tests.support.paths import ROOT
from tests.support.prometheus_server import free_port, start_prometheus
from tests.support.service_process import ServiceProcess, start_service

PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
ALERTMANAGER_CONFIG = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
OBSERVABILITY_DOC = ROOT / "docs" / "observability.md"

DRILL_TIME_SCALE = 10
"""Every ``for:`` and range duration of the rules, and Alertmanager's group wait, group
interval and repeat interval, are divided by this in the drill (1 min -> 6 s, 5 min -> 30 s, two
15 s scrapes). The scrape and evaluation intervals are not scaled."""

SHIPPED_TARGETS = ("reranker:8000", "localhost:9090", "alertmanager:9093")

_DURATION = re.compile(r"(\d+)(ms|s|m|h|d)")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_RANGE = re.compile(r"\[([^\]]+)\]")


# -- the drill's copy of the configuration ------------------------------------------------------


def duration_ms(duration: str) -> int:
    """A Prometheus duration (``90s``, ``1h30m``) in milliseconds."""
    parts = _DURATION.findall(duration)
    if "".join(number + unit for number, unit in parts) != duration:
        raise ValueError(f"not a duration: {duration!r}")
    return sum(int(number) * _UNIT_MS[unit] for number, unit in parts)


def scaled_duration(duration: str, factor: int) -> str:
    """A Prometheus duration divided by ``factor``."""
    milliseconds = duration_ms(duration) // factor
    return f"{milliseconds // 1000}s" if milliseconds % 1000 == 0 else f"{milliseconds}ms"


def scaled_rules(rule_file: dict[str, Any], factor: int) -> dict[str, Any]:
    """A copy of a rule file with each ``for:`` and each range in an expression divided."""
    scaled = copy.deepcopy(rule_file)
    for group in scaled["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = scaled_duration(rule["for"], factor)
            rule["expr"] = _RANGE.sub(
                lambda found: f"[{scaled_duration(found.group(1), factor)}]", rule["expr"]
            )
    return scaled


def retargeted(config: dict[str, Any], targets: dict[str, list[str]]) -> dict[str, Any]:
    """A copy of the Prometheus configuration with every static target replaced as
    ``targets`` says (each shipped target must be in it)."""
    rewritten = copy.deepcopy(config)
    blocks = [scrape["static_configs"] for scrape in rewritten["scrape_configs"]]
    blocks += [manager["static_configs"] for manager in rewritten["alerting"]["alertmanagers"]]
    for static_configs in blocks:
        for static in static_configs:
            static["targets"] = [new for old in static["targets"] for new in targets[old]]
    return rewritten


def drill_alertmanager_config(
    config: dict[str, Any], webhook_url: str, factor: int
) -> dict[str, Any]:
    """The shipped Alertmanager configuration with its receivers notifying ``webhook_url``
    and the group timings of every route divided."""
    drill = copy.deepcopy(config)
    for receiver in drill["receivers"]:
        receiver["webhook_configs"] = [{"url": webhook_url, "send_resolved": True}]
    routes = [drill["route"]]
    while routes:
        route = routes.pop()
        for timing in ("group_wait", "group_interval", "repeat_interval"):
            if timing in route:
                route[timing] = scaled_duration(route[timing], factor)
        routes.extend(route.get("routes", []))
    return drill


def write_drill_prometheus(workdir: Path, targets: dict[str, list[str]], factor: int) -> Path:
    """The shipped ``prometheus.yml`` retargeted, beside a scaled copy of each rule file (the
    configuration names them by a relative path, kept as it ships)."""
    (workdir / "rules").mkdir(parents=True)
    for rule_path in sorted((PROMETHEUS_DIR / "rules").glob("*.yml")):
        rules = scaled_rules(yaml.safe_load(rule_path.read_text()), factor)
        (workdir / "rules" / rule_path.name).write_text(json.dumps(rules))  # JSON is YAML
    shipped = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    config_path = workdir / "prometheus.yml"
    config_path.write_text(json.dumps(retargeted(shipped, targets)))
    return config_path


def doc_anchors(markdown: str) -> set[str]:
    """The fragments a link into the page may name: its explicit ``id`` anchors and its
    headings' GitHub slugs."""
    anchors = set(re.findall(r'<a id="([^"]+)"></a>', markdown))
    for heading in re.findall(r"^#+ (.+)$", markdown, flags=re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


def test_the_drill_rules_differ_from_the_shipped_ones_in_durations_only(tmp_path: Path) -> None:
    config_path = write_drill_prometheus(
        tmp_path,
        {"reranker:8000": ["127.0.0.1:1", "127.0.0.1:2"], "localhost:9090": ["127.0.0.1:3"]}
        | {"alertmanager:9093": ["127.0.0.1:4"]},
        DRILL_TIME_SCALE,
    )
    done = subprocess.run(
        ["promtool", "check", "config", str(config_path)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for rule_path in sorted((PROMETHEUS_DIR / "rules").glob("*.yml")):
        shipped = yaml.safe_load(rule_path.read_text())
        drill = yaml.safe_load((tmp_path / "rules" / rule_path.name).read_text())
        assert _without_durations(drill) == _without_durations(shipped)
    drill_alerts = yaml.safe_load((tmp_path / "rules" / "reranker-alerts.yml").read_text())
    [down] = [
        rule for rule in drill_alerts["groups"][0]["rules"] if rule["alert"] == "RerankerDown"
    ]
    assert down["for"] == "6s"
    assert scaled_duration("6h", DRILL_TIME_SCALE) == "2160s"
    assert scaled_duration("1m30s", 4) == "22500ms"
    with pytest.raises(ValueError, match="not a duration"):
        scaled_duration("5m:1m", DRILL_TIME_SCALE)


def test_absent_alerts_outlast_the_first_scrape() -> None:
    """An alert on ``absent(...)`` is true at Prometheus's start until the first scrape, which
    comes within one scrape interval, and is seen at the next evaluation: its ``for:`` must be
    longer than both together, or every restart of Prometheus pages someone."""
    shipped = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    start_window_ms = sum(
        duration_ms(shipped["global"][interval])
        for interval in ("scrape_interval", "evaluation_interval")
    )
    absent_rules = [
        rule
        for rule_path in sorted((PROMETHEUS_DIR / "rules").glob("*.yml"))
        for group in yaml.safe_load(rule_path.read_text())["groups"]
        for rule in group["rules"]
        if "absent(" in rule["expr"]
    ]
    assert [rule["alert"] for rule in absent_rules] == ["RerankerDown"]
    for rule in absent_rules:
        assert duration_ms(rule["for"]) > start_window_ms, rule


def _without_durations(rule_file: dict[str, Any]) -> str:
    text = re.sub(r'"for": "[^"]+"', '"for": "D"', json.dumps(rule_file))
    return _RANGE.sub("[D]", text)


# -- the drill -----------------------------------------------------------------------------------

STEADY_INTERVAL_S = 1.0
"""Each instance gets one good request per interval from the steady client: users who stay."""
FAILING_INTERVAL_S = 1.0
"""Requests that fail inside the engine, one a second until the burn pair is notified: a
third of the requests in the fast pair's short window (30 s scaled; two scrapes, so the errors
must last, as a real cause does), and soon over its 7.2 % in the long one (6 min scaled: the
drill so far)."""
BURN_PAIR = ("RerankerAvailabilityBudgetBurnFast", "RerankerAvailabilityBudgetBurnSlow")
STAND_IN = "RerankerDrillStandIn"
GOOD_PER_FAILED = 50
"""Then good requests, 50 per failed one, which bring the slow pair's short window (30 min,
scaled) under its 3 % (to 2 %), so that it resolves within the drill."""
QUEUE_LIMIT = 40
PASS_TOKENS = 128
"""B's pass budget: three or four of the flood's pairs per pass, so most of them wait."""
FLOOD_CLIENTS, FLOOD_DOCUMENTS = 4, 8
"""32 pairs in flight against a queue of 40: over half full while the slow passes run, and
never a 429, so the saturation costs no availability."""
STAGE_TIMEOUT_S = 150
"""The most one stage may wait for its notification: three times the longest stage of the
timeline in docs/observability.md (48 s, on a 2-core VM), and the drill's only time bound. The
whole run is not held to a wall-clock limit of its own: a busy machine slows every stage alike,
and a stage that hangs fails at this bound, naming the alert it waited for."""
DRILLED = {"RerankerDown", "RerankerQueueSaturated", *BURN_PAIR, STAND_IN}
LATENCY_PAIR = {"RerankerLatencyBudgetBurnFast", "RerankerLatencyBudgetBurnSlow"}
"""Alerts that the saturation may earn, truly: the flood's requests wait for about ten slow
passes each, near the objective's 2 s, and on a busy machine enough of them pass it that the
latency budget burns. So they may come, as the job's alerts, and are checked like the rest."""
RANDOM_MODEL = {"RerankerScoreSpreadCollapsed", "RerankerScoreDrift"}
"""Alerts that the tiny random-weight checkpoint earns by itself after a minute of traffic (its
scores are all close together): true, so they may come, and are checked like the rest."""


@dataclass
class Instance:
    """One service process of the drill, on a port it keeps when it is started again (the
    scrape target is fixed), with the fault seams of ``tests.support.drill_service``."""

    checkpoint: Path
    port: int
    args: tuple[str, ...] = ()
    process: ServiceProcess | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def launch(self) -> None:
        self.process = start_service(
            self.checkpoint,
            *("--port", str(self.port), "--log-level", "info", *self.args),
            module="tests.support.drill_service",
            env={"PYTHONPATH": str(ROOT)},
        )

    def wait_until_serving(self) -> None:
        assert self.process is not None
        self.process.base_url()  # uvicorn's "running on" line: the port is open

    def kill(self) -> None:
        if self.process is not None:
            self.process.stop()  # SIGKILL: gone without a word, as an OOM kill does


@dataclass
class Timeline:
    """What happened when, in seconds from the drill's start; the test prints it."""

    started: float = field(default_factory=time.monotonic)
    events: list[str] = field(default_factory=list)

    def mark(self, event: str) -> None:
        self.events.append(f"{time.monotonic() - self.started:6.1f} s  {event}")


class Traffic:
    """Clients on threads, each sending ``documents(client, sent)`` to each of ``urls`` in
    turn, one request per ``interval_s`` (0: as fast as answered), until stopped; the answers
    are counted by status (none while an instance is down)."""

    def __init__(
        self,
        urls: list[str],
        documents: Callable[[int, int], list[str]],
        interval_s: float = 0.0,
        clients: int = 1,
    ) -> None:
        self.statuses: dict[int, int] = {}
        self._urls = urls
        self._documents = documents
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._client, args=(client,), daemon=True)
            for client in range(clients)
        ]

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def _client(self, client: int) -> None:
        with httpx.Client(timeout=30) as http:
            for sent in range(2000):  # bounded
                if self._stop.wait(self._interval_s):
                    return
                for url in self._urls:
                    body = {"query": "drill", "documents": self._documents(client, sent)}
                    try:
                        status = http.post(f"{url}/rerank", json=body).status_code
                    except httpx.TransportError:
                        continue  # the instance is down
                    with self._lock:
                        self.statuses[status] = self.statuses.get(status, 0) + 1


def _steady(client: int, sent: int) -> list[str]:
    return [f"steady {sent}", "the drill"]


def _overflowing(client: int, sent: int) -> list[str]:
    return [f"{OVERFLOW_WORD} document {sent}"]


def _slow(client: int, sent: int) -> list[str]:
    # New documents each time: the score cache must not answer them.
    return [f"{SLOW_WORD} document {client} {sent} {index}" for index in range(FLOOD_DOCUMENTS)]


def _alert(name: str, status: str, instance: str | None = None) -> Callable[[Notification], bool]:
    def matches(notification: Notification) -> bool:
        return any(
            alert["labels"]["alertname"] == name
            and alert["status"] == status
            and (instance is None or alert["labels"].get("instance") == instance)
            for alert in notification["alerts"]
        )

    return matches


def _stand_in(instance: str, ends_at: str | None = None) -> dict[str, Any]:
    """An alert for ``instance`` as Prometheus would post it, standing in for any of the
    instance's own alerts that could fire while it is down."""
    alert: dict[str, Any] = {
        "labels": {
            "alertname": STAND_IN,
            "job": "reranker",
            "instance": instance,
            "severity": "warning",
        },
        "annotations": {
            "summary": f"Stand-in alert for {instance}",
            "description": "Posted by the alerting drill to show RerankerDown's inhibition.",
            "runbook_url": "docs/observability.md#drill",
        },
    }
    if ends_at is not None:
        alert["endsAt"] = ends_at
    return alert


def _wait_for_inhibition(alertmanager: AlertmanagerServer, down: str, healthy: str) -> None:
    """Until Alertmanager holds the stand-in of the down instance as suppressed by its
    ``RerankerDown``, and the healthy instance's as active."""
    deadline = time.monotonic() + 30
    while True:
        alerts = alertmanager.alerts()
        by_name = {(a["labels"]["alertname"], a["labels"].get("instance")): a for a in alerts}
        muted, sent = by_name.get((STAND_IN, down)), by_name.get((STAND_IN, healthy))
        if muted and sent and muted["status"]["state"] != "unprocessed":
            break
        assert time.monotonic() < deadline, f"Alertmanager never processed the stand-ins: {alerts}"
        time.sleep(0.2)
    inhibitor = by_name[("RerankerDown", down)]
    assert muted["status"] == {
        "state": "suppressed",
        "inhibitedBy": [inhibitor["fingerprint"]],
        "silencedBy": [],
    }, muted["status"]
    assert sent["status"]["state"] == "active", sent["status"]


def _check_rendered(alert: dict[str, Any], instances: set[str], anchors: set[str]) -> None:
    """Labels a route and a person can act on, and annotations rendered with real values."""
    labels, annotations = alert["labels"], alert["annotations"]
    name = labels["alertname"]
    assert labels["job"] == "reranker", alert
    assert labels["severity"] in {"critical", "warning"}, alert
    # An instance's alert names it in its summary; a job's (the SLO alerts) names the job.
    subject = labels["instance"] if "instance" in labels else labels["job"]
    assert subject in instances | {"reranker"}, alert
    assert subject in annotations["summary"], (name, annotations)
    for key in ("summary", "description"):
        assert annotations[key], (name, key)
        assert "<no value>" not in annotations[key], (name, annotations[key])
        assert "error expanding" not in annotations[key], (name, annotations[key])
    page, _, anchor = annotations["runbook_url"].partition("#")
    assert page == "docs/observability.md", (name, annotations)
    assert anchor in anchors, f"{name}: no anchor #{anchor} in {page}"


@dataclass(frozen=True)
class DrillRecord:
    notifications: list[Notification]
    down: str
    """The instance killed (and that failed requests): A."""
    saturated: str
    """The instance whose queue was held full: B."""
    steady_statuses: dict[int, int]
    flood_statuses: dict[int, int]


def _drill(tmp_path: Path, checkpoint: Path, timeline: Timeline) -> DrillRecord:
    a = Instance(checkpoint, free_port())
    b_limits = (
        *("--max-queued-pairs", str(QUEUE_LIMIT), "--max-documents", str(FLOOD_DOCUMENTS)),
        *("--max-length", str(PASS_TOKENS), "--max-batch-tokens", str(PASS_TOKENS)),
    )
    b = Instance(checkpoint, free_port(), b_limits)
    prometheus_port = free_port()
    with contextlib.ExitStack() as stack:
        receiver = stack.enter_context(WebhookReceiver())
        for instance in (a, b):
            stack.callback(instance.kill)
            instance.launch()
        shipped_routes = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
        (tmp_path / "alertmanager").mkdir()
        alertmanager = stack.enter_context(
            start_alertmanager(
                tmp_path / "alertmanager",
                drill_alertmanager_config(shipped_routes, receiver.url, DRILL_TIME_SCALE),
            )
        )
        targets = {
            "reranker:8000": [a.address, b.address],
            "localhost:9090": [f"127.0.0.1:{prometheus_port}"],
            "alertmanager:9093": [alertmanager.url.removeprefix("http://")],
        }
        config_path = write_drill_prometheus(tmp_path / "prometheus", targets, DRILL_TIME_SCALE)
        drill_config = config_path.read_text()
        # Scraping first: the rules come with a reload once both instances are scraped.
        config_path.write_text(json.dumps(json.loads(drill_config) | {"rule_files": []}))
        prometheus = stack.enter_context(
            start_prometheus(tmp_path / "prometheus", config_path, port=prometheus_port)
        )
        for instance in (a, b):
            instance.wait_until_serving()
        steady = stack.enter_context(Traffic([a.url, b.url], _steady, STEADY_INTERVAL_S))
        prometheus.wait_until('count(up{job="reranker"} == 1) == 2', timeout_s=60)
        config_path.write_text(drill_config)
        prometheus.reload(config_path)
        timeline.mark("both instances scraped, rules loaded")

        # 1. down: A is killed; RerankerDown for A, which mutes A's other alerts.
        a.kill()
        timeline.mark("A killed")
        receiver.wait_for(
            "RerankerDown for A", _alert("RerankerDown", "firing", a.address), STAGE_TIMEOUT_S
        )
        timeline.mark("RerankerDown for A notified")
        alertmanager.post_alerts([_stand_in(a.address), _stand_in(b.address)])
        _wait_for_inhibition(alertmanager, down=a.address, healthy=b.address)
        receiver.wait_for("stand-in for B", _alert(STAND_IN, "firing", b.address), 30)
        timeline.mark("A's stand-in alert inhibited, B's notified")
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        alertmanager.post_alerts([_stand_in(a.address, now), _stand_in(b.address, now)])
        a.launch()
        a.wait_until_serving()
        timeline.mark("A started again")

        # 2. errors: requests that fail inside the engine on A, at half the steady rate.
        with Traffic([a.url], _overflowing, FAILING_INTERVAL_S) as failing:
            timeline.mark("requests failing on A")
            for name in BURN_PAIR:
                receiver.wait_for(name, _alert(name, "firing"), STAGE_TIMEOUT_S)
                timeline.mark(f"{name} notified")
        assert set(failing.statuses) == {500}, failing.statuses
        failed = failing.statuses[500]
        timeline.mark(f"{failed} requests failed on A")
        with httpx.Client(base_url=a.url, timeout=30) as http:
            good = {"query": "recovery", "documents": ["a good document"]}
            for _ in range(GOOD_PER_FAILED * failed):
                assert http.post("/rerank", json=good).status_code == 200
        timeline.mark(f"{GOOD_PER_FAILED * failed} good requests answered by A")

        # 3. saturation: B's queue held over half full by slow passes.
        with Traffic([b.url], _slow, clients=FLOOD_CLIENTS) as flood:
            timeline.mark("flood on B")
            receiver.wait_for(
                "RerankerQueueSaturated for B",
                _alert("RerankerQueueSaturated", "firing", b.address),
                STAGE_TIMEOUT_S,
            )
            timeline.mark("RerankerQueueSaturated for B notified")
        timeline.mark("flood stopped")

        # Recovery: each alert resolves.
        recoveries: list[tuple[str, str | None]] = [
            ("RerankerDown", a.address),
            (STAND_IN, b.address),
            *((name, None) for name in BURN_PAIR),
            ("RerankerQueueSaturated", b.address),
        ]
        for name, address in recoveries:
            receiver.wait_for(
                f"{name} resolved", _alert(name, "resolved", address), STAGE_TIMEOUT_S
            )
            timeline.mark(f"{name} resolved, notified")
    return DrillRecord(
        receiver.notifications, a.address, b.address, steady.statuses, flood.statuses
    )


@pytest.mark.slow  # two service processes, Prometheus and Alertmanager, for about 3 minutes
def test_alerts_travel_from_real_faults_to_the_receiver(
    tmp_path: Path, checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with capsys.disabled():
        print(
            f"\nalerting drill: for: and range durations of the rules, and Alertmanager's "
            f"group timings, divided by DRILL_TIME_SCALE = {DRILL_TIME_SCALE}"
        )
    timeline = Timeline()
    try:
        drill = _drill(tmp_path, checkpoint, timeline)
    finally:
        with capsys.disabled():
            print("\n".join(timeline.events))
    (tmp_path / "notifications.json").write_text(json.dumps(drill.notifications, indent=2))

    assert set(drill.steady_statuses) == {200}, drill.steady_statuses
    assert set(drill.flood_statuses) == {200}, (
        f"the flood was never refused: {drill.flood_statuses}"
    )
    alerts = [alert for notification in drill.notifications for alert in notification["alerts"]]
    anchors = doc_anchors(OBSERVABILITY_DOC.read_text())
    for alert in alerts:
        _check_rendered(alert, {drill.down, drill.saturated}, anchors)

    def firing_instances(name: str) -> set[str | None]:
        return {
            alert["labels"].get("instance")
            for alert in alerts
            if alert["labels"]["alertname"] == name and alert["status"] == "firing"
        }

    explained = DRILLED | RANDOM_MODEL | LATENCY_PAIR
    unexpected = {alert["labels"]["alertname"] for alert in alerts} - explained
    assert not unexpected, f"alerts that no fault of the drill explains: {unexpected}"
    assert firing_instances("RerankerDown") == {drill.down}
    assert firing_instances(STAND_IN) == {drill.saturated}, (
        "A's alerts were not muted while A was down"
    )
    assert firing_instances("RerankerQueueSaturated") == {drill.saturated}
    for name in BURN_PAIR:
        assert firing_instances(name) == {None}, "an SLO alert is the job's, not an instance's"
    for name in LATENCY_PAIR:
        assert firing_instances(name) <= {None}, "an SLO alert is the job's, not an instance's"
