"""Unpack an offline engine bundle on its host, with nothing but Python's standard library.

The bundle folder holds ``manifest.json``, the archive's parts and a copy of this file, so a host without the
project can run::

    python3 unpack.py BUNDLE_DIR --target /opt/lem-engines/vllm-0.26.0
    export PYTHONPATH=/opt/lem-engines/vllm-0.26.0

Every part is checked against the manifest's sha256 before anything is written; the archive is extracted into a
temporary folder beside the target and moved into place only when complete, so a missing or corrupted part, or a
failure half-way, leaves the target as it was.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

MANIFEST = "manifest.json"
FORMAT = 1
STAMP = ".lem-bundle.json"  # the manifest, kept inside an unpacked bundle: which bundle a host runs
CHUNK = 1 << 20


class BundleError(Exception):
    """A bundle that cannot be used as it is; the message names the file and the fix."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(bundle: Path) -> dict:
    path = bundle / MANIFEST
    if not path.is_file():
        raise BundleError(f"{path} is missing: BUNDLE_DIR must be the folder `lem bundle build --out` wrote")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BundleError(f"{path} is not readable JSON ({exc}); copy it from the build again") from None
    if manifest.get("format") != FORMAT:
        raise BundleError(f"{path}: bundle format {manifest.get('format')!r}, this unpacker reads {FORMAT}")
    return manifest


def verify(bundle: Path) -> dict:
    """The manifest, once every part is present with its size and sha256; else a BundleError naming each bad part."""
    manifest = read_manifest(bundle)
    parts = manifest["archive"]["parts"]
    problems = []
    for number, part in enumerate(parts, 1):
        path = bundle / part["file"]
        where = f"part {number} of {len(parts)} ({part['file']})"
        if not path.is_file():
            problems.append(f"{where} is missing from {bundle}")
        elif path.stat().st_size != part["bytes"]:
            problems.append(f"{where} has {path.stat().st_size} bytes, the manifest says {part['bytes']}")
        elif sha256_of(path) != part["sha256"]:
            problems.append(f"{where} is corrupted: its sha256 differs from the manifest's")
    if problems:
        raise BundleError("; ".join(problems) + ". Copy those parts again; nothing was unpacked")
    return manifest


class _Parts:
    """The parts read back to back as one stream, hashed on the way (the whole archive's sha256 is checked too)."""

    def __init__(self, paths: list[Path]) -> None:
        self._files: Iterator[Path] = iter(paths)
        self._current: BinaryIO | None = None
        self.digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        while True:
            if self._current is None:
                path = next(self._files, None)
                if path is None:
                    return b""
                self._current = path.open("rb")
            block = self._current.read(size if size and size > 0 else CHUNK)
            if block:
                self.digest.update(block)
                return block
            self._current.close()
            self._current = None


def _extract(archive: tarfile.TarFile, into: Path) -> None:
    if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4 / 3.12: refuses absolute paths, '..' and odd members
        archive.extractall(into, filter="data")
        return
    for member in archive:  # older Pythons: the same refusals by hand
        name = Path(member.name)
        if name.is_absolute() or ".." in name.parts or member.issym() or member.islnk() or member.isdev():
            raise BundleError(f"archive member {member.name!r} is not a plain file or folder inside the bundle")
        archive.extract(member, into)


def unpack(bundle: Path, target: Path, replace: bool = False) -> dict:
    """Verify ``bundle`` and install it at ``target`` (a folder for PYTHONPATH); the manifest is returned."""
    manifest = verify(bundle)
    target = target.resolve()
    if target.exists() and not replace:
        raise BundleError(f"{target} exists; pass --replace to swap it for this bundle, or choose another --target")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.parent / f".{target.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    try:
        stream = _Parts([bundle / part["file"] for part in manifest["archive"]["parts"]])
        # typeshed's fileobj protocol asks for write/tell/seek too; a stream ("r|") is only ever read
        with tarfile.open(fileobj=stream, mode="r|*") as archive:  # type: ignore[call-overload]
            _extract(archive, partial)
        while stream.read():  # anything after the tar's end still counts for the whole-archive hash
            pass
        if stream.digest.hexdigest() != manifest["archive"]["sha256"]:
            raise BundleError(
                "the parts are each intact but together differ from the archive the manifest names "
                "(parts from two different builds?); copy the whole bundle folder again"
            )
        (partial / STAMP).write_text(json.dumps(manifest, indent=1))
        if target.exists():
            old = target.parent / f".{target.name}.old-{os.getpid()}"
            target.rename(old)
            partial.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            partial.rename(target)
    except (tarfile.TarError, EOFError, OSError) as exc:
        shutil.rmtree(partial, ignore_errors=True)
        raise BundleError(f"the archive could not be unpacked ({exc}); nothing was installed at {target}") from exc
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", type=Path, help="the folder with manifest.json and the parts")
    parser.add_argument("--target", type=Path, help="install here (a folder for PYTHONPATH)")
    parser.add_argument("--replace", action="store_true", help="swap an existing target for this bundle")
    parser.add_argument("--check", action="store_true", help="verify the parts only; install nothing")
    args = parser.parse_args(argv)
    try:
        if args.check or args.target is None:
            if not args.check:
                parser.error("--target is needed to unpack (or --check to verify only)")
            manifest = verify(args.bundle)
            print(f"ok: {len(manifest['archive']['parts'])} parts verified ({manifest['name']})")
            return 0
        manifest = unpack(args.bundle, args.target, args.replace)
    except BundleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    packages = manifest.get("packages", [])
    print(f"unpacked {manifest['name']}: {len(packages)} packages into {args.target.resolve()}")
    print(f"export PYTHONPATH={args.target.resolve()}${{PYTHONPATH:+:$PYTHONPATH}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
