//! The served API on the actix-web app, in process: status codes,
//! Confluent error codes, the media type, and the compatibility check
//! refusing a schema that cannot read the subject's records.

use super::*;
use actix_web::{App, test};

use crate::kafka::avro::{TRADE_SCHEMA_JSON, TRADE_SCHEMA_V1_JSON};

const SUBJECT: &str = "market.crypto.trades.binance-value";

/// A required field added without a default: cannot read version 2's
/// records.
fn breaking() -> String {
    TRADE_SCHEMA_JSON.replace(
        r#"{"name": "instrument", "type": ["null", "string"], "default": null}"#,
        r#"{"name": "instrument", "type": ["null", "string"], "default": null},
    {"name": "venue_id", "type": "string"}"#,
    )
}

fn body(schema: &str) -> Value {
    json!({ "schema": schema })
}

/// Status and body of an answer, which must carry the API's media type
/// and a JSON body.
async fn answer(res: actix_web::dev::ServiceResponse) -> (u16, Value) {
    let status = res.status().as_u16();
    let ct = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert_eq!(ct, CONTENT_TYPE, "status {status}");
    let bytes = test::read_body(res).await;
    let v = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&bytes)));
    (status, v)
}

/// One request to the app: its status and body.
macro_rules! call {
    ($app:expr, $req:expr) => {
        answer(test::call_service($app, $req.to_request()).await)
    };
}

fn get(path: &str) -> test::TestRequest {
    test::TestRequest::get().uri(&format!("{PREFIX}{path}"))
}

fn post(path: &str, body: &Value) -> test::TestRequest {
    test::TestRequest::post()
        .uri(&format!("{PREFIX}{path}"))
        .insert_header(("content-type", CONTENT_TYPE))
        .set_payload(body.to_string())
}

