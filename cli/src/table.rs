//! Plain-text tables for the terminal: column widths, truncation, escaping.
//!
//! Why its own module: every cell the CLI prints (server names, tool names, paths)
//! originally came off the network, so rendering must both fit a terminal (widths
//! capped per column, overlong cells cut with an ellipsis) and be safe to print (control
//! and bidi characters escaped, so a hostile `serverInfo.name` cannot move the cursor,
//! recolour the terminal or reorder what the operator reads). Keeping that here, away
//! from the socket code, makes it testable on its own.

/// Horizontal alignment of a column's cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

#[derive(Debug, Clone)]
pub struct Column {
    pub header: &'static str,
    /// Width the column never shrinks below (useful when rows arrive later, `--follow`).
    pub min: usize,
    /// Width the column never grows beyond; longer cells are truncated with `…`.
    pub max: usize,
    pub align: Align,
}

impl Column {
    pub const fn left(header: &'static str, min: usize, max: usize) -> Column {
        Column {
            header,
            min,
            max,
            align: Align::Left,
        }
    }

    pub const fn right(header: &'static str, min: usize, max: usize) -> Column {
        Column {
            header,
            min,
            max,
            align: Align::Right,
        }
    }
}

/// Gap between columns.
const GAP: &str = "  ";
const ELLIPSIS: char = '…';

#[derive(Debug, Clone)]
pub struct Table {
    columns: Vec<Column>,
    widths: Vec<usize>,
}

impl Table {
    /// A table whose widths start at `max(header, min)`, capped at `max`.
    pub fn new(columns: Vec<Column>) -> Table {
        let widths = columns
            .iter()
            .map(|c| width(c.header).max(c.min).min(c.max.max(width(c.header))))
            .collect();
        Table { columns, widths }
    }

    /// Widens columns to fit `rows` (never past each column's `max`). Cells must already
    /// be sanitized (see [`sanitize`]).
    pub fn fit(&mut self, rows: &[Vec<String>]) {
        for row in rows {
            for ((w, col), cell) in self.widths.iter_mut().zip(&self.columns).zip(row) {
                *w = (*w).max(width(cell).min(col.max));
            }
        }
    }

    pub fn widths(&self) -> &[usize] {
        &self.widths
    }

    pub fn header(&self) -> String {
        let cells: Vec<String> = self.columns.iter().map(|c| c.header.to_string()).collect();
        self.row(&cells)
    }

    /// One line (no newline): every cell padded or truncated to its column's width,
    /// without trailing spaces.
    pub fn row(&self, cells: &[String]) -> String {
        let mut line = String::new();
        for (i, (col, w)) in self.columns.iter().zip(&self.widths).enumerate() {
            let cell = cells.get(i).map(String::as_str).unwrap_or("");
            let cell = truncate(cell, *w);
            if i > 0 {
                line.push_str(GAP);
            }
            let pad = w.saturating_sub(width(&cell));
            match col.align {
                Align::Left => {
                    line.push_str(&cell);
                    line.extend(std::iter::repeat_n(' ', pad));
                }
                Align::Right => {
                    line.extend(std::iter::repeat_n(' ', pad));
                    line.push_str(&cell);
                }
            }
        }
        line.truncate(line.trim_end().len());
        line
    }

    /// Header plus rows, each line ending in `\n`, widths fitted to the rows first.
    pub fn render(mut self, rows: &[Vec<String>]) -> String {
        self.fit(rows);
        let mut out = self.header();
        out.push('\n');
        for r in rows {
            out.push_str(&self.row(r));
            out.push('\n');
        }
        out
    }
}

/// Display width in terminal cells, approximated as the number of chars (no wide-glyph
/// table; every cell is sanitized, so there are no zero-width controls to miscount).
pub fn width(s: &str) -> usize {
    s.chars().count()
}

/// `s` cut to at most `max` cells, ending in `…` when something was cut.
pub fn truncate(s: &str, max: usize) -> String {
    if width(s) <= max {
        return s.to_string();
    }
    if max == 0 {
        return String::new();
    }
    let mut out: String = s.chars().take(max - 1).collect();
    out.push(ELLIPSIS);
    out
}

