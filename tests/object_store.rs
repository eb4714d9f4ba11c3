//! The lake in object storage: a warehouse `s3://bucket/prefix` on a real
//! S3-compatible server (`scripts/s3.sh`, which CI starts and names in
//! `TICKLAKE_TEST_S3_ENDPOINT`; the bucket is `ticklake` unless
//! `TICKLAKE_TEST_S3_BUCKET` says otherwise).
//!
//! - iceberg's storage over `object_store` (`lake::store`): every call of
//!   FileIO against the server.
//! - Acceptance A: a capture replayed through the daemon on the real Tansu
//!   broker, with its catalog on a real PostgreSQL (`TICKLAKE_TEST_POSTGRES_URI`),
//!   lands in an S3 warehouse with every trade exactly once; the Parquet files are in the bucket under the prefix, nothing in
//!   the data directory; the daemon's hybrid query, the CLI (with the
//!   standard AWS environment alone as well), `ticklake maintain` and
//!   pyiceberg's S3 FileIO all read the same rows.

mod common;

use std::process::Command;
use std::sync::Arc;

use bytes::Bytes;
use common::*;
use futures::TryStreamExt;
use iceberg::io::{FileIO, FileIOBuilder};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use serde_json::{Value, json};
use ticklake::config::{Config, S3Config};
use ticklake::lake::store;

/// `[lake.s3]` for the test server.
fn s3_config(endpoint: &str) -> S3Config {
    S3Config {
        endpoint: Some(endpoint.to_string()),
        region: Some(S3_REGION.into()),
        access_key_id: Some(S3_ACCESS_KEY.into()),
        secret_access_key: Some(S3_SECRET_KEY.into()),
        allow_http: Some(true),
        path_style: Some(true),
        ..S3Config::default()
    }
}

/// A client of the test bucket of its own, to look at what the daemon left
/// there independently of `lake::store`.
fn bucket_client(endpoint: &str) -> Arc<dyn ObjectStore> {
    bucket_client_of(endpoint, &bucket())
}

fn bucket_client_of(endpoint: &str, bucket: &str) -> Arc<dyn ObjectStore> {
    Arc::new(
        AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_endpoint(endpoint)
            .with_region(S3_REGION)
            .with_access_key_id(S3_ACCESS_KEY)
            .with_secret_access_key(S3_SECRET_KEY)
            .with_allow_http(true)
            .build()
            .unwrap(),
    )
}

async fn keys_under(client: &Arc<dyn ObjectStore>, prefix: &str) -> Vec<String> {
    let p = ObjectPath::from(prefix);
    let metas: Vec<_> = client.list(Some(&p)).try_collect().await.unwrap();
    metas.into_iter().map(|m| m.location.to_string()).collect()
}

/// Makes the bucket `name` on the S3 server (it takes unsigned requests,
/// as `scripts/s3.sh` does when it starts).
async fn create_bucket(endpoint: &str, name: &str) {
    let r = reqwest::Client::new()
        .put(format!("{endpoint}/{name}"))
        .send()
        .await
        .unwrap();
    assert!(
        r.status().is_success(),
        "creating bucket {name}: {}",
        r.status()
    );
}

/// A FileIO over the S3 warehouse `s3://<bucket>/<prefix>`, built as the
/// catalog builds it (`store::storage_factory`).
fn file_io(endpoint: &str, prefix: &str) -> (FileIO, String) {
    let mut cfg = Config::default();
    let root = format!("s3://{}/{prefix}", bucket());
    cfg.lake.warehouse = root.clone();
    cfg.lake.s3 = s3_config(endpoint);
    let io = FileIOBuilder::new(store::storage_factory(&cfg).unwrap()).build();
    (io, root)
}

