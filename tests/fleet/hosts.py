"""Several hosts on this one machine, for the fleet tests: each host a network namespace (``ip netns``) with a
hostname of its own (a UTS namespace per process), linked to the "infra" host by veth pairs.

The infra host runs Redis (with a password) and PostgreSQL of the fleet's own. Every other host reaches them on
two links of its own, one for each, so a test can cut a host off from the broker but not the database (or the
reverse) with ``ip link set down`` on one of them, and heal it again. The test process itself stays in the root
namespace and reaches both servers on an observer link of its own. Nothing leaves these namespaces.

Host processes are started through ``ip netns exec`` (which execs, so the process a test holds is the program
itself) and killed together with everything else in their namespace (``ip netns pids``), engine hosts included.
``Host.spawn(..., clock_offset_s=2)`` runs a process with its wall clock that far off (``skewed_clock.c``,
preloaded; monotonic clocks and sleeps left true), as on a host whose time sync has drifted.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis
from sqlalchemy.engine import make_url

from lem_shared.db.migrate import upgrade
from tests.integration.telemetry_helpers import PG_BIN, user_exists

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SKEWED_CLOCK_SOURCE = Path(__file__).with_name("skewed_clock.c")
REDIS_PORT, POSTGRES_PORT = 6379, 5432
_NAMED = 'hostname "$0" && exec "$@"'  # sh -c: take the host's name ($0), then become the program


def sh(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def missing_tools() -> list[str]:
    """What the fleet needs and this machine lacks (the tests fail naming it)."""
    missing = [tool for tool in ("ip", "unshare", "redis-server", "runuser") if shutil.which(tool) is None]
    if not (PG_BIN / "initdb").exists():
        missing.append(f"PostgreSQL's initdb at {PG_BIN} (set LEM_TEST_PG_BIN)")
    if os.geteuid() != 0:
        missing.append("root (ip netns needs CAP_SYS_ADMIN and CAP_NET_ADMIN)")
    elif not user_exists("postgres"):
        missing.append("a 'postgres' user (initdb refuses to run as root)")
    if shutil.which("cc") is None:
        missing.append("a C compiler (cc) for the skewed clock")
    return missing


def build_skewed_clock(folder: Path) -> Path:
    library = folder / "libskewed_clock.so"
    sh("cc", "-shared", "-fPIC", "-O2", "-o", str(library), str(SKEWED_CLOCK_SOURCE), "-ldl")
    return library


@dataclass
class Link:
    """A veth pair between a host and the infra host: the infra side's address is where the host connects."""

    host_if: str
    infra_ip: str


@dataclass
class Host:
    name: str
    namespace: str
    logs: Path
    skewed_clock: Path
    links: dict[str, Link] = field(default_factory=dict)  # "broker", "database"
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def spawn(self, name: str, argv: list[str], env: dict[str, str], clock_offset_s: float = 0.0) -> subprocess.Popen:
        """Start ``argv`` on this host, named ``name`` (its log: ``logs/<host>-<name>.log``)."""
        env = dict(env)
        if clock_offset_s:
            env.update(LD_PRELOAD=str(self.skewed_clock), LEM_TEST_CLOCK_OFFSET_S=repr(clock_offset_s))
        log = open(self.log_path(name), "a")  # noqa: SIM115 - the process's lifetime
        process = subprocess.Popen(
            [*self._on_host(), *argv], env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        self.processes[name] = process
        return process

    def run(self, argv: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self._on_host(), *argv], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout
        )

    def _on_host(self) -> list[str]:
        """The command prefix that runs a program in this host's namespace under this host's name."""
        return ["ip", "netns", "exec", self.namespace, "unshare", "--uts", "--", "sh", "-c", _NAMED, self.name]

    def log_path(self, name: str) -> Path:
        return self.logs / f"{self.name}-{name}.log"

    def log(self, name: str) -> str:
        path = self.log_path(name)
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self, name: str, timeout: float = 60) -> None:
        """A warm stop (SIGTERM), killing what does not stop in ``timeout`` seconds."""
        process = self.processes.pop(name, None)
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def kill_everything(self) -> None:
        """SIGKILL to every process in the namespace: the host is gone, no goodbyes."""
        for pid in sh("ip", "netns", "pids", self.namespace).split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        for process in self.processes.values():
            process.wait(10)
        self.processes.clear()

    def set_link(self, path: str, up: bool) -> None:
        sh("ip", "-n", self.namespace, "link", "set", self.links[path].host_if, "up" if up else "down")

    def alive(self, name: str) -> bool:
        process = self.processes.get(name)
        return process is not None and process.poll() is None


