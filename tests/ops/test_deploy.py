"""The deploy stack, checked as far as a machine without a Docker engine can check it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import structlog
import yaml

from reranker_service.app import create_app
from reranker_service.observability.metrics import EXEMPLAR_TRACE_LABEL
from reranker_service.settings import Settings
from reranker_service.tiny_checkpoint import CheckpointKind
from tests.support.exposition import scrape
from tests.support.local_server import serve_in_thread
from tests.support.paths import DATA, ROOT
from tests.support.prometheus_server import PrometheusServer, run_prometheus
from tests.support.serving import AppFactory, asgi_client

DEPLOY = ROOT / "deploy"
COMPOSE_SCHEMA = DATA / "compose-spec.json"
"""The Compose Specification's JSON schema, vendored: every clone runs the same suite."""
RULES = sorted((DEPLOY / "prometheus" / "rules").glob("*.yml"))
RULE_TESTS = sorted((DEPLOY / "prometheus" / "tests").glob("*.yml"))
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "reranker.json"
MODELS_EXAMPLE = DEPLOY / "models.example.yaml"
TWO_MODELS_OVERRIDE = "deploy/compose/two-models.yml"


class _ComposeLoader(yaml.SafeLoader):
    """YAML as Compose reads it: ``!reset`` and ``!override`` are merge directives."""


def _merge_directive(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node)
    return loader.construct_scalar(node)  # type: ignore[arg-type]


_ComposeLoader.add_constructor("!reset", _merge_directive)
_ComposeLoader.add_constructor("!override", _merge_directive)


def _compose(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.load((ROOT / name).read_text(), Loader=_ComposeLoader)
    return loaded


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: .ci/run installs Debian's prometheus packages")
    return path


def _run(*command: str, cwd: Path = ROOT) -> str:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


# -- compose ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["docker-compose.yml", "docker-compose.cpu.yml", TWO_MODELS_OVERRIDE]
)
def test_compose_files_follow_the_compose_spec(name: str) -> None:
    schema = json.loads(COMPOSE_SCHEMA.read_text())  # draft-07, as its $schema says
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.Draft7Validator(schema).validate(_compose(name))


