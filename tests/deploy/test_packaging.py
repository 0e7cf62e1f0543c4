"""pyproject.toml installs the `ner` command that the images run."""

from __future__ import annotations

from tests.deploy.files import ROOT


def test_pyproject_installs_the_ner_command() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"].get("ner") == "shared.cli:main", (
        "the images run `ner`: pyproject must install it"
    )
