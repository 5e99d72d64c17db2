"""The benchmark's plain peer computes the model card's scores, so that its pairs/s are a fair
comparison; and the plot of a run is a picture."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.model_card import ModelCardReranker
from tests.support.paths import ROOT
from tests.support.script_modules import load_bench_module

QUERY = "What is the capital of France?"
DOCUMENTS = ["Paris is the capital of France.", "Berlin is in Germany.", "", "中文 🙂 yes"]


def test_the_crossencoder_peer_scores_as_the_model_card(
    checkpoint: Path, card: ModelCardReranker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sentence-transformers' CrossEncoder on the seq-cls form of the same weights, with the
    Qwen3 prompt as text: each score the card's P(yes) (fp32 on the CPU)."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    contenders = load_bench_module("contenders")
    workloads = load_bench_module("workloads")
    seq_cls = contenders.build_seq_cls_checkpoint(str(checkpoint), str(tmp_path / "seq-cls"))
    peer = contenders.CrossEncoderLoop(seq_cls, "cpu", 8192)
    ours = peer.scores(workloads.Request(QUERY, DOCUMENTS))
    reference = card.score_alone(None, QUERY, DOCUMENTS)
    assert max(abs(a - b) for a, b in zip(ours, reference, strict=True)) <= 1e-5
    assert len(set(reference)) == len(reference), "distinct scores, or the test proves little"


@pytest.mark.parametrize(("precision", "bound"), [("f32", 1e-4), (None, 0.02)])
def test_the_openvino_peer_scores_as_the_model_card(
    checkpoint: Path,
    card: ModelCardReranker,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    precision: str | None,
    bound: float,
) -> None:
    """The CPU peer, an OpenVINO graph converted once from the seq-cls form: every score the
    card's P(yes), in fp32 to float rounding and in OpenVINO's default format (bf16 where the
    CPU computes it) within bf16's bound, over batches of other sizes and lengths than the one
    the graph was converted on (a conversion that kept one shape fails here)."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    contenders = load_bench_module("contenders")
    workloads = load_bench_module("workloads")
    seq_cls = contenders.build_seq_cls_checkpoint(str(checkpoint), str(tmp_path / "seq-cls"))
    peer = contenders.OpenVinoCrossEncoderLoop(seq_cls, 8192, precision=precision)
    if precision is not None:
        assert peer.precision == precision
    many = [f"document {index} " + "words " * (index % 13) for index in range(40)]
    for documents in (DOCUMENTS, many):
        ours = peer.scores(workloads.Request(QUERY, documents))
        reference = card.score_alone(None, QUERY, documents)
        assert max(abs(a - b) for a, b in zip(ours, reference, strict=True)) <= bound


def test_the_throughput_plot_is_a_png_with_a_panel_per_workload(tmp_path: Path) -> None:
    plot = load_bench_module("plot")

    class Cell:
        def __init__(self, workload: str, concurrency: int, contender: str, rate: float) -> None:
            self.workload, self.concurrency = workload, concurrency
            self.contender, self.pairs_per_second = contender, rate

    cells = [
        Cell(workload, concurrency, contender, rate * concurrency)
        for workload in ("short", "rag")
        for contender, rate in (("service", 2.0), ("crossencoder", 1.0))
        for concurrency in (1, 4, 16)
    ] + [Cell("rag", 0, "best fixed budget (1024)", 30.0)]
    path = tmp_path / "throughput.png"
    plot.plot_throughput(cells, path, "test")
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    width = int.from_bytes(data[16:20], "big")
    assert width >= 2 * 400, "two panels side by side"
