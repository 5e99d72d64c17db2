"""The contenders: the model card's code, the engine in process (reuse on and off), the service
over HTTP, and the best fixed batch budget as the ceiling for the batch policy."""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from checkout import use_tests_support
from http_client import HttpError, KeepAliveClient
from reranker_service.engine.devices import resolve_device, resolve_devices, resolve_dtype
from reranker_service.engine.loading import load_single_device_model
from reranker_service.engine.prompt import PROMPT_PREFIX, PROMPT_SUFFIX
from reranker_service.engine.rerank_engine import EngineConfig, RerankEngine, RerankOutcome
from reranker_service.engine.runner.build import RunnerOptions
from reranker_service.engine.runner.protocol import run_pass
from reranker_service.engine.scheduler.jobs import BatchReport
from reranker_service.settings import DEFAULT_INSTRUCTION
from reranker_service.tiny_checkpoint import convert_causal_checkpoint
from workloads import Request


@dataclass
class Passes:
    """Forward passes of a cell: pairs, real tokens and padded tokens."""

    count: int = 0
    pairs: int = 0
    real_tokens: int = 0
    padded_tokens: int = 0
    seconds: float = 0.0
    """Time inside the passes, where the contender reports it (the engine's and the
    service's); 0 otherwise."""

    def add(self, lengths: Sequence[int]) -> None:
        """One right-padded pass of pairs of these token lengths."""
        self.count += 1
        self.pairs += len(lengths)
        self.real_tokens += sum(lengths)
        self.padded_tokens += len(lengths) * max(lengths)

    def add_batches(self, lengths: Sequence[int], batch_size: int) -> None:
        """Passes of ``batch_size`` pairs at a time, in order, each padded to its longest."""
        for start in range(0, len(lengths), batch_size):
            self.add(lengths[start : start + batch_size])


class Contender(Protocol):
    name: str

    async def rerank(self, request: Request) -> int:
        """Score one request; return the tokens fed to the model for it."""
        ...

    def start_cell(self) -> None: ...

    async def passes(self) -> Passes: ...

    def peak_memory_bytes(self) -> int | None: ...


class _RssSampler:
    """Peak resident memory of a process, sampled every 50 ms on a thread."""

    def __init__(self, pid: int) -> None:
        self._path = f"/proc/{pid}/status"
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _read(self) -> int:
        with open(self._path) as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self._read())

    def reset(self) -> None:
        self.peak = self._read()

    def close(self) -> None:
        self._stop.set()


class _MemoryMeter:
    def __init__(self, device: torch.device, pid: int) -> None:
        self._device = device
        self._rss = _RssSampler(pid) if device.type == "cpu" else None

    def reset(self) -> None:
        if self._rss is not None:
            self._rss.reset()
        else:
            torch.cuda.reset_peak_memory_stats(self._device)

    def peak(self) -> int:
        if self._rss is not None:
            return self._rss.peak
        return int(torch.cuda.max_memory_allocated(self._device))


class _OneRequestAtATime:
    """A contender that scores one request at a time on a thread, counting its own passes."""

    def __init__(self, device: torch.device) -> None:
        self._lock = threading.Lock()  # one model, one request at a time
        self._passes = Passes()
        self._memory = _MemoryMeter(device, os.getpid())

    def _score(self, request: Request) -> int:
        raise NotImplementedError

    async def rerank(self, request: Request) -> int:
        return await asyncio.to_thread(self._score, request)

    def start_cell(self) -> None:
        self._passes = Passes()
        self._memory.reset()

    async def passes(self) -> Passes:
        return self._passes

    def peak_memory_bytes(self) -> int | None:
        return self._memory.peak()


