"""int8 next to fp32 and bf16 on one model: engine F1 (sentences, documents) and raw sentences/s.

    python -m bench.int8                                  # shipped model, all of eng.testb, 5 rounds
    python -m bench.int8 --variants fp32,int8 --documents 80 --sentences 0
    python -m bench.int8 --variants fp32,int8,onnx-int8   # needs onnxruntime and onnx installed
    python -m bench.int8 --search 80      # which layer's quantization costs document F1 (80 documents)

Variants: ``fp32``; ``bf16``; ``int8`` (the engine's ``quantize_int8``: dynamic, per-channel weights,
8-bit activations on VNNI CPUs, fp32 classifier, first encoder layer and second layer's attention);
``int8-7bit`` (the same, 7-bit activations as torch's default); ``int8-all`` (the previous recipe: every
encoder Linear, 7-bit activations); ``onnx-int8`` (the fp32 model exported to ONNX, ``onnxruntime.quantization
.quantize_dynamic`` per-channel with the same layers excluded, run by an ONNX Runtime session).
Every variant runs inside the same ``NerEngine`` (same tokenization, windows and span decoding), so
only the model's forward pass differs. Speed: sentences/s of one ``predict`` call over the first
``--speed-sentences`` eng.testb sentences, variants alternating, best of ``--rounds``.
Prints a markdown table (paste it into docs/benchmarks.md#precision).
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
import tempfile
import time
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

COMMAND = "python -m bench.int8"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _quantize_all_7bit(model: torch.nn.Module) -> torch.nn.Module:
    """The recipe before issue 18: every Linear but the classifier, torch's 7-bit activations."""
    from torch.ao.quantization import per_channel_dynamic_qconfig

    spec = {
        name: per_channel_dynamic_qconfig
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and not name.endswith("classifier")
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(model, spec, dtype=torch.qint8)


class OnnxModel:
    """An ONNX Runtime session behind the ``model(**inputs).logits`` call the engine makes."""

    def __init__(self, path: Path, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.names = {i.name for i in self.session.get_inputs()}

    def __call__(self, **inputs: torch.Tensor) -> SimpleNamespace:
        if "token_type_ids" in self.names and "token_type_ids" not in inputs:
            inputs["token_type_ids"] = torch.zeros_like(inputs["input_ids"])
        feed = {k: v.numpy() for k, v in inputs.items() if k in self.names}
        return SimpleNamespace(logits=torch.from_numpy(self.session.run(["logits"], feed)[0]))


def onnx_int8(model: torch.nn.Module, folder: Path, threads: int) -> OnnxModel:
    """Export ``model`` (fp32) to ONNX and quantize it dynamically, per channel, same exclusions."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from shared.predict.engine.runtime import keeps_fp32

    fp32_file, int8_file = folder / "model.onnx", folder / "model-int8.onnx"
    ids = torch.ones((2, 16), dtype=torch.long)
    names = ["input_ids", "attention_mask", "token_type_ids"]
    axes = {name: {0: "batch", 1: "tokens"} for name in names} | {"logits": {0: "batch", 1: "tokens"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (ids, ids, torch.zeros_like(ids)), str(fp32_file), input_names=names,
            output_names=["logits"], dynamic_axes=axes, opset_version=17, dynamo=False,
        )  # fmt: skip
    import onnx

    graph = onnx.load(str(fp32_file)).graph
    weights = {initializer.name for initializer in graph.initializer}
    # Exported node names follow the module path: /bert/encoder/layer.0/attention/self/query/MatMul.
    # Attention's own products (no weight input) stay fp32 too, as in torch's dynamic quantization.
    excluded = [
        node.name
        for node in graph.node
        if node.op_type in ("MatMul", "Gemm")
        and (
            not weights & set(node.input)
            or keeps_fp32(node.name.strip("/").rsplit("/", 1)[0].replace("/", "."))
        )
    ]
    quantize_dynamic(
        str(fp32_file), str(int8_file), per_channel=True, weight_type=QuantType.QInt8,
        nodes_to_exclude=excluded, op_types_to_quantize=["MatMul", "Gemm"],
    )  # fmt: skip
    log(f"onnx-int8: {len(excluded)} MatMul nodes kept fp32")
    return OnnxModel(int8_file, threads)


def build(name: str, base: torch.nn.Module, folder: Path, threads: int) -> Any:
    """The model behind one variant, from the engine's fp32 model."""
    from shared.predict.engine.runtime import quantize_int8

    if name == "fp32":
        return base
    if name == "bf16":
        return copy.deepcopy(base).to(torch.bfloat16)
    if name == "int8":
        return quantize_int8(copy.deepcopy(base))
    if name == "int8-7bit":
        return quantize_int8(copy.deepcopy(base), full_range=False)
    if name == "int8-all":
        return _quantize_all_7bit(copy.deepcopy(base))
    if name == "onnx-int8":
        return onnx_int8(base, folder, threads)
    raise SystemExit(f"unknown variant {name!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="shared/predict/default_model")
    parser.add_argument("--split", default="eng.testb")
    parser.add_argument("--variants", default="fp32,bf16,int8,int8-7bit,int8-all,onnx-int8")
    parser.add_argument("--documents", type=int, default=-1, help="documents to score (-1 all, 0 none)")
    parser.add_argument("--sentences", type=int, default=-1, help="sentences to score (-1 all, 0 none)")
    parser.add_argument("--speed-sentences", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--search", type=int, default=0, help="per-layer sensitivity on the first N documents, then exit"
    )
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args(argv)

    from shared.core.config import get_settings
    from shared.predict.engine import EngineOptions, NerEngine
    from trainer.conll import read_documents
    from trainer.evaluation import evaluate_documents, evaluate_sentences
    from trainer.pipeline import quiet_libraries

    quiet_libraries()
    documents = read_documents(get_settings().conll_dir / args.split)
    sentences = [s for document in documents for s in document]
    speed_texts = [" ".join(s.tokens) for s in sentences[: args.speed_sentences]]
    scored_documents = documents if args.documents < 0 else documents[: args.documents]
    scored_sentences = sentences if args.sentences < 0 else sentences[: args.sentences]
    engine = NerEngine.load(args.model, EngineOptions(device="cpu", precision="fp32"))
    base, threads = engine.model, torch.get_num_threads()
    if args.search:
        print(search(engine, documents[: args.search]))
        return 0
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as folder:
        models = {name: build(name, base, Path(folder), threads) for name in names}
        for name, model in models.items():
            engine.model = model
            results[name] = {}
            if scored_sentences:
                results[name]["sentences"] = evaluate_sentences(engine, scored_sentences)["f1"]
            if scored_documents:
                results[name]["documents"] = evaluate_documents(engine, scored_documents)["f1"]
            log(f"{name}: {results[name]}")
        for name in names:
            results[name]["speed"] = 0.0
        for round_ in range(args.rounds):
            for name, model in models.items():
                engine.model = model
                engine.predict(speed_texts[:32])  # warm-up
                began = time.perf_counter()
                engine.predict(speed_texts)
                rate = len(speed_texts) / (time.perf_counter() - began)
                results[name]["speed"] = max(results[name]["speed"], rate)
            log(f"round {round_ + 1}: " + ", ".join(f"{n} {r['speed']:.0f}" for n, r in results.items()))
    markdown = report(results, args, len(scored_sentences), len(scored_documents), threads)
    print(markdown)
    if not args.no_write:
        from bench.report import write_section

        write_section(
            "precision", markdown, " ".join([COMMAND, *(argv if argv is not None else sys.argv[1:])])
        )
    return 0


def search(engine: Any, documents: list[Any]) -> str:
    """Document F1 of int8 with one encoder layer (or Linear kind) at a time left in fp32."""
    from shared.predict.engine.runtime import quantize_int8
    from trainer.evaluation import evaluate_documents

    base = engine.model
    layers = base.config.num_hidden_layers
    kinds = {
        "query": "query", "key": "key", "value": "value", "attention output": r"attention\.output\.dense",
        "FFN in": r"intermediate\.dense", "FFN out": r"\d\.output\.dense",
    }  # fmt: skip
    candidates: dict[str, Any] = {"fp32 (nothing quantized)": None, "nothing kept (classifier only)": ""}
    candidates |= {f"layer {i} kept": rf"\.layer\.{i}\." for i in range(layers)}
    candidates |= {f"{kind} kept, every layer": pattern for kind, pattern in kinds.items()}
    lines = [f"| int8 (8-bit activations), fp32 kept | document F1 ({len(documents)} documents) | vs fp32 |"]
    lines.append("|---|---|---|")
    fp32 = 0.0
    for label, pattern in candidates.items():
        if pattern is None:
            engine.model = base
        else:
            keep = re.compile(rf"(^|\.)classifier$|{pattern}" if pattern else r"(^|\.)classifier$")
            engine.model = quantize_int8(
                copy.deepcopy(base), full_range=True, keep_fp32=lambda n, k=keep: bool(k.search(n))
            )
        f1 = evaluate_documents(engine, documents)["f1"]
        fp32 = fp32 or f1
        lines.append(f"| {label} | {f1:.4f} | {100 * (f1 - fp32):+.2f} |")
        log(lines[-1])
    engine.model = base
    return "\n".join(lines)


def report(
    results: dict[str, dict[str, float]], args: argparse.Namespace, n_sent: int, n_doc: int, threads: int
) -> str:
    """The markdown table: F1 and its change vs fp32 per mode, sentences/s and its ratio to fp32."""
    base = results.get("fp32", {})
    lines = [
        f"| variant | F1 sentences ({n_sent}) | vs fp32 | F1 documents ({n_doc}) | vs fp32 | "
        f"sentences/s (best of {args.rounds}) | vs fp32 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        cells = [name]
        for mode in ("sentences", "documents"):
            if mode in r:
                change = f"{100 * (r[mode] - base[mode]):+.2f}" if mode in base else "-"
                cells += [f"{r[mode]:.4f}", change]
            else:
                cells += ["-", "-"]
        ratio = f"{r['speed'] / base['speed']:.2f}x" if base.get("speed") else "-"
        cells += [f"{r['speed']:.0f}", ratio]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        f"Model `{args.model}`, CoNLL-2003 `{args.split}`, {threads} torch threads; speed: one `predict` "
        f"call over the first {args.speed_sentences} sentences, variants alternating."
    )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
