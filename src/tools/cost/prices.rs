//! The price sheet of `ticklake cost` (`config/prices.toml`): dated
//! prices, each section with the source it was read from. It is read by
//! dotted key rather than deserialized into structs, so that every error,
//! a missing price as well as a misspelt one, names the key and the file.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::CostError;

/// The price sheet, checked: every price, and the source its section names.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Prices {
    pub file: PathBuf,
    /// The date the prices were read at their sources.
    pub as_of: String,
    pub region: String,
    pub currency: String,
    pub compute_instance: String,
    pub compute_vcpus: f64,
    pub compute_per_hour: f64,
    pub compute_source: String,
    pub storage_per_gb_month: f64,
    pub storage_source: String,
    pub put_per_1000: f64,
    pub get_per_1000: f64,
    pub requests_source: String,
    pub kafka_storage_per_gb_month: f64,
    pub kafka_storage_source: String,
}

/// The keys each section of the sheet may have; anything else is refused,
/// as a misspelt price would otherwise be silently ignored.
const SHEET: &[(&str, &[&str])] = &[
    ("", &["as_of", "region", "currency"]),
    ("compute", &["instance", "vcpus", "usd_per_hour", "source"]),
    ("object_storage", &["usd_per_gb_month", "source"]),
    (
        "requests",
        &["put_usd_per_1000", "get_usd_per_1000", "source"],
    ),
    ("kafka_storage", &["usd_per_gb_month", "source"]),
];

impl Prices {
    /// Reads and checks the price sheet at `file`.
    pub fn load(file: &Path) -> Result<Self, CostError> {
        if !file.exists() {
            return Err(CostError::PricesMissing {
                file: file.to_path_buf(),
            });
        }
        let text = std::fs::read_to_string(file).map_err(|e| CostError::PricesFile {
            file: file.to_path_buf(),
            reason: e.to_string(),
        })?;
        Self::parse(&text, file)
    }

    /// Checks the sheet `text` (read from `file`, named in every error).
    pub fn parse(text: &str, file: &Path) -> Result<Self, CostError> {
        let table: toml::Table = toml::from_str(text).map_err(|e| CostError::PricesFile {
            file: file.to_path_buf(),
            reason: e.to_string(),
        })?;
        let sheet = Sheet {
            file,
            table: &table,
        };
        sheet.refuse_unknown()?;
        let as_of = sheet.text("as_of")?;
        if chrono::NaiveDate::parse_from_str(&as_of, "%Y-%m-%d").is_err() {
            return Err(sheet.bad("as_of", format!("{as_of:?} is not a date (YYYY-MM-DD)")));
        }
        Ok(Self {
            file: file.to_path_buf(),
            as_of,
            region: sheet.text("region")?,
            currency: sheet.text("currency")?,
            compute_instance: sheet.text("compute.instance")?,
            compute_vcpus: sheet.price("compute.vcpus")?,
            compute_per_hour: sheet.price("compute.usd_per_hour")?,
            compute_source: sheet.text("compute.source")?,
            storage_per_gb_month: sheet.price("object_storage.usd_per_gb_month")?,
            storage_source: sheet.text("object_storage.source")?,
            put_per_1000: sheet.price("requests.put_usd_per_1000")?,
            get_per_1000: sheet.price("requests.get_usd_per_1000")?,
            requests_source: sheet.text("requests.source")?,
            kafka_storage_per_gb_month: sheet.price("kafka_storage.usd_per_gb_month")?,
            kafka_storage_source: sheet.text("kafka_storage.source")?,
        })
    }
}

/// The parsed sheet, read by dotted key so that every error names one.
struct Sheet<'a> {
    file: &'a Path,
    table: &'a toml::Table,
}

