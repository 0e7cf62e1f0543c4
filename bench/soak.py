"""Soak benchmark (issue 21), written into the ``soak`` section of ``docs/benchmarks.md``.

For ``--minutes`` (10 by default), against real processes on loopback only - a gateway
(``ner serve``), two inference workers (``ner worker``, the first with ``--beat``), a private
Postgres database and an embedded Redis:

- ``--clients`` threads call ``POST /predict/`` back to back the whole time;
- bulk jobs of ``--documents`` CoNLL sentences arrive at even intervals: JSON bodies and JSONL
  uploads, some with an ``Idempotency-Key``, one of those sent twice;
- faults at fixed fractions of the run: SIGKILL of a pool child mid-chunk (twice), SIGKILL of the
  ``--beat`` worker's main process mid-chunk (restarted 2 s later, as a supervisor would), SIGTERM
  of the gateway (restarted on the same port), one job cancelled while it runs.

Then it waits for every job to finish and reports: documents submitted / stored / duplicated /
missing, jobs by status, idempotency, predict requests and errors per phase with p50/p99, the time
from each kill to its chunk's re-claim and completion, beat schedulers alive, RSS per process at
start, half-way and end, and every ``RSS_EVERY_S`` seconds: each process's spread over the last half
of the run (the issue's goal: flat within 10%). The process logs and every RSS sample (``rss.json``)
are kept under ``test-artifacts/soak-*``. Run: ``make bench-soak`` (``python -m bench.soak --help``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import shutil
import signal
import statistics
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import psycopg
import redis

from bench.jobs import conll_documents, default_model, private_services
from shared.cli.embedded_redis import free_port
from tests.support.processes import ServiceProcess, ner, wait_until
from worker.beat import LOCK_KEY

REPO = Path(__file__).resolve().parent.parent
STEADY = "steady"
RSS_EVERY_S = 10.0  # how often every process's RSS is sampled
FLAT_WITHIN = 0.10  # the goal: RSS over the last half of the run within 10% (max over min)
# Where in the run each fault happens (fraction of --minutes), and what it is. All in the first 40%:
# the last half then shows whether processes that lived through faults (and their replacements, after
# a tenth of the run to warm up) stay flat, which restarts inside it would hide.
FAULTS = [
    (0.06, "pool-child kill"),
    (0.14, "main-process kill (--beat worker)"),
    (0.22, "gateway restart"),
    (0.30, "cancel"),
    (0.38, "pool-child kill"),
]


@dataclass
class Sample:
    phase: str
    ms: float
    error: str | None  # None: 200


@dataclass
class Recovery:
    fault: str
    chunk: str
    resent_s: float | None  # the chunk queued again (its claim cleared)
    reclaimed_s: float | None  # claimed by a new task
    done_s: float | None


@dataclass
class Submission:
    kind: str
    job_id: str
    documents: int
    idempotency_key: str | None = None
    replayed: bool = False


@dataclass
class Soak:
    env: dict[str, str]
    state: Path
    headers: dict[str, str]  # the jobs key's (submit, cancel)
    client_keys: list[str]  # one predict key per client, as separate callers would have
    texts: list[str]
    port: int = field(default_factory=free_port)
    phase: str = STEADY
    stop: threading.Event = field(default_factory=threading.Event)
    samples: list[Sample] = field(default_factory=list)
    submissions: list[Submission] = field(default_factory=list)
    recoveries: list[Recovery] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    orphans_after_main_kill: list[int] = field(default_factory=list)
    lock_holders: set[int] = field(default_factory=set)
    followers: list[threading.Thread] = field(default_factory=list)
    # (seconds into the run, {role: (pid, MB)}) every RSS_EVERY_S
    rss_samples: list[tuple[float, dict[str, tuple[int, float]]]] = field(default_factory=list)
    gateway: ServiceProcess | None = None
    workers: dict[str, ServiceProcess] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self, message: str) -> None:
        line = f"[{time.monotonic() - self.started:7.1f}s] {message}"
        self.events.append(line)
        print(line, flush=True)

    # --- processes --------------------------------------------------------------------------

    def start_gateway(self) -> None:
        self.gateway = ServiceProcess("gateway", ner("serve", "--port", str(self.port)), self.env, self.state)

        def ready() -> bool:
            try:
                return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, 600, "the gateway's /readyz", self.gateway)

    def stop_processes(self) -> None:
        for process in [*self.workers.values(), self.gateway]:
            if process is not None:
                process.stop()

    def start_worker(self, name: str) -> None:
        args = ("worker", "--beat") if name == "worker-a" else ("worker",)
        # INFO: Celery says " ready." at that level (the gateway stays at WARNING: no access log lines).
        process = ServiceProcess(name, ner(*args), {**self.env, "NER_LOG_LEVEL": "INFO"}, self.state)
        self.workers[name] = process  # registered at once: stopped at the end even if it never gets ready
        wait_until(lambda: " ready." in process.log(), 300, f"{name} to be ready", process)

    def processes(self) -> dict[str, psutil.Process]:
        """Every process of the stack by role (pool children and embedded beat included)."""
        found: dict[str, psutil.Process] = {}
        if self.gateway is not None and self.gateway.alive():
            found["gateway"] = psutil.Process(self.gateway.pid)
        holder = self.lock_holder()
        for name, worker in self.workers.items():
            if not worker.alive():
                continue
            main = psutil.Process(worker.pid)
            found[f"{name} main"] = main
            for child in main.children():
                role = "embedded beat" if child.pid == holder else "pool child"
                found[f"{name} {role}"] = child
        return found

    def rss_mb(self) -> dict[str, tuple[int, float]]:
        rss = {}
        for role, process in self.processes().items():
            with contextlib.suppress(psutil.NoSuchProcess):
                rss[role] = (process.pid, process.memory_info().rss / 2**20)
        return rss

    def lock_holder(self) -> int | None:
        try:
            raw = redis.Redis.from_url(self.env["NER_REDIS_URL"]).get(LOCK_KEY)
        except redis.RedisError:
            return None
        return int(raw.decode().split("|")[2]) if raw else None

    # --- traffic ----------------------------------------------------------------------------

    def predict_client(self, seed: int) -> None:
        rng = random.Random(seed)
        headers = {"Authorization": f"Bearer {self.client_keys[seed]}"}
        with httpx.Client(timeout=30, headers=headers) as client:
            while not self.stop.is_set():
                phase, started = self.phase, time.perf_counter()
                error = None
                try:
                    response = client.post(f"{self.url}/predict/", json={"text": rng.choice(self.texts)})
                    if response.status_code != 200:
                        error = str(response.status_code)
                except httpx.ConnectError:
                    error = "connection refused"
                    time.sleep(0.1)
                except httpx.HTTPError as exc:
                    error = type(exc).__name__
                self.samples.append(Sample(phase, 1000 * (time.perf_counter() - started), error))

    def submit(self, kind: str, number: int, documents: int, key: str | None) -> str:
        offset = number * documents
        texts = [self.texts[(offset + i) % len(self.texts)] for i in range(documents)]
        items = [{"id": f"j{number}-d{i}", "text": text} for i, text in enumerate(texts)]
        headers = dict(self.headers)
        if key:
            headers["Idempotency-Key"] = key
        for attempt in range(30):  # the gateway may be restarting: a client retries
            try:
                if kind == "jsonl":
                    body = "\n".join(json.dumps(item) for item in items).encode()
                    files = {"file": (f"job-{number}.jsonl", io.BytesIO(body), "application/x-ndjson")}
                    response = httpx.post(f"{self.url}/jobs", files=files, headers=headers, timeout=120)
                else:
                    response = httpx.post(
                        f"{self.url}/jobs", json={"documents": items}, headers=headers, timeout=120
                    )
                if response.status_code in (200, 202):
                    return str(response.json()["job_id"])
                self.log(f"job {number}: {response.status_code} {response.text[:200]} (attempt {attempt})")
            except httpx.HTTPError as exc:
                self.log(f"job {number}: {type(exc).__name__} (attempt {attempt})")
            time.sleep(2)
        raise RuntimeError(f"job {number} could not be submitted")

    def job_feeder(self, count: int, documents: int, window_s: float) -> None:
        kinds = ["json", "jsonl", "json+key", "jsonl+key"]
        for number in range(count):
            if self.stop.wait(0 if number == 0 else window_s / count):
                return
            kind = kinds[number % len(kinds)]
            key = f"soak-{number}-{uuid.uuid4().hex[:8]}" if kind.endswith("+key") else None
            fmt = kind.split("+")[0]
            job_id = self.submit(fmt, number, documents, key)
            self.submissions.append(Submission(kind, job_id, documents, key))
            self.log(f"job {number} ({kind}, {documents} documents): {job_id}")
            if number == 2 and key:  # the same request again: must answer the same job
                again = self.submit(fmt, number, documents, key)
                self.submissions.append(Submission(kind, again, documents, key, replayed=True))
                self.log(f"job {number} replayed with its Idempotency-Key: {again}")

    # --- faults -----------------------------------------------------------------------------

    def running_chunks(self, db: psycopg.Connection) -> dict[tuple[str, int], str]:
        rows = db.execute("SELECT job_id, index, claimed_by FROM job_chunks WHERE status = 'running'")
        return {(str(job), index): token for job, index, token in rows}

    def busy_child(self, names: list[str]) -> tuple[str, psutil.Process] | None:
        """The pool child of ``names`` that is using the CPU (running a chunk), if any."""
        children = []
        for name in names:
            worker = self.workers.get(name)
            if worker is None or not worker.alive():
                continue
            holder = self.lock_holder()
            for child in psutil.Process(worker.pid).children():
                if child.pid != holder:
                    child.cpu_percent(None)
                    children.append((name, child))
        time.sleep(0.4)
        busy = [(child.cpu_percent(None), name, child) for name, child in children]
        busy = [entry for entry in busy if entry[0] > 30]
        return (max(busy, key=lambda e: e[0])[1:]) if busy else None

    def wait_mid_chunk(self, db: psycopg.Connection, names: list[str]) -> tuple[str, psutil.Process] | None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not self.stop.is_set():
            if self.running_chunks(db):
                found = self.busy_child(names)
                if found is not None:
                    return found
            time.sleep(0.2)
        return None

    def follow(
        self, db: psycopg.Connection, fault: str, before: dict[tuple[str, int], str], t0: float
    ) -> None:
        """Time from the kill to the lost chunk's re-claim (a new token) and to its completion."""
        pending = dict(before)
        resent: dict[tuple[str, int], float] = {}
        reclaimed: dict[tuple[str, int], float] = {}
        mine: list[Recovery] = []  # other faults' followers append to self.recoveries meanwhile
        deadline = t0 + 300
        while pending and time.monotonic() < deadline:
            for (job, index), token in list(pending.items()):
                row = db.execute(
                    "SELECT status, claimed_by FROM job_chunks WHERE job_id = %s AND index = %s", (job, index)
                ).fetchone()
                if row is None:
                    pending.pop((job, index))
                    continue
                status, claimed_by = row
                elapsed = time.monotonic() - t0
                if status == "queued" and claimed_by is None:
                    resent.setdefault((job, index), elapsed)
                if claimed_by not in (None, token) and (job, index) not in reclaimed:
                    reclaimed[(job, index)] = elapsed
                    resent.setdefault((job, index), elapsed)  # re-sent and taken between two polls
                if status in ("done", "cancelled"):
                    pending.pop((job, index))
                    if (job, index) in reclaimed:
                        done_s = time.monotonic() - t0
                        mine.append(
                            Recovery(
                                fault,
                                f"{job[:8]}/{index}",
                                resent[(job, index)],
                                reclaimed[(job, index)],
                                done_s,
                            )
                        )
            time.sleep(0.25)
        for job, index in pending:  # never came back within the deadline
            key = (job, index)
            mine.append(Recovery(fault, f"{job[:8]}/{index}", resent.get(key), reclaimed.get(key), None))
        self.recoveries.extend(mine)
        for r in mine:
            self.log(
                f"{fault}: chunk {r.chunk} sent again after {_s(r.resent_s)}, re-claimed after "
                f"{_s(r.reclaimed_s)}, done after {_s(r.done_s)}"
            )
        if not mine:
            self.log(f"{fault}: no chunk of the killed process had to be re-claimed")
        if self.phase == fault:
            self.phase = STEADY

    def follow_in_background(self, fault: str, before: dict[tuple[str, int], str], t0: float) -> None:
        """Follow the chunks on a connection of its own, so the next fault keeps its schedule."""

        def run() -> None:
            with psycopg.connect(self.dsn, autocommit=True) as db:
                self.follow(db, fault, before, t0)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self.followers.append(thread)

    def kill_pool_child(self, db: psycopg.Connection) -> None:
        found = self.wait_mid_chunk(db, list(self.workers))
        if found is None:
            self.log("pool-child kill skipped: no chunk was running")
            return
        name, child = found
        before = self.running_chunks(db)
        self.phase = "pool-child kill"
        child.send_signal(signal.SIGKILL)
        t0 = time.monotonic()
        self.log(f"SIGKILL pool child {child.pid} of {name} (chunks running: {len(before)})")
        self.follow_in_background("pool-child kill", before, t0)

    def kill_main(self, db: psycopg.Connection) -> None:
        found = self.wait_mid_chunk(db, ["worker-a"])
        if found is None:
            self.log("main-process kill skipped: worker-a ran no chunk")
            return
        worker = self.workers["worker-a"]
        family = [p.pid for p in psutil.Process(worker.pid).children(recursive=True)]
        before = self.running_chunks(db)
        self.phase = "main-process kill"
        os.kill(worker.pid, signal.SIGKILL)
        t0 = time.monotonic()
        worker.process.wait(timeout=10)
        self.log(f"SIGKILL main process {worker.pid} of worker-a (children {family})")
        time.sleep(2)
        self.orphans_after_main_kill = [pid for pid in family if _alive(pid)]
        self.log(f"worker-a's children alive 2 s after: {self.orphans_after_main_kill}; restarting it")
        threading.Thread(target=self.start_worker, args=("worker-a",), daemon=True).start()
        self.follow_in_background("main-process kill", before, t0)

    def restart_gateway(self) -> None:
        assert self.gateway is not None
        self.phase = "gateway restart"
        t0 = time.monotonic()
        self.gateway.stop()
        self.log("SIGTERM gateway; starting it again on the same port")
        self.start_gateway()
        self.log(f"gateway ready again after {time.monotonic() - t0:.1f} s")
        time.sleep(5)
        if self.phase == "gateway restart":
            self.phase = STEADY

    def cancel_one(self, db: psycopg.Connection) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not self.stop.is_set():
            row = db.execute(
                "SELECT id FROM jobs WHERE status = 'running' ORDER BY created_at LIMIT 1"
            ).fetchone()
            if row is not None:
                response = httpx.post(f"{self.url}/jobs/{row[0]}/cancel", headers=self.headers, timeout=30)
                self.log(f"cancel job {row[0]}: {response.status_code}")
                return
            time.sleep(0.5)
        self.log("cancel skipped: no job was running")

    @property
    def dsn(self) -> str:
        return self.env["NER_DATABASE_URL"].replace("postgresql+psycopg://", "postgresql://")

    def fault_runner(self, duration_s: float) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as db:
            for fraction, fault in FAULTS:
                if self.stop.wait(max(0.0, self.started + fraction * duration_s - time.monotonic())):
                    return
                actions: dict[str, Callable[[], None]] = {
                    "pool-child kill": lambda: self.kill_pool_child(db),
                    "main-process kill (--beat worker)": lambda: self.kill_main(db),
                    "gateway restart": self.restart_gateway,
                    "cancel": lambda: self.cancel_one(db),
                }
                actions[fault]()

    def watch_rss(self) -> None:
        while not self.stop.wait(RSS_EVERY_S):
            with contextlib.suppress(psutil.Error):
                self.rss_samples.append((time.monotonic() - self.started, self.rss_mb()))

    def watch_lock(self) -> None:
        while not self.stop.wait(1.0):
            holder = self.lock_holder()
            if holder is not None:
                self.lock_holders.add(holder)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q) - 1]


