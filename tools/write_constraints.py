"""Write ``constraints.txt``: an exact pin for every distribution the service and its tests
need, read from the environment this runs in (after ``pip install torch==... -e '.[test,bench]'``).

    .venv/bin/python tools/write_constraints.py > constraints.txt

torch itself is left out, since the CPU and the CUDA build differ in name (``2.13.0+cpu``): the
Dockerfile and the README's test command pin it by version. What only torch's CUDA build brings
(``nvidia-*``, ``triton``) is pinned exactly by that torch release's own metadata.
"""

from __future__ import annotations

import re
import sys
from importlib import metadata

from packaging.requirements import Requirement

PROJECT = "reranker-service"
EXTRAS = ("test", "bench")
TORCH = "torch"
"""Pinned by version elsewhere: its CPU and CUDA builds differ in name."""
TORCH_CUDA_BUILD = re.compile(r"^(triton|nvidia-.*)$")
"""What torch's CUDA build brings: followed for their own dependencies, but not pinned here,
unless the project asks for one by name (``nvidia-ml-py``, NVML's bindings, is its own)."""


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(project: str, extras: tuple[str, ...]) -> dict[str, str]:
    """Every installed distribution ``project[extras]`` needs, by canonical name -> version."""
    found: dict[str, str] = {}
    pending: list[tuple[str, tuple[str, ...]]] = [(project, extras)]
    while pending:
        name, wanted_extras = pending.pop()
        distribution = metadata.distribution(name)
        for line in distribution.requires or []:
            requirement = Requirement(line)
            environments = [{"extra": extra} for extra in wanted_extras] or [{"extra": ""}]
            if requirement.marker is not None and not any(
                requirement.marker.evaluate(env) for env in environments
            ):
                continue
            key = canonical(requirement.name)
            if key in found:
                continue
            try:
                found[key] = metadata.version(requirement.name)
            except metadata.PackageNotFoundError:
                continue  # for another platform, or torch's CUDA build only
            pending.append((requirement.name, tuple(requirement.extras)))
    direct = {
        canonical(Requirement(line).name) for line in metadata.distribution(project).requires or []
    }
    return {
        name: version
        for name, version in found.items()
        if name not in (canonical(project), TORCH)
        and (name in direct or not TORCH_CUDA_BUILD.match(name))
    }


def main() -> None:
    pins = closure(PROJECT, EXTRAS)
    sys.stdout.write(
        "# Exact versions of everything reranker-service and its tests install, except torch\n"
        "# (pinned by version in the Dockerfile and the README's test command). Regenerate with\n"
        "#   .venv/bin/python tools/write_constraints.py > constraints.txt\n"
    )
    for name in sorted(pins):
        sys.stdout.write(f"{name}=={pins[name]}\n")


if __name__ == "__main__":
    main()
