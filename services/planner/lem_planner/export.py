"""Results as files for notebooks (MEAS-07): one row per run, per experiment with bootstrap CIs, or per served
request of the serving runs, as CSV, Parquet or JSON; and the side-by-side comparison of two experiments or
campaigns.

``COLUMNS`` lists every exported column (name, unit, type, meaning): the run columns are ``RunRecord``'s
(lem_shared/run_record.py), the experiment columns its summary metrics', the request columns the run's identity
columns and the ``request_timings`` row's figures; ``lem results columns`` prints them, and a test checks the files
hold exactly these columns (plus ``config.*``, the flattened experiment).
"""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import UnionType
from typing import Any, BinaryIO, Union, get_args, get_origin

from pydantic import BaseModel

from lem_planner.results import SERVING_SUMMARY_METRICS, SUMMARY_METRICS, load_runs, summarise_experiment
from lem_planner.safe_write import check_target, write_atomically
from lem_shared.config.keys import flatten
from lem_shared.config.schema import ExperimentConfig
from lem_shared.params.engine import EngineSection
from lem_shared.run_record import BOOL, FLOAT, INT, RUN_COLUMNS, TEXT, TIMESTAMP, Column, RunRecord

FORMATS = ("csv", "parquet", "json")


_UNIT = {c.name: c.unit for c in RUN_COLUMNS}
_MEANING = {c.name: c.meaning for c in RUN_COLUMNS}
_EXPERIMENT_IDENTITY = [
    "campaign_id",
    "campaign_name",
    "campaign_source",
    "experiment_index",
    "config_hash",
    "backend",
    "model",
    "dtype",
    "batch_size",
]
EXPERIMENT_COLUMNS: list[Column] = [
    *(c for c in RUN_COLUMNS if c.name in _EXPERIMENT_IDENTITY),
    Column("runs", "runs", INT, "runs of the experiment (all statuses)"),
    Column("runs_done", "runs", INT, "runs measured and finalised"),
    Column("runs_valid", "runs", INT, "done runs whose verdict is valid"),
    *(
        column
        for metric in [*SUMMARY_METRICS, *SERVING_SUMMARY_METRICS]
        for column in (
            Column(f"{metric}_mean", _UNIT[metric], FLOAT, f"{_MEANING[metric]}: mean over the done runs"),
            Column(
                f"{metric}_ci_low",
                _UNIT[metric],
                FLOAT,
                f"{_MEANING[metric]}: lower end of the 95 % percentile-bootstrap interval (empty under 2 runs)",
            ),
            Column(f"{metric}_ci_high", _UNIT[metric], FLOAT, f"{_MEANING[metric]}: upper end of that interval"),
            Column(f"{metric}_n", "runs", INT, f"{_MEANING[metric]}: runs with a figure"),
        )
    ),
]
_RUN_IDENTITY = ["campaign_id", "run_id", "run_key", "experiment_index", "cycle", "backend"]
_ONE_CLOCK = "UTC, from the worker's clock (CSV and JSON: ISO 8601 text)"
REQUEST_COLUMNS: list[Column] = [
    *(c for c in RUN_COLUMNS if c.name in _RUN_IDENTITY),
    Column("request_index", "", INT, "the request's position in the run's workload, from 0"),
    Column("arrival", "UTC", TIMESTAMP, f"when the request arrived at the engine ({_ONE_CLOCK})"),
    Column("first_token", "UTC", TIMESTAMP, "when its first output token came (empty when it produced none)"),
    Column("finish", "UTC", TIMESTAMP, "when it completed"),
    Column("prompt_tokens", "tokens", INT, "its prompt's tokens"),
    Column("output_tokens", "tokens", INT, "the tokens it generated"),
    Column("ttft_s", "s", FLOAT, "time to first token: first_token - arrival"),
    Column(
        "tpot_s",
        "s",
        FLOAT,
        "time per output token after the first: (finish - first_token) / (output_tokens - 1); empty for 1 token",
    ),
    Column("e2e_s", "s", FLOAT, "end-to-end latency: finish - arrival (empty, like ttft_s, without a token)"),
    Column(
        "energy_j",
        "J",
        FLOAT,
        "its token share of each engine step's counter energy (empty without NVML: CPU runs have none)",
    ),
]
COLUMNS = {"run": RUN_COLUMNS, "experiment": EXPERIMENT_COLUMNS, "request": REQUEST_COLUMNS}
# backend, model, dtype and batch_size are columns of their own, so config.* leaves them out.
_OWN_COLUMNS = ("backend", "model", "dtype", "batch_size")
CONFIG_COLUMN = Column(
    "config.*",
    "",
    "",
    "the rest of the experiment's configuration, flattened to dotted keys: every experiment "
    "field (workload.*, measurement.*) with its value, defaults included; engine parameters (pytorch.*, vllm.*, "
    "trtllm.*) only where set (unset means the engine's default); typed as the field is (engine parameters and "
    "imported keys: as their values are, text when they differ)",
)


