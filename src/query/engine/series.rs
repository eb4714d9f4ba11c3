//! `/v1/ohlcv?instrument=`: the bars of one normalized instrument, one
//! series per exchange, side by side.
//!
//! One instrument trades on several venues (`BTC-USD` on Kraken and
//! Coinbase) whose prices differ by a little and whose volumes are not
//! one market's: a blended bar would hide what a quant comparing venues
//! asks for. So the bars are grouped by (exchange, bar), every row carries
//! its `exchange`, and the rows come ordered by exchange, then time.
//!
//! The minute bars (`market.ohlcv_1m`, `engine::bars`) are kept per
//! (exchange, symbol) and have no instrument column, so these bars are
//! computed from the raw hybrid trades, as `/v1/ohlcv?symbol=` computes its
//! own when the minute table cannot answer: the same aggregates in the
//! same trades order (`bar_aggregates`), per exchange. Every symbol of an
//! exchange naming the instrument goes into its series.

use arrow::array::AsArray;

use super::*;
use crate::messages::query::InstrumentOhlcvRequest;

/// The rows an instrument's bars cover: the instrument, the symbol and
/// exchange if given, `timestamp` in [start, end).
fn series_filters(r: &InstrumentOhlcvRequest) -> Vec<Expr> {
    let mut preds = vec![
        col(INSTRUMENT).eq(lit(r.instrument.as_str())),
        col("timestamp").gt_eq(ts_lit(r.start_us)),
        col("timestamp").lt(ts_lit(r.end_us)),
    ];
    if let Some(s) = &r.symbol {
        preds.push(col("symbol").eq(lit(s.as_str())));
    }
    if let Some(x) = &r.exchange {
        preds.push(col("exchange").eq(lit(x.as_str())));
    }
    preds
}

/// The distinct values of the `exchange` column of `batches` (sorted by
/// it), in order.
fn exchanges_in(batches: &[RecordBatch]) -> Result<Vec<String>, QueryError> {
    let mut out: Vec<String> = Vec::new();
    for b in batches {
        let column = b
            .column_by_name("exchange")
            .ok_or_else(|| QueryError::Internal("bars without an exchange column".into()))?;
        let column = cast(column, &DataType::Utf8).map_err(QueryError::internal)?;
        for x in column.as_string::<i32>().iter().flatten() {
            if out.last().is_none_or(|l| l != x) {
                out.push(x.to_string());
            }
        }
    }
    Ok(out)
}

impl Engine {
    /// Refuses a range of more bars of `interval` than `api.max_rows`
    /// (per series, for the per-exchange series).
    pub(super) fn check_bar_count(
        &self,
        interval: crate::messages::query::Interval,
        start_us: i64,
        end_us: i64,
    ) -> Result<(), QueryError> {
        let step = interval.micros();
        let bars = end_us.saturating_sub(start_us).saturating_add(step - 1) / step;
        if bars > self.limits.max_rows as i64 {
            return Err(QueryError::bad(
                "interval",
                format!(
                    "{} bars of {} between start and end exceed the limit of {}",
                    bars,
                    interval.as_str(),
                    self.limits.max_rows
                ),
            ));
        }
        Ok(())
    }

