"""NER_PRECISION: which numeric mode the engine runs in, how it is chosen, and where it is reported."""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from pydantic import ValidationError

from gateway.app import create_app
from gateway.guard import parse_json
from shared.core.config import Settings, get_settings
from shared.core.db import reset_engine
from shared.predict.engine import EngineOptions, NerEngine
from shared.predict.engine.runtime import (
    FullRangeDynamicLinear,
    cpu_has_native_bf16,
    cpu_has_vnni,
    keeps_fp32,
    quantize_int8,
    resolve_precision,
)
from trainer.conll import read_conll

GOOGLE = "Google was founded by Larry Page and Sergey Brin in California."
CPU, CUDA = torch.device("cpu"), torch.device("cuda")


# --- choosing the precision -------------------------------------------------------------------


def test_auto_follows_the_hardware() -> None:
    assert resolve_precision("auto", CPU, native_bf16=True) == "bf16"
    assert resolve_precision("auto", CPU, native_bf16=False) == "fp32"
    assert resolve_precision("auto", CUDA, cuda_bf16=True) == "bf16"
    assert resolve_precision("auto", CUDA, cuda_bf16=False) == "fp16"


def test_an_explicit_precision_is_kept_and_int8_is_cpu_only() -> None:
    for precision in ("fp32", "bf16", "fp16", "int8"):
        assert resolve_precision(precision, CPU, native_bf16=False) == precision
    assert resolve_precision("fp32", CUDA, cuda_bf16=True) == "fp32"
    assert resolve_precision("int8", CUDA) == "fp16"  # dynamic quantization has no CUDA kernels
    with pytest.raises(ValueError, match="int4"):
        resolve_precision("int4", CPU)


def test_native_bf16_is_read_from_the_cpu_flags() -> None:
    assert cpu_has_native_bf16(frozenset({"avx2", "avx512f", "avx512_bf16"}))
    assert cpu_has_native_bf16(frozenset({"amx_bf16", "amx_tile"}))
    assert not cpu_has_native_bf16(frozenset({"avx2", "avx512f", "fma"}))
    flags = Path("/proc/cpuinfo").read_text()
    assert cpu_has_native_bf16() == ("avx512_bf16" in flags or "amx_bf16" in flags)


