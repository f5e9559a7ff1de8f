//! The YAML of an `lwr.yml` as a small tree with a line on every node, built from
//! yaml-rust2's events.
//!
//! Why not a general YAML tree (marked_yaml's, before): reading a 100,000-job file took
//! 490 MB, most of it nodes with two full markers and a hash-map entry of their own. Here a node keeps its line only, a
//! mapping is a vector, and the entries of the top-level `jobs:` mapping are not kept at all:
//! each is handed to a sink as soon as it is complete, so only one job's tree exists at a
//! time. What the reader sees is otherwise what the file says: no anchors, aliases or tags,
//! no duplicate keys, a mapping at the top.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// A scalar: its text, its line, and whether it was plain (unquoted), which only a plain
/// scalar may be read as null.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Scalar {
    text: String,
    line: usize,
    plain: bool,
}

impl Scalar {
    pub(super) fn as_str(&self) -> &str {
        &self.text
    }

    /// Unquoted, so `~`, `null` or nothing may mean null.
    pub(super) fn may_coerce(&self) -> bool {
        self.plain
    }

    pub(super) fn line(&self) -> Option<usize> {
        Some(self.line)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Sequence {
    line: usize,
    items: Vec<Node>,
}

impl std::ops::Deref for Sequence {
    type Target = [Node];

    fn deref(&self) -> &[Node] {
        &self.items
    }
}

/// A mapping in file order. A streamed mapping (the top-level `jobs:`) holds no entries:
/// they went to the sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Mapping {
    line: usize,
    entries: Vec<(Scalar, Node)>,
    streamed: bool,
}

impl Mapping {
    pub(super) fn iter(&self) -> impl Iterator<Item = (&Scalar, &Node)> {
        self.entries.iter().map(|(k, v)| (k, v))
    }

    pub(super) fn keys(&self) -> impl Iterator<Item = &Scalar> {
        self.entries.iter().map(|(k, _)| k)
    }

