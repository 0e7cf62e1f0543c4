"""The ``ner`` command: run the whole stack or any one part of it."""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from shared.cli import keys, models, train
from shared.core.config import Settings, SettingsError, get_settings, mask_secrets


def cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    """Start gateway, inference worker, trainer and Flower; stop them all on Ctrl-C."""
    from shared.cli.embedded_redis import choose_executable, redis_answers, start_redis
    from shared.cli.stack import Child, ner_command, port_is_taken, run_children
    from shared.core import migrate

    if not args.no_flower and (refusal := flower_refusal(settings)):
        print(f"ner up: {refusal}; or start the stack with --no-flower", file=sys.stderr)
        return 2
    ports = [("gateway", settings.port)] + ([] if args.no_flower else [("flower", settings.flower_port)])
    for name, port in ports:
        if port_is_taken(settings.host, port):
            print(f"ner up: port {port} ({name}) on {settings.host} is already in use", file=sys.stderr)
            return 1
    private_state_dir(settings.state_dir)
    migrate.upgrade(settings.database_url)

    env = dict(os.environ)
    embedded = None
    if not redis_answers(settings.redis_url):
        executable, notes = choose_executable()
        for note in notes:
            print(f"ner up: {note}", file=sys.stderr)
        embedded, url = start_redis(settings.state_dir / "redis", executable=executable)
        print(
            f"ner up: no Redis answers at {mask_secrets(settings.redis_url)}; started an embedded one "
            f"({executable}) at {mask_secrets(url)}, password in {settings.state_dir / 'redis'} (0600)"
        )
        env["NER_REDIS_URL"] = url
    env["NER_DATABASE_URL"] = settings.database_url
    env["NER_STATE_DIR"] = str(settings.state_dir)
    _prepare_local_stack(settings, env)

    children = [
        Child("gateway", ner_command("serve")),
        Child("worker", ner_command("worker", "--beat")),
        Child("trainer", ner_command("trainer")),
    ]
    if not args.no_flower:
        children.append(Child("flower", ner_command("flower")))
    print(f"ner up: gateway on http://{settings.host}:{settings.port}  (Ctrl-C stops everything)")
    try:
        return run_children(children, env)
    finally:
        if embedded is not None:
            embedded.terminate()
            embedded.wait(timeout=10)


def private_state_dir(state_dir: Path) -> None:
    """The local stack's state is its user's alone: the folder 0700 and, through the umask that every
    child inherits, each file created in it (SQLite, uploads, beat schedule, Flower) 0600."""
    os.umask(0o077)
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    # An existing folder from an older version (0755) is closed too: nothing inside is reachable then.
    state_dir.chmod(0o700)


def _prepare_local_stack(settings: Settings, env: dict[str, str]) -> None:
    """A local stack's first run: the bootstrap training run, a fresh metrics folder and an admin key."""
    from shared.registry import seed
    from shared.training import bootstrap

    seed.seed_registry(settings=settings, env=env)  # the shipped model as v1, before any bootstrap run
    bootstrap.prepare_local_stack(settings=settings, env=env)
    keys.prepare_local_stack(settings=settings, env=env)


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    """Run the gateway (FastAPI under uvicorn)."""
    import uvicorn

    from shared.cli.stack import port_is_taken

    host = args.host or settings.host
    port = args.port or settings.port
    if port_is_taken(host, port):
        print(f"ner serve: port {port} on {host} is already in use", file=sys.stderr)
        return 1
    from shared.core.metrics import enable_multiprocess, serve_metrics_port

    # Every uvicorn worker (and, on this machine, every Celery worker) counts in one folder;
    # NER_METRICS_PORT also serves it without a key, for a Prometheus inside the network.
    enable_multiprocess(settings)
    serve_metrics_port(settings)
    from gateway.app import create_app

    uvicorn.run(
        # By import string: uvicorn imports it again in each worker process.
        f"{create_app.__module__}:{create_app.__name__}",
        factory=True,
        host=host,
        port=port,
        workers=args.workers,
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=10,
    )
    return 0


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    """Run an inference worker (Celery, queue ``inference``)."""
    import worker.shadow  # registers the shadow traffic tasks (issue 15)
    import worker.tasks  # noqa: F401 - registers the inference tasks
    from shared.core.celery_app import INFERENCE_QUEUE, WORKER_QUEUES, celery_app

    argv = [
        "worker",
        "--queues", ",".join(WORKER_QUEUES),  # recovered chunks first (issue 21)
        "--hostname", f"{INFERENCE_QUEUE}@%h",
        "--concurrency", str(args.concurrency),
        "--loglevel", settings.log_level,
        "--task-events",
    ]  # fmt: skip
    if args.beat:
        # The periodic clean-up of expired jobs. The scheduler dies with this worker and schedules
        # only while it holds the deployment's lock (one scheduler, whatever is killed).
        argv += ["--beat", "--schedule", _beat_schedule(settings), "--scheduler", BEAT_SCHEDULER]
    celery_app.worker_main(argv)
    return 0


def cmd_trainer(args: argparse.Namespace, settings: Settings) -> int:
    """Run the training worker (Celery, queue ``training``, one run at a time)."""
    import trainer.tasks  # noqa: F401 - registers the training task
    from shared.core.celery_app import TRAINING_QUEUE, celery_app

    argv = [
        "worker",
        "--queues", TRAINING_QUEUE,
        "--hostname", f"{TRAINING_QUEUE}@%h",
        "--concurrency", "1",
        "--loglevel", settings.log_level,
        "--task-events",
    ]  # fmt: skip
    celery_app.worker_main(argv)
    return 0


