//! Reading `lwr.yml`: YAML → jobs as written (with their lines) → matrix expansion → the
//! checks shared with `Graph::validate`.
//!
//! The YAML is walked by hand (not through serde) so that every error can name the line, the
//! job and the field, and so that unknown keys are errors rather than silently ignored.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::yaml::{self, LoadError, Mapping, Node, Scalar};

use super::validate::{
    JobLines, MAX_CHECKOUT_DEPTH, MAX_JOBS, MAX_NEEDS, TOP_KEYS, check, did_you_mean,
    env_name_message, is_env_name, show,
};
use super::{
    ArtifactDecl, Checkout, DEFAULT_RETRIES, DEFAULT_TIMEOUT_SECS, Env, Graph, GraphError, JobSpec,
    Requires, When,
};
use crate::buildbot::BuildbotJob;
use crate::graph::normalize_name;
use crate::node::Requirements;
use crate::pool::Prefer;

/// Most combinations one job's matrix may expand to.
const MAX_MATRIX: usize = 1000;
/// Deepest structural indentation accepted. The YAML parser recurses once per nesting level,
/// and nesting needs indentation, so this bounds its stack use; real files never come close.
const MAX_INDENT: usize = 400;
/// Stack for parsing: the deepest nesting allowed (~400 block + 255 flow levels) takes under
/// 2 MiB in a debug build; the rest is margin, and costs nothing until touched.
const PARSE_STACK_BYTES: usize = 16 << 20;

/// Largest lwr.yml accepted: room for a graph of 100,000 jobs (`MAX_JOBS`) with real commands,
/// requirements and environments (~30 MiB); the API's JSON body limit matches it
/// (`lwr-server` `MAX_JSON_BODY`: the same graph as JSON is about twice the YAML).
pub const MAX_FILE_BYTES: usize = 48 << 20;

const DURATION_HELP: &str = "use e.g. 90s, 30m, 1h, 2h30m or 1d; a bare number means seconds";

/// Parses an `lwr.yml`: reads it, expands matrices, normalizes names, resolves `needs` and
/// checks the result. `file` only names the file in errors (e.g. `lwr.yml`).
pub fn parse(text: &str, file: &str) -> Result<Graph, GraphError> {
    // Checked before any parsing, so a huge file costs nothing but this comparison.
    check_size(text.len(), file)?;
    on_parse_stack(file, || parse_here(text, file))
}

/// [`parse`] of a file read as it streams (`git show`'s output, say), so that its text is
/// never whole in memory: `open` gives its characters from the start each time it is called,
/// once, and once more when the checks refuse the graph (the file is read again for the
/// lines of its fields). `size`, the file's length in bytes when known before reading, is
/// checked against the limit first. The limits and errors are those of [`parse`] (what the
/// stream does not deliver, an I/O error say, is the caller's to report).
pub fn parse_stream<I, O>(size: Option<usize>, open: O, file: &str) -> Result<Graph, GraphError>
where
    I: Iterator<Item = char>,
    O: FnMut() -> I + Send,
{
    if let Some(size) = size {
        check_size(size, file)?;
    }
    on_parse_stack(file, move || parse_stream_here(open, file))
}

fn check_size(bytes: usize, file: &str) -> Result<(), GraphError> {
    if bytes > MAX_FILE_BYTES {
        return Err(GraphError::FileTooLarge {
            file: file.into(),
            bytes,
            limit: MAX_FILE_BYTES,
        });
    }
    Ok(())
}

/// Runs `parse` (a parse of `file`).
fn on_parse_stack(
    file: &str,
    parse: impl FnOnce() -> Result<Graph, GraphError> + Send,
) -> Result<Graph, GraphError> {
    // The YAML parser recurses once per nesting level, with big frames in debug builds. Run it
    // on a stack sized for the deepest nesting `check_indentation` lets through, so that the
    // caller's stack (a 2 MiB tokio worker, say) does not matter; a panic in the YAML crate
    // (it has `unreachable!()`s) comes back as an error.
    let failed = || GraphError::Yaml {
        file: file.into(),
        line: None,
        column: None,
        message: "the YAML parser failed on this input".into(),
    };
    // Taken by whichever of the two ways below runs it.
    let mut parse = Some(parse);
    let mut run = || parse.take().map_or_else(|| Err(failed()), |parse| parse());
    let thread = std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("lwr-graph-parse".into())
            .stack_size(PARSE_STACK_BYTES)
            .spawn_scoped(scope, &mut run)
            .map(|thread| thread.join().unwrap_or_else(|_| Err(failed())))
            .ok()
    });
    match thread {
        Some(result) => result,
        // No thread to be had: parse here, which the indentation limit keeps within a usual
        // stack.
        None => std::panic::catch_unwind(std::panic::AssertUnwindSafe(run))
            .unwrap_or_else(|_| Err(failed())),
    }
}

fn parse_here(text: &str, file: &str) -> Result<Graph, GraphError> {
    check_indentation(text, file)?;
    // The lines of each job's fields serve only the messages of the checks after reading, and
    // for 100,000 jobs they would take some 25 MB: the first reading keeps none, and a file
    // the checks refuse is read again with them (reading is deterministic: the same error).
    let jobs = read(text.chars(), file, false)?;
    let checked = expand(file, jobs).and_then(|(graph, lines)| {
        check(&graph, file, &lines)?;
        Ok(graph)
    });
    if checked.is_ok() {
        return checked;
    }
    drop(checked);
    let (graph, lines) = expand(file, read(text.chars(), file, true)?)?;
    check(&graph, file, &lines)?;
    Ok(graph)
}

/// [`parse_here`] of a stream: the size and indentation limits are checked line by line as
/// the parser reads, and come first as they do for a whole text.
fn parse_stream_here<I: Iterator<Item = char>>(
    mut open: impl FnMut() -> I,
    file: &str,
) -> Result<Graph, GraphError> {
    let mut input = CheckedLines::new(open(), file);
    let jobs = read(&mut input, file, false);
    input.finish()?;
    let checked = expand(file, jobs?).and_then(|(graph, lines)| {
        check(&graph, file, &lines)?;
        Ok(graph)
    });
    if checked.is_ok() {
        return checked;
    }
    drop(checked);
    let mut input = CheckedLines::new(open(), file);
    let jobs = read(&mut input, file, true);
    input.finish()?;
    let (graph, lines) = expand(file, jobs?)?;
    check(&graph, file, &lines)?;
    Ok(graph)
}

/// The characters of a streamed file, a line at a time, each line checked against the
/// indentation limit and the running size against the file-size limit before the parser
/// sees it: the first line that breaks one ends the input, and its error is kept.
struct CheckedLines<'f, I> {
    chars: I,
    file: &'f str,
    /// The line being handed out, with its `\n`, and how much of it was.
    line: String,
    at: usize,
    /// Lines read so far.
    number: usize,
    bytes: usize,
    error: Option<GraphError>,
}

impl<'f, I: Iterator<Item = char>> CheckedLines<'f, I> {
    fn new(chars: I, file: &'f str) -> Self {
        CheckedLines {
            chars,
            file,
            line: String::new(),
            at: 0,
            number: 0,
            bytes: 0,
            error: None,
        }
    }

    /// Reads the next line; false at the end of the input or after an error.
    fn next_line(&mut self) -> bool {
        if self.error.is_some() {
            return false;
        }
        self.line.clear();
        self.at = 0;
        for c in self.chars.by_ref() {
            self.line.push(c);
            if c == '\n' {
                break;
            }
        }
        if self.line.is_empty() {
            return false;
        }
        self.number += 1;
        self.bytes += self.line.len();
        if self.bytes > MAX_FILE_BYTES {
            // The size it has, as for a whole text: the rest is counted, not kept.
            let rest: usize = self.chars.by_ref().map(char::len_utf8).sum();
            self.error = check_size(self.bytes + rest, self.file).err();
            return false;
        }
        let text = self.line.strip_suffix('\n').unwrap_or(&self.line);
        self.error = check_line_indentation(text, self.number, self.file).err();
        self.error.is_none()
    }

    /// Reads the rest of the input (after the parser stopped, at its end or at an error of
    /// its own): the error of a line too deep or of a file too big wins, as it would have
    /// been found before parsing a whole text.
    fn finish(mut self) -> Result<(), GraphError> {
        while self.next_line() {}
        self.error.map_or(Ok(()), Err)
    }
}

impl<I: Iterator<Item = char>> Iterator for CheckedLines<'_, I> {
    type Item = char;

    fn next(&mut self) -> Option<char> {
        if self.at == self.line.len() && !self.next_line() {
            return None;
        }
        let c = self.line[self.at..].chars().next()?;
        self.at += c.len_utf8();
        Some(c)
    }
}

/// The jobs of `text`, read and checked one by one, with the file's default checkout applied;
/// with the lines of their fields when `keep_lines`.
fn read(
    text: impl Iterator<Item = char>,
    file: &str,
    keep_lines: bool,
) -> Result<RawJobs, GraphError> {
    // Each job is read as soon as the loader has its tree, which is then dropped: the tree of
    // the whole file would be several times the size of the jobs read from it.
    let mut reader = JobReader::new(file, keep_lines);
    let root =
        yaml::load(text, |key, value| reader.entry(key, value)).map_err(|e| load_error(file, e))?;
    let cx = Cx { file, job: None };
    let Some(top) = root.as_mapping() else {
        let expected = "a mapping with 'version' and 'jobs'";
        return Err(cx.wrong_type(root.line(), None, expected, &root));
    };
    // Version first: a file for a later format should say so, not trip on its new keys.
    check_version(&cx, top)?;
    for key in top.keys() {
        if !TOP_KEYS.contains(&key.as_str()) {
            return Err(cx.unknown_key(key, None));
        }
    }
    let default_checkout = match top.get_key_value("checkout") {
        Some((key, value)) => Some((read_checkout(&cx, key_line(key), value)?, key_line(key))),
        None => None,
    };
    let mut jobs = read_jobs(&cx, top, reader)?;
    // A job's own `checkout:` replaces the file's default as a whole.
    if let Some((checkout, line)) = default_checkout {
        for i in 0..jobs.specs.len() {
            if !jobs.own_checkout(i) {
                jobs.specs[i].checkout = checkout.clone();
                if let Some(lines) = jobs.lines.get_mut(i) {
                    lines.checkout = line;
                }
            }
        }
    }
    Ok(jobs)
}

/// Seconds in a duration: `90s`, `30m`, `1h`, `2h30m`, `1d`, or a bare number of seconds.
/// Empty, zero, negative, unknown units and overflow are errors saying what is accepted.
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let bad = |why: String| format!("bad duration '{}'{why} ({DURATION_HELP})", show(s));
    let text = s.trim();
    if text.is_empty() {
        return Err(format!("empty duration ({DURATION_HELP})"));
    }
    if text.starts_with('-') {
        return Err(bad(": must not be negative".into()));
    }
    let too_long = || bad(": too long".into());
    let total = if text.bytes().all(|b| b.is_ascii_digit()) {
        text.parse::<u64>().map_err(|_| too_long())?
    } else {
        let mut total = 0u64;
        let mut rest = text;
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return Err(bad(String::new()));
            }
            let (number, tail) = rest.split_at(digits);
            let unit = match tail.chars().next() {
                Some('s') => 1,
                Some('m') => 60,
                Some('h') => 3600,
                Some('d') => 86_400,
                Some(other) => {
                    return Err(bad(format!(
                        ": unknown unit '{}'",
                        show(&other.to_string())
                    )));
                }
                None => return Err(bad(format!(": '{number}' has no unit"))),
            };
            let number: u64 = number.parse().map_err(|_| too_long())?;
            let seconds = number.checked_mul(unit).ok_or_else(too_long)?;
            total = total.checked_add(seconds).ok_or_else(too_long)?;
            rest = &tail[1..]; // every unit is one ASCII byte
        }
        total
    };
    if total == 0 {
        return Err(bad(": must be more than zero".into()));
    }
    Ok(total)
}

/// A job as the file declares it, before matrix expansion: its spec and lines as read (the
/// spec and lines of the job itself when it has no matrix).
struct RawJob {
    spec: JobSpec,
    lines: JobLines,
    /// The name as written (shown in errors).
    written: String,
    matrix: Matrix,
}

/// A job's matrix: keys in file order, each with its values in list order.
type Matrix = Vec<(String, Vec<String>)>;

/// The jobs of a file, before matrix expansion, as parallel lists: a file without matrices
/// becomes its graph (and lines) as they are, without a copy.
#[derive(Default)]
struct RawJobs {
    specs: Vec<JobSpec>,
    /// Empty unless lines are kept.
    lines: Vec<JobLines>,
    /// By job, in job order: only the jobs that have one (few do, and 100,000 of them
    /// would be 5.6 MB at the peak of a big file's reading).
    extra: Vec<(usize, Extra)>,
}

/// What a job's spec does not say, when it says something.
struct Extra {
    /// The name as written (shown in errors), when it is not the spec's name.
    written: Option<String>,
    matrix: Matrix,
    /// Whether the job has a `checkout:` of its own.
    own_checkout: bool,
}