impl Sheet<'_> {
    fn bad(&self, key: &str, reason: impl Into<String>) -> CostError {
        CostError::PriceKey {
            file: self.file.to_path_buf(),
            key: key.to_string(),
            reason: reason.into(),
        }
    }

    fn get(&self, key: &str) -> Result<&toml::Value, CostError> {
        let (section, name) = key.split_once('.').unwrap_or(("", key));
        let table = if section.is_empty() {
            self.table
        } else {
            match self.table.get(section) {
                Some(toml::Value::Table(t)) => t,
                Some(_) => return Err(self.bad(section, "must be a table")),
                None => return Err(self.bad(key, "missing")),
            }
        };
        table.get(name).ok_or_else(|| self.bad(key, "missing"))
    }

    fn text(&self, key: &str) -> Result<String, CostError> {
        match self.get(key)? {
            toml::Value::String(s) if !s.trim().is_empty() => Ok(s.clone()),
            toml::Value::String(_) => Err(self.bad(key, "is empty")),
            v => Err(self.bad(key, format!("must be a string, not {}", v.type_str()))),
        }
    }

    /// A positive number; an integer is taken as one.
    fn price(&self, key: &str) -> Result<f64, CostError> {
        let v = match self.get(key)? {
            toml::Value::Float(f) => *f,
            toml::Value::Integer(i) => *i as f64,
            v => return Err(self.bad(key, format!("must be a number, not {}", v.type_str()))),
        };
        if v.is_finite() && v > 0.0 {
            Ok(v)
        } else {
            Err(self.bad(key, format!("{v} is not a positive number")))
        }
    }

    fn refuse_unknown(&self) -> Result<(), CostError> {
        for (key, value) in self.table {
            match SHEET.iter().find(|(section, _)| section == key) {
                Some((section, names)) => {
                    let toml::Value::Table(t) = value else {
                        return Err(self.bad(key, "must be a table"));
                    };
                    if let Some(k) = t.keys().find(|k| !names.contains(&k.as_str())) {
                        return Err(self.bad(&format!("{section}.{k}"), "unknown key"));
                    }
                }
                None if SHEET[0].1.contains(&key.as_str()) => {}
                None => return Err(self.bad(key, "unknown key")),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn shipped_prices() -> Prices {
        Prices::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("config/prices.toml")).unwrap()
    }

    #[test]
    fn the_shipped_sheet_is_dated_and_names_a_source_for_every_price() {
        let p = shipped_prices();
        assert!(chrono::NaiveDate::parse_from_str(&p.as_of, "%Y-%m-%d").is_ok());
        for s in [
            &p.compute_source,
            &p.storage_source,
            &p.requests_source,
            &p.kafka_storage_source,
        ] {
            assert!(s.starts_with("https://"), "{s}");
        }
    }

    fn sheet_error(text: &str) -> String {
        Prices::parse(text, Path::new("conf/my-prices.toml"))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn a_bad_sheet_names_the_key_and_the_file() {
        let good = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("config/prices.toml"),
        )
        .unwrap();
        for (from, to, key) in [
            (
                "usd_per_gb_month = 0.023",
                "usd_per_gb_month = \"cheap\"",
                "object_storage.usd_per_gb_month",
            ),
            (
                "put_usd_per_1000 = 0.005",
                "put_usd_per_1000 = -1",
                "requests.put_usd_per_1000",
            ),
            (
                "put_usd_per_1000 = 0.005",
                "put_usd_per_100 = 0.005",
                "requests.put_usd_per_100",
            ),
            ("usd_per_hour = 0.096", "", "compute.usd_per_hour"),
            ("as_of = \"2024-06-01\"", "as_of = \"June\"", "as_of"),
            (
                "currency = \"USD\"",
                "currency = \"USD\"\ndiscount = 0.1",
                "discount",
            ),
        ] {
            assert!(good.contains(from), "{from}");
            let err = sheet_error(&good.replacen(from, to, 1));
            assert!(
                err.contains(&format!("key `{key}`")) && err.contains("conf/my-prices.toml"),
                "{err}"
            );
        }
        let err = sheet_error("as_of = ");
        assert!(err.contains("conf/my-prices.toml"), "{err}");
        let err = Prices::load(Path::new("no/such/prices.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no/such/prices.toml"), "{err}");
    }
}
