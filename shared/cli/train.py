"""``ner train``: a training run in-process, writing a loadable model folder and printing the table."""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from shared.core.config import Settings
from shared.training.errors import DataError
from shared.training.params import LOSSES, TrainParams
from shared.training.references import DataSpec

_DEFAULTS = TrainParams()


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``ner train`` to the ``ner`` command."""
    parser = subparsers.add_parser(
        "train",
        help="train a model in-process and write it to a folder",
        description="Fine-tune a token-classification model on CoNLL / JSONL files, a folder holding "
        "train/validation/test files, or a Hugging Face dataset id. Rerunning the same command after "
        "an interruption resumes from the last epoch checkpoint.",
    )
    data = parser.add_argument_group("data")
    data.add_argument("--train", help="training data: CoNLL or JSONL file, folder, or hub dataset id")
    data.add_argument(
        "--validation", help="validation data (default: a seeded split of --train, by whole documents)"
    )
    data.add_argument("--test", help="test data, scored per entity type at the end")
    data.add_argument("--data", help="one folder or hub dataset id holding all splits (instead of --train)")
    run = parser.add_argument_group("run")
    run.add_argument("--base", help="base model: hub id or local folder (default: NER_BASE_MODEL)")
    run.add_argument("--out", required=True, type=Path, help="folder for the trained model")
    run.add_argument("--checkpoints", type=Path, help="checkpoint folder (default: OUT-checkpoints)")
    run.add_argument("--keep-checkpoints", action="store_true", help="keep checkpoints after success")
    run.add_argument("--no-resume", action="store_true", help="start over even if checkpoints exist")
    hp = parser.add_argument_group("hyperparameters")
    hp.add_argument("--epochs", type=int, default=_DEFAULTS.epochs)
    hp.add_argument("--loss", choices=LOSSES, help="default: NER_TRAIN_LOSS")
    hp.add_argument(
        "--lr", "--learning-rate", dest="learning_rate", type=float, default=_DEFAULTS.learning_rate
    )
    hp.add_argument("--batch-size", type=int, default=_DEFAULTS.batch_size)
    hp.add_argument("--max-length", type=int, default=_DEFAULTS.max_length, help="sub-tokens per sentence")
    hp.add_argument("--warmup", dest="warmup_ratio", type=float, default=_DEFAULTS.warmup_ratio,
                    help="fraction of the steps with a linear warm-up")  # fmt: skip
    hp.add_argument("--weight-decay", type=float, default=_DEFAULTS.weight_decay)
    hp.add_argument("--seed", type=int, default=_DEFAULTS.seed)
    hp.add_argument("--focal-gamma", type=float, default=_DEFAULTS.focal_gamma)
    hp.add_argument("--mom-lambda", type=float, default=_DEFAULTS.mom_lambda)
    hp.add_argument("--label-smoothing", type=float, default=_DEFAULTS.label_smoothing)
    hp.add_argument("--lr-scheduler", default=_DEFAULTS.lr_scheduler, help="linear, cosine, constant, ...")
    hp.add_argument("--no-case-feature", dest="case_feature", action="store_false",
                    help="do not feed word case through token-type ids")  # fmt: skip
    hp.add_argument("--bf16", choices=("auto", "on", "off"), default="auto", help="bf16 autocast")
    hp.add_argument("--validation-fraction", type=float, default=_DEFAULTS.validation_fraction)
    hp.add_argument("--context-tokens", type=int, default=_DEFAULTS.context_tokens,
                    help="sub-tokens of neighbouring sentences of the same document read on each side "
                    "(0: every sentence alone)")  # fmt: skip
    hp.add_argument("--no-context-fraction", type=float, default=_DEFAULTS.no_context_fraction,
                    help="share of training sentences also read alone, without context")  # fmt: skip
    parser.set_defaults(handler=cmd_train)


def params_from_args(args: argparse.Namespace, settings: Settings) -> TrainParams:
    values = {name: getattr(args, name) for name in TrainParams.__dataclass_fields__ if hasattr(args, name)}
    values["loss"] = args.loss or settings.train_loss
    values["bf16"] = {"auto": None, "on": True, "off": False}[args.bf16]
    return TrainParams(**values)


def cmd_train(args: argparse.Namespace, settings: Settings) -> int:
    """Run ``ner train``; exit status 2 for bad input (named file and line), 0 on success."""
    from trainer.card import write_model_folder_extras
    from trainer.metrics import format_confusion, format_epoch_table, format_per_type
    from trainer.pipeline import run_pipeline
    from trainer.training import RunHooks

    if not (args.train or args.data):
        print("ner train: give --train FILE (or --data FOLDER)", file=sys.stderr)
        return 2
    try:
        params = params_from_args(args, settings)
    except ValueError as exc:
        print(f"ner train: {exc}", file=sys.stderr)
        return 2
    base_model = args.base or settings.base_model
    out: Path = args.out.expanduser().resolve()
    checkpoints = (args.checkpoints or out.with_name(out.name + "-checkpoints")).expanduser().resolve()
    started = time.monotonic()

    def on_data(data) -> None:  # type: ignore[no-untyped-def]
        print(f"data: {', '.join(f'{k} {data.sentences(k)} sentences' for k in data.splits)}; "
              f"labels {', '.join(data.labels)}")  # fmt: skip
        print(f"base model: {base_model}; params: {params.as_dict()}", flush=True)

    def on_epoch(row) -> None:  # type: ignore[no-untyped-def]
        print(f"epoch {row.epoch}: train loss {row.train_loss:.4f}, val loss {row.val_loss:.4f}, "
              f"P {row.precision:.4f} R {row.recall:.4f} F1 {row.f1:.4f} acc {row.accuracy:.4f}",
              flush=True)  # fmt: skip

    def on_start(total: int, resumed_from: int) -> None:
        if resumed_from:
            print(f"resuming from step {resumed_from} of {total} ({checkpoints})", flush=True)

    try:
        data, result = run_pipeline(
            spec=DataSpec(train=args.train or args.data, validation=args.validation, test=args.test),
            params=params,
            base_model=base_model,
            roots=None,  # the user's own command: any file they can read
            cache_dir=settings.state_dir / "cache" / "datasets",
            output_dir=out,
            checkpoint_dir=checkpoints,
            hooks=RunHooks(on_epoch=on_epoch, on_start=on_start),
            resume=not args.no_resume,
            on_data=on_data,
        )
    except DataError as exc:
        print(f"ner train: {exc}", file=sys.stderr)
        return 2
    from shared.predict.engine import EngineOptions
    from trainer.evaluation import engine_reports

    # The scores users get: raw text into the engine, spans back onto the tokens (model card, metrics.json).
    engine_scores = engine_reports(model_dir=out, data=data, options=EngineOptions.from_settings(settings))
    write_model_folder_extras(
        out, result=result, base_model=base_model, data=data, params=params, version=None,
        engine_scores=engine_scores,
    )  # fmt: skip
    print()
    print(format_epoch_table(result.epochs))
    print()
    print(format_per_type(result.validation, "validation"))
    if result.test:
        print()
        print(format_per_type(result.test, "test"))
        print()
        print(format_confusion(result.test["confusion"]))
    for split, reports in engine_scores.items():
        for mode, report in reports.items():
            print()
            print(format_per_type(report, f"{split} through the engine, {mode}"))
    print()
    print(f"kept epoch {result.best_epoch} (best validation F1); {result.tokens_per_second:.0f} tokens/s; "
          f"{time.monotonic() - started:.0f} s in all")  # fmt: skip
    print(f"model written to {out}")
    if not args.keep_checkpoints:
        shutil.rmtree(checkpoints, ignore_errors=True)
    return 0
