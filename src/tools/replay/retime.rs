//! Exchange timestamps in trade frames. Binance (the supported exchange)
//! carries event time `E` and trade time `T`, in milliseconds, either at the
//! top level or under the combined stream's `data`.

use serde_json::Value;

const FIELDS: [&str; 2] = ["T", "E"];

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn body(v: &mut Value) -> Option<&mut serde_json::Map<String, Value>> {
    if v.get("data").is_some_and(Value::is_object) {
        v.get_mut("data")?.as_object_mut()
    } else {
        v.as_object_mut()
    }
}

/// The frame's exchange time: trade time, else event time.
pub fn exchange_time_ms(text: &str) -> Option<i64> {
    let mut v: Value = serde_json::from_str(text).ok()?;
    let obj = body(&mut v)?;
    FIELDS.iter().find_map(|f| obj.get(*f)?.as_i64())
}

/// The frame with every exchange timestamp moved by `shift_ms`, or None
/// when it has none (and is sent as recorded).
pub fn shift_frame(text: &str, shift_ms: i64) -> Option<String> {
    let mut v: Value = serde_json::from_str(text).ok()?;
    let obj = body(&mut v)?;
    let mut changed = false;
    for f in FIELDS {
        if let Some(t) = obj.get(f).and_then(Value::as_i64) {
            obj.insert(f.to_string(), Value::from(t.saturating_add(shift_ms)));
            changed = true;
        }
    }
    if changed {
        serde_json::to_string(&v).ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shifts_trade_and_event_time_in_combined_and_raw_frames() {
        let combined = r#"{"stream":"btcusdt@aggTrade","data":{"e":"aggTrade","E":1000,"s":"BTCUSDT","T":990,"p":"1.0"}}"#;
        assert_eq!(exchange_time_ms(combined), Some(990));
        let out: Value = serde_json::from_str(&shift_frame(combined, 10).unwrap()).unwrap();
        assert_eq!(out["data"]["T"], 1000);
        assert_eq!(out["data"]["E"], 1010);
        assert_eq!(out["data"]["p"], "1.0");
        let raw = r#"{"e":"depthUpdate","E":5,"s":"X"}"#;
        assert_eq!(exchange_time_ms(raw), Some(5));
        let out: Value = serde_json::from_str(&shift_frame(raw, -5).unwrap()).unwrap();
        assert_eq!(out["E"], 0);
    }

    #[test]
    fn frames_without_timestamps_pass_unchanged() {
        assert_eq!(shift_frame(r#"{"result":null,"id":1}"#, 10), None);
        assert_eq!(shift_frame("not json", 10), None);
        assert_eq!(exchange_time_ms(r#"[1,2]"#), None);
    }
}
