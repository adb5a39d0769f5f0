"""Build an offline engine bundle: what an air-gapped GPU host lacks to run an engine, as verified archive parts.

Given requirements (``vllm==0.26.0``), the host's Python version and glibc, and the host's own package list
(``python3 -m pip list --format=freeze`` run there), pip resolves the requirements as if installing into the
host: a scratch environment of the host's Python version holds a metadata-only stand-in of every host package,
so pip keeps what the host has wherever it satisfies the requirements. Of pip's resolution the bundle keeps what
the requirements reach without passing through an excluded package (``--exclude flashinfer-python``: optional
dependencies the target does not need) and without a host package that already satisfies every kept requirer.
The kept wheels are downloaded with their hashes pinned, installed into a tree (``pip install --target``), pruned
(``--prune`` globs: kernels for other GPUs), packed as tar.xz and split into parts of ``--part-mib``. The manifest
names every package, the host packages used, what was excluded or pruned, and the sha256 of every part and of
the whole; ``unpack.py`` (copied beside the parts) checks them on the host.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from lem_planner.bundle import unpack as unpacker
from lem_planner.bundle.unpack import FORMAT, MANIFEST, BundleError

MIB = 1 << 20
ARCHIVE = "bundle.tar.xz"
# pip itself is the scratch environment's own; a stand-in of it would break the resolver's interpreter.
NOT_STUBBED = {"pip"}
# pip from this version on drives another interpreter's environment (--python) in a --dry-run with --platform.
PIP_FOR_OTHER_PYTHONS = "24.1"


@dataclass(frozen=True)
class Target:
    """The host a bundle is for: its Python (major.minor), glibc (major.minor) and machine."""

    python_version: str
    glibc: str = "2.28"
    machine: str = "x86_64"

    def platforms(self) -> list[str]:
        """pip's ``--platform`` tags the host accepts, newest first (pip matches tags exactly)."""
        parts = self.glibc.split(".")
        if len(parts) != 2 or not all(p.isdigit() and len(p) <= 3 for p in parts):
            raise BundleError(f"--glibc {self.glibc}: give the host's glibc as 2.N (ldd --version), N >= 5")
        major, minor = (int(x) for x in parts)
        if major != 2 or minor < 5:
            raise BundleError(f"--glibc {self.glibc}: give the host's glibc as 2.N (ldd --version), N >= 5")
        tags = [f"manylinux_2_{n}_{self.machine}" for n in range(minor, 4, -1)]
        legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
        tags += [f"{name}_{self.machine}" for n, name in legacy.items() if n <= minor]
        return [*tags, f"linux_{self.machine}"]

    def pip_options(self) -> list[str]:
        options = ["--only-binary=:all:", "--python-version", self.python_version, "--implementation", "cp"]
        for tag in self.platforms():
            options += ["--platform", tag]
        return options


@dataclass
class Package:
    name: str
    version: str
    url: str
    sha256: str | None
    requires: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        return canonicalize_name(self.name)


@dataclass
class Selection:
    """Of pip's resolution: what the bundle carries, what the host provides, what was left out and why."""

    keep: dict[str, Package]
    host_used: dict[str, str]  # name -> host version relied on
    excluded: dict[str, list[str]]  # excluded name -> who asked for it
    shadowed: dict[str, str]  # name -> "host X, bundle Y: <requirer spec>" (bundle wins on PYTHONPATH)
    dropped: list[str]  # resolved, but reached only through excluded or host packages


def parse_freeze(text: str) -> dict[str, tuple[str, str]]:
    """``{canonical name: (name, version)}`` of ``pip list --format=freeze`` / ``pip freeze`` output.

    Lines that are not ``name==version`` (editables, direct references, comments) are skipped: such a package
    cannot be matched against a requirement by version."""
    packages: dict[str, tuple[str, str]] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-") or "==" not in line or " @ " in line:
            continue
        name, _, version = line.partition("==")
        try:
            Version(version.strip())
        except InvalidVersion:
            raise BundleError(
                f"host packages, line {number}: {raw!r} has no valid version; pass the output of "
                "`python3 -m pip list --format=freeze` run on the host"
            ) from None
        packages[canonicalize_name(name.strip())] = (name.strip(), version.strip())
    return packages


