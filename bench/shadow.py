"""Benchmark of shadow traffic (issue 15): gateway latency with shadow at 100% against shadow off.

One gateway and one worker (which consumes the ``shadow`` queue) over a private Postgres database
and Redis; version 1 (active) is the predict benchmark's model (or the tests' tiny one), version 2
the same weights with PER and ORG swapped, so every sampled text really is compared. Rounds
rotate the three modes (off; 100% with the worker paused, the gateway's own cost; 100% with the
worker running) at 8 keep-alive clients on ``POST /predict/`` (CoNLL test sentences). Each round
is compared with the off round next to it (the median of those changes is the headline: a busy
neighbour that slows one round moves one ratio, not the result); pooled p50/p99, the gateway's
CPU per request (from /proc, during the measured seconds) and the load averages are reported too,
and the section is written into ``docs/benchmarks.md``.

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
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import redis

from bench.jobs import default_model, private_services, start_gateway
from bench.predict import LoadResult, _load
from bench.proc import cpu_seconds
from bench.report import write_section
from shared.core.config import get_settings
from shared.core.db import get_sessionmaker, reset_engine
from shared.registry import service as registry
from shared.registry.manifest import write_manifest
from tests.support.processes import ServiceProcess, ner, wait_until
from trainer.conll import read_conll

SWAP = {"B-PER": "B-ORG", "I-PER": "I-ORG", "B-ORG": "B-PER", "I-ORG": "I-PER"}
COMMAND = "make bench-shadow"  # the default run; other arguments are named in the section


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


def sender_stat(pid: int) -> Path | None:
    """The gateway's shadow-send thread (the sampler names its OS threads), once it has started."""
    for comm in Path(f"/proc/{pid}/task").glob("*/comm"):
        try:
            if comm.read_text().strip() == "shadow-send":
                return comm.with_name("stat")
        except OSError:
            continue
    return None


def cpu_pair(pid: int) -> tuple[float, float]:
    """The gateway's CPU seconds and its shadow-send thread's."""
    sender = sender_stat(pid)
    return cpu_seconds(Path(f"/proc/{pid}/stat")), cpu_seconds(sender) if sender else 0.0


@dataclass
class Round:
    """One measured round of one mode: its latencies, the gateway's CPU, the machine's load."""

    mode: str
    result: LoadResult
    cpu_s: float  # the gateway's CPU seconds during the measured seconds
    send_cpu_s: float  # ... of which its shadow-send thread's (draining, encoding, publishing)
    load: tuple[float, float, float]  # os.getloadavg() as the round ended

    @property
    def cpu_ms_per_request(self) -> float:
        return self.cpu_s / self.result.requests * 1000 if self.result.requests else float("nan")


def measure(mode: str, port: int, pid: int, texts: list[str], args: argparse.Namespace) -> Round:
    """Load the gateway for the warm-up and the measured seconds; its CPU over the measured ones."""
    marks: list[tuple[float, float]] = []
    timer = threading.Timer(args.warmup, lambda: marks.append(cpu_pair(pid)))
    timer.start()
    try:
        result = asyncio.run(_load(port, texts, args.clients, args.warmup, args.duration))
    finally:
        timer.cancel()
    end = cpu_pair(pid)
    start = marks[0] if marks else (float("nan"), float("nan"))
    return Round(mode, result, end[0] - start[0], end[1] - start[1], os.getloadavg())


