"""Reading a campaign file: regular files only, bounded size, UTF-8 (UTF-16 and binary refused with the reason),
the safe YAML subset with duplicate keys refused."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml

from lem_shared.config.errors import ConfigError
from lem_shared.settings import get_settings

_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def read_campaign_file(path: str | Path) -> str:
    """The text of a campaign file, or ConfigError with one line naming the path and the problem. It must be a
    regular file (a symlink to one is followed; a device, FIFO, socket or directory is refused without reading
    it, so nothing blocks or reads forever) of at most ``LEM_MAX_CAMPAIGN_FILE_BYTES``, in UTF-8. Every command
    that takes a campaign file (plan, validate, run, schedule add) reads it through here."""
    limit = get_settings().max_campaign_file_bytes
    try:
        _check_regular(path, os.stat(path).st_mode)
        # O_NONBLOCK: should the path have become a FIFO since the stat, opening it does not wait for a writer.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such file"]) from None
    except PermissionError:
        raise ConfigError([f"{path}: cannot be read (permission denied)"]) from None
    except OSError as exc:
        raise ConfigError([f"{path}: cannot be read ({exc.strerror or exc})"]) from None
    try:
        info = os.fstat(fd)
        _check_regular(path, info.st_mode)
        chunks: list[bytes] = []
        size = 0
        while size <= limit and (chunk := os.read(fd, min(limit + 1 - size, 1 << 20))):
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise ConfigError([f"{path}: cannot be read ({exc.strerror or exc})"]) from None
    finally:
        os.close(fd)
    if size > limit:
        raise ConfigError(
            [
                f"{path}: {max(size, info.st_size):,} bytes, over the limit of {limit:,}; a campaign "
                "file is a few KiB (raise LEM_MAX_CAMPAIGN_FILE_BYTES if it must be larger)"
            ]
        )
    return decode_campaign_text(b"".join(chunks), str(path))


def _check_regular(path: str | Path, mode: int) -> None:
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _FILE_KINDS if test(mode)), "not a file")
        raise ConfigError([f"{path}: not a regular file ({kind}); give a campaign YAML file"])


def decode_campaign_text(data: bytes, origin: str) -> str:
    """A campaign file's bytes as text, or ConfigError (one line) when they are not UTF-8 text."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")) or _looks_like_utf16(data):
        raise ConfigError([f"{origin}: not UTF-8 text (it looks like UTF-16); save it as UTF-8"])
    nul = data.find(b"\x00")
    if nul >= 0:
        raise ConfigError([f"{origin}: not text (a NUL byte at offset {nul}); give a campaign YAML file"])
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ConfigError(
            [
                f"{origin}: not UTF-8 text (byte 0x{data[exc.start]:02x} at line {line}, column "
                f"{column}: Latin-1 or another encoding?); save it as UTF-8"
            ]
        ) from None


def _looks_like_utf16(data: bytes) -> bool:
    """UTF-16 without a byte order mark: mostly ASCII text with a NUL beside nearly every character."""
    sample = data[:4096]
    half = len(sample) // 2
    return half >= 2 and max(sample[0::2].count(0), sample[1::2].count(0)) >= 0.8 * half


# a base chosen at import time (PyYAML built without libyaml has no CSafeLoader), which mypy cannot type
class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """The safe subset of YAML (the C parser when PyYAML has it) that refuses a key given twice in one mapping
    (PyYAML keeps the last one silently). Keys merged in with ``<<`` may be overridden, as YAML intends."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                continue
            key = self.construct_object(key_node)
            if key in first_line:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} (first at line {first_line[key]}); give each key once",
                    key_node.start_mark,
                )
            first_line[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str, origin: str) -> dict[str, Any]:
    """A campaign file's text as a mapping (the safe YAML subset, no key given twice), or raise ConfigError
    naming ``origin`` and where the YAML is wrong."""
    try:
        raw = yaml.load(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = " ".join(str(exc.problem or exc).split())
        raise ConfigError([f"{origin}: not valid YAML{where}: {problem}"]) from None
    except yaml.YAMLError as exc:  # a character YAML does not allow, ...
        raise ConfigError([f"{origin}: not valid YAML: {' '.join(str(exc).split())}"]) from None
    except RecursionError:
        raise ConfigError([f"{origin}: not valid YAML: nested too deeply"]) from None
    if not isinstance(raw, dict):
        raise ConfigError([f"{origin}: must be a mapping of keys (name, cycles, experiment, grid)"])
    return raw
