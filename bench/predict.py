"""Benchmark of the synchronous predict path (issue 3), written into ``docs/benchmarks.md``.

Side by side in one run, on one machine, with one model:

1. the raw engine's sentences/s and documents/s at each precision (fp32, bf16, int8; fp32 with padded
   passes) against the hardware ceiling (the model's FLOPs per sentence over a measured fp32 matmul
   rate, and over the cores' fp32 peak);
2. entity-level F1 on CoNLL-2003 test (eng.testb) at each precision;
3. HTTP load at 1, 8 and 32 concurrent clients against the reference app (``pipeline(...)`` per
   request, ``bench/reference_app.py``), the gateway at each precision, as shipped and set up for
   cores of its own (``OWN_CORES_ENV``).

The model is the bundled MiniLM encoder fine-tuned briefly on CoNLL train by this script (cached in
``.ner/bench-cache/``), or ``--model FOLDER``. Run: ``make bench-predict``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import uvloop
from seqeval.metrics import f1_score

from bench.proc import cpu_seconds
from shared.cli.embedded_redis import free_port
from shared.core.config import bundled_base_model, get_settings
from shared.predict.engine import EngineOptions, NerEngine
from trainer.conll import Sentence, read_conll

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".ner" / "bench-cache"
LABELS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]


# --- the model -------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainRecipe:
    sentences: int
    epochs: int
    learning_rate: float = 1e-4
    batch_size: int = 32
    seed: int = 7

    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.__dict__, sort_keys=True).encode()).hexdigest()[:10]


def train_model(recipe: TrainRecipe, conll_dir: Path) -> tuple[Path, float]:
    """Fine-tune the bundled encoder with the transformers Trainer (cached); returns folder and seconds."""
    out = CACHE / f"predict-model-{recipe.key()}"
    if (out / "config.json").exists():
        return out, json.loads((out / "bench_train.json").read_text())["seconds"]
    import torch
    from datasets import Dataset
    from transformers import (
        AutoModelForTokenClassification,
        AutoTokenizer,
        DataCollatorForTokenClassification,
        Trainer,
        TrainingArguments,
    )

    base = bundled_base_model()
    tokenizer = AutoTokenizer.from_pretrained(base)
    label2id = {label: i for i, label in enumerate(LABELS)}
    train = read_conll(conll_dir / "eng.train", limit=recipe.sentences)

    def encode(batch: dict) -> dict:
        enc = tokenizer(batch["tokens"], is_split_into_words=True, truncation=True, max_length=128)
        labels = []
        for row, tags in enumerate(batch["tags"]):
            previous, row_labels = None, []
            for word in enc.word_ids(row):
                first = word is not None and word != previous
                row_labels.append(label2id[tags[word]] if first else -100)
                previous = word
            labels.append(row_labels)
        return {**enc, "labels": labels}

    data = Dataset.from_dict({"tokens": [s.tokens for s in train], "tags": [s.tags for s in train]})
    data = data.map(encode, batched=True, remove_columns=["tokens", "tags"])
    model = AutoModelForTokenClassification.from_pretrained(
        base, num_labels=len(LABELS), id2label=dict(enumerate(LABELS)), label2id=label2id
    )
    args = TrainingArguments(
        output_dir=str(CACHE / "trainer-tmp"),
        per_device_train_batch_size=recipe.batch_size,
        num_train_epochs=recipe.epochs,
        learning_rate=recipe.learning_rate,
        warmup_steps=0.1,  # a ratio of the total steps
        weight_decay=0.01,
        train_sampling_strategy="group_by_length",
        save_strategy="no",
        report_to=[],
        logging_steps=50,
        seed=recipe.seed,
        use_cpu=not torch.cuda.is_available(),
    )
    started = time.perf_counter()
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=data,
        data_collator=DataCollatorForTokenClassification(tokenizer),
    )
    trainer.train()
    seconds = time.perf_counter() - started
    trainer.save_model(str(out))
    tokenizer.save_pretrained(out)
    (out / "bench_train.json").write_text(json.dumps({**recipe.__dict__, "seconds": seconds}))
    return out, seconds


# --- raw engine, ceiling, F1 -----------------------------------------------------------------


def flops_per_sentence(config, tokens: float) -> float:  # type: ignore[no-untyped-def]
    """Multiply-adds x2 of one encoder pass over ``tokens`` tokens (projections, FFN, attention, head)."""
    d, inner, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    per_layer = 2 * tokens * (4 * d * d + 2 * d * inner) + 4 * tokens * tokens * d
    return layers * per_layer + 2 * tokens * d * config.num_labels


def fp32_peak_gflops(cores: int) -> tuple[float, str]:
    """Cores x clock x fp32 FLOPs per cycle per core (two FMA pipes x vector width x 2).

    AVX-512 counts double only where the pipes are 512 bits wide: AMD Zen 4 (family 25) splits
    AVX-512 into two 256-bit halves, so it peaks like AVX2.
    """
    info = Path("/proc/cpuinfo").read_text()

    def field(name: str) -> str:
        match = re.search(rf"^{name}\s*:\s*(.*)$", info, re.M)
        return match.group(1).strip() if match else ""

    flags, vendor, family = field("flags").split(), field("vendor_id"), field("cpu family")
    wide = "avx512f" in flags and not (vendor == "AuthenticAMD" and family == "25")
    per_cycle = 64 if wide else 32 if "fma" in flags else 16
    ghz = float(field("cpu MHz") or 2000) / 1000
    return cores * ghz * per_cycle, f"{cores} cores x {ghz:.2f} GHz x {per_cycle} FLOP/cycle"


def measured_matmul_gflops(rounds: int = 5, seconds: float = 1.0, *, dtype: str = "float32") -> float:
    """Best rate of a 1024x1024 matmul (``dtype``, a torch dtype name) over a few short rounds (the
    machine is shared)."""
    import torch  # after shared.predict.engine, which sets the OpenMP wait policy before torch loads

    kind = getattr(torch, dtype)
    a, b = torch.randn(1024, 1024).to(kind), torch.randn(1024, 1024).to(kind)
    torch.mm(a, b)
    best = 0.0
    for _ in range(rounds):
        runs, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            torch.mm(a, b)
            runs += 1
        best = max(best, runs * 2 * 1024**3 / (time.perf_counter() - started) / 1e9)
    return best


def engine_rate(engine: NerEngine, texts: list[str], repeats: int = 2) -> float:
    """Best sentences/s over ``repeats`` passes of the whole list in one predict call."""
    engine.predict(texts[:64])  # warm-up
    best = 0.0
    for _ in range(repeats):
        started = time.perf_counter()
        engine.predict(texts)
        best = max(best, len(texts) / (time.perf_counter() - started))
    return best


def conll_f1(engine: NerEngine, sentences: list[Sentence]) -> float:
    """Entity-level F1 (seqeval) of the engine's spans mapped back onto the CoNLL tokens."""
    texts = [" ".join(s.tokens) for s in sentences]
    predicted = []
    for sentence, entities in zip(sentences, engine.predict(texts), strict=True):
        starts, position = [], 0
        for token in sentence.tokens:
            starts.append(position)
            position += len(token) + 1
        tags = ["O"] * len(sentence.tokens)
        for entity in entities:
            inside = [i for i, s in enumerate(starts) if entity.start <= s < entity.end]
            for n, i in enumerate(inside):
                tags[i] = ("B-" if n == 0 else "I-") + entity.entity_group
        predicted.append(tags)
    return float(f1_score([s.tags for s in sentences], predicted))


