#!/usr/bin/env python3
"""Appends a few trades to a ticklake table as another engine would.

Used by ticklake's integration tests to write a "foreign" snapshot: one
that pyiceberg commits through the same SQL catalog, with rows matching the
table's schema and no `ticklake.kafka.offsets` summary property (nothing
but the daemon knows Kafka offsets). The daemon must then resume from the
newest snapshot below it that carries the offsets.

Prints JSON:
  {"appended": N, "message_ids": [...],
   "parent_snapshot_id": id before the append,
   "snapshot_id": id of the appended snapshot,
   "summary": the appended snapshot's summary (it has no offsets),
   "offsets_snapshot_id": newest ancestor carrying ticklake.kafka.offsets,
   "offsets": that property, parsed}
"""

import argparse
import datetime as dt
import decimal
import json
import os
import sys
import uuid

import pyarrow as pa
from pyiceberg.catalog.sql import SqlCatalog

OFFSETS = "ticklake.kafka.offsets"


def newest_with_offsets(table, snapshot_id):
    """Walks back from snapshot_id through the parents, independently of
    the daemon's own walk, to the newest snapshot recording offsets."""
    while snapshot_id is not None:
        snap = table.snapshot_by_id(snapshot_id)
        if snap is None:
            return None, None
        recorded = snap.summary[OFFSETS] if snap.summary is not None else None
        if recorded is not None:
            return snap.snapshot_id, json.loads(recorded)
        snapshot_id = snap.parent_snapshot_id
    return None, None


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--catalog-uri", required=True, help="e.g. sqlite:////abs/catalog.db")
    ap.add_argument("--warehouse", required=True, help="e.g. file:///abs/warehouse")
    ap.add_argument("--catalog-name", default="ticklake")
    ap.add_argument("--table", default="market.trades")
    ap.add_argument("--rows", type=int, default=3)
    ap.add_argument("--exchange", default="FOREIGN", help="exchange of the appended rows")
    args = ap.parse_args()

    prefix = "sqlite:///"
    if args.catalog_uri.startswith(prefix) and not os.path.isfile(args.catalog_uri[len(prefix):]):
        # SQLite would silently create an empty database for a wrong path.
        print(f"pyiceberg_append: no catalog database at {args.catalog_uri}", file=sys.stderr)
        return 1
    catalog = SqlCatalog(
        args.catalog_name,
        uri=args.catalog_uri,
        warehouse=args.warehouse,
        init_catalog_tables="false",
    )
    table = catalog.load_table(args.table)
    parent = table.current_snapshot()
    parent_id = parent.snapshot_id if parent is not None else None

    now = dt.datetime.now(dt.timezone.utc)
    rows = []
    for i in range(args.rows):
        rows.append(
            {
                "message_id": f"foreign-{uuid.uuid4()}",
                "trade_id": f"{args.exchange}-{i}",
                "symbol": "BTCUSDT",
                "exchange": args.exchange,
                "asset_class": "crypto",
                "timestamp": now + dt.timedelta(milliseconds=i),
                "ingestion_timestamp": now,
                "price": decimal.Decimal("65000.12345678"),
                "quantity": decimal.Decimal("0.00100000"),
                "currency": "USDT",
                "side": "BUY" if i % 2 == 0 else "SELL",
                "trade_conditions": [],
                "source_sequence": i,
                "platform_sequence": None,
                "vendor_data": {"written_by": "pyiceberg"},
            }
        )
    # The table's own Arrow schema (field ids, required fields), so the
    # rows are exactly what the table takes.
    schema = table.schema().as_arrow()
    table.append(pa.Table.from_pylist(rows, schema=schema))

    table = catalog.load_table(args.table)
    snap = table.current_snapshot()
    offsets_id, offsets = newest_with_offsets(table, snap.snapshot_id)
    summary = {k: v for k, v in snap.summary.additional_properties.items()}
    summary["operation"] = str(snap.summary.operation.value)
    json.dump(
        {
            "appended": len(rows),
            "message_ids": [r["message_id"] for r in rows],
            "parent_snapshot_id": parent_id,
            "snapshot_id": snap.snapshot_id,
            "summary": summary,
            "offsets_snapshot_id": offsets_id,
            "offsets": offsets,
        },
        sys.stdout,
    )
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
