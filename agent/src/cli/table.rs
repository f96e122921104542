//! Left-aligned columns separated by two spaces, without trailing blanks.

/// Rows of cells under a header; cells may differ in count per row.
#[derive(Debug, Default)]
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        let header = header.iter().map(|cell| cell.to_string()).collect();
        Table { rows: vec![header] }
    }

    /// A table of `key value` lines, without a header.
    pub fn pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, String)>) -> Self {
        let rows = pairs
            .into_iter()
            .map(|(k, v)| vec![k.to_string(), v])
            .collect();
        Table { rows }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let widths = self.widths();
        let mut text = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (cell, width) in row.iter().zip(&widths) {
                let pad = width.saturating_sub(cell.chars().count());
                line.push_str(cell);
                line.push_str(&" ".repeat(pad + 2));
            }
            text.push_str(line.trim_end());
            text.push('\n');
        }
        text
    }

    fn widths(&self) -> Vec<usize> {
        let mut widths = Vec::new();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                let width = cell.chars().count();
                match widths.get_mut(i) {
                    Some(w) if *w < width => *w = width,
                    Some(_) => {}
                    None => widths.push(width),
                }
            }
        }
        widths
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_aligned_on_the_widest_cell_without_trailing_blanks() {
        let mut table = Table::new(&["A", "LONG-HEADER", "C"]);
        table.row(vec!["wide-cell".into(), "x".into(), String::new()]);

        let text = table.render();

        assert_eq!(text, "A          LONG-HEADER  C\nwide-cell  x\n");
    }
}
