"""One training run, from data references to a saved model folder (``ner train`` and the Celery task)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from shared.training.params import TrainParams
from shared.training.references import DataSpec
from trainer.data import LoadedData, load_data
from trainer.training import RunHooks, TrainResult, run_training


def quiet_libraries() -> None:
    """No progress bars, and no load report of the new classification head (it is expected)."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def run_pipeline(
    *,
    spec: DataSpec,
    params: TrainParams,
    base_model: str,
    roots: Sequence[Path] | None,
    cache_dir: Path,
    output_dir: Path,
    checkpoint_dir: Path,
    hooks: RunHooks,
    resume: bool = True,
    on_data: Callable[[LoadedData], None] | None = None,
) -> tuple[LoadedData, TrainResult]:
    """Load and check the data (``DataError`` names the file and line), then train; resumes when it can.

    ``roots=None`` reads any path (the user's own ``ner train``); a queued run passes the data roots.
    """
    quiet_libraries()
    data = load_data(
        spec,
        roots=roots,
        cache_dir=cache_dir,
        validation_fraction=params.validation_fraction,
        seed=params.seed,
    )
    if on_data is not None:
        on_data(data)
    result = run_training(
        data=data,
        base_model=base_model,
        params=params,
        output_dir=output_dir,
        checkpoint_dir=checkpoint_dir,
        hooks=hooks,
        resume=resume,
    )
    return data, result