def run_rows(campaign_id: int, runs: list[RunRecord] | None = None) -> list[dict[str, Any]]:
    """One row per run of the campaign: RUN_COLUMNS, then ``config.*`` (``runs``: its ``load_runs`` when the
    caller already has them)."""
    return [
        {**run.row(), **config_columns(run.experiment)} for run in (load_runs(campaign_id) if runs is None else runs)
    ]


def experiment_rows(campaign_id: int, resamples: int = 2000, seed: int = 0) -> list[dict[str, Any]]:
    """One row per experiment: identity, run counts, and per summary metric the mean and bootstrap CI."""
    by_experiment: dict[int, list[dict[str, Any]]] = defaultdict(list)
    rows_by_experiment: dict[int, list[dict[str, Any]]] = defaultdict(list)
    runs = load_runs(campaign_id)
    for run in runs:
        by_experiment[run.experiment_index].append(run.shown())
    for row in run_rows(campaign_id, runs):
        rows_by_experiment[row["experiment_index"]].append(row)
    out = []
    for index in sorted(by_experiment):
        summary = summarise_experiment(by_experiment[index], resamples=resamples, seed=seed)
        first = rows_by_experiment[index][0]
        row = {column.name: None for column in EXPERIMENT_COLUMNS}  # offline experiments: no serving figures
        row.update({name: first[name] for name in _EXPERIMENT_IDENTITY})
        row.update(
            runs=summary["runs"],
            runs_done=summary["runs_done"],
            runs_valid=sum(1 for r in by_experiment[index] if r["status"] == "done" and r["verdict"] == "valid"),
        )
        for metric, figures in summary["metrics"].items():
            row.update(
                {
                    f"{metric}_mean": figures["mean"],
                    f"{metric}_ci_low": figures["ci_low"],
                    f"{metric}_ci_high": figures["ci_high"],
                    f"{metric}_n": figures["n"],
                }
            )
        out.append(
            {
                **{c.name: row[c.name] for c in EXPERIMENT_COLUMNS},
                **{k: v for k, v in first.items() if k.startswith("config.")},
            }
        )
    return out


def _utc(unix_s: float | None) -> str | None:
    """Unix seconds as the run export writes its window: ISO 8601 with the UTC offset."""
    return None if unix_s is None else datetime.fromtimestamp(unix_s, UTC).isoformat()