    pub(super) fn get_key_value(&self, key: &str) -> Option<(&Scalar, &Node)> {
        self.iter().find(|(k, _)| k.as_str() == key)
    }

    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether the entries went to the sink instead.
    pub(super) fn streamed(&self) -> bool {
        self.streamed
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Node {
    Scalar(Scalar),
    Sequence(Sequence),
    Mapping(Mapping),
}

impl Node {
    pub(super) fn line(&self) -> Option<usize> {
        Some(match self {
            Node::Scalar(s) => s.line,
            Node::Sequence(s) => s.line,
            Node::Mapping(m) => m.line,
        })
    }

    pub(super) fn as_mapping(&self) -> Option<&Mapping> {
        match self {
            Node::Mapping(m) => Some(m),
            _ => None,
        }
    }
}

/// A place in the file: line and column, both from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Mark {
    pub line: usize,
    pub column: usize,
}

impl From<Marker> for Mark {
    fn from(m: Marker) -> Mark {
        Mark {
            line: m.line(),
            column: m.col() + 1,
        }
    }
}

/// Why the file is not YAML that `lwr.yml` may be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum LoadError {
    /// A list or a scalar at the top.
    TopLevelMustBeMapping(Mark),
    /// An anchor (`&a`) or an alias (`*a`).
    UnexpectedAnchor(Mark),
    /// A mapping or list used as a key.
    MappingKeyMustBeScalar(Mark),
    /// A tag (`!x`).
    UnexpectedTag(Mark),
    /// Not YAML: the scanner's or parser's own message.
    Syntax(Mark, String),
    /// A key given twice in one mapping: the key, its line, and the line of the first.
    DuplicateKey {
        key: String,
        line: usize,
        first_line: usize,
    },
    /// The parser stopped without finishing the document (not seen with yaml-rust2, whose
    /// `load` reports such input as a syntax error; kept instead of a panic).
    Unfinished,
}

/// Mappings up to this many entries look for a duplicate key by a scan; bigger ones by an
/// index of their keys.
const SCAN_KEYS: usize = 16;

/// A mapping or list being read.
enum Frame {
    Mapping {
        line: usize,
        entries: Vec<(Scalar, Node)>,
        /// Key → line, for the duplicate check of big and streamed mappings.
        index: Option<HashMap<Box<str>, usize>>,
        /// The key whose value comes next.
        key: Option<Scalar>,
        streamed: bool,
    },
    Sequence {
        line: usize,
        items: Vec<Node>,
    },
}

enum State {
    Start,
    Stream,
    Document,
    /// Inside the top-level mapping: the open mappings and lists, outermost first.
    Reading(Vec<Frame>),
    Done(Node),
    Failed(LoadError),
}

struct Loader<F> {
    state: State,
    sink: F,
}

/// Parses `text`: the tree of the top-level mapping, in which the mapping under the top-level
/// key `jobs` (if it is a mapping) is empty and marked streamed, its entries having been
/// given to `sink` one by one, in file order, as each was complete. The first error wins; a
/// syntax error anywhere wins over the others (it is what the user must fix first), as the
/// parser reports it after the rest.
pub(super) fn load(
    text: impl Iterator<Item = char>,
    sink: impl FnMut(Scalar, Node),
) -> Result<Node, LoadError> {
    let mut loader = Loader {
        state: State::Start,
        sink,
    };
    let mut parser = Parser::new(text);
    parser
        .load(&mut loader, false)
        .map_err(|e| LoadError::Syntax((*e.marker()).into(), e.info().to_string()))?;
    match loader.state {
        State::Done(node) => Ok(node),
        State::Failed(e) => Err(e),
        _ => Err(LoadError::Unfinished),
    }
}

impl<F: FnMut(Scalar, Node)> MarkedEventReceiver for Loader<F> {
    fn on_event(&mut self, event: Event, marker: Marker) {
        if matches!(self.state, State::Failed(_)) {
            return;
        }
        if let Err(e) = self.event(event, marker.into()) {
            self.state = State::Failed(e);
        }
    }
}

impl<F: FnMut(Scalar, Node)> Loader<F> {
    fn event(&mut self, event: Event, mark: Mark) -> Result<(), LoadError> {
        // The checks come in the order of the loader this one replaced, so that a node with
        // both an anchor and a tag is reported the same way.
        match event {
            Event::Nothing | Event::DocumentEnd => Ok(()),
            Event::StreamStart => {
                self.state = State::Stream;
                Ok(())
            }
            Event::DocumentStart => {
                self.state = State::Document;
                Ok(())
            }
            Event::StreamEnd => {
                if matches!(self.state, State::Stream) {
                    // An empty file: an empty mapping, which then lacks `version`.
                    self.state = State::Done(Node::Mapping(Mapping {
                        line: mark.line,
                        entries: Vec::new(),
                        streamed: false,
                    }));
                }
                Ok(())
            }
            Event::Alias(_) => Err(LoadError::UnexpectedAnchor(mark)),
            Event::MappingStart(anchor, tag) => {
                if tag.is_some() {
                    return Err(LoadError::UnexpectedTag(mark));
                }
                if anchor != 0 {
                    return Err(LoadError::UnexpectedAnchor(mark));
                }
                let frames = match &mut self.state {
                    State::Document => {
                        self.state = State::Reading(Vec::with_capacity(8));
                        match &mut self.state {
                            State::Reading(frames) => frames,
                            _ => unreachable!("just set"),
                        }
                    }
                    State::Reading(frames) => frames,
                    _ => return Err(LoadError::Unfinished),
                };
                let streamed = match frames.as_slice() {
                    [Frame::Mapping { key: Some(k), .. }] => k.as_str() == "jobs",
                    [.., Frame::Mapping { key: None, .. }] => {
                        return Err(LoadError::MappingKeyMustBeScalar(mark));
                    }
                    _ => false,
                };
                frames.push(Frame::Mapping {
                    line: mark.line,
                    entries: Vec::new(),
                    index: streamed.then(HashMap::new),
                    key: None,
                    streamed,
                });
                Ok(())
            }
            Event::SequenceStart(anchor, tag) => {
                if tag.is_some() {
                    return Err(LoadError::UnexpectedTag(mark));
                }
                if anchor != 0 {
                    return Err(LoadError::UnexpectedAnchor(mark));
                }
                let State::Reading(frames) = &mut self.state else {
                    return Err(LoadError::TopLevelMustBeMapping(mark));
                };
                if let Some(Frame::Mapping { key: None, .. }) = frames.last() {
                    return Err(LoadError::MappingKeyMustBeScalar(mark));
                }
                frames.push(Frame::Sequence {
                    line: mark.line,
                    items: Vec::new(),
                });
                Ok(())
            }
            Event::Scalar(text, style, anchor, tag) => {
                if anchor != 0 {
                    return Err(LoadError::UnexpectedAnchor(mark));
                }
                if tag.is_some() {
                    return Err(LoadError::UnexpectedTag(mark));
                }
                let State::Reading(frames) = &mut self.state else {
                    return Err(LoadError::TopLevelMustBeMapping(mark));
                };
                let scalar = Scalar {
                    text,
                    line: mark.line,
                    plain: matches!(style, TScalarStyle::Plain),
                };
                if let Some(Frame::Mapping {
                    key: key @ None, ..
                }) = frames.last_mut()
                {
                    *key = Some(scalar);
                    return Ok(());
                }
                self.add(Node::Scalar(scalar))
            }
            Event::MappingEnd | Event::SequenceEnd => {
                let State::Reading(frames) = &mut self.state else {
                    return Err(LoadError::Unfinished);
                };
                let node = match frames.pop() {
                    Some(Frame::Mapping {
                        line,
                        entries,
                        streamed,
                        ..
                    }) => Node::Mapping(Mapping {
                        line,
                        entries,
                        streamed,
                    }),
                    Some(Frame::Sequence { line, items }) => {
                        Node::Sequence(Sequence { line, items })
                    }
                    None => return Err(LoadError::Unfinished),
                };
                if frames.is_empty() {
                    self.state = State::Done(node);
                    Ok(())
                } else {
                    self.add(node)
                }
            }
        }
    }

