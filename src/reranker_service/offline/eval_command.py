"""``reranker-service eval``: ranking quality on a BEIR-layout folder, one or more
configurations side by side, and the drift each causes against the first."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path

import structlog

from reranker_service.app import StartupError
from reranker_service.cli import (
    SettingsError,
    add_settings_arguments,
    positive_int,
    settings_flags,
    settings_from,
)
from reranker_service.engine.scoring import ModelLoadError
from reranker_service.observability.logging import configure_logging
from reranker_service.offline import event_loop
from reranker_service.offline.batch_command import bearer_headers
from reranker_service.offline.beir import (
    BeirDataset,
    DatasetError,
    bm25_candidates,
    load_beir,
    read_trec_run,
    write_trec_run,
)
from reranker_service.offline.clients import in_process, queue_capacity, remote
from reranker_service.offline.eval_configs import ConfigError, EvalConfig, parse_configs
from reranker_service.offline.eval_report import (
    ConfigResult,
    EvalReport,
    FirstStage,
    plot,
    table,
)
from reranker_service.offline.posting import Poster
from reranker_service.offline.ranking_metrics import Run, drift, quality
from reranker_service.offline.rerank_run import RerankFailedError, TimedRun, rerank_candidates

logger = structlog.get_logger(__name__)

EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reranker-service eval",
        description=(
            "Measure ranking quality on a BEIR-layout folder (corpus.jsonl, queries.jsonl, "
            "qrels/SPLIT.tsv): each query's first-stage candidates (BM25, or a TREC run file) "
            "reranked by one or more configurations; nDCG@10, MRR@10 and recall, and each "
            "configuration's drift from the first (top-10 overlap, Kendall's tau, largest "
            "score difference)."
        ),
    )
    parser.add_argument("dataset", type=Path, help="the BEIR-layout folder")
    parser.add_argument("--split", default="test", help="qrels/SPLIT.tsv [default test]")
    parser.add_argument(
        "--run", type=Path, help="candidates from this TREC run file [default: BM25 (bm25s)]"
    )
    parser.add_argument(
        "--top-k", type=positive_int, default=100, help="candidates per query [default 100]"
    )
    parser.add_argument(
        "--recall-at", type=positive_int, default=10, help="the k of Recall@k [default 10]"
    )
    parser.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="NAME[:key=value,...]",
        help="a configuration to compare (repeat it; the first is the reference): request "
        "options (instruction, max_tokens_per_doc, max_chunks_per_doc), url, or, in process, "
        "server settings (dtype, model, max_length, prompt, device...). Example: "
        "--config fp32:dtype=float32 --config bf16:dtype=bfloat16",
    )
    parser.add_argument("--url", help="rerank with the service at this base URL by default")
    parser.add_argument(
        "--concurrency", type=positive_int, default=8, help="queries in flight [default 8]"
    )
    parser.add_argument(
        "--max-queries", type=positive_int, help="evaluate the first N queries only"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument("--plot", type=Path, metavar="PNG", help="also draw the results here")
    parser.add_argument(
        "--save-runs",
        type=Path,
        metavar="DIR",
        help="write each configuration's reranked run as DIR/NAME.trec",
    )
    settings = parser.add_argument_group(
        "model settings (configurations in process start from these; env RERANKER_*)"
    )
    add_settings_arguments(settings)
    return parser


def _candidates(
    dataset: BeirDataset, query_ids: Sequence[str], run_file: Path | None, top_k: int
) -> dict[str, list[str]]:
    if run_file is None:
        return bm25_candidates(dataset, query_ids, top_k)
    from_file = read_trec_run(run_file, top_k)
    # A run may name documents the corpus lacks (another version of it): those are dropped.
    return {
        query_id: [doc for doc in from_file.get(query_id, []) if doc in dataset.corpus]
        for query_id in query_ids
    }


def _ranked_as_given(candidates: Mapping[str, Sequence[str]]) -> Run:
    """The first stage as a run: its order, as descending scores."""
    return {
        query_id: {doc: float(len(docs) - rank) for rank, doc in enumerate(docs)}
        for query_id, docs in candidates.items()
    }


@contextlib.asynccontextmanager
async def _poster_for(
    config: EvalConfig, base: Mapping[str, object], connections: int
) -> AsyncIterator[Poster]:
    if config.url is not None:
        async with remote(config.url, timeout_seconds=600, connections=connections) as poster:
            yield poster
        return
    async with in_process(settings_from({**base, **config.settings})) as poster:
        yield poster


def _client_key(config: EvalConfig) -> object:
    """Configurations with the same key rerank through one client: the same service, or the
    same settings (one model loaded for them all)."""
    return config.url or config.settings_key


async def _rerank_all(
    configs: Sequence[EvalConfig],
    base_settings: Mapping[str, object],
    dataset: BeirDataset,
    queries: Mapping[str, str],
    candidates: Mapping[str, Sequence[str]],
    concurrency: int,
) -> list[TimedRun]:
    """Each configuration's run, in the order given. They run grouped by client, so that a
    model is loaded once for every configuration that differs from another in request
    options only, and one at a time."""
    first_of_key: dict[object, int] = {}
    for index, config in enumerate(configs):
        first_of_key.setdefault(_client_key(config), index)
    order = sorted(range(len(configs)), key=lambda index: first_of_key[_client_key(configs[index])])
    runs: dict[int, TimedRun] = {}
    headers = bearer_headers(os.environ)
    async with contextlib.AsyncExitStack() as opened:
        poster: Poster | None = None
        for index in order:
            config = configs[index]
            if poster is None or first_of_key[_client_key(config)] == index:
                await opened.aclose()  # the model before, unloaded first
                poster = await opened.enter_async_context(
                    _poster_for(config, base_settings, concurrency)
                )
            logger.info("eval_configuration_started", name=config.name, **config.described())
            runs[index] = await rerank_candidates(
                poster,
                queries,
                candidates,
                dataset.corpus,
                options=config.request,
                headers=headers,
                concurrency=concurrency,
                pairs_in_flight=await queue_capacity(poster),
            )
    return [runs[index] for index in range(len(configs))]


def evaluate(arguments: argparse.Namespace, configs: Sequence[EvalConfig]) -> EvalReport:
    """Candidates once, then every configuration's run of them, measured."""
    dataset = load_beir(arguments.dataset, arguments.split)
    query_ids = dataset.evaluated_query_ids[: arguments.max_queries]
    candidates = _candidates(dataset, query_ids, arguments.run, arguments.top_k)
    queries = {query_id: dataset.queries[query_id] for query_id in query_ids}
    qrels = {query_id: dataset.qrels[query_id] for query_id in query_ids}
    runs = event_loop.run(
        _rerank_all(
            configs,
            settings_flags(arguments),
            dataset,
            queries,
            candidates,
            arguments.concurrency,
        )
    )
    first_stage_run = _ranked_as_given(candidates)
    results = [
        ConfigResult(
            name=config.name,
            options=config.described(),
            quality=quality(qrels, timed.run, arguments.recall_at),
            drift=None if index == 0 else drift(runs[0].run, timed.run),
            seconds=timed.seconds,
            pairs=timed.pairs,
        )
        for index, (config, timed) in enumerate(zip(configs, runs, strict=True))
    ]
    if arguments.save_runs is not None:
        arguments.save_runs.mkdir(parents=True, exist_ok=True)
        for config, timed in zip(configs, runs, strict=True):
            write_trec_run(arguments.save_runs / f"{config.name}.trec", timed.run, config.name)
    return EvalReport(
        dataset=arguments.dataset.name,
        split=arguments.split,
        queries=len(query_ids),
        first_stage=FirstStage(
            source="bm25" if arguments.run is None else str(arguments.run),
            top_k=arguments.top_k,
            quality=quality(qrels, first_stage_run, arguments.recall_at),
            recall_at_top_k=quality(qrels, first_stage_run, arguments.top_k).recall_at_k,
        ),
        results=results,
    )


def main(argv: Sequence[str]) -> int:
    arguments = build_parser().parse_args(argv)
    try:
        base = settings_from(settings_flags(arguments))
        configs = parse_configs(arguments.config, arguments.url)
        for config in configs:  # every in-process configuration checked before any loads
            if config.url is None:
                settings_from({**settings_flags(arguments), **config.settings})
    except (SettingsError, ConfigError) as exc:
        print(f"reranker-service eval: {exc}", file=sys.stderr)
        return EXIT_USAGE
    # The table or the JSON is stdout's; log lines go to stderr.
    configure_logging(base.log_level, base.log_format, stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        report = evaluate(arguments, configs)
    except DatasetError as exc:
        print(f"reranker-service eval: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (RerankFailedError, StartupError) as exc:
        print(f"reranker-service eval: {exc}", file=sys.stderr)
        return 1
    except ModelLoadError as exc:
        logger.error("model_load_failed", error=str(exc))
        return 1
    except KeyboardInterrupt:
        return 130
    if arguments.json:
        print(json.dumps(report.as_json(), indent=2))
    else:
        print(table(report))
    if arguments.plot is not None:
        plot(report, arguments.plot)
    return 0
