"""Fixtures of the scale-out tests: a real S3-compatible server (moto's) started by the test."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from shared.cli.embedded_redis import free_port

S3_KEY = "testing"  # moto accepts any credentials; real ones are never needed here


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    process: subprocess.Popen[bytes]

    def create_bucket(self, name: str) -> None:
        import boto3

        client = boto3.client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1",
            aws_access_key_id=S3_KEY, aws_secret_access_key=S3_KEY,
        )  # fmt: skip
        client.create_bucket(Bucket=name)


def start_s3(host: str, log: Path) -> S3Server:
    """moto's standalone S3 server on ``host`` (a real HTTP server speaking the S3 protocol)."""
    port = free_port()
    handle = log.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", host, "-p", str(port)],
        stdout=handle, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    endpoint = f"http://{host}:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.get(endpoint, timeout=1)
            return S3Server(endpoint=endpoint, process=process)
        except httpx.HTTPError:
            if process.poll() is not None:
                break
            time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"moto's S3 server did not start:\n{log.read_text(errors='replace')[-3000:]}")


@pytest.fixture(scope="module")
def s3_server(log_dir: Path) -> Iterator[S3Server]:
    server = start_s3("127.0.0.1", log_dir / f"moto-{time.monotonic_ns()}.log")
    yield server
    server.process.terminate()
    server.process.wait(timeout=10)