impl RawJobs {
    fn push(&mut self, job: RawJob, keep_lines: bool) {
        let extra = Extra {
            written: (job.written != job.spec.name).then_some(job.written),
            matrix: job.matrix,
            own_checkout: job.lines.checkout.is_some(),
        };
        if extra.written.is_some() || !extra.matrix.is_empty() || extra.own_checkout {
            self.extra.push((self.specs.len(), extra));
        }
        self.specs.push(job.spec);
        if keep_lines {
            self.lines.push(job.lines);
        }
    }

    fn extra(&self, i: usize) -> Option<&Extra> {
        let at = self.extra.binary_search_by_key(&i, |(j, _)| *j).ok()?;
        Some(&self.extra[at].1)
    }

    fn written(&self, i: usize) -> &str {
        self.extra(i)
            .and_then(|e| e.written.as_deref())
            .unwrap_or(&self.specs[i].name)
    }

    fn matrix(&self, i: usize) -> &[(String, Vec<String>)] {
        self.extra(i).map_or(&[], |e| &e.matrix)
    }

    fn own_checkout(&self, i: usize) -> bool {
        self.extra(i).is_some_and(|e| e.own_checkout)
    }

    fn line(&self, i: usize) -> Option<usize> {
        self.lines.get(i).and_then(|l| l.job)
    }
}

/// Error context: the file, and the job being read (as written) if any.
struct Cx<'a> {
    file: &'a str,
    job: Option<String>,
}

impl Cx<'_> {
    fn wrong_type(
        &self,
        line: Option<usize>,
        field: Option<&str>,
        expected: &str,
        found: &Node,
    ) -> GraphError {
        GraphError::InvalidValue {
            file: self.file.into(),
            line,
            job: self.job.clone(),
            field: field.map(show),
            message: format!("expected {expected}, found {}", describe(found)),
        }
    }

    fn invalid(&self, line: Option<usize>, field: &str, message: String) -> GraphError {
        GraphError::InvalidValue {
            file: self.file.into(),
            line,
            job: self.job.clone(),
            field: Some(show(field)),
            message,
        }
    }

    fn missing(&self, line: Option<usize>, field: &str) -> GraphError {
        GraphError::MissingField {
            file: self.file.into(),
            line,
            job: self.job.clone(),
            field: field.into(),
        }
    }

    /// The allowed keys are implied by where the key is (see `GraphError::UnknownKey`).
    fn unknown_key(&self, key: &Scalar, field: Option<&str>) -> GraphError {
        GraphError::UnknownKey {
            file: self.file.into(),
            line: key_line(key),
            job: self.job.clone(),
            field: field.map(show),
            key: show(key.as_str()),
        }
    }

    /// A non-null scalar's text, or an `InvalidValue` error.
    fn scalar<'n>(
        &self,
        line: Option<usize>,
        field: &str,
        node: &'n Node,
    ) -> Result<&'n str, GraphError> {
        match node {
            Node::Scalar(s) if !is_null(s) => Ok(s.as_str()),
            _ => Err(self.wrong_type(line, Some(field), "a string, number or boolean", node)),
        }
    }

    /// One string or a list of strings (null: none), each with its line.
    fn string_list(
        &self,
        line: Option<usize>,
        field: &str,
        node: &Node,
    ) -> Result<Vec<(String, Option<usize>)>, GraphError> {
        match node {
            Node::Scalar(s) if is_null(s) => Ok(Vec::new()),
            Node::Scalar(s) => Ok(vec![(s.as_str().to_string(), line_of(node).or(line))]),
            Node::Sequence(items) => items
                .iter()
                .map(|item| {
                    let item_line = line_of(item).or(line);
                    Ok((self.scalar(item_line, field, item)?.to_string(), item_line))
                })
                .collect(),
            Node::Mapping(_) => {
                Err(self.wrong_type(line, Some(field), "a string or a list of strings", node))
            }
        }
    }

    /// A mapping, or `None` for null; anything else is an `InvalidValue` error.
    fn mapping<'n>(
        &self,
        line: Option<usize>,
        field: &str,
        node: &'n Node,
        expected: &str,
    ) -> Result<Option<&'n Mapping>, GraphError> {
        match node {
            Node::Mapping(map) => Ok(Some(map)),
            Node::Scalar(s) if is_null(s) => Ok(None),
            _ => Err(self.wrong_type(line, Some(field), expected, node)),
        }
    }
}

fn load_error(file: &str, error: LoadError) -> GraphError {
    let yaml = |mark: yaml::Mark, message: &str| GraphError::Yaml {
        file: file.into(),
        line: Some(mark.line),
        column: Some(mark.column),
        message: message.into(),
    };
    match error {
        LoadError::TopLevelMustBeMapping(m) => {
            yaml(m, "the file must be a mapping with 'version' and 'jobs'")
        }
        LoadError::UnexpectedAnchor(m) => {
            yaml(m, "anchors and aliases (&name, *name) are not supported")
        }
        LoadError::MappingKeyMustBeScalar(m) => yaml(m, "mapping keys must be plain strings"),
        LoadError::UnexpectedTag(m) => yaml(m, "YAML tags (!tag) are not supported"),
        LoadError::Syntax(m, message) => yaml(m, &show(&message)),
        LoadError::DuplicateKey {
            key,
            line,
            first_line,
        } => GraphError::DuplicateKey {
            file: file.into(),
            line: Some(line),
            key: show(&key),
            first_line: Some(first_line),
        },
        LoadError::Unfinished => GraphError::Yaml {
            file: file.into(),
            line: None,
            column: None,
            message: "the YAML parser failed on this input".into(),
        },
    }
}

/// Rejects nesting deep enough to exhaust the YAML parser's stack. Block nesting needs
/// indentation (spaces, or `- `, `? `, `: ` indicators) and flow nesting is capped at 255 by
/// the parser, so bounding this prefix bounds the depth.
fn check_indentation(text: &str, file: &str) -> Result<(), GraphError> {
    for (number, line) in text.split('\n').enumerate() {
        check_line_indentation(line, number + 1, file)?;
    }
    Ok(())
}

/// [`check_indentation`] of line `number` (from 1), without its `\n`.
fn check_line_indentation(line: &str, number: usize, file: &str) -> Result<(), GraphError> {
    // A lone `\r` also ends a line for YAML.
    for part in line.split('\r') {
        let prefix = structural_prefix(part);
        if prefix > MAX_INDENT {
            return Err(GraphError::Yaml {
                file: file.into(),
                line: Some(number),
                column: Some(prefix + 1),
                message: format!("nested deeper than {MAX_INDENT} columns of indentation"),
            });
        }
    }
    Ok(())
}

/// Length of a line's leading whitespace and block indicators; 0 for a blank line.
fn structural_prefix(line: &str) -> usize {
    let bytes = line.as_bytes();
    let mut i = 0;
    let mut indicators = false;
    loop {
        while i < bytes.len() && matches!(bytes[i], b' ' | b'\t') {
            i += 1;
        }
        let indicator = i < bytes.len() && matches!(bytes[i], b'-' | b'?' | b':');
        if indicator && bytes.get(i + 1).is_none_or(|b| matches!(b, b' ' | b'\t')) {
            indicators = true;
            i += 1;
        } else {
            break;
        }
    }
    if i == bytes.len() && !indicators {
        0
    } else {
        i
    }
}

/// A top-level key that misspells `field` (`verison:`), reported as the unknown key it is
/// rather than as `field` missing.
fn misspelled(cx: &Cx, top: &Mapping, field: &str) -> Option<GraphError> {
    top.keys()
        .filter(|k| !TOP_KEYS.contains(&k.as_str()))
        .find(|k| crate::words::closest(k.as_str(), [field]).is_some())
        .map(|k| cx.unknown_key(k, None))
}

fn check_version(cx: &Cx, top: &Mapping) -> Result<(), GraphError> {
    let Some((key, node)) = top.get_key_value("version") else {
        return Err(misspelled(cx, top, "version").unwrap_or_else(|| cx.missing(None, "version")));
    };
    let line = key_line(key);
    match node {
        Node::Scalar(s) if s.as_str().trim() == "1" => Ok(()),
        Node::Scalar(s) if is_null(s) => Err(cx.missing(line, "version")),
        Node::Scalar(s) => Err(GraphError::UnsupportedVersion {
            file: cx.file.into(),
            line,
            found: show(s.as_str()),
        }),
        _ => Err(cx.wrong_type(line, Some("version"), "the number 1", node)),
    }
}

fn read_jobs(cx: &Cx, top: &Mapping, reader: JobReader) -> Result<RawJobs, GraphError> {
    let Some((key, node)) = top.get_key_value("jobs") else {
        return Err(misspelled(cx, top, "jobs").unwrap_or_else(|| cx.missing(None, "jobs")));
    };
    let line = key_line(key);
    let Some(map) = cx.mapping(line, "jobs", node, "a mapping of job name to job")? else {
        return Err(cx.missing(line, "jobs"));
    };
    // A mapping under the top-level `jobs` is the one whose entries went to `reader`.
    debug_assert!(map.streamed());
    if reader.count == 0 {
        return Err(cx.invalid(line, "jobs", "has no jobs; declare at least one".into()));
    }
    if reader.count > MAX_JOBS {
        let (what, limit) = ("jobs".to_string(), MAX_JOBS);
        return Err(GraphError::GraphTooLarge {
            file: cx.file.into(),
            line,
            what,
            limit,
        });
    }
    match reader.error {
        Some(e) => Err(e),
        None => Ok(reader.jobs),
    }
}

/// Reads the entries of the top-level `jobs:` mapping as the YAML loader hands them over, in
/// file order. Errors wait for the rest of the file to load (a YAML error, a bad version or a
/// misplaced key anywhere is reported first, as when the whole tree was read first).
struct JobReader<'f> {
    file: &'f str,
    keep_lines: bool,
    /// Entries handed over, read or not.
    count: usize,
    /// The hash of a normalized name → the first job with a name of that hash: the names
    /// are the specs' own, not copies that would outlive the reading among the graph's
    /// strings (100,000 of them, with their table, ~7 MB).
    taken: HashMap<u64, usize>,
    hasher: std::hash::RandomState,
    jobs: RawJobs,
    /// The first error; entries after it (or past `MAX_JOBS`) are counted, not read.
    error: Option<GraphError>,
}