# --- the accounting -----------------------------------------------------------------------------


def account(database_url: str, submissions: list[Submission]) -> dict[str, object]:
    """Documents and jobs as the database has them, after every job finished."""
    job_ids = sorted({s.job_id for s in submissions})
    with psycopg.connect(database_url.replace("postgresql+psycopg://", "postgresql://")) as db:
        jobs = db.execute(
            """
            SELECT j.id, j.status, j.total, j.done, j.failed,
                   (SELECT count(*) FROM job_results r WHERE r.job_id = j.id),
                   (SELECT count(DISTINCT r.seq) FROM job_results r WHERE r.job_id = j.id)
            FROM jobs j WHERE j.id = ANY(%s)
            """,
            (job_ids,),
        ).fetchall()
        all_jobs = db.execute("SELECT count(*) FROM jobs").fetchone()[0]
    by_status: Counter[str] = Counter()
    submitted = stored = duplicated = missing = skipped = inconsistent = 0
    for _, status, total, done, failed, rows, distinct in jobs:
        by_status[status] += 1
        submitted += total
        stored += rows
        # Two rows for one document, or a document counted twice in the job's totals.
        duplicated += (rows - distinct) + max(0, done + failed - rows)
        if status == "cancelled":
            skipped += total - rows  # never processed, by request
        else:
            missing += total - rows
        if done + failed != rows:
            inconsistent += 1
    keyed: dict[str, set[str]] = defaultdict(set)
    for s in submissions:
        if s.idempotency_key:
            keyed[s.idempotency_key].add(s.job_id)
    return {
        "jobs": len(jobs),
        "jobs_in_database": all_jobs,
        "by_status": dict(by_status),
        "submitted": submitted,
        "stored": stored,
        "duplicated": duplicated,
        "missing": missing,
        "skipped_by_cancel": skipped,
        "inconsistent_jobs": inconsistent,
        "idempotency_exact": all(len(ids) == 1 for ids in keyed.values()),
        "replays": sum(1 for s in submissions if s.replayed),
    }


