//! The one reader of the project's CSV inputs: CT-RATE's reports, labels and metadata CSVs
//! (`prepare ctrate`, the factual-correctness labels) and prompt lists (`generate --prompts`,
//! the guidance sweep, `clip embed-text`).
//!
//! Rules, the same for every caller:
//! - the first record is the header; names are trimmed and a UTF-8 byte-order mark is dropped;
//! - every record has as many fields as the header;
//! - quotes follow RFC 4180: a quoted field may hold commas, newlines and doubled quotes `""`,
//!   and its closing quote must be followed by a comma, a line end or the end of the file.
//!   A file whose quotes do not close is refused with the line of the quote that opened the
//!   field: an unbalanced quote would otherwise swallow the following rows into one cell
//!   (e.g. a report that silently becomes three reports long);
//! - errors name the file and the line (a line of the file, counted from 1, not a row index).

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use text2ct_io::{IoError, Result};

/// One data record.
#[derive(Clone, Debug, PartialEq)]
pub struct CsvRow {
    /// The line of the file where the record starts (1-based; the header is line 1).
    pub line: u64,
    pub fields: Vec<String>,
}

impl CsvRow {
    /// The field at column `i` ("" past the end, which [`CsvTable::read`] never lets happen).
    pub fn get(&self, i: usize) -> &str {
        self.fields.get(i).map(String::as_str).unwrap_or("")
    }
}

/// A whole CSV file, checked.
#[derive(Clone, Debug)]
pub struct CsvTable {
    pub path: PathBuf,
    pub header: Vec<String>,
    pub rows: Vec<CsvRow>,
}

impl CsvTable {
    /// Read and check a CSV file (see the module rules).
    pub fn read(path: &Path) -> Result<CsvTable> {
        let f = std::fs::File::open(path).map_err(|e| IoError::os(path, e))?;
        check_quotes(BufReader::new(f)).map_err(|e| match e {
            QuoteError::Io(e) => IoError::os(path, e),
            QuoteError::Bad(m) => IoError::format(path, m),
        })?;
        let mut rdr = csv::ReaderBuilder::new()
            .has_headers(true)
            .flexible(false)
            .from_path(path)
            .map_err(|e| IoError::format(path, format!("cannot open as CSV: {e}")))?;
        let header: Vec<String> = rdr
            .headers()
            .map_err(|e| IoError::format(path, format!("line 1: cannot read the CSV header: {}", csv_msg(&e))))?
            .iter()
            .map(|h| h.trim().trim_start_matches('\u{feff}').trim().to_string())
            .collect();
        if header.iter().all(|h| h.is_empty()) {
            return Err(IoError::format(path, "the CSV has no header"));
        }
        let mut rows = Vec::new();
        for rec in rdr.records() {
            let rec = rec.map_err(|e| {
                let line = e.position().map(|p| format!("line {}: ", p.line())).unwrap_or_default();
                IoError::format(path, format!("{line}{}", csv_msg(&e)))
            })?;
            let line = rec.position().map(|p| p.line()).unwrap_or(0);
            rows.push(CsvRow { line, fields: rec.iter().map(str::to_string).collect() });
        }
        Ok(CsvTable { path: path.to_path_buf(), header, rows })
    }

    /// The index of column `name`, if present.
    pub fn column(&self, name: &str) -> Option<usize> {
        self.header.iter().position(|h| h == name)
    }

    /// The indices of `names`; an error names every missing column and the file.
    pub fn require(&self, names: &[&str]) -> Result<Vec<usize>> {
        let missing: Vec<&str> = names.iter().filter(|n| self.column(n).is_none()).copied().collect();
        if !missing.is_empty() {
            return Err(IoError::format(&self.path, format!("missing column(s): {}", missing.join(", "))));
        }
        Ok(names.iter().filter_map(|n| self.column(n)).collect())
    }
}

