"""Separate "hosts" on one machine: network namespaces on a bridge, and the services they share.

Each host is a network namespace with one veth on a bridge of the test's own; the root namespace
holds the bridge address, where the test's PostgreSQL (a private cluster), Redis, S3 server and a
relay to RabbitMQ listen. Processes of different hosts share no folder: each gets its own state,
cache and data folders, so artifacts can only travel through the artifact store.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.processes import ServiceProcess, wait_until


def _ip(*args: str, netns: str | None = None) -> None:
    argv = ["ip", "netns", "exec", netns, "ip", *args] if netns else ["ip", *args]
    subprocess.run(argv, check=True, capture_output=True, timeout=30)


def netns_unavailable() -> str | None:
    """Why namespaces cannot be built here (not root, no `ip`, not permitted); None when they can."""
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = f"nerprobe{uuid.uuid4().hex[:6]}"
    result = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        return f"`ip netns add` is not permitted here: {result.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=30)
    return None


@dataclass
class Network:
    """A bridge in the root namespace and one namespace per host, all removed by ``close``."""

    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    subnet: str = field(default_factory=lambda: f"10.{random.randint(100, 250)}.{random.randint(0, 255)}")
    hosts: dict[str, str] = field(default_factory=dict)  # name -> address
    _namespaces: list[str] = field(default_factory=list)
    _links: list[str] = field(default_factory=list)

    @property
    def bridge(self) -> str:
        return f"nerbr{self.tag}"

    @property
    def gateway_ip(self) -> str:
        """The root namespace's address on the bridge: where the shared services listen."""
        return f"{self.subnet}.1"

    def open(self) -> Network:
        _ip("link", "add", self.bridge, "type", "bridge")
        self._links.append(self.bridge)
        _ip("addr", "add", f"{self.gateway_ip}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        return self

    def namespace(self, host: str) -> str:
        return f"ner-{self.tag}-{host}"

    def add_host(self, host: str) -> str:
        """A namespace with loopback and one address on the bridge; returns the address."""
        index = len(self.hosts) + 10
        ns, outer, inner = self.namespace(host), f"nv{self.tag}{index}", f"ni{self.tag}{index}"
        address = f"{self.subnet}.{index}"
        _ip("netns", "add", ns)
        self._namespaces.append(ns)
        _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
        self._links.append(outer)
        _ip("link", "set", inner, "netns", ns)
        _ip("link", "set", outer, "master", self.bridge)
        _ip("link", "set", outer, "up")
        _ip("addr", "add", f"{address}/24", "dev", inner, netns=ns)
        _ip("link", "set", inner, "up", netns=ns)
        _ip("link", "set", "lo", "up", netns=ns)
        self.hosts[host] = address
        return address

    def close(self) -> None:
        for ns in reversed(self._namespaces):
            # Anything still running in the namespace is the test's: stop it before removing it.
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
            for pid in pids:
                with suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), 9)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        for link in reversed(self._links):
            subprocess.run(["ip", "link", "del", link], capture_output=True)


def free_port_on(address: str) -> int:
    with socket.socket() as sock:
        sock.bind((address, 0))
        return sock.getsockname()[1]