# --- HTTP load -------------------------------------------------------------------------------


@dataclass
class LoadResult:
    clients: int
    requests: int
    errors: int
    seconds: float
    latencies: list[float]
    cpu: CpuUse | None = None  # where the CPU went while it was measured (``_load`` with a ``server_pid``)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) * 1000 if self.latencies else float("nan")


@dataclass(frozen=True)
class CpuUse:
    """Core-seconds over a measured window: the server's event loop (its main thread), its other
    threads (model calls, their lanes, the tokenizer's pool), the load generator (this process), and
    the machine's idle cores. Linux only (/proc)."""

    event_loop: float
    other_threads: float
    load_generator: float
    idle: float
    seconds: float


class CpuClock:
    """Reads the core-seconds ``CpuUse`` splits, for one server process; ``since`` an earlier reading."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def read(self) -> tuple[float, float, float, float, float]:
        main = others = 0.0
        for stat in Path(f"/proc/{self.pid}/task").glob("*/stat"):
            used = cpu_seconds(stat)  # 0 for a thread that ended meanwhile
            if stat.parent.name == str(self.pid):
                main += used
            else:
                others += used
        own = os.times()
        with open("/proc/stat") as stat:
            idle = int(stat.readline().split()[4]) / os.sysconf("SC_CLK_TCK")
        return main, others, own.user + own.system, idle, time.perf_counter()

    def since(self, before: tuple[float, float, float, float, float]) -> CpuUse:
        now = self.read()
        return CpuUse(*(after - first for after, first in zip(now, before, strict=True)))


class KeepAliveConnection:
    """A minimal HTTP/1.1 keep-alive client for the load generator.

    The load generator shares the 2 cores with the server under test, so it must cost little:
    httpx's AsyncClient capped a trivial ``GET /healthz`` at ~190 requests/s with 32 connections
    here, this at ~1,700, so the client no longer flattens the differences being measured.
    """

    def __init__(self, port: int, api_key: str | None = None) -> None:
        self.port = port
        self.extra_headers = f"X-API-Key: {api_key}\r\n" if api_key else ""

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)

    async def post_json(self, path: str, body: object) -> tuple[int, bytes]:
        payload = json.dumps(body).encode()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n{self.extra_headers}\r\n"
        )
        self.writer.write(head.encode() + payload)
        status_line = await self.reader.readuntil(b"\r\n")
        headers = await self.reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in headers.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return int(status_line.split()[1]), await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


async def _load(
    port: int,
    texts: list[str],
    clients: int,
    warmup: float,
    duration: float,
    api_key: str | None = None,
    server_pid: int | None = None,
) -> LoadResult:
    latencies: list[float] = []
    errors = 0
    counter = iter(range(10**9))
    measure_from = time.perf_counter() + warmup
    stop_at = measure_from + duration

    async def cpu_use() -> CpuUse | None:
        """The server's and this machine's CPU over the measured window (``server_pid`` given)."""
        if server_pid is None or not Path(f"/proc/{server_pid}/task").is_dir():
            return None
        clock = CpuClock(server_pid)
        await asyncio.sleep(max(0.0, measure_from - time.perf_counter()))
        before = clock.read()
        await asyncio.sleep(max(0.0, stop_at - time.perf_counter()))
        return clock.since(before)

    async def one_client() -> None:
        nonlocal errors
        connection = KeepAliveConnection(port, api_key)
        await connection.open()
        try:
            while (now := time.perf_counter()) < stop_at:
                text = texts[next(counter) % len(texts)]
                status, _ = await connection.post_json("/predict/", {"text": text})
                done = time.perf_counter()
                if now >= measure_from:
                    if status == 200:
                        latencies.append(done - now)
                    else:
                        errors += 1
        finally:
            connection.close()

    cpu, *_ = await asyncio.gather(cpu_use(), *(one_client() for _ in range(clients)))
    return LoadResult(clients, len(latencies), errors, duration, latencies, cpu)


class Server:
    """One app under uvicorn in its own process; logs to a temporary file."""

    def __init__(
        self, name: str, argv: list[str], env: dict[str, str], ready_path: str, api_key: str | None = None
    ) -> None:
        self.name, self.port, self.api_key = name, free_port(), api_key
        self.headers = {"X-API-Key": api_key} if api_key else {}
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.NamedTemporaryFile(prefix=f"bench-{name}-", suffix=".log", delete=False)  # noqa: SIM115 (open while the server runs)
        argv = [a.replace("{port}", str(self.port)) for a in argv]
        # An empty value removes a variable (this process runs with the engine's OpenMP setting).
        environ = {key: value for key, value in {**os.environ, **env}.items() if value != ""}
        self.process = subprocess.Popen(
            argv, env=environ, cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT
        )
        self._wait_ready(ready_path)

    def _wait_ready(self, path: str, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited; log: {self.log.name}")
            try:
                # With keys on, /readyz shows its checks to an admin key only.
                body = httpx.get(self.url + path, headers=self.headers, timeout=2).json()
                # The gateway's /readyz also checks the broker; only the model matters here.
                if body.get("checks", {}).get("model", "ok") == "ok":
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{self.name} not ready after {timeout}s; log: {self.log.name}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_reference(model: Path, omp_wait_policy: str | None) -> Server:
    """The prototype's design; ``omp_wait_policy`` None leaves OpenMP at its default, as the prototype did."""
    argv = [
        sys.executable,
        "-m",
        "uvicorn",
        "bench.reference_app:app",
        "--port",
        "{port}",
        "--log-level",
        "warning",
    ]
    env = {"BENCH_MODEL": str(model), "OMP_WAIT_POLICY": omp_wait_policy or ""}
    name = "reference" if omp_wait_policy is None else f"reference-omp-{omp_wait_policy.lower()}"
    return Server(name, argv, env, "/healthz")