class ModelCardBaseline(_OneRequestAtATime):
    """What the seed tutorial's app does: the model card's code, one request at a time, each
    request one batch padded to its longest pair, the full LM head over every position."""

    name = "model card"

    def __init__(self, checkpoint: str, device: str, dtype: str, max_length: int) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self._device = resolve_device(device)
        self._tokenizer = AutoTokenizer.from_pretrained(checkpoint, padding_side="left")
        self._model = AutoModelForCausalLM.from_pretrained(
            checkpoint, dtype=resolve_dtype(dtype, [self._device])
        )
        self._model = self._model.to(self._device).eval()
        self._prefix = self._tokenizer.encode(PROMPT_PREFIX, add_special_tokens=False)
        self._suffix = self._tokenizer.encode(PROMPT_SUFFIX, add_special_tokens=False)
        self._yes = self._tokenizer.convert_tokens_to_ids("yes")
        self._no = self._tokenizer.convert_tokens_to_ids("no")
        self._max_length = max_length
        super().__init__(self._device)

    def _score(self, request: Request) -> int:
        pairs = [
            f"<Instruct>: {DEFAULT_INSTRUCTION}\n<Query>: {request.query}\n<Document>: {doc}"
            for doc in request.documents
        ]
        encoded = self._tokenizer(
            pairs,
            padding=False,
            truncation="longest_first",
            return_attention_mask=False,
            max_length=self._max_length - len(self._prefix) - len(self._suffix),
        )
        ids = [self._prefix + row + self._suffix for row in encoded["input_ids"]]
        batch = self._tokenizer.pad({"input_ids": ids}, padding=True, return_tensors="pt")
        with self._lock, torch.no_grad():
            logits = self._model(**batch.to(self._device)).logits[:, -1, :]
            pair = torch.stack([logits[:, self._no], logits[:, self._yes]], dim=1)
            torch.nn.functional.log_softmax(pair.float(), dim=1)[:, 1].exp().tolist()
        lengths = [len(row) for row in ids]
        self._passes.add(lengths)
        return sum(lengths)


class EngineInProcess:
    """The service's engine without HTTP: the most the service can reach. With
    ``prefix_reuse=False`` it recomputes every pair's whole prompt, as before reuse."""

    def __init__(
        self,
        checkpoint: str,
        device: str,
        dtype: str,
        max_length: int,
        *,
        prefix_reuse: bool,
        pass_costs: tuple[tuple[float, float], ...] | None = None,
        runner: RunnerOptions | None = None,
        name: str | None = None,
    ) -> None:
        from reranker_service.engine.loading import LoadOptions, load_model

        options = LoadOptions(
            checkpoint, None, device, dtype, max_length, runner or RunnerOptions()
        )
        replicas = load_model(options)
        self.runner_options = runner
        self.name = name or ("engine" if prefix_reuse else "engine, reuse off")
        if len(replicas.runners) > 1:
            self.name += f", {len(replicas.runners)} workers"
        self._reports: list[BatchReport] = []
        self._engine = RerankEngine(
            replicas,
            EngineConfig(
                max_batch_tokens=None,
                max_queued_pairs=1_000_000,
                largest_request_pairs=1000,
                tokenizer_threads=2,
                prefix_reuse=prefix_reuse,
                pass_costs=pass_costs,
            ),
            observer=self._reports.append,
        )
        self._memory = _MemoryMeter(resolve_devices(device)[0], os.getpid())

    async def start(self) -> None:
        """Ready, and serving on the runner it will keep: a compiled runner brought in the
        background has swapped in (or fallen back) before any cell is measured."""
        await self._engine.start()
        await asyncio.to_thread(self._engine.wait_for_compiled_runners, 900)

    @property
    def pass_costs(self) -> tuple[tuple[float, float], ...]:
        """The pass cost the engine measured at start-up, to start another engine from."""
        return tuple(self._engine.pass_costs.points)

    async def stop(self) -> None:
        await self._engine.stop()

    @property
    def dtype(self) -> str:
        """The number format served (``auto`` resolved)."""
        return self._engine.description.dtype

    async def score(self, request: Request) -> RerankOutcome:
        return await self._engine.rerank(DEFAULT_INSTRUCTION, request.query, request.documents)

    async def rerank(self, request: Request) -> int:
        return (await self.score(request)).total_tokens

    def start_cell(self) -> None:
        self._reports.clear()
        self._memory.reset()

    async def passes(self) -> Passes:
        reports = [r for r in self._reports if not r.failed]
        return Passes(
            count=len(reports),
            pairs=sum(r.pairs for r in reports),
            real_tokens=sum(r.real_tokens for r in reports),
            padded_tokens=sum(r.padded_tokens for r in reports),
            seconds=sum(r.inference_seconds for r in reports),
        )

    def peak_memory_bytes(self) -> int | None:
        return self._memory.peak()


@dataclass(frozen=True)
class BudgetRun:
    budget: int
    seconds: float
    passes: Passes
    mean_pair_tokens: float
    """Over all the workload's pairs, not only those the time allowed."""

    @property
    def pairs_per_second(self) -> float:
        """The tokens/s of the passes run, in pairs of the workload's mean length: a time
        limit that happened to draw short passes must not look faster."""
        return self.passes.real_tokens / self.seconds / self.mean_pair_tokens


