//! Whose a metadata file is: the table's own, or another table's that
//! shares its location.
//!
//! Maintenance deletes files under a table's location that the table does
//! not reference (the orphan sweep) and metadata files it no longer lists
//! (expiry). Both take the location for the table's alone. Iceberg asks
//! that, but nothing enforces it: a REST catalog places a table where a
//! `location` property says, and two tables given one location, or one
//! given the root of a bucket other tables live in, would each see the
//! other's files as its own unreferenced ones, and delete them.
//!
//! A metadata JSON names its table: `table-uuid`, among its first fields
//! in every writer's output (Java's, pyiceberg's, iceberg-rust's). So
//! before a metadata file is deleted, or an unknown one is taken for this
//! table's, its first bytes are read. Data files and manifests name no
//! table; the sweep refuses a location that holds another table's
//! metadata instead (`orphans`).

use std::io::Read;

use futures::StreamExt;
use iceberg::io::FileIO;
use uuid::Uuid;

use crate::lake::commit::CONCURRENT_READS;

/// Bytes read from the start of a metadata file: `table-uuid` comes
/// second or third, after `format-version` and perhaps `location`.
const HEAD: u64 = 4096;

/// What a metadata file's first bytes say of its table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// The table asked about.
    Ours,
    /// Another table, which shares the location.
    Other(Uuid),
    /// The file could not be read, or its head names no table: not taken
    /// for this table's.
    Unknown(String),
}

/// Each of `files` (metadata JSON: location and size) with what it says
/// of its table, against `ours`, read [`CONCURRENT_READS`] at a time (the
/// bound of maintenance's and the writers' manifest reads, which run on
/// the same commit thread); in the order given.
/// Expiry asks of every stale metadata file: about 120 a table a run at
/// the default `maintenance.interval_secs` (600), a commit every 5 s
/// (`writer.max_age_ms`), each a ranged GET.
pub async fn owners(io: &FileIO, ours: Uuid, files: &[(String, u64)]) -> Vec<Owner> {
    // Owned futures: a borrowing closure's future is not `Send` for every
    // lifetime, which the maintenance job's spawn needs.
    let reads: Vec<_> = files
        .iter()
        .map(|(location, size)| owner(io.clone(), ours, location.clone(), *size))
        .collect();
    futures::stream::iter(reads)
        .buffered(CONCURRENT_READS)
        .collect()
        .await
}

async fn owner(io: FileIO, ours: Uuid, location: String, size: u64) -> Owner {
    let location = location.as_str();
    let head = async {
        let reader = io.new_input(location)?.reader().await?;
        reader.read(0..size.min(HEAD)).await
    };
    match head.await {
        Ok(bytes) => match uuid_in_head(&bytes) {
            Some(u) if u == ours => Owner::Ours,
            Some(u) => Owner::Other(u),
            None => Owner::Unknown(format!(
                "{location}: no table-uuid in its first {} bytes",
                bytes.len()
            )),
        },
        Err(e) => Owner::Unknown(format!("{location}: {e}")),
    }
}

/// The `table-uuid` of a metadata JSON, from its first bytes; none when
/// they do not hold the whole field. Java writes gzip metadata files when
/// a table sets `write.metadata.compression-codec`: their first bytes
/// inflate to the JSON's first bytes.
fn uuid_in_head(head: &[u8]) -> Option<Uuid> {
    if head.starts_with(&[0x1f, 0x8b]) {
        let mut json = Vec::new();
        // A cut stream ends in an error, after what it inflated so far.
        // `take`: deflate inflates up to a thousandfold, and the field is
        // near the start.
        let mut inflated = flate2::read::GzDecoder::new(head).take(16 * HEAD);
        let _ = inflated.read_to_end(&mut json);
        return uuid_in_json(&json);
    }
    uuid_in_json(head)
}

fn uuid_in_json(head: &[u8]) -> Option<Uuid> {
    const KEY: &[u8] = b"\"table-uuid\"";
    let at = head.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let rest = &head[at..];
    let rest = &rest[rest.iter().position(|b| !b.is_ascii_whitespace())?..];
    let rest = rest.strip_prefix(b":")?;
    let rest = &rest[rest.iter().position(|b| !b.is_ascii_whitespace())?..];
    let rest = rest.strip_prefix(b"\"")?;
    let end = rest.iter().position(|&b| b == b'"')?;
    Uuid::try_parse_ascii(&rest[..end]).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_uuid_is_read_from_each_writers_layout() {
        let u = "9c12d441-03fe-4693-9a96-a0705ddf69c1";
        let want = Uuid::parse_str(u).ok();
        // iceberg-rust and Java: compact, format-version first.
        let rust = format!(r#"{{"format-version":2,"table-uuid":"{u}","location":"s3://b/t"}}"#);
        // Java's pretty printer and pyiceberg: spaced, location first.
        let spaced = format!("{{\n  \"location\" : \"s3://b/t\",\n  \"table-uuid\" :\t\"{u}\",\n");
        assert_eq!(uuid_in_head(rust.as_bytes()), want);
        assert_eq!(uuid_in_head(spaced.as_bytes()), want);
        // Cut inside the value, no key, a value that is not a UUID.
        assert_eq!(uuid_in_head(&rust.as_bytes()[..40]), None);
        assert_eq!(uuid_in_head(br#"{"format-version":2}"#), None);
        assert_eq!(uuid_in_head(br#"{"table-uuid":"not-one"}"#), None);
        assert_eq!(uuid_in_head(br#"{"table-uuid":12}"#), None);
        // Gzip, whole and cut to its first bytes after a long field.
        let ids: Vec<String> = (0..2000).map(|_| Uuid::new_v4().to_string()).collect();
        let long = format!(r#"{{"format-version":2,"table-uuid":"{u}","ids":{ids:?}}}"#);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut gz, long.as_bytes()).unwrap();
        let gz = gz.finish().unwrap();
        assert!(gz.len() > 10 * HEAD as usize, "{}", gz.len());
        assert_eq!(uuid_in_head(&gz), want);
        assert_eq!(uuid_in_head(&gz[..HEAD as usize]), want);
    }

    /// A table's own metadata file reads as its own and as another's to
    /// any other table; a file that is not metadata, and one that is not
    /// there, as unknown, with the location in the reason.
    #[tokio::test]
    async fn each_file_is_read_for_its_table() {
        let dir = tempfile::tempdir().unwrap();
        let (_, _, table, _, _) = crate::lake::test_lake(dir.path()).await;
        let io = table.file_io();
        let current = table.metadata_location().unwrap().to_string();
        let size = std::fs::metadata(crate::lake::store::local_path(&current).unwrap())
            .unwrap()
            .len();
        let other_file = dir.path().join("note.json");
        std::fs::write(&other_file, r#"{"hello":"world"}"#).unwrap();
        let other = format!("file://{}", other_file.display());
        let gone = format!("file://{}", dir.path().join("gone.metadata.json").display());
        let files = vec![
            (current.clone(), size),
            (other.clone(), 17),
            (gone.clone(), 100),
        ];
        let ours = table.metadata().uuid();

        let got = owners(io, ours, &files).await;
        assert_eq!(got[0], Owner::Ours);
        assert!(
            matches!(&got[1], Owner::Unknown(w) if w.contains(&other)),
            "{got:?}"
        );
        assert!(
            matches!(&got[2], Owner::Unknown(w) if w.contains(&gone)),
            "{got:?}"
        );
        let someone = Uuid::new_v4();
        assert_eq!(
            owners(io, someone, &files[..1]).await,
            vec![Owner::Other(ours)]
        );
    }
}
