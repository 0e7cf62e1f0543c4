"""``ner models export`` / ``push``: a folder the Hub and ``transformers`` accept, with the service's answers.

The exported model here needs the word-case feature (token-type ids grown to the case classes,
perturbed so that case changes the answer): ``transformers.pipeline(model=folder,
trust_remote_code=True)`` must still give exactly the entities ``/predict/`` gives.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from huggingface_hub import ModelCard
from transformers import AutoModelForTokenClassification, AutoTokenizer, pipeline

from shared.cli import models as cli_models
from shared.core.config import get_settings
from shared.core.db import get_sessionmaker
from shared.core.errors import ServiceError
from shared.predict import casing
from shared.registry import service as registry
from shared.registry.manifest import write_manifest
from tests.interop.annotations import entity_sentences, sentence_spans
from tests.support.processes import ServiceProcess, start_gateway, wait_until
from trainer.model import _enable_case_feature

METRICS = {
    "test": {
        "precision": 0.61,
        "recall": 0.58,
        "f1": 0.5947,
        "per_type": {
            "LOC": {"precision": 0.7, "recall": 0.66, "f1": 0.6794, "support": 40},
            "PER": {"precision": 0.65, "recall": 0.6, "f1": 0.624, "support": 30},
            "ORG": {"precision": 0.4, "recall": 0.35, "f1": 0.3733, "support": 20},
        },
    }
}


def _case_model(tiny_model_dir: Path, out: Path) -> Path:
    """The tiny model with the case feature; the new case rows are perturbed so case matters."""
    model = AutoModelForTokenClassification.from_pretrained(tiny_model_dir)
    assert _enable_case_feature(model)
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        rows = model.base_model.embeddings.token_type_embeddings.weight
        rows[casing.TITLE :] += 0.5 * torch.randn(rows[casing.TITLE :].shape, generator=generator)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    write_manifest(out)
    return out


@pytest.fixture(scope="module")
def case_version(service_env: dict[str, str], tiny_model_dir: Path) -> tuple[int, Path]:
    """A registry version (a candidate: it does not change what other tests are served)."""
    settings = get_settings()
    with get_sessionmaker()() as session:
        number = registry.next_version_number(session=session)
        folder = _case_model(tiny_model_dir, Path(settings.artifacts_dir) / f"export-test-v{number}")
        registry.register_version(
            session=session,
            version=number,
            path=str(folder),
            base_model="sentence-transformers/all-MiniLM-L6-v2",
            data_hash="0" * 64,
            data_ref={
                "train": str(settings.conll_dir / "eng.train"),
                "test": str(settings.conll_dir / "eng.testb"),
            },
            params={"epochs": 1},
            metrics=METRICS,
            labels=list(json.loads((folder / "config.json").read_text())["id2label"].values()),
            val_f1=None,
            test_f1=METRICS["test"]["f1"],
        )
        session.commit()
    return number, folder


@pytest.fixture(scope="module")
def served(case_version: tuple[int, Path], service_env: dict[str, str], log_dir: Path) -> Iterator[str]:
    """``ner serve`` answering with the same folder (as NER_MODEL)."""
    proc: ServiceProcess
    # fp32 as the transformers pipeline runs it: scores are compared to 4 decimals (NER_PRECISION=auto
    # would run bf16 on CPUs that have it).
    env = {**service_env, "NER_MODEL": str(case_version[1]), "NER_PRECISION": "fp32"}
    proc, base_url = start_gateway(env, log_dir)
    wait_until(lambda: httpx.get(f"{base_url}/v2/health/ready").status_code == 200, 120, "the model", proc)
    yield base_url
    proc.stop()


def _export(version: int, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shared.cli", "models", "export", str(version), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def exported(case_version: tuple[int, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The version exported by the real command, ``ner models export <version> <dir>``."""
    out = tmp_path_factory.mktemp("export") / "hub-model"
    result = _export(case_version[0], out)
    assert result.returncode == 0, result.stderr
    assert f"exported version {case_version[0]}" in result.stdout
    return out


