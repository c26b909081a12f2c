//! Where each node of a YAML document starts, by dotted path
//! (`spec.stages[2].with.environment`), so semantic problems found after
//! typed parsing can still name a line and column.
//!
//! Built from yaml-rust2's event stream with an explicit stack (no
//! recursion), a depth limit and a budget on the bytes of stored paths, so
//! hostile input (deep nesting, huge documents) cannot exhaust the stack or
//! memory. Aliases are not expanded: an alias is indexed where it is written.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::Marker;

/// 1-based line and column.
pub type Pos = (usize, usize);

/// Deeper nesting is refused before serde_yaml sees the text: serde_yaml
/// refuses beyond 128 too, but only after libyaml has parsed the whole
/// document, which takes minutes for a few thousand open brackets.
pub const MAX_DEPTH: usize = 128;
/// Stop indexing once stored paths take this many bytes.
const PATH_BUDGET: usize = 32 << 20;

/// A key written twice in one mapping: serde keeps the last silently for
/// free-form maps (`with:`), so the loader reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DuplicateKey {
    /// Path of the repeated key.
    pub path: String,
    pub key: String,
    pub first: Pos,
    pub again: Pos,
}

#[derive(Debug, Clone, Default)]
pub struct SpanIndex {
    /// path -> (line, col), 1-based; keys map to the key's position, sequence
    /// items to the item's start.
    positions: HashMap<String, Pos>,
    /// path -> where the value starts.
    values: HashMap<String, Pos>,
    duplicates: Vec<DuplicateKey>,
    /// True when indexing stopped early (depth or budget); lookups then fall
    /// back to the nearest indexed ancestor.
    truncated: bool,
    /// Where nesting first went past [`MAX_DEPTH`].
    too_deep: Option<Pos>,
}

enum Frame {
    Map {
        path: String,
        key: Option<String>,
        expecting_key: bool,
        seen: HashMap<String, Pos>,
    },
    Seq {
        path: String,
        index: usize,
    },
    /// A complex (non-scalar) mapping key or its value: counted, not indexed.
    Skip {
        depth: usize,
    },
}

fn pos(m: &Marker) -> Pos {
    // yaml-rust2 columns are 0-based, lines 1-based.
    (m.line(), m.col() + 1)
}

pub(super) fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() { key.to_string() } else { format!("{parent}.{key}") }
}

impl SpanIndex {
    /// Index the first document of `text`. Best effort: on a syntax error the
    /// index holds what came before it (serde_yaml reports the error itself).
    pub fn build(text: &str) -> SpanIndex {
        let mut index = SpanIndex::default();
        let mut parser = Parser::new_from_str(text);
        let mut stack: Vec<Frame> = Vec::new();
        let mut budget = PATH_BUDGET;
        let mut started = false;
        loop {
            let (event, mark) = match parser.next_token() {
                Ok(next) => next,
                Err(e) => {
                    // The scanner reads ahead through flow brackets and gives
                    // up past 255 of them before any event reaches us.
                    if e.info().contains("recursion limit") {
                        index.too_deep = Some(pos(e.marker()));
                    }
                    index.truncated = true;
                    return index;
                }
            };
            let at = pos(&mark);
            let (opens, is_node) = match &event {
                Event::StreamEnd | Event::DocumentEnd => return index,
                Event::MappingStart(..) | Event::SequenceStart(..) => (true, true),
                Event::Scalar(..) | Event::Alias(_) => (false, true),
                Event::MappingEnd | Event::SequenceEnd => {
                    match stack.last_mut() {
                        Some(Frame::Skip { depth }) if *depth > 1 => *depth -= 1,
                        _ => {
                            stack.pop();
                        }
                    }
                    if stack.is_empty() && started {
                        return index;
                    }
                    continue;
                }
                _ => continue,
            };
            if !is_node {
                continue;
            }
            started = true;

            if stack.len() >= MAX_DEPTH || budget == 0 {
                if stack.len() >= MAX_DEPTH {
                    index.too_deep = Some(at);
                }
                index.truncated = true;
                return index;
            }

            // Where this node sits: Some(path) when it is indexed.
            let child: Option<String> = match stack.last_mut() {
                None => Some(String::new()),
                Some(Frame::Skip { depth }) => {
                    if opens {
                        *depth += 1;
                    }
                    continue;
                }
                Some(Frame::Map { path, key, expecting_key, seen }) => {
                    if *expecting_key {
                        *expecting_key = false;
                        match &event {
                            Event::Scalar(k, ..) => {
                                let p = join(path, k);
                                if seen.is_empty() {
                                    // A block mapping's start event is marked after
                                    // its first key; the key is where it starts.
                                    index.values.insert(path.clone(), at);
                                    if path.ends_with(']') {
                                        index.positions.insert(path.clone(), at);
                                    }
                                }
                                if let Some(first) = seen.get(k) {
                                    index.duplicates.push(DuplicateKey {
                                        path: p.clone(),
                                        key: k.clone(),
                                        first: *first,
                                        again: at,
                                    });
                                } else {
                                    seen.insert(k.clone(), at);
                                }
                                budget = budget.saturating_sub(p.len());
                                index.positions.entry(p).or_insert(at);
                                *key = Some(k.clone());
                            }
                            _ => {
                                *key = None;
                                if opens {
                                    stack.push(Frame::Skip { depth: 1 });
                                }
                            }
                        }
                        continue;
                    }
                    *expecting_key = true;
                    key.take().map(|k| join(path, &k))
                }
                Some(Frame::Seq { path, index: i }) => {
                    let p = format!("{path}[{i}]");
                    *i += 1;
                    budget = budget.saturating_sub(p.len());
                    index.positions.entry(p.clone()).or_insert(at);
                    Some(p)
                }
            };

            let Some(child) = child else {
                if opens {
                    stack.push(Frame::Skip { depth: 1 });
                }
                continue;
            };
            if !child.is_empty() {
                budget = budget.saturating_sub(child.len());
                index.values.entry(child.clone()).or_insert(at);
            }
            match event {
                Event::MappingStart(..) => {
                    stack.push(Frame::Map { path: child, key: None, expecting_key: true, seen: HashMap::new() })
                }
                Event::SequenceStart(..) => stack.push(Frame::Seq { path: child, index: 0 }),
                _ => {
                    if stack.is_empty() {
                        // A scalar document: nothing below it.
                        return index;
                    }
                }
            }
        }
    }

