"""Quality benchmark: what users get from a model, next to what the trainer reports for it.

    python -m bench.quality                       # the shipped default model, fp32, bf16 and int8, eng.testb
    python -m bench.quality --model DIR --split eng.testa
    python -m bench.quality --baseline-src DIR    # also whole-document throughput vs older code

Per entity type and overall: the trainer-side score (the training loop's own evaluation: labelled
sub-tokens of the encoded split), the engine score with one sentence per text and the engine score
with one whole document per text (``trainer.evaluation``: raw text in, character spans mapped back
onto the CoNLL tokens, seqeval). The report goes to the ``quality`` section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

COMMAND = "make bench-quality"
OUT = Path(".ner/bench/quality")
TYPES = ("LOC", "MISC", "ORG", "PER")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- throughput (also runs against another checkout's engine: imports only the engine) ------------


def _read_documents(path: Path) -> list[list[list[str]]]:
    """Token lists of each sentence of each document of a CoNLL file (no trainer imports)."""
    documents: list[list[list[str]]] = []
    sentence: list[str] = []
    for line in [*path.read_text(encoding="utf-8").splitlines(), ""]:
        columns = line.split()
        if columns and columns[0] == "-DOCSTART-":
            documents.append([])
        elif columns:
            sentence.append(columns[0])
        elif sentence:
            if not documents:
                documents.append([])
            documents[-1].append(sentence)
            sentence = []
    return [document for document in documents if document]


def throughput(model: str, data_file: Path, rounds: int, limit: int) -> dict[str, float]:
    """Whole documents per second through ``NerEngine.predict`` (best of ``rounds``), fp32 CPU."""
    from shared.predict.engine import EngineOptions, NerEngine

    engine = NerEngine.load(model, EngineOptions(device="cpu"))
    documents = _read_documents(data_file)[:limit]
    texts = ["\n".join(" ".join(tokens) for tokens in document) for document in documents]
    words = sum(len(tokens) for document in documents for tokens in document)
    engine.predict(texts[:8])  # warm-up
    best = float("inf")
    for _ in range(rounds):
        began = time.perf_counter()
        for start in range(0, len(texts), 16):
            engine.predict(texts[start : start + 16])
        best = min(best, time.perf_counter() - began)
    return {
        "documents": len(texts),
        "seconds": best,
        "docs_per_s": len(texts) / best,
        "words_per_s": words / best,
    }


def side_by_side(
    model: str, data_file: Path, baseline_src: Path, rounds: int, limit: int = 60
) -> dict[str, Any]:
    """This checkout's engine and ``baseline_src``'s, alternately in fresh processes (same load)."""
    here = Path(__file__).resolve().parents[1]
    model = str(Path(model).resolve()) if Path(model).exists() else model  # the children run elsewhere
    results: dict[str, list[dict[str, float]]] = {"current": [], "baseline": []}
    for _ in range(rounds):
        for name, source in (("baseline", baseline_src), ("current", here)):
            env = {**os.environ, "PYTHONPATH": str(source)}
            out = subprocess.run(
                [sys.executable, str(Path(__file__).resolve()), "--throughput-only", "--model", model,
                 "--data-file", str(data_file), "--rounds", "1", "--documents", str(limit)],
                env=env, cwd=source, check=True, capture_output=True, text=True,
            )  # fmt: skip
            results[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
            log(f"{name}: {results[name][-1]['docs_per_s']:.2f} documents/s")
    best = {name: max(runs, key=lambda r: r["docs_per_s"]) for name, runs in results.items()}
    change = best["current"]["docs_per_s"] / best["baseline"]["docs_per_s"] - 1
    return {"best": best, "runs": results, "change": change}


# --- scores ---------------------------------------------------------------------------------------


def trainer_side(engine: Any, dataset: Any, params: Any) -> dict[str, Any]:
    """The training loop's evaluation of ``engine.model`` (in its precision) on an encoded split."""
    import numpy as np
    import torch

    from trainer.encoding import encode_split
    from trainer.losses import IGNORE_INDEX
    from trainer.metrics import detailed_report

    id2label = engine.id2label
    label2id = {label: i for i, label in id2label.items()}
    encoded = encode_split(
        dataset, engine.tokenizer, label2id, max_length=params.max_length,
        case_feature=engine.case_feature, context_tokens=params.context_tokens,
    )  # fmt: skip
    order = np.argsort(encoded["length"], kind="stable")
    gold: list[list[str]] = []
    pred: list[list[str]] = []
    pad = engine.tokenizer.pad_token_id or 0
    for start in range(0, len(order), 32):
        rows = encoded.select(order[start : start + 32])
        width = max(rows["length"])
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        types = torch.zeros_like(ids)
        for row, example in enumerate(rows):
            n = len(example["input_ids"])
            ids[row, :n] = torch.tensor(example["input_ids"])
            mask[row, :n] = 1
            if engine.case_feature:
                types[row, :n] = torch.tensor(example["token_type_ids"])
        inputs = {"input_ids": ids, "attention_mask": mask}
        if engine.case_feature:
            inputs["token_type_ids"] = types
        with torch.inference_mode():
            best = engine.model(**inputs).logits.argmax(-1).numpy()
        for row, example in enumerate(rows):
            pairs = [
                (label, best[row, i]) for i, label in enumerate(example["labels"]) if label != IGNORE_INDEX
            ]
            gold.append([id2label[label] for label, _ in pairs])
            pred.append([id2label[int(p)] for _, p in pairs])
    return detailed_report(gold, pred, [id2label[i] for i in sorted(id2label)])