@contextmanager
def private_postgres(address: str) -> Iterator[str]:
    """A PostgreSQL cluster of the test's own (initdb, run as the postgres user) on ``address``;
    yields the URL of its database ``ner``."""
    binaries = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not binaries:
        raise RuntimeError("initdb is not installed")
    bindir = binaries[-1].parent
    root = Path(tempfile.mkdtemp(prefix="ner-pg-"))
    root.chmod(0o755)
    data = root / "data"
    shutil.chown(root, "postgres", "postgres")
    port = free_port_on(address)

    def as_postgres(*argv: str) -> None:
        argv = ("runuser", "-u", "postgres", "--", *argv)
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{argv[4]} failed: {done.stderr or done.stdout}")

    try:
        as_postgres(str(bindir / "initdb"), "-D", str(data), "--auth=trust", "-U", "postgres", "-E", "UTF8")
        # The hosts connect from the bridge's subnet: trust it as initdb trusts loopback.
        subnet = address.rsplit(".", 1)[0] + ".0/24"
        with (data / "pg_hba.conf").open("a") as hba:
            hba.write(f"host all all {subnet} trust\n")
        options = f"-c listen_addresses={address} -p {port} -k {root} -c fsync=off -c max_connections=200"
        as_postgres(
            str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "log"), "-w", "start"
        )
        as_postgres(str(bindir / "createdb"), "-h", address, "-p", str(port), "-U", "postgres", "ner")
        yield f"postgresql+psycopg://postgres@{address}:{port}/ner"
    finally:
        subprocess.run(
            [
                "runuser",
                "-u",
                "postgres",
                "--",
                str(bindir / "pg_ctl"),
                "-D",
                str(data),
                "-m",
                "immediate",
                "stop",
            ],
            capture_output=True,
        )
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def private_redis(address: str) -> Iterator[str]:
    """A redis-server of the test's own on ``address`` (append-only, as a production broker)."""
    from shared.cli.embedded_redis import redis_answers, redis_executable

    folder = Path(tempfile.mkdtemp(prefix="ner-redis-"))
    port = free_port_on(address)
    process = subprocess.Popen(
        [redis_executable(), "--bind", address, "--port", str(port), "--dir", str(folder),
         "--appendonly", "yes", "--save", ""],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"redis://{address}:{port}/0"
    try:
        wait_until(lambda: redis_answers(url, timeout=0.2), 30, "the test's redis-server")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)


class TcpRelay:
    """Accepts on ``listen`` and relays each connection to ``target``: lets the namespaces reach
    a server that listens on the root namespace's loopback only (RabbitMQ here). A connection
    closed on one side is closed on the other, so a killed worker's broker connection ends."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int]) -> None:
        self.target = target
        self.server = socket.create_server(listen)
        self.port = self.server.getsockname()[1]
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True, name="relay").start()

    def _accept(self) -> None:
        self.server.settimeout(0.5)
        while not self._stop.is_set():
            try:
                client, _ = self.server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        source.settimeout(None)
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                with suppress(OSError):
                    sock.close()

    def close(self) -> None:
        self._stop.set()
        self.server.close()


@contextmanager
def rabbitmq_vhost() -> Iterator[str]:
    """A vhost of the test's own on the machine's RabbitMQ (guest); deleted afterwards."""
    vhost = f"ner-test-{uuid.uuid4().hex[:10]}"
    subprocess.run(["rabbitmqctl", "add_vhost", vhost], check=True, capture_output=True, timeout=60)
    try:
        subprocess.run(
            ["rabbitmqctl", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        yield vhost
    finally:
        subprocess.run(["rabbitmqctl", "delete_vhost", vhost], capture_output=True, timeout=60)


def rabbitmq_unavailable() -> str | None:
    if shutil.which("rabbitmqctl") is None:
        return "rabbitmqctl is not installed"
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=2).close()
    except OSError:
        return "no RabbitMQ answers at 127.0.0.1:5672 (.ci/run starts it)"
    return None


def host_process(
    network: Network, host: str, name: str, args: list[str], env: Mapping[str, str], log_dir: Path
) -> ServiceProcess:
    """``ner <args>`` inside ``host``'s namespace."""
    argv = ["ip", "netns", "exec", network.namespace(host), sys.executable, "-m", "shared.cli", *args]
    return ServiceProcess(f"{name}-{host}", argv, env, log_dir)


def host_env(base: Mapping[str, str], root: Path, host: str) -> dict[str, str]:
    """A host's own folders: state (and in it the artifact cache), data; nothing shared."""
    state = root / host / "state"
    data = root / host / "data"
    data.mkdir(parents=True, exist_ok=True)
    return {
        **base,
        "NER_STATE_DIR": str(state),
        "NER_ARTIFACTS_DIR": str(state / "models"),
        "NER_DATA_ROOTS": str(data),
    }


def wait_for(predicate, timeout: float, what: str, *processes: ServiceProcess) -> None:  # type: ignore[no-untyped-def]
    """``wait_until`` that fails with the logs of every process involved."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        for process in processes:
            if not process.alive():
                raise AssertionError(f"{process.name} died waiting for {what}:\n{process.log()[-4000:]}")
        time.sleep(0.2)
    logs = "\n".join(f"--- {p.name}:\n{p.log()[-3000:]}" for p in processes)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{logs}")
