//! Hostile inputs, family `models` (see main.rs).

use crate::{check_all, s, scratch, Case};

pub fn cases() -> Vec<Case> {
    let d = scratch("models");
    vec![
        // A model folder without a card.
        Case::new("model-no-card", &["model", "show", &s(&d.join("none"))]).mentions("model.json"),
    ]
}

#[test]
fn hostile_models() {
    check_all("models", cases());
}