def change(a: float, b: float) -> float:
    return (b - a) / a * 100 if a else float("nan")


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
    rounds: list[dict[str, Round]] = [{} for _ in range(args.rounds)]
    load_before = os.getloadavg()
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
                            measured = measure(mode, port, gateway.pid, texts, args)
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
                        result = measured.result
                        results[mode].append(result)
                        rounds[round_][mode] = measured
                        print(
                            f"round {round_ + 1} {mode:>7}: {result.requests} requests, "
                            f"p50 {result.percentile(50):.1f} ms, p99 {result.percentile(99):.1f} ms, "
                            f"{result.rps:.1f} req/s, {result.errors} errors, gateway CPU "
                            f"{measured.cpu_ms_per_request:.2f} ms/request (shadow-send thread "
                            f"{measured.send_cpu_s * 1000:.0f} ms), load average "
                            + " ".join(f"{x:.2f}" for x in measured.load),
                            flush=True,
                        )
            finally:
                gateway.stop()
                worker.stop()
    finally:
        shutil.rmtree(state, ignore_errors=True)

    pooled_results = {mode: pooled(rs) for mode, rs in results.items()}
    off = pooled_results["off"]
    loads = [load_before, *(r.load for by_mode in rounds for r in by_mode.values())]

    def pct(value: float) -> str:
        return f"{value:+.1f}%"

    def paired(mode: str, q: float) -> float:
        """The median over rounds of this mode's change against the same round's off run."""
        return statistics.median(
            change(r["off"].result.percentile(q), r[mode].result.percentile(q)) for r in rounds
        )

    def cpu(mode: str) -> float:
        spent = [r[mode] for r in rounds]
        return sum(r.cpu_s for r in spent) / sum(r.result.requests for r in spent) * 1000

    def sender(mode: str) -> str:
        spent = [r[mode] for r in rounds]
        send_s, cpu_s = sum(r.send_cpu_s for r in spent), sum(r.cpu_s for r in spent)
        per_request = send_s / sum(r.result.requests for r in spent) * 1000
        return f"{per_request:.3f} ({send_s / cpu_s * 100:.2f}%)" if cpu_s else "n/a"

    rows = [
        "| shadow | requests | errors | req/s | p50 ms | p99 ms | p50 vs off (median of rounds) "
        "| p99 vs off (median of rounds) | p50, p99 vs off (pooled) | gateway CPU ms/request "
        "| of which shadow-send thread, ms/request (share) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for mode, r in pooled_results.items():
        rows.append(
            f"| {MODES[mode]} | {r.requests} | {r.errors} | {r.rps:.1f} "
            f"| {r.percentile(50):.1f} | {r.percentile(99):.1f} "
            f"| {pct(paired(mode, 50))} | {pct(paired(mode, 99))} "
            f"| {pct(change(off.percentile(50), r.percentile(50)))}, "
            f"{pct(change(off.percentile(99), r.percentile(99)))} | {cpu(mode):.2f} | {sender(mode)} |"
        )
    round_rows = [
        "| round | mode | requests | p50 ms | p99 ms | p50, p99 vs this round's off | gateway CPU ms/request "
        "| load average (1, 5, 15 min) |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for number, by_mode in enumerate(rounds, 1):
        base = by_mode["off"].result
        for mode, measured in by_mode.items():
            r = measured.result
            round_rows.append(
                f"| {number} | {mode} | {r.requests} | {r.percentile(50):.1f} | {r.percentile(99):.1f} "
                f"| {pct(change(base.percentile(50), r.percentile(50)))}, "
                f"{pct(change(base.percentile(99), r.percentile(99)))} "
                f"| {measured.cpu_ms_per_request:.2f} | {', '.join(f'{x:.2f}' for x in measured.load)} |"
            )
    on = pooled_results["worker"]
    arguments = " ".join(argv if argv is not None else sys.argv[1:])
    markdown = "\n".join(
        [
            f"Gateway `POST /predict/` at {args.clients} keep-alive clients, CoNLL test sentences, model "
            f"{model_note}; {args.rounds} rounds of the three modes in rotating order, "
            f"{args.duration:.0f} s measured each (after {args.warmup:.0f} s of warm-up)"
            + (f"; arguments `{arguments}`" if arguments else "")
            + ". Shadow at 100%: every text is sampled and sent to the `shadow` queue. "
            "*Worker paused*: the worker is stopped (SIGSTOP) during the round, so only the "
            "gateway's side runs (sampling, the bounded queue, sending); *worker running*: one "
            "worker at `nice 19` on the same cores runs the active and the shadow version for every "
            "text and records the comparisons (in production on other machines: a question of worker "
            "capacity, not of the request path). *Median of rounds*: each round's change against the "
            "off run of the same round, the median over rounds (robust to a neighbour slowing one "
            "round); *pooled*: all rounds' latencies of a mode together. *Gateway CPU*: the gateway "
            "process's user+system CPU over the measured seconds (/proc), per answered request; the "
            "*shadow-send thread* (named by the sampler) drains the sampler's queue and publishes the "
            "tasks: the part of shadowing that shares the gateway's GIL besides the `offer` call.",
            "",
            *rows,
            "",
            *round_rows,
            "",
            f"Texts compared by the running worker: {compared_while_running} for {on.requests} measured "
            "requests (plus warm-up requests) of its rounds; the queue was drained before the next round.",
            "",
            "Load average (1, 5, 15 min) before the first round: "
            + ", ".join(f"{x:.2f}" for x in load_before)
            + f"; 1-minute load average at the end of the rounds from {min(x[0] for x in loads):.2f} "
            f"to {max(x[0] for x in loads):.2f} on {os.cpu_count()} CPUs. On a shared machine compare "
            "the rows of one run, not runs with each other, and read the per-round table before a "
            "pooled difference.",
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
