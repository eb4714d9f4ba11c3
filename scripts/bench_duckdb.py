#!/usr/bin/env python3
"""One day of 1-minute OHLCV of one symbol in DuckDB, straight from the
lake's Parquet files, for `ticklake bench-api latency --duckdb-python`.
Prints {"p50_ms", "p99_ms", "bars"} as JSON. Same bars as /v1/ohlcv: epoch-
aligned buckets, open/close by (timestamp, source_sequence), volume the sum
of quantities."""

import argparse
import json
import time

import duckdb


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--glob", required=True)
    ap.add_argument("--symbol", required=True)
    ap.add_argument("--start-us", type=int, required=True)
    ap.add_argument("--end-us", type=int, required=True)
    ap.add_argument("--iterations", type=int, default=20)
    a = ap.parse_args()
    con = duckdb.connect()
    sql = """
        select time_bucket(interval 1 minute, "timestamp") as time,
               arg_min(price, ("timestamp", source_sequence)) as open,
               max(price) as high, min(price) as low,
               arg_max(price, ("timestamp", source_sequence)) as close,
               sum(quantity) as volume, count(*) as trades
        from read_parquet($glob, hive_partitioning = false)
        where symbol = $symbol
          and "timestamp" >= make_timestamptz($start) and "timestamp" < make_timestamptz($end)
        group by 1 order by 1
    """
    params = {"glob": a.glob, "symbol": a.symbol, "start": a.start_us, "end": a.end_us}
    con.execute(sql, params).fetchall()  # warm-up, as on the ticklake side
    times = []
    bars = 0
    for _ in range(a.iterations):
        t = time.perf_counter()
        bars = len(con.execute(sql, params).fetchall())
        times.append((time.perf_counter() - t) * 1000)
    times.sort()
    pick = lambda p: times[min(len(times) - 1, round((len(times) - 1) * p))]
    print(json.dumps({"p50_ms": pick(0.5), "p99_ms": pick(0.99), "bars": bars}))


if __name__ == "__main__":
    main()