# The one-scheduler-per-deployment scheduler (a Redis lock; see worker/beat.py).
BEAT_SCHEDULER = "worker.beat:SingleScheduler"


def _beat_schedule(settings: Settings) -> str:
    """Where beat keeps its schedule (``ner worker --beat`` and ``ner beat`` share it)."""
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    return str(settings.state_dir / "celerybeat-schedule")


def cmd_beat(args: argparse.Namespace, settings: Settings) -> int:
    """Run the periodic schedule alone (exactly one per deployment); its tasks run on workers."""
    from shared.core.celery_app import celery_app

    argv = ["beat", "--loglevel", settings.log_level, "--schedule", _beat_schedule(settings)]
    # A second `ner beat` (or a worker's embedded one) waits for the lock instead of scheduling.
    celery_app.start([*argv, "--scheduler", BEAT_SCHEDULER])
    return 0


def flower_refusal(settings: Settings) -> str | None:
    """Why Flower must not start as configured: no password on an address beyond this machine.

    Flower shows every task's arguments, results and tracebacks, and can revoke tasks.
    """
    if settings.flower_password:
        return None
    host = settings.host.strip("[]")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False  # a host name: it may resolve to anything
    if loopback:
        return None
    return (
        f"refusing to start Flower on {settings.host} without a password: set NER_FLOWER_PASSWORD "
        "(and NER_FLOWER_USER), or bind it to loopback only (NER_HOST=127.0.0.1)"
    )


def cmd_flower(args: argparse.Namespace, settings: Settings) -> int:
    """Run Flower, persistent, behind basic auth when NER_FLOWER_PASSWORD is set (required off loopback)."""
    if refusal := flower_refusal(settings):
        print(f"ner flower: {refusal}", file=sys.stderr)
        return 2
    # Flower's own /metrics counts in-process; its samples must not land in the service's
    # multiprocess folder (which `ner up` hands to every child).
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    from shared.core.celery_app import celery_app

    settings.state_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        "flower",
        f"--port={args.port or settings.flower_port}",
        f"--address={settings.host}",
        "--persistent=True",
        f"--db={settings.state_dir / 'flower.db'}",
        # Flower saves its history on a clean stop; saving periodically too means a killed Flower
        # (OOM, SIGKILL after a stop timeout) loses at most this interval of task history.
        f"--state_save_interval={max(1, round(settings.flower_state_save_seconds * 1000))}",
    ]
    if settings.flower_password:
        argv.append(f"--basic-auth={settings.flower_user}:{settings.flower_password}")
    celery_app.start(argv)
    return 0


def cmd_db(args: argparse.Namespace, settings: Settings) -> int:
    """Apply or revert Alembic migrations."""
    from shared.core import migrate

    if args.db_command == "upgrade":
        migrate.upgrade(settings.database_url, args.revision or "head")
    else:
        migrate.downgrade(settings.database_url, args.revision or "-1")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The whole ``ner`` command line."""
    parser = argparse.ArgumentParser(prog="ner", description="Named-entity recognition service.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser("up", help="run gateway, inference worker, trainer and Flower together")
    up.add_argument("--no-flower", action="store_true", help="do not start Flower")
    up.set_defaults(handler=cmd_up)

    serve = sub.add_parser("serve", help="run the gateway (HTTP API and web UI)")
    serve.add_argument("--host", help="default: NER_HOST")
    serve.add_argument("--port", type=int, help="default: NER_PORT")
    serve.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    serve.set_defaults(handler=cmd_serve)

    worker = sub.add_parser("worker", help="run an inference worker (queue 'inference')")
    worker.add_argument("--concurrency", type=int, default=1, help="processes (one per GPU)")
    worker.add_argument("--beat", action="store_true", help="also run the periodic clean-up schedule")
    worker.set_defaults(handler=cmd_worker)

    trainer = sub.add_parser("trainer", help="run the training worker (queue 'training')")
    trainer.set_defaults(handler=cmd_trainer)

    beat = sub.add_parser("beat", help="run the periodic clean-up schedule (one per deployment)")
    beat.set_defaults(handler=cmd_beat)

    flower = sub.add_parser("flower", help="run Flower, the Celery monitor")
    flower.add_argument("--port", type=int, help="default: NER_FLOWER_PORT")
    flower.set_defaults(handler=cmd_flower)

    db = sub.add_parser("db", help="database migrations")
    db_sub = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    db_up = db_sub.add_parser("upgrade", help="apply migrations (default: to head)")
    db_up.add_argument("revision", nargs="?")
    db_down = db_sub.add_parser("downgrade", help="revert migrations (default: one step)")
    db_down.add_argument("revision", nargs="?")
    db.set_defaults(handler=cmd_db)

    train.register(sub)
    keys.register(sub)
    models.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # Before torch loads in any part: OpenMP threads that spin while waiting slow every process
    # sharing the cores (measured: one sentence 585 ms instead of 63 ms on busy cores).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    args = build_parser().parse_args(argv)
    try:
        settings = get_settings()
    except SettingsError as exc:
        print(f"ner: {exc}", file=sys.stderr)
        return 2
    return int(args.handler(args, settings) or 0)
