"""docker-compose.yml describes a durable Redis, a worker and a producer (parsed only: no Docker here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    assert isinstance(compose, dict)
    return dict(compose["services"])


def _command(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    return command.split() if isinstance(command, str) else [str(part) for part in command]


def _option(command: list[str], name: str) -> str:
    assert name in command, f"{name} missing from {command}"
    return command[command.index(name) + 1]


def test_the_three_services_exist(services: dict[str, Any]) -> None:
    assert {"redis", "worker", "producer"} <= services.keys()


def test_redis_keeps_an_aof_fsynced_every_second_and_never_evicts(services: dict[str, Any]) -> None:
    redis = services["redis"]
    assert str(redis["image"]).startswith("redis:7")
    command = _command(redis)
    assert _option(command, "--appendonly") == "yes"
    assert _option(command, "--appendfsync") == "everysec"
    assert _option(command, "--maxmemory-policy") == "noeviction"


def test_redis_keeps_its_data_in_a_named_volume(services: dict[str, Any]) -> None:
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    mounts = [str(volume).split(":") for volume in services["redis"]["volumes"]]
    assert ["redis-data", "/data"] in mounts
    assert "redis-data" in compose["volumes"]


def test_redis_has_a_ping_healthcheck(services: dict[str, Any]) -> None:
    check = " ".join(services["redis"]["healthcheck"]["test"])
    assert "redis-cli ping" in check


@pytest.mark.parametrize("name", ["worker", "producer"])
def test_clients_wait_for_a_healthy_redis(services: dict[str, Any], name: str) -> None:
    depends_on = services[name]["depends_on"]
    assert depends_on["redis"]["condition"] == "service_healthy"
    assert _option(_command(services[name]), "--redis-url") == "redis://redis:6379/0"


def test_worker_runs_the_demo_app_and_producer_only_publishes(services: dict[str, Any]) -> None:
    assert _command(services["worker"])[:3] == ["streamq", "worker", "streamq._demo_app:app"]
    producer = _command(services["producer"])
    assert producer[:4] == ["python", "-m", "streamq", "demo"]
    assert "--producer-only" in producer


def test_worker_and_producer_share_the_image_built_here(services: dict[str, Any]) -> None:
    assert services["worker"]["build"] == services["producer"]["build"] == "."
    assert services["worker"]["image"] == services["producer"]["image"]
    dockerfile = (REPO_ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert dockerfile.startswith("#") and "FROM python:3.11-slim" in dockerfile
    assert "pip install ." in dockerfile