def start_gateway(
    model: Path,
    state: Path,
    precision: str,
    extra: dict[str, str] | None = None,
    *,
    auth: bool = False,
    label: str = "",
) -> Server:
    """``ner serve`` at ``precision``; with ``auth``, keys on and one key that every client sends: the
    request path with its key check and bucket charge (no practical rate limit, and a per-key cap
    in flight above the clients: the limits themselves are not what is measured)."""
    env = {
        "NER_MODEL": str(model),
        "NER_PRECISION": precision,
        "NER_QUANTIZE": "",  # unset: NER_PRECISION alone decides
        "NER_AUTH": "on" if auth else "off",
        "NER_STATE_DIR": str(state),
        "NER_DATABASE_URL": "",  # the SQLite file in the state folder
        "NER_LOG_LEVEL": "WARNING",
        **({"NER_PREDICT_MAX_CONCURRENT_PER_KEY": "1000"} if auth else {}),
        **(extra or {}),
    }
    environ = {key: value for key, value in {**os.environ, **env}.items() if value != ""}
    cli = [sys.executable, "-m", "shared.cli"]
    subprocess.run([*cli, "db", "upgrade"], env=environ, cwd=REPO, check=True, capture_output=True)
    api_key = None
    if auth:
        created = subprocess.run(
            # admin: /readyz shows it whether the model is loaded; the scope check costs the same.
            [*cli, "keys", "create", "--scope", "admin", "--rate-limit", "10000000", "--name", "bench"],
            env=environ,
            cwd=REPO,
            check=True,
            capture_output=True,
            text=True,
        )
        api_key = created.stdout.strip()
    argv = [*cli, "serve", "--port", "{port}"]
    name = f"gateway-{precision}" + (f"-{label}" if label else "") + ("-auth" if auth else "")
    return Server(name, argv, env, "/readyz", api_key=api_key)


def run_load(
    server: Server, texts: list[str], levels: list[int], warmup: float, duration: float
) -> dict[int, LoadResult]:
    results = {}
    for clients in levels:
        results[clients] = uvloop.run(
            _load(server.port, texts, clients, warmup, duration, server.api_key, server.process.pid)
        )
        r = results[clients]
        print(
            f"  {server.name:>16} {clients:>3} clients: {r.rps:7.1f} req/s  p50 {r.percentile(50):7.1f} ms  "
            f"p99 {r.percentile(99):7.1f} ms  errors {r.errors}",
            flush=True,
        )
    return results