class Fleet:
    """The infra host (Redis, PostgreSQL), and hosts added with ``add_host``; ``remove()`` takes it all down."""

    def __init__(self) -> None:
        self.tag = secrets.token_hex(2)
        self.net = 100 + secrets.randbelow(100)  # 10.<net>.<link>.0/24 for every link of this fleet
        self.root = Path(tempfile.mkdtemp(prefix="lem-fleet-"))
        self.logs = self.root / "logs"
        self.logs.mkdir()
        self.skewed_clock = build_skewed_clock(self.root)
        self.password = secrets.token_urlsafe(16)
        self.hosts: dict[str, Host] = {}
        self._links = 0
        self._namespaces: list[str] = []
        self._interfaces: list[str] = []
        self.infra = self._namespace("infra")
        self.redis: subprocess.Popen | None = None
        self.pg_data = self.root / "pg"
        self.observer_ip = self._link(None, "o").infra_ip  # the test process's own way to the servers

    # --- plumbing --------------------------------------------------------------------------------------------

    def _namespace(self, name: str) -> str:
        namespace = f"lem{self.tag}-{name}"
        sh("ip", "netns", "add", namespace)
        self._namespaces.append(namespace)
        sh("ip", "-n", namespace, "link", "set", "lo", "up")
        return namespace

    def _link(self, namespace: str | None, kind: str) -> Link:
        """A veth pair from ``namespace`` (None: the root one) to infra."""
        self._links += 1
        host_if, infra_if = f"lf{self.tag}{self._links}{kind}", f"li{self.tag}{self._links}{kind}"
        sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", infra_if)
        self._interfaces.append(host_if)
        sh("ip", "link", "set", infra_if, "netns", self.infra)
        subnet = f"10.{self.net}.{self._links}"
        sh("ip", "-n", self.infra, "addr", "add", f"{subnet}.1/24", "dev", infra_if)
        sh("ip", "-n", self.infra, "link", "set", infra_if, "up")
        if namespace is None:
            sh("ip", "addr", "add", f"{subnet}.2/24", "dev", host_if)
            sh("ip", "link", "set", host_if, "up")
        else:
            sh("ip", "link", "set", host_if, "netns", namespace)
            sh("ip", "-n", namespace, "addr", "add", f"{subnet}.2/24", "dev", host_if)
            sh("ip", "-n", namespace, "link", "set", host_if, "up")
        return Link(host_if, f"{subnet}.1")

    def add_host(self, name: str) -> Host:
        namespace = self._namespace(name)
        host = Host(name, namespace, self.logs, self.skewed_clock)
        for path in ("broker", "database"):
            host.links[path] = self._link(namespace, path[0])
        self.hosts[name] = host
        return host

    # --- the servers -----------------------------------------------------------------------------------------

    def broker_url(self, ip: str, db: int = 0) -> str:
        return f"redis://:{self.password}@{ip}:{REDIS_PORT}/{db}"

    def database_url(self, ip: str) -> str:
        return make_url(f"postgresql+psycopg://postgres@{ip}:{POSTGRES_PORT}/lem").render_as_string(False)

    def start_redis(self) -> None:
        log = open(self.logs / "infra-redis.log", "a")  # noqa: SIM115 - the server's lifetime
        self.redis = subprocess.Popen(
            ["ip", "netns", "exec", self.infra, "redis-server", "--bind", "0.0.0.0", "--port", str(REDIS_PORT),
             "--requirepass", self.password, "--save", "", "--appendonly", "no", "--dir", str(self.root)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        log.close()
        client = redis.Redis.from_url(self.broker_url(self.observer_ip), socket_timeout=0.5)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                if client.ping():
                    return
            except redis.RedisError:
                time.sleep(0.05)
        raise RuntimeError(f"the fleet's redis did not start: {(self.logs / 'infra-redis.log').read_text()[-2000:]}")

    def kill_redis(self) -> None:
        """SIGKILL: every queued message and beacon is gone (nothing is kept on disk)."""
        if self.redis is not None and self.redis.poll() is None:
            self.redis.send_signal(signal.SIGKILL)
            self.redis.wait(10)
        self.redis = None

    def _pg(self, tool: str, *args: str) -> None:
        command = ["ip", "netns", "exec", self.infra, "runuser", "-u", "postgres", "--", str(PG_BIN / tool), *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed: {done.stderr.strip()}")

    def start_postgres(self) -> None:
        shutil.chown(self.root, user="postgres")
        self._pg("initdb", "-D", str(self.pg_data), "-A", "trust", "-U", "postgres", "--no-sync")
        with (self.pg_data / "pg_hba.conf").open("a") as hba:
            hba.write(f"host all all 10.{self.net}.0.0/16 trust\n")
        options = f"-p {POSTGRES_PORT} -k {self.root} -c listen_addresses=* -c fsync=off -c max_connections=200"
        log = str(self.root / "postgres.log")  # written by the postgres user
        self._pg("pg_ctl", "-D", str(self.pg_data), "-o", options, "-l", log, "-w", "start")
        upgrade(self.database_url(self.observer_ip))

    def host_env(self, host: Host, base: dict[str, str]) -> dict[str, str]:
        """The environment of every process on ``host``: the servers at the infra ends of its own links."""
        broker_ip, database_ip = host.links["broker"].infra_ip, host.links["database"].infra_ip
        return {
            **base,
            "LEM_BROKER_URL": self.broker_url(broker_ip, 0),
            "LEM_RESULT_BACKEND": self.broker_url(broker_ip, 1),
            "LEM_DATABASE_URL": self.database_url(database_ip),
            "LEM_TELEMETRY_BUFFER_DIR": str(self.root / "disk" / host.name),  # each host's own disk
            "PYTHONPATH": str(REPO),
        }

    def remove(self) -> None:
        for host in self.hosts.values():
            with contextlib.suppress(RuntimeError):
                host.kill_everything()
        self.kill_redis()
        if (self.pg_data / "postmaster.pid").exists():
            with contextlib.suppress(RuntimeError):
                self._pg("pg_ctl", "-D", str(self.pg_data), "-m", "immediate", "-w", "stop")
        for interface in self._interfaces:  # the root namespace's end; the others go with their namespace
            subprocess.run(["ip", "link", "del", interface], capture_output=True)
        for namespace in self._namespaces:
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)