/// The csv crate's message without its own position prefix where it has one we already print.
fn csv_msg(e: &csv::Error) -> String {
    match e.kind() {
        csv::ErrorKind::UnequalLengths { expected_len, len, .. } => {
            format!("the record has {len} field(s) but the header has {expected_len}")
        }
        csv::ErrorKind::Utf8 { err, .. } => format!("field {} is not valid UTF-8", err.field() + 1),
        _ => e.to_string(),
    }
}

#[derive(Debug)]
enum QuoteError {
    Io(std::io::Error),
    Bad(String),
}

/// Check that every quoted field closes properly (RFC 4180), streaming over the file.
fn check_quotes(r: impl Read) -> std::result::Result<(), QuoteError> {
    #[derive(Clone, Copy)]
    enum St {
        /// At the start of a field.
        Start,
        /// Inside an unquoted field (a quote here is an ordinary character).
        Plain,
        /// Inside a quoted field that opened on this line.
        Quoted(u64),
        /// Just after a quote inside a quoted field: a second quote (escape), a comma or a line
        /// end must follow.
        QuoteSeen(u64),
    }
    let mut st = St::Start;
    let mut line = 1u64;
    let mut r = BufReader::new(r);
    loop {
        let buf = r.fill_buf().map_err(QuoteError::Io)?;
        if buf.is_empty() {
            break;
        }
        for &b in buf {
            st = match (st, b) {
                (St::Start, b'"') => St::Quoted(line),
                (St::Start | St::Plain, b',' | b'\n') => St::Start,
                (St::Start | St::Plain, _) => St::Plain,
                (St::Quoted(o), b'"') => St::QuoteSeen(o),
                (St::Quoted(o), _) => St::Quoted(o),
                (St::QuoteSeen(o), b'"') => St::Quoted(o),
                (St::QuoteSeen(_), b',' | b'\n') => St::Start,
                // "\r\n" after a closing quote: the line end follows.
                (St::QuoteSeen(o), b'\r') => St::QuoteSeen(o),
                (St::QuoteSeen(o), _) => {
                    let opened = if o == line {
                        String::new()
                    } else {
                        format!(" that opened on line {o} (is the quote on line {o} unterminated?)")
                    };
                    return Err(QuoteError::Bad(format!(
                        "line {line}: text after the closing quote of a quoted field{opened}; \
                         quotes inside a quoted field must be doubled (\"\")"
                    )));
                }
            };
            if b == b'\n' {
                line += 1;
            }
        }
        let n = buf.len();
        r.consume(n);
    }
    if let St::Quoted(o) = st {
        return Err(QuoteError::Bad(format!("line {o}: a quoted field opens here and is never closed")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(s: &str) -> std::result::Result<(), String> {
        check_quotes(s.as_bytes()).map_err(|e| match e {
            QuoteError::Bad(m) => m,
            QuoteError::Io(e) => e.to_string(),
        })
    }

    #[test]
    fn quotes_must_close() {
        // Well-formed: commas, newlines and doubled quotes inside quotes; CRLF; a bare quote
        // inside an unquoted field; no final newline.
        check("id,prompt\na1,\"x, y\"\r\na2,\"two\nlines \"\"q\"\"\"\na3,5\" nodule\na4,\"\"").unwrap();
        // The file: a2's opening quote closes a1's field, the rest of line 3 follows.
        let e = check(
            "id,prompt\na1,\"Findings: Left pleural effusion.\na2,\"Findings: Cardiomegaly.\"\na3,\"Findings: Nodule.\"\n",
        )
        .unwrap_err();
        assert!(e.starts_with("line 3:") && e.contains("opened on line 2"), "{e}");
        // Never closed at all.
        let e = check("id,prompt\na1,ok\na2,\"Findings: effusion.\na3,more\n").unwrap_err();
        assert_eq!(e, "line 3: a quoted field opens here and is never closed");
        // Text after a closing quote on the same line.
        let e = check("id,prompt\na1,\"abc\"def\n").unwrap_err();
        assert!(e.starts_with("line 2: text after the closing quote"), "{e}");
    }
}