#[actix_web::test]
async fn the_confluent_api_over_the_local_registry() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Arc::new(LocalRegistry::open(dir.path()).unwrap());
    let app = test::init_service(App::new().configure(|c| configure(c, registry.clone()))).await;

    // empty at first
    assert_eq!(call!(&app, get("/subjects")).await, (200, json!([])));
    let (s, e) = call!(&app, get(&format!("/subjects/{SUBJECT}/versions"))).await;
    assert_eq!((s, e["error_code"].clone()), (404, json!(40401)), "{e}");

    // register version 1, then 2; registering again is idempotent
    let (s, v1) = call!(
        &app,
        post(
            &format!("/subjects/{SUBJECT}/versions"),
            &body(TRADE_SCHEMA_V1_JSON)
        )
    )
    .await;
    assert_eq!(s, 200, "{v1}");
    let (_, v2) = call!(
        &app,
        post(
            &format!("/subjects/{SUBJECT}/versions"),
            &body(TRADE_SCHEMA_JSON)
        )
    )
    .await;
    let (_, again) = call!(
        &app,
        post(
            &format!("/subjects/{SUBJECT}/versions"),
            &body(TRADE_SCHEMA_JSON)
        )
    )
    .await;
    assert_eq!(v2, again);
    let (v1, v2) = (v1["id"].as_u64().unwrap(), v2["id"].as_u64().unwrap());
    assert_ne!(v1, v2);
    assert_eq!(call!(&app, get("/subjects")).await, (200, json!([SUBJECT])));
    assert_eq!(
        call!(&app, get(&format!("/subjects/{SUBJECT}/versions"))).await,
        (200, json!([1, 2]))
    );

    // versions by number and latest; the schema as written
    let (s, latest) = call!(&app, get(&format!("/subjects/{SUBJECT}/versions/latest"))).await;
    assert_eq!(s, 200);
    assert_eq!(
        (latest["version"].clone(), latest["id"].clone()),
        (json!(2), json!(v2))
    );
    assert_eq!(latest["subject"], SUBJECT);
    let served: Value = serde_json::from_str(latest["schema"].as_str().unwrap()).unwrap();
    assert_eq!(
        served,
        serde_json::from_str::<Value>(TRADE_SCHEMA_JSON).unwrap()
    );
    let (_, first) = call!(&app, get(&format!("/subjects/{SUBJECT}/versions/1"))).await;
    assert_eq!(first["id"], json!(v1));
    let (_, raw) = call!(&app, get(&format!("/subjects/{SUBJECT}/versions/2/schema"))).await;
    assert_eq!(raw, served);
    let (s, e) = call!(&app, get(&format!("/subjects/{SUBJECT}/versions/3"))).await;
    assert_eq!((s, e["error_code"].clone()), (404, json!(40402)), "{e}");
    let (s, e) = call!(&app, get(&format!("/subjects/{SUBJECT}/versions/zero"))).await;
    assert_eq!((s, e["error_code"].clone()), (422, json!(42202)), "{e}");

    // by id: what a consumer's deserializer asks
    let (s, by_id) = call!(&app, get(&format!("/schemas/ids/{v2}?subject=x&format=y"))).await;
    assert_eq!(s, 200);
    assert_eq!(
        serde_json::from_str::<Value>(by_id["schema"].as_str().unwrap()).unwrap(),
        served
    );
    assert_eq!(
        call!(&app, get(&format!("/schemas/ids/{v2}/schema"))).await,
        (200, served.clone())
    );
    assert_eq!(
        call!(&app, get(&format!("/schemas/ids/{v2}/versions"))).await,
        (200, json!([{"subject": SUBJECT, "version": 2}]))
    );
    assert_eq!(
        call!(&app, get(&format!("/schemas/ids/{v2}/subjects"))).await,
        (200, json!([SUBJECT]))
    );
    for missing in [
        "/schemas/ids/999",
        "/schemas/ids/999/schema",
        "/schemas/ids/999/versions",
        "/schemas/ids/x",
    ] {
        let (s, e) = call!(&app, get(missing)).await;
        assert_eq!(
            (s, e["error_code"].clone()),
            (404, json!(40403)),
            "{missing}: {e}"
        );
    }
    assert_eq!(
        call!(&app, get("/schemas/types")).await,
        (200, json!(["AVRO"]))
    );

    // lookup under a subject
    let (s, found) = call!(
        &app,
        post(&format!("/subjects/{SUBJECT}"), &body(TRADE_SCHEMA_V1_JSON))
    )
    .await;
    assert_eq!(
        (s, found["version"].clone(), found["id"].clone()),
        (200, json!(1), json!(v1))
    );
    let (s, e) = call!(
        &app,
        post(&format!("/subjects/{SUBJECT}"), &body(&breaking()))
    )
    .await;
    assert_eq!((s, e["error_code"].clone()), (404, json!(40403)), "{e}");
    let (s, e) = call!(&app, post("/subjects/nope-value", &body(TRADE_SCHEMA_JSON))).await;
    assert_eq!((s, e["error_code"].clone()), (404, json!(40401)), "{e}");

    // compatibility: the breaking schema is refused, by the check and by
    // registration; the subject keeps its two versions
    let compat = |v: &str| format!("/compatibility/subjects/{SUBJECT}/versions/{v}");
    assert_eq!(
        call!(&app, post(&compat("latest"), &body(TRADE_SCHEMA_JSON))).await,
        (200, json!({"is_compatible": true}))
    );
    assert_eq!(
        call!(&app, post(&compat("latest"), &body(&breaking()))).await,
        (200, json!({"is_compatible": false}))
    );
    let (_, verbose) = call!(
        &app,
        post(&format!("{}?verbose=true", compat("2")), &body(&breaking()))
    )
    .await;
    assert_eq!(verbose["is_compatible"], json!(false));
    assert!(
        !verbose["messages"][0].as_str().unwrap().is_empty(),
        "{verbose}"
    );
    let (s, e) = call!(
        &app,
        post(&format!("/subjects/{SUBJECT}/versions"), &body(&breaking()))
    )
    .await;
    assert_eq!((s, e["error_code"].clone()), (409, json!(409)), "{e}");
    assert!(e["message"].as_str().unwrap().contains(SUBJECT), "{e}");
    assert_eq!(
        call!(&app, get(&format!("/subjects/{SUBJECT}/versions"))).await,
        (200, json!([1, 2]))
    );
    let (s, e) = call!(
        &app,
        post(
            "/compatibility/subjects/nope-value/versions/latest",
            &body(TRADE_SCHEMA_JSON)
        )
    )
    .await;
    assert_eq!((s, e["error_code"].clone()), (404, json!(40401)), "{e}");

    // invalid input: a schema that does not parse, another type, a body
    // that is not the API's
    for bad in [
        body("{\"type\": \"record\", \"name\": \"x\"}"),
        body("not json"),
        json!({"schema": TRADE_SCHEMA_JSON, "schemaType": "PROTOBUF"}),
        json!({"schema": TRADE_SCHEMA_JSON, "references": [{"name": "a", "subject": "b", "version": 1}]}),
    ] {
        let (s, e) = call!(&app, post(&format!("/subjects/{SUBJECT}/versions"), &bad)).await;
        assert_eq!(
            (s, e["error_code"].clone()),
            (422, json!(42201)),
            "{bad}: {e}"
        );
    }
    let (s, e) = call!(
        &app,
        post(&format!("/subjects/{SUBJECT}/versions"), &json!([1, 2]))
    )
    .await;
    assert_eq!((s, e["error_code"].clone()), (422, json!(422)), "{e}");
    let junk = test::TestRequest::post()
        .uri(&format!("{PREFIX}/subjects/{SUBJECT}/versions"))
        .set_payload(vec![0xff, 0xfe, 0x00]);
    assert_eq!(call!(&app, junk).await.0, 422);

    // config, fixed
    assert_eq!(
        call!(&app, get("/config")).await,
        (200, json!({"compatibilityLevel": "BACKWARD"}))
    );
    assert_eq!(
        call!(&app, get(&format!("/config/{SUBJECT}"))).await,
        (200, json!({"compatibilityLevel": "BACKWARD"}))
    );
    let (s, e) = call!(&app, get("/nowhere")).await;
    assert_eq!((s, e["error_code"].clone()), (404, json!(404)), "{e}");
}
