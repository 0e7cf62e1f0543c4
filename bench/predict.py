"""Benchmark of the synchronous predict path (issue 3), written into ``docs/benchmarks.md``.

Side by side in one run, on one machine, with one model:

1. the raw engine's sentences/s (fp32 and int8) against the hardware ceiling (the model's FLOPs
   per sentence over the cores' fp32 peak, and over a measured matmul rate);
2. entity-level F1 on CoNLL-2003 test (eng.testb) for fp32 and int8;
3. HTTP load at 1, 8 and 32 concurrent clients against the reference app (``pipeline(...)`` per
   request, ``bench/reference_app.py``), the gateway (fp32) and the gateway with ``NER_QUANTIZE=int8``.

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
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import uvloop
from seqeval.metrics import f1_score

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


def measured_matmul_gflops(rounds: int = 5, seconds: float = 1.0) -> float:
    """Best rate of a 1024x1024 fp32 matmul over a few short rounds (the machine is shared)."""
    import torch  # after shared.predict.engine, which sets the OpenMP wait policy before torch loads

    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
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

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) * 1000 if self.latencies else float("nan")


class KeepAliveConnection:
    """A minimal HTTP/1.1 keep-alive client for the load generator.

    The load generator shares the 2 cores with the server under test, so it must cost little:
    httpx's AsyncClient capped a trivial ``GET /healthz`` at ~190 requests/s with 32 connections
    here, this at ~1,700, so the client no longer flattens the differences being measured.
    """

    def __init__(self, port: int) -> None:
        self.port = port

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)

    async def post_json(self, path: str, body: object) -> tuple[int, bytes]:
        payload = json.dumps(body).encode()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n"
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


async def _load(port: int, texts: list[str], clients: int, warmup: float, duration: float) -> LoadResult:
    latencies: list[float] = []
    errors = 0
    counter = iter(range(10**9))
    measure_from = time.perf_counter() + warmup
    stop_at = measure_from + duration

    async def one_client() -> None:
        nonlocal errors
        connection = KeepAliveConnection(port)
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

    await asyncio.gather(*(one_client() for _ in range(clients)))
    return LoadResult(clients, len(latencies), errors, duration, latencies)


class Server:
    """One app under uvicorn in its own process; logs to a temporary file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], ready_path: str) -> None:
        self.name, self.port = name, free_port()
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
                body = httpx.get(self.url + path, timeout=2).json()
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


