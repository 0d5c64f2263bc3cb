//! Shared by the parity tests.

use std::path::Path;

/// A reference state-dict key list from `fixtures/reference/` (copies of the project's verified
/// lists in `shared/reference/`): one `key<TAB>[d0, d1, …]` per line, in checkpoint order.
pub fn reference_key_list(name: &str) -> Vec<(String, Vec<usize>)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/reference").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (k, s) = l.split_once('\t').unwrap_or_else(|| panic!("{}: bad line {l:?}", path.display()));
            let dims = s.trim().trim_start_matches('[').trim_end_matches(']');
            let shape = dims.split(',').filter(|d| !d.trim().is_empty()).map(|d| d.trim().parse().unwrap()).collect();
            (k.to_string(), shape)
        })
        .collect()
}
