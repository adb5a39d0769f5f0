"""Offline engine bundles: built with real pip from a folder of small wheels made here (no index needed), unpacked
by the bundle's own stdlib-only unpack.py in a fresh interpreter, and refused when a part is missing or corrupted."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lem_planner.bundle.build import Target, build, parse_freeze
from lem_planner.bundle.unpack import BundleError, verify
from lem_planner.cli import cli

PYTHON_VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"
HOST = "hostlib==2.1\nshadowme==1.0\n# a comment\n-e git+https://example.invalid/x.git#egg=x\n"


def make_wheel(folder: Path, name: str, version: str, requires: list[str] = (), files: dict[str, bytes] | None = None):
    """A pure-Python wheel, as a build backend would write it (METADATA, WHEEL, RECORD with hashes)."""
    info = f"{name}-{version}.dist-info"
    entries = {f"{name}/__init__.py": f"VERSION = {version!r}\n".encode()}
    entries.update({f"{name}/{k}": v for k, v in (files or {}).items()})
    entries[f"{info}/METADATA"] = (
        "Metadata-Version: 2.1\n"
        f"Name: {name}\nVersion: {version}\n" + "".join(f"Requires-Dist: {r}\n" for r in requires)
    ).encode()
    entries[f"{info}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: lem-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    record = []
    for path, data in entries.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{info}/RECORD,,")
    entries[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    with zipfile.ZipFile(folder / f"{name}-{version}-py3-none-any.whl", "w") as whl:
        for path, data in entries.items():
            whl.writestr(path, data)


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("index")
    make_wheel(
        folder,
        "appkit",
        "1.0",
        [
            "helperlib>=1",
            "hostlib>=2",
            "heavyext",
            "shadowme>=2",
            "extrastuff; extra == 'more'",
            "ancientlib; python_version < '3.0'",
        ],
    )
    make_wheel(folder, "helperlib", "1.2", ["leaflib"], {"noise.bin": os.urandom(48_000)})
    make_wheel(folder, "leaflib", "0.1", [], {"big.bin": os.urandom(20_000)})
    for name, version, requires in (
        ("hostlib", "2.5", []),
        ("shadowme", "2.0", []),
        ("heavyext", "3.0", ["heavydep"]),
        ("heavydep", "1.0", []),
        ("extrastuff", "1.0", []),
        ("ancientlib", "1.0", []),
    ):
        make_wheel(folder, name, version, requires)
    return folder


@pytest.fixture(scope="module")
def bundle(wheels: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("built") / "bundle"
    lines: list[str] = []
    manifest = build(
        ["appkit==1.0"],
        Target(PYTHON_VERSION),
        HOST,
        out,
        exclude=["heavyext", "nothing-like-it"],
        prune_globs=["leaflib/big.bin"],
        part_mib=0.02,
        python=sys.executable,
        pip_args=["--no-index", f"--find-links={wheels}"],
        progress=lines.append,
    )
    assert any("shadows the host's shadowme" in line for line in lines)
    assert any("--exclude matched nothing: nothing-like-it" in line for line in lines)
    return out, manifest


def unpack_in_fresh_python(bundle: Path, target: Path, *extra: str) -> subprocess.CompletedProcess:
    """The bundle's own unpack.py, as a host without the project runs it: isolated mode, no PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [sys.executable, "-I", str(bundle / "unpack.py"), str(bundle), "--target", str(target), *extra],
        capture_output=True,
        text=True,
        env=env,
    )


def test_the_bundle_carries_what_the_host_lacks_and_no_more(bundle: tuple[Path, dict]) -> None:
    out, manifest = bundle
    assert sorted(p["name"] for p in manifest["packages"]) == ["appkit", "helperlib", "leaflib", "shadowme"]
    assert all(len(p["sha256"]) == 64 for p in manifest["packages"])
    assert manifest["host_packages_used"] == {"hostlib": "2.1"}
    assert manifest["excluded"] == {"heavyext": ["appkit 1.0"]}
    assert manifest["dropped"] == ["heavydep 1.0", "heavyext 3.0"]  # reached only through the excluded one
    assert "shadowme>=2" in manifest["shadowed"]["shadowme"] and "host 1.0" in manifest["shadowed"]["shadowme"]
    assert manifest["pruned"]["leaflib/big.bin"] == 20_000
    assert manifest["target"]["python_version"] == PYTHON_VERSION


def test_the_archive_is_split_into_parts_of_the_size_asked_each_with_its_hash(bundle: tuple[Path, dict]) -> None:
    out, manifest = bundle
    parts = manifest["archive"]["parts"]
    assert len(parts) >= 3
    limit = int(0.02 * (1 << 20))
    assert all(p["bytes"] <= limit for p in parts) and parts[0]["bytes"] == limit
    whole = hashlib.sha256(b"".join((out / p["file"]).read_bytes() for p in parts)).hexdigest()
    assert whole == manifest["archive"]["sha256"]
    assert verify(out)["name"] == "appkit==1.0"
    assert sorted(f.name for f in out.iterdir()) == sorted(["manifest.json", "unpack.py", *(p["file"] for p in parts)])