def request_rows(campaign_id: int) -> list[dict[str, Any]]:
    """One row per stored request of the campaign's serving runs (experiment, cycle, request order):
    REQUEST_COLUMNS, then ``config.*``. Latencies come from ``lem_shared.measure.serving.request_latency``."""
    from sqlalchemy import select
    from sqlalchemy.orm import joinedload, selectinload

    from lem_shared.db.models import Run
    from lem_shared.db.session import session_scope
    from lem_shared.measure.metrics import request_traces
    from lem_shared.measure.serving import request_latency

    rows = []
    with session_scope() as s:
        runs = s.scalars(
            select(Run)
            .where(Run.campaign_id == campaign_id)
            .options(joinedload(Run.experiment), selectinload(Run.requests))
        ).all()
        for run in sorted(runs, key=lambda r: (r.experiment.index, r.cycle)):
            identity = {
                "campaign_id": run.campaign_id,
                "run_id": run.id,
                "run_key": run.run_key,
                "experiment_index": run.experiment.index,
                "cycle": run.cycle,
                "backend": run.experiment.backend,
            }
            config = config_columns(run.experiment.config)
            for request in sorted(run.requests, key=lambda r: r.request_index):
                traces = request_traces([request])  # none for a request without a token
                latency = request_latency(traces[0]) if traces else None
                rows.append(
                    {
                        **identity,
                        "request_index": request.request_index,
                        "arrival": _utc(request.arrival),
                        "first_token": _utc(request.first_token),
                        "finish": _utc(request.finish),
                        "prompt_tokens": request.prompt_tokens,
                        "output_tokens": request.output_tokens,
                        "ttft_s": latency.ttft_s if latency else None,
                        "tpot_s": latency.tpot_s if latency else None,
                        "e2e_s": latency.e2e_s if latency else None,
                        "energy_j": request.energy_j,
                        **config,
                    }
                )
    return rows


def config_columns(config: dict[str, Any]) -> dict[str, Any]:
    """The experiment's configuration as ``config.*`` columns: every set key but the ones with columns of their
    own (``_OWN_COLUMNS``); a key whose value is None (an option left to its default) has none."""
    return {f"config.{k}": v for k, v in flatten(config).items() if k not in _OWN_COLUMNS and v is not None}


def _field_types(model: type[BaseModel], prefix: str = "config.") -> dict[str, str]:
    """Column types of ExperimentConfig's own fields, dotted as ``flatten`` names them (engine sections left out:
    their parameters are typed by their values)."""
    types: dict[str, str] = {}
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, EngineSection):
            continue
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            types.update(_field_types(annotation, f"{prefix}{name}."))
            continue
        args = get_args(annotation) if get_origin(annotation) in (Union, UnionType) else (annotation,)
        plain = [a for a in args if a is not type(None)]
        types[prefix + name] = {bool: BOOL, int: INT, float: FLOAT}.get(plain[0], TEXT) if len(plain) == 1 else TEXT
    return types


CONFIG_TYPES = _field_types(ExperimentConfig)


def _value_type(values: list[Any]) -> str:
    """The type of a column outside the table (an engine parameter, an imported key): its values' one type
    (int and float: float), text when they differ or there are none."""
    kinds = {type(v) for v in values if v is not None}
    if kinds == {int, float}:
        return FLOAT
    if len(kinds) == 1:
        return {bool: BOOL, int: INT, float: FLOAT}.get(kinds.pop(), TEXT)
    return TEXT


def columns_of(rows: list[dict[str, Any]], documented: list[Column]) -> list[Column]:
    """The file's columns: the documented ones with their types, then the rows' ``config.*`` keys (ExperimentConfig
    fields typed as declared, others by their values)."""
    known = {c.name for c in documented}
    extra = [k for k in dict.fromkeys(k for row in rows for k in row) if k not in known]
    return [
        *documented,
        *(
            Column(name, "", CONFIG_TYPES.get(name) or _value_type([r.get(name) for r in rows]), "configuration")
            for name in extra
        ),
    ]


def _typed(value: Any, column: Column) -> Any:
    """``value`` as ``column``'s type: ints as int, numbers as float, lists and mappings (and whatever a text
    column holds) as text, JSON for the structured ones; timestamps stay ISO 8601 text (Parquet converts)."""
    if value is None:
        return None
    if column.type == FLOAT and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if column.type == INT and isinstance(value, int | float) and not isinstance(value, bool) and value == int(value):
        return int(value)
    if column.type == BOOL and isinstance(value, bool):
        return value
    if column.type in (TEXT, TIMESTAMP) and isinstance(value, str):
        return value
    if column.type == TEXT:
        return json.dumps(value, sort_keys=True) if isinstance(value, list | dict) else str(value)
    raise TypeError(f"column {column.name} ({column.type}) cannot hold {value!r}")


