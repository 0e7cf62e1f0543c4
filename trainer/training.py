"""The training loop: a ``transformers.Trainer`` with a pluggable loss, per-epoch metrics and checkpoints.

``run_training`` is what ``ner train`` and the Celery task both call. It reports through
``RunHooks`` (progress, epoch rows, cancellation), saves a checkpoint after every epoch, resumes
from the last one when the same run starts again, and finishes with test metrics per entity type.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import (
    DataCollatorForTokenClassification,
    EvalPrediction,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)
from transformers.trainer_pt_utils import LengthGroupedSampler
from transformers.trainer_utils import get_last_checkpoint

from shared.training.params import TrainParams
from trainer.data import LoadedData
from trainer.encoding import encode_split
from trainer.losses import LossConfig, LossFn, make_loss
from trainer.metrics import EpochMetrics, detailed_report, entity_scores, to_tag_sequences
from trainer.model import load_starting_point

log = logging.getLogger(__name__)

# Written next to the checkpoints: a restarted run resumes only when it is the same run.
RUN_MARKER = "run.json"


@dataclass
class RunHooks:
    """How a run reports and is stopped; every hook is optional."""

    on_start: Callable[[int, int], None] | None = None  # (total steps, step resumed from)
    on_progress: Callable[[int, int], None] | None = None  # (step, total steps)
    on_epoch: Callable[[EpochMetrics], None] | None = None
    should_stop: Callable[[], bool] | None = None
    stop_check_seconds: float = 2.0


@dataclass
class TrainResult:
    model_dir: Path | None
    labels: list[str]
    epochs: list[EpochMetrics]
    validation: dict[str, Any] = field(default_factory=dict)  # detailed report of the kept model
    test: dict[str, Any] | None = None
    cancelled: bool = False
    best_epoch: int | None = None
    case_feature: bool = False
    train_seconds: float = 0.0
    train_tokens: int = 0  # sub-tokens (without padding) seen in training
    resumed_from_step: int = 0

    @property
    def tokens_per_second(self) -> float:
        return self.train_tokens / self.train_seconds if self.train_seconds else 0.0


def bf16_is_fast() -> bool:
    """bf16 autocast pays off on CUDA with bf16 and on CPUs with AVX512-BF16 or AMX."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


class NerTrainer(Trainer):
    """A Trainer whose loss is chosen by name, that keeps the mean training loss of each epoch."""

    def __init__(self, *args: Any, loss_fn: LossFn, train_lengths: list[int] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.loss_fn = loss_fn
        self.train_lengths = train_lengths
        # Our losses are per-batch means: let the Trainer scale for gradient accumulation.
        self.loss_is_scaled_for_ga = False
        self._loss_sum = torch.zeros(())
        self._loss_batches = 0

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        loss = self.loss_fn(outputs.logits, labels)
        if model.training:
            self._loss_sum = self._loss_sum + loss.detach().float().cpu()
            self._loss_batches += 1
        return (loss, outputs) if return_outputs else loss

    def take_epoch_loss(self) -> float | None:
        """The mean training loss since the last call (one epoch), and reset."""
        if not self._loss_batches:
            return None
        value = float(self._loss_sum) / self._loss_batches
        self._loss_sum, self._loss_batches = torch.zeros(()), 0
        return value

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        # The lengths are known from encoding; the stock sampler would read every row to find them.
        if self.args.train_sampling_strategy == "group_by_length" and self.train_lengths is not None:
            return LengthGroupedSampler(self.args.train_batch_size, lengths=self.train_lengths)
        return super()._get_train_sampler(train_dataset)


class _ReportingCallback(TrainerCallback):
    """Turns Trainer events into the run's hooks: progress, epoch rows, cancellation."""

    def __init__(self, hooks: RunHooks) -> None:
        self.hooks = hooks
        self.trainer: NerTrainer | None = None
        self.epochs: list[EpochMetrics] = []
        self.cancelled = False
        self._last_check = 0.0
        self._last_progress = 0.0
        self.started_step = 0

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ):
        self.started_step = state.global_step
        # Epochs finished before a restart are in the checkpoint's log history: report them again.
        for row in epochs_from_history(state.log_history):
            self._emit(row)
        if self.hooks.on_start:
            self.hooks.on_start(state.max_steps, state.global_step)

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any):
        now = time.monotonic()
        if self.hooks.on_progress and (
            now - self._last_progress >= 1.0 or state.global_step == state.max_steps
        ):
            self._last_progress = now
            self.hooks.on_progress(state.global_step, state.max_steps)
        if self.hooks.should_stop and now - self._last_check >= self.hooks.stop_check_seconds:
            self._last_check = now
            if self.hooks.should_stop():
                self.cancelled = True
                control.should_training_stop = True

    def on_epoch_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any):
        if self.cancelled:
            # A cancelled run neither evaluates nor saves a half epoch.
            control.should_evaluate = False
            control.should_save = False
            return
        assert self.trainer is not None
        # Kept in the log history, so it is saved with the checkpoint and survives a restart.
        state.log_history.append(
            {"epoch": round(state.epoch or 0), "train_loss_epoch": self.trainer.take_epoch_loss()}
        )

    def on_evaluate(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any):
        rows = epochs_from_history([*state.log_history, {"epoch": state.epoch, **kw.get("metrics", {})}])
        if rows:
            self._emit(rows[-1])

    def _emit(self, row: EpochMetrics) -> None:
        self.epochs = [e for e in self.epochs if e.epoch != row.epoch] + [row]
        if self.hooks.on_epoch:
            self.hooks.on_epoch(row)