def start_gateway(model: Path, state: Path, quantize: str, extra: dict[str, str] | None = None) -> Server:
    env = {
        **(extra or {}),
        "NER_MODEL": str(model),
        "NER_QUANTIZE": quantize,
        "NER_AUTH": "off",
        "NER_STATE_DIR": str(state),
        "NER_DATABASE_URL": "",  # the SQLite file in the state folder
        "NER_LOG_LEVEL": "WARNING",
    }
    subprocess.run(
        [sys.executable, "-m", "shared.cli", "db", "upgrade"],
        env={**os.environ, **env},
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    argv = [sys.executable, "-m", "shared.cli", "serve", "--port", "{port}"]
    return Server(f"gateway-{quantize}", argv, env, "/readyz")


def run_load(
    server: Server, texts: list[str], levels: list[int], warmup: float, duration: float
) -> dict[int, LoadResult]:
    results = {}
    for clients in levels:
        results[clients] = uvloop.run(_load(server.port, texts, clients, warmup, duration))
        r = results[clients]
        print(
            f"  {server.name:>16} {clients:>3} clients: {r.rps:7.1f} req/s  p50 {r.percentile(50):7.1f} ms  "
            f"p99 {r.percentile(99):7.1f} ms  errors {r.errors}",
            flush=True,
        )
    return results


# --- report ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a token-classification folder; default: train one")
    parser.add_argument("--train-sentences", type=int, default=6000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--learning-rate", type=float, default=3e-4)
    parser.add_argument("--engine-sentences", type=int, default=1000)
    parser.add_argument("--f1-sentences", type=int, default=0, help="eng.testb sentences for F1; 0: all")
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--duration", type=float, default=15.0, help="measured seconds per load level")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args(argv)
    conll_dir = get_settings().conll_dir
    levels = [int(c) for c in args.clients.split(",")]

    if args.model:
        model_dir, model_note = args.model, f"`{args.model}` (given)"
    else:
        recipe = TrainRecipe(
            sentences=args.train_sentences, epochs=args.epochs, learning_rate=args.learning_rate
        )
        print(f"training the bench model ({recipe}) ...", flush=True)
        model_dir, seconds = train_model(recipe, conll_dir)
        model_note = (
            f"the bundled MiniLM-L6 (uncased, 22M parameters) fine-tuned by this script for {recipe.epochs} "
            f"epochs on the first {recipe.sentences:,} sentences of eng.train (lr {recipe.learning_rate}, "
            f"batch {recipe.batch_size}; {seconds:.0f} s of training, cached) - a short training, not the "
            "trainer's full run"
        )

    test = read_conll(conll_dir / "eng.testb")
    texts = [" ".join(s.tokens) for s in test]
    engine_texts = texts[: args.engine_sentences]

    print("raw engine ...", flush=True)
    fp32 = NerEngine.load(model_dir, EngineOptions(quantize="none"))
    int8 = NerEngine.load(model_dir, EngineOptions(quantize="int8"))
    rate_fp32, rate_int8 = engine_rate(fp32, engine_texts), engine_rate(int8, engine_texts)
    tokens = statistics.mean(len(fp32.tokenizer(t)["input_ids"]) for t in engine_texts)
    flops = flops_per_sentence(fp32.model.config, tokens)
    peak, peak_how = fp32_peak_gflops(fp32.threads or 1)
    matmul = measured_matmul_gflops()
    print(f"  fp32 {rate_fp32:.1f} sent/s, int8 {rate_int8:.1f} sent/s, peak {peak:.0f} GFLOP/s", flush=True)

    print("F1 on eng.testb ...", flush=True)
    f1_test = test[: args.f1_sentences] if args.f1_sentences else test
    f1_fp32, f1_int8 = conll_f1(fp32, f1_test), conll_f1(int8, f1_test)
    del fp32, int8

    print("HTTP load ...", flush=True)
    loads: dict[str, dict[int, LoadResult]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-predict-") as state:
        for name, start in (
            ("reference", lambda: start_reference(model_dir, None)),
            ("reference, OMP passive", lambda: start_reference(model_dir, "PASSIVE")),
            ("gateway fp32", lambda: start_gateway(model_dir, Path(state) / "fp32", "none")),
            ("gateway int8", lambda: start_gateway(model_dir, Path(state) / "int8", "int8")),
        ):
            server = start()
            try:
                loads[name] = run_load(server, texts, levels, args.warmup, args.duration)
            finally:
                server.stop()

    markdown = render(
        model_note=model_note,
        levels=levels,
        loads=loads,
        engine=(rate_fp32, rate_int8, len(engine_texts), tokens, flops, peak, peak_how, matmul),
        f1=(f1_fp32, f1_int8, len(f1_test)),
        duration=args.duration,
    )
    print(markdown)
    if not args.no_write:
        from bench.report import write_section

        write_section("predict", markdown, command="make bench-predict")
    return 0


def render(
    *, model_note: str, levels: list[int], loads: dict, engine: tuple, f1: tuple, duration: float
) -> str:
    rate_fp32, rate_int8, n_engine, tokens, flops, peak, peak_how, matmul = engine
    f1_fp32, f1_int8, n_test = f1
    ref = loads["reference"]
    lines = [
        f"Model: {model_note}. Texts: CoNLL-2003 eng.testb sentences (mean {tokens:.1f} tokens with "
        f"[CLS]/[SEP]). Each load level runs {duration:.0f} s after a warm-up; clients send one request "
        "after another; the servers ran one after the other on the same cores, with the load "
        "generator on the same machine.",
        "",
        "### HTTP: gateway vs the reference (`pipeline(...)` per request)",
        "",
        "`reference` runs as the prototype did (OpenMP defaults); `reference, OMP passive` adds "
        "`OMP_WAIT_POLICY=PASSIVE`, which the engine sets for itself, so against it only the serving "
        "design (micro-batching, one model call at a time) differs. Ratios are against `reference`.",
        "",
        "| server | clients | req/s | p50 ms | p99 ms | errors | req/s vs reference |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, results in loads.items():
        for clients in levels:
            r = results[clients]
            ratio = r.rps / ref[clients].rps if ref[clients].rps else float("nan")
            lines.append(
                f"| {name} | {clients} | {r.rps:.1f} | {r.percentile(50):.0f} | {r.percentile(99):.0f} | "
                f"{r.errors} | {ratio:.2f}x |"
            )
    top = max(levels)
    lines += [
        "",
        "Against the issue's goals (32 clients: 3x the reference with p99 < 1 s, 6x with int8; "
        "1 client: p50 no worse than the reference):",
        "",
    ]
    for name in ("gateway fp32", "gateway int8"):
        r, one = loads[name][top], loads[name][min(levels)]
        lines.append(
            f"- {name}: {r.rps / ref[top].rps:.2f}x at {top} clients, p99 {r.percentile(99):.0f} ms; "
            f"p50 at {min(levels)} client {one.percentile(50):.0f} ms vs the reference's "
            f"{ref[min(levels)].percentile(50):.0f} ms (OMP passive: "
            f"{loads['reference, OMP passive'][min(levels)].percentile(50):.0f} ms)"
        )
    achieved = rate_fp32 * flops / 1e9
    ceiling = max(peak, matmul)
    lines += [
        "",
        "### Raw engine (one `predict` call over the sentences: length-grouped passes of up to 32)",
        "",
        f"| precision | sentences/s | GFLOP/s achieved | share of the ceiling ({ceiling:.0f} GFLOP/s = "
        f"{ceiling * 1e9 / flops:.0f} sentences/s) |",
        "| --- | ---: | ---: | ---: |",
        f"| fp32 | {rate_fp32:.0f} | {achieved:.1f} | {achieved / ceiling:.0%} |",
        f"| int8 (dynamic) | {rate_int8:.0f} | {rate_int8 * flops / 1e9:.1f} (fp32-equivalent) | "
        f"{rate_int8 * flops / 1e9 / ceiling:.0%} (int8 beats the fp32 ceiling) |",
        "",
        f"Ceiling: {flops / 1e6:.0f} MFLOP per sentence; fp32 peak = {peak_how} = {peak:.0f} GFLOP/s, i.e. "
        f"{peak * 1e9 / flops:.0f} sentences/s; a 1024x1024 fp32 matmul ran at {matmul:.0f} GFLOP/s here "
        f"({matmul * 1e9 / flops:.0f} sentences/s; best of 5 one-second rounds). The ceiling is the higher "
        f"of the two: the cores boost above the clock /proc/cpuinfo reports. {n_engine:,} sentences per "
        "pass, best of two passes. The machine is shared with other work, so rates vary between runs.",
        "",
        "### int8 dynamic quantization (`NER_QUANTIZE=int8`)",
        "",
        "| | fp32 | int8 | change |",
        "| --- | ---: | ---: | ---: |",
        f"| engine sentences/s | {rate_fp32:.0f} | {rate_int8:.0f} | {rate_int8 / rate_fp32:.2f}x |",
        f"| entity F1, eng.testb ({n_test:,} sentences) | {f1_fp32:.4f} | {f1_int8:.4f} | "
        f"{(f1_int8 - f1_fp32) * 100:+.2f} points |",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