# --- report ----------------------------------------------------------------------------------


# How docs/operations.md sets up a gateway that has its cores to itself: torch's OpenMP threads spin a
# few microseconds at each barrier before they sleep (the engine's default, OMP_WAIT_POLICY=PASSIVE,
# sleeps at once: the right choice where a worker shares the cores).
OWN_CORES_ENV = {"GOMP_SPINCOUNT": "1000"}


# Earlier runs' figures, shown next to this run's, oldest first. 2026-11-30 19:45 on an AVX2 KVM guest
# before passes ran in lanes and small ones on one thread; 2026-12-01 02:28 on a Zen 5 KVM guest
# (AVX-512, native bf16, VNNI); 05:26 on a Zen 4 KVM guest (AVX-512, native bf16, VNNI), the same
# engine and gateway code as 02:28; 08:21 the same code on the same kind of guest, before the lean
# ``POST /predict/`` (gateway/fastpath.py). Within one run, ``fp32 padded`` is the before and after on the
# same cores.
PREVIOUS_RUNS: list[dict] = [
    {
        "date": "2026-11-30 19:45, AVX2 KVM guest, before lanes",
        "engine": {"fp32": 231, "int8": 243},
        "documents": {"fp32": (11.40, 2950), "int8": (13.06, 3380)},
        "f1": {"fp32": 0.8835, "int8": 0.8822},
        "reference": {1: (60.9, 15, 29), 32: (30.5, 1018, 1638)},
        "gateway fp32": {1: (46.0, 20, 40), 32: (137.5, 251, 344)},
        "gateway fp32, own cores": {1: (48.5, 19, 42), 32: (150.4, 221, 296)},
        "gateway int8": {1: (42.8, 22, 39), 32: (121.6, 258, 413)},
        "gateway int8, own cores": {1: (45.2, 21, 37), 32: (121.6, 267, 368)},
        "matmul_share_fp32": 0.64,
    },
    {
        "date": "2026-12-01 02:28, Zen 5 KVM guest",
        "engine": {"fp32": 515, "bf16": 1311, "int8": 1136},
        "documents": {"fp32": (20.23, 5235), "bf16": (50.58, 13091), "int8": (36.67, 9491)},
        "f1": {"fp32": 0.8835, "bf16": 0.8831, "int8": 0.8826},
        "reference": {1: (109.2, 9, 15), 32: (67.9, 461, 693)},
        "gateway fp32": {1: (104.2, 9, 18), 32: (368.0, 86, 147)},
        "gateway fp32, own cores": {1: (104.1, 9, 19), 32: (359.5, 86, 150)},
        "gateway bf16": {1: (156.2, 6, 10), 32: (755.2, 42, 67)},
        "gateway bf16, own cores": {1: (155.8, 6, 10), 32: (787.2, 40, 67)},
        "gateway int8": {1: (187.3, 5, 9), 32: (707.2, 44, 77)},
        "gateway int8, own cores": {1: (195.6, 5, 9), 32: (704.0, 46, 77)},
        "matmul_share_fp32": 0.85,
    },
    {
        "date": "2026-12-01 05:26, Zen 4 KVM guest",
        "engine": {"fp32": 415, "bf16": 661, "int8": 735},
        "documents": {"fp32": (15.85, 4103), "bf16": (28.05, 7261), "int8": (27.54, 7127)},
        "f1": {"fp32": 0.8835, "bf16": 0.8831, "int8": 0.8826},
        "reference": {1: (70.8, 13, 26), 32: (49.2, 628, 969)},
        "gateway fp32": {1: (76.5, 12, 23), 32: (297.6, 109, 183)},
        "gateway fp32, own cores": {1: (73.1, 13, 26), 32: (278.4, 114, 232)},
        "gateway bf16": {1: (101.9, 9, 16), 32: (422.4, 77, 130)},
        "gateway bf16, own cores": {1: (92.5, 10, 20), 32: (406.4, 77, 140)},
        "gateway int8": {1: (114.4, 8, 16), 32: (470.4, 68, 114)},
        "gateway int8, own cores": {1: (126.6, 7, 15), 32: (486.4, 66, 107)},
        "matmul_share_fp32": 0.81,
    },
    {
        "date": "2026-12-01 08:21, Zen 4 KVM guest",
        "engine": {"fp32": 394, "bf16": 654, "int8": 746},
        "documents": {"fp32": (15.63, 4044), "bf16": (30.57, 7913), "int8": (26.05, 6742)},
        "f1": {"fp32": 0.8835, "bf16": 0.8831, "int8": 0.8826},
        "reference": {1: (64.2, 14, 29), 32: (51.1, 606, 1114)},
        "gateway fp32": {1: (71.5, 13, 27), 32: (297.6, 112, 176)},
        "gateway fp32, own cores": {1: (79.5, 11, 25), 32: (294.4, 109, 191)},
        "gateway bf16": {1: (97.7, 10, 18), 32: (428.8, 75, 114)},
        "gateway bf16, own cores": {1: (101.2, 9, 17), 32: (444.8, 73, 121)},
        "gateway int8": {1: (135.3, 7, 14), 32: (476.8, 68, 115)},
        "gateway int8, own cores": {1: (116.4, 8, 16), 32: (492.8, 64, 113)},
        "matmul_share_fp32": 0.82,
    },
]