class BestFixedBudget:
    """The batch policy's ceiling: every pair of the workload known up front, sorted by length
    and cut into passes of at most a fixed padded-token budget, scored in process without
    prefix reuse; the best of several budgets. No queue, no waiting, no policy."""

    name = "best fixed budget"

    def __init__(self, checkpoint: str, device: str, dtype: str, max_length: int) -> None:
        from reranker_service.engine.loading import LoadOptions

        options = LoadOptions(checkpoint, None, device, dtype, max_length)
        self._model = load_single_device_model(options)
        self._memory = _MemoryMeter(resolve_device(device), os.getpid())

    def encode(self, requests: list[Request]) -> list[list[int]]:
        encoder = self._model.encoder
        return [
            pair
            for request in requests
            for pair in encoder.encode(DEFAULT_INSTRUCTION, request.query, request.documents)
        ]

    def run(
        self,
        pairs: list[list[int]],
        budget: int,
        seconds: float,
        seed: int,
        mean_pair_tokens: float,
    ) -> BudgetRun:
        """Score length-sorted passes of at most ``budget`` padded tokens, in a shuffled order
        (so that a time limit does not favour the short ones), for about ``seconds``."""
        ordered = sorted(pairs, key=len)
        batches: list[list[list[int]]] = []
        for pair in ordered:
            if batches and (len(batches[-1]) + 1) * len(pair) <= budget:
                batches[-1].append(pair)
            else:
                batches.append([pair])
        random.Random(seed).shuffle(batches)
        run_pass(self._model.runner, batches[0])  # warm for this shape
        passes = Passes()
        started = time.perf_counter()
        for batch in batches:
            run_pass(self._model.runner, batch)
            passes.add([len(pair) for pair in batch])
            if time.perf_counter() - started >= seconds:
                break
        return BudgetRun(budget, time.perf_counter() - started, passes, mean_pair_tokens)

    def best(
        self, requests: list[Request], budgets: list[int], seconds: float, seed: int
    ) -> tuple[BudgetRun, list[BudgetRun]]:
        """Every budget's run and the fastest, in pairs/s; blocking."""
        pairs = self.encode(requests)
        self._memory.reset()
        mean_pair_tokens = sum(len(pair) for pair in pairs) / len(pairs)
        runs = [self.run(pairs, budget, seconds, seed, mean_pair_tokens) for budget in budgets]
        return max(runs, key=lambda run: run.pairs_per_second), runs

    def peak_memory_bytes(self) -> int | None:
        return self._memory.peak()


def _free_port() -> int:
    use_tests_support()
    from tests.support.prometheus_server import free_port

    return free_port()


def _server_timing(headers: dict[str, str]) -> dict[str, float]:
    """``name;dur=ms, ...`` as a dict of milliseconds."""
    timings: dict[str, float] = {}
    for part in headers.get("server-timing", "").split(","):
        name, _, duration = part.strip().partition(";dur=")
        if duration:
            timings[name] = float(duration)
    return timings


def _scrape(text: str) -> dict[str, float]:
    """Each sample's value by name, summed over its labels (the pass histograms are by device:
    a service with several workers reports the sum of theirs); bucket samples are left out."""
    from prometheus_client.parser import text_string_to_metric_families

    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not sample.name.endswith("_bucket"):
                values[sample.name] = values.get(sample.name, 0.0) + sample.value
    return values


