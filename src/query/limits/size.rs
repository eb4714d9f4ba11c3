//! What a bounded function's result would weigh, from its arguments alone.
//!
//! Each estimate is an upper bound of the bytes one row's result takes
//! (values, offsets, and the scratch the function needs on the way, such
//! as `array_repeat`'s take indices), computed before the function runs
//! and without allocating anything proportional to the result. Every
//! element of a list counts at least [`MIN_ELEMENT_BYTES`]: a list of a
//! billion booleans is only 125 MB of bits, but building it takes minutes
//! of synchronous work that no timeout interrupts.

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, IntervalMonthDayNanoType, TimeUnit};
use datafusion::error::DataFusionError;

/// The least one list element counts, whatever its type.
pub const MIN_ELEMENT_BYTES: u128 = 8;

/// The longest text of one non-string value (a decimal, a timestamp with
/// its zone, an interval), as `array_to_string` writes it.
const MAX_VALUE_TEXT: u128 = 64;

/// The most bytes `to_char` writes per byte of its format: `%+` is two
/// bytes and becomes 32 (`2001-07-08T00:34:60.026490+09:30`).
const MAX_FORMAT_EXPANSION: u128 = 32;

/// The shortest a calendar day can be (a daylight-saving change), in ns.
const MIN_DAY_NS: i128 = 23 * 3600 * 1_000_000_000;

/// The shortest a month can be, in days.
const MIN_MONTH_DAYS: i128 = 28;

/// How a function's result grows with its arguments. One variant per
/// family of DataFusion functions; the list of names is in
/// `super::BOUNDED`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Bound {
    /// `range`, `generate_series`: one element per step from start to stop.
    Series { inclusive: bool },
    /// `array_repeat(element, count)`.
    ArrayRepeat,
    /// `array_resize(array, size[, value])`.
    ArrayResize,
    /// `repeat(text, count)`.
    Repeat,
    /// `lpad`/`rpad(text, length[, fill])`: `length` characters.
    Pad,
    /// `replace(text, from, to)`: every match of `from` becomes `to`.
    Replace,
    /// `regexp_replace(text, pattern, replacement[, flags])`.
    RegexpReplace,
    /// `regexp_match(text, pattern[, flags])`: one string per group.
    RegexpMatch,
    /// `array_to_string(array, delimiter[, null_text])`.
    ArrayToString,
    /// `array_replace`, `array_replace_n`, `array_replace_all`: some
    /// elements become a copy of `to`.
    ArrayReplace(Times),
    /// `to_char(value, format)`.
    ToChar,
}

/// How many elements `array_replace*` may replace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Times {
    First,
    /// At most its fourth argument.
    N,
    All,
}

/// Why a call cannot be bounded at all.
pub type Unbounded = &'static str;