def test_compose_wires_the_stack() -> None:
    compose = _compose("docker-compose.yml")
    services = compose["services"]
    assert {"reranker", "prometheus", "alertmanager", "grafana"} <= set(services)
    reranker = services["reranker"]
    [gpu] = reranker["deploy"]["resources"]["reservations"]["devices"]
    assert (gpu["driver"], gpu["count"], gpu["capabilities"]) == ("nvidia", 1, ["gpu"])
    assert "hf-cache:/cache" in reranker["volumes"]
    # The compiled forward's cache survives a restart (RERANKER_COMPILE_CACHE in the image).
    assert "compile-cache:/compile-cache" in reranker["volumes"]
    assert "compile-cache" in compose["volumes"]
    # Read-only root, a scratch tmpfs, no privileges (tests/ops/test_container.py runs it so).
    assert (reranker["read_only"], reranker["tmpfs"]) == (True, ["/tmp"])
    assert reranker["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in reranker["security_opt"]
    grace = int(reranker["environment"]["RERANKER_SHUTDOWN_GRACE_SECONDS"])
    assert int(reranker["stop_grace_period"].removesuffix("s")) > grace
    for name, service in services.items():
        if "image" in service and "build" not in service:
            image = service["image"]
            assert re.search(r":v?\d+\.\d+\.\d+$", image), f"{name}: pin {image} to a version"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    reranker_job = next(j for j in scrape["scrape_configs"] if j["job_name"] == "reranker")
    assert reranker_job["static_configs"][0]["targets"] == ["reranker:8000"]
    assert scrape["global"]["scrape_interval"] == "15s"
    grafana = services["grafana"]["environment"]
    assert grafana["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert grafana["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD")


def _datasources(name: str) -> dict[str, dict[str, Any]]:
    path = DEPLOY / "grafana" / "provisioning" / "datasources" / name
    return {source["uid"]: source for source in yaml.safe_load(path.read_text())["datasources"]}


def test_compose_links_traces_logs_and_exemplars() -> None:
    """Tempo gets the traces, Prometheus keeps the exemplars, Loki gets the log lines, and
    Grafana's datasources lead from each to the trace."""
    services = _compose("docker-compose.yml")["services"]
    reranker_env = services["reranker"]["environment"]
    endpoint = reranker_env["OTEL_EXPORTER_OTLP_ENDPOINT"]
    assert endpoint == "${OTEL_EXPORTER_OTLP_ENDPOINT-http://tempo:4318}"
    tempo = yaml.safe_load((DEPLOY / "tempo" / "tempo.yml").read_text())
    otlp = tempo["distributor"]["receivers"]["otlp"]["protocols"]
    assert otlp["http"]["endpoint"].endswith(":4318")
    assert otlp["grpc"]["endpoint"].endswith(":4317")
    assert "./deploy/tempo:/etc/tempo:ro" in services["tempo"]["volumes"]
    assert services["tempo"]["command"] == ["-config.file=/etc/tempo/tempo.yml"]
    assert "--enable-feature=exemplar-storage" in services["prometheus"]["command"]
    assert {"tempo", "loki"} <= set(services["grafana"]["depends_on"])

    [prometheus] = _datasources("prometheus.yml").values()
    tracing = _datasources("tracing.yml")
    tempo_source, loki_source = tracing["tempo"], tracing["loki"]
    assert tempo_source["url"] == f"http://tempo:{tempo['server']['http_listen_port']}"
    [exemplar_link] = prometheus["jsonData"]["exemplarTraceIdDestinations"]
    assert exemplar_link == {"name": EXEMPLAR_TRACE_LABEL, "datasourceUid": "tempo"}
    assert tempo_source["jsonData"]["tracesToLogsV2"]["datasourceUid"] == "loki"

    # The Loki link finds the trace id in a line as the service writes it.
    loki = yaml.safe_load((DEPLOY / "loki" / "loki.yml").read_text())
    assert loki_source["url"] == f"http://loki:{loki['server']['http_listen_port']}"
    assert (
        f"http://loki:{loki['server']['http_listen_port']}/loki/api/v1/push"
        in (DEPLOY / "alloy" / "config.alloy").read_text()
    )
    [derived] = loki_source["jsonData"]["derivedFields"]
    assert derived["datasourceUid"] == "tempo"
    assert derived["url"] == "$${__value.raw}"  # $$: not an environment variable
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    line = structlog.processors.JSONRenderer()(
        None, "info", {"event": "request_completed", "trace_id": trace_id, "span_id": "0" * 16}
    )
    match = re.search(derived["matcherRegex"], str(line))
    assert match is not None
    assert match.group(1) == trace_id

    # The latency heatmap asks for the exemplars of the raw buckets.
    [heatmap] = [panel for panel in _panels() if panel["title"] == "Latency distribution"]
    [target] = heatmap["targets"]
    assert target["exemplar"] is True
    assert "reranker_request_latency_seconds_bucket" in target["expr"]


def test_cpu_override_drops_the_gpu_and_serves_the_test_model() -> None:
    override = _compose("docker-compose.cpu.yml")["services"]
    text = (ROOT / "docker-compose.cpu.yml").read_text()
    assert re.search(r"^    deploy: !reset", text, flags=re.MULTILINE)
    reranker = override["reranker"]
    assert reranker["environment"]["RERANKER_DEVICE"] == "cpu"
    assert reranker["environment"]["RERANKER_MODEL"].endswith("/models/tiny}")
    assert reranker["depends_on"]["test-model"]["condition"] == "service_completed_successfully"
    assert override["test-model"]["entrypoint"] == ["reranker-make-test-model", "/models/tiny"]
    assert "whl/cpu" in reranker["build"]["args"]["TORCH_INDEX_URL"]


def test_the_example_models_file_serves_two_models() -> None:
    """deploy/models.example.yaml, as the service reads it: qwen (the default, alias default)
    and bge with its own max_length."""
    qwen, bge = Settings(models_file=str(MODELS_EXAMPLE), device="cpu").model_specs
    assert (qwen.name, qwen.model, qwen.aliases) == (
        "qwen",
        "Qwen/Qwen3-Reranker-0.6B",
        ("default",),
    )
    assert (bge.name, bge.model, bge.max_length) == ("bge", "BAAI/bge-reranker-v2-m3", 1024)


def test_two_models_override_mounts_the_models_file_instead_of_one_model() -> None:
    """deploy/compose/two-models.yml, merged over docker-compose.yml: RERANKER_MODEL reset,
    RERANKER_MODELS_FILE naming the example file where it is mounted."""
    reranker = _compose(TWO_MODELS_OVERRIDE)["services"]["reranker"]
    text = (ROOT / TWO_MODELS_OVERRIDE).read_text()
    assert re.search(r"^      RERANKER_MODEL: !reset null$", text, flags=re.MULTILINE)
    [volume] = reranker["volumes"]
    source, target, mode = volume.split(":")
    # Paths in an override file are relative to the first file's folder: the repository root.
    assert (ROOT / source).resolve() == MODELS_EXAMPLE
    assert (target, mode) == (reranker["environment"]["RERANKER_MODELS_FILE"], "ro")
    base = _compose("docker-compose.yml")["services"]["reranker"]
    assert all(not mount.endswith(":" + target) for mount in base["volumes"])
    # The base file's other settings, the image and the GPU stay as they are.
    assert set(reranker) == {"environment", "volumes"}


def test_dockerfile_builds_a_small_non_root_image_with_a_healthcheck() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM \S+ AS (\w+)", dockerfile, flags=re.MULTILINE)
    assert stages == ["build", "runtime"]
    runtime = dockerfile.split("AS runtime", 1)[1]
    assert "COPY --from=build /opt/venv /opt/venv" in runtime
    assert re.search(r"^USER reranker$", runtime, flags=re.MULTILINE)
    assert 'VOLUME ["/cache", "/compile-cache"]' in runtime
    assert "RERANKER_COMPILE_CACHE=/compile-cache" in runtime
    assert "HF_HOME=/cache/huggingface" in runtime
    assert "STOPSIGNAL SIGTERM" in runtime
    assert 'CMD ["reranker-healthcheck"]' in runtime
    for source in re.findall(r"^COPY (?!--from)(.+) \S+$", dockerfile, flags=re.MULTILINE):
        for path in source.split():
            assert (ROOT / path).exists(), f"Dockerfile copies missing {path}"
    patterns = [
        line
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line and line[0] != "#"
    ]
    assert patterns[0] == "*", ".dockerignore should let in only what the image needs"
    assert {"!pyproject.toml", "!README.md", "!constraints.txt", "!src/"} <= set(patterns)
    # Both installs are held to the pinned versions.
    installs = re.findall(r"^RUN pip install .*(?:\\\n.*)*", dockerfile, flags=re.MULTILINE)
    assert len(installs) == 2
    assert all("--constraint constraints.txt" in install for install in installs)


def test_healthcheck_command_reports_the_service(app_factory: AppFactory) -> None:
    from reranker_service.healthcheck import main as healthcheck

    with serve_in_thread(app_factory()) as base_url:
        port = base_url.rsplit(":", 1)[1]
        assert healthcheck(["--host", "0.0.0.0", "--port", port]) == 0
    assert healthcheck(["--host", "127.0.0.1", "--port", port]) == 1


# -- Prometheus and Alertmanager -----------------------------------------------------------------


def test_promtool_accepts_the_config_and_rules() -> None:
    promtool = _tool("promtool")
    output = _run(promtool, "check", "config", "prometheus.yml", cwd=DEPLOY / "prometheus")
    assert f"{len(RULES)} rule files found" in output


def test_every_alert_has_rule_tests_that_fire_and_stay_quiet() -> None:
    alerts = {
        rule["alert"]
        for path in RULES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    assert len(alerts) >= 8
    fires: set[str] = set()
    quiet: set[str] = set()
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (fires if check["exp_alerts"] else quiet).add(check["alertname"])
    assert alerts <= fires, f"never shown firing: {alerts - fires}"
    assert alerts <= quiet, f"never shown quiet: {alerts - quiet}"
    promtool = _tool("promtool")
    for path in RULE_TESTS:
        assert "SUCCESS" in _run(promtool, "test", "rules", str(path))


def test_amtool_accepts_the_alertmanager_config() -> None:
    amtool = _tool("amtool")
    output = _run(amtool, "check-config", str(DEPLOY / "alertmanager" / "alertmanager.yml"))
    assert "SUCCESS" in output


# -- Grafana ------------------------------------------------------------------------------------


def _panels() -> list[dict[str, Any]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [panel for panel in dashboard["panels"] if panel["type"] != "row"]


def _expressions(panel: dict[str, Any]) -> list[str]:
    return [target["expr"] for target in panel["targets"]]


def _is_gpu_panel(panel: dict[str, Any]) -> bool:
    return all(re.search(r"reranker_(gpu|torch)_", expr) for expr in _expressions(panel))


def test_grafana_provisioning_points_at_the_dashboard_and_datasource() -> None:
    provisioning = DEPLOY / "grafana" / "provisioning"
    [datasource] = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    assert datasource["url"] == "http://prometheus:9090"
    [provider] = yaml.safe_load((provisioning / "dashboards" / "reranker.yml").read_text())[
        "providers"
    ]
    grafana_volumes = _compose("docker-compose.yml")["services"]["grafana"]["volumes"]
    assert f"./deploy/grafana/dashboards:{provider['options']['path']}:ro" in grafana_volumes

    dashboard = json.loads(DASHBOARD.read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in _panels():
        assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]
        assert panel["targets"], panel["title"]
        for expr in _expressions(panel):
            # Template variables may hold several values: always a regex match.
            assert not re.search(r'(?<![=!~])=\s*"\$', expr), expr
            for variable in re.findall(r"\$(\w+)", expr):
                assert variable.startswith("__") or f'=~"${variable}"' in expr, expr
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert set(variables) == {"job", "instance", "model"}
    assert all(v["multi"] and v["includeAll"] for v in variables.values())
    assert all(v["allValue"] == ".*" for v in variables.values())
    # The served models' names, as reranker_model_info carries them (within the job and
    # instance picked above it).
    model_query = variables["model"]["query"]["query"]
    assert re.fullmatch(r"label_values\(reranker_model_info(\{[^}]*\})?, model\)", model_query)
    assert variables["model"]["definition"] == model_query


# -- the model variable ------------------------------------------------------------------------

MODEL_FILTER = 'model=~"$model"'
_SELECTOR = re.compile(r"\b(reranker[_:][\w:]*)(\{[^}]*\})?")
_SERIES_SUFFIXES = ("_bucket", "_count", "_sum", "_total")


async def _served_model_families(app_factory: AppFactory) -> set[str]:
    """The families the service publishes with a ``model`` label, read from its first scrape
    (every family exists from it, with its label values)."""
    async with asgi_client(app_factory()) as http:
        exposition = await scrape(http)
    return {
        name
        for name, family in exposition.families.items()
        if any("model" in sample.labels for sample in family.samples)
    }


def _recorded_model_series() -> set[str]:
    """The recorded series that keep the ``model`` label: their rule aggregates by it."""
    return {
        rule["record"]
        for path in RULES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "record" in rule and re.search(r"\bby \([^)]*\bmodel\b", rule["expr"])
    }


def _unfiltered_model_selectors(expr: str, model_families: set[str]) -> list[str]:
    """The selectors of ``expr`` on a family with a ``model`` label that do not match it
    against the dashboard's variable."""
    missing = []
    for found in _SELECTOR.finditer(expr):
        name, matchers = found.group(1), found.group(2) or ""
        family = name
        for suffix in _SERIES_SUFFIXES:
            if name not in model_families and name.endswith(suffix):
                family = name.removesuffix(suffix)
        if family in model_families and MODEL_FILTER not in matchers:
            missing.append(found.group(0))
    return missing


async def test_every_query_on_a_model_labelled_family_filters_by_the_model_variable(
    app_factory: AppFactory,
) -> None:
    """Several models in one process: every panel query on a family or recorded series
    that carries ``model`` matches it with ``model=~"$model"``, selector by selector (a panel
    that forgets it mixes models the viewer did not pick)."""
    served = await _served_model_families(app_factory)
    assert {"reranker_requests", "reranker_top1_score", "reranker_queue_depth"} <= served
    assert {"reranker_model_info", "reranker_inference_seconds", "reranker_runner_info"} <= served
    assert not {"reranker_gpu_memory_used_bytes", "reranker_inflight_requests"} & served
    recorded = _recorded_model_series()
    assert {"reranker:top1_score:mean_10m", "reranker:request_latency_seconds:p95_5m"} <= recorded
    assert not {"reranker:worker_busy:ratio_rate5m", "reranker:gpu_memory_used:ratio"} & recorded
    model_families = served | recorded
    # The check can fail: a selector without the filter, one of two, a histogram's bucket.
    unfiltered = 'sum(rate(reranker_requests_total{job=~"$job"}[5m]))'
    assert _unfiltered_model_selectors(unfiltered, model_families) == [
        'reranker_requests_total{job=~"$job"}'
    ]
    half = 'reranker:top1_score:mean_10m{model=~"$model"} / reranker:score_stddev:mean_10m'
    assert _unfiltered_model_selectors(half, model_families) == ["reranker:score_stddev:mean_10m"]
    bucket = 'sum by (le) (rate(reranker_request_latency_seconds_bucket{le="2.0"}[5m]))'
    assert len(_unfiltered_model_selectors(bucket, model_families)) == 1
    filtered = 0
    for panel in _panels():
        for expr in _expressions(panel):
            missing = _unfiltered_model_selectors(expr, model_families)
            assert not missing, f"{panel['title']}: {missing} without {MODEL_FILTER}"
            filtered += MODEL_FILTER in expr
    assert filtered >= 25


def test_panels_that_compare_models_split_by_model() -> None:
    """Latency, throughput and quality: one line per model, named in the legend."""
    for title in (
        "Success rate (target 99.5 %)",
        "Latency p50 / p95 / p99",
        "Throughput",
        "Queue wait (p95 per pair)",
        "Inference time per forward pass",
        "Top-1 score (mean, 10m)",
        "Score spread (mean stddev, 10m)",
        "Errors/s by type",
        "Requests/s by status",
    ):
        [panel] = [panel for panel in _panels() if panel["title"] == title]
        for target in panel["targets"]:
            assert "{{model}}" in target["legendFormat"], (title, target["legendFormat"])


def test_dashboard_has_the_panels_users_need() -> None:
    titles = " | ".join(panel["title"].lower() for panel in _panels())
    for wanted in (
        "success rate",
        "requests/s by status",
        "latency p50 / p95 / p99",
        "latency distribution",
        "errors/s by type",
        "documents and tokens per request",
        "queue depth",
        "queue wait",
        "batch size and batch tokens",
        "inference time",
        "throughput",
        "padding efficiency",
        "prompt tokens reused",
        "top-1 score",
        "score spread",
        "gpu memory used / total",
        "gpu utilization",
        "torch allocated / reserved",
        "process rss",
        "model",
    ):
        assert wanted in titles, wanted
    heatmap = next(p for p in _panels() if p["type"] == "heatmap")
    assert heatmap["targets"][0]["format"] == "heatmap"
    success = next(p for p in _panels() if p["title"].startswith("Success rate (target"))
    steps = success["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert steps[-1]["value"] == 0.995


SERVED_MODELS = ("qwen", "bert")
"""The live stack's models: the tiny Qwen3 reranker and a tiny BERT cross-encoder, in one
process, as RERANKER_MODELS serves them."""


@pytest.fixture
def scraped_service(
    tmp_path: Path, checkpoint: Path, kind_checkpoint: Callable[[CheckpointKind], Path]
) -> Iterator[PrometheusServer]:
    """A real Prometheus with the shipped rules, after it scraped a service of two models under
    traffic to both (and requests refused before a model was chosen)."""
    settings = Settings(
        models=f"qwen={checkpoint},bert={kind_checkpoint('bert')}",
        device="cpu",
        dtype="float32",
        host="127.0.0.1",
        cache_size=0,
        api_key="k",
        max_documents=20,
    )
    with (
        serve_in_thread(create_app(settings)) as base_url,
        run_prometheus(tmp_path, base_url.removeprefix("http://"), RULES) as prometheus,
        httpx.Client(base_url=base_url, timeout=30) as http,
    ):
        prometheus.wait_until('up{job="reranker"} == 1')
        auth = {"Authorization": "Bearer k"}
        deadline = time.monotonic() + 6  # several scrapes and rule evaluations under traffic
        sent = 0
        while time.monotonic() < deadline or sent < 20:
            docs = [f"document {sent} number {j} " * (j + 1) for j in range(1 + sent % 6)]
            body = {"query": f"query {sent}", "documents": docs}
            model = SERVED_MODELS[sent % 2]
            answer = http.post("/rerank", json=body | {"model": model}, headers=auth)
            assert answer.status_code == 200, answer.text
            if sent % 5 == 0:
                http.post("/rerank", json={"query": "q", "documents": ["d"]})  # 401
                http.post("/v2/rerank", json={"query": "q", "documents": "x"}, headers=auth)
                unknown = body | {"model": "no-such-model"}
                assert http.post("/rerank", json=unknown, headers=auth).status_code == 404
            sent += 1
        prometheus.wait_until("count(reranker:pairs:rate5m > 0) == 2")
        prometheus.wait_until("count(reranker:score_stddev:mean_10m > 0) == 2")
        yield prometheus


def _substitute(expr: str, model: str = ".*") -> str:
    """What Grafana sends for 'All' (or the model picked) and its interval variables."""
    return (
        expr.replace("$__rate_interval", "10s")
        .replace("$__interval", "2s")
        .replace("$job", ".*")
        .replace("$instance", ".*")
        .replace("$model", model)
    )


@pytest.mark.slow  # starts real server processes
def test_dashboard_queries_and_alert_rules_run_on_live_data(
    scraped_service: PrometheusServer,
) -> None:
    end = time.time()
    empty: list[str] = []
    for panel in _panels():
        series = 0
        for expr in _expressions(panel):
            # A malformed query fails here: the API answers status "error".
            series += len(scraped_service.query_range(_substitute(expr), end - 60, end, 2))
        if series == 0 and not _is_gpu_panel(panel):
            empty.append(panel["title"])
    assert empty == [], f"panels without data: {empty}"
    for path in RULES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                scraped_service.query(rule["expr"])


@pytest.mark.slow  # starts real server processes
def test_the_model_variable_picks_one_models_series_on_live_data(
    scraped_service: PrometheusServer,
) -> None:
    """Two models in one process: the recorded quality, latency and throughput series are
    one per model, and with one model picked every panel shows that model's series only (or
    a total over it)."""
    for record in (
        "reranker:top1_score:mean_10m",
        "reranker:score_stddev:mean_10m",
        "reranker:request_latency_seconds:p95_5m",
        "reranker:pairs:rate5m",
        "reranker:request_success:ratio_rate5m",
    ):
        recorded = [series["metric"]["model"] for series in scraped_service.query(record)]
        assert sorted(recorded) == sorted(SERVED_MODELS), record
    # The requests refused before a model was chosen are counted without a model label.
    refused = scraped_service.query('reranker:request_errors:rate5m{model=""} > 0')
    assert {series["metric"]["type"] for series in refused} >= {"unauthorized", "validation"}
    end = time.time()
    for picked in SERVED_MODELS:
        seen: set[str | None] = set()
        for panel in _panels():
            for expr in _expressions(panel):
                if MODEL_FILTER not in expr:
                    continue
                result = scraped_service.query_range(_substitute(expr, picked), end - 60, end, 2)
                shown = {series["metric"].get("model") for series in result}
                assert shown <= {picked, None}, (panel["title"], picked, shown)
                seen |= shown
        assert picked in seen
