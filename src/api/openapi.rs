//! The OpenAPI 3.0 document of the query API, served at `/openapi.json`.
//! Written by hand beside the handlers; a test checks that every route the
//! app serves is documented here and the other way round.

use actix_web::HttpResponse;
use serde_json::{Value, json};

fn param(name: &str, required: bool, desc: &str, schema: Value) -> Value {
    json!({"name": name, "in": "query", "required": required, "description": desc, "schema": schema})
}

fn string() -> Value {
    json!({"type": "string"})
}

fn time() -> Value {
    json!({"type": "string", "format": "date-time"})
}

fn ok(desc: &str, schema: &str) -> Value {
    json!({
        "200": {"description": desc, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}},
        "400": {"$ref": "#/components/responses/BadRequest"},
        "429": {"$ref": "#/components/responses/TooBusy"},
        "504": {"$ref": "#/components/responses/Timeout"},
        "507": {"$ref": "#/components/responses/OverMemory"},
        "500": {"$ref": "#/components/responses/Internal"},
    })
}

/// The document.
pub fn document() -> Value {
    let symbol = |required, desc: &str| {
        param(
            "symbol",
            required,
            &format!(
                "The venue's symbol as stored, e.g. BTCUSDT, XBT/USD or BHP (case-sensitive).{desc}"
            ),
            string(),
        )
    };
    let instrument = |desc: &str| {
        param(
            "instrument",
            false,
            &format!(
                "The normalized pair, BASE-QUOTE in upper-case letters and digits (e.g. BTC-USD, BTC-USDT), the same on every exchange: the trades of every exchange unless exchange narrows them. Rows stored before trades carried an instrument have none and never match.{desc}"
            ),
            json!({"type": "string", "pattern": "^[A-Z0-9]{1,20}-[A-Z0-9]{1,20}$"}),
        )
    };
    let one_of = " One of symbol and instrument is required; given both, both apply.";
    let exchange = param(
        "exchange",
        false,
        "Exchange as stored, e.g. BINANCE or ASX.",
        string(),
    );
    let trade = json!({
        "type": "object",
        "properties": {
            "message_id": {"type": "string"},
            "trade_id": {"type": "string"},
            "symbol": {"type": "string"},
            "instrument": {"type": "string", "nullable": true, "description": "The normalized pair, BASE-QUOTE (e.g. BTC-USD); null on rows stored before trades carried it"},
            "exchange": {"type": "string"},
            "asset_class": {"type": "string"},
            "timestamp": {"type": "string", "format": "date-time"},
            "ingestion_timestamp": {"type": "string", "format": "date-time", "description": "When the feed received the trade"},
            "price": {"type": "string", "description": "decimal(18,8), exact"},
            "quantity": {"type": "string", "description": "decimal(18,8), exact"},
            "currency": {"type": "string"},
            "side": {"type": "string", "enum": ["BUY", "SELL", "SELL_SHORT", "UNKNOWN"]}
        }
    });
    let read = json!({
        "source": {"type": "string", "enum": ["hybrid", "lake"], "description": "hybrid: the pinned snapshot plus the uncommitted tail; lake: one snapshot only (time travel)"},
        "snapshot_id": {"type": "integer", "format": "int64", "nullable": true, "description": "The Iceberg snapshot the answer pinned."},
        "tail_rows_scanned": {"type": "integer", "description": "Uncommitted rows past the snapshot's offsets that the answer considered."},
        "count": {"type": "integer"}
    });
    let with = |extra: Value| {
        let mut props = read.as_object().cloned().unwrap_or_default();
        if let Value::Object(e) = extra {
            props.extend(e);
        }
        json!({"type": "object", "properties": props})
    };
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "ticklake query API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Trades from the committed Iceberg lake plus the fresh, not yet committed tail, split exactly at the Kafka offsets recorded in the pinned snapshot: no duplicate, no gap. Times are RFC 3339; start is inclusive, end exclusive. Not in this document: with kafka.schema_registry_url empty, the daemon also serves the Confluent Schema Registry REST API of its Avro schemas under /schema-registry (Confluent's own API: /schema-registry/subjects, /schema-registry/schemas/ids/{id}, ...; see the README)."
        },
        "paths": {
            "/v1/trades": {"get": {
                "summary": "Trades in a time range, oldest first, with cursor pagination",
                "parameters": [
                    symbol(false, " With instrument too, both apply."), instrument(""), exchange.clone(),
                    param("start", false, "Inclusive lower bound.", time()),
                    param("end", false, "Exclusive upper bound.", time()),
                    param("limit", false, "Page size (default api.default_limit, at most api.max_rows).", json!({"type": "integer", "minimum": 1})),
                    param("cursor", false, "next_cursor of the previous page.", string()),
                    param("snapshot_id", false, "Time travel: read this lake snapshot only (no tail).", json!({"type": "integer", "format": "int64"}))
                ],
                "responses": ok("A page of trades", "TradePage")
            }},
            "/v1/trades/recent": {"get": {
                "summary": "The trades of the last minutes of one symbol or instrument, newest first (hybrid)",
                "parameters": [
                    symbol(false, one_of), instrument(one_of), exchange.clone(),
                    param("minutes", false, "Window length, default 15, at most 10080.", json!({"type": "integer", "minimum": 1, "maximum": 10080})),
                    param("limit", false, "At most this many of the newest trades (default and at most api.max_rows).", json!({"type": "integer", "minimum": 1}))
                ],
                "responses": ok("Recent trades", "RecentTrades")
            }},
            "/v1/ohlcv": {"get": {
                "summary": "OHLCV bars computed from trades (hybrid)",
                "description": "With symbol: one series, over every exchange trading the symbol unless exchange narrows it. With instrument: one series per exchange trading the instrument (only exchange's when given), never blended; every bar carries its exchange, the bars come ordered by exchange then time, and exchanges lists the exchanges that have bars. Instrument bars are computed from the raw trades.",
                "parameters": [
                    symbol(false, one_of), instrument(one_of), exchange.clone(),
                    param("interval", true, "Bar width.", json!({"type": "string", "enum": ["1m", "5m", "15m", "1h", "1d"]})),
                    param("start", true, "Inclusive lower bound.", time()),
                    param("end", true, "Exclusive upper bound.", time())
                ],
                "responses": ok("Bars aligned to the Unix epoch, oldest first; empty intervals are omitted", "Bars")
            }},
            "/v1/symbols": {"get": {
                "summary": "Every (exchange, symbol) with its instrument, trade count and first and last trade (hybrid)",
                "responses": ok("Symbols", "Symbols")
            }},
            "/v1/snapshots": {"get": {
                "summary": "The snapshots of market.trades with their recorded Kafka offsets, oldest first",
                "responses": ok("Snapshots", "Snapshots")
            }},
            "/v1/sql": {"post": {
                "summary": "One read-only SQL query (SELECT or WITH) over market.trades, market.trades_live and market.dead_letters",
                "description": "DDL, DML, COPY, CREATE EXTERNAL TABLE, SELECT INTO, SET, EXPLAIN, table functions (read_csv, read_parquet, ...) and multiple statements are refused with 400 and the reason. At most api.max_rows rows are returned (truncated is then true); a query running longer than api.timeout_ms fails with 504, and one whose answer (its rows and their JSON text) or whose sorts, joins and aggregations need more than api.max_memory_bytes fails with 507. Decimals are returned as strings.",
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "required": ["sql"], "properties": {"sql": {"type": "string"}}, "additionalProperties": false}}}},
                "responses": ok("The result", "SqlResult")
            }}
        },
        "components": {
            "schemas": {
                "Trade": trade,
                "TradePage": with(json!({"next_cursor": {"type": "string", "nullable": true}, "trades": {"type": "array", "items": {"$ref": "#/components/schemas/Trade"}}})),
                "RecentTrades": with(json!({"since": {"type": "string", "format": "date-time"}, "truncated": {"type": "boolean"}, "trades": {"type": "array", "items": {"$ref": "#/components/schemas/Trade"}}})),
                "Bars": with(json!({
                    "symbol": {"type": "string", "nullable": true, "description": "The symbol asked for; null for an instrument asked without one."},
                    "instrument": {"type": "string", "description": "Only when asked by instrument: the instrument."},
                    "exchange": {"type": "string", "nullable": true, "description": "Only when asked by instrument: the exchange asked for, null for every exchange."},
                    "exchanges": {"type": "array", "items": {"type": "string"}, "description": "Only when asked by instrument: the exchanges that have bars, one series each, in the order of the bars."},
                    "interval": {"type": "string"}, "bars": {"type": "array", "items": {"type": "object", "properties": {
                    "exchange": {"type": "string", "description": "Only when asked by instrument: the series (exchange) of the bar."},
                    "time": {"type": "string", "format": "date-time"}, "open": {"type": "string"}, "high": {"type": "string"}, "low": {"type": "string"}, "close": {"type": "string"}, "volume": {"type": "string"}, "trades": {"type": "integer"}}}}})),
                "Symbols": with(json!({"symbols": {"type": "array", "items": {"type": "object", "properties": {
                    "exchange": {"type": "string"}, "symbol": {"type": "string"},
                    "instrument": {"type": "string", "nullable": true, "description": "The normalized pair of the symbol's trades; null when none of them carries one (stored before trades did)."},
                    "trades": {"type": "integer"}, "first_trade": {"type": "string", "format": "date-time"}, "last_trade": {"type": "string", "format": "date-time"}}}}})),
                "Snapshots": {"type": "object", "properties": {
                    "table": {"type": "string"}, "current_snapshot_id": {"type": "integer", "format": "int64", "nullable": true}, "count": {"type": "integer"},
                    "snapshots": {"type": "array", "items": {"type": "object", "properties": {
                        "snapshot_id": {"type": "integer", "format": "int64"}, "parent_snapshot_id": {"type": "integer", "format": "int64", "nullable": true},
                        "sequence_number": {"type": "integer"}, "committed_at": {"type": "string", "format": "date-time"}, "operation": {"type": "string"},
                        "added_records": {"type": "integer", "nullable": true}, "total_records": {"type": "integer", "nullable": true},
                        "kafka_offsets": {"type": "object", "nullable": true, "description": "{cluster_id, topics: {topic: {partition: next offset}}}"}}}}}},
                "SqlResult": {"type": "object", "properties": {
                    "columns": {"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"}, "type": {"type": "string"}}}},
                    "count": {"type": "integer"}, "truncated": {"type": "boolean"},
                    "rows": {"type": "array", "items": {"type": "object"}}}},
                "Error": {"type": "object", "required": ["error", "detail"], "properties": {
                    "error": {"type": "string", "enum": ["bad_parameter", "rejected_query", "invalid_query", "not_found", "method_not_allowed", "too_busy", "timeout", "memory_limit", "unavailable", "internal"]},
                    "detail": {"type": "string", "description": "What was wrong; names the parameter for bad_parameter."}}}
            },
            "responses": {
                "BadRequest": {"description": "A bad parameter or a refused query", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
                "TooBusy": {"description": "api.max_concurrent queries are running; retry shortly", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
                "Timeout": {"description": "The query ran longer than api.timeout_ms", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
                "OverMemory": {"description": "The answer (rows and JSON text) or the query's operators need more than is left of api.max_memory_bytes, which the queries running at once share", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
                "Internal": {"description": "A server-side failure", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
            }
        }
    })
}

pub async fn serve() -> HttpResponse {
    HttpResponse::Ok().json(document())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(op: &Value) -> Vec<(&str, bool)> {
        op["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["name"].as_str().unwrap(),
                    p["required"].as_bool().unwrap(),
                )
            })
            .collect()
    }

    /// `instrument` is a parameter of every endpoint that takes it, and
    /// where either names the market, neither is required alone.
    #[test]
    fn instrument_is_documented_where_it_is_taken() {
        let d = document();
        for path in ["/v1/trades", "/v1/trades/recent", "/v1/ohlcv"] {
            let params = names(&d["paths"][path]["get"]);
            assert!(
                params.contains(&("instrument", false)),
                "{path}: {params:?}"
            );
            assert!(params.contains(&("symbol", false)), "{path}: {params:?}");
        }
        let schemas = &d["components"]["schemas"];
        let instrument = &schemas["Trade"]["properties"]["instrument"];
        assert_eq!(instrument["nullable"], true);
        let symbol = &schemas["Symbols"]["properties"]["symbols"]["items"]["properties"];
        assert!(symbol["instrument"].is_object());
        let bars = &schemas["Bars"]["properties"];
        for k in ["instrument", "exchange", "exchanges"] {
            assert!(bars[k].is_object(), "{k}");
        }
        assert!(bars["bars"]["items"]["properties"]["exchange"].is_object());
    }
}