def wait_for_jobs(database_url: str, job_ids: list[str], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    with psycopg.connect(
        database_url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True
    ) as db:
        while time.monotonic() < deadline:
            left = db.execute(
                "SELECT count(*) FROM jobs WHERE id = ANY(%s)"
                " AND status NOT IN ('succeeded', 'failed', 'cancelled')",
                (job_ids,),
            ).fetchone()[0]
            if left == 0:
                return True
            time.sleep(1)
    return False


# --- the report ---------------------------------------------------------------------------------


def report(
    soak: Soak,
    args: argparse.Namespace,
    model_note: str,
    counts: dict[str, object],
    rss: list[dict[str, tuple[int, float]]],
    schedulers: list[int],
    wall_s: float,
) -> str:
    lines = [
        f"A {args.minutes:g}-minute soak (wall {wall_s / 60:.1f} min with the final drain) on loopback: "
        f"{args.clients} clients on `POST /predict/` back to back, {counts['jobs']} bulk jobs of "
        f"{args.documents} CoNLL sentences (JSON and JSONL, half with an `Idempotency-Key`, one sent twice), "
        "two inference workers (`ner worker --beat` and `ner worker`, concurrency 1 each), default "
        "heartbeat and stall settings. Model: "
        + model_note
        + ". Load average (1, 5, 15 min) at the end: "
        + ", ".join(f"{value:.2f}" for value in os.getloadavg())
        + f" on {os.cpu_count()} CPUs (all of the soak's processes share them: on a machine shared with "
        "other work, latencies and recovery times are those of a busy machine).",
        "",
        "| documents submitted | stored | duplicated | missing | skipped (cancelled job) | jobs "
        "| by status | idempotency |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
        f"| {counts['submitted']:,} | {counts['stored']:,} | {counts['duplicated']} | {counts['missing']} | "
        f"{counts['skipped_by_cancel']:,} | {counts['jobs']} | "
        + ", ".join(f"{k} {v}" for k, v in sorted(counts["by_status"].items()))  # type: ignore[union-attr]
        + f" | {'exact' if counts['idempotency_exact'] else 'NOT exact'} ({counts['replays']} replay) |",
        "",
        "Faults and recovery, from the kill: *sent again* = the chunk queued again (its claim cleared: "
        "the detection), *re-claimed* = taken by a new task (also waits for a free worker process and "
        "for chunks queued before it), *done* = its results written:",
        "",
        "| fault | chunk | sent again after | re-claimed after | done after |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for r in soak.recoveries:
        done = _s(r.done_s) if r.done_s is not None else "not within 300 s"
        lines.append(f"| {r.fault} | {r.chunk} | {_s(r.resent_s)} | {_s(r.reclaimed_s)} | {done} |")
    lines += [
        "",
        f"Beat: processes of the killed `--beat` worker alive 2 s after its SIGKILL: "
        f"{len(soak.orphans_after_main_kill)}; schedulers that held the lock during the run: "
        f"{len(soak.lock_holders)}; beat schedulers alive at the end: {len(schedulers)}.",
        "",
        "| phase | predict requests | errors | error kinds | p50 | p99 |",
        "| --- | ---: | ---: | --- | ---: | ---: |",
    ]
    phases: dict[str, list[Sample]] = defaultdict(list)
    for sample in soak.samples:
        phases[sample.phase].append(sample)
    phases["all"] = list(soak.samples)
    for phase, samples in phases.items():
        ok = [s.ms for s in samples if s.error is None]
        kinds = Counter(s.error for s in samples if s.error is not None)
        lines.append(
            f"| {phase} | {len(samples):,} | {sum(kinds.values())} | "
            + (", ".join(f"{n} x {k}" for k, n in kinds.most_common()) or "-")
            + f" | {percentile(ok, 50):.0f} ms | {percentile(ok, 99):.0f} ms |"
        )
    lines += [
        "",
        "RSS per process (a restarted process has a new pid):",
        "",
        "| process | at start | half-way | at end |",
        "| --- | ---: | ---: | ---: |",
    ]
    for role in sorted(set().union(*rss)):
        cells = [f"{when[role][1]:.0f} MB (pid {when[role][0]})" if role in when else "-" for when in rss]
        lines.append(f"| {role} | " + " | ".join(cells) + " |")
    lines += ["", *last_half_rss(soak.rss_samples, args.minutes * 60)]
    lines += ["", "Timeline:", "", "```", *soak.events, "```"]
    return "\n".join(lines)


def last_half_rss(samples: list[tuple[float, dict[str, tuple[int, float]]]], duration_s: float) -> list[str]:
    """The table of each process's RSS over the last half of the run, sampled every RSS_EVERY_S.

    Spread = max / min - 1 over the samples of the last half; a process started during the last
    half (a restart, a replaced pool child) is shown with the part it covered.
    """
    half = duration_s / 2
    series: dict[tuple[str, int], list[tuple[float, float]]] = defaultdict(list)
    for at, rss in samples:
        if half <= at <= duration_s + RSS_EVERY_S:
            for role, (pid, mb) in rss.items():
                series[(role, pid)].append((at, mb))
    lines = [
        f"RSS over the last half of the run (samples every {RSS_EVERY_S:g} s from minute "
        f"{half / 60:g}; the goal: flat within {FLAT_WITHIN:.0%}, max over min):",
        "",
        "| process | pid | covered | samples | first | min | max | last | spread | flat |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for (role, pid), points in sorted(series.items()):
        values = [mb for _, mb in points]
        spread = max(values) / min(values) - 1
        covered = f"min {points[0][0] / 60:.1f}-{points[-1][0] / 60:.1f}"
        lines.append(
            f"| {role} | {pid} | {covered} | {len(values)} | {values[0]:.0f} MB | {min(values):.0f} MB | "
            f"{max(values):.0f} MB | {values[-1]:.0f} MB | {spread:.1%} | "
            f"{'yes' if spread <= FLAT_WITHIN else 'NO'} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="traffic and faults (default 10)")
    parser.add_argument("--clients", type=int, default=8, help="predict clients (default 8)")
    parser.add_argument("--documents", type=int, default=2000, help="documents per job (default 2000)")
    parser.add_argument("--jobs", type=int, help="bulk jobs (default: 1.2 a minute, at least 4)")
    parser.add_argument("--no-write", action="store_true", help="print the report, leave docs/ alone")
    args = parser.parse_args(argv)
    duration_s = args.minutes * 60
    job_count = args.jobs or max(4, round(1.2 * args.minutes))
    model, model_note = default_model()
    texts = conll_documents(20_000)

    with tempfile.TemporaryDirectory(prefix="ner-soak-") as tmp:
        state = Path(tmp)
        with private_services(state) as base_env:
            env = {
                **base_env,
                "NER_MODEL": str(model),
                "NER_AUTH": "on",
                "NER_RATE_LIMIT_PER_MINUTE": "100000000",  # the soak measures faults, not the limiter
                "NER_LOG_LEVEL": "WARNING",
            }
            jobs_key, *client_keys = _keys(env["NER_DATABASE_URL"], ["jobs"] + ["predict"] * args.clients)
            soak = Soak(
                env=env,
                state=state,
                headers={"Authorization": f"Bearer {jobs_key}"},
                client_keys=client_keys,
                texts=texts,
            )
            try:
                soak.start_gateway()
                soak.start_worker("worker-a")
                soak.start_worker("worker-b")
                soak.started = time.monotonic()
                soak.log(f"stack up: gateway {soak.url}, workers {[w.pid for w in soak.workers.values()]}")
                rss_start = soak.rss_mb()
                threads = [
                    threading.Thread(target=soak.predict_client, args=(i,), daemon=True)
                    for i in range(args.clients)
                ]
                threads.append(
                    threading.Thread(
                        target=soak.job_feeder, args=(job_count, args.documents, duration_s * 0.85)
                    )
                )
                threads.append(threading.Thread(target=soak.fault_runner, args=(duration_s,), daemon=True))
                threads.append(threading.Thread(target=soak.watch_lock, daemon=True))
                threads.append(threading.Thread(target=soak.watch_rss, daemon=True))
                for thread in threads:
                    thread.start()
                soak.stop.wait(duration_s / 2)
                rss_half = soak.rss_mb()
                soak.stop.wait(duration_s / 2)
                rss_end = soak.rss_mb()
                soak.stop.set()
                soak.log("traffic stopped; waiting for every job to finish")
                for thread in threads + soak.followers:
                    thread.join(timeout=600)
                finished = wait_for_jobs(env["NER_DATABASE_URL"], [s.job_id for s in soak.submissions], 600)
                soak.log("every job finished" if finished else "some jobs did not finish within 10 minutes")
                counts = account(env["NER_DATABASE_URL"], soak.submissions)
                schedulers = [pid for pid in soak.lock_holders if _alive(pid)]
                wall_s = time.monotonic() - soak.started
            finally:  # whatever happened, no process of the stack outlives the run
                soak.stop.set()
                soak.stop_processes()
                print(f"process logs and RSS samples: {keep_logs(state, soak)}")
    markdown = report(soak, args, model_note, counts, [rss_start, rss_half, rss_end], schedulers, wall_s)
    print(markdown)
    if not args.no_write:
        from bench.report import write_section

        write_section(
            "soak", markdown, f"python -m bench.soak --minutes {args.minutes:g} --clients {args.clients}"
        )
    return 0


def _keys(database_url: str, scopes: list[str]) -> list[str]:
    """One key per caller (keys have per-key limits; the rate limit itself is set out of the way)."""
    from sqlalchemy.orm import Session

    from shared.core.db import make_engine
    from shared.keys import service as keys

    engine = make_engine(database_url)
    try:
        with Session(engine) as session:
            return [
                keys.create_key(session=session, scope=scope, name=f"soak-{i}").plaintext
                for i, scope in enumerate(scopes)
            ]
    finally:
        engine.dispose()


def _s(seconds: float | None) -> str:
    return f"{seconds:.1f} s" if seconds is not None else "-"


def keep_logs(state: Path, soak: Soak) -> Path:
    """The processes' logs and every RSS sample (``rss.json``), kept under test-artifacts/."""
    target = REPO / "test-artifacts" / f"soak-{time.strftime('%Y%m%d-%H%M%S')}"
    target.mkdir(parents=True, exist_ok=True)
    for log in state.glob("*.log"):
        shutil.copy(log, target / log.name)
    # Beside the events, so a spread can be read against what the process was doing at the time.
    series = [
        {"at_s": round(at, 1), "rss_mb": {role: [pid, round(mb, 1)] for role, (pid, mb) in rss.items()}}
        for at, rss in soak.rss_samples
    ]
    (target / "rss.json").write_text(json.dumps({"events": soak.events, "samples": series}, indent=1))
    return target


if __name__ == "__main__":
    raise SystemExit(main())