    /// The position of `path` (a key's position), or of its nearest ancestor
    /// that has one.
    pub fn locate(&self, path: &str) -> Option<Pos> {
        Self::nearest(&self.positions, path)
    }

    /// Where the value at `path` starts, or the nearest ancestor's value.
    pub fn locate_value(&self, path: &str) -> Option<Pos> {
        if let Some(p) = self.values.get(path) {
            return Some(*p);
        }
        // An unindexed child (e.g. past an alias) is best shown at its
        // ancestor's value, which is where the content comes from.
        Self::nearest(&self.values, path).or_else(|| self.locate(path))
    }

    /// True if `path` itself (not an ancestor) was indexed as a key or item.
    pub fn contains(&self, path: &str) -> bool {
        self.positions.contains_key(path)
    }

    pub fn duplicates(&self) -> &[DuplicateKey] {
        &self.duplicates
    }

    pub fn truncated(&self) -> bool {
        self.truncated
    }

    /// Where nesting first went deeper than [`MAX_DEPTH`], if it did.
    pub fn too_deep(&self) -> Option<Pos> {
        self.too_deep
    }

    fn nearest(map: &HashMap<String, Pos>, path: &str) -> Option<Pos> {
        let mut p = path;
        loop {
            if let Some(pos) = map.get(p) {
                return Some(*pos);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "\
apiVersion: v1
spec:
  stages:
    - name: fetch
      uses: fetch-model
    - name: build
      with: { environment: dev, tags: [a, b] }
";

    #[test]
    fn keys_items_and_values_have_positions() {
        let s = SpanIndex::build(DOC);
        assert_eq!(s.locate("apiVersion"), Some((1, 1)));
        assert_eq!(s.locate_value("apiVersion"), Some((1, 13)));
        assert_eq!(s.locate("spec.stages"), Some((3, 3)));
        assert_eq!(s.locate("spec.stages[1]"), Some((6, 7)));
        assert_eq!(s.locate("spec.stages[1].name"), Some((6, 7)));
        assert_eq!(s.locate_value("spec.stages[0].uses"), Some((5, 13)));
        assert_eq!(s.locate("spec.stages[1].with.environment"), Some((7, 15)));
        assert_eq!(s.locate_value("spec.stages[1].with.environment"), Some((7, 28)));
        assert_eq!(s.locate_value("spec.stages[1].with.tags[1]"), Some((7, 43)));
    }

    #[test]
    fn unknown_paths_fall_back_to_the_nearest_ancestor() {
        let s = SpanIndex::build(DOC);
        assert_eq!(s.locate("spec.stages[1].with.nothing.deeper"), Some((7, 7)));
        assert!(!s.contains("spec.stages[1].with.nothing"));
        assert_eq!(s.locate("other"), None);
    }

    #[test]
    fn duplicate_keys_are_recorded() {
        let s = SpanIndex::build("a: 1\nb:\n  c: 1\n  c: 2\n");
        assert_eq!(
            s.duplicates(),
            &[DuplicateKey { path: "b.c".into(), key: "c".into(), first: (3, 3), again: (4, 3) }]
        );
    }

    #[test]
    fn complex_keys_and_aliases_do_not_derail_the_index() {
        let s = SpanIndex::build("x: &a {k: v}\n? [1, 2]\n: {deep: [1]}\ny: *a\nz: 3\n");
        assert_eq!(s.locate_value("y"), Some((4, 4)));
        assert_eq!(s.locate("z"), Some((5, 1)));
        assert!(!s.truncated());
    }

    #[test]
    fn deep_nesting_stops_at_the_depth_limit_without_recursion() {
        let text = format!("a: {}{}", "[".repeat(100_000), "]".repeat(100_000));
        let s = SpanIndex::build(&text);
        assert!(s.truncated());
        assert_eq!(s.too_deep().map(|p| p.0), Some(1));
        let blocks: String = (0..200).map(|d| format!("{}k{d}:\n", "  ".repeat(d))).collect();
        let s = SpanIndex::build(&blocks);
        assert_eq!(s.too_deep(), Some((MAX_DEPTH, 2 * MAX_DEPTH - 1)));
        assert_eq!(s.locate("k0.k1"), Some((2, 3)));
    }

    #[test]
    fn syntax_errors_keep_what_came_before() {
        let s = SpanIndex::build("a: 1\nb: [\n");
        assert_eq!(s.locate("a"), Some((1, 1)));
        assert!(s.truncated());
    }
}
