"""Benchmark of shadow traffic (issue 15): gateway latency with shadow at 100% against shadow off.

One gateway and one worker (which consumes the ``shadow`` queue) over a private Postgres database
and Redis; version 1 (active) is the predict benchmark's model (or the tests' tiny one), version 2
the same weights with PER and ORG swapped, so every sampled text really is compared. Rounds
alternate off / on at 8 keep-alive clients on ``POST /predict/`` (CoNLL test sentences); p50/p99
and requests/s per mode are pooled over the rounds and written into ``docs/benchmarks.md``.

The worker runs at ``nice 19``: on a shared machine its comparisons (both models, every text) would
otherwise take the gateway's CPU, which is a capacity question for the worker fleet, not latency the
shadow path adds to a request. Run: ``make bench-shadow`` (``--duration``/``--rounds`` to shorten).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import redis

from bench.jobs import default_model, private_services, start_gateway
from bench.predict import LoadResult, _load
from bench.report import write_section
from shared.core.config import get_settings
from shared.core.db import get_sessionmaker, reset_engine
from shared.registry import service as registry
from shared.registry.manifest import write_manifest
from tests.support.processes import ServiceProcess, ner, wait_until
from trainer.conll import read_conll

SWAP = {"B-PER": "B-ORG", "I-PER": "I-ORG", "B-ORG": "B-PER", "I-ORG": "I-PER"}
COMMAND = "make bench-shadow"


def register_versions(model: Path, state: Path) -> tuple[int, int]:
    """Version 1 (active): the model; version 2: the same with PER and ORG swapped."""
    first, second = state / "models" / "v1", state / "models" / "v2"
    shutil.copytree(model, first)
    shutil.copytree(model, second)
    config = json.loads((second / "config.json").read_text())
    config["id2label"] = {k: SWAP.get(v, v) for k, v in config["id2label"].items()}
    config["label2id"] = {label: int(i) for i, label in config["id2label"].items()}
    (second / "config.json").write_text(json.dumps(config, indent=2))
    with get_sessionmaker()() as session:
        for number, folder in ((1, first), (2, second)):
            write_manifest(folder)
            registry.register_version(
                session=session, version=number, path=str(folder), base_model="", data_hash="", data_ref={},
                params={}, metrics={}, labels=[], val_f1=None, test_f1=None,
            )  # fmt: skip
        session.commit()
        registry.promote(session=session, version=1, redis_url=get_settings().redis_url)
    return 1, 2


def set_shadow(url: str, version: int, rate: float) -> None:
    if rate > 0:
        response = httpx.post(f"{url}/models/{version}/shadow", json={"sample_rate": rate}, timeout=30)
    else:
        response = httpx.delete(f"{url}/models/{version}/shadow", timeout=30)
    response.raise_for_status()


def compared(url: str, version: int) -> int:
    view = httpx.get(f"{url}/models/{version}/shadow", timeout=30).json()
    return sum(c["texts"] for c in view["comparisons"])


def rerun_at_scale(documents: int) -> dict[str, float | int]:
    """A finished job of ``documents`` documents re-run (timed: the copy) and diffed (timed: every page).

    In-process on the private database, with results written directly (no model runs): version 2's
    results differ from version 1's on every 7th document (a retype) and every 11th (a boundary).
    The diff's documents are checked against that direct comparison.
    """
    import uuid

    from sqlalchemy import insert, update

    from shared.core.tables import DocumentStatus, Job, JobResult, JobStatus
    from shared.jobs import diff, rerun, service
    from shared.jobs.ingest import IncomingDocument
    from shared.keys.owner import Owner

    owner = Owner(key_id=None, admin=True)
    text = "Kofi Annan met Angela Merkel in Berlin."

    def entities(seq: int, version: int) -> list[dict[str, object]]:
        person = "ORG" if version == 2 and seq % 7 == 0 else "PER"
        end = 4 if version == 2 and seq % 11 == 0 else 10
        return [
            {"word": text[0:end], "entity_group": person, "score": 0.9, "start": 0, "end": end},
            {"word": "Berlin", "entity_group": "LOC", "score": 0.9, "start": 32, "end": 38},
        ]

    def finish(session, job_id: uuid.UUID, version: int) -> None:  # type: ignore[no-untyped-def]
        rows = [
            {"job_id": job_id, "seq": seq, "status": DocumentStatus.done, "entities": entities(seq, version),
             "model_version": version}
            for seq in range(documents)
        ]  # fmt: skip
        for start in range(0, documents, 2000):
            session.execute(insert(JobResult), rows[start : start + 2000])
        session.execute(
            update(Job).where(Job.id == job_id).values(status=JobStatus.succeeded, done=documents)
        )
        session.commit()

    settings = get_settings()
    with get_sessionmaker()() as session:
        docs = (IncomingDocument(f"d{i}", text, f"documents[{i}]") for i in range(documents))
        job, _ = service.create_job(session=session, settings=settings, documents=docs, owner=owner)
        finish(session, job.id, 1)
        started = time.perf_counter()
        copy, _ = rerun.rerun_job(session=session, job_id=str(job.id), model_version=2, owner=owner)
        copy_s = time.perf_counter() - started
        finish(session, copy.id, 2)
        a, b = diff.load_pair(session=session, job_a=str(job.id), job_b=str(copy.id), owner=owner)
        started = time.perf_counter()
        seqs: list[int] = []
        cursor = None
        while True:
            page = diff.diff_page(session=session, job_a=a, job_b=b, cursor=cursor, limit=1000)
            seqs += [item["seq"] for item in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        diff_s = time.perf_counter() - started
    expected = [seq for seq in range(documents) if seq % 7 == 0 or seq % 11 == 0]
    if seqs != expected:
        raise SystemExit(f"the diff listed {len(seqs)} documents; the direct comparison {len(expected)}")
    return {"documents": documents, "changed": len(seqs), "copy_s": copy_s, "diff_s": diff_s}


def pooled(results: list[LoadResult]) -> LoadResult:
    latencies = [x for r in results for x in r.latencies]
    return LoadResult(
        results[0].clients,
        sum(r.requests for r in results),
        sum(r.errors for r in results),
        sum(r.seconds for r in results),
        latencies,
    )


MODES = {
    "off": "off",
    "gateway": "100%, worker paused (the gateway's own cost)",
    "worker": "100%, worker running (`nice 19`, same cores)",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--duration", type=float, default=30.0, help="measured seconds per round")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every mode, in rotating order")
    parser.add_argument("--rerun-documents", type=int, default=10_000, help="the re-run and diff part")
    parser.add_argument("--no-write", action="store_true", help="print, do not update docs/benchmarks.md")
    args = parser.parse_args(argv)

    model, model_note = default_model()
    conll = get_settings().conll_dir / "eng.testb"
    texts = [" ".join(s.tokens) for s in read_conll(conll, limit=2000) if len(s.tokens) >= 4][:1000]
    state = Path(tempfile.mkdtemp(prefix="bench-shadow-"))
    results: dict[str, list[LoadResult]] = {mode: [] for mode in MODES}
    compared_while_running = 0
    try:
        with private_services(state) as env:
            env = {**env, "NER_SHADOW_POLL_S": "1", "NER_DEFAULT_MODEL": "none"}
            os.environ.update(env)
            get_settings.cache_clear()
            reset_engine()
            _, shadow_version = register_versions(model, state)
            scale = rerun_at_scale(args.rerun_documents)
            print(f"re-run and diff: {scale}", flush=True)
            gateway, url = start_gateway(env, state, serve_predict=True)
            # INFO: Celery says " ready." at that level only.
            worker_env = {**env, "NER_LOG_LEVEL": "INFO"}
            worker = ServiceProcess(
                "worker", ["nice", "-n", "19", *ner("worker")], worker_env, state / "logs"
            )
            broker = redis.Redis.from_url(env["NER_REDIS_URL"])
            try:
                wait_until(lambda: " ready." in worker.log(), 600, "the worker", worker)
                port = int(url.rsplit(":", 1)[1])
                order = list(MODES)
                for round_ in range(args.rounds):
                    for mode in order[round_ % 3 :] + order[: round_ % 3]:
                        set_shadow(url, shadow_version, 0.0 if mode == "off" else 1.0)
                        time.sleep(2.5)  # the gateway's sampler hears of it (pub/sub, else its poll)
                        before = compared(url, shadow_version)
                        if mode == "gateway":
                            os.killpg(worker.pid, signal.SIGSTOP)
                        try:
                            result = asyncio.run(_load(port, texts, args.clients, args.warmup, args.duration))
                        finally:
                            if mode == "gateway":
                                set_shadow(url, shadow_version, 0.0)
                                time.sleep(1)
                                broker.delete("shadow")  # the paused round's texts: never compared
                                os.killpg(worker.pid, signal.SIGCONT)
                        if mode == "worker":
                            set_shadow(url, shadow_version, 0.0)
                            drain_started = time.perf_counter()
                            while broker.llen("shadow") and time.perf_counter() - drain_started < 180:
                                time.sleep(1)  # no backlog runs into the next round
                            time.sleep(3)
                            compared_while_running += compared(url, shadow_version) - before
                        results[mode].append(result)
                        print(
                            f"round {round_ + 1} {mode}: p50 {result.percentile(50):.1f} ms, "
                            f"p99 {result.percentile(99):.1f} ms, {result.rps:.1f} req/s, "
                            f"{result.errors} errors",
                            flush=True,
                        )
            finally:
                gateway.stop()
                worker.stop()
    finally:
        shutil.rmtree(state, ignore_errors=True)

    pooled_results = {mode: pooled(rs) for mode, rs in results.items()}
    off = pooled_results["off"]

    def change(a: float, b: float) -> str:
        return f"{(b - a) / a * 100:+.1f}%" if a else "n/a"

    rows = [
        "| shadow | requests | errors | req/s | p50 ms | p99 ms | p50 vs off | p99 vs off |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for mode, r in pooled_results.items():
        rows.append(
            f"| {MODES[mode]} | {r.requests} | {r.errors} | {r.rps:.1f} "
            f"| {r.percentile(50):.1f} | {r.percentile(99):.1f} "
            f"| {change(off.percentile(50), r.percentile(50))} "
            f"| {change(off.percentile(99), r.percentile(99))} |"
        )
    per_round = "; ".join(
        f"{mode} " + ", ".join(f"{statistics.median(r.latencies) * 1000:.1f}" for r in rs if r.latencies)
        for mode, rs in results.items()
    )
    on = pooled_results["worker"]
    markdown = "\n".join(
        [
            f"Gateway `POST /predict/` at {args.clients} keep-alive clients, CoNLL test sentences, model "
            f"{model_note}; {args.rounds} rounds of each mode in rotating order, {args.duration:.0f} s each "
            "(pooled). Shadow at 100%: every text is sampled and sent to the `shadow` queue. "
            "*Worker paused*: the worker is stopped (SIGSTOP) during the round, so only the "
            "gateway's side runs (sampling, the bounded queue, sending); *worker running*: one "
            "worker at `nice 19` on the same cores runs the active and the shadow version for every "
            "text and records the comparisons (in production on other machines: a question of worker "
            "capacity, not of the request path).",
            "",
            *rows,
            "",
            f"p50 per round (ms): {per_round}. Texts compared by the running worker: "
            f"{compared_while_running} for {on.requests} measured requests (plus warm-up requests) of its "
            "rounds; the queue was drained before the next round.",
            "",
            "Measured on a shared machine (2 cores; other sessions' tests and training ran at the same "
            "time, load average above 10): compare the rows of one run, not runs with each other, and "
            "read differences of this size as noise unless every round agrees.",
            "",
            f"Re-run of a {scale['documents']:,}-document finished job (`rerun_job`: documents and chunk "
            f"plan copied by INSERT ... SELECT, no upload): {scale['copy_s']:.2f} s. Its diff, every page of "
            f"1,000 (`diff_page`, summary on the first): {scale['diff_s']:.2f} s, listing "
            f"{scale['changed']:,} documents, exactly those the direct comparison of the two result "
            "sets finds changed "
            "(results written directly: this part times the copy and the diff, not the model).",
        ]
    )
    print(markdown)
    if not args.no_write:
        write_section("shadow", markdown, COMMAND)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
