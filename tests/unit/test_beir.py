"""BEIR folders and TREC run files: the synthetic set loads as its generator wrote it, every
broken file is a DatasetError naming file and line, runs round-trip, and BM25 finds the
relevant documents."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Any

import ir_measures
import numpy as np
import pytest
from ir_measures import R

from reranker_service.offline.beir import (
    BeirDataset,
    DatasetError,
    bm25_candidates,
    load_beir,
    read_trec_run,
    write_trec_run,
)
from tests.support.paths import DATA
from tests.support.script_modules import load_module

SYNTHETIC = DATA / "beir-synthetic"


@pytest.fixture(scope="module")
def synthetic() -> BeirDataset:
    return load_beir(SYNTHETIC)


def _beir_folder(
    folder: Path,
    corpus: list[str] | None = None,
    queries: list[str] | None = None,
    qrels: dict[str, list[str]] | None = None,
) -> Path:
    """A BEIR folder of the given lines (defaults: two documents, one query, one judgment)."""
    corpus = corpus if corpus is not None else [
        json.dumps({"_id": "d1", "title": "Comets", "text": "ice and dust"}),
        json.dumps({"_id": "d2", "text": "rocks in orbit"}),
    ]  # fmt: skip
    queries = queries if queries is not None else [json.dumps({"_id": "q1", "text": "comet"})]
    qrels = qrels if qrels is not None else {"test": ["query-id\tcorpus-id\tscore", "q1\td1\t1"]}
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text("".join(f"{line}\n" for line in corpus))
    (folder / "queries.jsonl").write_text("".join(f"{line}\n" for line in queries))
    for split, lines in qrels.items():
        (folder / "qrels" / f"{split}.tsv").write_text("".join(f"{line}\n" for line in lines))
    return folder


def test_the_synthetic_split_loads_as_written(synthetic: BeirDataset) -> None:
    assert len(synthetic.corpus) == 300
    # queries.jsonl holds two more queries, with no judgments in the test split.
    assert sorted(synthetic.queries) == [f"q{number:02d}" for number in range(1, 31)]
    assert synthetic.evaluated_query_ids == [f"q{number:02d}" for number in range(1, 31)]
    assert sum(len(grades) for grades in synthetic.qrels.values()) == 63
    assert synthetic.qrels["q01"] == {"doc035": 2, "doc157": 2}
    assert synthetic.qrels["q02"] == {"doc009": 1, "doc109": 1, "doc169": 2}
    assert synthetic.queries["q01"] == "what is the role of galaxy in comet asteroid"
    assert synthetic.corpus["doc035"].startswith("Galaxy Nebula visitor asteroid visitor village")
    assert synthetic.corpus["doc035"].endswith(" morning weather process")


def _files_under(folder: Path) -> list[Path]:
    return sorted(path.relative_to(folder) for path in folder.rglob("*") if path.is_file())


def test_the_synthetic_folder_is_what_its_generator_writes(tmp_path: Path) -> None:
    generator = load_module(DATA / "make_beir_synthetic.py")
    generator.main([str(tmp_path)])
    written = _files_under(SYNTHETIC)
    assert written == _files_under(tmp_path)
    for relative in written:
        assert (tmp_path / relative).read_bytes() == (SYNTHETIC / relative).read_bytes(), relative
    assert sum((SYNTHETIC / relative).stat().st_size for relative in written) < 150_000


def test_title_and_text_are_joined_with_a_space(tmp_path: Path) -> None:
    folder = _beir_folder(
        tmp_path / "set",
        corpus=[
            json.dumps({"_id": "d1", "title": "Comets", "text": "ice and dust"}),
            json.dumps({"_id": "d2", "title": "", "text": "rocks in orbit"}),
            json.dumps({"_id": "d3", "title": None, "text": "gas giants"}),
            json.dumps({"_id": 4, "title": "Only a title", "text": ""}),
        ],
    )
    dataset = load_beir(folder)
    assert dict(dataset.corpus) == {
        "d1": "Comets ice and dust",
        "d2": "rocks in orbit",
        "d3": "gas giants",
        "4": "Only a title",
    }


def test_qrels_without_a_header_and_queries_without_text_are_taken_as_they_are(
    tmp_path: Path,
) -> None:
    folder = _beir_folder(
        tmp_path / "set",
        qrels={"test": ["q1\td1\t2", "q1\td2\t0", "q9\td2\t1"]},
    )
    dataset = load_beir(folder)
    assert dataset.qrels == {"q1": {"d1": 2, "d2": 0}, "q9": {"d2": 1}}
    # q9 is judged but has no text: it cannot be reranked, so it is not evaluated.
    assert dataset.evaluated_query_ids == ["q1"]


def test_a_missing_split_names_the_splits_there_are(tmp_path: Path) -> None:
    folder = _beir_folder(tmp_path / "set", qrels={"train": ["q1\td1\t1"], "dev": ["q1\td1\t1"]})
    with pytest.raises(DatasetError, match=r"test\.tsv: not found.*splits there are: dev, train"):
        load_beir(folder)
    assert load_beir(folder, split="dev").evaluated_query_ids == ["q1"]


@pytest.mark.parametrize("missing", ["corpus.jsonl", "queries.jsonl"])
def test_a_missing_file_is_named(tmp_path: Path, missing: str) -> None:
    folder = _beir_folder(tmp_path / "set")
    (folder / missing).unlink()
    with pytest.raises(DatasetError, match=rf"{missing}: not found"):
        load_beir(folder)


def test_a_missing_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="nowhere: no such folder"):
        load_beir(tmp_path / "nowhere")


@pytest.mark.parametrize(
    ("line", "complaint"),
    [
        ('{"_id": "d3", "text": "unfinished', "not JSON"),
        ('["d3", "a list"]', "not a JSON object"),
        ('{"text": "no id"}', 'no "_id" string'),
        ('{"_id": "d3", "title": "no text"}', 'no "text" string'),
        ('{"_id": "d3", "title": 7, "text": "x"}', '"title" is not a string'),
        ('{"_id": "d1", "text": "again"}', "_id 'd1' again \\(first on line 1\\)"),
    ],
)
def test_a_bad_corpus_line_is_named_by_file_and_line(
    tmp_path: Path, line: str, complaint: str
) -> None:
    corpus = [
        json.dumps({"_id": "d1", "text": "ice and dust"}),
        "",  # blank lines are skipped but counted
        json.dumps({"_id": "d2", "text": "rocks in orbit"}),
        line,
    ]
    folder = _beir_folder(tmp_path / "set", corpus=corpus)
    with pytest.raises(DatasetError, match=rf"corpus\.jsonl:4: {complaint}"):
        load_beir(folder)


def test_a_bad_query_line_is_found_whatever_the_split(tmp_path: Path) -> None:
    queries = [json.dumps({"_id": "q1", "text": "comet"}), '{"_id": "q2"}']
    folder = _beir_folder(tmp_path / "set", queries=queries)
    with pytest.raises(DatasetError, match=r'queries\.jsonl:2: no "text" string'):
        load_beir(folder)


def test_bytes_that_are_not_utf8_are_named_by_line(tmp_path: Path) -> None:
    folder = _beir_folder(tmp_path / "set")
    with (folder / "corpus.jsonl").open("ab") as handle:
        handle.write(b'{"_id": "d3", "text": "caf\xe9"}\n')
    with pytest.raises(DatasetError, match=r"corpus\.jsonl:3: not UTF-8"):
        load_beir(folder)


@pytest.mark.parametrize(
    ("line", "complaint"),
    [
        ("q1\td2", "2 tab-separated columns; expected 3"),
        ("q1 d2 1", "1 tab-separated columns; expected 3"),
        ("q1\td2\t1\textra", "4 tab-separated columns; expected 3"),
        ("q1\td2\thigh", "score 'high' is not an integer"),
        ("q1\td2\t1.5", "score '1.5' is not an integer"),
        ("q1\td1\t2", "query 'q1' grades document 'd1' 1 earlier and 2 here"),
    ],
)
def test_a_bad_qrels_line_is_named_by_file_and_line(
    tmp_path: Path, line: str, complaint: str
) -> None:
    qrels = {"test": ["query-id\tcorpus-id\tscore", "q1\td1\t1", line]}
    folder = _beir_folder(tmp_path / "set", qrels=qrels)
    with pytest.raises(DatasetError, match=rf"test\.tsv:3: {complaint}"):
        load_beir(folder)


def test_a_split_whose_queries_have_no_text_is_refused(tmp_path: Path) -> None:
    folder = _beir_folder(tmp_path / "set", qrels={"test": ["q7\td1\t1"]})
    with pytest.raises(DatasetError, match="none of the 1 queries of"):
        load_beir(folder)


def test_an_empty_corpus_is_refused(tmp_path: Path) -> None:
    folder = _beir_folder(tmp_path / "set", corpus=[])
    with pytest.raises(DatasetError, match=r"corpus\.jsonl: holds no documents"):
        load_beir(folder)


def _run_file(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def test_a_run_gives_each_query_its_best_documents_ties_by_rank_then_file_order(
    tmp_path: Path,
) -> None:
    run = _run_file(
        tmp_path / "run.trec",
        [
            "q1 Q0 low 5 0.1 bm25",
            "q1 Q0 tie-late-rank 4 0.5 bm25",
            "q2\tQ0\tonly 1 3.0 bm25",
            "q1 Q0 tie-file-second 2 0.5 bm25",
            "q1 Q0 best 9 0.9 bm25",
            "q1 Q0 tie-file-first 2 0.5 bm25",
        ],
    )
    assert read_trec_run(run, top_k=4) == {
        "q1": ["best", "tie-file-second", "tie-file-first", "tie-late-rank"],
        "q2": ["only"],
    }
    assert read_trec_run(run, top_k=1) == {"q1": ["best"], "q2": ["only"]}


@pytest.mark.parametrize(
    ("line", "complaint"),
    [
        ("q1 Q0 d2 2 0.5", "5 columns; expected 6"),
        ("q1 Q0 d2 second 0.5 tag", "rank 'second' is not an integer"),
        ("q1 Q0 d2 2 high tag", "score 'high' is not a number"),
        ("q1 Q0 d2 2 nan tag", "score 'nan' is not a finite number"),
        ("q1 Q0 d1 2 0.5 tag", "document 'd1' again for query 'q1' \\(first on line 1\\)"),
    ],
)
def test_a_bad_run_line_is_named_by_file_and_line(
    tmp_path: Path, line: str, complaint: str
) -> None:
    run = _run_file(tmp_path / "run.trec", ["q1 Q0 d1 1 0.9 tag", line])
    with pytest.raises(DatasetError, match=rf"run\.trec:2: {complaint}"):
        read_trec_run(run, top_k=10)


def test_an_empty_or_missing_run_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="holds no run lines"):
        read_trec_run(_run_file(tmp_path / "empty.trec", [""]), top_k=10)
    with pytest.raises(DatasetError, match=r"absent\.trec: not found"):
        read_trec_run(tmp_path / "absent.trec", top_k=10)


def test_a_written_run_reads_back_in_the_same_order_with_exact_scores(tmp_path: Path) -> None:
    run = {
        "q2": {"a": 0.1, "b": 0.30000000000000004, "c": float(np.float32(0.7)), "d": -2.5},
        "q1": {"tie-first": 1.0, "tie-second": 1.0, "top": 3.0},
    }
    path = tmp_path / "out.trec"
    write_trec_run(path, run, tag="cfg-a")
    lines = path.read_text().splitlines()
    assert lines[0] == "q1 Q0 top 1 3.0 cfg-a"
    assert lines[3] == "q2 Q0 c 1 0.699999988079071 cfg-a"
    assert [float(line.split()[4]) for line in lines[3:]] == [
        float(np.float32(0.7)),
        0.30000000000000004,
        0.1,
        -2.5,
    ]
    assert read_trec_run(path, top_k=10) == {
        "q1": ["top", "tie-first", "tie-second"],
        "q2": ["c", "b", "a", "d"],
    }


def test_numpy_scores_are_written_as_plain_numbers(tmp_path: Path) -> None:
    path = tmp_path / "out.trec"
    # What a model's output gives; numpy's float32 is no float to mypy.
    scores: dict[str, Any] = {"d1": np.float32(0.25), "d2": np.float64(0.5)}
    write_trec_run(path, {"q1": scores}, tag="t")
    assert path.read_text() == "q1 Q0 d2 1 0.5 t\nq1 Q0 d1 2 0.25 t\n"


@pytest.mark.parametrize(
    ("run", "tag", "complaint"),
    [
        ({"q1": {"d1": 1.0}}, "two words", "tag 'two words'"),
        ({"q 1": {"d1": 1.0}}, "t", "query id 'q 1'"),
        ({"q1": {"d\t1": 1.0}}, "t", "document id 'd\\\\t1'"),
        ({"q1": {"d1": float("inf")}}, "t", "score inf"),
    ],
)
def test_a_run_that_cannot_be_a_trec_file_is_refused_before_writing(
    tmp_path: Path, run: dict[str, dict[str, float]], tag: str, complaint: str
) -> None:
    path = tmp_path / "out.trec"
    with pytest.raises(ValueError, match=complaint):
        write_trec_run(path, run, tag=tag)
    assert not path.exists()


def _as_run(candidates: dict[str, list[str]]) -> dict[str, dict[str, float]]:
    return {
        query_id: {document_id: float(-rank) for rank, document_id in enumerate(documents)}
        for query_id, documents in candidates.items()
    }


def test_bm25_finds_the_relevant_documents_far_better_than_chance(
    synthetic: BeirDataset,
) -> None:
    query_ids = synthetic.evaluated_query_ids
    candidates = bm25_candidates(synthetic, query_ids, top_k=20)
    assert list(candidates) == query_ids
    for documents in candidates.values():
        assert len(documents) == len(set(documents)) == 20
        assert set(documents) <= set(synthetic.corpus)

    rng = random.Random(7)
    chance = {query_id: rng.sample(sorted(synthetic.corpus), 20) for query_id in query_ids}
    recall = R @ 20
    bm25_recall = ir_measures.calc_aggregate([recall], synthetic.qrels, _as_run(candidates))
    chance_recall = ir_measures.calc_aggregate([recall], synthetic.qrels, _as_run(chance))
    assert bm25_recall[recall] >= 0.9
    assert chance_recall[recall] < 0.2


def test_bm25_ranks_by_score_ties_by_corpus_order_and_clips_to_the_corpus() -> None:
    dataset = BeirDataset(
        corpus={
            "zero-a": "nothing shared",
            "match": "comet comet tail",
            "zero-b": "nothing here either",
            "weak": "a comet among many many other words",
        },
        queries={"q1": "comet", "stop": "the of and"},
        qrels={},
    )
    candidates = bm25_candidates(dataset, ["q1", "stop"], top_k=10)
    assert candidates["q1"] == ["match", "weak", "zero-a", "zero-b"]
    # A query of stop words alone scores every document 0: the corpus order, unchanged.
    assert candidates["stop"] == ["zero-a", "match", "zero-b", "weak"]
    assert bm25_candidates(dataset, ["q1"], top_k=3) == {"q1": ["match", "weak", "zero-a"]}


def test_bm25_ties_keep_corpus_order_in_a_long_list() -> None:
    # Three groups of equal scores (same length, 2, 1 or 0 matches), interleaved: long enough
    # for an unstable sort to shuffle each group.
    texts = ["comet comet word", "comet word word", "word word word"]
    corpus = {f"d{index:02d}": texts[index * 7 % 3] for index in range(60)}
    dataset = BeirDataset(corpus=corpus, queries={"q": "comet"}, qrels={})
    by_group = sorted(corpus, key=lambda document_id: texts.index(corpus[document_id]))
    assert bm25_candidates(dataset, ["q"], top_k=60) == {"q": by_group}
    assert bm25_candidates(dataset, ["q"], top_k=25) == {"q": by_group[:25]}


def test_bm25_says_nothing_below_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    dataset = BeirDataset(corpus={"a": "comet tail"}, queries={"q": "the"}, qrels={})
    with caplog.at_level(logging.DEBUG):
        bm25_candidates(dataset, ["q"], top_k=1)
    assert [record.getMessage() for record in caplog.records if record.name == "bm25s"] == []


def test_bm25_refuses_a_query_without_text(synthetic: BeirDataset) -> None:
    with pytest.raises(DatasetError, match="no text for query 'train01'"):
        bm25_candidates(synthetic, ["q01", "train01"], top_k=5)
