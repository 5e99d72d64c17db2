"""Writes ``tests/data/beir-synthetic/``, a small BEIR-layout set for the eval command's tests.

Regenerate with ``python tests/data/make_beir_synthetic.py`` (from the repository root; an
optional argument names another output folder). The output depends on nothing but this file:
a seeded ``random.Random`` and the standard library, so the same bytes come out every time
(a test holds the committed folder to that).

Thirty topics of six words each. Each topic's query uses three of its words; one to three
documents are relevant to it (grade 2 holds all the query's words, grade 1 some), two "near
misses" are about another topic but carry one of its words, and the rest of the ~300 documents
are about other topics. Texts are plain lowercase ASCII words, 20 to 60 a document, so that a
tiny test model scores them fast and BM25 finds the relevant ones. ``candidates.trec`` is an
imperfect first stage: 20 candidates a query, most relevant documents among them but not
always on top, and a few relevant ones missed, so reranking has something to improve.
"""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

SEED = 20240611
CANDIDATES_PER_QUERY = 20
DOCUMENTS = 300
EXTRA_QUERIES = 2
"""Queries in queries.jsonl with no judgments in the test split, as BEIR's files hold every
split's queries."""

TOPICS: tuple[tuple[str, ...], ...] = (
    ("telescope", "nebula", "comet", "orbit", "galaxy", "asteroid"),
    ("dough", "yeast", "oven", "flour", "crust", "knead"),
    ("lava", "magma", "eruption", "crater", "ash", "basalt"),
    ("hull", "mast", "keel", "sail", "harbor", "anchor"),
    ("hive", "honey", "pollen", "queen", "swarm", "nectar"),
    ("pawn", "bishop", "gambit", "checkmate", "rook", "endgame"),
    ("pedal", "gear", "chain", "saddle", "spoke", "helmet"),
    ("glacier", "moraine", "crevasse", "icefield", "meltwater", "fjord"),
    ("lens", "aperture", "shutter", "exposure", "tripod", "focus"),
    ("espresso", "roast", "bean", "grinder", "crema", "arabica"),
    ("loom", "yarn", "warp", "weft", "shuttle", "textile"),
    ("clay", "kiln", "glaze", "wheel", "porcelain", "ceramic"),
    ("canopy", "orchid", "jaguar", "humidity", "vine", "understory"),
    ("locomotive", "track", "signal", "freight", "station", "carriage"),
    ("antibody", "immune", "vaccine", "antigen", "booster", "dose"),
    ("parser", "lexer", "bytecode", "optimizer", "syntax", "register"),
    ("tide", "lunar", "estuary", "shoreline", "current", "surge"),
    ("violin", "bow", "string", "rosin", "luthier", "fingerboard"),
    ("curd", "rennet", "brine", "cheddar", "aging", "rind"),
    ("dune", "cactus", "oasis", "arid", "sandstorm", "mirage"),
    ("arrow", "quiver", "target", "fletching", "archer", "recurve"),
    ("fungus", "spore", "mycelium", "morel", "forager", "truffle"),
    ("lighthouse", "beacon", "lantern", "keeper", "fog", "reef"),
    ("suspension", "cable", "girder", "truss", "span", "pylon"),
    ("vineyard", "grape", "tannin", "barrel", "vintage", "cellar"),
    ("fault", "seismic", "tremor", "epicenter", "aftershock", "tectonic"),
    ("migration", "flock", "plumage", "warbler", "nesting", "flyway"),
    ("photovoltaic", "inverter", "panel", "sunlight", "battery", "grid"),
    ("teapot", "oolong", "steeping", "matcha", "leaf", "infusion"),
    ("stalactite", "cavern", "limestone", "spelunker", "stalagmite", "grotto"),
)

FILLER: tuple[str, ...] = (
    "study", "report", "history", "method", "people", "region", "early", "modern", "common",
    "small", "large", "practice", "local", "season", "change", "process", "result", "simple",
    "careful", "different", "important", "traditional", "popular", "quality", "design", "tool",
    "material", "water", "light", "heat", "time", "year", "group", "area", "system", "level",
    "form", "example", "structure", "surface", "pattern", "effect", "measure", "record",
    "source", "guide", "village", "city", "market", "school", "museum", "expert", "visitor",
    "morning", "evening", "winter", "summer", "weather", "journey", "story",
)  # fmt: skip

QUERY_TEMPLATES: tuple[str, ...] = (
    "how does {0} affect {1} and {2}",
    "what is the role of {0} in {1} {2}",
    "{0} {1} {2} explained",
    "why do experts link {0} with {1} and {2}",
    "choosing a {0} for {1} {2}",
)


@dataclass
class Document:
    title: str
    words: list[str]
    topic: int


@dataclass
class Query:
    words: tuple[str, str, str]
    text: str


def _query(rng: random.Random, topic: tuple[str, ...]) -> Query:
    first, second, third = rng.sample(topic, 3)
    template = rng.choice(QUERY_TEMPLATES)
    return Query(words=(first, second, third), text=template.format(first, second, third))


def _text(rng: random.Random, core: list[str], length: int) -> list[str]:
    """``core`` spread among filler words, ``length`` words in all."""
    words = core + [rng.choice(FILLER) for _ in range(max(0, length - len(core)))]
    rng.shuffle(words)
    return words