def epochs_from_history(history: list[dict[str, Any]]) -> list[EpochMetrics]:
    """Epoch rows from a Trainer log history (our train-loss entries plus the eval entries)."""
    train_loss: dict[int, float | None] = {}
    rows: dict[int, EpochMetrics] = {}
    for entry in history:
        epoch = round(entry.get("epoch") or 0)
        if "train_loss_epoch" in entry:
            train_loss[epoch] = entry["train_loss_epoch"]
        elif "eval_f1" in entry:
            rows[epoch] = EpochMetrics(
                epoch=epoch,
                train_loss=train_loss.get(epoch),
                val_loss=entry.get("eval_loss"),
                precision=entry["eval_precision"],
                recall=entry["eval_recall"],
                f1=entry["eval_f1"],
                accuracy=entry["eval_accuracy"],
            )
    return [rows[key] for key in sorted(rows)]


def _argmax(logits: Any, labels: Any) -> torch.Tensor:
    # Keep only label ids, not (batch, tokens, labels) floats, across the evaluation loop.
    if isinstance(logits, tuple):
        logits = logits[0]
    return logits.argmax(dim=-1)


def _prepare_checkpoint_dir(checkpoint_dir: Path, marker: dict[str, Any], resume: bool) -> str | None:
    """The checkpoint to resume from, if this folder holds an earlier attempt of the same run."""
    marker_path = checkpoint_dir / RUN_MARKER
    if checkpoint_dir.exists():
        same = marker_path.exists() and json.loads(marker_path.read_text()) == marker
        last = get_last_checkpoint(str(checkpoint_dir)) if same and resume else None
        if last:
            return last
        shutil.rmtree(checkpoint_dir)
    checkpoint_dir.mkdir(parents=True)
    marker_path.write_text(json.dumps(marker, sort_keys=True))
    return None


@dataclass
class PreparedRun:
    """A configured trainer and what it was built from (the bench drives it for a fixed step count)."""

    trainer: NerTrainer
    reporter: _ReportingCallback
    labels: list[str]
    id2label: dict[int, str]
    case_feature: bool
    encoded: dict[str, Any]
    train_lengths: list[int]


def training_arguments(params: TrainParams, output_dir: Path, **overrides: Any) -> TrainingArguments:
    """The recipe's Trainer arguments: eval and checkpoint every epoch, length-grouped batches, bf16."""
    values: dict[str, Any] = {
        "output_dir": str(output_dir),
        "num_train_epochs": params.epochs,
        "learning_rate": params.learning_rate,
        "per_device_train_batch_size": params.batch_size,
        "per_device_eval_batch_size": max(params.batch_size, 64),
        "warmup_steps": params.warmup_ratio,
        "weight_decay": params.weight_decay,
        "lr_scheduler_type": params.lr_scheduler,
        "seed": params.seed,
        "eval_strategy": "epoch",
        "save_strategy": "epoch",
        "save_total_limit": 1,
        "load_best_model_at_end": True,
        "metric_for_best_model": "f1",
        "logging_strategy": "epoch",
        "report_to": "none",
        "disable_tqdm": True,
        "bf16": bf16_is_fast() if params.bf16 is None else params.bf16,
        "use_cpu": not torch.cuda.is_available(),
        # Batches of similar lengths: far less padding than random batches of CoNLL's short sentences.
        "train_sampling_strategy": "group_by_length",
        "dataloader_num_workers": 0,
    }
    return TrainingArguments(**{**values, **overrides})


