"""The timing table: a CSV with one row per measured architecture (per device fingerprint)."""
from __future__ import annotations

import csv
import io
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from search_space import ArchSpec, SpecError

COLUMNS = ["arch_id", "short", "spec_json", "median_ms", "p10_ms", "p90_ms", "raw_median_ms", "repeats", "anchor_ms",
           "reference_ms", "flops", "params", "fingerprint", "fingerprint_json", "measured_at"]
REQUIRED = ["arch_id", "spec_json", "median_ms", "p10_ms", "p90_ms", "repeats", "fingerprint"]
FITTED = ["flops", "params", "fingerprint_json"]  # a fit needs them too; tables older than them still read
NUMBERS = {"median_ms": "positive", "p10_ms": "non-negative", "p90_ms": "non-negative", "flops": "non-negative",
           "params": "non-negative"}  # each a finite number, where the table has it


class TableError(ValueError):
    """A timing table that cannot be used; the message says which file and what to do."""


def append_row(path: Path, row: dict) -> None:
    """Append one row, writing the header first for a new file (an existing file keeps its own
    columns, so tables written before a column was added stay readable); flushed at once."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists() or path.stat().st_size == 0
    if new:
        fields = COLUMNS
    else:
        with path.open(newline="") as f:
            fields = next(csv.reader(f))
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerow(row)
        f.flush()


def cut_row_start(data: bytes) -> int | None:
    """Where a last row whose write was cut short (a kill, a full disk) begins, or None. Rows are
    written whole with their line end: a last line without one is cut, unless it holds as many
    fields as the header (a table saved by an editor without a final line end)."""
    if not data or data.endswith(b"\n"):
        return None
    start = data.rfind(b"\n") + 1
    first_line = data[:data.find(b"\n")].rstrip(b"\r")
    header, tail = (next(csv.reader([line.decode(errors="replace")]), []) for line in (first_line, data[start:]))
    return None if start and len(tail) == len(header) else start


def drop_cut_row(path: Path) -> None:
    """Before appending to the table: a last row cut short is dropped (the next row would be glued
    to it; its architecture is measured again), a whole one gets its line end."""
    data = Path(path).read_bytes() if Path(path).exists() else b""
    if not data or data.endswith(b"\n"):
        return
    start = cut_row_start(data)
    if start is None:
        with open(path, "ab") as f:
            f.write(b"\r\n")  # as csv writes its rows
        return
    os.truncate(path, start)
    warnings.warn(f"timing table {path}: its last row was cut short (an interrupted write); dropped, and its "
                  f"architecture measured again", stacklevel=2)


def read_table(path: Path, *, rows_required: bool = True) -> pd.DataFrame:
    """Load and check a timing table (`rows_required`: one holding a header only is an error)."""
    path = Path(path)
    if not path.exists():
        raise TableError(f"timing table {path} does not exist; measure one with `etnas measure --out {path}`")
    data = path.read_bytes()
    cut = cut_row_start(data)
    if cut is not None:
        warnings.warn(f"timing table {path}: its last row was cut short (an interrupted write) and is left out; "
                      f"the same `etnas measure` measures it again", stacklevel=2)
    try:
        df = pd.read_csv(io.BytesIO(data[:cut]), dtype={"arch_id": str, "fingerprint": str})
    except pd.errors.EmptyDataError:
        raise TableError(f"timing table {path} is empty; measure some architectures first") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise TableError(f"{path} is not a timing table: not a valid CSV ({str(e).splitlines()[0]})") from None
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise TableError(f"timing table {path} lacks columns {missing}; was it written by `etnas measure`?")
    if df.empty and rows_required:
        raise TableError(f"timing table {path} has no rows; measure some architectures first")
    for column, sign in ((c, sign) for c, sign in NUMBERS.items() if c in df.columns):
        values = pd.to_numeric(df[column], errors="coerce")
        bad = ~np.isfinite(values) | ((values <= 0) if sign == "positive" else (values < 0))
        if bad.any():
            raise TableError(f"timing table {path} has {int(bad.sum())} row(s) whose {column} is missing or not a "
                             f"finite {sign} number; remove them or re-measure")
        df[column] = values
    for row, text in enumerate(df["spec_json"], start=1):
        try:
            ArchSpec.from_json(str(text)).validate()
        except SpecError as e:
            raise TableError(f"timing table {path} data row {row}: {e}; remove the row or re-measure") from None
    return df


def measured_counts(path: Path, fingerprint: str) -> dict[str, int]:
    """How many times each architecture was measured under this fingerprint (resume support)."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return {}
    df = read_table(path, rows_required=False)
    return df[df["fingerprint"] == fingerprint]["arch_id"].value_counts().to_dict()


