"""Read a /metrics page with prometheus_client's own text parser."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


@dataclass(frozen=True)
class Histogram:
    count: float
    sum: float
    buckets: dict[float, float]
    """Cumulative counts by upper bound, ``+Inf`` included."""


class Exposition:
    def __init__(self, text: str) -> None:
        self.text = text
        self.families = {family.name: family for family in text_string_to_metric_families(text)}

    @classmethod
    def of(cls, registry: CollectorRegistry) -> Exposition:
        """What a scrape of this registry would return."""
        return cls(generate_latest(registry).decode())

    def samples(self, family: str) -> list[Sample]:
        return list(self.families[family].samples)

    def value(self, sample_name: str, **labels: str) -> float:
        """The samples of ``sample_name`` that carry ``labels``, summed (as PromQL's ``sum``
        would over the labels not given: ``model`` with one model served); a ``KeyError``
        where there is none."""
        family = self.families[_family_name(sample_name)]
        matches = [
            sample.value
            for sample in family.samples
            if sample.name == sample_name and labels.items() <= sample.labels.items()
        ]
        if not matches:
            raise KeyError(f"{sample_name}{labels}: no sample")
        return sum(matches)

    def histogram(self, name: str, **labels: str) -> Histogram:
        """The histogram's series that carry ``labels``, summed (as PromQL's ``sum`` would):
        with none given, over every device."""
        count = total = 0.0
        buckets: dict[float, float] = {}
        for sample in self.samples(name):
            if any(sample.labels.get(key) != value for key, value in labels.items()):
                continue
            if sample.name == f"{name}_bucket":
                bound = float(sample.labels["le"])
                buckets[bound] = buckets.get(bound, 0.0) + sample.value
            elif sample.name == f"{name}_count":
                count += sample.value
            elif sample.name == f"{name}_sum":
                total += sample.value
        return Histogram(count=count, sum=total, buckets=buckets)


def _family_name(sample_name: str) -> str:
    for suffix in ("_total", "_count", "_sum", "_bucket"):
        if sample_name.endswith(suffix):
            return sample_name.removesuffix(suffix)
    return sample_name


async def scrape(http: httpx.AsyncClient) -> Exposition:
    response = await http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return Exposition(response.text)