def write(rows: list[dict[str, Any]], path: Path, fmt: str, documented: list[Column]) -> int:
    """Write ``rows`` to ``path`` as csv, parquet or json (a list of records), typed by ``documented`` and
    ``config.*`` as ``columns_of`` says; returns the row count. The file appears whole or not at all
    (``safe_write``): a failed write leaves what was at ``path``; a target that is not a regular file or whose
    folder does not exist is refused (``BadTarget``), nothing is created."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")
    columns = columns_of(rows, documented)
    table = typed_rows(rows, columns)

    def write_to(f: BinaryIO) -> None:
        if fmt == "csv":
            text = io.TextIOWrapper(f, encoding="utf-8", newline="")
            writer = csv.DictWriter(text, fieldnames=[c.name for c in columns])
            writer.writeheader()
            writer.writerows(table)
            text.flush()
            text.detach()
        elif fmt == "json":
            f.write((json.dumps(table, indent=1, ensure_ascii=False) + "\n").encode("utf-8"))
        else:
            import pyarrow.parquet as pq

            pq.write_table(arrow_table(table, columns), f)

    write_atomically(path, write_to)
    return len(table)


def arrow_schema(columns: list[Column]) -> Any:
    """Parquet's schema: each column's type from the table, its unit and meaning in the field's metadata."""
    import pyarrow as pa

    types = {
        INT: pa.int64(),
        FLOAT: pa.float64(),
        BOOL: pa.bool_(),
        TEXT: pa.string(),
        TIMESTAMP: pa.timestamp("us", tz="UTC"),
    }
    return pa.schema(
        [pa.field(c.name, types[c.type], metadata={"unit": c.unit, "meaning": c.meaning}) for c in columns]
    )


def arrow_table(table: list[dict[str, Any]], columns: list[Column]) -> Any:
    import pyarrow as pa

    stamps = [c.name for c in columns if c.type == TIMESTAMP]
    rows = [{**r, **{n: datetime.fromisoformat(r[n]) if r[n] else None for n in stamps}} for r in table]
    return pa.Table.from_pylist(rows, schema=arrow_schema(columns))


def export(campaign_id: int, path: Path, fmt: str, level: str = "run") -> int:
    """Write the campaign's rows of ``level`` (run, experiment, request) to ``path``; the row count. A campaign
    without rows of the level still gets a file: its columns and no rows."""
    if level not in COLUMNS:
        raise ValueError(f"level must be one of {', '.join(COLUMNS)}, got {level!r}")
    check_target(path)  # refused before the database is read
    rows_of: dict[str, Callable[[int], list[dict[str, Any]]]] = {
        "run": run_rows,
        "experiment": experiment_rows,
        "request": request_rows,
    }
    return write(rows_of[level](campaign_id), path, fmt, COLUMNS[level])


SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".json": "json"}


class FormatError(ValueError):
    """The format cannot be told from the file name, or contradicts it."""


def format_for(path: Path, fmt: str | None) -> str:
    """The format to write ``path`` in: ``fmt`` when given, else the one its suffix names; a given format that
    another known suffix contradicts (``--format csv -o runs.parquet``) is refused."""
    implied = SUFFIXES.get(path.suffix.lower())
    if fmt is not None:
        if implied is not None and fmt != implied:
            raise FormatError(
                f"--format {fmt} contradicts the file name {path.name} ({implied}); drop --format or "
                f"name the file .{fmt}"
            )
        return fmt
    if implied is None:
        raise FormatError(
            f"{path}: cannot tell the format from the name; give --format csv|parquet|json or name "
            "the file .csv, .parquet or .json"
        )
    return implied


def typed_rows(rows: list[dict[str, Any]], columns: list[Column]) -> list[dict[str, Any]]:
    """The rows with each value in its column's type (what every format writes)."""
    return [{c.name: _typed(row.get(c.name), c) for c in columns} for row in rows]


def typed_table(rows: list[dict[str, Any]], documented: list[Column]) -> Any:
    """The rows as the export's Arrow table: its columns (``columns_of``), types and field metadata."""
    columns = columns_of(rows, documented)
    return arrow_table(typed_rows(rows, columns), columns)