    /// Adds a complete node to the innermost open mapping (as its pending key's value) or list.
    fn add(&mut self, node: Node) -> Result<(), LoadError> {
        let State::Reading(frames) = &mut self.state else {
            return Err(LoadError::Unfinished);
        };
        match frames.last_mut() {
            Some(Frame::Sequence { items, .. }) => {
                items.push(node);
                Ok(())
            }
            Some(Frame::Mapping {
                entries,
                index,
                key,
                streamed,
                ..
            }) => {
                let key = key.take().ok_or(LoadError::Unfinished)?;
                check_duplicate(entries, index, &key)?;
                if *streamed {
                    (self.sink)(key, node);
                } else {
                    entries.push((key, node));
                }
                Ok(())
            }
            None => Err(LoadError::Unfinished),
        }
    }
}

/// A `DuplicateKey` error when `key` is already in the mapping; otherwise records it in the
/// index (made once the mapping outgrows a scan).
fn check_duplicate(
    entries: &[(Scalar, Node)],
    index: &mut Option<HashMap<Box<str>, usize>>,
    key: &Scalar,
) -> Result<(), LoadError> {
    let duplicate = |first_line| LoadError::DuplicateKey {
        key: key.text.clone(),
        line: key.line,
        first_line,
    };
    if index.is_none() {
        if let Some((first, _)) = entries.iter().find(|(k, _)| k.text == key.text) {
            return Err(duplicate(first.line));
        }
        if entries.len() < SCAN_KEYS {
            return Ok(());
        }
        let keys = entries
            .iter()
            .map(|(k, _)| (k.text.as_str().into(), k.line));
        *index = Some(keys.collect());
    }
    let Some(index) = index else {
        return Ok(());
    };
    match index.entry(key.text.as_str().into()) {
        std::collections::hash_map::Entry::Occupied(first) => Err(duplicate(*first.get())),
        std::collections::hash_map::Entry::Vacant(slot) => {
            slot.insert(key.line);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tree, and the streamed entries as (key, value).
    fn read(text: &str) -> Result<(Node, Vec<(Scalar, Node)>), LoadError> {
        let mut streamed = Vec::new();
        let root = load(text.chars(), |k, v| streamed.push((k, v)))?;
        Ok((root, streamed))
    }

    fn scalar(node: &Node) -> (&str, usize, bool) {
        match node {
            Node::Scalar(s) => (s.as_str(), s.line, s.plain),
            other => panic!("not a scalar: {other:?}"),
        }
    }

    #[test]
    fn block_and_flow_read_alike_with_lines() {
        let text =
            "# comment\nversion: 1\nother:\n  a: [x, 'y', \"z\"]\n  b:\n    - ~\n    - {c: d}\n";
        let (root, streamed) = read(text).unwrap();
        assert!(streamed.is_empty());
        let top = root.as_mapping().unwrap();
        assert_eq!(
            top.keys().map(Scalar::as_str).collect::<Vec<_>>(),
            ["version", "other"]
        );
        let (k, v) = top.get_key_value("version").unwrap();
        assert_eq!((k.line(), scalar(v)), (Some(2), ("1", 2, true)));
        let other = top.get_key_value("other").unwrap().1.as_mapping().unwrap();
        assert_eq!(other.line, 4);
        let Node::Sequence(a) = other.get_key_value("a").unwrap().1 else {
            panic!()
        };
        let items: Vec<_> = a.iter().map(scalar).collect();
        assert_eq!(items, [("x", 4, true), ("y", 4, false), ("z", 4, false)]);
        let Node::Sequence(b) = other.get_key_value("b").unwrap().1 else {
            panic!()
        };
        assert_eq!(b.line, 6);
        assert_eq!(scalar(&b[0]), ("~", 6, true));
        let c = b[1].as_mapping().unwrap();
        assert_eq!(
            (c.line, scalar(c.get_key_value("c").unwrap().1)),
            (7, ("d", 7, true))
        );
    }

    #[test]
    fn top_level_jobs_are_streamed_in_order_and_nothing_else_is() {
        let text = "jobs:\n  a: {run: x, jobs: {b: 1}}\n  c:\n    run: y\n  d:\nversion: 1\n";
        let (root, streamed) = read(text).unwrap();
        let keys: Vec<_> = streamed.iter().map(|(k, _)| (k.as_str(), k.line)).collect();
        assert_eq!(keys, [("a", 2), ("c", 3), ("d", 5)]);
        // An empty value is marked where the parser found it empty: the next line.
        // A nested `jobs:` is an ordinary mapping.
        let a = streamed[0].1.as_mapping().unwrap();
        let nested = a.get_key_value("jobs").unwrap().1.as_mapping().unwrap();
        assert!(!nested.streamed() && nested.len() == 1);
        assert_eq!(scalar(&streamed[2].1), ("", 6, true));
        let jobs = root.as_mapping().unwrap().get_key_value("jobs").unwrap().1;
        let jobs = jobs.as_mapping().unwrap();
        assert!(jobs.streamed() && jobs.is_empty() && jobs.line == 2);
    }

    #[test]
    fn an_empty_file_is_an_empty_mapping() {
        for text in ["", "# nothing\n", "\n\n"] {
            let (root, _) = read(text).unwrap();
            assert!(root.as_mapping().is_some_and(Mapping::is_empty), "{text:?}");
        }
    }

    #[test]
    fn duplicate_keys_name_both_lines_in_small_big_and_streamed_mappings() {
        let dup = |key: &str, line, first_line| LoadError::DuplicateKey {
            key: key.into(),
            line,
            first_line,
        };
        assert_eq!(read("a: 1\nb: 2\na: 3\n").unwrap_err(), dup("a", 3, 1));
        let mut big = String::from("env:\n");
        for i in 0..40 {
            big.push_str(&format!("  k{i}: v\n"));
        }
        big.push_str("  k7: again\n");
        assert_eq!(read(&big).unwrap_err(), dup("k7", 42, 9));
        let jobs = "jobs:\n  a: {run: x}\n  b: {run: y}\n  a: {run: z}\n";
        assert_eq!(read(jobs).unwrap_err(), dup("a", 4, 2));
        // The duplicate is found when its value is complete, as the previous loader did: an
        // error inside that value comes first.
        let inner = "jobs:\n  a: {run: x}\n  a: {run: y, run: z}\n";
        assert_eq!(read(inner).unwrap_err(), dup("run", 3, 3));
    }

    #[test]
    fn anchors_aliases_tags_and_complex_keys_are_refused_with_their_place() {
        let at = |line, column| Mark { line, column };
        // The place is the node's own, after its anchor or tag (as the parser marks it).
        let cases = [
            ("a: &x 1\nb: *x\n", LoadError::UnexpectedAnchor(at(1, 7))),
            ("a: &x {b: 1}\n", LoadError::UnexpectedAnchor(at(1, 7))),
            ("a: !tag 1\n", LoadError::UnexpectedTag(at(1, 9))),
            ("a: !tag [1]\n", LoadError::UnexpectedTag(at(1, 9))),
            ("? [a]\n: 1\n", LoadError::MappingKeyMustBeScalar(at(1, 3))),
            ("- a\n", LoadError::TopLevelMustBeMapping(at(1, 1))),
            ("just text\n", LoadError::TopLevelMustBeMapping(at(1, 1))),
        ];
        for (text, want) in cases {
            assert_eq!(read(text).unwrap_err(), want, "{text:?}");
        }
    }

    #[test]
    fn a_syntax_error_wins_over_an_earlier_duplicate() {
        let text = "a: 1\na: 2\nb: [unclosed\n";
        match read(text).unwrap_err() {
            LoadError::Syntax(mark, message) => {
                assert!(mark.line >= 3, "{mark:?} {message}");
            }
            other => panic!("{other:?}"),
        }
    }
}