def prepare_run(
    *,
    data: LoadedData,
    base_model: str,
    params: TrainParams,
    checkpoint_dir: Path,
    hooks: RunHooks | None = None,
    **argument_overrides: Any,
) -> PreparedRun:
    """Load the base, encode every split and build the trainer; every input check happens here."""
    start = load_starting_point(base_model, data, case_feature=params.case_feature)
    label2id = {label: i for i, label in enumerate(start.labels)}
    id2label = dict(enumerate(start.labels))
    encoded = {
        key: encode_split(
            split,
            start.tokenizer,
            label2id,
            max_length=params.max_length,
            case_feature=start.case_feature,
            context_tokens=params.context_tokens,
            # Only training reads some sentences alone; validation and test read whole documents.
            no_context_fraction=params.no_context_fraction if key == "train" else 0.0,
            seed=params.seed,
        )
        for key, split in data.splits.items()
    }
    train_lengths = list(encoded["train"]["length"])
    # Evaluation order does not matter for the scores; sorted by length, batches hardly need padding.
    for key in ("validation", "test"):
        if key in encoded:
            encoded[key] = encoded[key].select(np.argsort(encoded[key]["length"], kind="stable"))
    loss_fn = make_loss(
        LossConfig(params.loss, params.focal_gamma, params.mom_lambda, params.label_smoothing),
        labels=start.labels,
        label_counts=data.label_counts,
    )

    def compute_metrics(prediction: EvalPrediction) -> dict[str, float]:
        gold, pred = to_tag_sequences(prediction.predictions, prediction.label_ids, id2label)
        return entity_scores(gold, pred)

    trainer = NerTrainer(
        model=start.model,
        args=training_arguments(params, checkpoint_dir, **argument_overrides),
        train_dataset=encoded["train"],
        eval_dataset=encoded["validation"],
        processing_class=start.tokenizer,
        data_collator=DataCollatorForTokenClassification(start.tokenizer, pad_to_multiple_of=8),
        compute_metrics=compute_metrics,
        preprocess_logits_for_metrics=_argmax,
        loss_fn=loss_fn,
        train_lengths=train_lengths,
    )
    reporter = _ReportingCallback(hooks or RunHooks())
    reporter.trainer = trainer
    trainer.add_callback(reporter)
    # Epoch rows are reported through the hooks; the stock printer would repeat them as raw dicts.
    trainer.remove_callback(PrinterCallback)
    return PreparedRun(trainer, reporter, start.labels, id2label, start.case_feature, encoded, train_lengths)


def run_training(
    *,
    data: LoadedData,
    base_model: str,
    params: TrainParams,
    output_dir: Path,
    checkpoint_dir: Path,
    hooks: RunHooks | None = None,
    resume: bool = True,
) -> TrainResult:
    """Train, evaluate every epoch, keep the best epoch's model in ``output_dir``, score the test split."""
    run = prepare_run(
        data=data, base_model=base_model, params=params, checkpoint_dir=checkpoint_dir, hooks=hooks
    )
    trainer, reporter = run.trainer, run.reporter
    marker = {"base_model": base_model, "data_hash": data.data_hash, "params": params.as_dict()}
    resume_from = _prepare_checkpoint_dir(checkpoint_dir, marker, resume)
    if resume_from:
        log.info("resuming from %s", resume_from)
    began = time.monotonic()
    trainer.train(resume_from_checkpoint=resume_from)
    train_seconds = time.monotonic() - began
    steps_per_epoch = max(1, trainer.state.max_steps) / max(1, params.epochs)
    epochs_run = (trainer.state.global_step - reporter.started_step) / steps_per_epoch
    result = TrainResult(
        model_dir=None,
        labels=run.labels,
        epochs=sorted(reporter.epochs, key=lambda e: e.epoch),
        cancelled=reporter.cancelled,
        case_feature=run.case_feature,
        train_seconds=train_seconds,
        train_tokens=int(sum(run.train_lengths) * epochs_run),
        resumed_from_step=reporter.started_step,
    )
    if reporter.cancelled:
        return result

    best = max(result.epochs, key=lambda e: e.f1) if result.epochs else None
    result.best_epoch = best.epoch if best else None
    result.validation = _detailed(trainer, run.encoded["validation"], run.id2label, run.labels)
    if "test" in run.encoded:
        result.test = _detailed(trainer, run.encoded["test"], run.id2label, run.labels)
    output_dir.mkdir(parents=True, exist_ok=True)
    trainer.save_model(str(output_dir))
    # A pickle of the Trainer's arguments: no use to a reader of the model, and unsafe to load.
    (output_dir / "training_args.bin").unlink(missing_ok=True)
    result.model_dir = output_dir
    return result


def _detailed(trainer: Trainer, dataset: Any, id2label: dict[int, str], labels: list[str]) -> dict[str, Any]:
    output = trainer.predict(dataset, metric_key_prefix="final")
    gold, pred = to_tag_sequences(np.asarray(output.predictions), np.asarray(output.label_ids), id2label)
    report = detailed_report(gold, pred, labels)
    report["loss"] = output.metrics.get("final_loss")
    return report