def test_export_loads_in_transformers_pipeline_with_the_services_entities(
    exported: Path, served: str
) -> None:
    out = exported
    config = json.loads((out / "config.json").read_text())
    assert config[casing.CONFIG_KEY] == casing.CONFIG_VALUE and "B-PER" in config["id2label"].values()
    assert {"model.safetensors", "tokenizer.json", "README.md", "ner_pipeline.py"} <= {
        p.name for p in out.iterdir()
    }
    assert "manifest.json" not in {p.name for p in out.iterdir()}

    ner = pipeline(model=str(out), trust_remote_code=True)
    texts = [sentence_spans(s)[0] for s in entity_sentences(get_settings().conll_dir / "eng.testb", 8)]
    texts.append("Google was founded by Larry Page and Sergey Brin in California.")
    # Longer than one window (256 tokens): the pipeline windows it exactly as the engine does.
    long_sentences = entity_sentences(get_settings().conll_dir / "eng.testb", 40, max_words=40)
    texts.append("\n".join(sentence_spans(s)[0] for s in long_sentences))
    assert len(AutoTokenizer.from_pretrained(out)(texts[-1])["input_ids"]) > 600
    differs_without_case = False
    for text in texts:
        expected = httpx.post(f"{served}/predict/", json={"text": text}, timeout=30).json()["entities"]
        got = ner(text)
        assert [(e["word"], e["entity_group"], e["start"], e["end"]) for e in got] == [
            (e["word"], e["entity_group"], e["start"], e["end"]) for e in expected
        ], text
        assert [round(e["score"], 4) for e in got] == [round(e["score"], 4) for e in expected]
        lowered = ner(text.lower())
        differs_without_case |= [(e["entity_group"], e["start"]) for e in lowered] != [
            (e["entity_group"], e["start"]) for e in got
        ]
    assert differs_without_case  # the case feature changes answers: the pipeline really feeds it


def test_card_metadata_parses_with_huggingface_hub(exported: Path) -> None:
    card = ModelCard.load(exported / "README.md")
    assert card.data.pipeline_tag == "token-classification"
    assert card.data.datasets == ["conll2003"]
    assert card.data.base_model == "sentence-transformers/all-MiniLM-L6-v2"
    scores = {result.metric_name: result.metric_value for result in card.data.eval_results}
    assert scores == {
        "F1 (micro, entity level)": 0.5947,
        "F1 LOC": 0.6794,
        "F1 ORG": 0.3733,
        "F1 PER": 0.624,
    }
    assert {result.dataset_split for result in card.data.eval_results} == {"test"}
    assert "trust_remote_code=True" in card.text


def test_export_refuses_an_unknown_version_or_a_used_folder(
    case_version: tuple[int, Path], tmp_path: Path
) -> None:
    result = _export(9999, tmp_path / "x")  # the command: one line on stderr, exit status 1
    assert result.returncode == 1 and "no version 9999" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "x").exists()
    used = tmp_path / "used"
    used.mkdir()
    (used / "keep.txt").write_text("mine")
    with pytest.raises(ServiceError, match="not an empty folder"):
        cli_models.export_version(settings=get_settings(), version=case_version[0], out=used)
    assert [p.name for p in used.iterdir()] == ["keep.txt"]


def test_push_uploads_exactly_the_exported_folder(case_version: tuple[int, Path], tmp_path: Path) -> None:
    version, _folder = case_version
    reference = tmp_path / "reference"
    cli_models.export_version(settings=get_settings(), version=version, out=reference, name="ner-test")
    calls: list[tuple[str, dict]] = []

    def create_repo(**kwargs: object) -> str:
        calls.append(("create_repo", kwargs))
        return f"https://huggingface.co/{kwargs['repo_id']}"

    def upload_folder(**kwargs: object) -> str:
        folder = Path(str(kwargs["folder_path"]))
        uploaded = {
            p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
        }
        calls.append(("upload_folder", {**kwargs, "files": uploaded}))
        return "commit-url"

    with pytest.raises(ServiceError, match="HF_TOKEN"):
        cli_models.push_version(
            settings=get_settings(), version=version, repo_id="me/ner-test", private=True, token=None,
            create_repo=create_repo, upload_folder=upload_folder,
        )  # fmt: skip
    with pytest.raises(ServiceError, match="owner/name"):
        cli_models.push_version(
            settings=get_settings(), version=version, repo_id="../x", private=True, token="t",
            create_repo=create_repo, upload_folder=upload_folder,
        )  # fmt: skip
    assert calls == []
    result = cli_models.push_version(
        settings=get_settings(), version=version, repo_id="me/ner-test", private=True, token="hf_secret",
        create_repo=create_repo, upload_folder=upload_folder,
    )  # fmt: skip
    assert result == "commit-url"
    (name, create), (name2, upload) = calls
    assert name == "create_repo"
    assert create == {"repo_id": "me/ner-test", "token": "hf_secret", "private": True, "repo_type": "model",
                      "exist_ok": True}  # fmt: skip
    assert name2 == "upload_folder" and upload["repo_id"] == "me/ner-test" and upload["token"] == "hf_secret"
    expected = {
        p.relative_to(reference).as_posix(): p.read_bytes() for p in reference.rglob("*") if p.is_file()
    }
    assert upload["files"] == expected
    shutil.rmtree(reference)