def spinning_engine_rate(model: Path, precision: str, sentences: int) -> float:
    """The raw engine's sentences/s in a child process set up as a gateway with cores of its own."""
    argv = [sys.executable, "-m", "bench.predict", "--model", str(model), "--raw-rate", precision]
    done = subprocess.run(
        [*argv, "--engine-sentences", str(sentences)],
        env={**os.environ, **OWN_CORES_ENV},
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    return float(done.stdout.split()[-1])


def fp32_copy(model: Path, into: Path) -> Path:
    """The model saved in fp32: the shipped folder is stored fp16, which ``pipeline`` (the reference)
    would run in fp16 on CPU (2.4x slower); every server then starts from the same fp32 weights."""
    import torch
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    loaded = AutoModelForTokenClassification.from_pretrained(model, dtype=torch.float32)
    loaded.save_pretrained(into)
    AutoTokenizer.from_pretrained(model).save_pretrained(into)
    return into


def document_texts(conll_dir: Path, limit: int) -> list[str]:
    """The first ``limit`` eng.testb documents, one text each (sentences joined by newlines)."""
    from bench.quality import _read_documents

    documents = _read_documents(conll_dir / "eng.testb")[:limit]
    return ["\n".join(" ".join(tokens) for tokens in document) for document in documents]


def measured_matmul_bf16_gflops(rounds: int = 5, seconds: float = 1.0) -> float:
    """Best rate of a 1024x1024 bf16 matmul (AMX / AVX512-BF16 where the CPU has them)."""
    return measured_matmul_gflops(rounds, seconds, dtype="bfloat16")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a token-classification folder; default: train one")
    parser.add_argument("--train-sentences", type=int, default=6000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--learning-rate", type=float, default=3e-4)
    parser.add_argument("--engine-sentences", type=int, default=1000)
    parser.add_argument("--documents", type=int, default=60, help="eng.testb documents for docs/s")
    parser.add_argument(
        "--engine-rounds", type=int, default=3, help="raw engine rounds, alternating engines; best kept"
    )
    parser.add_argument("--f1-sentences", type=int, default=0, help="eng.testb sentences for F1; 0: all")
    parser.add_argument("--precisions", default="fp32,bf16,int8")
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--duration", type=float, default=15.0, help="measured seconds per load level")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument(
        "--load-rounds", type=int, default=2, help="HTTP rounds, servers taking turns; each keeps its best"
    )
    parser.add_argument("--omp-passive", action="store_true", help="also the reference with OMP passive")
    parser.add_argument(
        "--no-padded",
        action="store_true",
        help="skip the fp32 engine and gateway with padded passes (NER_ENGINE_PACKING=false), the before",
    )
    parser.add_argument(
        "--no-own-cores",
        action="store_true",
        help=f"skip the gateways set up for cores of their own ({OWN_CORES_ENV})",
    )
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    parser.add_argument(
        "--auth",
        action="store_true",
        help="also each gateway with NER_AUTH=on and a key (the key check and rate-limit charge per request)",
    )
    parser.add_argument("--raw-rate", metavar="PRECISION", help=argparse.SUPPRESS)  # spinning_engine_rate
    args = parser.parse_args(argv)
    conll_dir = get_settings().conll_dir
    if args.raw_rate:
        engine = NerEngine.load(args.model, EngineOptions(device="cpu", precision=args.raw_rate))
        texts = [" ".join(s.tokens) for s in read_conll(conll_dir / "eng.testb", limit=args.engine_sentences)]
        # A fresh process's first pass pays one-off costs (kernels for new shapes, allocations) that the
        # bench process's engines paid rounds ago; the first pass over the same texts warms it.
        engine_rate(engine, texts, 1)
        print(engine_rate(engine, texts, 1))
        return 0
    levels = [int(c) for c in args.clients.split(",")]
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]

    with tempfile.TemporaryDirectory(prefix="bench-predict-") as state:
        if args.model:
            model_dir = fp32_copy(args.model, Path(state) / "model")
            model_note = f"`{args.model}` (given; saved as fp32 for every server)"
        else:
            recipe = TrainRecipe(
                sentences=args.train_sentences, epochs=args.epochs, learning_rate=args.learning_rate
            )
            print(f"training the bench model ({recipe}) ...", flush=True)
            model_dir, seconds = train_model(recipe, conll_dir)
            model_note = (
                f"the bundled MiniLM-L6 (uncased, 22M parameters) fine-tuned by this script for "
                f"{recipe.epochs} epochs on the first {recipe.sentences:,} sentences of eng.train (lr "
                f"{recipe.learning_rate}, batch {recipe.batch_size}; {seconds:.0f} s of training, cached) "
                "- a short training, not the trainer's full run"
            )

        test = read_conll(conll_dir / "eng.testb")
        texts = [" ".join(s.tokens) for s in test]
        engine_texts = texts[: args.engine_sentences]
        documents = document_texts(conll_dir, args.documents)
        f1_test = test[: args.f1_sentences] if args.f1_sentences else test

        engines: dict[str, dict[str, float]] = {}
        tokens = flops = 0.0
        threads = 1
        variants = [(precision, precision, True) for precision in precisions]
        if not args.no_padded:
            variants.append(("fp32 padded", "fp32", False))
        loaded: dict[str, NerEngine] = {}
        for name, precision, packing in variants:
            engine = NerEngine.load(
                model_dir, EngineOptions(device="cpu", precision=precision, packing=packing)
            )
            threads = engine.threads or 1
            if not tokens:
                tokens = statistics.mean(len(engine.tokenizer(t)["input_ids"]) for t in engine_texts)
                flops = flops_per_sentence(engine.model.config, tokens)
            loaded[name] = engine
        doc_tokens = sum(len(next(iter(loaded.values())).tokenizer(t)["input_ids"]) for t in documents)
        # Rounds alternate between the engines, best round each: a slow spell of a shared machine
        # then costs every engine a round, instead of all of one engine's.
        rates = {name: {"sentences": 0.0, "documents": 0.0} for name in loaded}
        for round_ in range(args.engine_rounds):
            for name, engine in loaded.items():
                print(f"raw engine {name}, round {round_ + 1} ...", flush=True)
                rates[name]["sentences"] = max(rates[name]["sentences"], engine_rate(engine, engine_texts, 1))
                rates[name]["documents"] = max(rates[name]["documents"], engine_rate(engine, documents, 1))
        for name, engine in loaded.items():
            engines[name] = {
                "sentences_per_s": rates[name]["sentences"],
                "documents_per_s": rates[name]["documents"],
                "tokens_per_s": rates[name]["documents"] * doc_tokens / len(documents),
                "f1": conll_f1(engine, f1_test),
            }
            print(f"  {name}: {engines[name]}", flush=True)
        peak, peak_how = fp32_peak_gflops(threads)
        matmul, matmul_bf16 = measured_matmul_gflops(), measured_matmul_bf16_gflops()

        print("HTTP load ...", flush=True)
        loads: dict[str, dict[int, LoadResult]] = {}
        # (name, how to start it, its raw engine's sentences/s now: None for the reference)
        servers: list[tuple[str, Callable[[], Server], Callable[[], float] | None]] = [
            ("reference", lambda: start_reference(model_dir, None), None)
        ]
        if args.omp_passive:
            servers.append(("reference, OMP passive", lambda: start_reference(model_dir, "PASSIVE"), None))

        def in_process(name: str) -> Callable[[], float]:
            return lambda: engine_rate(loaded[name], engine_texts, 1)

        for precision in precisions:
            servers.append(
                (
                    f"gateway {precision}",
                    lambda p=precision: start_gateway(model_dir, Path(state) / p, p),
                    in_process(precision),
                )
            )
            if not args.no_own_cores:
                # Its raw engine spins as it does: measured in a child process with the same setting.
                servers.append(
                    (
                        f"gateway {precision}, own cores",
                        lambda p=precision: start_gateway(
                            model_dir, Path(state) / f"{p}-own", p, OWN_CORES_ENV, label="own"
                        ),
                        lambda p=precision: spinning_engine_rate(model_dir, p, len(engine_texts)),
                    )
                )
            if args.auth:
                servers.append(
                    (
                        f"gateway {precision}, auth on",
                        lambda p=precision: start_gateway(model_dir, Path(state) / f"{p}-auth", p, auth=True),
                        in_process(precision),
                    )
                )
        if not args.no_padded:
            servers.append(
                (
                    "gateway fp32 padded",
                    lambda: start_gateway(
                        model_dir,
                        Path(state) / "fp32-padded",
                        "fp32",
                        {"NER_ENGINE_PACKING": "false"},
                        label="padded",
                    ),
                    in_process("fp32 padded"),
                )
            )
        nearby: dict[str, float] = {}  # gateway -> its raw engine's sentences/s around its load
        running: list[tuple[str, Server, Callable[[], float] | None]] = []
        try:
            for name, start, raw_rate in servers:
                running.append((name, start(), raw_rate))
            # Every server is up (idle ones cost nothing) and each round visits them in turn, so a
            # slow spell of a shared machine costs each server a round instead of all of one
            # server's levels; a server keeps its round with the most requests/s at the top level.
            for round_ in range(args.load_rounds):
                for name, server, raw_rate in running:
                    print(f"{name}, round {round_ + 1} ...", flush=True)
                    # A gateway's share of its raw engine compares two rates of one moment: the raw
                    # engine runs just before and just after the gateway's load levels (the gateway
                    # idle meanwhile); the mean is the denominator.
                    before = raw_rate() if raw_rate else 0.0
                    result = run_load(server, texts, levels, args.warmup, args.duration)
                    if name in loads and loads[name][max(levels)].rps >= result[max(levels)].rps:
                        continue
                    loads[name] = result
                    if raw_rate:
                        nearby[name] = (before + raw_rate()) / 2
                        print(f"  raw engine around it: {nearby[name]:.1f} sentences/s", flush=True)
        finally:
            for _, server, _ in running:
                server.stop()

    markdown = render(
        model_note=model_note,
        levels=levels,
        loads=loads,
        nearby=nearby,
        engines=engines,
        ceiling=(len(engine_texts), tokens, flops, peak, peak_how, matmul, matmul_bf16),
        n_test=len(f1_test),
        n_documents=len(documents),
        duration=args.duration,
        rounds=args.engine_rounds,
        load_rounds=args.load_rounds,
        cores=threads,
    )
    print(markdown)
    if not args.no_write:
        from bench.report import write_section

        given = sys.argv[1:] if argv is None else argv
        command = "make bench-predict" if not given else "python -m bench.predict " + " ".join(given)
        write_section("predict", markdown, command=command)
    return 0


