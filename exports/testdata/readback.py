"""Reads an export with readers independent of the Go code, for the
integration tests of package exports: pyarrow for Parquet and the Arrow IPC
stream format, Python's csv module for CSV.

  python3 readback.py csv|arrow|parquet FILE
  python3 readback.py deps   (exits 0 when the pyarrow of requirements.txt is installed)

prints {"rows": N, "batches": B, "columns": [...], "sha256": HEX}: the
SHA-256 of every row, each value as CSV writes it (text as is, integers in
decimal, booleans true/false, timestamps RFC 3339 in UTC, null empty),
values separated by U+001F and each row ended by a newline; batches counts
Arrow record batches or Parquet row groups. Files are read a batch at a
time. `make services` (deploy/local/services.sh) installs the pyarrow
that requirements.txt pins.
"""

import csv
import hashlib
import json
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

REQUIREMENT = (Path(__file__).parent / "requirements.txt").read_text().strip()


def need_pyarrow():
    want = REQUIREMENT.split("==")[1]
    try:
        have = metadata.version("pyarrow")
    except metadata.PackageNotFoundError:
        sys.exit(f"readback.py: pyarrow is not installed: run `make services` (it installs {REQUIREMENT})")
    if have != want:
        sys.exit(f"readback.py: pyarrow {have} is installed, want {want}: run `make services`")


def text(v):
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, datetime):
        v = v.astimezone(timezone.utc)
        return f"{v.year:04d}-{v.month:02d}-{v.day:02d}T{v.hour:02d}:{v.minute:02d}:{v.second:02d}Z"
    return str(v)


def batches_of(kind, path):
    """Yields (column names, rows of one batch)."""
    if kind == "csv":
        with open(path, newline="", encoding="utf-8") as f:
            r = csv.reader(f, strict=True)
            names = next(r)
            yield names, r
        return
    need_pyarrow()
    import pyarrow.ipc
    import pyarrow.parquet

    if kind == "arrow":
        with pyarrow.ipc.open_stream(path) as r:
            for b in r:
                yield b.schema.names, zip(*(c.to_pylist() for c in b.columns))
    elif kind == "parquet":
        f = pyarrow.parquet.ParquetFile(path)
        for g in range(f.num_row_groups):
            t = f.read_row_group(g)
            yield t.schema.names, zip(*(c.to_pylist() for c in t.columns))
    else:
        sys.exit(f"readback.py: unknown format {kind!r}")


def main(kind, path):
    h = hashlib.sha256()
    rows = batches = 0
    columns = []
    for names, batch in batches_of(kind, path):
        columns = names
        batches += 1
        for row in batch:
            h.update(("\x1f".join(text(v) for v in row) + "\n").encode("utf-8"))
            rows += 1
    if kind == "csv":
        batches = 0
    print(json.dumps({"rows": rows, "batches": batches, "columns": columns, "sha256": h.hexdigest()}))


if __name__ == "__main__":
    if sys.argv[1:] == ["deps"]:
        need_pyarrow()
        sys.exit(0)
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