impl<'f> JobReader<'f> {
    fn new(file: &'f str, keep_lines: bool) -> JobReader<'f> {
        JobReader {
            file,
            keep_lines,
            count: 0,
            taken: HashMap::new(),
            hasher: std::hash::RandomState::new(),
            jobs: RawJobs::default(),
            error: None,
        }
    }

    fn entry(&mut self, key: Scalar, value: Node) {
        self.count += 1;
        if self.error.is_some() || self.count > MAX_JOBS {
            return;
        }
        if let Err(e) = self.read(&key, &value) {
            self.error = Some(e);
        }
    }

    fn read(&mut self, key: &Scalar, value: &Node) -> Result<(), GraphError> {
        let (written, line) = (key.as_str(), key_line(key));
        let name = normalize_name(written);
        if name.is_empty() {
            return Err(GraphError::EmptyName {
                file: self.file.into(),
                line,
                name: show(written),
            });
        }
        // A polled push adds its own decision job to the graph: a job of that name would
        // pass here and fail every polled push, so it is refused where it is written.
        if name == crate::push::DECISION_JOB {
            let message = "the name is taken by the decision job every polled push gets; \
                 rename the job (e.g. decide)"
                .to_string();
            return Err(GraphError::InvalidValue {
                file: self.file.into(),
                line,
                job: Some(show(written)),
                field: Some("name".into()),
                message,
            });
        }
        let hash = std::hash::BuildHasher::hash_one(&self.hasher, &name);
        let specs = &self.jobs.specs;
        let taken = match self.taken.get(&hash) {
            Some(&first) if specs[first].name == name => Some(first),
            // Another name of the same hash (as good as never): look for it in full.
            Some(_) => specs.iter().position(|s| s.name == name),
            None => None,
        };
        if let Some(first) = taken {
            return Err(GraphError::DuplicateName {
                file: self.file.into(),
                line,
                first: self.jobs.written(first).to_string(),
                second: show(written),
                normalized: show(&name),
            });
        }
        let job_cx = Cx {
            file: self.file,
            job: Some(show(written)),
        };
        let job = read_job(&job_cx, written, name, line, value)?;
        self.taken.entry(hash).or_insert(self.jobs.specs.len());
        self.jobs.push(job, self.keep_lines);
        Ok(())
    }
}

fn read_job(
    cx: &Cx,
    written: &str,
    name: String,
    line: Option<usize>,
    node: &Node,
) -> Result<RawJob, GraphError> {
    let expected = "a mapping of job fields (run, needs, ...)";
    let map = match node {
        Node::Mapping(map) => map,
        Node::Scalar(s) if is_null(s) => return Err(cx.missing(line, "run")),
        _ => return Err(cx.wrong_type(line, None, expected, node)),
    };
    let mut job = RawJob {
        spec: JobSpec {
            name,
            title: None,
            run: String::new(),
            needs: Vec::new(),
            node: Requirements::default(),
            artifacts: Vec::new(),
            retries: DEFAULT_RETRIES,
            timeout_secs: DEFAULT_TIMEOUT_SECS,
            expires_secs: None,
            env: Env::new(),
            requires: Requires::default(),
            when: None,
            prefer: Vec::new(),
            affinity_wait_secs: None,
            keep_workdir: false,
            timestamps: false,
            checkout: Checkout::default(),
            buildbot: None,
        },
        lines: JobLines {
            job: line,
            ..JobLines::default()
        },
        written: show(written),
        matrix: Vec::new(),
    };
    for (key, value) in map.iter() {
        read_field(cx, &mut job, key, value)?;
    }
    match (job.lines.run, job.lines.buildbot) {
        (None, None) => return Err(cx.missing(line, "run")),
        (Some(_), Some(buildbot_line)) => {
            let message = "a job has either run (a shell command) or buildbot (a build on \
                           Buildbot), not both"
                .to_string();
            return Err(cx.invalid(Some(buildbot_line), "buildbot", message));
        }
        _ => {}
    }
    check_matrix_refs(cx, &job)?;
    Ok(job)
}

/// Reads one `key: value` of a job into `job`.
fn read_field(cx: &Cx, job: &mut RawJob, key: &Scalar, value: &Node) -> Result<(), GraphError> {
    let line = key_line(key);
    match key.as_str() {
        "run" => {
            job.spec.run = match value {
                // `run:` with nothing: empty, reported by the shared checks.
                Node::Scalar(s) if is_null(s) => String::new(),
                Node::Scalar(s) => s.as_str().to_string(),
                _ => {
                    return Err(cx.wrong_type(
                        line,
                        Some("run"),
                        "a shell command (a string)",
                        value,
                    ));
                }
            };
            job.lines.run = line;
        }
        "title" => job.spec.title = Some(cx.scalar(line, "title", value)?.to_string()),
        "needs" => {
            let needs = cx.string_list(line, "needs", value)?;
            job.spec.needs = needs.iter().map(|(n, _)| normalize_name(n)).collect();
            job.lines.needs = needs.into_iter().map(|(n, l)| (l, show(&n))).collect();
        }
        "node" => job.spec.node = read_node(cx, line, value)?,
        "artifacts" => {
            (job.spec.artifacts, job.lines.artifacts) =
                read_artifacts(cx, line, value)?.into_iter().unzip()
        }
        "retries" => job.spec.retries = read_retries(cx, line, value)?,
        "timeout" => {
            let text = cx.scalar(line, "timeout", value)?;
            job.spec.timeout_secs =
                parse_duration(text).map_err(|e| cx.invalid(line, "timeout", e))?;
            job.lines.timeout = line;
        }
        "expires" => {
            let text = cx.scalar(line, "expires", value)?;
            let secs = parse_duration(text).map_err(|e| cx.invalid(line, "expires", e))?;
            job.spec.expires_secs = Some(secs);
            job.lines.expires = line;
        }
        "env" => job.spec.env = read_env(cx, line, value)?,
        "matrix" => job.matrix = read_matrix(cx, line, value)?,
        "requires" => {
            job.spec.requires = match cx.scalar(line, "requires", value)?.trim() {
                "all-succeeded" => Requires::AllSucceeded,
                "all-finished" => Requires::AllFinished,
                other => {
                    let message = format!(
                        "'{}' is not a requirement{}; use all-succeeded (the default) or all-finished",
                        show(other),
                        did_you_mean(other, ["all-succeeded", "all-finished"])
                    );
                    return Err(cx.invalid(line, "requires", message));
                }
            }
        }
        "when" => {
            job.spec.when = Some(read_when(cx, line, value)?);
            job.lines.when = line;
        }
        "prefer" => {
            job.spec.prefer = read_prefer(cx, line, value)?;
            job.lines.prefer = line;
        }
        "affinity_wait" => {
            let text = cx.scalar(line, "affinity_wait", value)?.trim();
            // 0 is a useful answer here (never wait), unlike for timeouts.
            let secs = if text == "0" {
                0
            } else {
                parse_duration(text).map_err(|e| cx.invalid(line, "affinity_wait", e))?
            };
            job.spec.affinity_wait_secs = Some(secs);
            job.lines.affinity_wait = line;
        }
        "keep_workdir" => job.spec.keep_workdir = read_bool(cx, line, "keep_workdir", value)?,
        "timestamps" => job.spec.timestamps = read_bool(cx, line, "timestamps", value)?,
        "checkout" => {
            job.spec.checkout = read_checkout(cx, line, value)?;
            job.lines.checkout = line;
        }
        "buildbot" => {
            job.spec.buildbot = Some(read_buildbot(cx, line, value)?);
            job.lines.buildbot = line;
        }
        _ => return Err(cx.unknown_key(key, None)),
    }
    Ok(())
}

/// `checkout: false`, `checkout: true` or `checkout: {depth, submodules, lfs, path}` (a
/// mapping means checked out, with those variants).
fn read_checkout(cx: &Cx, line: Option<usize>, node: &Node) -> Result<Checkout, GraphError> {
    let expected = "true, false or a mapping like {depth: 1, submodules: true, path: src}";
    let map = match node {
        Node::Mapping(map) => map,
        Node::Scalar(s) if is_null(s) => return Ok(Checkout::default()),
        Node::Scalar(_) => {
            return match read_bool(cx, line, "checkout", node) {
                Ok(true) => Ok(Checkout::default()),
                Ok(false) => Ok(Checkout::off()),
                Err(_) => Err(cx.wrong_type(line, Some("checkout"), expected, node)),
            };
        }
        Node::Sequence(_) => return Err(cx.wrong_type(line, Some("checkout"), expected, node)),
    };
    let mut checkout = Checkout::default();
    for (key, value) in map.iter() {
        let key_line = key_line(key).or(line);
        match key.as_str() {
            "depth" => {
                let text = cx.scalar(key_line, "checkout.depth", value)?.trim();
                let depth = text
                    .parse::<u32>()
                    .ok()
                    .filter(|d| (1..=MAX_CHECKOUT_DEPTH).contains(d))
                    .ok_or_else(|| {
                        let message = format!(
                            "'{}' is not a depth; use a whole number from 1 to \
                             {MAX_CHECKOUT_DEPTH}, or leave it out for all history",
                            show(text)
                        );
                        cx.invalid(key_line, "checkout.depth", message)
                    })?;
                checkout.depth = Some(depth);
            }
            "submodules" => {
                checkout.submodules = read_bool(cx, key_line, "checkout.submodules", value)?
            }
            "lfs" => checkout.lfs = read_bool(cx, key_line, "checkout.lfs", value)?,
            "path" => {
                let path = cx.scalar(key_line, "checkout.path", value)?;
                if let Some(problem) = super::checkout_path_problem(path) {
                    return Err(cx.invalid(key_line, "checkout.path", problem));
                }
                checkout.path = Some(path.trim_end_matches('/').to_string());
            }
            _ => return Err(cx.unknown_key(key, Some("checkout"))),
        }
    }
    Ok(checkout)
}

/// `buildbot: {builder: NAME, properties: {KEY: VALUE}}`.
fn read_buildbot(cx: &Cx, line: Option<usize>, node: &Node) -> Result<BuildbotJob, GraphError> {
    let expected = "a mapping like {builder: linux64-test, properties: {key: value}}";
    let Some(map) = cx.mapping(line, "buildbot", node, expected)? else {
        return Err(cx.missing(line, "buildbot.builder"));
    };
    let mut builder = None;
    let mut properties = BTreeMap::new();
    for (key, value) in map.iter() {
        let at = key_line(key).or(line);
        match key.as_str() {
            "builder" => builder = Some(cx.scalar(at, "buildbot.builder", value)?.to_string()),
            "properties" => {
                let expected = "a mapping of property name to value";
                let Some(props) = cx.mapping(at, "buildbot.properties", value, expected)? else {
                    continue;
                };
                for (k, v) in props.iter() {
                    let field = format!("buildbot.properties.{}", k.as_str());
                    let v = cx.scalar(key_line(k).or(at), &field, v)?;
                    properties.insert(k.as_str().to_string(), v.to_string());
                }
            }
            _ => return Err(cx.unknown_key(key, Some("buildbot"))),
        }
    }
    let builder = builder.ok_or_else(|| cx.missing(line, "buildbot.builder"))?;
    Ok(BuildbotJob {
        builder,
        properties,
    })
}

/// `prefer: [affinity, fastest]`: known names, each once.
fn read_prefer(cx: &Cx, line: Option<usize>, node: &Node) -> Result<Vec<Prefer>, GraphError> {
    let mut out = Vec::new();
    for (name, item_line) in cx.string_list(line, "prefer", node)? {
        let Some(p) = Prefer::parse(name.trim()) else {
            let message = format!(
                "'{}' is not a preference{}; use affinity, fastest or reserved",
                show(&name),
                did_you_mean(name.trim(), ["affinity", "fastest", "reserved"])
            );
            return Err(cx.invalid(item_line, "prefer", message));
        };
        if out.contains(&p) {
            let message = format!("'{}' is listed twice", p.as_str());
            return Err(cx.invalid(item_line, "prefer", message));
        }
        out.push(p);
    }
    Ok(out)
}

/// `when: {changed: [patterns]}`.
fn read_when(cx: &Cx, line: Option<usize>, node: &Node) -> Result<When, GraphError> {
    let expected = "a mapping like {changed: [\"docs/**\"]}";
    let Some(map) = cx.mapping(line, "when", node, expected)? else {
        return Err(cx.invalid(line, "when", format!("is empty; expected {expected}")));
    };
    let mut when = When::default();
    for (key, value) in map.iter() {
        let key_line = key_line(key);
        match key.as_str() {
            "changed" => {
                when.changed = cx
                    .string_list(key_line, "when.changed", value)?
                    .into_iter()
                    .map(|p| p.0)
                    .collect();
                if when.changed.is_empty() || when.changed.iter().any(|p| p.trim().is_empty()) {
                    let message = "needs at least one non-empty path pattern".to_string();
                    return Err(cx.invalid(key_line, "when.changed", message));
                }
            }
            other => {
                let message = format!(
                    "unknown key '{}'{} (expected changed)",
                    show(other),
                    did_you_mean(other, ["changed"])
                );
                return Err(cx.invalid(key_line, "when", message));
            }
        }
    }
    if when.changed.is_empty() {
        return Err(cx.missing(line, "when.changed"));
    }
    Ok(when)
}

/// `node:`: os, arch, hostname and tags are fields of `Requirements`; any other key is a
/// property matched against the node's tags.
fn read_node(cx: &Cx, line: Option<usize>, node: &Node) -> Result<Requirements, GraphError> {
    let mut req = Requirements::default();
    let Some(map) = cx.mapping(line, "node", node, "a mapping of required node properties")? else {
        return Ok(req);
    };
    for (key, value) in map.iter() {
        let (k, line) = (key.as_str(), key_line(key));
        let field = format!("node.{k}");
        match k {
            "tags" => {
                req.tags = cx
                    .string_list(line, &field, value)?
                    .into_iter()
                    .map(|t| t.0)
                    .collect()
            }
            "os" => req.os = Some(cx.scalar(line, &field, value)?.to_string()),
            "arch" => req.arch = Some(cx.scalar(line, &field, value)?.to_string()),
            "hostname" => req.hostname = Some(cx.scalar(line, &field, value)?.to_string()),
            _ => {
                let v = cx.scalar(line, &field, value)?.to_string();
                req.properties.insert(k.to_string(), v);
            }
        }
    }
    Ok(req)
}

fn read_artifacts(
    cx: &Cx,
    line: Option<usize>,
    node: &Node,
) -> Result<Vec<(ArtifactDecl, Option<usize>)>, GraphError> {
    let items = match node {
        Node::Sequence(items) => items,
        Node::Scalar(s) if is_null(s) => return Ok(Vec::new()),
        _ => {
            return Err(cx.wrong_type(
                line,
                Some("artifacts"),
                "a list of {name, path, kind}",
                node,
            ));
        }
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let item_line = line_of(item).or(line);
            Ok((
                read_artifact(cx, &format!("artifacts[{i}]"), item_line, item)?,
                item_line,
            ))
        })
        .collect()
}

fn read_artifact(
    cx: &Cx,
    field: &str,
    line: Option<usize>,
    node: &Node,
) -> Result<ArtifactDecl, GraphError> {
    let Node::Mapping(map) = node else {
        return Err(cx.wrong_type(line, Some(field), "a mapping {name, path, kind}", node));
    };
    let (mut name, mut path, mut kind, mut optional) = (None, None, None, false);
    for (key, value) in map.iter() {
        let (k, key_line) = (key.as_str(), key_line(key));
        let sub = format!("{field}.{k}");
        match k {
            "name" => name = Some(cx.scalar(key_line, &sub, value)?.to_string()),
            "path" => path = Some(cx.scalar(key_line, &sub, value)?.to_string()),
            "kind" => kind = Some(cx.scalar(key_line, &sub, value)?.to_string()),
            "optional" => optional = read_bool(cx, key_line, &sub, value)?,
            _ => return Err(cx.unknown_key(key, Some(field))),
        }
    }
    let name = name.ok_or_else(|| cx.missing(line, &format!("{field}.name")))?;
    let path = path.ok_or_else(|| cx.missing(line, &format!("{field}.path")))?;
    let kind = kind.unwrap_or_else(|| "other".to_string());
    Ok(ArtifactDecl {
        name,
        path,
        kind,
        optional,
    })
}