impl Bound {
    /// Upper bound of the bytes row `row`'s result takes.
    pub fn row_bytes(&self, a: &Args, row: usize) -> Result<u128, Unbounded> {
        let count = |k: usize| a.int(k, row).map_or(0, |n| n.max(0) as u128);
        Ok(match self {
            Bound::Series { inclusive } => {
                series_len(a, row, *inclusive)? * MIN_ELEMENT_BYTES + LIST_ROW
            }
            Bound::ArrayRepeat => count(1) * (MIN_ELEMENT_BYTES + a.value(0, row).bytes) + LIST_ROW,
            Bound::ArrayResize => {
                let fill = if a.arity() > 2 {
                    a.value(2, row).bytes
                } else {
                    0
                };
                a.value(0, row).bytes + count(1) * (MIN_ELEMENT_BYTES + fill) + LIST_ROW
            }
            Bound::Repeat => a.text_len(0, row) * count(1),
            Bound::Pad => {
                // A fill of multi-byte characters makes each padded
                // character up to four bytes.
                let width = match a.text(2, row) {
                    Some(fill) if !fill.is_ascii() => 4,
                    _ => 1,
                };
                a.text_len(0, row) + count(1) * width
            }
            Bound::Replace => {
                let (s, from, to) = (a.text_len(0, row), a.text_len(1, row), a.text_len(2, row));
                // At most one match per byte of `from` (an empty `from`
                // matches between every two characters).
                s + (s / from.max(1) + 1) * to
            }
            Bound::RegexpReplace => {
                // At most s + 1 matches, each replaced by at most the
                // replacement's text plus its group references, which
                // together copy at most the whole input once per reference.
                let (s, r) = (a.text_len(0, row), a.text_len(2, row));
                2 * (s + 1) * (r + 1)
            }
            Bound::RegexpMatch => {
                let groups = a.text(1, row).map_or(0, |p| p.matches('(').count()) as u128;
                (groups + 1) * (a.text_len(0, row) + MIN_ELEMENT_BYTES) + LIST_ROW
            }
            Bound::ArrayToString => {
                let v = a.value(0, row);
                let per_item = MAX_VALUE_TEXT + a.text_len(1, row) + a.text_len(2, row);
                v.bytes + v.items * per_item
            }
            Bound::ArrayReplace(times) => {
                let elements = a.elements(0, row);
                let replaced = match times {
                    Times::First => elements.min(1),
                    Times::N => elements.min(count(3)),
                    Times::All => elements,
                };
                a.value(0, row).bytes + replaced * a.value(2, row).bytes
            }
            Bound::ToChar => {
                let format = a.text_len(1, row);
                if a.is_null(1, row) {
                    0
                } else {
                    MAX_VALUE_TEXT + format * MAX_FORMAT_EXPANSION
                }
            }
        })
    }
}

/// A list row's offset, counted once.
const LIST_ROW: u128 = 8;

/// The arguments of one call, readable row by row: a scalar argument is
/// one row that stands for all of them, integers are read as Int64.
pub struct Args {
    columns: Vec<ArrayRef>,
}

/// What one value (or a run of values) takes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Size {
    pub bytes: u128,
    /// Leaf values (list elements, recursively; 1 for a non-list value).
    pub items: u128,
}

impl std::ops::Add for Size {
    type Output = Size;
    fn add(self, o: Size) -> Size {
        Size {
            bytes: self.bytes + o.bytes,
            items: self.items + o.items,
        }
    }
}