    pub(super) async fn ohlcv_by_exchange(
        &self,
        r: InstrumentOhlcvRequest,
        q: &Request<'_>,
    ) -> Result<Answer, QueryError> {
        let step = r.interval.micros();
        // Bars per series, as `/v1/ohlcv?symbol=` bounds them; the answer
        // memory bounds the series together.
        self.check_bar_count(r.interval, r.start_us, r.end_us)?;
        let (df, info, source) = self.source(None).await?;
        let df = filtered(df, series_filters(&r))?
            .aggregate(
                vec![col("exchange"), time_bucket(step, "timestamp")],
                bar_aggregates(),
            )
            .and_then(|d| {
                d.sort(vec![
                    col("exchange").sort(true, false),
                    col("time").sort(true, false),
                ])
            })
            .map_err(df_err)?;
        let (rows, _) = collect(df, q, None).await?;
        let batches = &rows.batches;
        let i = Self::read_info(&info);
        let head = json!({
            "source": source,
            "snapshot_id": i.snapshot_id,
            "tail_rows_scanned": i.tail_rows,
            "instrument": r.instrument,
            "symbol": r.symbol,
            "exchange": r.exchange,
            "interval": r.interval.as_str(),
            "exchanges": exchanges_in(batches)?,
            "count": rows_in(batches),
        });
        self.answer_shared(head, "bars", json_rows(batches, &q.memory, q.cancel)?)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::config::Config;
    use crate::lake::commit::{KafkaOffsets, append};
    use crate::lake::{self, TableKind};
    use crate::messages::query::{InstrumentOhlcvRequest, Interval, OhlcvRequest, QueryRequest};
    use crate::messages::tail::{TailRow, Tailed};
    use crate::model::{Dec8, TradeV2};

    const T0: i64 = 1_700_006_400_000_000; // a day's start
    const M: i64 = 60_000_000;
    const TOPIC: &str = "t.trades";

    #[allow(clippy::too_many_arguments)]
    fn trade(
        exchange: &str,
        symbol: &str,
        instrument: Option<&str>,
        id: i64,
        ts: i64,
        price: &str,
        qty: &str,
        seq: Option<i64>,
    ) -> TradeV2 {
        TradeV2::builder(exchange, symbol, &id.to_string(), ts)
            .price(Dec8::parse(price).unwrap())
            .quantity(Dec8::parse(qty).unwrap())
            .source_sequence(seq)
            .instrument(instrument)
            .build()
    }

    /// Trades of BTC-USD on two exchanges, Kraken under two spellings of
    /// the pair (its v1 and v2 protocols), with ties on the timestamp
    /// broken by source sequence and message id, and trades that must not
    /// count: another instrument, and rows without one.
    fn trades() -> Vec<TradeV2> {
        let b = Some("BTC-USD");
        vec![
            trade("KRAKEN", "XBT/USD", b, 1, T0 + 5, "100", "1", Some(3)),
            trade("KRAKEN", "BTC/USD", b, 2, T0 + 5, "101", "2", Some(1)),
            trade(
                "KRAKEN",
                "BTC/USD",
                b,
                3,
                T0 + 40_000_000,
                "99.5",
                "0.5",
                None,
            ),
            trade("KRAKEN", "XBT/USD", b, 4, T0 + M + 1, "102", "1", Some(7)),
            trade("KRAKEN", "BTC/USD", b, 5, T0 + 7 * M, "103", "0.25", None),
            trade("COINBASE", "BTC-USD", b, 6, T0 + 2, "100.5", "3", Some(10)),
            trade("COINBASE", "BTC-USD", b, 7, T0 + 2, "100.25", "1", Some(9)),
            trade("COINBASE", "BTC-USD", b, 8, T0 + 6 * M + 9, "98", "1", None),
            trade("COINBASE", "BTC-USD", b, 9, T0 + 6 * M + 9, "97", "1", None),
            trade(
                "COINBASE",
                "ETH-USD",
                Some("ETH-USD"),
                10,
                T0 + 3,
                "5",
                "1",
                None,
            ),
            trade("KRAKEN", "XBT/USD", None, 11, T0 + 4, "1", "100", None),
            trade(
                "BINANCE",
                "BTCUSDT",
                Some("BTC-USDT"),
                12,
                T0 + 6,
                "7",
                "1",
                None,
            ),
        ]
    }

    /// The bars by brute force: per (exchange, bar start) of the trades of
    /// `instrument` (and `exchange`) in [start, end), as JSON rows.
    fn brute_force(
        all: &[TradeV2],
        instrument: &str,
        exchange: Option<&str>,
        step: i64,
        (start, end): (i64, i64),
    ) -> Vec<Value> {
        let mut groups: BTreeMap<(String, i64), Vec<&TradeV2>> = BTreeMap::new();
        for t in all.iter().filter(|t| {
            t.instrument.as_deref() == Some(instrument)
                && exchange.is_none_or(|x| t.exchange == x)
                && (start..end).contains(&t.timestamp_us)
        }) {
            let bar = t.timestamp_us.div_euclid(step) * step;
            groups.entry((t.exchange.clone(), bar)).or_default().push(t);
        }
        groups
            .into_iter()
            .map(|((exchange, bar), mut ts)| {
                // The trades order: timestamp, source sequence (none
                // first), message id.
                ts.sort_by(|a, b| {
                    (a.timestamp_us, a.source_sequence, &a.message_id).cmp(&(
                        b.timestamp_us,
                        b.source_sequence,
                        &b.message_id,
                    ))
                });
                let price = |t: &&TradeV2| t.price.unscaled();
                let volume: i64 = ts.iter().map(|t| t.quantity.unscaled()).sum();
                let dec = |v: i64| Dec8::from_unscaled(v).unwrap().to_string();
                json!({
                    "exchange": exchange,
                    "time": rfc3339(bar).unwrap(),
                    "open": ts[0].price.to_string(),
                    "high": dec(ts.iter().map(price).max().unwrap()),
                    "low": dec(ts.iter().map(price).min().unwrap()),
                    "close": ts[ts.len() - 1].price.to_string(),
                    "volume": dec(volume),
                    "trades": ts.len(),
                })
            })
            .collect()
    }

    fn by_instrument(
        exchange: Option<&str>,
        interval: Interval,
        range: (i64, i64),
    ) -> QueryRequest {
        QueryRequest::InstrumentOhlcv(InstrumentOhlcvRequest {
            instrument: "BTC-USD".into(),
            symbol: None,
            exchange: exchange.map(str::to_string),
            interval,
            start_us: range.0,
            end_us: range.1,
        })
    }

    async fn ask(engine: &Engine, req: QueryRequest) -> Value {
        let a = engine.run(req).await.unwrap();
        serde_json::from_str(&a.text()).unwrap()
    }

    /// One series per exchange, bar for bar what the raw trades of each
    /// (exchange, instrument) give, with part of the trades committed and
    /// the rest in the tail; narrowed to one exchange, only its series;
    /// and each series equal to `/v1/ohlcv?symbol=&exchange=` where the
    /// exchange names the instrument by one symbol.
    #[actix_rt::test]
    async fn one_series_per_exchange_equal_to_the_raw_trades() {
        use actix::Actor;
        let dir = tempfile::tempdir().unwrap();
        let cfg = Config::default().under(dir.path());
        let catalog = lake::open_catalog(&cfg).await.unwrap();
        let table = lake::ensure_table(catalog.as_ref(), &cfg, TableKind::Trades)
            .await
            .unwrap();
        let schema = lake::batch::arrow_schema(table.metadata().current_schema()).unwrap();
        let ident = lake::table_ident(&cfg, TableKind::Trades);
        let all = trades();
        // The first seven committed, the rest (and the seventh again, as
        // between a commit and its prune) in the tail.
        let committed = 7;
        let rows = all[..committed].to_vec();
        let mut offsets = KafkaOffsets {
            cluster_id: "test".into(),
            ..Default::default()
        };
        offsets.set(TOPIC, 0, committed as i64);
        let batch = lake::batch::trades_batch(&schema, &rows).unwrap();
        append(catalog.as_ref(), &ident, Some(&batch), &offsets, 1 << 20)
            .await
            .unwrap();
        let view = crate::query::tail::TailView::default();
        let tail =
            crate::actors::tail::TailActor::new("test", 10_000, schema, view.clone()).start();
        let rows = all
            .iter()
            .enumerate()
            .skip(committed - 1)
            .map(|(i, t)| TailRow {
                topic: TOPIC.into(),
                partition: 0,
                offset: i as i64,
                trade: Arc::new(t.clone()),
            })
            .collect();
        tail.send(Tailed::Rows(rows)).await.unwrap();
        let engine = crate::query::session::engine(&cfg, Some(view))
            .await
            .unwrap();

        let day = (T0, T0 + 86_400_000_000);
        for (interval, range) in [
            (Interval::M1, day),
            (Interval::M5, day),
            (Interval::H1, day),
            (Interval::D1, day),
            // Not on whole minutes, cutting trades off at both ends.
            (Interval::M1, (T0 + 3, T0 + 6 * M + 9)),
        ] {
            let step = interval.micros();
            let what = format!("{} over {range:?}", interval.as_str());
            let v = ask(&engine, by_instrument(None, interval, range)).await;
            let want = brute_force(&all, "BTC-USD", None, step, range);
            assert_eq!(v["bars"], Value::Array(want.clone()), "{what}: {v}");
            assert_eq!(v["count"], json!(want.len()), "{what}");
            assert_eq!(v["instrument"], "BTC-USD", "{what}");
            assert_eq!(v["exchange"], Value::Null, "{what}");
            let mut exchanges: Vec<&Value> = want.iter().map(|b| &b["exchange"]).collect();
            exchanges.dedup();
            assert_eq!(v["exchanges"], json!(exchanges), "{what}");
            assert_eq!(v["tail_rows_scanned"].as_u64().map(|n| n > 0), Some(true));
            for x in ["KRAKEN", "COINBASE", "BINANCE"] {
                let v = ask(&engine, by_instrument(Some(x), interval, range)).await;
                let want = brute_force(&all, "BTC-USD", Some(x), step, range);
                assert_eq!(v["bars"], Value::Array(want), "{what}, {x}: {v}");
                assert_eq!(v["exchange"], x, "{what}");
            }
            // Coinbase names BTC-USD by one symbol: its series is the
            // symbol's bars on that exchange, the exchange added.
            let by_symbol = ask(
                &engine,
                QueryRequest::Ohlcv(OhlcvRequest {
                    symbol: "BTC-USD".into(),
                    exchange: Some("COINBASE".into()),
                    interval,
                    start_us: range.0,
                    end_us: range.1,
                }),
            )
            .await;
            let series = ask(&engine, by_instrument(Some("COINBASE"), interval, range)).await;
            let mut bars = by_symbol["bars"].as_array().unwrap().clone();
            for b in &mut bars {
                b["exchange"] = json!("COINBASE");
            }
            assert!(!bars.is_empty() || range != day, "{what}");
            assert_eq!(series["bars"], Value::Array(bars), "{what}");
        }

        // The answer is what the trades say, not only what both ways agree
        // on: Kraken's first minute merges its two symbols, its open the
        // tie on the timestamp broken by source sequence.
        let v = ask(&engine, by_instrument(None, Interval::M1, day)).await;
        assert_eq!(v["exchanges"], json!(["COINBASE", "KRAKEN"]), "{v}");
        let bars = v["bars"].as_array().unwrap();
        let first_kraken = bars.iter().find(|b| b["exchange"] == "KRAKEN").unwrap();
        assert_eq!(first_kraken["open"], "101.00000000", "{v}");
        assert_eq!(first_kraken["close"], "99.50000000", "{v}");
        assert_eq!(
            first_kraken["trades"], 3,
            "the row without instrument is not one: {v}"
        );
        assert_eq!(first_kraken["volume"], "3.50000000", "{v}");
        let first_coinbase = &bars[0];
        assert_eq!(first_coinbase["exchange"], "COINBASE", "{v}");
        assert_eq!(first_coinbase["open"], "100.25000000", "{v}");
        assert_eq!(first_coinbase["close"], "100.50000000", "{v}");
        // Rows by exchange, then time: every Coinbase bar before Kraken's.
        let order: Vec<(String, String)> = bars
            .iter()
            .map(|b| (b["exchange"].to_string(), b["time"].to_string()))
            .collect();
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(order, sorted);
        // Narrowed to one symbol too: only that symbol's trades.
        let v = ask(
            &engine,
            QueryRequest::InstrumentOhlcv(InstrumentOhlcvRequest {
                instrument: "BTC-USD".into(),
                symbol: Some("XBT/USD".into()),
                exchange: None,
                interval: Interval::D1,
                start_us: day.0,
                end_us: day.1,
            }),
        )
        .await;
        assert_eq!(v["exchanges"], json!(["KRAKEN"]), "{v}");
        assert_eq!(v["bars"][0]["trades"], 2, "{v}");
        assert_eq!(v["bars"][0]["open"], "100.00000000", "{v}");
        // An instrument nobody trades: no series.
        let v = ask(
            &engine,
            QueryRequest::InstrumentOhlcv(InstrumentOhlcvRequest {
                instrument: "DOGE-USD".into(),
                symbol: None,
                exchange: None,
                interval: Interval::M1,
                start_us: day.0,
                end_us: day.1,
            }),
        )
        .await;
        assert_eq!(
            (v["count"].clone(), v["exchanges"].clone()),
            (json!(0), json!([]))
        );
    }
}
