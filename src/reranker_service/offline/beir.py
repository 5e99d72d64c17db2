"""BEIR-layout data and TREC run files: what ``reranker-service eval`` measures on.

A BEIR folder holds ``corpus.jsonl`` (``{"_id", "title"?, "text"}`` a line), ``queries.jsonl``
(``{"_id", "text"}``) and ``qrels/<split>.tsv`` (``query-id<TAB>corpus-id<TAB>score``). Every
file is read a line at a time, so a corpus of millions of documents costs its texts and no
more, and every mistake is a :class:`DatasetError` naming the file and line, since these files
are written by hand or by other tools as often as they are downloaded.

First-stage candidates come from a TREC run file (``qid Q0 docid rank score tag``) or from BM25
over the corpus (``bm25s``).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Container, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

CORPUS_FILE: Final = "corpus.jsonl"
QUERIES_FILE: Final = "queries.jsonl"
QRELS_FOLDER: Final = "qrels"
_QRELS_HEADER: Final = ("query-id", "corpus-id", "score")
_TREC_RUN_COLUMNS: Final = "query-id Q0 doc-id rank score tag"
_UTF8_BOM: Final = "\ufeff"


class DatasetError(Exception):
    """A data or run file that cannot be used, said for the person who gave it: which file,
    which line, what is wrong."""


@dataclass(frozen=True)
class BeirDataset:
    """One split of a BEIR folder."""

    corpus: Mapping[str, str]
    """Document id → the text a reranker reads: ``"{title} {text}"``, or the text alone when
    there is no title (BEIR's own rerankers join them so)."""
    queries: Mapping[str, str]
    """Query id → text, for the queries of this split's qrels only: ``queries.jsonl`` often
    holds every split's queries."""
    qrels: Mapping[str, Mapping[str, int]]
    """Query id → document id → grade, as the split's qrels file says (documents missing from
    the corpus included: they count against recall as BEIR counts them)."""

    @property
    def evaluated_query_ids(self) -> list[str]:
        """The queries that can be measured: judged in the split's qrels and with a text to
        rerank for, in sorted order so that runs and reports come out the same every time."""
        return sorted(query_id for query_id in self.qrels if query_id in self.queries)


def load_beir(folder: Path, split: str = "test") -> BeirDataset:
    """The ``split`` of the BEIR folder ``folder``; :class:`DatasetError` on anything missing
    or malformed, and when no query of the split has a text (nothing could be measured)."""
    if not folder.is_dir():
        raise DatasetError(f"{folder}: no such folder (a BEIR folder is expected)")
    qrels_path = _qrels_path(folder, split)
    qrels = _read_qrels(qrels_path)
    queries = _read_texts(_required_file(folder, QUERIES_FILE), keep=qrels.keys())
    corpus = _read_texts(_required_file(folder, CORPUS_FILE), keep=None)
    if not corpus:
        raise DatasetError(f"{folder / CORPUS_FILE}: holds no documents")
    dataset = BeirDataset(corpus=corpus, queries=queries, qrels=qrels)
    if not dataset.evaluated_query_ids:
        raise DatasetError(
            f"{folder / QUERIES_FILE}: none of the {len(qrels)} queries of {qrels_path} is there"
        )
    return dataset


def _required_file(folder: Path, name: str) -> Path:
    path = folder / name
    if not path.is_file():
        raise DatasetError(
            f"{path}: not found (a BEIR folder holds {CORPUS_FILE}, {QUERIES_FILE} and "
            f"{QRELS_FOLDER}/<split>.tsv)"
        )
    return path


def _qrels_path(folder: Path, split: str) -> Path:
    qrels_folder = folder / QRELS_FOLDER
    path = qrels_folder / f"{split}.tsv"
    if path.is_file():
        return path
    splits = sorted(p.stem for p in qrels_folder.glob("*.tsv")) if qrels_folder.is_dir() else []
    present = f"the splits there are: {', '.join(splits)}" if splits else "there are no splits"
    raise DatasetError(f"{path}: not found, so no split {split!r}; {present}")


def _numbered_lines(path: Path) -> Iterator[tuple[int, str]]:
    """The file's non-blank lines with their 1-based numbers, decoded a line at a time so that
    a byte that is not UTF-8 is reported on its own line."""
    try:
        with path.open("rb") as handle:
            for number, raw in enumerate(handle, start=1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as error:
                    raise DatasetError(f"{path}:{number}: not UTF-8 text ({error})") from error
                if number == 1:
                    line = line.removeprefix(_UTF8_BOM)
                if line.strip():
                    yield number, line
    except FileNotFoundError as error:
        raise DatasetError(f"{path}: not found") from error
    except OSError as error:
        raise DatasetError(f"{path}: cannot be read ({error.strerror})") from error


def _read_texts(path: Path, keep: Container[str] | None) -> dict[str, str]:
    """Id → reranker text of a corpus or queries file; with ``keep``, only the ids in it (every
    line is still checked, so a broken file is found whichever split is asked for)."""
    texts: dict[str, str] = {}
    first_lines: dict[str, int] = {}
    for number, line in _numbered_lines(path):
        item_id, text = _parse_text_line(line, f"{path}:{number}")
        if item_id in first_lines:
            raise DatasetError(
                f"{path}:{number}: _id {item_id!r} again (first on line {first_lines[item_id]})"
            )
        first_lines[item_id] = number
        if keep is None or item_id in keep:
            texts[item_id] = text
    return texts


def _parse_text_line(line: str, where: str) -> tuple[str, str]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise DatasetError(f"{where}: not JSON ({error.msg} at column {error.colno})") from error
    if not isinstance(record, dict):
        raise DatasetError(f"{where}: not a JSON object")
    item_id = _id_field(record, where)
    text = record.get("text")
    if not isinstance(text, str):
        raise DatasetError(f'{where}: no "text" string')
    title = record.get("title")
    if title is None or title == "":
        return item_id, text
    if not isinstance(title, str):
        raise DatasetError(f'{where}: "title" is not a string')
    return item_id, f"{title} {text}".strip()


def _id_field(record: Mapping[str, Any], where: str) -> str:
    item_id = record.get("_id")
    # Some converters write numeric ids as JSON numbers; the qrels name them as strings.
    if isinstance(item_id, int) and not isinstance(item_id, bool):
        return str(item_id)
    if not isinstance(item_id, str) or not item_id:
        raise DatasetError(f'{where}: no "_id" string')
    return item_id


def _read_qrels(path: Path) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    for number, line in _numbered_lines(path):
        fields = line.rstrip("\r\n").split("\t")
        if number == 1 and tuple(field.strip().lower() for field in fields) == _QRELS_HEADER:
            continue
        query_id, document_id, grade = _parse_qrels_fields(fields, f"{path}:{number}")
        grades = qrels.setdefault(query_id, {})
        if grades.get(document_id, grade) != grade:
            raise DatasetError(
                f"{path}:{number}: query {query_id!r} grades document {document_id!r} "
                f"{grades[document_id]} earlier and {grade} here"
            )
        grades[document_id] = grade
    return qrels


def _parse_qrels_fields(fields: list[str], where: str) -> tuple[str, str, int]:
    if len(fields) != len(_QRELS_HEADER):
        raise DatasetError(
            f"{where}: {len(fields)} tab-separated columns; expected 3 ({' '.join(_QRELS_HEADER)})"
        )
    query_id, document_id, grade_text = (field.strip() for field in fields)
    if not query_id or not document_id:
        raise DatasetError(f"{where}: an empty query-id or corpus-id")
    try:
        grade = int(grade_text)
    except ValueError:
        raise DatasetError(f"{where}: score {grade_text!r} is not an integer") from None
    return query_id, document_id, grade


@dataclass(frozen=True)
class _RunEntry:
    score: float
    rank: int
    line: int
    """Where it is in the file: the last tie-breaker."""
    document_id: str


def read_trec_run(path: Path, top_k: int) -> dict[str, list[str]]:
    """Query id → its ``top_k`` document ids, best first: by score, then by the file's rank,
    then by the file's order (trec_eval itself ignores the rank; a run written with ties means
    its ranks, and the file order is the last resort)."""
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, not {top_k}")
    entries: dict[str, dict[str, _RunEntry]] = {}
    for number, line in _numbered_lines(path):
        query_id, entry = _parse_run_line(line, number, f"{path}:{number}")
        documents = entries.setdefault(query_id, {})
        if entry.document_id in documents:
            raise DatasetError(
                f"{path}:{number}: document {entry.document_id!r} again for query "
                f"{query_id!r} (first on line {documents[entry.document_id].line})"
            )
        documents[entry.document_id] = entry
    if not entries:
        raise DatasetError(f"{path}: holds no run lines ({_TREC_RUN_COLUMNS})")
    return {
        query_id: [entry.document_id for entry in _best_first(documents.values())[:top_k]]
        for query_id, documents in entries.items()
    }


def _best_first(entries: Iterable[_RunEntry]) -> list[_RunEntry]:
    return sorted(entries, key=lambda entry: (-entry.score, entry.rank, entry.line))


def _parse_run_line(line: str, number: int, where: str) -> tuple[str, _RunEntry]:
    fields = line.split()
    if len(fields) != 6:
        raise DatasetError(
            f"{where}: {len(fields)} columns; expected 6 ({_TREC_RUN_COLUMNS}), "
            "separated by whitespace"
        )
    query_id, _, document_id, rank_text, score_text, _ = fields
    try:
        rank = int(rank_text)
    except ValueError:
        raise DatasetError(f"{where}: rank {rank_text!r} is not an integer") from None
    try:
        score = float(score_text)
    except ValueError:
        raise DatasetError(f"{where}: score {score_text!r} is not a number") from None
    if not math.isfinite(score):
        raise DatasetError(f"{where}: score {score_text!r} is not a finite number")
    return query_id, _RunEntry(score=score, rank=rank, line=number, document_id=document_id)


def write_trec_run(path: Path, run: Mapping[str, Mapping[str, float]], tag: str) -> None:
    """``run`` as a TREC run file: queries in sorted order, each best first with ranks from 1
    (tied scores keep the mapping's order, and the ranks keep it for :func:`read_trec_run`), and
    scores written exactly (``repr``), so that measures from the file are the measures of the
    run. Everything is checked before the file is opened, so a bad run leaves no half file."""
    _check_run_word(tag, "tag")
    ranked = {query_id: _ranked_scores(query_id, run[query_id]) for query_id in sorted(run)}
    with path.open("w", encoding="utf-8", newline="\n") as handle:
        for query_id, scores in ranked.items():
            for rank, (document_id, score) in enumerate(scores, start=1):
                handle.write(f"{query_id} Q0 {document_id} {rank} {score!r} {tag}\n")


def _ranked_scores(query_id: str, scores: Mapping[str, float]) -> list[tuple[str, float]]:
    _check_run_word(query_id, "query id")
    ranked: list[tuple[str, float]] = []
    for document_id, score in scores.items():
        _check_run_word(document_id, "document id")
        value = float(score)  # numpy's scalars repr as np.float32(...)
        if not math.isfinite(value):
            raise ValueError(f"query {query_id!r}, document {document_id!r}: score {value}")
        ranked.append((document_id, value))
    return sorted(ranked, key=lambda item: -item[1])


def _check_run_word(value: str, what: str) -> None:
    """A TREC run separates its columns by whitespace: a value holding some breaks the file."""
    if not value or value.split() != [value]:
        raise ValueError(f"{what} {value!r} cannot be a TREC run column (empty or with spaces)")


def bm25_candidates(
    dataset: BeirDataset, query_ids: Sequence[str], top_k: int
) -> dict[str, list[str]]:
    """Query id → the ``top_k`` best documents by BM25 (bm25s' Lucene variant, English stop
    words, no stemming), best first; ``top_k`` beyond the corpus size gives the whole corpus.

    Ranked here from bm25s' scores rather than by its ``retrieve``, whose top-k orders tied
    scores as numpy's partition (or JAX, when installed) happens to, which can change with the
    library. Ties are common (every document a query shares no word with scores 0) and decide
    which documents make the cut: here they go by corpus order, the same everywhere.
    """
    # bm25s brings scipy.sparse with it: imported when candidates are asked for, not with the
    # eval command's other modules.
    import bm25s

    # bm25s sets its logger to DEBUG at import, which lets its chatter through any handler
    # without a level of its own (logging.basicConfig's, say), whatever the root's level.
    logging.getLogger("bm25s").setLevel(logging.WARNING)
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, not {top_k}")
    missing = [query_id for query_id in query_ids if query_id not in dataset.queries]
    if missing:
        raise DatasetError(f"no text for query {missing[0]!r} ({len(missing)} queries lack one)")
    document_ids = list(dataset.corpus)
    retriever = bm25s.BM25()
    retriever.index(
        bm25s.tokenize(list(dataset.corpus.values()), stopwords="en", show_progress=False),
        show_progress=False,
    )
    query_tokens: list[list[str]] = bm25s.tokenize(
        [dataset.queries[query_id] for query_id in query_ids],
        stopwords="en",
        return_ids=False,
        show_progress=False,
    )
    depth = min(top_k, len(document_ids))
    candidates: dict[str, list[str]] = {}
    for query_id, tokens in zip(query_ids, query_tokens, strict=True):
        # get_scores cannot take a query with no words left (all stop words).
        scores = retriever.get_scores(tokens) if tokens else np.zeros(len(document_ids))
        candidates[query_id] = [document_ids[index] for index in _top_indices(scores, depth)]
    return candidates


def _top_indices(scores: npt.NDArray[np.floating[Any]], depth: int) -> list[int]:
    """The ``depth`` highest-scoring indices, best first, ties by index; in linear time but for
    the few that reach the cut, since a corpus can be millions of documents long."""
    if depth < len(scores):
        cut = np.partition(scores, -depth)[-depth]
        pool = np.flatnonzero(scores >= cut)
    else:
        pool = np.arange(len(scores))
    order = np.lexsort((pool, -scores[pool]))
    return [int(index) for index in pool[order][:depth]]