@dataclass
class ServiceOverHttp:
    """``python -m reranker_service`` in its own process, driven over HTTP on 127.0.0.1; the
    batching figures come from its own /metrics."""

    checkpoint: str
    device: str
    dtype: str
    max_length: int
    name: str = "service"
    runner: str = "auto"
    compile: str = "auto"
    compile_cache: str | None = None
    startup_seconds: float = 0.0
    """From the process's start to its first 200 on /ready."""
    compiled_seconds: float | None = None
    """From the process's start until every worker's compiled runner serves (or fell back);
    None where nothing is compiled."""
    compile_states: tuple[str, ...] = ()
    """Each worker's ``compile_state`` (``/info``) when the cells began."""
    _process: subprocess.Popen[bytes] | None = None
    _client: KeepAliveClient | None = None
    _before: dict[str, float] = field(default_factory=dict)
    _rss: _RssSampler | None = None
    overhead_seconds: list[float] = field(default_factory=list)
    """Per request: client-side latency minus the engine's wall time for it (``engine`` in the
    response's Server-Timing): what HTTP, JSON and the app add to the engine."""
    _bodies: dict[int, bytes] = field(default_factory=dict)
    models: str | None = None
    """Several models in one process (``RERANKER_MODELS``: ``name=checkpoint,...``), each
    request naming its own (``Request.model``); None serves ``checkpoint`` alone."""
    server_timings: list[dict[str, float]] = field(default_factory=list)
    """Each answered request's ``Server-Timing`` in ms (tokenize, queue, inference, engine,
    total), in order, over the contender's life: a cell's are those it added."""

    async def start(self) -> None:
        port = _free_port()
        started = time.perf_counter()
        cache = ["--compile-cache", self.compile_cache] if self.compile_cache else []
        self._process = subprocess.Popen(  # noqa: ASYNC220 - once, before any measurement
            [sys.executable, "-m", "reranker_service",
             *(["--models", self.models] if self.models else ["--model", self.checkpoint]),
             "--device", self.device, "--dtype", self.dtype, "--max-length", str(self.max_length),
             "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
             "--max-queued-pairs", "1000000", "--request-timeout-seconds", "0",
             # Computing, not remembering: the cells replay a few distinct requests, which the
             # score cache would answer without a pass (bench/cache_bench.py measures it).
             "--cache-size", "0",
             "--runner", self.runner, "--compile", self.compile, *cache],
            stdout=subprocess.DEVNULL,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )  # fmt: skip
        self._client = KeepAliveClient("127.0.0.1", port)
        deadline = time.monotonic() + 600
        while True:
            if self._process.poll() is not None:
                raise RuntimeError("the service exited during start-up")
            try:
                if (await self._client.get("/ready")).status == 200:
                    self.startup_seconds = time.perf_counter() - started
                    break
            except (OSError, asyncio.IncompleteReadError, HttpError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the service did not become ready")
            await asyncio.sleep(0.2)
        # Measured on the runner it keeps: a background compile swaps in (or falls back) first.
        while True:
            devices = json.loads((await self._client.get("/info")).body)["devices"]
            self.compile_states = tuple(device["runner"]["compile_state"] for device in devices)
            if "compiling" not in self.compile_states:
                if self.compile_states != ("off",) * len(devices):
                    self.compiled_seconds = time.perf_counter() - started
                break
            if time.monotonic() > deadline:
                raise RuntimeError("the service's background compile did not end")
            await asyncio.sleep(0.5)
        self._rss = _RssSampler(self._process.pid)

    async def stop(self) -> None:
        if self._client is not None:
            await self._client.aclose()
        if self._rss is not None:
            self._rss.close()
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=60)

    async def rerank(self, request: Request) -> int:
        assert self._client is not None
        body = self._bodies.get(id(request))
        if body is None:
            document = {"query": request.query, "documents": request.documents}
            if request.model is not None:
                document["model"] = request.model
            body = self._bodies[id(request)] = json.dumps(document).encode()
        started = time.perf_counter()
        response = await self._client.request(
            "POST", "/rerank", body=body, content_type="application/json"
        )
        elapsed = time.perf_counter() - started
        if response.status != 200:
            raise HttpError(f"/rerank answered {response.status}: {response.body[:200]!r}")
        timings = _server_timing(response.headers)
        self.server_timings.append(timings)
        self.overhead_seconds.append(elapsed - timings["engine"] / 1000)
        tokens: int = response.json()["usage"]["total_tokens"]
        return tokens

    def cpu_seconds(self) -> float:
        """User and system CPU time of the service's process so far, every thread's (Linux)."""
        assert self._process is not None
        with open(f"/proc/{self._process.pid}/stat") as stat:
            # After the command's closing parenthesis: utime and stime are fields 14 and 15.
            fields = stat.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    async def info(self) -> dict[str, Any]:
        """Its ``/info``: the models served, the format ``auto`` chose, the batch budget."""
        assert self._client is not None
        served: dict[str, Any] = (await self._client.get("/info")).json()
        return served

    def start_cell(self) -> None:
        self.overhead_seconds.clear()
        if self._rss is not None:
            self._rss.reset()

    async def snapshot(self) -> None:
        assert self._client is not None
        self._before = _scrape((await self._client.get("/metrics")).body.decode())

    async def passes(self) -> Passes:
        assert self._client is not None
        after = _scrape((await self._client.get("/metrics")).body.decode())

        def delta(name: str) -> float:
            return after.get(name, 0.0) - self._before.get(name, 0.0)

        return Passes(
            count=int(delta("reranker_batch_size_count")),
            pairs=int(delta("reranker_batch_size_sum")),
            # Computed: billed tokens less those read from shared-prefix caches.
            real_tokens=int(
                delta("reranker_request_tokens_sum") - delta("reranker_prefix_tokens_reused_total")
            ),
            padded_tokens=int(delta("reranker_batch_tokens_sum")),
            seconds=delta("reranker_inference_seconds_sum"),
        )

    def peak_memory_bytes(self) -> int | None:
        if self.device != "cpu":
            return None  # the GPU memory of another process: see its torch gauges
        return self._rss.peak if self._rss is not None else None