#[tokio::test]
async fn iceberg_file_io_works_against_a_real_s3_server() {
    let endpoint = s3_endpoint();
    let prefix = unique("fileio-");
    let (io, root) = file_io(&endpoint, &prefix);
    let client = bucket_client(&endpoint);

    // write, exists, metadata, read
    let a = format!("{root}/t/metadata/00000-a.metadata.json");
    assert!(!io.exists(&a).await.unwrap());
    io.new_output(&a)
        .unwrap()
        .write(Bytes::from_static(b"0123456789"))
        .await
        .unwrap();
    assert!(io.exists(&a).await.unwrap());
    let input = io.new_input(&a).unwrap();
    assert_eq!(input.metadata().await.unwrap().size, 10);
    assert_eq!(input.read().await.unwrap().as_ref(), b"0123456789");
    // A range read asks the server for those bytes only.
    let reader = input.reader().await.unwrap();
    assert_eq!(reader.read(3..7).await.unwrap().as_ref(), b"3456");
    assert_eq!(reader.read(9..10).await.unwrap().as_ref(), b"9");
    // It is a real object in the bucket, under the prefix.
    assert_eq!(
        keys_under(&client, &prefix).await,
        [format!("{prefix}/t/metadata/00000-a.metadata.json")]
    );

    // A streamed write bigger than one upload part (multipart), in pieces.
    let b = format!("{root}/t/data/ts_day=2024-01-01/b.parquet");
    let chunk: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let mut w = io.new_output(&b).unwrap().writer().await.unwrap();
    for _ in 0..12 {
        w.write(Bytes::from(chunk.clone())).await.unwrap();
    }
    // Nothing is visible before close: a reader never sees half a file.
    assert!(!io.exists(&b).await.unwrap());
    w.close().await.unwrap();
    let input = io.new_input(&b).unwrap();
    assert_eq!(input.metadata().await.unwrap().size, 12_000_000);
    let tail = input
        .reader()
        .await
        .unwrap()
        .read(11_999_990..12_000_000)
        .await
        .unwrap();
    assert_eq!(tail.as_ref(), &chunk[999_990..]);

    // Missing files: an error to read, false to `exists`, fine to delete.
    let missing = format!("{root}/t/metadata/missing.json");
    assert!(io.new_input(&missing).unwrap().read().await.is_err());
    assert!(io.new_input(&missing).unwrap().metadata().await.is_err());
    io.delete(&missing).await.unwrap();
    // A file in another bucket is reached with the same settings (a REST
    // catalog may place a table there), a local file through iceberg's own
    // local IO, and a scheme no client serves is refused, not guessed.
    let other = unique("other-");
    create_bucket(&endpoint, &other).await;
    let elsewhere = format!("s3://{other}/metadata/00000-b.metadata.json");
    io.new_output(&elsewhere)
        .unwrap()
        .write(Bytes::from_static(b"elsewhere"))
        .await
        .unwrap();
    assert_eq!(
        io.new_input(&elsewhere)
            .unwrap()
            .read()
            .await
            .unwrap()
            .as_ref(),
        b"elsewhere"
    );
    assert_eq!(
        keys_under(&bucket_client_of(&endpoint, &other), "metadata").await,
        ["metadata/00000-b.metadata.json"]
    );
    let disk = tempfile::tempdir().unwrap();
    let local = format!("file://{}/m.json", disk.path().display());
    io.new_output(&local)
        .unwrap()
        .write(Bytes::from_static(b"on disk"))
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(disk.path().join("m.json")).unwrap(),
        b"on disk"
    );
    let err = io.exists("gs://a-bucket/x").await.unwrap_err().to_string();
    assert!(err.contains("gs://a-bucket/x"), "{err}");
    // One delete across both buckets and the disk.
    io.delete_stream(futures::stream::iter(vec![
        elsewhere.clone(),
        local.clone(),
    ]))
    .await
    .unwrap();
    assert!(!io.exists(&elsewhere).await.unwrap());
    assert!(!disk.path().join("m.json").exists());

    // delete, delete_prefix (whole segments only), delete_stream
    io.delete(&a).await.unwrap();
    assert!(!io.exists(&a).await.unwrap());
    for k in ["t/data/x/1", "t/data/x/2", "t/data/xy/3", "u/4", "u/5"] {
        io.new_output(format!("{root}/{k}"))
            .unwrap()
            .write(Bytes::from_static(b"x"))
            .await
            .unwrap();
    }
    io.delete_prefix(format!("{root}/t/data/x")).await.unwrap();
    let mut left = keys_under(&client, &prefix).await;
    left.sort();
    assert_eq!(
        left,
        [
            format!("{prefix}/t/data/ts_day=2024-01-01/b.parquet"),
            format!("{prefix}/t/data/xy/3"),
            format!("{prefix}/u/4"),
            format!("{prefix}/u/5"),
        ]
    );
    io.delete_stream(futures::stream::iter(vec![
        format!("{root}/u/4"),
        format!("{root}/u/5"),
        format!("{root}/u/never-written"),
    ]))
    .await
    .unwrap();
    io.delete_prefix(format!("{root}/t/")).await.unwrap();
    assert_eq!(keys_under(&client, &prefix).await, Vec::<String>::new());

    // The listing maintenance uses, with sizes.
    io.new_output(format!("{root}/m/metadata/1.metadata.json"))
        .unwrap()
        .write(Bytes::from_static(b"{}"))
        .await
        .unwrap();
    let listed = store::list(&format!("{root}/m/metadata")).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        listed[0].location,
        format!("{root}/m/metadata/1.metadata.json")
    );
    assert_eq!(listed[0].size, 2);
    assert!(listed[0].modified.is_some());
    assert_eq!(store::size(&listed[0].location).await, Some(2));
}