def test_unpack_with_the_standard_library_alone_installs_an_importable_tree(bundle, tmp_path: Path) -> None:
    out, _ = bundle
    target = tmp_path / "engines" / "appkit"
    done = unpack_in_fresh_python(out, target)
    assert done.returncode == 0, done.stderr
    assert f"export PYTHONPATH={target}" in done.stdout
    probe = subprocess.run(
        [sys.executable, "-c", "import appkit, helperlib, leaflib, shadowme; print(appkit.VERSION, shadowme.VERSION)"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(target)},
    )
    assert probe.stdout.split() == ["1.0", "2.0"], probe.stderr
    assert not (target / "leaflib" / "big.bin").exists() and (target / "helperlib" / "noise.bin").exists()
    assert not (target / "heavyext").exists() and not (target / "hostlib").exists()
    assert json.loads((target / ".lem-bundle.json").read_text())["name"] == "appkit==1.0"
    again = unpack_in_fresh_python(out, target)
    assert again.returncode == 1 and "--replace" in again.stderr


def _copy(bundle: Path, into: Path) -> Path:
    into.mkdir()
    for f in bundle.iterdir():
        (into / f.name).write_bytes(f.read_bytes())
    return into


def test_a_corrupted_part_is_named_and_nothing_is_installed_or_left_half_written(bundle, tmp_path: Path) -> None:
    out, manifest = bundle
    broken = _copy(out, tmp_path / "broken")
    second = broken / manifest["archive"]["parts"][1]["file"]
    data = bytearray(second.read_bytes())
    data[100] ^= 0xFF
    second.write_bytes(bytes(data))
    target = tmp_path / "engines" / "appkit"
    done = unpack_in_fresh_python(broken, target)
    count = len(manifest["archive"]["parts"])
    assert done.returncode == 1
    assert f"part 2 of {count} ({second.name}) is corrupted" in done.stderr and "Traceback" not in done.stderr
    assert not target.exists() and not (tmp_path / "engines").exists()


def test_a_missing_part_is_named_and_an_installed_bundle_stays_as_it_was(bundle, tmp_path: Path) -> None:
    out, manifest = bundle
    target = tmp_path / "engines" / "appkit"
    assert unpack_in_fresh_python(out, target).returncode == 0
    before = sorted(str(p.relative_to(target)) for p in target.rglob("*"))
    broken = _copy(out, tmp_path / "broken")
    first = manifest["archive"]["parts"][0]["file"]
    (broken / first).unlink()
    done = unpack_in_fresh_python(broken, target, "--replace")
    assert done.returncode == 1 and f"part 1 of {len(manifest['archive']['parts'])} ({first}) is missing" in done.stderr
    assert sorted(str(p.relative_to(target)) for p in target.rglob("*")) == before
    assert [p.name for p in (tmp_path / "engines").iterdir()] == ["appkit"]  # no partial folder left beside it


def test_parts_of_two_builds_mixed_are_refused(bundle, tmp_path: Path) -> None:
    out, manifest = bundle
    mixed = _copy(out, tmp_path / "mixed")
    edited = json.loads((mixed / "manifest.json").read_text())
    edited["archive"]["sha256"] = "0" * 64
    (mixed / "manifest.json").write_text(json.dumps(edited))
    done = unpack_in_fresh_python(mixed, tmp_path / "t")
    assert done.returncode == 1 and "differ from the archive" in done.stderr and not (tmp_path / "t").exists()


def test_bad_input_is_refused_naming_what_to_fix(bundle, tmp_path: Path) -> None:
    out, _ = bundle
    with pytest.raises(BundleError, match="exists and is not empty"):
        build(["appkit==1.0"], Target(PYTHON_VERSION), HOST, out)
    with pytest.raises(BundleError, match="line 2: 'torch==two' has no valid version"):
        parse_freeze("six==1.16.0\ntorch==two\n")
    for glibc in ("3.1", "2.x", "2", "2.1e20", "nan"):
        with pytest.raises(BundleError, match=f"--glibc {glibc}: give the host's glibc as 2.N"):
            Target("3.12", glibc=glibc).platforms()
    for python, mib in (
        ("three", 47.0),
        ("3.12", float("inf")),
        ("3.12", float("nan")),
        ("3.12", -1.0),
        ("3.12", 1e20),
    ):
        with pytest.raises(BundleError, match="--python-version three|--part-mib"):
            build(["appkit==1.0"], Target(python), HOST, tmp_path / "never", part_mib=mib)
    assert not (tmp_path / "never").exists()
    assert parse_freeze(HOST) == {"hostlib": ("hostlib", "2.1"), "shadowme": ("shadowme", "1.0")}
    tags = Target("3.12", glibc="2.39").platforms()
    assert tags[0] == "manylinux_2_39_x86_64" and "manylinux2014_x86_64" in tags and tags[-1] == "linux_x86_64"
    host = tmp_path / "host.txt"
    host.write_text(HOST)
    runner = CliRunner()
    bad = runner.invoke(
        cli,
        [
            "bundle",
            "build",
            "vllm=0.26",
            "--host-packages",
            str(host),
            "--python-version",
            PYTHON_VERSION,
            "--out",
            str(tmp_path / "b"),
        ],
    )
    assert bad.exit_code == 2 and "requirement 'vllm=0.26' is not valid" in bad.output
    missing = runner.invoke(
        cli,
        [
            "bundle",
            "build",
            "vllm==0.26.0",
            "--host-packages",
            str(tmp_path / "nope.txt"),
            "--python-version",
            PYTHON_VERSION,
        ],
    )
    assert missing.exit_code == 2 and "pip list --format=freeze" in missing.output
    assert runner.invoke(cli, ["bundle", "verify", str(out)]).exit_code == 0
    lost = runner.invoke(cli, ["bundle", "verify", str(tmp_path)])
    assert lost.exit_code == 2 and "manifest.json is missing" in lost.output