def find_python(version: str) -> str:
    """An interpreter of ``version`` here (markers such as ``python_version < '3.12'`` are evaluated by it)."""
    candidates = [shutil.which(f"python{version}")]
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates += sorted(str(p) for p in pyenv.glob(f"{version}.*/bin/python{version}"))
    if sys.version_info[:2] == tuple(int(x) for x in version.split(".")):
        candidates.insert(0, sys.executable)
    for candidate in candidates:
        if not candidate:
            continue
        probe = subprocess.run(
            [candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], capture_output=True, text=True
        )
        if probe.returncode == 0 and probe.stdout.strip() == version:
            return candidate
    raise BundleError(
        f"no Python {version} found here to resolve for the host with (tried python{version} on "
        f"PATH and {pyenv}); install one, or pass --python PATH"
    )


def _run(command: list[str], what: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        lines = [
            line
            for line in (done.stderr + done.stdout).splitlines()
            if line.strip() and not line.startswith("WARNING: Location")
        ]
        raise BundleError(f"{what} failed:\n  " + "\n  ".join(lines[-15:]))
    return done


def _own_pip_is_recent() -> bool:
    try:
        import pip
    except ImportError:
        return False
    return Version(pip.__version__) >= Version(PIP_FOR_OTHER_PYTHONS)


def scratch_environment(python: str, host: dict[str, tuple[str, str]], folder: Path, pip_args: list[str]) -> list[str]:
    """A venv of the host's Python version whose site-packages hold a metadata-only stand-in of each host package
    (no files, no dependencies): pip then sees the host's packages as installed. Returns the pip command for it.

    A recent pip here drives the venv through ``--python`` (nothing to download); an older one cannot combine
    ``--dry-run`` with ``--platform``, so the venv gets a pip of its own from the index."""
    recent = _own_pip_is_recent()
    _run(
        [python, "-m", "venv", *(["--without-pip"] if recent else []), str(folder)], "creating the scratch environment"
    )
    venv_python = folder / "bin" / "python"
    if recent:
        pip = [sys.executable, "-m", "pip", "--python", str(venv_python)]
    else:
        pip = [str(venv_python), "-m", "pip"]
        _run(
            [*pip, "install", "--quiet", "--upgrade", *pip_args, f"pip>={PIP_FOR_OTHER_PYTHONS}"],
            "updating pip in the scratch environment",
        )
    site = Path(
        _run(
            [str(venv_python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            "locating the scratch site-packages",
        ).stdout.strip()
    )
    for info in site.glob("*.dist-info"):  # the venv's own seed packages (setuptools on 3.11) give way to the host's
        key: str = canonicalize_name(info.name.split("-")[0])
        if key in host and key not in NOT_STUBBED:
            shutil.rmtree(info)
    for key, (name, version) in host.items():
        if key in NOT_STUBBED:
            continue
        info = site / f"{key.replace('-', '_')}-{version}.dist-info"
        info.mkdir(exist_ok=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        (info / "INSTALLER").write_text("lem-bundle-host-stand-in\n")
        (info / "RECORD").write_text("")
    return pip


def resolve(
    pip: list[str], requirements: list[str], target: Target, pip_args: list[str], work: Path
) -> tuple[list[Package], dict[str, str]]:
    """pip's resolution for the host (a dry run against the stand-ins) and the marker environment it used."""
    report = work / "resolution.json"
    _run(
        [
            *pip,
            "install",
            "--dry-run",
            "--quiet",
            "--report",
            str(report),
            *target.pip_options(),
            *pip_args,
            *requirements,
        ],
        "resolving " + " ".join(requirements),
    )
    data = json.loads(report.read_text())
    packages = []
    for item in data["install"]:
        meta = item["metadata"]
        hashes = (item["download_info"].get("archive_info") or {}).get("hashes") or {}
        packages.append(
            Package(
                meta["name"],
                meta["version"],
                item["download_info"]["url"],
                hashes.get("sha256"),
                list(meta.get("requires_dist") or []),
            )
        )
    environment = dict(data.get("environment") or {})
    environment.update(platform_machine=target.machine, sys_platform="linux", platform_system="Linux", os_name="posix")
    return packages, environment


def select(
    resolved: list[Package],
    host: dict[str, tuple[str, str]],
    requirements: list[str],
    exclude: Iterable[str],
    environment: dict[str, str],
) -> Selection:
    """Walk the requirements through pip's resolution (see the module docstring for the rules)."""
    excluded_names = {canonicalize_name(name) for name in exclude}
    by_key = {p.key: p for p in resolved}
    use_host: set[str] = {k for k in host if k not in by_key}
    while True:
        keep: dict[str, Package] = {}
        excluded: dict[str, list[str]] = {}
        specs: dict[str, list[tuple[str, Requirement]]] = {}
        seen: set[tuple[str, frozenset[str]]] = set()
        queue = [(Requirement(r), "requested") for r in requirements]
        while queue:
            requirement, requirer = queue.pop()
            key: str = canonicalize_name(requirement.name)
            if key in excluded_names:
                excluded.setdefault(key, []).append(requirer)
                continue
            specs.setdefault(key, []).append((requirer, requirement))
            if key in use_host:
                continue
            package = by_key.get(key)
            if package is None:
                raise BundleError(f"{requirer} needs {requirement}, which neither pip's resolution nor the host has")
            extras = frozenset(requirement.extras)
            if (key, extras) in seen:
                continue
            seen.add((key, extras))
            keep[key] = package
            for line in package.requires:
                dependency = Requirement(line)
                if dependency.marker is None or any(
                    dependency.marker.evaluate({**environment, "extra": extra}) for extra in extras | {""}
                ):
                    queue.append((dependency, f"{package.name} {package.version}"))
        # A kept package the host also has, whose host version every kept requirer accepts, comes from the host.
        more_host = {
            key
            for key in keep
            if key in host and all(r.specifier.contains(host[key][1], prereleases=True) for _, r in specs.get(key, []))
        }
        if not more_host:
            break
        use_host |= more_host
    shadowed: dict[str, str] = {}
    for key in keep:
        if key in host:
            refusing = [
                f"{who} needs {r}"
                for who, r in specs.get(key, [])
                if not r.specifier.contains(host[key][1], prereleases=True)
            ]
            shadowed[key] = f"host {host[key][1]}, bundle {keep[key].version}: " + "; ".join(refusing)
    host_used = {host[k][0]: host[k][1] for k in sorted(specs) if k in use_host and k in host}
    dropped = sorted(f"{p.name} {p.version}" for p in resolved if p.key not in keep)
    return Selection(keep, host_used, excluded, shadowed, dropped)


def download(pip: list[str], packages: list[Package], target: Target, pip_args: list[str], into: Path) -> None:
    """The kept wheels, each pinned to the file and sha256 pip resolved."""
    lines = [f"{p.name}=={p.version}" + (f" --hash=sha256:{p.sha256}" if p.sha256 else "") for p in packages]
    pins = into.parent / "pinned.txt"
    pins.write_text("\n".join(lines) + "\n")
    _run(
        [*pip, "download", "--quiet", "--no-deps", "-d", str(into), "-r", str(pins), *target.pip_options(), *pip_args],
        "downloading the wheels",
    )


def install(pip: list[str], wheels: Path, target: Target, tree: Path) -> None:
    _run(
        [
            *pip,
            "install",
            "--quiet",
            "--no-deps",
            "--no-index",
            "--no-compile",
            "--target",
            str(tree),
            *target.pip_options(),
            *sorted(str(w) for w in wheels.glob("*.whl")),
        ],
        "installing the wheels into the bundle tree",
    )


def prune(tree: Path, patterns: Iterable[str]) -> dict[str, int]:
    """Delete what each glob (relative to the tree) matches; bytes freed per pattern (0: the rule matched nothing)."""
    freed = {}
    for pattern in patterns:
        total = 0
        for path in sorted(tree.glob(pattern), reverse=True):
            if not path.exists():
                continue
            if path.is_dir() and not path.is_symlink():
                total += sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
                shutil.rmtree(path)
            else:
                total += path.lstat().st_size
                path.unlink()
        freed[pattern] = total
    for cache in list(tree.rglob("__pycache__")):
        shutil.rmtree(cache, ignore_errors=True)
    return freed


def pack(tree: Path, archive: Path) -> None:
    """tar.xz of the tree (sorted, owner 0), through the xz program's threads when it is here."""

    def reset(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info

    members = sorted(tree.rglob("*"))
    xz = shutil.which("xz")
    with archive.open("wb") as out:
        if xz is None:
            with tarfile.open(fileobj=out, mode="w:xz", preset=6) as tar:
                for path in members:
                    tar.add(path, arcname=str(path.relative_to(tree)), recursive=False, filter=reset)
            return
        proc = subprocess.Popen([xz, "-T0", "-6", "-c"], stdin=subprocess.PIPE, stdout=out)
        assert proc.stdin is not None
        with tarfile.open(fileobj=proc.stdin, mode="w|") as tar:
            for path in members:
                tar.add(path, arcname=str(path.relative_to(tree)), recursive=False, filter=reset)
        proc.stdin.close()
        if proc.wait() != 0:
            raise BundleError(f"xz failed with exit code {proc.returncode} while compressing the bundle")


def split(archive: Path, part_bytes: int) -> tuple[str, list[dict]]:
    """Cut the archive into parts beside it (``bundle.tar.xz.000``, ...); the whole's sha256 and each part's."""
    whole = hashlib.sha256()
    parts: list[dict[str, Any]] = []
    with archive.open("rb") as f:
        while block := f.read(part_bytes):
            whole.update(block)
            name = f"{archive.name}.{len(parts):03d}"
            (archive.parent / name).write_bytes(block)
            parts.append({"file": name, "bytes": len(block), "sha256": hashlib.sha256(block).hexdigest()})
    archive.unlink()
    return whole.hexdigest(), parts


def build(
    requirements: list[str],
    target: Target,
    host_text: str,
    out: Path,
    *,
    exclude: Iterable[str] = (),
    prune_globs: Iterable[str] = (),
    part_mib: float = 47.0,
    python: str | None = None,
    pip_args: Iterable[str] = (),
    name: str | None = None,
    force: bool = False,
    progress: Callable[[str], None] = print,
) -> dict:
    """Build the bundle into ``out`` (written beside it, moved in place when complete); its manifest."""
    if not requirements:
        raise BundleError("name at least one requirement, e.g. 'vllm==0.26.0'")
    for requirement in requirements:
        try:
            Requirement(requirement)
        except InvalidRequirement as exc:
            raise BundleError(
                f"requirement {requirement!r} is not valid ({exc}); write it as pip does: 'vllm==0.26.0'"
            ) from None
    if not re.fullmatch(r"3\.\d{1,2}", target.python_version):
        raise BundleError(f"--python-version {target.python_version}: give the host's Python as 3.N (python3 -V)")
    target.platforms()  # a bad --glibc is refused before anything is resolved
    if not 0 < part_mib <= 4096:
        raise BundleError(f"--part-mib {part_mib}: give a part size between 0 and 4096 MiB")
    out = out.resolve()
    if out.exists() and any(out.iterdir()) and not force:
        raise BundleError(f"{out} exists and is not empty; choose another --out or pass --force to replace it")
    host = parse_freeze(host_text)
    exclude, prune_globs, pip_args = list(exclude), list(prune_globs), list(pip_args)
    started = time.monotonic()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="lem-bundle-", dir=out.parent) as scratch:
        work = Path(scratch)
        interpreter = python or find_python(target.python_version)
        progress(
            f"resolving {' '.join(requirements)} for Python {target.python_version}, glibc {target.glibc}, "
            f"{target.machine}, against {len(host)} host packages"
        )
        pip = scratch_environment(interpreter, host, work / "venv", pip_args)
        resolved, environment = resolve(pip, requirements, target, pip_args, work)
        selection = select(resolved, host, requirements, exclude, environment)
        unused = sorted(set(map(canonicalize_name, exclude)) - set(selection.excluded))
        progress(
            f"{len(resolved)} packages resolved, {len(selection.keep)} to carry, "
            f"{len(selection.host_used)} from the host, {len(selection.excluded)} excluded"
            + (f" ({len(unused)} --exclude matched nothing: {', '.join(unused)})" if unused else "")
        )
        for key, why in sorted(selection.shadowed.items()):
            progress(f"  shadows the host's {key}: {why}")
        wheels, tree, bundle = work / "wheels", work / "tree", work / "bundle"
        for folder in (wheels, tree, bundle):
            folder.mkdir()
        kept = sorted(selection.keep.values(), key=lambda p: p.key)
        download(pip, kept, target, pip_args, wheels)
        wheel_bytes = sum(w.stat().st_size for w in wheels.glob("*.whl"))
        progress(f"downloaded {len(kept)} wheels, {wheel_bytes / MIB:.1f} MiB; installing")
        install(pip, wheels, target, tree)
        freed = prune(tree, prune_globs)
        for pattern, nbytes in freed.items():
            progress(f"  pruned {pattern}: {nbytes / MIB:.1f} MiB" + ("" if nbytes else " (matched nothing)"))
        tree_bytes = sum(f.stat().st_size for f in tree.rglob("*") if f.is_file())
        progress(f"compressing {tree_bytes / MIB:.1f} MiB")
        pack(tree, bundle / ARCHIVE)
        archive_bytes = (bundle / ARCHIVE).stat().st_size
        digest, parts = split(bundle / ARCHIVE, max(1, int(part_mib * MIB)))
        manifest = {
            "format": FORMAT,
            "name": name or "+".join(requirements),
            "requirements": requirements,
            "target": {
                "python_version": target.python_version,
                "glibc": target.glibc,
                "machine": target.machine,
                "platforms": target.platforms(),
            },
            "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "builder": {"python": ".".join(map(str, sys.version_info[:3])), "pip_args": pip_args},
            "packages": [{"name": p.name, "version": p.version, "sha256": p.sha256} for p in kept],
            "host_packages_used": selection.host_used,
            "excluded": {k: sorted(set(v)) for k, v in sorted(selection.excluded.items())},
            "shadowed": selection.shadowed,
            "dropped": selection.dropped,
            "pruned": freed,
            "bytes": {"wheels": wheel_bytes, "tree": tree_bytes, "archive": archive_bytes},
            "archive": {"file": ARCHIVE, "sha256": digest, "parts": parts},
        }
        (bundle / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        shutil.copyfile(unpacker.__file__, bundle / "unpack.py")
        if out.exists():
            shutil.rmtree(out)
        bundle.rename(out)
    progress(
        f"wrote {out}: {len(parts)} parts of at most {part_mib:g} MiB, {archive_bytes / MIB:.1f} MiB in all, "
        f"in {time.monotonic() - started:.0f} s; on the host: python3 unpack.py {out.name} --target DIR"
    )
    return manifest