def score_model(model: str, split_file: Path, precision: str) -> dict[str, Any]:
    """Trainer-side, engine per sentence and engine per document scores of one model and precision."""
    from shared.predict.engine import EngineOptions, NerEngine
    from shared.training.params import TrainParams
    from trainer.conll import read_documents
    from trainer.data import read_local
    from trainer.evaluation import evaluate_documents, evaluate_sentences

    engine = NerEngine.load(model, EngineOptions(device="cpu", precision=precision))
    metrics_file = Path(model) / "metrics.json"
    recorded = json.loads(metrics_file.read_text()).get("params", {}) if metrics_file.is_file() else {}
    params = TrainParams.from_dict(recorded)
    dataset, _ = read_local(split_file, cache_dir=OUT / "cache")  # in file order, documents marked
    documents = read_documents(split_file)
    sentences = [sentence for document in documents for sentence in document]
    out: dict[str, Any] = {"precision": engine.precision, "params": params.as_dict()}
    began = time.perf_counter()
    out["trainer"] = trainer_side(engine, dataset, params)
    out["trainer_seconds"] = time.perf_counter() - began
    began = time.perf_counter()
    out["sentences"] = evaluate_sentences(engine, sentences)
    out["sentences_seconds"] = time.perf_counter() - began
    began = time.perf_counter()
    out["documents"] = evaluate_documents(engine, documents)
    out["documents_seconds"] = time.perf_counter() - began
    return out


# --- report ---------------------------------------------------------------------------------------


def _row(name: str, report: dict[str, Any]) -> str:
    per_type = report.get("per_type", {})
    cells = [f"{per_type[t]['f1']:.4f}" if t in per_type else "-" for t in TYPES]
    scores = f"{report['precision']:.4f} | {report['recall']:.4f} | **{report['f1']:.4f}**"
    return f"| {name} | {scores} | {' | '.join(cells)} |"