def model_flops_per_token(config: Any, sequence_length: int) -> float:
    """Forward FLOPs per token: 2 x the decoder's matmul weights, plus causal attention."""
    hidden = config.hidden_size
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    attention_weights = hidden * head_dim * (2 * heads + 2 * kv_heads)
    mlp_weights = 3 * hidden * config.intermediate_size
    per_layer = 2 * (attention_weights + mlp_weights) + 2 * heads * head_dim * sequence_length
    return float(config.num_hidden_layers * per_layer)


def build_seq_cls_checkpoint(checkpoint: str, directory: str) -> str:
    """The sequence-classification form of a Qwen3 reranker, as Infinity and TEI-style servers
    take it (``reranker_service.tiny_checkpoint.convert_causal_checkpoint``): the same decoder,
    and one score row, ``w_yes - w_no`` of the LM head, so that its logit is the reranker's raw
    score. Written with ``save_pretrained`` into ``directory``."""
    return str(convert_causal_checkpoint(checkpoint, directory))


class CrossEncoderLoop(_OneRequestAtATime):
    """The plain peer: sentence-transformers' ``CrossEncoder`` on the seq-cls form of the same
    weights, each request's pairs with the Qwen3 prompt as text, in batches of 32 (bf16 on a
    GPU, fp32 on the CPU), one request at a time."""

    name = "crossencoder"
    BATCH = 32

    def __init__(self, seq_cls_checkpoint: str, device: str, max_length: int) -> None:
        from sentence_transformers import CrossEncoder

        self._device = resolve_device(device)
        dtype = torch.bfloat16 if self._device.type == "cuda" else torch.float32
        self._model = CrossEncoder(
            seq_cls_checkpoint,
            num_labels=1,
            max_length=max_length,
            device=str(self._device),
            model_kwargs={"dtype": dtype},
        )
        super().__init__(self._device)
        self._tokenizer = self._model.tokenizer
        self._lengths: dict[int, list[int]] = {}

    def _pair_lengths(self, request: Request, pairs: list[tuple[str, str]]) -> list[int]:
        """Tokens of each pair as the model sees them, counted once per request."""
        known = self._lengths.get(id(request))
        if known is None:
            limit = self._model.max_length
            known = self._lengths[id(request)] = [
                len(self._tokenizer(a, b, truncation=True, max_length=limit)["input_ids"])
                for a, b in pairs
            ]
        return known

    @staticmethod
    def text_pairs(request: Request) -> list[tuple[str, str]]:
        """Each document's prompt as a text pair. The tokenizer joins the two with nothing
        between: the halves are the reranker's prompt around the document."""
        first = f"{PROMPT_PREFIX}<Instruct>: {DEFAULT_INSTRUCTION}\n<Query>: {request.query}\n"
        return [(first, f"<Document>: {doc}{PROMPT_SUFFIX}") for doc in request.documents]

    def scores(self, request: Request) -> list[float]:
        """P(yes) of each document (the seq-cls logit through a sigmoid)."""
        with self._lock:
            return self._scores(request)

    def _scores(self, request: Request) -> list[float]:
        scored = self._model.predict(
            self.text_pairs(request), batch_size=self.BATCH, show_progress_bar=False
        )
        return [float(score) for score in scored]

    def _score(self, request: Request) -> int:
        # One request at a time, its lengths counted under the same lock: the fast tokenizer
        # keeps its truncation and padding as state, which a concurrent call would change.
        with self._lock:
            self._scores(request)
            lengths = self._pair_lengths(request, self.text_pairs(request))
            self._passes.add_batches(lengths, self.BATCH)
        return sum(lengths)


