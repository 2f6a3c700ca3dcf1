"""docker-compose.yml, validated by ``docker-compose config`` (no Docker engine needed) and read without PyYAML."""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import IN_CI

REPO_ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
SERVICES = {"app", "nginx", "redis", "postgres", "memcached"}
PINNED_IMAGE = re.compile(r"^[a-z0-9./-]+:\d+\.\d+\.\d+[\w.-]*$")
#: PostgreSQL numbers releases MAJOR.MINOR since version 10, so "16.4" is an exact release.
PINNED_POSTGRES = re.compile(r"^postgres:\d+\.\d+[\w.-]*$")


@functools.cache
def _compose(*args: str, backend_url: str | None = None) -> str:
    """Run ``docker-compose -f docker-compose.yml <args>`` and return its output; skip or fail without it."""
    executable = shutil.which("docker-compose")
    if executable is None:
        reason = "docker-compose is not installed; install Debian's docker-compose package."
        if IN_CI:
            pytest.fail(f"CI=true: {reason}")
        pytest.skip(reason)
    env = {name: value for name, value in os.environ.items() if name != "ASESSION_BACKEND_URL"}
    if backend_url is not None:
        env["ASESSION_BACKEND_URL"] = backend_url
    result = subprocess.run(
        [executable, "-f", str(COMPOSE_FILE), *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def _service_blocks(config: str) -> dict[str, str]:
    """Split the normalised ``config`` output into the text of each service."""
    blocks: dict[str, list[str]] = {}
    current: list[str] | None = None
    in_services = False
    for line in config.splitlines():
        if not line.startswith(" "):
            in_services = line == "services:"
            current = None
            continue
        match = re.fullmatch(r"  ([\w.-]+):", line)
        if in_services and match:
            current = blocks.setdefault(match.group(1), [])
        elif current is not None:
            current.append(line)
    return {name: "\n".join(lines) for name, lines in blocks.items()}


def test_compose_config_is_valid() -> None:
    """``docker-compose config -q`` accepts the file."""
    assert _compose("config", "-q") == ""


def test_compose_services_exist() -> None:
    """The app, the load balancer and the three session stores are defined."""
    assert set(_compose("config", "--services").split()) == SERVICES


def test_compose_services_have_healthchecks() -> None:
    """Every service declares a health check."""
    blocks = _service_blocks(_compose("config"))
    assert set(blocks) == SERVICES
    assert [name for name, block in blocks.items() if "    healthcheck:" not in block] == []


def test_compose_ports_bound_to_localhost() -> None:
    """Every published port listens on 127.0.0.1 only."""
    published = re.findall(r"^    - (\S+)$", "\n".join(_port_lines(_compose("config"))), flags=re.MULTILINE)
    assert published, "no published ports found"
    assert [port for port in published if not port.startswith("127.0.0.1:")] == []


def _port_lines(config: str) -> list[str]:
    lines: list[str] = []
    in_ports = False
    for line in config.splitlines():
        if line == "    ports:":
            in_ports = True
        elif in_ports and line.startswith("    - "):
            lines.append(line)
        else:
            in_ports = False
    return lines


def test_compose_images_are_pinned() -> None:
    """Every pulled image names an exact version, and the app's Dockerfile pins its base image too."""
    blocks = _service_blocks(_compose("config"))
    images = {name: re.search(r"^    image: (\S+)$", block, re.MULTILINE) for name, block in blocks.items()}
    pulled = {name: match.group(1) for name, match in images.items() if match and name != "app"}
    assert set(pulled) == SERVICES - {"app"}
    loose = {
        name: image
        for name, image in pulled.items()
        if not (PINNED_IMAGE if name != "postgres" else PINNED_POSTGRES).match(image)
    }
    assert loose == {}
    base = re.search(r"^FROM (\S+)", (REPO_ROOT / "deploy" / "Dockerfile").read_text(), re.MULTILINE)
    assert base is not None and PINNED_IMAGE.match(base.group(1))


def test_compose_app_scaled_behind_nginx() -> None:
    """Two or more app replicas sit behind nginx, which proxies to the app service."""
    blocks = _service_blocks(_compose("config"))
    replicas = re.search(r"^      replicas: (\d+)$", blocks["app"], re.MULTILINE)
    assert replicas is not None and int(replicas.group(1)) >= 2
    assert "--host\n    - 0.0.0.0" in blocks["app"]
    assert "./deploy/nginx.conf" in blocks["nginx"] or "/deploy/nginx.conf" in blocks["nginx"]
    assert re.search(r"^\s*server app:8000\b", (REPO_ROOT / "deploy" / "nginx.conf").read_text(), re.MULTILINE)


@pytest.mark.parametrize(
    ("backend_url", "expected"),
    [
        pytest.param(None, "redis://redis:6379/0", id="default-redis"),
        pytest.param("postgresql://postgres@postgres:5432/test", None, id="postgres"),
        pytest.param("memcached://memcached:11211", None, id="memcached"),
    ],
)
def test_compose_backend_url_from_environment(backend_url: str | None, expected: str | None) -> None:
    """``ASESSION_BACKEND_URL`` chooses the app's session store, Redis by default."""
    blocks = _service_blocks(_compose("config", backend_url=backend_url))
    assert f"      ASESSION_BACKEND_URL: {expected or backend_url}" in blocks["app"].splitlines()