impl Args {
    pub fn new(columns: Vec<ArrayRef>) -> Result<Self, DataFusionError> {
        let columns = columns
            .into_iter()
            .map(|c| {
                if c.data_type().is_integer() && c.data_type() != &DataType::Int64 {
                    cast(&c, &DataType::Int64)
                } else {
                    Ok(c)
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { columns })
    }

    pub fn arity(&self) -> usize {
        self.columns.len()
    }

    fn at(&self, k: usize, row: usize) -> Option<(&ArrayRef, usize)> {
        let c = self.columns.get(k)?;
        let i = if c.len() == 1 { 0 } else { row };
        (i < c.len()).then_some((c, i))
    }

    fn is_null(&self, k: usize, row: usize) -> bool {
        self.at(k, row).is_none_or(|(c, i)| c.is_null(i))
    }

    pub fn int(&self, k: usize, row: usize) -> Option<i64> {
        let (c, i) = self.at(k, row)?;
        let c = c.as_primitive_opt::<arrow::datatypes::Int64Type>()?;
        c.is_valid(i).then(|| c.value(i))
    }

    pub fn text(&self, k: usize, row: usize) -> Option<&str> {
        let (c, i) = self.at(k, row)?;
        if c.is_null(i) {
            return None;
        }
        match c.data_type() {
            DataType::Utf8 => Some(c.as_string::<i32>().value(i)),
            DataType::LargeUtf8 => Some(c.as_string::<i64>().value(i)),
            DataType::Utf8View => Some(c.as_string_view().value(i)),
            _ => None,
        }
    }

    /// Bytes of a text argument (0 when null or not text).
    pub fn text_len(&self, k: usize, row: usize) -> u128 {
        self.text(k, row).map_or(0, |s| s.len() as u128)
    }

    /// What the value of argument `k` at `row` takes.
    pub fn value(&self, k: usize, row: usize) -> Size {
        match self.at(k, row) {
            Some((c, i)) if c.is_valid(i) => range_size(c.as_ref(), i, i + 1),
            _ => Size::default(),
        }
    }

    /// Top-level elements of the list argument `k` at `row`.
    pub fn elements(&self, k: usize, row: usize) -> u128 {
        let Some((c, i)) = self.at(k, row) else {
            return 0;
        };
        if c.is_null(i) {
            return 0;
        }
        let n = match c.data_type() {
            DataType::List(_) => c.as_list::<i32>().value_length(i) as usize,
            DataType::LargeList(_) => c.as_list::<i64>().value_length(i) as usize,
            DataType::FixedSizeList(_, n) => *n as usize,
            _ => 0,
        };
        n as u128
    }

    /// Argument `k` at `row` as a point on the line a series walks: days
    /// for dates, nanoseconds for timestamps, the value for integers.
    fn point(&self, k: usize, row: usize) -> Option<i128> {
        let (c, i) = self.at(k, row)?;
        if c.is_null(i) {
            return None;
        }
        match c.data_type() {
            DataType::Int64 => self.int(k, row).map(i128::from),
            DataType::Date32 => Some(
                c.as_primitive::<arrow::datatypes::Date32Type>()
                    .value(i)
                    .into(),
            ),
            DataType::Date64 => Some(
                i128::from(c.as_primitive::<arrow::datatypes::Date64Type>().value(i))
                    .div_euclid(86_400_000),
            ),
            DataType::Timestamp(unit, _) => {
                use arrow::datatypes::{
                    TimestampMicrosecondType as Us, TimestampMillisecondType as Ms,
                    TimestampNanosecondType as Ns, TimestampSecondType as S,
                };
                let (raw, per) = match unit {
                    TimeUnit::Second => (c.as_primitive::<S>().value(i), 1_000_000_000),
                    TimeUnit::Millisecond => (c.as_primitive::<Ms>().value(i), 1_000_000),
                    TimeUnit::Microsecond => (c.as_primitive::<Us>().value(i), 1_000),
                    TimeUnit::Nanosecond => (c.as_primitive::<Ns>().value(i), 1),
                };
                Some(i128::from(raw) * per)
            }
            _ => None,
        }
    }

    fn interval(&self, k: usize, row: usize) -> Option<(i128, i128, i128)> {
        let (c, i) = self.at(k, row)?;
        let c = c.as_primitive_opt::<IntervalMonthDayNanoType>()?;
        c.is_valid(i).then(|| {
            let v = c.value(i);
            (v.months.into(), v.days.into(), v.nanoseconds.into())
        })
    }

    fn data_type(&self, k: usize) -> Option<&DataType> {
        self.columns.get(k).map(|c| c.data_type())
    }
}

/// Elements of the series row `row` of `range`/`generate_series`
/// arguments (1 to 3 integers, or start, stop and an interval step for
/// dates and timestamps) would hold.
pub fn series_len(a: &Args, row: usize, inclusive: bool) -> Result<u128, Unbounded> {
    let (start, stop, step) = match a.arity() {
        1 => (Some(0), a.point(0, row), Some(1)),
        2 => (a.point(0, row), a.point(1, row), Some(1)),
        _ if a.data_type(2) == Some(&DataType::Int64) => (
            a.point(0, row),
            a.point(1, row),
            a.int(2, row).map(i128::from),
        ),
        _ => {
            let timestamps = matches!(a.data_type(0), Some(DataType::Timestamp(..)));
            let Some((months, days, ns)) = a.interval(2, row) else {
                return Ok(0);
            };
            // Dates step by months and days only (the function ignores
            // the rest); timestamps by all three.
            let ns = if timestamps { ns } else { 0 };
            let parts = [months, days, ns];
            if parts.iter().any(|p| *p > 0) && parts.iter().any(|p| *p < 0) {
                return Err(
                    "a step whose parts have different signs (such as '1 month -28 days') can stand still; use a step of one sign",
                );
            }
            let shortest = if timestamps {
                (months * MIN_MONTH_DAYS + days) * MIN_DAY_NS + ns
            } else {
                months * MIN_MONTH_DAYS + days
            };
            (a.point(0, row), a.point(1, row), Some(shortest))
        }
    };
    let (Some(start), Some(stop), Some(step)) = (start, stop, step) else {
        return Ok(0);
    };
    if step == 0 {
        // The function refuses a zero step itself.
        return Ok(0);
    }
    let span = if step > 0 { stop - start } else { start - stop };
    let step = step.abs();
    let n = if inclusive {
        if span < 0 { 0 } else { span / step + 1 }
    } else if span <= 0 {
        0
    } else {
        (span - 1) / step + 1
    };
    Ok(n as u128)
}

/// What values `start..end` of `a` take, children included.
fn range_size(a: &dyn Array, start: usize, end: usize) -> Size {
    let n = end.saturating_sub(start) as u128;
    let flat = |bytes: u128| Size { bytes, items: n };
    match a.data_type() {
        DataType::Null => flat(0),
        DataType::Boolean => flat(n.div_ceil(8)),
        DataType::Utf8 => {
            let o = a.as_string::<i32>().value_offsets();
            flat((o[end] - o[start]) as u128 + 4 * n)
        }
        DataType::LargeUtf8 => {
            let o = a.as_string::<i64>().value_offsets();
            flat((o[end] - o[start]) as u128 + 8 * n)
        }
        DataType::Binary => {
            let o = a.as_binary::<i32>().value_offsets();
            flat((o[end] - o[start]) as u128 + 4 * n)
        }
        DataType::LargeBinary => {
            let o = a.as_binary::<i64>().value_offsets();
            flat((o[end] - o[start]) as u128 + 8 * n)
        }
        DataType::Utf8View | DataType::BinaryView => {
            let views = match a.as_string_view_opt() {
                Some(s) => s.views(),
                None => a.as_binary_view().views(),
            };
            // A view is 16 bytes; a value over 12 bytes lives beside it.
            let long: u128 = views[start..end]
                .iter()
                .map(|v| *v as u32)
                .filter(|len| *len > 12)
                .map(u128::from)
                .sum();
            flat(16 * n + long)
        }
        DataType::List(_) => {
            let l = a.as_list::<i32>();
            let o = l.value_offsets();
            let child = range_size(l.values().as_ref(), o[start] as usize, o[end] as usize);
            Size {
                bytes: child.bytes + 4 * n,
                items: child.items,
            }
        }
        DataType::LargeList(_) => {
            let l = a.as_list::<i64>();
            let o = l.value_offsets();
            let child = range_size(l.values().as_ref(), o[start] as usize, o[end] as usize);
            Size {
                bytes: child.bytes + 8 * n,
                items: child.items,
            }
        }
        DataType::FixedSizeList(_, _) => {
            let l = a.as_fixed_size_list();
            range_size(
                l.values().as_ref(),
                l.value_offset(start) as usize,
                l.value_offset(start) as usize + (end - start) * l.value_length() as usize,
            )
        }
        DataType::Struct(_) => {
            let bytes = a
                .as_struct()
                .columns()
                .iter()
                .map(|c| range_size(c.as_ref(), start, end).bytes)
                .sum();
            flat(bytes)
        }
        DataType::Map(..) => {
            let m = a.as_map();
            let o = m.value_offsets();
            let child = range_size(m.entries(), o[start] as usize, o[end] as usize);
            Size {
                bytes: child.bytes + 4 * n,
                items: child.items,
            }
        }
        dt => match dt.primitive_width() {
            Some(w) => flat(w as u128 * n),
            // Anything else (dictionaries, unions) at the array's average.
            None => flat(a.get_array_memory_size() as u128 / a.len().max(1) as u128 * n),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, ListArray, StringArray};
    use arrow::datatypes::Int64Type;
    use std::sync::Arc;

    fn ints(v: &[i64]) -> ArrayRef {
        Arc::new(Int64Array::from(v.to_vec()))
    }

    fn series(cols: Vec<ArrayRef>, inclusive: bool) -> u128 {
        series_len(&Args::new(cols).unwrap(), 0, inclusive).unwrap()
    }

    /// The counts match what DataFusion builds, in both directions, with
    /// and without the upper bound.
    #[test]
    fn integer_series_are_counted_exactly() {
        for (start, stop, step) in [
            (0, 10, 1),
            (2, 10, 3),
            (10, 0, -1),
            (10, 0, -3),
            (0, 0, 1),
            (5, 0, 1),
            (0, 5, -1),
            (i64::MIN, i64::MAX, i64::MAX),
        ] {
            for inclusive in [false, true] {
                let expected = if inclusive {
                    let (lo, hi) = if step > 0 {
                        (start, stop)
                    } else {
                        (stop, start)
                    };
                    if lo > hi {
                        0
                    } else {
                        ((hi as i128 - lo as i128) / (step as i128).abs() + 1) as u128
                    }
                } else {
                    let v: Vec<i128> = if step > 0 {
                        (start as i128..stop as i128)
                            .step_by(step as usize)
                            .take(10)
                            .collect()
                    } else {
                        (stop as i128 + 1..=start as i128)
                            .rev()
                            .step_by(step.unsigned_abs() as usize)
                            .take(10)
                            .collect()
                    };
                    v.len() as u128
                };
                let got = series(
                    vec![ints(&[start]), ints(&[stop]), ints(&[step])],
                    inclusive,
                );
                assert_eq!(
                    got, expected,
                    "{start}..{stop} by {step}, inclusive {inclusive}"
                );
            }
        }
        assert_eq!(series(vec![ints(&[2_000_000_000])], false), 2_000_000_000);
        assert_eq!(series(vec![ints(&[1]), ints(&[3])], true), 3);
    }

    #[test]
    fn a_step_of_mixed_signs_cannot_be_bounded() {
        let step = arrow::array::IntervalMonthDayNanoArray::from(vec![
            IntervalMonthDayNanoType::make_value(1, -28, 0),
        ]);
        let date = |d: i32| Arc::new(arrow::array::Date32Array::from(vec![d])) as ArrayRef;
        let a = Args::new(vec![date(19_000), date(0), Arc::new(step)]).unwrap();
        assert!(series_len(&a, 0, true).is_err());
        // One sign: one element per shortest step (28-day months).
        let step = arrow::array::IntervalMonthDayNanoArray::from(vec![
            IntervalMonthDayNanoType::make_value(1, 0, 0),
        ]);
        let a = Args::new(vec![date(0), date(280), Arc::new(step)]).unwrap();
        assert_eq!(series_len(&a, 0, true).unwrap(), 11);
    }

    #[test]
    fn values_are_measured_through_lists() {
        let list = ListArray::from_iter_primitive::<Int64Type, _, _>(vec![
            Some(vec![Some(1), Some(2), Some(3)]),
            None,
            Some(vec![]),
        ]);
        let strings: ArrayRef = Arc::new(StringArray::from(vec!["abc", "de"]));
        let a = Args::new(vec![Arc::new(list), strings]).unwrap();
        assert_eq!(
            a.value(0, 0),
            Size {
                bytes: 3 * 8 + 4,
                items: 3
            }
        );
        assert_eq!(a.value(0, 1), Size::default());
        assert_eq!(a.elements(0, 0), 3);
        assert_eq!(
            a.value(1, 1),
            Size {
                bytes: 2 + 4,
                items: 1
            }
        );
        assert_eq!(a.text_len(1, 0), 3);
    }
}
