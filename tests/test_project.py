"""The project's promises to a newcomer: the Procfile, docker-compose.yml and the README name
the same process commands, and the Makefile offers the two setup commands."""

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
PROCESSES = ["web", "worker", "beat", "sandbox"]


def normalize(command: str) -> str:
    """`${VAR:-default}` → `$VAR`: the file's own defaults may differ (loopback vs 0.0.0.0)."""
    return " ".join(re.sub(r"\$\{(\w+):-[^}]*\}", r"$\1", command).split())


def procfile() -> dict[str, str]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines if line.strip() and not line.startswith("#"))


def test_procfile_runs_web_worker_beat_and_sandbox() -> None:
    processes = procfile()
    assert list(processes) == PROCESSES
    assert processes["worker"].startswith("celery -A project worker")
    assert processes["beat"].startswith("celery -A project beat")
    assert "utilityapi_sandbox" in processes["sandbox"]


def test_docker_compose_uses_the_procfile_commands() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    for name, command in procfile().items():
        assert normalize(services[name]["command"]) == normalize(command), name
    assert {"db", "redis"} <= set(services)
    env = services["worker"]["environment"]
    assert env["DATABASE_URL"].startswith("postgres://")
    assert env["CELERY_BROKER_URL"].startswith("redis://")


def test_docker_compose_waits_for_migrate_and_probes_every_service() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    for name in ("web", "worker", "beat"):
        assert services[name]["depends_on"]["migrate"] == {
            "condition": "service_completed_successfully"
        }, name
    for name, service in services.items():
        check = service["healthcheck"]
        assert check.get("disable") is True if name == "migrate" else check["test"], name
    assert "alive worker" in " ".join(services["worker"]["healthcheck"]["test"])
    assert "/readyz" in " ".join(services["web"]["healthcheck"]["test"])
    redis = services["redis"]
    assert "--appendonly yes" in redis["command"] and redis["volumes"][0].endswith(":/data")


def test_installs_come_from_the_lock_file() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "sync --frozen" in makefile and re.search(r"^lock:", makefile, re.MULTILINE)
    assert "uv sync --frozen" in (ROOT / "Dockerfile").read_text()
    assert (ROOT / "uv.lock").exists()


def test_readme_shows_the_setup_commands_and_the_processes() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "make run" in readme and "make test" in readme
    for name, command in procfile().items():
        assert normalize(command) in normalize(readme), f"README lacks the {name} command"


def test_makefile_has_the_documented_targets() -> None:
    makefile = (ROOT / "Makefile").read_text()
    for target in ("run", "test", "lint", "bench"):
        assert re.search(rf"^{target}:", makefile, re.MULTILINE), target
    assert "honcho start web worker beat sandbox" in makefile


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, re.MULTILINE)
