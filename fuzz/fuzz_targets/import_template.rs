//! The elder-database template import: any bytes as an uploaded file (CSV in any encoding,
//! xlsx, garbage). Checked: no panic; a file read as a table gives each of its rows either a
//! sound row or at least one rejection, and no reason carries a run of 11 or more digits (an
//! ID-card or phone number).
#![no_main]

use anxin::domain::import::{read_table, validate};
use chrono::NaiveDate;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(table) = read_table(data, None) else {
        return;
    };
    let today = NaiveDate::from_ymd_opt(2026, 12, 7).expect("a date");
    let checked = validate(&table, today);
    for r in &checked.rejected {
        let mut run = 0;
        for c in r.reason.chars() {
            run = if c.is_ascii_digit() { run + 1 } else { 0 };
            assert!(run < 11, "a number in a rejection reason: {r:?}");
        }
    }
    let mut rows: Vec<usize> = checked.rows.iter().map(|r| r.row).collect();
    rows.extend(checked.rejected.iter().map(|r| r.row));
    rows.sort_unstable();
    rows.dedup();
    assert_eq!(rows.len(), table.len(), "every data row is either sound or rejected");
});
