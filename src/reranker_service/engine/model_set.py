"""The models one process serves, by name: which engine a request's ``model`` picks.

With one model served, a request's ``model`` is informational (clients such as LiteLLM send a
name of their own) and every request goes to it. With several, an absent ``model`` goes to the
first, a served name or alias to its model, and any other name is refused with the names
served."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from reranker_service.engine.rerank_engine import RerankEngine


class UnknownModelError(LookupError):
    """The request names a model this process does not serve."""

    def __init__(self, requested: str, served: Sequence[str]) -> None:
        super().__init__(
            f"model {requested!r} is not served here; served: {', '.join(map(repr, served))}"
        )
        self.requested = requested
        self.served = tuple(served)


@dataclass(frozen=True)
class ServedEngine:
    """One served model: its name, the other names it answers to, and its engine."""

    name: str
    engine: RerankEngine
    aliases: tuple[str, ...] = ()
    default_instruction: str | None = None
    """The instruction its requests without one get; None: the process's default."""

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)


class ModelSet:
    """The served models, the default first."""

    def __init__(self, served: Sequence[ServedEngine]) -> None:
        if not served:
            raise ValueError("a model set needs a model")
        self._served = tuple(served)
        self._by_name = {name: entry for entry in self._served for name in entry.names}
        if len(self._by_name) != sum(len(entry.names) for entry in self._served):
            raise ValueError("two served models share a name")

    def __iter__(self) -> Iterator[ServedEngine]:
        return iter(self._served)

    def __len__(self) -> int:
        return len(self._served)

    @property
    def default(self) -> ServedEngine:
        return self._served[0]

    @property
    def names(self) -> tuple[str, ...]:
        """Every name a request may send, aliases included, in order."""
        return tuple(self._by_name)

    def pick(self, requested: str | None) -> ServedEngine:
        """The model for a request naming ``requested`` (None: it names none)."""
        if requested is None or len(self._served) == 1:
            return self.default
        served = self._by_name.get(requested)
        if served is None:
            raise UnknownModelError(requested, self.names)
        return served

    @property
    def queued_pairs(self) -> int:
        return sum(entry.engine.queued_pairs for entry in self._served)

    @property
    def lost_devices(self) -> dict[str, str]:
        """Workers whose device failed for good, and why; named ``model/device`` when several
        models are served."""
        if len(self._served) == 1:
            return self.default.engine.lost_devices
        return {
            f"{entry.name}/{device}": reason
            for entry in self._served
            for device, reason in entry.engine.lost_devices.items()
        }
