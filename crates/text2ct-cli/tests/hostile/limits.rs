//! Hostile inputs, family `limits` (see main.rs).

use crate::{check_all, s, scratch, Case};

pub fn cases() -> Vec<Case> {
    let d = scratch("limits");
    vec![
        // No volumes to make.
        Case::new("phantom-count-0", &["phantom", "--out", &s(&d.join("p")), "--count", "0"])
            .mentions("count")
            .writes_nothing_at(d.join("p")),
    ]
}

#[test]
fn hostile_limits() {
    check_all("limits", cases());
}