class EncoderCrossEncoderLoop(CrossEncoderLoop):
    """sentence-transformers' ``CrossEncoder`` on an encoder cross-encoder checkpoint (BERT,
    XLM-RoBERTa, ...) as its users call it: ``predict`` on the (query, document) pairs, batches
    of 32, fp32 on the CPU, one request at a time."""

    @staticmethod
    def text_pairs(request: Request) -> list[tuple[str, str]]:
        return [(request.query, doc) for doc in request.documents]

    def _pair_lengths(self, request: Request, pairs: list[tuple[str, str]]) -> list[int]:
        """In the order ``predict`` batches them: longest first by characters, so that the
        passes counted are its passes."""
        lengths = super()._pair_lengths(request, pairs)
        order = sorted(range(len(pairs)), key=lambda i: -len(pairs[i][0]) - len(pairs[i][1]))
        return [lengths[i] for i in order]


class _LogitsOf(torch.nn.Module):
    """A sequence-classification model's logits as one tensor, without a key/value cache: the
    graph OpenVINO converts."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        output = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return output.logits  # type: ignore[no-any-return]


class OpenVinoCrossEncoderLoop(_OneRequestAtATime):
    """The CPU peer: what sentence-transformers' ``CrossEncoder(..., backend="openvino")`` runs,
    on the seq-cls form of the same weights. That backend (optimum-intel) cannot be installed
    beside this project's transformers, so this does what it does, with OpenVINO's own API: the
    model converted to an OpenVINO graph (dynamic batch and length), compiled for the CPU with
    OpenVINO's defaults (bf16 where the CPU computes it, as the backend runs it; ``precision``
    overrides) and the latency hint, fed the CrossEncoder's text pairs tokenized as it tokenizes
    them, in batches of 32 padded to their longest, one request at a time; P(yes) is the logit's
    sigmoid, the CrossEncoder's activation for one label."""

    name = "openvino"
    BATCH = CrossEncoderLoop.BATCH

    def __init__(self, seq_cls_checkpoint: str, max_length: int, precision: str | None = None):
        import openvino
        from transformers import AutoTokenizer, Qwen3ForSequenceClassification

        self._tokenizer = AutoTokenizer.from_pretrained(seq_cls_checkpoint)
        model = Qwen3ForSequenceClassification.from_pretrained(
            seq_cls_checkpoint, dtype=torch.float32
        ).eval()
        example = self._tokenizer(
            [("a query", "a document"), ("q", "a longer document than the first")],
            padding=True,
            return_tensors="pt",
        )
        with torch.no_grad():
            graph = openvino.convert_model(
                _LogitsOf(model),
                example_input={
                    "input_ids": example["input_ids"],
                    "attention_mask": example["attention_mask"],
                },
            )
        config = {"PERFORMANCE_HINT": "LATENCY"}
        if precision is not None:
            config["INFERENCE_PRECISION_HINT"] = precision
        self._compiled = openvino.Core().compile_model(graph, "CPU", config)
        self.precision: str = self._compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
        self._max_length = max_length
        super().__init__(torch.device("cpu"))

    def scores(self, request: Request) -> list[float]:
        """P(yes) of each document."""
        with self._lock:
            return self._scores(request)[0]

    def _scores(self, request: Request) -> tuple[list[float], list[int]]:
        """Each document's P(yes), and each pair's tokens as the model saw them."""
        pairs = CrossEncoderLoop.text_pairs(request)
        scores: list[float] = []
        lengths: list[int] = []
        for start in range(0, len(pairs), self.BATCH):
            chunk = pairs[start : start + self.BATCH]
            encoded = self._tokenizer(
                [first for first, _ in chunk],
                [second for _, second in chunk],
                padding=True,
                truncation=True,
                max_length=self._max_length,
                return_tensors="np",
            )
            logits = self._compiled(
                {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
            )[0]
            scores.extend(torch.sigmoid(torch.from_numpy(logits[:, 0]).float()).tolist())
            lengths.extend(int(row.sum()) for row in encoded["attention_mask"])
        return scores, lengths

    def _score(self, request: Request) -> int:
        with self._lock:
            _, lengths = self._scores(request)
            self._passes.add_batches(lengths, self.BATCH)
        return sum(lengths)