def _title(words: list[str]) -> str:
    return " ".join(word.capitalize() for word in words)


def _relevant(rng: random.Random, topic: int, query: Query, grade: int) -> Document:
    others = [word for word in TOPICS[topic] if word not in query.words]
    if grade == 2:
        core = list(query.words) * 2 + rng.sample(others, 2)
    else:
        core = rng.sample(query.words, 2) + others + rng.sample(others, 2)
    title = _title([query.words[0], rng.choice(others)])
    return Document(title=title, words=_text(rng, core, rng.randint(25, 60)), topic=topic)


def _near_miss(rng: random.Random, topic: int, query: Query) -> Document:
    """About another topic, with one of the query's words: BM25's trap."""
    other = rng.choice([index for index in range(len(TOPICS)) if index != topic])
    core = [rng.choice(query.words), *rng.sample(TOPICS[other], 4)]
    title = _title(rng.sample(TOPICS[other], 2))
    return Document(title=title, words=_text(rng, core, rng.randint(20, 50)), topic=other)


def _background(rng: random.Random, queries: list[Query]) -> Document:
    """About some topic, without its query's words: on topic for a reader, unjudged."""
    topic = rng.randrange(len(TOPICS))
    others = [word for word in TOPICS[topic] if word not in queries[topic].words]
    core = rng.sample(others, rng.randint(2, 3))
    title = _title([rng.choice(TOPICS[topic]), rng.choice(FILLER)])
    return Document(title=title, words=_text(rng, core, rng.randint(20, 60)), topic=topic)


def _first_stage(
    rng: random.Random, relevant: list[int], near_misses: list[int], documents: int
) -> list[int]:
    """Twenty candidates in a noisy order: relevant documents lean to the top."""
    kept = [index for index in relevant if len(relevant) == 1 or rng.random() > 0.1]
    chosen = kept + [index for index in near_misses if index not in kept]
    while len(chosen) < CANDIDATES_PER_QUERY:
        index = rng.randrange(documents)
        if index not in chosen and index not in relevant:
            chosen.append(index)
    lean = {index: (0.35 if index in kept else 0.0) + rng.random() for index in chosen}
    return sorted(chosen, key=lambda index: -lean[index])


def build(folder: Path) -> None:
    rng = random.Random(SEED)
    documents: list[Document] = []
    queries: list[Query] = []
    grades: list[dict[int, int]] = []
    near_misses: list[list[int]] = []
    for topic in range(len(TOPICS)):
        query = _query(rng, TOPICS[topic])
        queries.append(query)
        judged: dict[int, int] = {}
        for grade in [2, *[rng.choice((1, 1, 2)) for _ in range(rng.randint(0, 2))]]:
            judged[len(documents)] = grade
            documents.append(_relevant(rng, topic, query, grade))
        grades.append(judged)
        near_misses.append([len(documents), len(documents) + 1])
        documents.extend(_near_miss(rng, topic, query) for _ in range(2))
    while len(documents) < DOCUMENTS:
        documents.append(_background(rng, queries))

    # Documents in a shuffled order under their final ids, so that relevance is not position.
    order = list(range(len(documents)))
    rng.shuffle(order)
    document_ids = {index: f"doc{position:03d}" for position, index in enumerate(order)}
    query_ids = [f"q{number:02d}" for number in range(1, len(queries) + 1)]

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "qrels").mkdir(exist_ok=True)
    _write_lines(
        folder / "corpus.jsonl",
        (
            json.dumps(
                {
                    "_id": document_ids[index],
                    "title": documents[index].title,
                    "text": " ".join(documents[index].words),
                }
            )
            for index in order
        ),
    )
    extra = [_query(rng, TOPICS[rng.randrange(len(TOPICS))]) for _ in range(EXTRA_QUERIES)]
    extra_ids = [f"train{number:02d}" for number in range(1, EXTRA_QUERIES + 1)]
    _write_lines(
        folder / "queries.jsonl",
        (
            json.dumps({"_id": query_id, "text": query.text})
            for query_id, query in zip(query_ids + extra_ids, queries + extra, strict=True)
        ),
    )
    _write_lines(
        folder / "qrels" / "test.tsv",
        [
            "query-id\tcorpus-id\tscore",
            *(
                f"{query_id}\t{document_ids[index]}\t{grade}"
                for query_id, judged in zip(query_ids, grades, strict=True)
                for index, grade in sorted(judged.items(), key=lambda item: document_ids[item[0]])
            ),
        ],
    )
    run_lines: list[str] = []
    for query_id, judged, misses in zip(query_ids, grades, near_misses, strict=True):
        ranked = _first_stage(rng, sorted(judged), misses, len(documents))
        for rank, index in enumerate(ranked, start=1):
            score = CANDIDATES_PER_QUERY - rank + rng.random() * 0.9
            run_lines.append(f"{query_id} Q0 {document_ids[index]} {rank} {score:.4f} synthetic")
    _write_lines(folder / "candidates.trec", run_lines)


def _write_lines(path: Path, lines: Iterable[str]) -> None:
    with path.open("w", encoding="ascii", newline="\n") as handle:
        for line in lines:
            handle.write(f"{line}\n")


def main(argv: list[str]) -> None:
    folder = Path(argv[0]) if argv else Path(__file__).resolve().parent / "beir-synthetic"
    build(folder)


if __name__ == "__main__":
    main(sys.argv[1:])
