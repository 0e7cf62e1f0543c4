"""Benchmark of bulk jobs (issue 4), written into the ``jobs`` section of ``docs/benchmarks.md``.

Side by side in one run, on one machine, with one model:

1. end to end: N documents (CoNLL test sentences repeated) uploaded as one JSONL job to a real
   gateway (``ner serve``), processed by one real worker (``ner worker``), timed from the upload's
   first byte to ``succeeded``;
2. (a) the engine's raw batched throughput on the same documents in this process (the ceiling),
   measured before and after the end-to-end run; (b) a loop calling a transformers
   ``pipeline(text)`` per document (aggregation "first");
3. the gateway's peak memory (RSS) while it ingests JSONL uploads of growing size (up to 1,000,000
   lines), from /proc: the process's high-water mark, reset before each upload.

Services are the real ones but private to the run: a new Postgres database (dropped afterwards)
and an embedded Redis. Run: ``make bench-jobs`` (``python -m bench.jobs --help``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import psycopg

from shared.cli.embedded_redis import start_redis
from shared.core import migrate
from shared.core.config import get_settings
from shared.predict.engine import EngineOptions, NerEngine
from tests.support.processes import ServiceProcess, start_worker, wait_until
from tests.support.processes import start_gateway as start_test_gateway
from trainer.conll import read_conll

REPO = Path(__file__).resolve().parent.parent
POSTGRES_ADMIN_URL = os.environ.get("NER_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


# --- services --------------------------------------------------------------------------------


@contextmanager
def private_services(state: Path) -> Iterator[dict[str, str]]:
    """A fresh Postgres database and an embedded Redis; yields the NER_* environment for them."""
    name = f"ner_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = POSTGRES_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + f"/{name}"
    redis_process, redis_url = start_redis(state / "redis")
    try:
        migrate.upgrade(url)
        yield {
            "NER_DATABASE_URL": url,
            "NER_REDIS_URL": redis_url,
            "NER_STATE_DIR": str(state),
            "NER_AUTH": "off",
            "NER_LOG_LEVEL": "WARNING",
        }
    finally:
        redis_process.terminate()
        redis_process.wait(timeout=10)
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def start_gateway(env: dict[str, str], state: Path, *, serve_predict: bool) -> tuple[ServiceProcess, str]:
    """``ner serve``; one that serves /predict is awaited until its model is loaded (no CPU later)."""
    gateway, url = start_test_gateway({**env, "NER_SERVE_PREDICT": str(serve_predict).lower()}, state, 600)

    def ready() -> bool:
        try:
            return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(ready, 600, "the gateway's /readyz", gateway)
    return gateway, url


# --- data and in-process baselines ------------------------------------------------------------


@dataclass
class Rate:
    """Documents over wall seconds, and the CPU seconds the measured processes spent on them."""

    documents: int
    wall_s: float
    cpu_s: float

    @property
    def per_s(self) -> float:
        return self.documents / self.wall_s

    @property
    def cpu_ms(self) -> float:
        return 1000 * self.cpu_s / self.documents


def conll_documents(count: int) -> list[str]:
    sentences = [" ".join(s.tokens) for s in read_conll(get_settings().conll_dir / "eng.testb")]
    sentences = [s for s in sentences if s.strip() and not s.startswith("-DOCSTART-")]
    return [sentences[i % len(sentences)] for i in range(count)]


def engine_rate(model: Path, texts: list[str], precision: str) -> Rate:
    """One ``predict`` call over all texts (the engine sorts and batches them): the ceiling."""
    options = replace(EngineOptions.from_settings(get_settings()), precision=precision, quantize="none")
    engine = NerEngine.load(model, options)
    engine.predict(texts[:64])  # warm-up
    cpu, started = time.process_time(), time.perf_counter()
    engine.predict(texts)
    return Rate(len(texts), time.perf_counter() - started, time.process_time() - cpu)


def pipeline_rate(model: Path, texts: list[str]) -> Rate:
    """``pipeline(text)`` called once per document (the prototype's way)."""
    from transformers import pipeline

    ner = pipeline("token-classification", model=str(model), aggregation_strategy="first", device=-1)
    for text in texts[:16]:
        ner(text)
    cpu, started = time.process_time(), time.perf_counter()
    for text in texts:
        ner(text)
    return Rate(len(texts), time.perf_counter() - started, time.process_time() - cpu)


def write_jsonl(path: Path, texts: list[str], lines: int) -> int:
    with path.open("w") as handle:
        for i in range(lines):
            handle.write(json.dumps({"id": f"doc-{i}", "text": texts[i % len(texts)]}) + "\n")
    return path.stat().st_size


def process_cpu_s(pids: list[int]) -> float:
    """utime + stime of live processes, from /proc."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def family(pid: int) -> list[int]:
    """A process and its children (a Celery worker and its pool process)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [pid, *map(int, children)]


# --- end to end ---------------------------------------------------------------------------------


@dataclass
class EndToEnd:
    rate: Rate
    upload_s: float
    chunks: int


def end_to_end(url: str, upload: Path, documents: int, database_url: str, pids: list[int]) -> EndToEnd:
    """Upload as one job, poll until it succeeded; CPU of the gateway and the worker processes."""
    # One keep-alive client: a new one per poll (an SSL context each) took 13-18% of a core from the
    # worker on 2 cores, and the benchmark measured its own poller.
    with httpx.Client(base_url=url, timeout=30) as client:
        cpu, started = process_cpu_s(pids), time.perf_counter()
        with upload.open("rb") as handle:
            response = client.post(
                "/jobs", files={"file": (upload.name, handle, "application/x-ndjson")}, timeout=3600
            )
        response.raise_for_status()
        uploaded = time.perf_counter()
        status_url = response.json()["status_url"]
        while True:
            status = client.get(status_url).json()
            if status["status"] in ("succeeded", "failed", "cancelled"):
                break
            time.sleep(0.25)
        wall = time.perf_counter() - started
        used = process_cpu_s(pids) - cpu
    if status["status"] != "succeeded" or status["done"] != documents:
        raise RuntimeError(f"the job did not succeed: {status}")
    with psycopg.connect(database_url.replace("+psycopg", "")) as conn:
        chunks = conn.execute(
            "SELECT count(*) FROM job_chunks WHERE job_id = %s", (status["job_id"],)
        ).fetchone()
    return EndToEnd(Rate(documents, wall, used), uploaded - started, chunks[0] if chunks else 0)


@dataclass
class Variant:
    """One engine precision measured side by side: raw before, end to end, raw after."""

    precision: str
    raw: list[Rate]
    e2e: EndToEnd

    @property
    def raw_per_s(self) -> float:
        return statistics.mean(rate.per_s for rate in self.raw)

    @property
    def raw_cpu_ms(self) -> float:
        return statistics.mean(rate.cpu_ms for rate in self.raw)


def run_variant(
    precision: str,
    model: Path,
    documents: list[str],
    env: dict[str, str],
    state: Path,
    gateway: ServiceProcess,
    url: str,
) -> Variant:
    print(f"[{precision}] (a) raw engine ...", flush=True)
    raw = [engine_rate(model, documents, precision)]
    print(f"    {raw[0].per_s:.1f} docs/s\n[{precision}] end to end ...", flush=True)
    upload = state / "job.jsonl"
    write_jsonl(upload, documents, len(documents))
    worker = start_worker({**env, "NER_PRECISION": precision, "NER_LOG_LEVEL": "INFO"}, state, timeout=600)
    try:
        # " ready." is the pool's start; its child loads the model after that (int8: 2.5-3 s here, 15%
        # of a 10,000-document job), as the raw engine's load is not timed either.
        wait_until(lambda: "worker model ready" in worker.log(), 600, "the worker's model", worker)
        e2e = end_to_end(
            url,
            upload,
            len(documents),
            env["NER_DATABASE_URL"],
            [gateway.pid, *family(worker.pid)],
        )
    finally:
        worker.stop()
    print(f"    {e2e.rate.per_s:.1f} docs/s\n[{precision}] (a) raw engine again ...", flush=True)
    raw.append(engine_rate(model, documents, precision))
    return Variant(precision, raw, e2e)


# --- gateway memory while ingesting -------------------------------------------------------------


def rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


@dataclass
class Ingest:
    gateway: str
    lines: int
    file_mb: float
    before_mb: float
    peak_mb: float
    seconds: float


def ingest_memory(gateway: str, url: str, pid: int, path: Path, lines: int) -> Ingest:
    """Upload ``path`` as a job and report the gateway's RSS before and at its peak during ingestion."""
    before = rss_kib(pid, "VmRSS")
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset the high-water mark (VmHWM) to now
    peak = [before]
    done = threading.Event()

    def sample() -> None:  # a cross-check of VmHWM, and a fallback where clear_refs is refused
        while not done.is_set():
            peak[0] = max(peak[0], rss_kib(pid, "VmRSS"))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    with path.open("rb") as handle:
        response = httpx.post(f"{url}/jobs", files={"file": (path.name, handle)}, timeout=3600)
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    response.raise_for_status()
    job_url = f"{url}{response.json()['status_url']}"
    assert httpx.get(job_url, timeout=30).json()["total"] == lines
    httpx.post(f"{job_url}/cancel", timeout=30)  # no worker runs here; keep the queue from growing
    high_water = max(rss_kib(pid, "VmHWM"), peak[0])
    return Ingest(gateway, lines, path.stat().st_size / 1e6, before / 1024, high_water / 1024, seconds)


GATEWAYS = {"serves /predict (default)": True, "ingest (`NER_SERVE_PREDICT=false`)": False}


def measure_ingest(env: dict[str, str], state: Path, documents: list[str], sizes: list[int]) -> list[Ingest]:
    """Each upload size into each kind of gateway, one gateway process per kind."""
    paths = {lines: state / f"upload-{lines}.jsonl" for lines in sizes}
    for lines, path in paths.items():
        write_jsonl(path, documents, lines)
    ingests = []
    for kind, serve_predict in GATEWAYS.items():
        gateway, url = start_gateway(env, state, serve_predict=serve_predict)
        try:
            for lines, path in paths.items():
                print(f"{kind}: ingesting {lines:,} lines ...", flush=True)
                ingests.append(ingest_memory(kind, url, gateway.pid, path, lines))
                print(f"    peak {ingests[-1].peak_mb:.0f} MB", flush=True)
        finally:
            gateway.stop()
    return ingests


# --- report ----------------------------------------------------------------------------------


def default_model() -> tuple[Path, str]:
    """The predict benchmark's model if it was built, else the tests' tiny checkpoint (same size)."""
    built = sorted(
        (REPO / ".ner" / "bench-cache").glob("predict-model-*/config.json"), key=lambda p: p.stat().st_mtime
    )
    if built:
        return built[-1].parent, f"`{built[-1].parent.relative_to(REPO)}` (the predict benchmark's model)"
    from tests.support.tiny_model import cached_tiny_model

    folder = cached_tiny_model(get_settings().conll_dir)
    return folder, f"`{folder.relative_to(REPO)}` (the tests' briefly fine-tuned MiniLM)"


def report(
    documents: list[str], model_note: str, variants: list[Variant], pipe: Rate, ingests: list[Ingest]
) -> str:
    words = statistics.mean(len(text.split()) for text in documents)
    chars = statistics.mean(len(text) for text in documents)
    lines = [
        f"Model: {model_note}. Documents: CoNLL-2003 eng.testb sentences repeated (mean {words:.1f} "
        f"words, {chars:.0f} characters). One "
        f"worker (`ner worker`, concurrency 1), chunks of up to {get_settings().chunk_max_documents} "
        "documents; gateway, worker, Postgres and Redis on the same machine. docs/s is wall time; CPU "
        "ms/doc is the CPU time of the measured processes (end to end: gateway + worker processes, "
        "Postgres not counted), which other work on a shared machine disturbs far less. int8: the same "
        "model under `NER_PRECISION=int8` (dynamic int8 Linear layers) in (a) and in the worker; bf16 "
        "likewise.",
        "",
        "| measurement | precision | documents | docs/s | CPU ms/doc |",
        "|---|---|---:|---:|---:|",
        f"| (b) `pipeline(text)` per document, one process | fp32 | {pipe.documents} | {pipe.per_s:.1f} "
        f"| {pipe.cpu_ms:.2f} |",
    ]
    for v in variants:
        before, after = v.raw
        lines += [
            f"| (a) raw engine, one `predict` call, one process: before / after the job | {v.precision} "
            f"| {before.documents} | {before.per_s:.1f} / {after.per_s:.1f} "
            f"| {before.cpu_ms:.2f} / {after.cpu_ms:.2f} |",
            f"| **end to end**: JSONL upload to `succeeded` ({v.e2e.chunks} chunks, upload "
            f"{v.e2e.upload_s:.1f} s) | {v.precision} | {v.e2e.rate.documents} | **{v.e2e.rate.per_s:.1f}** "
            f"| {v.e2e.rate.cpu_ms:.2f} |",
        ]
    lines.append("")
    for v in variants:
        lines.append(
            f"- {v.precision}: end to end is **{100 * v.e2e.rate.per_s / v.raw_per_s:.0f}%** of the raw "
            f"engine's docs/s (mean of before/after; goal >= 80%), "
            f"{100 * v.raw_cpu_ms / v.e2e.rate.cpu_ms:.0f}% by CPU time per document, and "
            f"**{v.e2e.rate.per_s / pipe.per_s:.1f}x** the pipeline loop (goal >= 3x; the raw engine "
            f"itself is {v.raw_per_s / pipe.per_s:.1f}x it)."
        )
    if ingests:
        lines += [
            "",
            "Gateway memory while ingesting a JSONL upload (one job; RSS of the `ner serve` process; peak "
            "= the kernel's high-water mark, reset just before the upload). Two kinds of gateway: the "
            "default one also serves `/predict/`, so it holds torch and the model; an ingest gateway "
            "(`NER_SERVE_PREDICT=false`: jobs, training, registry and UI, `/predict*` answers 503) never "
            "imports torch.",
            "",
            "| gateway | lines | file MB | RSS before MB | peak RSS MB | growth MB | ingest s | lines/s |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for ing in ingests:
            lines.append(
                f"| {ing.gateway} | {ing.lines:,} | {ing.file_mb:.0f} | {ing.before_mb:.0f} | "
                f"{ing.peak_mb:.0f} | {ing.peak_mb - ing.before_mb:.0f} | {ing.seconds:.1f} | "
                f"{ing.lines / ing.seconds:,.0f} |"
            )
        lines.append("")
        for kind in dict.fromkeys(ing.gateway for ing in ingests):
            runs = [ing for ing in ingests if ing.gateway == kind]
            growth = [ing.peak_mb - ing.before_mb for ing in runs]
            lines.append(
                f"- {kind}: ingesting {runs[-1].lines:,} lines peaked at **{runs[-1].peak_mb:.0f} MB** "
                f"(goal < 300 MB), growth {min(growth):.0f}-{max(growth):.0f} MB across "
                f"{', '.join(f'{ing.lines:,}' for ing in runs)} lines."
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.jobs", description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, help="a token-classification folder")
    parser.add_argument("--documents", type=int, default=10_000)
    parser.add_argument("--pipeline-documents", type=int, default=1_000, help="documents for (b)")
    precisions = ["fp32", "bf16", "int8"]
    parser.add_argument("--precisions", nargs="+", default=precisions, choices=precisions)
    parser.add_argument(
        "--upload-lines", type=int, nargs="*", default=[100_000, 1_000_000], help="memory runs; [] skips"
    )
    parser.add_argument("--no-write", action="store_true", help="print, do not touch docs/benchmarks.md")
    parser.add_argument(
        "--scaleout-documents", type=int, default=2_000,
        help="documents of the one- vs two-worker-host run (bench/scaleout.py, needs root); 0 skips",
    )  # fmt: skip
    args = parser.parse_args(argv)
    model, model_note = (args.model, f"`{args.model}`") if args.model else default_model()
    documents = conll_documents(args.documents)

    with tempfile.TemporaryDirectory(prefix="ner-bench-jobs-") as tmp:
        state = Path(tmp)
        with private_services(state) as env:
            env["NER_MODEL"] = str(model)
            print("(b) pipeline loop ...", flush=True)
            pipe = pipeline_rate(model, documents[: args.pipeline_documents])
            print(f"    {pipe.per_s:.1f} docs/s", flush=True)
            gateway, url = start_gateway(env, state, serve_predict=True)
            try:
                variants = [
                    run_variant(precision, model, documents, env, state, gateway, url)
                    for precision in args.precisions
                ]
            finally:
                gateway.stop()
            ingests = measure_ingest(env, state, documents, args.upload_lines)
        scaleout = None
        if args.scaleout_documents:
            from bench.scaleout import run_scaleout

            print("scale-out: one and two worker hosts ...", flush=True)
            scaleout = run_scaleout(
                model, documents[: args.scaleout_documents], state / "hosts", state / "logs"
            )
    markdown = report(documents, model_note, variants, pipe, ingests)
    if args.scaleout_documents:
        from bench.scaleout import report as scaleout_report

        markdown += scaleout_report(scaleout, model_note)
    print(markdown)
    if not args.no_write:
        from bench.report import write_section

        given = sys.argv[1:] if argv is None else argv
        command = "python -m bench.jobs " + " ".join(given) if given else "make bench-jobs"
        write_section("jobs", markdown, command=command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