def cpu_lines(
    loads: dict[str, dict[int, LoadResult]], nearby: dict[str, float], top: int, cores: int
) -> list[str]:
    """Where a request's core time went at ``top`` clients, next to a raw engine sentence's."""
    lines = [
        "",
        f"### Where the cores went at {top} clients",
        "",
        "Core-milliseconds per request over the measured window (/proc; the machine has "
        f"{cores} cores, so a row sums to about {cores} x 1000 / req/s): the server's event loop (its main "
        "thread: HTTP, JSON, validation, the batcher), its other threads (model calls, their lanes, the "
        "tokenizer's pool), the load generator (the bench process: its clients), and the cores left "
        "idle. *raw engine* is what a sentence takes of the cores in the raw engine at the same "
        f"precision ({cores} x 1000 / its sentences/s around the load).",
        "",
        "| server | req/s | event loop | other threads | load generator | idle | raw engine, per sentence |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, results in loads.items():
        r = results[top]
        if r.cpu is None or not r.requests:
            continue
        per = 1000 / (r.cpu.seconds * r.rps)  # core-seconds over the window -> ms per request
        raw = f"{cores * 1000 / nearby[name]:.2f}" if name in nearby else "-"
        lines.append(
            f"| {name} | {r.rps:.1f} | {r.cpu.event_loop * per:.2f} | {r.cpu.other_threads * per:.2f} | "
            f"{r.cpu.load_generator * per:.2f} | {r.cpu.idle * per:.2f} | {raw} |"
        )
    return lines


def render(
    *,
    model_note: str,
    levels: list[int],
    loads: dict,
    nearby: dict[str, float],
    engines: dict[str, dict[str, float]],
    ceiling: tuple,
    n_test: int,
    n_documents: int,
    duration: float,
    rounds: int,
    load_rounds: int,
    cores: int,
) -> str:
    n_engine, tokens, flops, peak, peak_how, matmul, matmul_bf16 = ceiling
    ref = loads["reference"]
    top, one = max(levels), min(levels)
    lines = [
        f"Model: {model_note}. Texts: CoNLL-2003 eng.testb sentences (mean {tokens:.1f} tokens with "
        f"[CLS]/[SEP]). Each load level runs {duration:.0f} s after a warm-up; clients send one request "
        f"after another; all servers were up at once and took turns on the same cores over {load_rounds} "
        "rounds, each keeping its round with the most requests/s at the top level, with the load "
        "generator on the same machine. `gateway <precision>` is `ner serve` with `NER_PRECISION` set "
        "(auth off, as the reference has none); `gateway <precision>, own cores` is the same set up as "
        "for cores of its own (docs/operations.md: "
        f"{', '.join(f'`{k}={v}`' for k, v in OWN_CORES_ENV.items())}, OpenMP threads spin briefly "
        "before they sleep; the others sleep at once, as where a worker shares the cores).",
        "",
        "### HTTP: gateway vs the reference (`pipeline(...)` per request)",
        "",
        "`reference` runs as the prototype did (a transformers `pipeline` per request, OpenMP defaults). "
        "Ratios are against `reference`; *of raw engine* is the gateway's requests/s over the raw "
        "engine's sentences/s at the same precision (one sentence per request), that engine measured "
        "in the bench process just before and just after the gateway's load levels (the mean of the "
        "two; the gateway idle meanwhile), so that both rates are of the same minutes of a machine "
        "whose speed swings; for an `own cores` gateway, in a child process set up as it is.",
        "",
        "| server | clients | req/s | p50 ms | p99 ms | errors | req/s vs reference | of raw engine |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, results in loads.items():
        raw = nearby.get(name)
        for clients in levels:
            r = results[clients]
            ratio = r.rps / ref[clients].rps if ref[clients].rps else float("nan")
            share = f"{r.rps / raw:.0%}" if raw else "-"
            lines.append(
                f"| {name} | {clients} | {r.rps:.1f} | {r.percentile(50):.0f} | {r.percentile(99):.0f} | "
                f"{r.errors} | {ratio:.2f}x | {share} |"
            )
    lines += [
        "",
        f"Against the issue's goals ({top} clients: at least 75% of the raw engine's sentences/s at the same "
        "precision, at least 4x the reference at fp32, p99 under 300 ms; 1 client: p50 at most the "
        "reference's):",
        "",
    ]
    for name, results in loads.items():
        if not name.startswith("gateway"):
            continue
        raw = nearby[name]
        r, single = results[top], results[one]
        lines.append(
            f"- {name}: {r.rps / raw:.0%} of the raw engine ({r.rps:.0f} req/s vs {raw:.0f} sentences/s "
            "around it), "
            f"{r.rps / ref[top].rps:.2f}x the reference at {top} clients, p99 {r.percentile(99):.0f} ms; "
            f"p50 at {one} client {single.percentile(50):.1f} ms vs the reference's "
            f"{ref[one].percentile(50):.1f} ms"
        )
    lines += cpu_lines(loads, nearby, top, cores)
    fp32 = engines.get("fp32", {})
    # The ceiling is the measured matmul; the peak (cores x clock x FLOP per cycle) is shown
    # beside it, since a CPU whose GEMM library does not reach it (Zen 5 here) is not the engine's doing.
    cmax = matmul
    lines += [
        "",
        "### Raw engine (one `predict` call: passes of up to 32 windows in length order), F1, documents",
        "",
        "Passes are packed (the Linear layers see real tokens only, `shared/predict/engine/packed.py`; "
        "int8 only on CPUs with VNNI, padded elsewhere); "
        "`fp32 padded` is the engine with `NER_ENGINE_PACKING=false`, transformers' padded forward, a new "
        "pass wherever padding would pass a quarter of it (as before packing). "
        f"Sentences: the first {n_engine:,} eng.testb sentences per call. Documents: the "
        f"first {n_documents} eng.testb documents (one text each, sentences joined by newlines). Each the "
        f"best of {rounds} rounds, the engines taking turns; tokens/s counts sub-tokens with [CLS]/[SEP]. "
        "F1: entity-level (seqeval) on the first "
        f"{n_test:,} eng.testb sentences, one sentence per text (`bench.quality` scores every sentence "
        "and whole documents).",
        "",
        f"| precision | sentences/s | vs fp32 | share of the measured fp32 matmul ({cmax:.0f} GFLOP/s) | "
        "documents/s | tokens/s | F1 | F1 change vs fp32 |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for precision, e in engines.items():
        speed = e["sentences_per_s"] / fp32["sentences_per_s"] if fp32 else float("nan")
        change = (e["f1"] - fp32["f1"]) * 100 if fp32 else float("nan")
        lines.append(
            f"| {precision} | {e['sentences_per_s']:.0f} | {speed:.2f}x | "
            f"{e['sentences_per_s'] * flops / 1e9 / cmax:.0%} | {e['documents_per_s']:.2f} | "
            f"{e['tokens_per_s']:.0f} | {e['f1']:.4f} | {change:+.2f} points |"
        )
    lines += [
        "",
        f"Ceiling: {flops / 1e6:.0f} MFLOP per sentence; fp32 peak = {peak_how} = {peak:.0f} GFLOP/s, i.e. "
        f"{peak * 1e9 / flops:.0f} sentences/s; a 1024x1024 fp32 matmul ran at {matmul:.0f} GFLOP/s here "
        f"({matmul * 1e9 / flops:.0f} sentences/s; best of 5 one-second rounds), a bf16 one at "
        f"{matmul_bf16:.0f} GFLOP/s ({matmul_bf16 * 1e9 / flops:.0f} sentences/s). Shares are of the "
        "measured fp32 matmul (the issue's ceiling; runs before 2026-11-30 17:00 took the higher of it "
        "and the peak, which was the matmul but at 12:51); the raw engine fp32 is "
        f"{fp32.get('sentences_per_s', 0) * flops / 1e9 / peak:.0%} of the peak. bf16 and int8 shares "
        "are of the same fp32 matmul (fp32-equivalent FLOPs), so they can pass 100%.",
        "",
        "### Next to earlier runs",
        "",
        "Other machines: read the ratios (and `fp32 padded` in this run) rather than the absolute figures.",
        "",
        "| figure | " + " | ".join(run["date"] for run in PREVIOUS_RUNS) + " | this run |",
        "| --- |" + " ---: |" * (len(PREVIOUS_RUNS) + 1),
    ]

    def row(figure: str, earlier: list[str | None], now: str) -> None:
        lines.append(f"| {figure} | " + " | ".join(cell or "-" for cell in earlier) + f" | {now} |")

    runs = PREVIOUS_RUNS
    for name, e in engines.items():
        row(
            f"raw engine {name}, sentences/s",
            [str(run["engine"].get(name, "")) for run in runs],
            f"{e['sentences_per_s']:.0f}",
        )
        row(
            f"raw engine {name}, documents/s, tokens/s",
            [
                "{:.2f}, {}".format(*run["documents"][name]) if name in run["documents"] else None
                for run in runs
            ],
            f"{e['documents_per_s']:.2f}, {e['tokens_per_s']:.0f}",
        )
        row(
            f"F1 {name} (sentences)",
            [f"{run['f1'][name]:.4f}" if name in run["f1"] else None for run in runs],
            f"{e['f1']:.4f}",
        )
    if fp32:
        share = fp32["sentences_per_s"] * flops / 1e9 / cmax
        row(
            "raw engine fp32, share of the measured fp32 matmul",
            [f"{run['matmul_share_fp32']:.0%}" for run in runs],
            f"{share:.0%}",
        )
    for name, results in loads.items():
        for clients in (one, top):
            r = results[clients]
            row(
                f"{name}, {clients} clients: req/s, p50, p99 ms",
                [
                    "{:.1f}, {}, {}".format(*run[name][clients]) if clients in run.get(name, {}) else None
                    for run in runs
                ],
                f"{r.rps:.1f}, {r.percentile(50):.0f}, {r.percentile(99):.0f}",
            )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
