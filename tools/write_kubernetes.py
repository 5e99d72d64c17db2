"""Write what ``deploy/kubernetes`` carries from elsewhere in the repository, so that each has
one source: the base's PrometheusRule from ``deploy/prometheus/rules/`` and dashboard from
``deploy/grafana/dashboards/``, and the two-models overlay's ``models.yaml`` from
``deploy/models.example.yaml`` (kustomize reads no file outside an overlay's folder).

    .venv/bin/python tools/write_kubernetes.py

``tests/test_kubernetes.py`` fails when the written files are out of date.
"""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
RULE_FILES = (
    ROOT / "deploy/prometheus/rules/reranker-recording.yml",
    ROOT / "deploy/prometheus/rules/reranker-alerts.yml",
    ROOT / "deploy/prometheus/rules/reranker-slo.yml",
)
DASHBOARD = ROOT / "deploy/grafana/dashboards/reranker.json"
MODELS_EXAMPLE = ROOT / "deploy/models.example.yaml"
BASE = ROOT / "deploy/kubernetes/base"
TWO_MODELS = ROOT / "deploy/kubernetes/overlays/two-models"
HEADER = "# Written by tools/write_kubernetes.py from {source}; do not edit.\n"


class _BlockStyleDumper(yaml.SafeDumper):
    """Multi-line strings (PromQL, annotations) as ``|`` blocks, as the rule files write them."""


def _string(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockStyleDumper.add_representer(str, _string)


def prometheus_rule() -> str:
    groups = [group for path in RULE_FILES for group in yaml.safe_load(path.read_text())["groups"]]
    rule = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "reranker"},
        "spec": {"groups": groups},
    }
    source = ", ".join(str(path.relative_to(ROOT)) for path in RULE_FILES)
    body = yaml.dump(rule, Dumper=_BlockStyleDumper, sort_keys=False, width=100)
    return HEADER.format(source=source) + body


def models_file() -> str:
    """The example models file, as the two-models overlay's ConfigMap carries it."""
    source = MODELS_EXAMPLE.relative_to(ROOT)
    return HEADER.format(source=source) + MODELS_EXAMPLE.read_text()


def outputs() -> dict[Path, str]:
    """Each written file and its content."""
    return {
        BASE / "prometheusrule.yaml": prometheus_rule(),
        BASE / "reranker-dashboard.json": DASHBOARD.read_text(),
        TWO_MODELS / "models.yaml": models_file(),
    }


def main() -> None:
    for path, content in outputs().items():
        path.write_text(content)


if __name__ == "__main__":
    main()