def report_markdown(
    model: str, split: str, results: dict[str, dict[str, Any]], speed: dict[str, Any] | None
) -> str:
    lines = [
        f"Model: `{model}`; data: CoNLL-2003 `{split}`. Trainer-side: the training loop's own evaluation "
        "(labelled first sub-tokens of the engine's words, documents read with context as in training). "
        "Engine: `trainer.evaluation` (raw text into `NerEngine.predict`, character spans mapped back onto "
        "the CoNLL tokens, seqeval IOB2); sentences: one sentence per text (tokens joined by spaces); "
        "documents: one CoNLL document per text (sentences joined by `\\n`).",
        "",
        "| model, path, how scored | P | R | F1 | " + " | ".join(f"{t} F1" for t in TYPES) + " |",
        "|---|---|---|---|" + "---|" * len(TYPES),
    ]
    for name, result in results.items():
        lines.append(_row(f"{name}: trainer-side", result["trainer"]))
        lines.append(_row(f"{name}: engine, sentences", result["sentences"]))
        lines.append(_row(f"{name}: engine, documents", result["documents"]))
    lines.append("")
    for name, result in results.items():
        trainer = result["trainer"]["f1"]
        gaps = ", ".join(
            f"{mode} {100 * (result[mode]['f1'] - trainer):+.2f}" for mode in ("sentences", "documents")
        )
        lines.append(
            f"- {name}: engine minus trainer-side F1, points: {gaps}; scoring took "
            f"{result['sentences_seconds']:.0f} s (sentences), "
            f"{result['documents_seconds']:.0f} s (documents)."
        )
    if "fp32" in results:
        base = results["fp32"]
        for name, result in results.items():
            if name == "fp32":
                continue
            for mode in ("sentences", "documents"):
                change = 100 * (result[mode]["f1"] - base[mode]["f1"])
                faster = base[f"{mode}_seconds"] / result[f"{mode}_seconds"]
                lines.append(
                    f"- {name} minus fp32, engine {mode}: {change:+.2f} F1 points "
                    f"(scored {faster:.2f}x as fast)."
                )
    if speed:
        current, baseline = speed["best"]["current"], speed["best"]["baseline"]
        lines += [
            "",
            f"Whole-document throughput (fp32, first {current['documents']} documents, 16 a call, best of "
            f"{len(speed['runs']['current'])} alternating runs each): this code {current['docs_per_s']:.2f} "
            f"documents/s ({current['words_per_s']:.0f} words/s), the baseline code "
            f"{baseline['docs_per_s']:.2f} documents/s ({baseline['words_per_s']:.0f} words/s): "
            f"{100 * speed['change']:+.1f}%.",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="model folder or hub id (default: NER_DEFAULT_MODEL)")
    parser.add_argument(
        "--split", default="eng.testb", help="CoNLL file in NER_CONLL_DIR (default eng.testb)"
    )
    parser.add_argument("--precisions", default="fp32,bf16,int8", help="engine precisions to score")
    parser.add_argument("--no-int8", action="store_true", help="leave int8 out")
    parser.add_argument(
        "--baseline-src", type=Path, help="another checkout: whole-document throughput side by side"
    )
    parser.add_argument("--rounds", type=int, default=3, help="alternating throughput runs of each code")
    parser.add_argument("--documents", type=int, default=60, help="documents per throughput run")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    parser.add_argument("--throughput-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.throughput_only:  # the child of side_by_side: one JSON line
        print(json.dumps(throughput(args.model, args.data_file, args.rounds, args.documents)))
        return 0

    from shared.core.config import get_settings
    from trainer.pipeline import quiet_libraries

    quiet_libraries()
    settings = get_settings()
    model = args.model or settings.default_model
    if not model or (not Path(model).exists() and "/" not in model):
        print("bench.quality: no model (give --model, or set NER_DEFAULT_MODEL)", file=sys.stderr)
        return 2
    split_file = settings.conll_dir / args.split
    results: dict[str, dict[str, Any]] = {}
    for name in (p.strip() for p in args.precisions.split(",") if p.strip()):
        if name == "int8" and args.no_int8:
            continue
        log(f"scoring {model} ({name}) on {args.split}")
        results[name] = score_model(model, split_file, name)
        for mode in ("trainer", "sentences", "documents"):
            log(f"  {mode}: F1 {results[name][mode]['f1']:.4f}")
    speed = None
    if args.baseline_src:
        log(f"whole-document throughput: this code vs {args.baseline_src}")
        speed = side_by_side(str(model), split_file, args.baseline_src, args.rounds, args.documents)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.json").write_text(json.dumps({"results": results, "speed": speed}, indent=2, default=str))
    shown = model if not str(model).startswith(str(Path.cwd())) else os.path.relpath(model)
    markdown = report_markdown(str(shown), args.split, results, speed)
    print(markdown)
    if not args.no_write:
        from bench.report import write_section

        command = (
            COMMAND
            if not argv and len(sys.argv) == 1
            else "python -m bench.quality " + " ".join(sys.argv[1:])
        )
        write_section("quality", markdown, command)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