fn read_bool(cx: &Cx, line: Option<usize>, field: &str, node: &Node) -> Result<bool, GraphError> {
    match node {
        Node::Scalar(s) if matches!(s.as_str(), "true" | "True" | "TRUE") => Ok(true),
        Node::Scalar(s) if matches!(s.as_str(), "false" | "False" | "FALSE") => Ok(false),
        _ => Err(cx.wrong_type(line, Some(field), "true or false", node)),
    }
}

fn read_retries(cx: &Cx, line: Option<usize>, node: &Node) -> Result<u32, GraphError> {
    let text = cx.scalar(line, "retries", node)?.trim();
    text.parse::<u32>().map_err(|_| {
        let message = if text.starts_with('-') {
            format!("'{}' is negative; use 0 or more", show(text))
        } else if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
            format!("'{}' is too large", show(text))
        } else {
            format!("'{}' is not a whole number; use e.g. 0, 1, 2", show(text))
        };
        cx.invalid(line, "retries", message)
    })
}

fn read_env(cx: &Cx, line: Option<usize>, node: &Node) -> Result<Env, GraphError> {
    let Some(map) = cx.mapping(line, "env", node, "a mapping of variable name to value")? else {
        return Ok(Env::new());
    };
    // Names are unique (the YAML loader refuses a repeated key); `Env` sorts them.
    let mut env = Vec::with_capacity(map.len());
    for (key, value) in map.iter() {
        let (k, line) = (key.as_str(), key_line(key));
        let field = format!("env.{k}");
        if !is_env_name(k) {
            return Err(cx.invalid(line, &field, env_name_message(&show(k))));
        }
        env.push((k.to_string(), cx.scalar(line, &field, value)?.to_string()));
    }
    Ok(env.into_iter().collect())
}

fn read_matrix(
    cx: &Cx,
    line: Option<usize>,
    node: &Node,
) -> Result<Vec<(String, Vec<String>)>, GraphError> {
    let Some(map) = cx.mapping(line, "matrix", node, "a mapping of key to list of values")? else {
        return Ok(Vec::new());
    };
    let mut matrix = Vec::with_capacity(map.len());
    let mut env_names: HashMap<String, String> = HashMap::new();
    let mut combinations = 1usize;
    for (key, value) in map.iter() {
        let (k, line) = (key.as_str(), key_line(key));
        let field = format!("matrix.{k}");
        if k.trim().is_empty() {
            return Err(cx.invalid(line, "matrix", "has an empty key".into()));
        }
        // Two keys must not share one LWR_MATRIX_ variable.
        if let Some(other) = env_names.insert(matrix_env_name(k), k.to_string()) {
            let message = format!(
                "keys '{}' and '{}' both give {}",
                show(&other),
                show(k),
                matrix_env_name(k)
            );
            return Err(cx.invalid(line, "matrix", message));
        }
        let Node::Sequence(items) = value else {
            return Err(cx.wrong_type(line, Some(&field), "a list of values", value));
        };
        if items.is_empty() {
            return Err(cx.invalid(
                line,
                &field,
                "is an empty list; give at least one value".into(),
            ));
        }
        let values = items
            .iter()
            .map(|item| {
                cx.scalar(line_of(item).or(line), &field, item)
                    .map(str::to_string)
            })
            .collect::<Result<Vec<_>, _>>()?;
        combinations = combinations.saturating_mul(values.len());
        matrix.push((k.to_string(), values));
    }
    if combinations > MAX_MATRIX {
        return Err(GraphError::MatrixTooLarge {
            file: cx.file.into(),
            line,
            job: cx.job.clone().unwrap_or_default(),
            combinations,
            limit: MAX_MATRIX,
        });
    }
    Ok(matrix)
}

/// `LWR_MATRIX_` + the key uppercased, anything not alphanumeric as `_`.
fn matrix_env_name(key: &str) -> String {
    let suffix: String = key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("LWR_MATRIX_{suffix}")
}

/// Every `${matrix.KEY}` in `run` must name a key of the job's matrix.
fn check_matrix_refs(cx: &Cx, job: &RawJob) -> Result<(), GraphError> {
    let known = |key: &str| job.matrix.iter().any(|(k, _)| k == key).then_some("");
    substitute(&job.spec.run, known).map(|_| ()).map_err(|key| {
        let message = if job.matrix.is_empty() {
            format!("uses ${{matrix.{}}} but the job has no matrix", show(&key))
        } else {
            format!(
                "uses ${{matrix.{}}} but the matrix has no key '{}'",
                show(&key),
                show(&key)
            )
        };
        cx.invalid(job.lines.run, "run", message)
    })
}

/// `run` with each `${matrix.KEY}` replaced by `value(KEY)`, in one pass (so a value that
/// itself contains `${matrix.…}` is left alone); `Err(KEY)` for a key without a value.
fn substitute<'v>(run: &str, value: impl Fn(&str) -> Option<&'v str>) -> Result<String, String> {
    const OPEN: &str = "${matrix.";
    let mut out = String::with_capacity(run.len());
    let mut rest = run;
    while let Some(start) = rest.find(OPEN) {
        let after = &rest[start + OPEN.len()..];
        let Some(end) = after.find('}') else { break };
        let key = &after[..end];
        out.push_str(&rest[..start]);
        out.push_str(value(key).ok_or_else(|| key.to_string())?);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// One expansion of a job: its name and one value per matrix key.
struct Expansion<'a> {
    name: String,
    values: Vec<&'a str>,
}

/// The combinations of a job's matrix in order (first key slowest), or the job itself.
fn expansions<'m>(name: &str, matrix: &'m [(String, Vec<String>)]) -> Vec<Expansion<'m>> {
    let mut out = vec![Expansion {
        name: name.to_string(),
        values: Vec::new(),
    }];
    for (_, values) in matrix {
        out = out
            .iter()
            .flat_map(|e| {
                values.iter().map(move |v| {
                    let mut values = e.values.clone();
                    values.push(v.as_str());
                    Expansion {
                        name: String::new(),
                        values,
                    }
                })
            })
            .collect();
    }
    if !matrix.is_empty() {
        for e in &mut out {
            e.name = normalize_name(&format!("{}-{}", name, e.values.join("-")));
        }
    }
    out
}

/// Expands matrices and resolves needs: the graph and, parallel to it, the source lines.
fn expand(file: &str, jobs: RawJobs) -> Result<(Graph, Vec<JobLines>), GraphError> {
    // Count before building: many jobs of big matrices must not be materialized to be refused.
    let count = |extra: &Extra| {
        extra
            .matrix
            .iter()
            .map(|(_, v)| v.len())
            .fold(1usize, usize::saturating_mul)
    };
    // A job without an `Extra` has no matrix: it is one job.
    let plain = jobs.specs.len() - jobs.extra.len();
    if jobs
        .extra
        .iter()
        .map(|(_, extra)| count(extra))
        .fold(plain, usize::saturating_add)
        > MAX_JOBS
    {
        let (what, limit) = ("jobs".to_string(), MAX_JOBS);
        return Err(GraphError::GraphTooLarge {
            file: file.into(),
            line: None,
            what,
            limit,
        });
    }
    if jobs.extra.iter().all(|(_, e)| e.matrix.is_empty()) {
        expand_plain(file, jobs)
    } else {
        expand_matrices(file, &jobs)
    }
}

/// `expand` for a file without matrices, in place: each job is itself, names are unique
/// (`JobReader` saw to it) and a need names one job, so resolving needs only drops repeats.
fn expand_plain(file: &str, jobs: RawJobs) -> Result<(Graph, Vec<JobLines>), GraphError> {
    let RawJobs {
        mut specs,
        mut lines,
        extra,
    } = jobs;
    drop(extra);
    let mut edges = 0usize;
    for (i, spec) in specs.iter_mut().enumerate() {
        let job_lines = lines.get_mut(i);
        let line = job_lines.as_ref().and_then(|l| l.job);
        drop_repeated_needs(spec, job_lines);
        edges = edges.saturating_add(spec.needs.len());
        if edges > MAX_NEEDS {
            let (what, limit) = ("needs".to_string(), MAX_NEEDS);
            return Err(GraphError::GraphTooLarge {
                file: file.into(),
                line,
                what,
                limit,
            });
        }
    }
    Ok((Graph { jobs: specs }, lines))
}

/// Keeps the first of each need (with its line), in order, as `resolve_needs` does.
fn drop_repeated_needs(spec: &mut JobSpec, lines: Option<&mut JobLines>) {
    let needs = &spec.needs;
    // Most jobs have a few needs: compare them pairwise rather than hash them.
    let repeats = if needs.len() <= 16 {
        (1..needs.len()).any(|i| needs[..i].contains(&needs[i]))
    } else {
        let mut seen = HashSet::with_capacity(needs.len());
        !needs.iter().all(|n| seen.insert(n.as_str()))
    };
    if !repeats {
        return;
    }
    let mut seen = HashSet::new();
    let keep: Vec<bool> = needs.iter().map(|n| seen.insert(n.as_str())).collect();
    let mut kept = keep.iter().copied();
    spec.needs.retain(|_| kept.next().unwrap_or(true));
    if let Some(lines) = lines {
        let mut kept = keep.iter().copied();
        lines.needs.retain(|_| kept.next().unwrap_or(true));
    }
}

/// `expand` for a file with matrices: expanded jobs are copies of their job.
fn expand_matrices(file: &str, jobs: &RawJobs) -> Result<(Graph, Vec<JobLines>), GraphError> {
    let all: Vec<Vec<Expansion>> = (0..jobs.specs.len())
        .map(|i| expansions(&jobs.specs[i].name, jobs.matrix(i)))
        .collect();
    check_expanded_names(file, jobs, &all)?;
    let declared: HashMap<&str, usize> = jobs
        .specs
        .iter()
        .enumerate()
        .map(|(i, j)| (j.name.as_str(), i))
        .collect();
    let mut graph = Graph {
        jobs: Vec::with_capacity(all.iter().map(Vec::len).sum()),
    };
    let mut lines = Vec::with_capacity(graph.jobs.capacity());
    let mut edges = 0usize;
    for (i, exps) in all.iter().enumerate() {
        let (spec, job_lines) = (&jobs.specs[i], jobs.lines.get(i));
        let needs = resolve_needs(spec, job_lines, &declared, &all);
        edges = edges.saturating_add(needs.len().saturating_mul(exps.len()));
        if edges > MAX_NEEDS {
            let (what, limit) = ("needs".to_string(), MAX_NEEDS);
            return Err(GraphError::GraphTooLarge {
                file: file.into(),
                line: jobs.line(i),
                what,
                limit,
            });
        }
        for e in exps {
            graph
                .jobs
                .push(expanded_job(spec, jobs.matrix(i), e, &needs));
            if let Some(job_lines) = job_lines {
                lines.push(JobLines {
                    needs: needs.iter().map(|n| (n.1, n.2.clone())).collect(),
                    artifacts: job_lines.artifacts.clone(),
                    ..*job_lines
                });
            }
        }
    }
    Ok((graph, lines))
}

/// Expanded names must be unique, and must not take the name of a matrix job (a need naming
/// it would be ambiguous).
fn check_expanded_names(
    file: &str,
    jobs: &RawJobs,
    all: &[Vec<Expansion>],
) -> Result<(), GraphError> {
    let total = all.iter().map(Vec::len).sum();
    let declared: HashMap<&str, usize> = jobs
        .specs
        .iter()
        .enumerate()
        .map(|(i, j)| (j.name.as_str(), i))
        .collect();
    let mut owner: HashMap<&str, usize> = HashMap::with_capacity(total);
    for (i, exps) in all.iter().enumerate() {
        for e in exps {
            let clash = match declared.get(e.name.as_str()) {
                Some(&other) if other != i => Some(other),
                _ => owner.insert(e.name.as_str(), i),
            };
            if let Some(other) = clash {
                return Err(GraphError::NameCollision {
                    file: file.into(),
                    line: jobs.line(i),
                    name: show(&e.name),
                    first: jobs.written(other).to_string(),
                    second: jobs.written(i).to_string(),
                });
            }
        }
    }
    Ok(())
}

/// A job's needs with matrix jobs replaced by their expansions, duplicates dropped, order
/// kept; unknown names pass through for the shared checks to report with their line.
fn resolve_needs(
    spec: &JobSpec,
    lines: Option<&JobLines>,
    declared: &HashMap<&str, usize>,
    all: &[Vec<Expansion>],
) -> Vec<(String, Option<usize>, String)> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let mut expanded = HashSet::new();
    for (k, need) in spec.needs.iter().enumerate() {
        let (line, written) = match lines.and_then(|l| l.needs.get(k)) {
            Some((line, written)) => (line, written.as_str()),
            None => (&None, ""),
        };
        let names: Vec<&str> = match declared.get(need.as_str()) {
            // A repeated matrix need is skipped whole, so `[t, t, t, ...]` stays cheap.
            Some(&i) if !expanded.insert(i) => continue,
            Some(&i) => all[i].iter().map(|e| e.name.as_str()).collect(),
            None => vec![need.as_str()],
        };
        for name in names {
            if seen.insert(name) {
                out.push((name.to_string(), *line, written.to_string()));
            }
        }
    }
    out
}

