#!/usr/bin/env python3
"""Independent Iceberg reader used by ticklake's integration tests.

Reads a table that the Rust side (iceberg-rust's SQL catalog) wrote, through
pyiceberg's SqlCatalog, which uses the same JDBC-catalog tables
(iceberg_tables, iceberg_namespace_properties). A second implementation
reading the data catches bugs a Rust-only round trip would hide. With an
http(s):// --catalog-uri it reads through pyiceberg's REST catalog client
instead (credentials as --prop credential=ID:SECRET or token=…), and
--warehouse is optional.

Prints JSON: {"rows": N, "columns": [...], "data": [{col: value}, ...]}
Values are made JSON-safe without losing precision:
  decimal   -> exact string in plain notation with the column's scale
               (format(Decimal, "f"): "0.00000001", never "1E-8", never via float)
  timestamp -> integer microseconds since the Unix epoch, UTC
  date      -> ISO string; time -> microseconds since midnight
  list      -> list; map -> object; struct -> object
  bytes     -> hex string
Rows are sorted by message_id when the table has that column.
"""

import argparse
import datetime as dt
import decimal
import json
import os
import sys
import uuid

import pyarrow as pa
from pyiceberg.catalog.rest import RestCatalog
from pyiceberg.catalog.sql import SqlCatalog

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def _micros(ts):
    if ts.tzinfo is None:
        # Iceberg `timestamp` (without zone) is wall-clock; treat it as UTC.
        ts = ts.replace(tzinfo=dt.timezone.utc)
    delta = ts - EPOCH
    # Integer arithmetic: timedelta.total_seconds() would round through float.
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _json_value(v):
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        return v
    if isinstance(v, decimal.Decimal):
        # str() would give "1E-8" for small values; "f" keeps every digit of
        # the stored scale in plain notation, which is what Rust prints.
        return format(v, "f")
    if isinstance(v, dt.datetime):
        return _micros(v)
    if isinstance(v, dt.date):
        return v.isoformat()
    if isinstance(v, dt.time):
        return ((v.hour * 60 + v.minute) * 60 + v.second) * 1_000_000 + v.microsecond
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v).hex()
    if isinstance(v, uuid.UUID):
        return str(v)
    if isinstance(v, dict):
        return {str(k): _json_value(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        # pyarrow renders map<k,v> as a list of (key, value) tuples.
        return [_json_value(x) for x in v]
    raise TypeError(f"no JSON form for {type(v).__name__}: {v!r}")


def _column_values(col):
    """Python values of one Arrow column, with maps turned into dicts."""
    typ = col.type
    if pa.types.is_timestamp(typ):
        # Read timestamps as raw integers in their unit: exact, no
        # datetime round trip, and nanosecond columns don't raise.
        unit = {"s": 1_000_000, "ms": 1_000, "us": 1, "ns": None}[typ.unit]
        ints = col.cast(pa.int64()).to_pylist()
        if unit is None:
            return [None if x is None else x // 1000 for x in ints]
        return [None if x is None else x * unit for x in ints]
    vals = col.to_pylist()
    return [_convert(typ, v) for v in vals]


def _convert(typ, v):
    if v is None:
        return None
    if pa.types.is_map(typ):
        return {str(_convert(typ.key_type, k)): _convert(typ.item_type, x) for k, x in v}
    if pa.types.is_list(typ) or pa.types.is_large_list(typ) or pa.types.is_fixed_size_list(typ):
        return [_convert(typ.value_type, x) for x in v]
    if pa.types.is_struct(typ):
        return {f.name: _convert(f.type, v.get(f.name)) for f in typ}
    return _json_value(v)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--catalog-uri", required=True, help="e.g. sqlite:////abs/catalog.db")
    ap.add_argument("--warehouse", help="e.g. file:///abs/warehouse (required for a SQL catalog)")
    ap.add_argument("--catalog-name", default="ticklake")
    ap.add_argument("--table", required=True, help="namespace.table, e.g. market.trades")
    ap.add_argument("--columns", help="comma-separated subset of columns")
    ap.add_argument(
        "--prop",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="catalog and FileIO property, repeatable; for an s3:// warehouse "
        "s3.endpoint, s3.access-key-id, s3.secret-access-key, s3.region",
    )
    args = ap.parse_args()
    props = {}
    for p in args.prop:
        key, sep, value = p.partition("=")
        if not sep or not key:
            print(f"pyiceberg_read: --prop {p!r} is not KEY=VALUE", file=sys.stderr)
            return 2
        props[key] = value

    if args.catalog_uri.startswith(("http://", "https://")):
        if args.warehouse:
            props["warehouse"] = args.warehouse
        catalog = RestCatalog(args.catalog_name, uri=args.catalog_uri, **props)
        return read(catalog, args)
    if not args.warehouse:
        print("pyiceberg_read: --warehouse is required for a SQL catalog", file=sys.stderr)
        return 2
    prefix = "sqlite:///"
    if args.catalog_uri.startswith(prefix):
        # SQLite would silently create an empty database for a wrong path.
        path = args.catalog_uri[len(prefix):]
        if not os.path.isfile(path):
            print(f"pyiceberg_read: no catalog database at {path}", file=sys.stderr)
            return 1
    # init_catalog_tables=false: this is a reader; never create or migrate the
    # catalog tables that the Rust side owns.
    catalog = SqlCatalog(
        args.catalog_name,
        uri=args.catalog_uri,
        warehouse=args.warehouse,
        init_catalog_tables="false",
        **props,
    )
    return read(catalog, args)


def read(catalog, args):
    table = catalog.load_table(args.table)
    if args.columns:
        cols = tuple(c.strip() for c in args.columns.split(",") if c.strip())
        arrow = table.scan(selected_fields=cols).to_arrow()
    else:
        arrow = table.scan().to_arrow()

    names = arrow.column_names
    columns = {name: _column_values(arrow.column(name).combine_chunks()) for name in names}
    data = [{name: columns[name][i] for name in names} for i in range(arrow.num_rows)]
    if "message_id" in names:
        data.sort(key=lambda r: (r["message_id"] is None, r["message_id"] or ""))

    json.dump({"rows": arrow.num_rows, "columns": names, "data": data}, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
