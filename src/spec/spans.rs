//! Where each node of a YAML document starts, by dotted path
//! (`spec.stages[2].with.environment`), so semantic problems found after
//! typed parsing can still name a line and column.

use std::collections::HashMap;

#[derive(Debug, Clone, Default)]
pub struct SpanIndex {
    /// path -> (line, col), 1-based; keys map to the key's position.
    positions: HashMap<String, (usize, usize)>,
}

impl SpanIndex {
    /// The position of `path`, or of its nearest ancestor that has one.
    pub fn locate(&self, path: &str) -> Option<(usize, usize)> {
        let mut p = path.to_string();
        loop {
            if let Some(pos) = self.positions.get(&p) {
                return Some(*pos);
            }
            let cut = p.rfind(['.', '['])?;
            p.truncate(cut);
        }
    }
}