fn expanded_job(
    job: &JobSpec,
    matrix: &[(String, Vec<String>)],
    e: &Expansion,
    needs: &[(String, Option<usize>, String)],
) -> JobSpec {
    let mut env = job.env.clone();
    // The matrix variables win over a same-named `env` entry: they define the expansion.
    for ((key, _), value) in matrix.iter().zip(&e.values) {
        env.insert(matrix_env_name(key), value.to_string());
    }
    let value = |key: &str| {
        matrix
            .iter()
            .position(|(k, _)| k == key)
            .and_then(|i| e.values.get(i).copied())
    };
    JobSpec {
        name: e.name.clone(),
        // `${matrix.KEY}` tells expansions apart here too; an unknown key stays as written.
        title: job
            .title
            .as_ref()
            .map(|t| substitute(t, value).unwrap_or_else(|_| t.clone())),
        // Unknown keys were rejected by `check_matrix_refs`, so this cannot fail.
        run: substitute(&job.run, value).unwrap_or_else(|_| job.run.clone()),
        needs: needs.iter().map(|n| n.0.clone()).collect(),
        node: job.node.clone(),
        artifacts: job.artifacts.clone(),
        retries: job.retries,
        timeout_secs: job.timeout_secs,
        expires_secs: job.expires_secs,
        env,
        requires: job.requires,
        when: job.when.clone(),
        prefer: job.prefer.clone(),
        affinity_wait_secs: job.affinity_wait_secs,
        keep_workdir: job.keep_workdir,
        timestamps: job.timestamps,
        checkout: job.checkout.clone(),
        buildbot: job.buildbot.clone(),
    }
}

/// A null scalar: `~`, `null` or nothing, unquoted.
fn is_null(s: &Scalar) -> bool {
    s.may_coerce() && matches!(s.as_str(), "" | "~" | "null" | "Null" | "NULL")
}

fn line_of(node: &Node) -> Option<usize> {
    node.line()
}

fn key_line(key: &Scalar) -> Option<usize> {
    key.line()
}