/// `ticklake query` on `config` with `env` added, as JSON rows.
fn query_with_env(config: &std::path::Path, sql: &str, env: &[(&str, &str)]) -> Vec<Value> {
    let mut cmd = Command::new(bin());
    cmd.args(["query", "--format", "json", "--config"])
        .arg(config)
        .arg(sql)
        .env("TICKLAKE_LOG", "warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "query failed: {sql}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn a_replayed_capture_lands_in_an_s3_warehouse_on_a_postgres_catalog_exactly_once() {
    let brokers = tansu();
    let pg = postgres_uri();
    let catalog_name = unique("s3pg");
    let endpoint = s3_endpoint();
    let bucket = bucket();
    let prefix = unique("lake-");
    let warehouse = format!("s3://{bucket}/{prefix}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = bucket_client(&endpoint);

    let (truth, replay, url) = replay_two_captures();
    let expected = truth.len() as i64;

    let env = Env::new(
        &brokers,
        Some(&url),
        &format!(
            "\n[lake]\nwarehouse = \"{warehouse}\"\ncatalog_uri = \"{pg}\"\n\
             catalog_name = \"{catalog_name}\"\n\n[lake.s3]\nendpoint = \"{endpoint}\"\n\
             region = \"{S3_REGION}\"\naccess_key_id = \"{S3_ACCESS_KEY}\"\n\
             secret_access_key = \"{S3_SECRET_KEY}\"\nallow_http = true\npath_style = true\n\n\
             [maintenance]\nsnapshot_retention = \"0s\"\n"
        ),
    );
    let mut daemon = store_two_captures(&env, replay, expected);

    // Every trade once, every value equal to its frame (the CLI reads S3).
    let rows =
        env.query("select count(*) as n, count(distinct message_id) as d from market.trades");
    println!(
        "market.trades in {warehouse}: {} (truth {expected})",
        rows[0]
    );
    assert_eq!(
        rows[0]["n"].as_i64().unwrap(),
        expected,
        "log:\n{}",
        daemon.log_tail()
    );
    assert_eq!(rows[0]["d"].as_i64().unwrap(), expected);
    assert_lake_holds_frames(&env, &truth);

    // The daemon's hybrid query (lake at a pinned snapshot plus its tail)
    // through its API, over the same S3 client as its writers.
    let sql = json!({"sql": "select count(*) as n, count(distinct message_id) as d from market.trades_live"});
    let (status, body) = http(env.http_port, "POST", "/v1/sql", Some(&sql));
    assert_eq!(status, 200, "{body}");
    let live = &body["rows"][0];
    println!("/v1/sql market.trades_live: {live}");
    assert_eq!(live["n"].as_i64(), Some(expected), "{body}");
    assert_eq!(live["d"].as_i64(), Some(expected), "{body}");

    // The files are in the bucket under the prefix, and none on local disk.
    let keys = rt.block_on(keys_under(&client, &prefix));
    let parquet: Vec<&String> = keys
        .iter()
        .filter(|k| {
            k.starts_with(&format!("{prefix}/market/trades/data/")) && k.ends_with(".parquet")
        })
        .collect();
    let metadata = keys
        .iter()
        .filter(|k| k.starts_with(&format!("{prefix}/market/trades/metadata/")))
        .count();
    println!(
        "bucket {bucket}: {} objects under {prefix}/, {} Parquet files of market.trades, {metadata} metadata files",
        keys.len(),
        parquet.len()
    );
    assert!(
        !parquet.is_empty(),
        "no Parquet files in the bucket: {keys:?}"
    );
    assert!(metadata > 0, "{keys:?}");
    assert!(
        !env.data_dir().join("warehouse").exists(),
        "a local warehouse was made beside the S3 one"
    );

    let status = daemon.terminate();
    assert!(
        status.success(),
        "daemon exit {status}; log:\n{}",
        daemon.log_tail()
    );

    // market.trades_live: DataFusion's own Parquet scan reads the bucket
    // through the shared client (the fast path of lake::scan), not
    // Iceberg's reader.
    let cfg = Config::load(Some(&env.config)).unwrap();
    let plan = rt.block_on(async {
        let ctx = ticklake::query::session::session(&cfg).await.unwrap();
        let batches = ctx
            .sql("explain select symbol, price from market.trades_live where symbol = 'BTCUSDT'")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string()
    });
    assert!(
        plan.contains("DataSourceExec") && plan.contains("file_type=parquet"),
        "{plan}"
    );
    assert!(!plan.contains("IcebergTableScan"), "{plan}");
    assert!(
        plan.contains(&format!("{prefix}/market/trades/data/")),
        "{plan}"
    );

    // The standard AWS environment alone is enough: the same config less
    // its [lake.s3] keys.
    let text = std::fs::read_to_string(&env.config).unwrap();
    let start = text.find("[lake.s3]").unwrap();
    let end = text[start..].find("[maintenance]").unwrap() + start;
    let env_only = env.dir.path().join("env-only.toml");
    std::fs::write(&env_only, format!("{}{}", &text[..start], &text[end..])).unwrap();
    let rows = query_with_env(
        &env_only,
        "select count(*) as n from market.trades",
        &[
            ("AWS_ENDPOINT_URL", endpoint.as_str()),
            ("AWS_REGION", S3_REGION),
            ("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY),
            ("AWS_ALLOW_HTTP", "true"),
        ],
    );
    assert_eq!(rows[0]["n"].as_i64(), Some(expected), "with AWS_* only");

    // Maintenance on S3: expiry deletes the expired snapshots' manifest
    // lists from the bucket; every trade still reads once.
    let lists_before = rt
        .block_on(keys_under(
            &client,
            &format!("{prefix}/market/trades/metadata"),
        ))
        .iter()
        .filter(|k| k.rsplit('/').next().unwrap().starts_with("snap-"))
        .count();
    // A Parquet object no snapshot references, just written: the orphan
    // sweep must reconcile the bucket's listing with the metadata (no
    // refusal: the two name every file alike) and leave it, being young.
    let planted = format!("{prefix}/market/trades/data/00000-0-never-committed.parquet");
    rt.block_on(client.put(
        &ObjectPath::from(planted.as_str()),
        Bytes::from_static(b"PAR1").into(),
    ))
    .unwrap();
    let report = maintain_reports(&env.config).remove(0);
    assert_eq!(report["table"], "market.trades", "{report}");
    let lists_after = rt
        .block_on(keys_under(
            &client,
            &format!("{prefix}/market/trades/metadata"),
        ))
        .iter()
        .filter(|k| k.rsplit('/').next().unwrap().starts_with("snap-"))
        .count();
    println!(
        "ticklake maintain: {report}; manifest lists in the bucket {lists_before} -> {lists_after}"
    );
    let orphans = &report["orphans"];
    assert!(orphans["refused"].is_null(), "{report}");
    assert!(orphans["young"].as_u64().unwrap() >= 1, "{report}");
    assert_eq!(orphans["deleted"], 0, "{report}");
    assert!(
        rt.block_on(keys_under(&client, &format!("{prefix}/market/trades/data")))
            .contains(&planted)
    );
    let deleted = report["manifest_lists_deleted"].as_u64().unwrap() as usize;
    assert!(report["metadata_bytes"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(lists_after, lists_before - deleted, "{report}");
    assert!(
        lists_before == 1 || deleted > 0,
        "{lists_before} snapshots and none expired: {report}"
    );
    let rows =
        env.query("select count(*) as n, count(distinct message_id) as d from market.trades");
    assert_eq!(rows[0]["n"].as_i64(), Some(expected));
    assert_eq!(rows[0]["d"].as_i64(), Some(expected));

    // An independent reader with its own S3 client gets the same rows.
    let endpoint_prop = format!("s3.endpoint={endpoint}");
    let key_prop = format!("s3.access-key-id={S3_ACCESS_KEY}");
    let secret_prop = format!("s3.secret-access-key={S3_SECRET_KEY}");
    let region_prop = format!("s3.region={S3_REGION}");
    let py = env.pyiceberg(
        "pyiceberg_read.py",
        &[
            "--warehouse",
            &warehouse,
            "--catalog-uri",
            &sqlalchemy_uri(&pg),
            "--catalog-name",
            &catalog_name,
            "--table",
            "market.trades",
            "--columns",
            "message_id,symbol,price,quantity,side,timestamp",
            "--prop",
            &endpoint_prop,
            "--prop",
            &key_prop,
            "--prop",
            &secret_prop,
            "--prop",
            &region_prop,
        ],
    );
    assert_eq!(py["rows"].as_i64().unwrap(), expected);
    let ours = env.query(
        "select message_id, symbol, cast(price as varchar) as price, cast(quantity as varchar) as quantity, \
         side, cast(\"timestamp\" as bigint) as ts from market.trades order by message_id",
    );
    let theirs = py["data"].as_array().unwrap();
    assert_eq!(ours.len(), theirs.len());
    for (a, b) in ours.iter().zip(theirs) {
        for col in ["message_id", "symbol", "price", "quantity", "side"] {
            assert_eq!(a[col].as_str(), b[col].as_str(), "{col}: {a} vs {b}");
        }
        assert_eq!(a["ts"].as_i64(), b["timestamp"].as_i64(), "{a} vs {b}");
    }
    println!("pyiceberg (S3 FileIO) read {} identical rows", theirs.len());
}

/// The orphan sweep on an S3 warehouse, with no minimum age: two commits'
/// files stay, the Parquet files of a commit that never happened go, and
/// so does a failed compaction's manifest; an object that is neither
/// Parquet nor Avro stays, and so does Parquet outside the table's data
/// and metadata directories. Every row still reads.
#[tokio::test]
async fn the_orphan_sweep_on_s3_deletes_only_what_no_snapshot_reads() {
    use ticklake::lake::{self, TableKind, commit};
    let endpoint = s3_endpoint();
    let prefix = unique("orphans-");
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::default().under(dir.path());
    cfg.lake.warehouse = format!("s3://{}/{prefix}", bucket());
    cfg.lake.s3 = s3_config(&endpoint);
    let catalog = lake::open_catalog(&cfg).await.unwrap();
    let table = lake::ensure_table(catalog.as_ref(), &cfg, TableKind::Trades)
        .await
        .unwrap();
    let ident = lake::table_ident(&cfg, TableKind::Trades);
    let schema = lake::batch::arrow_schema(table.metadata().current_schema()).unwrap();
    let batch = |from: i64| {
        let trades: Vec<_> = (from..from + 10)
            .map(|i| {
                ticklake::model::TradeV2::builder(
                    "X",
                    "BTCUSDT",
                    &i.to_string(),
                    1_700_000_000_000_000 + i,
                )
                .build()
            })
            .collect();
        lake::batch::trades_batch(&schema, &trades).unwrap()
    };
    for c in 0..2i64 {
        let mut offsets = commit::KafkaOffsets {
            cluster_id: "c".into(),
            ..Default::default()
        };
        offsets.set("t", 0, c + 1);
        commit::append(
            catalog.as_ref(),
            &ident,
            Some(&batch(c * 10)),
            &offsets,
            1 << 20,
        )
        .await
        .unwrap();
    }
    let table = catalog.load_table(&ident).await.unwrap();
    let never = commit::write_data_files(&table, &batch(100), 1 << 20)
        .await
        .unwrap();
    let client = bucket_client(&endpoint);
    let keys = keys_under(&client, &prefix).await;
    let manifest = keys
        .iter()
        .find(|k| k.ends_with("-m0.avro"))
        .unwrap()
        .clone();
    let failed = format!("{prefix}/market/trades/metadata/0000-failed-compaction-m0.avro");
    client
        .copy(
            &ObjectPath::from(manifest.as_str()),
            &ObjectPath::from(failed.as_str()),
        )
        .await
        .unwrap();
    let marker = format!("{prefix}/market/trades/data/_SUCCESS.txt");
    client
        .put(
            &ObjectPath::from(marker.as_str()),
            Bytes::from_static(b"x").into(),
        )
        .await
        .unwrap();

    // Parquet that is not the table's: another tool's, under the table's
    // location but outside its data and metadata directories (as beside a
    // table at a shared bucket's root), and a table whose name extends
    // this one's, which a prefix taken as a string would take in.
    let data_key = never[0]
        .file_path()
        .trim_start_matches(&format!("s3://{}/", bucket()))
        .to_string();
    let export = format!("{prefix}/market/trades/exports/day.parquet");
    let sibling = format!("{prefix}/market/trades_archive/data/day.parquet");
    for key in [&export, &sibling] {
        client
            .copy(
                &ObjectPath::from(data_key.as_str()),
                &ObjectPath::from(key.as_str()),
            )
            .await
            .unwrap();
    }

    let r = lake::orphans::sweep(catalog.as_ref(), &ident, std::time::Duration::ZERO)
        .await
        .unwrap();
    println!("sweep on S3: {r:?}");
    assert_eq!(r.refused, None, "{r:?}");
    // 2 manifest lists, 2 manifests, 2 data files.
    assert_eq!(r.referenced, 6, "{r:?}");
    assert_eq!(r.listed, 6 + never.len() + 1, "{r:?}");
    assert_eq!(r.deleted, never.len() + 1, "{r:?}");
    let left = keys_under(&client, &prefix).await;
    assert!(!left.contains(&failed) && left.contains(&marker));
    assert!(
        left.contains(&export) && left.contains(&sibling),
        "{left:?}"
    );
    for f in &never {
        let key = f
            .file_path()
            .trim_start_matches(&format!("s3://{}/", bucket()));
        assert!(!left.iter().any(|k| k == key), "{key} is an orphan");
    }
    let scan = catalog
        .load_table(&ident)
        .await
        .unwrap()
        .scan()
        .build()
        .unwrap();
    let batches: Vec<_> = scan.to_arrow().await.unwrap().try_collect().await.unwrap();
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 20);
}

/// `bench-api latency --warehouse` times the query side on an object
/// store. A kept lake there is the same after every run (the commits each
/// run adds to time a commit's cost are taken back in the bucket too),
/// and a run without `--lake-dir` leaves nothing in the bucket.
#[actix_rt::test]
async fn the_latency_bench_keeps_its_lake_in_an_object_store_warehouse() {
    use ticklake::tools::bench_api::{LatencyOptions, latency};
    let endpoint = s3_endpoint();
    let client = bucket_client(&endpoint);
    let mut base = Config::default();
    base.lake.s3 = s3_config(&endpoint);
    let kept = tempfile::tempdir().unwrap();
    let prefix = unique("bench-kept-");
    let warehouse = format!("s3://{}/{prefix}", bucket());
    let o = LatencyOptions {
        lake_trades: 2_000,
        // Past the hundredth commit, where the build first deletes the
        // table's superseded metadata files.
        commits: Some(101),
        lake_dir: Some(kept.path().to_path_buf()),
        warehouse: Some(warehouse.clone()),
        tail_trades: 400,
        iterations: 1,
        duckdb_python: None,
        maintain: false,
    };
    let first = latency(&base, &o).await.unwrap();
    let mut built = keys_under(&client, &prefix).await;
    built.sort();
    assert!(
        built.iter().any(|k| k.ends_with(".parquet")),
        "the data files are in the bucket: {built:?}"
    );
    assert!(
        !kept.path().join("warehouse").exists(),
        "nothing of the lake in the directory but its catalog"
    );
    let metadata_files: Vec<_> = built
        .iter()
        .filter(|k| k.starts_with(&format!("{prefix}/market/trades/metadata/")))
        .filter(|k| k.ends_with(".metadata.json"))
        .collect();
    // The newest two of the first 99 commits' kept before the hundredth,
    // then the hundredth's and the hundred-and-first's: not 102.
    assert_eq!(metadata_files.len(), 4, "{metadata_files:?}");
    let second = latency(&base, &o).await.unwrap();
    let mut after = keys_under(&client, &prefix).await;
    after.sort();
    assert!(
        after == built,
        "the second run found and left the same lake"
    );
    for r in [&first, &second] {
        assert!(
            r.kept_lake_files_removed.is_some_and(|n| n >= 4),
            "{:?}",
            r.kept_lake_files_removed
        );
    }
    assert_eq!(first.recent_rows, second.recent_rows);
    assert_eq!(second.plan.snapshots, first.plan.snapshots);
    assert!(first.plan.metadata_bytes > 0, "read from the bucket");

    // The same directory with another warehouse is refused, not mixed.
    let other = LatencyOptions {
        warehouse: Some(format!("s3://{}/{}", bucket(), unique("bench-other-"))),
        ..o.clone()
    };
    let err = latency(&base, &other).await.unwrap_err().to_string();
    assert!(err.contains("warehouse"), "{err}");

    // A run of its own: a prefix under the warehouse, gone at its end.
    let own = unique("bench-own-");
    let o = LatencyOptions {
        lake_dir: None,
        warehouse: Some(format!("s3://{}/{own}", bucket())),
        commits: None,
        ..o
    };
    let r = latency(&base, &o).await.unwrap();
    assert!(r.recent_rows > 0);
    assert!(r.plan.data_files > 0);
    assert_eq!(keys_under(&client, &own).await, Vec::<String>::new());
}
