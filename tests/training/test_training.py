"""The training loop on a few hundred CoNLL sentences: epochs, checkpoints, resume, cancel, bad bases."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForTokenClassification, AutoTokenizer

from shared.core.config import get_settings
from shared.predict import casing
from shared.training.params import TrainParams
from shared.training.references import DataSpec
from tests.support.conll_subset import conll_subset, write_conll
from trainer.data import LoadedData, load_data
from trainer.metrics import EpochMetrics, format_epoch_table
from trainer.model import BaseModelError
from trainer.training import RunHooks, TrainResult, run_training

pytestmark = pytest.mark.slow

PARAMS = TrainParams(epochs=2, batch_size=16, max_length=64, learning_rate=3e-4, warmup_ratio=0.0)


@pytest.fixture(scope="module")
def small_data(tmp_path_factory: pytest.TempPathFactory) -> LoadedData:
    folder = conll_subset(
        get_settings().conll_dir, tmp_path_factory.mktemp("conll"), train=160, validation=40
    )
    spec = DataSpec(str(folder / "train.conll"), str(folder / "dev.conll"), str(folder / "test.conll"))
    return load_data(spec, roots=[folder], cache_dir=folder / "cache")


class Recorder:
    """Hooks that remember what the loop reported."""

    def __init__(self, fail_after_step: int | None = None, stop: bool = False) -> None:
        self.starts: list[tuple[int, int]] = []
        self.steps: list[int] = []
        self.epochs: list[EpochMetrics] = []
        self.fail_after_step = fail_after_step
        self.stop = stop

    def progress(self, step: int, total: int) -> None:
        self.steps.append(step)
        if self.fail_after_step is not None and step > self.fail_after_step:
            raise KeyboardInterrupt("simulated kill")  # not an Exception: nothing may swallow it

    def hooks(self) -> RunHooks:
        return RunHooks(
            on_start=lambda total, resumed: self.starts.append((total, resumed)),
            on_progress=self.progress,
            on_epoch=self.epochs.append,
            should_stop=lambda: self.stop,
            stop_check_seconds=0.0,
        )


@pytest.fixture(scope="module")
def trained(
    small_data: LoadedData, tmp_path_factory: pytest.TempPathFactory
) -> tuple[TrainResult, Recorder, Path]:
    folder = tmp_path_factory.mktemp("run")
    recorder = Recorder()
    result = run_training(
        data=small_data,
        base_model=get_settings().base_model,
        params=PARAMS,
        output_dir=folder / "model",
        checkpoint_dir=folder / "checkpoints",
        hooks=recorder.hooks(),
    )
    return result, recorder, folder


def test_every_epoch_is_evaluated_and_checkpointed(trained: tuple[TrainResult, Recorder, Path]) -> None:
    result, recorder, folder = trained
    assert [row.epoch for row in result.epochs] == [1, 2]
    assert [row.epoch for row in recorder.epochs] == [1, 2]
    total = recorder.starts[0][0]
    assert recorder.starts == [(total, 0)] and recorder.steps[-1] == total == 2 * 10  # 160 sentences / 16
    for row in result.epochs:
        assert row.train_loss is not None and row.train_loss > 0 and row.val_loss is not None
        assert 0 <= row.precision <= 1 and 0 <= row.recall <= 1 and 0 < row.accuracy <= 1
    # Training lowers the loss on this data (a tiny but real fit).
    assert result.epochs[1].train_loss < result.epochs[0].train_loss
    assert sorted(p.name for p in (folder / "checkpoints").glob("checkpoint-*"))  # per-epoch checkpoints
    table = format_epoch_table(result.epochs)
    assert table.splitlines()[0].split(" | ")[:3] == ["Epoch", "Training Loss", "Validation Loss"]
    assert result.tokens_per_second > 0


def test_test_metrics_per_type_and_confusion_matrix(trained: tuple[TrainResult, Recorder, Path]) -> None:
    result, _, _ = trained
    assert result.test is not None
    assert set(result.test["per_type"]) <= {"PER", "ORG", "LOC", "MISC"} and result.test["per_type"]
    confusion = result.test["confusion"]
    assert confusion["labels"] == result.labels
    words = sum(sum(row) for row in confusion["matrix"])
    correct = sum(confusion["matrix"][i][i] for i in range(len(result.labels)))
    assert correct / words == pytest.approx(result.test["accuracy"])


def test_model_folder_loads_with_plain_auto_classes(trained: tuple[TrainResult, Recorder, Path]) -> None:
    result, _, _ = trained
    assert result.model_dir is not None and (result.model_dir / "model.safetensors").exists()
    model = AutoModelForTokenClassification.from_pretrained(result.model_dir)
    tokenizer = AutoTokenizer.from_pretrained(result.model_dir)
    assert [model.config.id2label[i] for i in range(model.config.num_labels)] == result.labels
    assert casing.uses_case_feature(model.config) and model.config.type_vocab_size == casing.NUM_CASE_TYPES
    text = "Kofi Annan visited Ghana."
    encoded = tokenizer(text, return_offsets_mapping=True, return_tensors="pt")
    type_ids = torch.tensor([casing.case_type_ids(text, encoded.pop("offset_mapping")[0].tolist())])
    assert type_ids[0].tolist()[1] == casing.TITLE
    with torch.no_grad():
        logits = model(**{**encoded, "token_type_ids": type_ids}).logits
    assert logits.shape[-1] == len(result.labels)


def test_a_killed_run_resumes_from_its_last_checkpoint(small_data: LoadedData, tmp_path: Path) -> None:
    kwargs = {
        "data": small_data,
        "base_model": get_settings().base_model,
        "params": PARAMS,
        "output_dir": tmp_path / "model",
        "checkpoint_dir": tmp_path / "checkpoints",
    }
    first = Recorder(fail_after_step=10)  # dies in epoch 2, after epoch 1's checkpoint
    with pytest.raises(KeyboardInterrupt):
        run_training(**kwargs, hooks=first.hooks())
    assert [row.epoch for row in first.epochs] == [1]
    second = Recorder()
    result = run_training(**kwargs, hooks=second.hooks())
    assert second.starts == [(20, 10)]  # resumed at the epoch boundary, not from step 0
    assert min(second.steps) == 11
    assert [row.epoch for row in result.epochs] == [1, 2]  # epoch 1 came back from the checkpoint
    assert result.epochs[0] == first.epochs[0]
    assert result.model_dir is not None


def test_a_cancelled_run_stops_without_a_model(small_data: LoadedData, tmp_path: Path) -> None:
    recorder = Recorder(stop=True)
    result = run_training(
        data=small_data,
        base_model=get_settings().base_model,
        params=PARAMS,
        output_dir=tmp_path / "model",
        checkpoint_dir=tmp_path / "checkpoints",
        hooks=recorder.hooks(),
    )
    assert result.cancelled and result.model_dir is None
    assert max(recorder.steps) < 10 and recorder.epochs == []
    assert not (tmp_path / "model").exists()


def test_labels_must_match_the_head_of_a_checkpoint_being_continued(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from trainer.conll import Sentence

    train = write_conll(
        tmp_path / "train.conll",
        [
            Sentence(["Kofi", "Annan"], ["B-PER", "I-PER"]),
            Sentence(["Acme", "Widget"], ["B-PRODUCT", "I-PRODUCT"]),
        ],
    )
    data = load_data(DataSpec(str(train), str(train)), roots=None, cache_dir=tmp_path / "cache")
    recorder = Recorder()
    with pytest.raises(BaseModelError) as error:
        run_training(
            data=data,
            base_model=str(tiny_model_dir),
            params=PARAMS,
            output_dir=tmp_path / "model",
            checkpoint_dir=tmp_path / "checkpoints",
            hooks=recorder.hooks(),
        )
    assert f"{train}:4: tag 'B-PRODUCT' is not in the label set of base model" in str(error.value)
    assert recorder.starts == []  # failed before any training step


def test_an_unknown_base_model_fails_before_training(small_data: LoadedData, tmp_path: Path) -> None:
    recorder = Recorder()
    with pytest.raises(BaseModelError, match="unknown base model"):
        run_training(
            data=small_data,
            base_model=str(tmp_path / "no-such-model"),
            params=PARAMS,
            output_dir=tmp_path / "model",
            checkpoint_dir=tmp_path / "checkpoints",
            hooks=recorder.hooks(),
        )
    assert recorder.starts == []


def test_continuing_a_checkpoint_keeps_its_label_order(tiny_model_dir: Path, small_data: LoadedData) -> None:
    from trainer.model import check_labels, load_base_config

    config = load_base_config(str(tiny_model_dir))
    labels, continuing = check_labels(str(tiny_model_dir), config, small_data)
    head = json.loads((tiny_model_dir / "config.json").read_text())["id2label"]
    assert continuing and labels == [head[str(i)] for i in range(len(head))]