def test_settings_default_to_auto_and_keep_ner_quantize_as_an_alias(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NER_PRECISION", raising=False)
    monkeypatch.delenv("NER_QUANTIZE", raising=False)
    assert EngineOptions.from_settings(Settings()).requested_precision == "auto"
    monkeypatch.setenv("NER_QUANTIZE", "int8")
    assert EngineOptions.from_settings(Settings()).requested_precision == "int8"
    monkeypatch.setenv("NER_PRECISION", "int8")
    assert EngineOptions.from_settings(Settings()).requested_precision == "int8"
    monkeypatch.setenv("NER_PRECISION", "bf16")
    with pytest.raises(ValidationError, match="NER_PRECISION"):
        Settings()
    monkeypatch.delenv("NER_QUANTIZE")
    assert EngineOptions.from_settings(Settings()).requested_precision == "bf16"
    monkeypatch.setenv("NER_PRECISION", "fp8")
    with pytest.raises(ValidationError, match="precision"):
        Settings()


# --- the engine in each precision -------------------------------------------------------------


@pytest.fixture(scope="module")
def fp32(tiny_model_dir: Path) -> NerEngine:
    return NerEngine.load(tiny_model_dir, EngineOptions(precision="fp32"))


@pytest.fixture(scope="module")
def sentences() -> list[str]:
    return [" ".join(s.tokens) for s in read_conll(get_settings().conll_dir / "eng.testb", limit=150)]


def _spans(results: list) -> list[list[tuple[str, int, int]]]:  # type: ignore[type-arg]
    return [[(e.entity_group, e.start, e.end) for e in entities] for entities in results]


def _agreement(a: list, b: list) -> float:  # type: ignore[type-arg]
    """Share of entities (type and span) found by both, over those found by either."""
    left = {(i, span) for i, spans in enumerate(_spans(a)) for span in spans}
    right = {(i, span) for i, spans in enumerate(_spans(b)) for span in spans}
    return len(left & right) / max(1, len(left | right))


def test_bf16_casts_the_weights_and_agrees_with_fp32(
    tiny_model_dir: Path, fp32: NerEngine, sentences: list[str]
) -> None:
    engine = NerEngine.load(tiny_model_dir, EngineOptions(device="cpu", precision="bf16"))
    assert engine.precision == "bf16"
    assert {p.dtype for p in engine.model.parameters()} == {torch.bfloat16}
    expected, got = fp32.predict(sentences), engine.predict(sentences)
    assert sum(map(len, expected)) > 100
    assert _agreement(expected, got) > 0.97
    for mine, theirs in zip(got, expected, strict=True):
        for e in mine:
            assert isinstance(e.score, float) and 0.0 <= e.score <= 1.0  # fp32 numbers, not bf16 tensors
        common = {(x.start, x.end): x.score for x in theirs}
        for e in mine:
            if (e.start, e.end) in common:
                assert e.score == pytest.approx(common[(e.start, e.end)], abs=0.05)


def test_int8_keeps_the_classifier_and_first_layers_in_fp32_and_quantizes_the_rest(
    tiny_model_dir: Path, fp32: NerEngine, sentences: list[str]
) -> None:
    engine = NerEngine.load(tiny_model_dir, EngineOptions(precision="int8"))
    assert engine.precision == "int8"
    modules = dict(engine.model.named_modules())
    kept = {name for name, m in modules.items() if type(m) is torch.nn.Linear}
    layers = engine.model.config.num_hidden_layers
    # The first encoder layer (q, k, v, attention out, FFN in and out), the second layer's attention
    # (q, k, v, out) and the classifier stay fp32.
    first = {n for n in kept if ".encoder.layer.0." in n}
    second = {n for n in kept if ".encoder.layer.1.attention." in n}
    assert kept == {"classifier"} | first | second
    assert len(first) == 6 and len(second) == 4
    assert all(modules[n].weight.dtype == torch.float32 for n in kept)
    quantized = [name for name, m in modules.items() if isinstance(m, torch.ao.nn.quantized.dynamic.Linear)]
    assert len(quantized) == 6 * (layers - 1) - 4  # the rest: q, k, v, out, FFN in and out
    assert not any(".layer.0." in name or ".layer.1.attention." in name for name in quantized)
    assert "bert.encoder.layer.1.intermediate.dense" in quantized
    # 8-bit activations exactly where the CPU has VNNI (torch's 7-bit default elsewhere).
    full_range = {type(modules[name]) is FullRangeDynamicLinear for name in quantized}
    assert full_range == {cpu_has_vnni()}
    # The tests' tiny model is briefly trained (its margins are thin): most entities, not all, agree.
    assert _agreement(fp32.predict(sentences), engine.predict(sentences)) > 0.7


def test_which_layers_int8_keeps_in_fp32_is_decided_by_name() -> None:
    assert keeps_fp32("classifier") and keeps_fp32("bert.encoder.layer.0.output.dense")
    assert keeps_fp32("roberta.encoder.layer.0.attention.self.query")
    assert keeps_fp32("distilbert.transformer.layer.0.attention.q_lin")
    assert keeps_fp32("bert.encoder.layer.1.attention.output.dense")
    assert not keeps_fp32("bert.encoder.layer.1.output.dense")
    assert not keeps_fp32("bert.encoder.layer.2.attention.self.query")
    assert not keeps_fp32("bert.encoder.layer.10.attention.self.query")  # layer 10 is not layer 0
    assert not keeps_fp32("bert.pooler.dense")
    assert cpu_has_vnni(frozenset({"avx512f", "avx512_vnni"})) and cpu_has_vnni(frozenset({"avx_vnni"}))
    assert not cpu_has_vnni(frozenset({"avx2", "avx512f"}))


def test_full_range_activations_round_half_as_coarsely_as_torchs_default() -> None:
    torch.manual_seed(0)
    layer = torch.nn.Linear(64, 32)
    x = torch.randn(40, 64)
    x[:, 3] *= 20  # one large channel sets the per-tensor activation scale, as in a real encoder
    expected = layer(x)
    errors = {}
    for full in (True, False):
        model = quantize_int8(torch.nn.Sequential(copy.deepcopy(layer)), full_range=full)
        assert (type(model[0]) is FullRangeDynamicLinear) == full
        with torch.inference_mode():
            errors[full] = (model(x) - expected).abs().mean().item()
    if cpu_has_vnni():  # without VNNI fbgemm may saturate 8-bit products; the engine never uses them there
        assert errors[True] < 0.75 * errors[False], errors


def test_the_old_quantize_option_still_means_int8(tiny_model_dir: Path) -> None:
    engine = NerEngine.load(tiny_model_dir, EngineOptions(quantize="int8"))
    assert engine.precision == "int8"


def test_auto_on_this_machine_runs_what_the_hardware_allows(tiny_model_dir: Path) -> None:
    engine = NerEngine.load(tiny_model_dir, EngineOptions(device="cpu", precision="auto"))
    assert engine.precision == ("bf16" if cpu_has_native_bf16() else "fp32")
    [entities] = engine.predict([GOOGLE])
    assert {e.word for e in entities} >= {"Larry Page", "Sergey Brin", "California"}


# --- where it is reported -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def bf16_app(service_env: dict[str, str], tiny_model_dir: Path) -> Iterator[TestClient]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NER_MODEL", str(tiny_model_dir))
        patch.setenv("NER_PRECISION", "bf16")
        get_settings.cache_clear()
        reset_engine()
        try:
            with TestClient(create_app()) as client:
                deadline = time.monotonic() + 120
                while client.get("/readyz").json()["checks"]["model"] != "ok":
                    assert time.monotonic() < deadline, client.get("/readyz").json()
                    time.sleep(0.1)
                yield client
        finally:
            get_settings.cache_clear()
            reset_engine()


def test_readyz_models_and_metrics_report_the_precision_and_packing(bf16_app: TestClient) -> None:
    ready = bf16_app.get("/readyz").json()  # auth off: everyone is admin
    assert ready["model"]["precision"] == "bf16" and ready["model"]["device"] == "cpu"
    assert ready["model"]["packed"] is True  # packed forward passes (NER_ENGINE_PACKING, on by default)
    metrics = bf16_app.get("/metrics").text
    info = [line for line in metrics.splitlines() if line.startswith("ner_model_info{")]
    assert len(info) == 1 and 'precision="bf16"' in info[0] and 'packed="True"' in info[0], info
    answer = bf16_app.post("/predict/", json={"text": GOOGLE})
    assert answer.status_code == 200, answer.text
    assert {e["word"] for e in answer.json()["entities"]} >= {"Larry Page", "California"}


# --- the lean request path ----------------------------------------------------------------------


def test_json_bodies_parse_as_the_standard_parser_does() -> None:
    for body in (
        b'{"text": "Google", "n": [1, 2.5, -3e2, true, null]}',
        b'{"text": "\\ud800"}',  # a lone surrogate: orjson refuses it, json takes it
        b'{"learning_rate": NaN, "x": Infinity}',
        b'{"cursor": [1000000000000000000000000000000]}',
        '{"text": "Zürich 東京 😀"}'.encode(),
    ):
        expected, got = json.loads(body), parse_json(body)
        assert json.dumps(got, sort_keys=True) == json.dumps(expected, sort_keys=True)
    with pytest.raises(json.JSONDecodeError):
        parse_json(b'{"text": ')


def test_a_large_body_is_parsed_while_the_loop_keeps_answering(bf16_app: TestClient) -> None:
    text = "Larry Page visited Zürich. " * 3000  # ~81 KB: over the off-loop threshold
    response = bf16_app.post(
        "/predict/", content=json.dumps({"text": text}).encode(), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 200, response.text[:300]
    entities = response.json()["entities"]
    assert all(e["word"] == text[e["start"] : e["end"]] for e in entities)  # the text arrived whole
    assert sum(e["word"] == "Larry Page" for e in entities) > 500
    broken = bf16_app.post(
        "/predict/", content=b'{"text": "' + b"a" * 100_000, headers={"Content-Type": "application/json"}
    )
    assert broken.status_code == 422 and "JSON" in broken.text
