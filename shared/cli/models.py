"""``ner models export <version> <dir>``, ``ner models push <version> --repo owner/name [--private]`` and
``ner models import <folder or hub id> [--activate]``."""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shared.core.config import Settings
from shared.core.db import get_sessionmaker
from shared.core.errors import ServiceError
from shared.registry import importer
from shared.registry import service as registry

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")


def export_version(*, settings: Settings, version: int, out: Path, name: str | None = None) -> Path:
    """Write version ``version`` of the registry as a Hub model folder at ``out``."""
    with get_sessionmaker()() as session:
        row = registry.get_version(session=session, version=version)
        if row is None:
            known = [v.version for v in registry.list_versions(session=session)]
            raise ServiceError(f"no version {version} in the registry (versions: {known or 'none'})")
        session.expunge(row)
    from trainer.export import export_folder  # torch and transformers: only once there is work

    # A version in an artifact store is fetched into this node's cache (and checked) first.
    source = Path(registry.verify_folder(path=row.path, settings=settings))
    return export_folder(source=source, out=out, version=version, row=row, name=name)


def push_version(
    *,
    settings: Settings,
    version: int,
    repo_id: str,
    private: bool,
    token: str | None,
    create_repo: Callable[..., Any] | None = None,
    upload_folder: Callable[..., Any] | None = None,
) -> Any:
    """Export ``version`` to a temporary folder and upload it to ``repo_id`` on the Hub."""
    from trainer.export import push_folder

    if not REPO_ID.fullmatch(repo_id):
        raise ServiceError(f"--repo {repo_id!r}: expected owner/name")
    if not token:
        raise ServiceError("HF_TOKEN is not set: a Hugging Face token with write access is needed to push")
    if create_repo is None or upload_folder is None:
        import huggingface_hub

        create_repo = create_repo or huggingface_hub.create_repo
        upload_folder = upload_folder or huggingface_hub.upload_folder
    with tempfile.TemporaryDirectory(prefix="ner-export-") as tmp:
        folder = export_version(
            settings=settings, version=version, out=Path(tmp) / "model", name=repo_id.split("/")[1]
        )
        return push_folder(
            folder,
            repo_id=repo_id,
            token=token,
            private=private,
            create_repo=create_repo,
            upload_folder=upload_folder,
        )


def cmd_export(args: argparse.Namespace, settings: Settings) -> int:
    try:
        out = export_version(settings=settings, version=args.version, out=Path(args.dir))
    except ServiceError as exc:
        print(f"ner models export: {exc}", file=sys.stderr)
        return 1
    print(f"exported version {args.version} to {out}")
    return 0


def cmd_push(args: argparse.Namespace, settings: Settings) -> int:
    try:
        result = push_version(
            settings=settings,
            version=args.version,
            repo_id=args.repo,
            private=args.private,
            token=os.environ.get("HF_TOKEN"),
        )
    except ServiceError as exc:
        print(f"ner models push: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # the Hub unreachable, a refused token: one line, not a traceback
        print(f"ner models push: upload failed ({type(exc).__name__}: {str(exc)[:300]})", file=sys.stderr)
        return 1
    print(f"pushed version {args.version} to https://huggingface.co/{args.repo} ({result})")
    return 0


def import_source(
    *, settings: Settings, source: str, activate: bool, download: importer.Downloader | None = None
) -> importer.Imported:
    """Register a model folder or Hub id as a new version: loaded and run first, gate-scored when a
    gate set is configured; with ``activate``, made active."""
    from shared.predict.engine import NerEngine  # torch: only once there is work

    gate_set = None
    try:
        from trainer.evaluation import gate_set_from_settings

        gate_set = gate_set_from_settings(settings)
    except Exception as exc:  # no usable gate set: imported all the same, without gate scores
        print(f"ner models import: no gate scores ({str(exc)[:200]})", file=sys.stderr)
    with get_sessionmaker()() as session:
        imported = importer.import_model(
            session=session,
            artifacts_dir=settings.artifacts_dir,
            source=source,
            verify=importer.engine_verifier(NerEngine.load),
            activate=activate,
            redis_url=settings.redis_url,
            gate_set=gate_set,
            # Looked up at call time: tests replace the Hub (which they cannot reach) here.
            download=download or importer.hub_download,
            settings=settings,
        )
    assert imported is not None  # only a fixed version number (a first start) can be taken
    return imported


def cmd_import(args: argparse.Namespace, settings: Settings) -> int:
    try:
        imported = import_source(settings=settings, source=args.source, activate=args.activate)
    except ServiceError as exc:
        print(f"ner models import: {exc}", file=sys.stderr)
        return 1
    row = imported.version
    score = imported.decision.candidate_score if imported.decision else None
    gate_text = f", gate F1 {score['f1']:.3f}" if score else ""
    state = "active" if args.activate else "a candidate (activate it with POST /models/{v}/activate)"
    print(f"imported {args.source} as version {row.version}{gate_text}; it is {state}")
    return 0


def _version(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"not a version number: {value[:40]!r}")
    return int(value)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``ner models``."""
    parser = subparsers.add_parser(
        "models", help="import a model into the registry, export a version for the Hub, or push it"
    )
    sub = parser.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    export = sub.add_parser("export", help="write a version as a Hub / transformers model folder")
    export.add_argument("version", type=_version)
    export.add_argument("dir", help="the folder to write (new or empty)")
    export.set_defaults(handler=cmd_export)
    push = sub.add_parser("push", help="upload a version to the Hugging Face Hub (needs HF_TOKEN)")
    push.add_argument("version", type=_version)
    push.add_argument("--repo", required=True, help="owner/name of the Hub model repository")
    push.add_argument("--private", action="store_true", help="create the repository private")
    push.set_defaults(handler=cmd_push)
    imp = sub.add_parser(
        "import", help="register a model folder or Hugging Face model id as a new version (checked first)"
    )
    imp.add_argument("source", help="a model folder (config.json, model.safetensors, tokenizer) or a hub id")
    imp.add_argument("--activate", action="store_true", help="make it the active version at once")
    imp.set_defaults(handler=cmd_import)
