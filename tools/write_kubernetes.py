"""Write what ``deploy/kubernetes/base`` carries from elsewhere in the repository, so that each
has one source: the PrometheusRule from ``deploy/prometheus/rules/`` and the dashboard from
``deploy/grafana/dashboards/``.

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
BASE = ROOT / "deploy/kubernetes/base"
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


def outputs() -> dict[Path, str]:
    """Each written file and its content."""
    return {
        BASE / "prometheusrule.yaml": prometheus_rule(),
        BASE / "reranker-dashboard.json": DASHBOARD.read_text(),
    }


def main() -> None:
    for path, content in outputs().items():
        path.write_text(content)


if __name__ == "__main__":
    main()