/// Makes untrusted text safe to print: control characters (C0, DEL, C1), bidi
/// overrides/isolates and zero-width characters become visible `\n`, `\t`, `\u{..}`
/// escapes.
pub fn sanitize(s: &str) -> String {
    if !s.chars().any(needs_escape) {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs_escape(c) => out.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
            c => out.push(c),
        }
    }
    out
}

/// [`sanitize`] line by line: line breaks stay line breaks (multi-line messages such
/// as a policy error with its source excerpt), everything else is escaped as there.
pub fn sanitize_lines(s: &str) -> String {
    s.split('\n').map(sanitize).collect::<Vec<_>>().join("\n")
}

fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{200b}'..='\u{200f}' // zero-width space/joiners, LRM, RLM
                | '\u{2028}'..='\u{202e}' // line/paragraph separators, bidi embeddings/overrides
                | '\u{2060}'..='\u{2069}' // word joiner, invisible operators, bidi isolates
                | '\u{feff}' // BOM / zero-width no-break space
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cols() -> Vec<Column> {
        vec![
            Column::left("NAME", 0, 10),
            Column::right("N", 0, 5),
            Column::left("NOTE", 0, 8),
        ]
    }

    fn row(cells: &[&str]) -> Vec<String> {
        cells.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn widths_fit_content_and_headers() {
        let mut t = Table::new(cols());
        assert_eq!(t.widths(), &[4, 1, 4]);
        t.fit(&[row(&["ab", "12345", "x"]), row(&["abcdef", "1", "xy"])]);
        assert_eq!(t.widths(), &[6, 5, 4]);
    }

    #[test]
    fn widths_are_capped_at_max_and_floored_at_min() {
        let mut t = Table::new(vec![Column::left("A", 6, 8), Column::left("B", 0, 3)]);
        assert_eq!(t.widths(), &[6, 1]);
        t.fit(&[row(&["0123456789abc", "xyz123"])]);
        assert_eq!(t.widths(), &[8, 3]);
    }

    #[test]
    fn header_never_truncated_even_when_max_is_smaller() {
        let t = Table::new(vec![Column::left("DURATION", 0, 3)]);
        assert_eq!(t.header(), "DURATION");
    }

    #[test]
    fn render_pads_aligns_and_trims_trailing_space() {
        let out = Table::new(cols()).render(&[row(&["alpha", "7", "ok"]), row(&["b", "1234", ""])]);
        assert_eq!(out, "NAME      N  NOTE\nalpha     7  ok\nb      1234\n");
    }

    #[test]
    fn overlong_cells_end_in_an_ellipsis() {
        let out =
            Table::new(cols()).render(&[row(&["averyverylongname", "1", "notes that go on"])]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[1], "averyvery…  1  notes t…");
        assert_eq!(width("averyvery…"), 10);
    }

    #[test]
    fn truncate_edges() {
        assert_eq!(truncate("abc", 3), "abc");
        assert_eq!(truncate("abcd", 3), "ab…");
        assert_eq!(truncate("abcd", 1), "…");
        assert_eq!(truncate("abcd", 0), "");
        assert_eq!(truncate("ééééé", 4), "ééé…");
    }

    #[test]
    fn rows_with_missing_cells_are_padded() {
        let t = Table::new(cols());
        assert_eq!(t.row(&row(&["x"])), "x");
    }

    #[test]
    fn sanitize_escapes_terminal_controls_and_bidi() {
        assert_eq!(sanitize("plain name-1.0"), "plain name-1.0");
        assert_eq!(sanitize("a\x1b[31mred"), "a\\u{1b}[31mred");
        assert_eq!(sanitize("line\nbreak\ttab\r"), "line\\nbreak\\ttab\\r");
        assert_eq!(sanitize("evil\u{202e}txt.exe"), "evil\\u{202e}txt.exe");
        assert_eq!(sanitize("zw\u{200b}j"), "zw\\u{200b}j");
        assert_eq!(sanitize("c1\u{9b}x"), "c1\\u{9b}x");
        assert_eq!(sanitize("ünïcødé ok"), "ünïcødé ok");
    }
}