def select_fingerprint(df: pd.DataFrame, fingerprint: str | None) -> tuple[pd.DataFrame, dict]:
    """The rows of one device fingerprint and its settings (None: the table's only one)."""
    fps = df["fingerprint"].unique().tolist()
    if fingerprint is None:
        if len(fps) > 1:
            raise TableError(f"the table mixes {len(fps)} device fingerprints {fps}; pick one with --fingerprint")
        fingerprint = fps[0]
    elif fingerprint not in fps:
        raise TableError(f"fingerprint {fingerprint} is not in the table (it has {fps})")
    rows = df[df["fingerprint"] == fingerprint]
    fp = json.loads(rows["fingerprint_json"].iloc[0]) if "fingerprint_json" in rows else {}
    return rows, {**fp, "id": fingerprint}


def reference_of(rows: pd.DataFrame, source: Path | str) -> float | None:
    """The anchor latency that `rows` are scaled to (see `measure.measure_all`); None where they
    were measured before references existed."""
    if "reference_ms" not in rows or rows.empty:
        return None
    refs = pd.to_numeric(rows["reference_ms"], errors="coerce")
    if refs.isna().any() or refs.nunique() != 1:
        raise TableError(f"timing table {source} mixes rows of {refs.nunique()} reference speeds (or none), so they "
                         f"are not on one scale; measure into one table, or use --reference to put a new one on "
                         f"another's scale")
    return float(refs.iloc[0])


def reference_speed(path: Path, fingerprint: str, *, force: bool = False) -> float:
    """The reference speed (anchor ms) of a timing table or a latency model, for a measurement on
    device `fingerprint` to be put on its scale; one measured elsewhere only with `force`."""
    from .predictor import LatencyModel

    if path.suffix == ".model":
        model = LatencyModel.load(path)
        ref, other = model.reference_ms, model.fingerprint.get("id")
    else:
        table = read_table(path)
        rows, fp = select_fingerprint(table, fingerprint if fingerprint in set(table["fingerprint"]) else None)
        ref, other = reference_of(rows, path), fp["id"]
    if ref is None:
        raise TableError(f"{path} was measured before timings were scaled to a reference; it cannot be one")
    if other != fingerprint and not force:
        raise TableError(f"{path} was measured on another device or setting (fingerprint {other}, here "
                         f"{fingerprint}); its reference speed means nothing here (--force to use it anyway)")
    return ref


def table_reference(path: Path, fingerprint: str, wanted: float | None = None) -> float | None:
    """The reference a measurement appending to `path` must use: the table's own where it has rows
    for this fingerprint (it must agree with `wanted`), else `wanted` (None: set by the first chunk)."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return wanted
    rows = read_table(path, rows_required=False)
    if "reference_ms" not in rows:  # appending would drop the new columns (the file keeps its header)
        raise TableError(f"timing table {path} was measured before timings were scaled to a reference; "
                         f"measure into a new file")
    rows = rows[rows["fingerprint"] == fingerprint]
    if rows.empty:
        return wanted
    own = reference_of(rows, path)
    if wanted is not None and abs(own - wanted) > 1e-9 * own:
        raise TableError(f"timing table {path} is on a reference of {own:.4f} ms, not the {wanted:.4f} ms asked "
                         f"for; measure into a new file")
    return own