/// What a node is, for "expected X, found Y".
fn describe(node: &Node) -> String {
    match node {
        Node::Mapping(_) => "a mapping".into(),
        Node::Sequence(_) => "a list".into(),
        Node::Scalar(s) if is_null(s) => "nothing".into(),
        Node::Scalar(s) => format!("'{}'", show(s.as_str())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> GraphError {
        match parse(text, "lwr.yml") {
            Ok(graph) => panic!("expected an error, got {graph:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn a_file_over_the_size_limit_is_refused_before_parsing() {
        let mut text = String::from("version: 1\njobs:\n  a:\n    run: true\n");
        text.push_str(&"#".repeat(MAX_FILE_BYTES));
        let e = err(&text).to_string();
        assert!(e.contains("size limit of 48 MiB"), "{e}");
        assert!(!e.contains("YAML syntax"), "{e}");
    }

    fn names(graph: &Graph) -> Vec<&str> {
        graph.jobs.iter().map(|j| j.name.as_str()).collect()
    }

    const FULL: &str = r#"version: 1
jobs:
  build:
    run: make
    node: {os: linux, arch: x86_64, hostname: box1, tags: [build-tools], gpu: "yes", speed: 1, fast: true}
    artifacts:
      - {name: installer, path: "dist/app-*.tar.gz", kind: installer}
      - name: notes
        path: NOTES.txt
        optional: true
    retries: 0
    timeout: 30m
    expires: 7d
    env: {KEY: value, N: 3, FLAG: false}
  "Test Linux/opt":
    run: make test
    needs: build
  deploy:
    run: ./deploy
    needs: [test-linux-opt, "Build"]
    timeout: 90
"#;

    #[test]
    fn every_field_is_read() {
        let g = parse(FULL, "lwr.yml").unwrap();
        assert_eq!(names(&g), ["build", "test-linux-opt", "deploy"]);
        let build = &g.jobs[0];
        assert_eq!(build.run, "make");
        assert!(build.needs.is_empty());
        assert_eq!(build.node.os.as_deref(), Some("linux"));
        assert_eq!(build.node.arch.as_deref(), Some("x86_64"));
        assert_eq!(build.node.hostname.as_deref(), Some("box1"));
        assert_eq!(build.node.tags, ["build-tools"]);
        let props: Vec<(&str, &str)> = build
            .node
            .properties
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(props, [("fast", "true"), ("gpu", "yes"), ("speed", "1")]);
        assert_eq!(
            build.artifacts,
            [
                ArtifactDecl {
                    name: "installer".into(),
                    path: "dist/app-*.tar.gz".into(),
                    kind: "installer".into(),
                    optional: false
                },
                ArtifactDecl {
                    name: "notes".into(),
                    path: "NOTES.txt".into(),
                    kind: "other".into(),
                    optional: true
                },
            ]
        );
        assert_eq!(build.retries, 0);
        assert_eq!(build.timeout_secs, 1800);
        assert_eq!(build.expires_secs, Some(7 * 24 * 3600));
        assert_eq!(g.jobs[1].expires_secs, None);
        let env: Vec<(&str, &str)> = build.env.iter().collect();
        assert_eq!(env, [("FLAG", "false"), ("KEY", "value"), ("N", "3")]);

        let test = &g.jobs[1];
        assert_eq!(test.needs, ["build"]);
        assert_eq!(test.retries, DEFAULT_RETRIES);
        assert_eq!(test.timeout_secs, DEFAULT_TIMEOUT_SECS);
        assert!(test.node.is_empty());
        assert_eq!(g.jobs[2].needs, ["test-linux-opt", "build"]);
        assert_eq!(g.jobs[2].timeout_secs, 90);
        assert_eq!(g.validate(), Ok(()));
    }

    #[test]
    fn needs_resolve_through_normalization() {
        let text = "version: 1\njobs:\n  Test Linux/opt: {run: a}\n  b: {run: b, needs: [\"Test Linux/opt\"]}\n  c: {run: c, needs: [test_linux.opt, b, B]}\n";
        let g = parse(text, "lwr.yml").unwrap();
        assert_eq!(names(&g), ["test-linux-opt", "b", "c"]);
        assert_eq!(g.jobs[1].needs, ["test-linux-opt"]);
        assert_eq!(g.jobs[2].needs, ["test-linux-opt", "b"]);
    }

    #[test]
    fn names_that_normalize_alike_are_rejected() {
        let e = err("version: 1\njobs:\n  A: {run: x}\n  a: {run: y}\n");
        assert_eq!(
            e.to_string(),
            "lwr.yml:4: jobs 'A' and 'a' both normalize to 'a'"
        );
        let e = err("version: 1\njobs:\n  a: {run: x}\n  a: {run: y}\n");
        assert!(
            matches!(
                e,
                GraphError::DuplicateKey {
                    line: Some(4),
                    first_line: Some(3),
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(
            e.to_string(),
            "lwr.yml:4: duplicate key 'a' (first on line 3)"
        );
        let e = err("version: 1\njobs:\n  '//': {run: x}\n");
        assert_eq!(
            e.to_string(),
            "lwr.yml:3: job name '//' is empty after normalization (use letters or digits)"
        );
    }

    #[test]
    fn cycles_are_found_with_their_path() {
        let e = err("version: 1\njobs:\n  a: {run: x, needs: b}\n  b: {run: x, needs: a}\n");
        assert_eq!(e.to_string(), "lwr.yml: cycle in needs: a -> b -> a");
        let text = "version: 1\njobs:\n  a: {run: x, needs: c}\n  b: {run: x, needs: a}\n  c: {run: x, needs: b}\n";
        let e = err(text);
        assert_eq!(e.to_string(), "lwr.yml: cycle in needs: a -> c -> b -> a");
        assert!(matches!(e, GraphError::Cycle { ref path, .. } if path.len() == 4));
    }

    #[test]
    fn unknown_and_self_needs_name_job_and_line() {
        let text = "version: 1\njobs:\n  build:\n    run: make\n  test:\n    run: make test\n    needs: [build, nosuchjob]\n";
        let e = err(text);
        assert_eq!(
            e.to_string(),
            "lwr.yml:7: job 'test': needs 'nosuchjob', which is not a job in this graph"
        );
        let text = "version: 1\njobs:\n  test:\n    run: make test\n    needs:\n      - Test\n";
        let e = err(text);
        assert_eq!(e.to_string(), "lwr.yml:6: job 'test': needs itself");
        let e = err("version: 1\njobs:\n  a:\n    run: x\n    needs: No Such/Job\n");
        assert_eq!(
            e.to_string(),
            "lwr.yml:5: job 'a': needs 'No Such/Job', which is not a job in this graph"
        );
    }

    #[test]
    fn run_must_be_present_and_not_empty() {
        let e = err("version: 1\njobs:\n  a:\n    needs: []\n");
        assert_eq!(
            e.to_string(),
            "lwr.yml:3: job 'a': missing required field 'run' (the shell command to run)"
        );
        let e = err("version: 1\njobs:\n  a:\n");
        assert!(
            matches!(e, GraphError::MissingField { line: Some(3), .. }),
            "{e}"
        );
        for run in ["''", "'   '", ""] {
            let e = err(&format!("version: 1\njobs:\n  a:\n    run: {run}\n"));
            assert_eq!(
                e.to_string(),
                "lwr.yml:4: job 'a': field 'run': is empty; give the shell command to run"
            );
        }
        let e = err("version: 1\njobs:\n  a:\n    run: [make]\n");
        assert_eq!(
            e.to_string(),
            "lwr.yml:4: job 'a': field 'run': expected a shell command (a string), found a list"
        );
    }

    #[test]
    fn unknown_keys_name_key_job_and_line() {
        let e = err("version: 1\njobs:\n  a: {run: x}\njob:\n  b: {}\n");
        assert_eq!(
            e.to_string(),
            "lwr.yml:4: unknown key 'job': did you mean 'jobs'? (expected one of version, jobs, checkout)"
        );
        let e = err("version: 1\njobs:\n  b: {run: x}\n  a:\n    rnu: make\n");
        assert_eq!(
            e.to_string(),
            "lwr.yml:5: job 'a': unknown key 'rnu': did you mean 'run'? (expected one of run, needs, node, artifacts, retries, timeout, expires, env, matrix, requires, when, prefer, affinity_wait, keep_workdir, timestamps, checkout, title, buildbot)"
        );
        assert_eq!(
            (e.line(), e.job(), e.field()),
            (Some(5), Some("a"), Some("rnu"))
        );
        let text = "version: 1\njobs:\n  a:\n    run: x\n    artifacts:\n      - name: n\n        path: p\n      - name: m\n        paht: q\n";
        let e = err(text);
        assert_eq!(
            e.to_string(),
            "lwr.yml:9: job 'a': field 'artifacts[1]': unknown key 'paht': did you mean 'path'? (expected one of name, path, kind, optional)"
        );
    }

    #[test]
    fn artifacts_need_name_and_path_and_unique_names() {
        let e = err("version: 1\njobs:\n  a:\n    run: x\n    artifacts:\n      - {name: n}\n");
        assert_eq!(
            e.to_string(),
            "lwr.yml:6: job 'a': missing required field 'artifacts[0].path'"
        );
        let e = err(
            "version: 1\njobs:\n  a:\n    run: x\n    artifacts:\n      - {name: n, path: p}\n      - {name: n, path: q}\n",
        );
        assert_eq!(
            e.to_string(),
            "lwr.yml:7: job 'a': artifact 'n' is declared more than once"
        );
        let e = err(
            "version: 1\njobs:\n  a:\n    run: x\n    artifacts: [{name: n, path: p, optional: maybe}]\n",
        );
        assert!(
            e.to_string()
                .contains("field 'artifacts[0].optional': expected true or false, found 'maybe'"),
            "{e}"
        );
        let e = err("version: 1\njobs:\n  a:\n    run: x\n    artifacts: {name: n}\n");
        assert!(matches!(e, GraphError::InvalidValue { .. }), "{e}");
    }

    #[test]
    fn expires_is_a_duration_within_bounds() {
        let e = err("version: 1\njobs:\n  a:\n    run: x\n    expires: never\n");
        assert!(
            e.to_string()
                .starts_with("lwr.yml:5: job 'a': field 'expires': bad duration 'never'"),
            "{e}"
        );
        let e = err("version: 1\njobs:\n  a:\n    run: x\n    expires: 5000d\n");
        assert_eq!((e.line(), e.field()), (Some(5), Some("expires")), "{e}");
        let g = parse(
            "version: 1\njobs:\n  a: {run: x, expires: 90s}\n",
            "lwr.yml",
        )
        .unwrap();
        assert_eq!(g.jobs[0].expires_secs, Some(90));
    }

    #[test]
    fn artifact_names_paths_and_kinds_are_checked() {
        for (decl, field, says) in [
            ("{name: log, path: x}", "artifacts[0].name", "reserved"),
            ("{name: ../up, path: x}", "artifacts[0].name", "'..'"),
            (
                "{name: a, path: /etc/passwd}",
                "artifacts[0].path",
                "absolute",
            ),
            ("{name: a, path: ../x}", "artifacts[0].path", "'..'"),
            (
                "{name: a, path: x, kind: Big Kind}",
                "artifacts[0].kind",
                "not a kind",
            ),
        ] {
            let e = err(&format!(
                "version: 1\njobs:\n  a:\n    run: x\n    artifacts:\n      - {decl}\n"
            ));
            assert_eq!((e.line(), e.field()), (Some(6), Some(field)), "{decl}: {e}");
            assert!(e.to_string().contains(says), "{decl}: {e}");
        }
    }

    #[test]
    fn bad_durations_and_retries_are_explained() {
        let e =
            err("version: 1\njobs:\n  a: {run: x}\n  build:\n    run: make\n    timeout: soon\n");
        assert_eq!(
            e.to_string(),
            "lwr.yml:6: job 'build': field 'timeout': bad duration 'soon' (use e.g. 90s, 30m, 1h, 2h30m or 1d; a bare number means seconds)"
        );
        for timeout in ["0", "-5m", "1x", "[1h]", "''"] {
            let e = err(&format!(
                "version: 1\njobs:\n  a:\n    run: x\n    timeout: {timeout}\n"
            ));
            assert_eq!(
                (e.line(), e.field()),
                (Some(5), Some("timeout")),
                "{timeout}: {e}"
            );
        }
        let e = err("version: 1\njobs:\n  a:\n    run: x\n    timeout: 400d\n");
        assert!(
            e.to_string().contains("field 'timeout': must be between"),
            "{e}"
        );
        for (retries, says) in [
            ("-1", "negative"),
            ("1.5", "whole number"),
            ("lots", "whole number"),
            ("99999999999", "too large"),
        ] {
            let e = err(&format!(
                "version: 1\njobs:\n  a:\n    run: x\n    retries: {retries}\n"
            ));
            assert!(
                e.to_string()
                    .starts_with("lwr.yml:5: job 'a': field 'retries': "),
                "{e}"
            );
            assert!(e.to_string().contains(says), "{e}");
        }
    }

    #[test]
    fn misspellings_get_did_you_mean_with_their_line() {
        for (text, want) in [
            (
                "verison: 1\njobs:\n  a: {run: x}\n",
                "lwr.yml:1: unknown key 'verison': did you mean 'version'?",
            ),
            (
                "version: 1\njbos:\n  a: {run: x}\n",
                "lwr.yml:2: unknown key 'jbos': did you mean 'jobs'?",
            ),
            (
                "version: 1\njobs:\n  a:\n    run: x\n    neds: [b]\n",
                "lwr.yml:5: job 'a': unknown key 'neds': did you mean 'needs'?",
            ),
            (
                "version: 1\njobs:\n  build: {run: x}\n  test:\n    run: x\n    needs: [bild]\n",
                "lwr.yml:6: job 'test': needs 'bild', which is not a job in this graph (did you mean 'build'?)",
            ),
            (
                "version: 1\njobs:\n  a:\n    run: x\n    when: {chnged: [a]}\n",
                "did you mean 'changed'?",
            ),
            (
                "version: 1\njobs:\n  a:\n    run: x\n    requires: all-finshed\n",
                "did you mean 'all-finished'?",
            ),
        ] {
            let e = err(text).to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
        // Nothing close: no guess.
        let e = err("version: 1\njobs:\n  a:\n    run: x\n    needs: [zzz]\n").to_string();
        assert!(!e.contains("did you mean"), "{e}");
    }

    #[test]
    fn a_job_named_decision_is_refused_with_its_line() {
        for text in [
            "version: 1\njobs:\n  decision:\n    run: x\n",
            "version: 1\njobs:\n  a: {run: x}\n  Decision:\n    run: x\n",
        ] {
            let e = err(text);
            assert!(e.to_string().contains("decision job"), "{e}");
            assert!(e.line().is_some_and(|l| l >= 3), "{e}");
        }
        assert!(parse("version: 1\njobs:\n  decide: {run: x}\n", "f").is_ok());
    }

    #[test]
    fn version_must_be_1() {
        let e = err("jobs:\n  a: {run: x}\n");
        assert_eq!(
            e.to_string(),
            "lwr.yml: missing required field 'version' (add 'version: 1')"
        );
        let e = err("version: 2\njobs:\n  a: {run: x}\n");
        assert_eq!(
            e.to_string(),
            "lwr.yml:1: unsupported version '2' (this lwr reads version 1)"
        );
        let e = err("version: 2\nstages: []\n");
        assert!(matches!(e, GraphError::UnsupportedVersion { .. }), "{e}");
        assert!(matches!(
            err("version: [1]\njobs: {}\n"),
            GraphError::InvalidValue { .. }
        ));
        assert!(parse("version: '1'\njobs:\n  a: {run: x}\n", "f").is_ok());
    }

    #[test]
    fn jobs_must_be_a_nonempty_mapping() {
        let e = err("version: 1\n");
        assert_eq!(
            e.to_string(),
            "lwr.yml: missing required field 'jobs' (a mapping of job name to job)"
        );
        let e = err("version: 1\njobs: [a, b]\n");
        assert_eq!(
            e.to_string(),
            "lwr.yml:2: field 'jobs': expected a mapping of job name to job, found a list"
        );
        let e = err("version: 1\njobs: {}\n");
        assert!(e.to_string().contains("has no jobs"), "{e}");
        let e = err("version: 1\njobs:\n  a: make\n");
        assert_eq!(
            e.to_string(),
            "lwr.yml:3: job 'a': expected a mapping of job fields (run, needs, ...), found 'make'"
        );
        let e = err("- a\n- b\n");
        assert!(matches!(e, GraphError::Yaml { line: Some(1), .. }), "{e}");
        assert!(matches!(err(""), GraphError::MissingField { .. }));
    }

    #[test]
    fn broken_yaml_is_an_error_with_line_and_column() {
        let e = err("jobs:\n  a: [\n");
        assert!(
            matches!(
                e,
                GraphError::Yaml {
                    line: Some(_),
                    column: Some(_),
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().starts_with("lwr.yml:3:"), "{e}");
        let e = err("version: 1\njobs:\n  a: &x {run: x}\n  b: *x\n");
        assert!(e.to_string().contains("anchors and aliases"), "{e}");
        let e = err("version: 1\njobs:\n  a: !!map {run: x}\n");
        assert!(e.to_string().contains("tags"), "{e}");
        let e = err("version: 1\n\tjobs: x\n");
        assert!(matches!(e, GraphError::Yaml { .. }), "{e}");
    }

    #[test]
    fn node_env_and_needs_types_are_checked() {
        let e = err("version: 1\njobs:\n  a:\n    run: x\n    env: {1BAD: x}\n");
        assert_eq!(
            e.to_string(),
            "lwr.yml:5: job 'a': field 'env.1BAD': '1BAD' is not a valid environment variable name (use letters, digits and _, not starting with a digit)"
        );
        let e = err("version: 1\njobs:\n  a:\n    run: x\n    env:\n      A: [1]\n");
        assert_eq!(
            e.to_string(),
            "lwr.yml:6: job 'a': field 'env.A': expected a string, number or boolean, found a list"
        );
        let e = err("version: 1\njobs:\n  a:\n    run: x\n    node: {tags: {x: y}}\n");
        assert!(matches!(e, GraphError::InvalidValue { .. }), "{e}");
        let e = err("version: 1\njobs:\n  a:\n    run: x\n    needs: {b: c}\n");
        assert!(
            matches!(e, GraphError::InvalidValue { line: Some(5), .. }),
            "{e}"
        );
        let e = err("version: 1\njobs:\n  a:\n    run: x\n    needs:\n      - ~\n");
        assert!(e.to_string().contains("found nothing"), "{e}");
    }

    #[test]
    fn matrix_with_one_key_expands_in_place() {
        let text = "version: 1\njobs:\n  build: {run: make}\n  test:\n    run: make test CHUNK=${matrix.chunk}\n    needs: build\n    matrix:\n      chunk: [1, 2, 3]\n  report:\n    run: cat\n    needs: [test, build, Test, test-2]\n";
        let g = parse(text, "lwr.yml").unwrap();
        assert_eq!(names(&g), ["build", "test-1", "test-2", "test-3", "report"]);
        assert_eq!(g.jobs[2].run, "make test CHUNK=2");
        assert_eq!(g.jobs[2].env.get("LWR_MATRIX_CHUNK"), Some("2"));
        assert_eq!(g.jobs[2].needs, ["build"]);
        assert_eq!(g.jobs[4].needs, ["test-1", "test-2", "test-3", "build"]);
    }

    #[test]
    fn matrix_with_two_keys_is_a_cartesian_product() {
        let text = "version: 1\njobs:\n  Test:\n    run: run ${matrix.os} ${matrix.chunk} ${matrix.os}\n    env: {KEEP: me}\n    matrix:\n      os: [linux, Mac]\n      chunk: [1, 2]\n  one: {run: x, needs: [test-mac-2]}\n";
        let g = parse(text, "lwr.yml").unwrap();
        assert_eq!(
            names(&g),
            [
                "test-linux-1",
                "test-linux-2",
                "test-mac-1",
                "test-mac-2",
                "one"
            ]
        );
        let mac2 = &g.jobs[3];
        assert_eq!(mac2.run, "run Mac 2 Mac");
        let env: Vec<(&str, &str)> = mac2.env.iter().collect();
        assert_eq!(
            env,
            [
                ("KEEP", "me"),
                ("LWR_MATRIX_CHUNK", "2"),
                ("LWR_MATRIX_OS", "Mac")
            ]
        );
        assert_eq!(g.jobs[4].needs, ["test-mac-2"]);
    }

    #[test]
    fn matrix_errors() {
        let e = err(
            "version: 1\njobs:\n  t:\n    run: echo ${matrix.nope}\n    matrix: {chunk: [1]}\n",
        );
        assert_eq!(
            e.to_string(),
            "lwr.yml:4: job 't': field 'run': uses ${matrix.nope} but the matrix has no key 'nope'"
        );
        let e = err("version: 1\njobs:\n  t:\n    run: echo ${matrix.x}\n");
        assert!(e.to_string().contains("the job has no matrix"), "{e}");
        let e = err("version: 1\njobs:\n  t:\n    run: x\n    matrix: {chunk: []}\n");
        assert!(
            e.to_string()
                .contains("field 'matrix.chunk': is an empty list"),
            "{e}"
        );
        let e = err("version: 1\njobs:\n  t:\n    run: x\n    matrix: {chunk: 3}\n");
        assert!(matches!(e, GraphError::InvalidValue { .. }), "{e}");
        let e = err(
            "version: 1\njobs:\n  t-1: {run: x}\n  t:\n    run: x\n    matrix: {chunk: [1, 2]}\n",
        );
        assert_eq!(
            e.to_string(),
            "lwr.yml:4: jobs 't-1' and 't' both produce the job name 't-1' (matrix expansion)"
        );
        let e = err("version: 1\njobs:\n  t:\n    run: x\n    matrix: {chunk: [a, A]}\n");
        assert_eq!(
            e.to_string(),
            "lwr.yml:3: job 't': matrix expands to 't-a' twice (duplicate matrix values?)"
        );
        let e =
            err("version: 1\njobs:\n  t:\n    run: x\n    needs: t\n    matrix: {chunk: [a, b]}\n");
        assert_eq!(e.to_string(), "lwr.yml:5: job 't-a': needs itself");
        let e = err("version: 1\njobs:\n  t:\n    run: x\n    matrix: {a-b: [1], a_b: [2]}\n");
        assert!(e.to_string().contains("both give LWR_MATRIX_A_B"), "{e}");
    }

    #[test]
    fn matrix_size_is_capped() {
        let values: Vec<String> = (0..40).map(|i| i.to_string()).collect();
        let list = values.join(", ");
        let text = format!(
            "version: 1\njobs:\n  t:\n    run: x\n    matrix: {{a: [{list}], b: [{list}]}}\n"
        );
        let e = err(&text);
        assert_eq!(
            e.to_string(),
            "lwr.yml:5: job 't': matrix has 1600 combinations, more than the limit of 1000"
        );
        // 101 jobs of 1000 combinations each: over the graph limit without building it.
        let big: Vec<String> = (0..1000).map(|i| i.to_string()).collect();
        let mut text = String::from("version: 1\njobs:\n");
        for j in 0..101 {
            text.push_str(&format!(
                "  t{j}:\n    run: x\n    matrix: {{c: [{}]}}\n",
                big.join(",")
            ));
        }
        let e = err(&text);
        assert_eq!(
            e.to_string(),
            "lwr.yml: graph has more than 100000 jobs after matrix expansion"
        );
        // Two 1000-job matrices where each job of one needs all of the other: 1,000,000+ needs.
        let text = format!(
            "version: 1\njobs:\n  a: {{run: x, matrix: {{c: [{0}]}}}}\n  b: {{run: x, needs: [a, a-1], matrix: {{c: [{0}]}}}}\n  c: {{run: x, needs: a}}\n",
            big.join(",")
        );
        let e = err(&text);
        assert_eq!(
            e.to_string(),
            "lwr.yml:5: graph has more than 1000000 needs after matrix expansion"
        );
    }

    #[test]
    fn parse_duration_table() {
        let good = [
            ("30s", 30),
            ("30m", 1800),
            ("1h", 3600),
            ("2h30m", 9000),
            ("1d", 86_400),
            ("90", 90),
            (" 45 ", 45),
            ("1d2h3m4s", 93_784),
        ];
        for (text, secs) in good {
            assert_eq!(parse_duration(text), Ok(secs), "{text}");
        }
        let bad = [
            ("", "empty"),
            ("0", "more than zero"),
            ("0s", "more than zero"),
            ("-5", "negative"),
            ("-1h", "negative"),
            ("5x", "unknown unit 'x'"),
            ("1.5h", "unknown unit '.'"),
            ("1h30", "'30' has no unit"),
            ("h", "bad duration 'h'"),
            ("99999999999999999999", "too long"),
            ("999999999999999999d", "too long"),
            ("18446744073709551615s1s", "too long"),
        ];
        for (text, says) in bad {
            let e = parse_duration(text).unwrap_err();
            assert!(e.contains(says), "{text}: {e}");
            assert!(e.contains("use e.g. 90s, 30m, 1h"), "{text}: {e}");
        }
    }

    #[test]
    fn errors_are_one_line_even_for_strange_input() {
        let e = err("version: 1\njobs:\n  \"a\\nb\": {run: x}\n");
        assert!(!e.to_string().contains('\n'), "{e}");
        let e = err("version: 1\njobs:\n  a:\n    run: x\n    \"bad\\nkey\": 1\n");
        assert_eq!(e.to_string().lines().count(), 1, "{e}");
        let e = err("version: \"2\\n3\"\njobs: {}\n");
        assert_eq!(e.to_string().lines().count(), 1, "{e}");
    }

    /// `text` parsed as a stream, by reads of a few characters (checking that the file is
    /// read twice at most, and again only when the checks refuse it).
    fn streamed(text: &str, size: Option<usize>) -> Result<Graph, GraphError> {
        let opened = std::sync::atomic::AtomicUsize::new(0);
        let got = parse_stream(
            size,
            || {
                opened.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                text.chars()
            },
            "lwr.yml",
        );
        let opened = opened.into_inner();
        assert!(opened <= 2, "read {opened} times");
        if opened == 2 {
            assert!(got.is_err());
        }
        got
    }

    #[test]
    fn a_streamed_file_reads_as_its_whole_text() {
        let mut texts = vec![
            FULL.to_string(),
            chain(300),
            wide(40),
            mixed(200),
            String::new(),
            "\n\r\n".into(),
            "version: 1\njobs:\n  a: {run: x, needs: [nope]}\n".into(),
            "version: 1\njobs:\n  a: {run: x}\n  b: {run: y, needs: [a, a]}\n".into(),
            format!("a:\n{}b: 1\n", " ".repeat(MAX_INDENT + 1)),
            // A syntax error before a line too deep: the depth is reported, as for a text.
            format!("a: [\n]]\nb:\n{}c: 1\n", " ".repeat(MAX_INDENT + 1)),
            format!("a: {}\n", "[".repeat(100_000)),
            format!("a:\n{}x\n", "- ".repeat(100_000)),
            "\r ".repeat(10_000),
            format!(
                "version: 1\njobs:\n  a:\n    run: |\n      x\n{}\n      y\n",
                " ".repeat(1000)
            ),
        ];
        texts.extend(
            (0..FULL.len())
                .step_by(7)
                .filter(|&cut| FULL.is_char_boundary(cut))
                .map(|cut| FULL[..cut].to_string()),
        );
        let alphabet: Vec<char> = "ab1 :-[]{},\n\t'\"&*!|>?#%@`~\\$.\r é".chars().collect();
        let mut rng = Rng(0x5eed);
        for _ in 0..500 {
            let len = (rng.next() % 80) as usize;
            texts.push(
                (0..len)
                    .map(|_| alphabet[(rng.next() % alphabet.len() as u64) as usize])
                    .collect(),
            );
        }
        for text in &texts {
            let whole = parse(text, "lwr.yml");
            assert_eq!(streamed(text, Some(text.len())), whole, "{text:?}");
            assert_eq!(streamed(text, None), whole, "{text:?}");
        }
    }

    #[test]
    fn a_streamed_file_over_the_size_limit_is_refused_with_its_size() {
        let mut text = String::from("version: 1\njobs:\n  a:\n    run: true\n");
        text.push_str(&"#".repeat(MAX_FILE_BYTES));
        text.push_str("\nmore: 1\n");
        let whole = parse(&text, "lwr.yml");
        assert!(
            matches!(whole, Err(GraphError::FileTooLarge { bytes, .. }) if bytes == text.len())
        );
        // Known before reading: not read at all.
        let refused = parse_stream(
            Some(text.len()),
            || -> std::iter::Empty<char> { unreachable!() },
            "lwr.yml",
        );
        assert_eq!(refused, whole);
        // Found while reading.
        assert_eq!(streamed(&text, None), whole);
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        // The deepest nesting the indentation limit lets through, from a caller on a 256 KiB
        // stack: `parse` must not depend on its caller's stack.
        let deepest = std::thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(|| {
                let mut text = String::from("version: 1\njobs:\n  a:\n    run: x\n    node:\n");
                for depth in 6..MAX_INDENT {
                    text.push_str(&format!("{}k:\n", " ".repeat(depth)));
                }
                let flow = format!("{}{}", "[".repeat(250), "]".repeat(250));
                text.push_str(&format!("{}k: {flow}\n", " ".repeat(MAX_INDENT)));
                parse(&text, "f")
            })
            .and_then(|t| t.join().map_err(|_| std::io::Error::other("panicked")));
        // The YAML parsed; the error is about its meaning.
        match deepest {
            Ok(Err(e)) => assert_eq!(e.field(), Some("node.k"), "{e}"),
            other => panic!("unexpected {other:?}"),
        }
        let deeper = format!("a:\n{}b: 1\n", " ".repeat(MAX_INDENT + 1));
        assert!(matches!(err(&deeper), GraphError::Yaml { .. }));
        let seq = format!("a:\n{}x\n", "- ".repeat(100_000));
        assert!(matches!(err(&seq), GraphError::Yaml { .. }));
        let flow = format!("a: {}\n", "[".repeat(100_000));
        assert!(matches!(err(&flow), GraphError::Yaml { .. }));
        let _ = parse(&format!("a: {}\n", "- ".repeat(100_000)), "f");
        assert!(parse(&"\r ".repeat(100_000), "f").is_err());
        // Blank lines, however long, are not nesting.
        let blank_line = " ".repeat(1000);
        let text = format!("version: 1\njobs:\n  a:\n    run: |\n      x\n{blank_line}\n      y\n");
        let run = parse(&text, "f")
            .map(|g| g.jobs[0].run.clone())
            .unwrap_or_default();
        assert!(run.starts_with("x\n") && run.ends_with("\ny\n"), "{run:?}");
    }

    #[test]
    fn graph_error_stays_small() {
        // Other crates wrap GraphError in their own error enums (which niche-pack to the same
        // size); clippy's result_large_err fires at 128 bytes.
        let size = std::mem::size_of::<GraphError>();
        assert!(size <= 120, "GraphError is {size} bytes");
    }

    /// A tiny deterministic generator, so the garbage is the same on every run.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn garbage_and_truncations_never_panic() {
        for cut in 0..=FULL.len() {
            if FULL.is_char_boundary(cut) {
                let _ = parse(&FULL[..cut], "lwr.yml");
            }
        }
        let alphabet: Vec<char> = "ab1 :-[]{},\n\t'\"&*!|>?#%@`~\\$.\r é".chars().collect();
        let mut rng = Rng(0x5eed);
        for _ in 0..3000 {
            let len = (rng.next() % 80) as usize;
            let text: String = (0..len)
                .map(|_| alphabet[(rng.next() % alphabet.len() as u64) as usize])
                .collect();
            let _ = parse(&text, "lwr.yml");
        }
        // Mutations of a valid file: one byte replaced by a structural character.
        let bytes: Vec<char> = FULL.chars().collect();
        for _ in 0..2000 {
            let mut text = bytes.clone();
            let at = (rng.next() % text.len() as u64) as usize;
            text[at] = alphabet[(rng.next() % alphabet.len() as u64) as usize];
            let text: String = text.into_iter().collect();
            if let Err(e) = parse(&text, "lwr.yml") {
                assert!(!e.to_string().contains('\n'), "{e}");
            }
        }
    }

    fn chain(n: usize) -> String {
        let mut text = String::from("version: 1\njobs:\n");
        for i in 0..n {
            text.push_str(&format!("  job {i}:\n    run: echo {i}\n"));
            if i > 0 {
                text.push_str(&format!("    needs: [Job {}]\n", i - 1));
            }
        }
        text
    }

    fn wide(n: usize) -> String {
        let mut text = String::from("version: 1\njobs:\n");
        for i in 0..n - 1 {
            text.push_str(&format!("  w{i}: {{run: echo {i}, needs: root}}\n"));
        }
        text.push_str("  root: {run: echo root}\n  all:\n    run: echo done\n    needs:\n");
        for i in 0..n - 1 {
            text.push_str(&format!("      - w{i}\n"));
        }
        text
    }

    /// `n` jobs in every style the reader meets: block and flow mappings, block and flow
    /// lists, quoted and plain scalars, comments; one line per job in flow style. Job `i`
    /// starts on line `first_line(i)`.
    fn mixed(n: usize) -> String {
        let mut text = String::from("# generated\njobs:\n");
        for i in 0..n {
            match i % 4 {
                0 if i == 0 => text.push_str("  j0: {run: 'echo 0', node: {os: plan9}}\n"),
                0 => text.push_str(&format!(
                    "  j{i}: {{run: 'echo {i}', node: {{os: plan9}}, needs: [j{}]}}\n",
                    i - 1
                )),
                1 => text.push_str(&format!(
                    "  \"J {i}\":  # a comment\n    run: \"echo {i}\"\n    needs:\n      - j{}\n      - j{}\n",
                    i - 1,
                    i - 1
                )),
                2 => text.push_str(&format!(
                    "  j{i}:\n    run: |\n      echo {i}\n    env: {{N: \"{i}\"}}\n"
                )),
                _ => text.push_str(&format!("  j{i}: {{run: echo {i}, retries: 0}}\n")),
            }
        }
        text.push_str("version: 1\n");
        text
    }

    fn first_line(i: usize) -> usize {
        // Each group of four jobs takes 1 + 5 + 4 + 1 lines.
        3 + (i / 4) * 11 + [0, 1, 6, 10][i % 4]
    }

    #[test]
    fn a_big_file_in_every_style_is_read_job_by_job() {
        let n = 20_000;
        let text = mixed(n);
        let g = parse(&text, "lwr.yml").unwrap();
        assert_eq!(g.jobs.len(), n);
        for (i, job) in g.jobs.iter().enumerate() {
            let previous = format!("j{}", i.saturating_sub(1));
            let (name, run, needs) = match i % 4 {
                0 if i == 0 => (format!("j{i}"), format!("echo {i}"), vec![]),
                0 => (format!("j{i}"), format!("echo {i}"), vec![previous]),
                // Listed twice, needed once.
                1 => (format!("j-{i}"), format!("echo {i}"), vec![previous]),
                2 => (format!("j{i}"), format!("echo {i}\n"), vec![]),
                _ => (format!("j{i}"), format!("echo {i}"), vec![]),
            };
            assert_eq!(
                (&job.name, &job.run, &job.needs),
                (&name, &run, &needs),
                "job {i}"
            );
            assert_eq!(job.node.os.is_some(), i % 4 == 0, "job {i}");
            assert_eq!(job.retries, if i % 4 == 3 { 0 } else { DEFAULT_RETRIES });
            let env: Vec<_> = job.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let want = if i % 4 == 2 {
                vec![format!("N={i}")]
            } else {
                vec![]
            };
            assert_eq!(env, want, "job {i}");
        }
        // Lines are kept only when the checks need them for a message.
        let jobs = read(text.chars(), "lwr.yml", false).unwrap();
        assert_eq!((jobs.specs.len(), jobs.lines.len()), (n, 0));
        let jobs = read(text.chars(), "lwr.yml", true).unwrap();
        assert_eq!(jobs.lines.len(), n);
        assert_eq!(jobs.lines[12_345].job, Some(first_line(12_345)));
        assert_eq!(jobs.lines[12_345].run, Some(first_line(12_345) + 1));
        // The lines are right deep in the file too.
        for i in [0, 1, 2, 3, 12_345, 12_346, 12_347, 19_999] {
            let line = first_line(i);
            let name = if i % 4 == 1 {
                format!("J {i}")
            } else {
                format!("j{i}")
            };
            assert!(
                text.lines().nth(line - 1).unwrap().contains(name.as_str()),
                "job {i} is not on line {line}"
            );
            // A key no job has, put in that job's own style.
            let (bad, at) = match i % 4 {
                1 => {
                    let key = format!("  \"J {i}\":  # a comment\n");
                    (
                        text.replacen(&key, &format!("{key}    bogus: 1\n"), 1),
                        line + 1,
                    )
                }
                2 => {
                    let key = format!("  j{i}:\n");
                    (
                        text.replacen(&key, &format!("{key}    bogus: 1\n"), 1),
                        line + 1,
                    )
                }
                _ => {
                    let key = format!("  j{i}: {{");
                    (text.replacen(&key, &format!("{key}bogus: 1, "), 1), line)
                }
            };
            let e = err(&bad);
            assert_eq!((e.line(), e.job()), (Some(at), Some(name.as_str())), "{e}");
            assert!(e.to_string().contains("unknown key 'bogus'"), "{e}");
        }
    }

    #[test]
    fn errors_deep_in_a_big_file_keep_their_order_and_lines() {
        let n = 20_000;
        let text = mixed(n);
        let job = |i: usize| format!("  j{i}: {{run: echo {i}, retries: 0}}\n");
        // A job given twice: the YAML error names both lines.
        let twice = text.replacen("version: 1\n", &format!("{}version: 1\n", job(15_003)), 1);
        match err(&twice) {
            GraphError::DuplicateKey {
                line,
                first_line: first,
                key,
                ..
            } => {
                assert_eq!(key, "j15003");
                assert_eq!(first, Some(first_line(15_003)));
                assert_eq!(line, Some(text.lines().count()));
            }
            other => panic!("{other}"),
        }
        // Two names that normalize alike: the second is refused with its line.
        let alike = text.replacen("  j15003:", "  J15003:", 1).replacen(
            "version: 1\n",
            &format!("{}version: 1\n", job(15_003)),
            1,
        );
        match err(&alike) {
            GraphError::DuplicateName { line, first, .. } => {
                assert_eq!(
                    (line, first.as_str()),
                    (Some(text.lines().count()), "J15003")
                );
            }
            other => panic!("{other}"),
        }
        // The first bad job is reported, not a later one.
        let two_bad = text
            .replacen("echo 15003, retries: 0", "echo 15003, retries: -1", 1)
            .replacen("echo 17003, retries: 0", "echo 17003, retries: x", 1);
        let e = err(&two_bad);
        assert_eq!(
            (e.line(), e.job()),
            (Some(first_line(15_003)), Some("j15003")),
            "{e}"
        );
        // A YAML error after it wins (the file is not YAML), and so does a wrong version
        // at the very end (the file is for another lwr).
        let e = err(&format!("{two_bad}extra: [\n"));
        assert!(matches!(e, GraphError::Yaml { .. }), "{e}");
        let e = err(&two_bad.replacen("version: 1\n", "version: 2\n", 1));
        assert!(matches!(e, GraphError::UnsupportedVersion { .. }), "{e}");
        let e = err(&two_bad.replacen("version: 1\n", "version: 1\nnope: 1\n", 1));
        assert!(matches!(e, GraphError::UnknownKey { .. }), "{e}");
        // An error of the checks after reading (which read the file again for the lines).
        let e = err(&text.replacen("needs: [j15003]", "needs: [j15003x]", 1));
        assert_eq!(
            (e.line(), e.job()),
            (Some(first_line(15_004)), Some("j15004")),
            "{e}"
        );
        assert!(e.to_string().contains("did you mean 'j15003'"), "{e}");
        // Anchors are refused even far down.
        let anchored = text.replacen("  j17003: {", "  j17003: &a {", 1);
        let e = err(&anchored);
        assert_eq!(e.line(), Some(first_line(17_003)), "{e}");
        assert!(e.to_string().contains("anchors and aliases"), "{e}");
    }

    #[test]
    fn big_graphs_parse_quickly() {
        let n = 10_000;
        let text = chain(n);
        let start = std::time::Instant::now();
        let g = parse(&text, "lwr.yml").unwrap();
        println!(
            "big: 10,000-job chain parsed and validated in {:?}",
            start.elapsed()
        );
        assert_eq!(g.jobs.len(), n);
        assert_eq!(g.jobs[n - 1].name, format!("job-{}", n - 1));
        assert_eq!(g.jobs[n - 1].needs, [format!("job-{}", n - 2)]);

        let text = wide(n);
        let start = std::time::Instant::now();
        let g = parse(&text, "lwr.yml").unwrap();
        println!(
            "big: 10,000-job wide graph parsed and validated in {:?}",
            start.elapsed()
        );
        assert_eq!(g.jobs.len(), n + 1);
        assert_eq!(g.jobs[n].needs.len(), n - 1);

        // A cycle closing a 10,000-job chain is found without deep recursion.
        let text = chain(n).replacen(
            "    run: echo 0\n",
            "    run: echo 0\n    needs: job 9999\n",
            1,
        );
        match parse(&text, "lwr.yml") {
            Err(GraphError::Cycle { path, .. }) => assert_eq!(path.len(), n + 1),
            other => panic!("expected a cycle, got {other:?}"),
        }
    }

    #[test]
    fn placement_fields_are_read_and_checked_with_lines() {
        let g = parse(
            "version: 1\njobs:\n  a:\n    run: x\n    prefer: [fastest, affinity]\n    \
             affinity_wait: 2s\n    keep_workdir: true\n  b:\n    run: y\n    prefer: reserved\n    \
             affinity_wait: 0\n",
            "lwr.yml",
        )
        .unwrap();
        let a = &g.jobs[0];
        assert_eq!(a.prefer, [Prefer::Fastest, Prefer::Affinity]);
        assert_eq!(a.affinity_wait_secs, Some(2));
        assert!(a.keep_workdir);
        assert_eq!(g.jobs[1].prefer, [Prefer::Reserved]);
        assert_eq!(g.jobs[1].affinity_wait_secs, Some(0));
        let e = err(
            "version: 1\njobs:\n  a:\n    run: x\n    prefer:\n      - fastest\n      - cheapest\n",
        );
        assert_eq!(
            e.to_string(),
            "lwr.yml:7: job 'a': field 'prefer': 'cheapest' is not a preference; use affinity, fastest or reserved"
        );
        let e = err("version: 1\njobs:\n  a:\n    run: x\n    prefer: [fastest, fastest]\n");
        assert!(e.to_string().contains("'fastest' is listed twice"), "{e}");
        let e = err("version: 1\njobs:\n  a:\n    run: x\n    affinity_wait: soon\n");
        assert!(
            e.to_string()
                .starts_with("lwr.yml:5: job 'a': field 'affinity_wait'"),
            "{e}"
        );
        let e = err("version: 1\njobs:\n  a:\n    run: x\n    affinity_wait: 2d\n");
        assert_eq!(
            e.to_string(),
            "lwr.yml:5: job 'a': field 'affinity_wait': must be at most 86400 seconds (1 day)"
        );
        let e = err("version: 1\njobs:\n  a:\n    run: x\n    keep_workdir: maybe\n");
        assert!(e.to_string().contains("keep_workdir"), "{e}");
    }

    #[test]
    fn checkout_per_job_and_as_the_default() {
        let g = parse(
            "version: 1\ncheckout: {depth: 1}\njobs:\n  a:\n    run: x\n  b:\n    run: y\n    \
             checkout: false\n  c:\n    run: z\n    checkout: {submodules: true, lfs: true, \
             path: src/app/}\n",
            "lwr.yml",
        )
        .unwrap();
        assert_eq!(g.jobs[0].checkout.depth, Some(1), "the file's default");
        assert!(!g.jobs[1].checkout.enabled);
        let c = &g.jobs[2].checkout;
        assert!(
            c.enabled && c.submodules && c.lfs && c.depth.is_none(),
            "{c:?}"
        );
        assert_eq!(c.path.as_deref(), Some("src/app"));
        let plain = parse("version: 1\njobs:\n  a:\n    run: x\n", "lwr.yml").unwrap();
        assert!(plain.jobs[0].checkout.is_default());
        // Stored specs of jobs that say nothing stay as they were.
        let json = serde_json::to_string(&plain.jobs[0]).unwrap();
        assert!(!json.contains("checkout"), "{json}");
    }

    #[test]
    fn bad_checkouts_name_file_line_and_job() {
        for (yaml, expected) in [
            (
                "    checkout: maybe\n",
                "lwr.yml:5: job 'a': field 'checkout': expected true, false or a mapping",
            ),
            (
                "    checkout: {depth: 0}\n",
                "lwr.yml:5: job 'a': field 'checkout.depth': '0' is not a depth",
            ),
            (
                "    checkout: {path: ../up}\n",
                "lwr.yml:5: job 'a': field 'checkout.path': path '../up' leaves the job dir",
            ),
            (
                "    checkout: {path: /abs}\n",
                "lwr.yml:5: job 'a': field 'checkout.path': path '/abs' is absolute",
            ),
            (
                "    checkout:\n      dpeth: 1\n",
                "lwr.yml:6: job 'a': field 'checkout': unknown key 'dpeth': did you mean 'depth'? (expected one of \
                 depth, submodules, lfs, path)",
            ),
        ] {
            let e = err(&format!("version: 1\njobs:\n  a:\n    run: x\n{yaml}"));
            assert!(
                e.to_string().starts_with(expected),
                "{e}\nexpected {expected}"
            );
        }
        let e = err("version: 1\ncheckout: [x]\njobs:\n  a:\n    run: x\n");
        assert!(
            e.to_string().starts_with("lwr.yml:2: field 'checkout'"),
            "{e}"
        );
    }

    #[test]
    fn a_submitted_checkout_is_checked_too() {
        let mut g = parse("version: 1\njobs:\n  a:\n    run: x\n", "lwr.yml").unwrap();
        g.jobs[0].checkout.path = Some("../../etc".into());
        let e = g.validate().unwrap_err();
        assert_eq!(e.field(), Some("checkout.path"), "{e}");
    }

    #[test]
    fn timestamps_is_a_boolean() {
        let g = parse(
            "version: 1\njobs:\n  a:\n    run: x\n    timestamps: true\n  b:\n    run: y\n",
            "lwr.yml",
        )
        .unwrap();
        assert!(g.jobs[0].timestamps && !g.jobs[1].timestamps);
        let e = err("version: 1\njobs:\n  a:\n    run: x\n    timestamps: often\n");
        assert!(
            e.to_string()
                .starts_with("lwr.yml:5: job 'a': field 'timestamps'"),
            "{e}"
        );
    }

    #[test]
    fn title_is_one_line_of_text_for_people() {
        let text = "version: 1\njobs:\n  \"Test Linux/opt\":\n    run: x\n    title: \"Test Linux/opt #1\"\n  t:\n    run: y\n    title: t ${matrix.n}\n    matrix: {n: [1, 2]}\n";
        let g = parse(text, "lwr.yml").unwrap();
        let titles: Vec<Option<&str>> = g.jobs.iter().map(|j| j.title.as_deref()).collect();
        assert_eq!(
            titles,
            vec![Some("Test Linux/opt #1"), Some("t 1"), Some("t 2")]
        );
        let e = err("version: 1\njobs:\n  a:\n    run: x\n    title: \"two\\nlines\"\n");
        assert_eq!(
            e.to_string(),
            "lwr.yml:3: job 'a': field 'title': 'two\\nlines' contains a control character (a title is one line)"
        );
        let e = err("version: 1\njobs:\n  a:\n    run: x\n    title: \" \"\n");
        assert_eq!(e.field(), Some("title"), "{e}");
        let mut g = parse("version: 1\njobs:\n  a:\n    run: x\n", "lwr.yml").unwrap();
        g.jobs[0].title = Some("x".repeat(super::super::MAX_TITLE_CHARS + 1));
        assert_eq!(g.validate().unwrap_err().field(), Some("title"));
    }

    #[test]
    fn a_buildbot_job_is_read_and_implies_its_bridge() {
        let text = "version: 1\njobs:\n  build: {run: make}\n  test:\n    needs: [build]\n    buildbot:\n      builder: linux64-test\n      properties: {suite: mochitest, chunk: 3}\n";
        let g = parse(text, "lwr.yml").unwrap();
        let test = &g.jobs[1];
        let bb = test.buildbot.as_ref().unwrap();
        assert_eq!(bb.builder, "linux64-test");
        assert_eq!(bb.properties["chunk"], "3");
        assert_eq!(test.run, "");
        let req = test.requirements();
        assert_eq!(req.properties["buildbot.builder.linux64-test"], "true");
        assert!(g.jobs[0].requirements().is_empty());
        assert_eq!(g.validate(), Ok(()));
    }

    #[test]
    fn bad_buildbot_jobs_are_refused_with_their_line() {
        let cases = [
            (
                "version: 1\njobs:\n  t:\n    run: x\n    buildbot: {builder: b}\n",
                "lwr.yml:5: job 't': field 'buildbot': a job has either run",
            ),
            (
                "version: 1\njobs:\n  t:\n    buildbot: {properties: {a: b}}\n",
                "buildbot.builder",
            ),
            (
                "version: 1\njobs:\n  t:\n    buildbot: {builder: b, slave: x}\n",
                "unknown key 'slave'",
            ),
            (
                "version: 1\njobs:\n  t:\n    buildbot: {builder: b, properties: {lwr_run: 1}}\n",
                "set by lwr itself",
            ),
            (
                "version: 1\njobs:\n  t:\n    buildbot: {builder: b}\n    artifacts: [{name: a, path: a}]\n",
                "declares no artifacts",
            ),
            (
                "version: 1\njobs:\n  t:\n    buildbot: linux\n",
                "expected a mapping",
            ),
        ];
        for (text, want) in cases {
            let e = err(text).to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
    }
}
