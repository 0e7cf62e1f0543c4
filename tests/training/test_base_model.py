"""Hub base models (issue 19): a pinned revision, and a size cap asked of the Hub before any download.

The Hub's servers cannot be reached here: a fake ``model_info`` (huggingface_hub.HfApi().model_info's
shape, the one allowed mock) stands for them. Everything else is the real code: the service checks,
the gateway over HTTP (in-process app) and the trainer's starting point.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx2  # huggingface_hub's HTTP client
import pytest
from fastapi.testclient import TestClient
from huggingface_hub.errors import RepositoryNotFoundError
from huggingface_hub.hf_api import RepoSibling
from sqlalchemy import select

from shared.core.config import Settings, get_settings
from shared.core.db import session_scope
from shared.core.tables import TrainingRun
from shared.training import service
from shared.training.errors import DataError
from shared.training.references import HubModelRef, check_hub_base_model, download_bytes

SHA = "0123456789abcdef0123456789abcdef01234567"
PINNED = f"someone/encoder@{SHA}"
MB = 1024**2


@dataclass
class FakeInfo:
    siblings: list[RepoSibling]
    sha: str = SHA


@dataclass
class FakeHub:
    """HfApi().model_info with a listing per repository; records every call it answers."""

    files: dict[str, list[tuple[str, int | None]]]
    calls: list[dict[str, Any]] = field(default_factory=list)
    unreachable: bool = False

    def __call__(self, repo_id: str, **kwargs: Any) -> FakeInfo:
        self.calls.append({"repo_id": repo_id, **kwargs})
        if self.unreachable:
            raise OSError("Name or service not known")
        if repo_id not in self.files:
            # What the Hub answers for an unknown repository or revision (its HTTP client's response).
            url = f"https://huggingface.co/api/models/{repo_id}/revision/{kwargs.get('revision')}"
            response = httpx2.Response(404, request=httpx2.Request("GET", url))
            raise RepositoryNotFoundError(f"404 {repo_id}", response=response)
        return FakeInfo([RepoSibling(rfilename=name, size=size) for name, size in self.files[repo_id]])


def _settings(**overrides: Any) -> Settings:
    return get_settings().model_copy(update=overrides)


# --- the pinned form ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "bigscience/bloom",  # a branch (main) could move under the run
        "bert-base-cased",
        "bigscience/bloom@main",
        "bigscience/bloom@v1.0",
        f"bigscience/bloom@{SHA[:12]}",  # abbreviated commits are refused too
        f"bigscience/bloom@{SHA.upper()}",
    ],
)
def test_a_hub_id_without_a_pinned_commit_is_refused_naming_the_field(value: str) -> None:
    settings = _settings(base_model_allow=[value])  # the allow-list does not lift the pin
    with pytest.raises(DataError, match=r"^base_model: .*pinned revision, 'owner/name@<40-hex"):
        service.check_base_model(value, settings=settings)


def test_the_pinned_form_parses_and_passes() -> None:
    assert HubModelRef.parse(PINNED) == HubModelRef("someone/encoder", SHA)
    assert HubModelRef.parse(f"bert-base-cased@{SHA}") == HubModelRef("bert-base-cased", SHA)
    for bad in ("../x@" + SHA, f"a/b/c@{SHA}", f"/etc@{SHA}", f"x@{SHA}@{SHA}", f".x/y@{SHA}"):
        assert HubModelRef.parse(bad) is None, bad
    service.check_base_model(PINNED, settings=_settings())  # no error: a pinned hub model
    service.check_base_model(get_settings().base_model, settings=_settings())  # the operator's own


# --- the size cap ---------------------------------------------------------------------------------


def test_the_size_counts_what_from_pretrained_fetches() -> None:
    files = [
        ("config.json", 700),
        ("tokenizer.json", 2 * MB),
        ("model.safetensors", 400 * MB),
        ("pytorch_model.bin", 400 * MB),  # safetensors win: never fetched
        ("tf_model.h5", 400 * MB),
        ("flax_model.msgpack", 400 * MB),
        ("onnx/model.onnx", 400 * MB),
    ]
    assert download_bytes(files) == 700 + 2 * MB + 400 * MB
    assert download_bytes([("config.json", 1), ("pytorch_model.bin", 10)]) == 11  # no safetensors
    assert download_bytes([("config.json", 1), ("model.safetensors", None)]) is None


def test_a_model_over_the_cap_is_refused_before_download_naming_field_and_setting() -> None:
    hub = FakeHub({"someone/encoder": [("config.json", 1000), ("model.safetensors", 3 * MB)]})
    with pytest.raises(DataError) as refused:
        check_hub_base_model(HubModelRef.parse(PINNED), max_bytes=2 * MB, model_info=hub)
    message = str(refused.value)
    assert message.startswith("base_model: someone/encoder@") and "NER_BASE_MODEL_MAX_BYTES" in message
    assert refused.value.status_code == 422
    # One metadata call, at the pinned revision, with file sizes asked for.
    assert hub.calls == [
        {"repo_id": "someone/encoder", "revision": SHA, "files_metadata": True, "timeout": 10}
    ]
    size = check_hub_base_model(HubModelRef.parse(PINNED), max_bytes=4 * MB, model_info=hub)
    assert size == 1000 + 3 * MB


def test_unknown_models_and_unlisted_sizes_are_refused() -> None:
    hub = FakeHub({"someone/sizeless": [("config.json", 10), ("model.safetensors", None)]})
    with pytest.raises(DataError, match="no such model or revision"):
        check_hub_base_model(HubModelRef.parse(PINNED), max_bytes=MB, model_info=hub)
    with pytest.raises(DataError, match="does not list its file sizes"):
        check_hub_base_model(HubModelRef.parse(f"someone/sizeless@{SHA}"), max_bytes=MB, model_info=hub)


def test_an_unreachable_hub_defers_to_the_trainer_which_refuses() -> None:
    hub = FakeHub({}, unreachable=True)
    settings = _settings(base_model_max_bytes=MB)
    # The gateway lets it through (the trainer asks again before downloading anything) ...
    service.check_base_model_size(PINNED, settings=settings, model_info=hub)
    # ... and the trainer, which would download, refuses.
    with pytest.raises(DataError, match="cannot be reached to check its size"):
        check_hub_base_model(HubModelRef.parse(PINNED), max_bytes=MB, model_info=hub)


def test_the_trainer_checks_the_size_before_loading_and_passes_the_revision(
    service_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from trainer import model as trainer_model

    monkeypatch.setenv("NER_BASE_MODEL_MAX_BYTES", str(MB))
    get_settings.cache_clear()
    try:
        big = FakeHub({"someone/encoder": [("model.safetensors", 2 * MB)]})
        with pytest.raises(DataError, match="NER_BASE_MODEL_MAX_BYTES"):
            trainer_model.load_starting_point(PINNED, data=None, case_feature=False, model_info=big)  # type: ignore[arg-type]
        small = FakeHub({"someone/encoder": [("model.safetensors", MB // 2)]})
        assert trainer_model.hub_source(PINNED, model_info=small) == ("someone/encoder", {"revision": SHA})
        # Local folders and the operator's own model are read as they are, without asking the Hub.
        assert trainer_model.hub_source("/some/folder", model_info=big) == ("/some/folder", {})
    finally:
        monkeypatch.delenv("NER_BASE_MODEL_MAX_BYTES")
        get_settings.cache_clear()


# --- over HTTP ------------------------------------------------------------------------------------


@pytest.fixture
def client(service_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    """The gateway app in-process, with the Hub's model_info faked and a 2 MB cap."""
    from huggingface_hub import HfApi

    from gateway.app import create_app

    hub = FakeHub({"someone/huge": [("config.json", 500), ("model.safetensors", 5 * MB)]})
    monkeypatch.setattr(HfApi, "model_info", lambda self, repo_id, **kwargs: hub(repo_id, **kwargs))
    monkeypatch.setenv("NER_BASE_MODEL_MAX_BYTES", str(2 * MB))
    get_settings.cache_clear()
    yield TestClient(create_app())
    monkeypatch.delenv("NER_BASE_MODEL_MAX_BYTES")
    get_settings.cache_clear()


@pytest.mark.parametrize(
    ("base_model", "needle"),
    [
        ("bigscience/bloom", "pinned revision"),
        ("bigscience/bloom@main", "pinned revision"),
        (f"someone/huge@{SHA}", "NER_BASE_MODEL_MAX_BYTES"),
        (f"someone/missing@{SHA}", "no such model or revision"),
    ],
)
def test_post_train_answers_422_naming_base_model(client: TestClient, base_model: str, needle: str) -> None:
    body = {"data": str(get_settings().conll_dir), "epochs": 1, "base_model": base_model}
    response = client.post("/train", json=body)  # NER_AUTH off: the caller is an admin
    assert response.status_code == 422, response.text
    assert "base_model" in response.text and needle in response.text
    with session_scope() as session:
        assert session.scalar(select(TrainingRun.id).where(TrainingRun.base_model == base_model)) is None
