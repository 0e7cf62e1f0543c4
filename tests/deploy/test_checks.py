"""The checks themselves catch bad references (the helpers of tests/deploy/files.py)."""

from __future__ import annotations

from pathlib import Path

from tests.deploy.files import (
    Dockerfile,
    celery_argv,
    command_problems,
    copy_source_problems,
    ignored,
    interpolate,
    node_name_problems,
    option_value,
    setting_problems,
)


def test_checks_name_the_bad_reference(tmp_path: Path) -> None:
    """A misspelt setting, an unknown subcommand and a missing COPY source are each reported by name."""
    assert setting_problems({"NER_REDIS_URL": "redis://r:6379/0"}, "x") == []
    assert "NER_ARTEFACTS_DIR is not a setting" in " ".join(
        setting_problems({"NER_ARTEFACTS_DIR": "/a"}, "x")
    )
    assert "NER_REDIS_URL" in " ".join(setting_problems({"NER_REDIS_URL": "http://nope"}, "x"))
    assert command_problems(["ner", "db", "upgrade"], "x") == []
    assert "not a valid ner command" in " ".join(command_problems(["ner", "serv"], "x"))
    assert "not a valid ner command" in " ".join(command_problems(["ner", "worker", "--queue", "x"], "x"))
    assert command_problems(["celery", "--app", "shared.core.celery_app", "beat"], "x") == []
    assert "no importable --app" in " ".join(
        command_problems(["celery", "--app", "nothing.here", "beat"], "x")
    )

    dockerfile = Dockerfile("deploy/Dockerfile.test", [("COPY", "shared/ nowhere/ /src/")])
    assert copy_source_problems(dockerfile) == [
        "deploy/Dockerfile.test: COPY source 'nowhere/' does not exist"
    ]
    rules = [(False, "*"), (True, "shared"), (False, "**/__pycache__")]
    assert ignored("tests/test_deploy.py", rules) and not ignored("shared/cli.py", rules)
    assert ignored("shared/__pycache__/cli.pyc", rules)

    assert interpolate("a${X:-d}b$${Y}${Z:?need}", set()) == "ad" + "b${Y}" + "required-z"
    hostname = option_value(celery_argv(["ner", "worker"], tmp_path), "--hostname")
    assert node_name_problems(["ner", "worker"], ["celery", "inspect", "ping", "-d", "x@y"], "w", tmp_path)
    assert hostname and not node_name_problems(
        ["ner", "worker"],
        ["celery", "inspect", "ping", "-d", hostname.replace("%h", "$HOSTNAME")],
        "w",
        tmp_path,
    )
