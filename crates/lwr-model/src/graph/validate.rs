//! Graph errors and the checks every graph must pass, whether it was just parsed from an
//! `lwr.yml` (line numbers known) or received as JSON by the server (no lines: file `graph`).

use std::collections::{HashMap, HashSet};

use super::{Graph, JobSpec, normalize_name};
use crate::buildbot::{BuildbotJob, RESERVED_PROPERTIES};
use crate::{glob, manifest};

/// Most jobs one graph may hold after matrix expansion (a hostile file must not exhaust memory).
pub(crate) const MAX_JOBS: usize = 100_000;
/// Most `needs` edges one graph may hold after matrix expansion.
pub(crate) const MAX_NEEDS: usize = 1_000_000;
/// Longest timeout: a year. Beyond that a node's deadline arithmetic could overflow.
pub(crate) const MAX_TIMEOUT_SECS: u64 = 366 * 24 * 3600;
/// Longest a job may wait for the node that last built it: a day.
pub(crate) const MAX_AFFINITY_WAIT_SECS: u64 = 24 * 3600;
/// Deepest `checkout.depth`: beyond this, leave it out (all history).
pub const MAX_CHECKOUT_DEPTH: u32 = 1_000_000;
/// Longest `title`, in characters: room for any real label, not for a document.
pub const MAX_TITLE_CHARS: usize = 1024;
/// Longest artifact lifetime: ten years.
pub(crate) const MAX_EXPIRES_SECS: u64 = 3660 * 24 * 3600;

/// Why a graph (or the `lwr.yml` it came from) is not acceptable.
///
/// `Display` is one line: `file:line: job 'x': field 'y': what is wrong`, leaving out the parts
/// that do not apply. `file` is the name given to [`parse`](super::parse), or `graph` for
/// [`Graph::validate`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GraphError {
    /// The text is not YAML lwr can read.
    #[error("{}: YAML syntax error: {message}", at_col(file, line, column))]
    Yaml {
        file: String,
        line: Option<usize>,
        column: Option<usize>,
        message: String,
    },

    /// The same key twice in one mapping (for `jobs`, the same job twice).
    #[error("{}: duplicate key '{key}'{}", at(file, line), first_line.map(|l| format!(" (first on line {l})")).unwrap_or_default())]
    DuplicateKey {
        file: String,
        line: Option<usize>,
        key: String,
        first_line: Option<usize>,
    },

    /// A required field is absent (or empty, as in `run:`).
    #[error("{}: {}missing required field '{field}'{}", at(file, line), ctx(job, &None), missing_hint(field))]
    MissingField {
        file: String,
        line: Option<usize>,
        job: Option<String>,
        field: String,
    },

    /// `version` is not 1.
    #[error(
        "{}: unsupported version '{found}' (this lwr reads version 1)",
        at(file, line)
    )]
    UnsupportedVersion {
        file: String,
        line: Option<usize>,
        found: String,
    },

    /// A key lwr does not know, at the top level, in a job or in an artifact. The message
    /// lists the keys allowed there.
    #[error(
        "{}: {}unknown key '{key}'{} (expected one of {})",
        at(file, line),
        ctx(job, field),
        did_you_mean(key, allowed(job, field).iter().copied()),
        allowed(job, field).join(", ")
    )]
    UnknownKey {
        file: String,
        line: Option<usize>,
        job: Option<String>,
        /// The enclosing field, e.g. `artifacts[0]`; `None` for a job's own keys.
        field: Option<String>,
        key: String,
    },

    /// A value that is not acceptable: of the wrong YAML shape ("expected a list, found a
    /// mapping"), a bad duration, a negative retry count, an empty `run`, a bad env var name...
    #[error("{}: {}{message}", at(file, line), ctx(job, field))]
    InvalidValue {
        file: String,
        line: Option<usize>,
        job: Option<String>,
        field: Option<String>,
        message: String,
    },

    /// A job name that is empty, or normalizes to nothing (`"//"`).
    #[error(
        "{}: job name '{name}' is empty after normalization (use letters or digits)",
        at(file, line)
    )]
    EmptyName {
        file: String,
        line: Option<usize>,
        name: String,
    },

    /// In a submitted graph, a name that is not in normalized form.
    #[error(
        "{}: job name '{name}' is not normalized (expected '{normalized}')",
        at(file, line)
    )]
    UnnormalizedName {
        file: String,
        line: Option<usize>,
        name: String,
        normalized: String,
    },

    /// Two jobs with one name: `first` and `second` as written; equal when the very same name
    /// is given twice (in a submitted graph).
    #[error("{}: {}", at(file, line), duplicate_name(first, second, normalized))]
    DuplicateName {
        file: String,
        line: Option<usize>,
        first: String,
        second: String,
        normalized: String,
    },

    /// A matrix expansion produced a name another job (or expansion) already has. `first` and
    /// `second` are the jobs, as written, that produced `name`.
    #[error("{}: {}", at(file, line), collision(first, second, name))]
    NameCollision {
        file: String,
        line: Option<usize>,
        name: String,
        first: String,
        second: String,
    },

    /// A need that names no job of the graph.
    #[error(
        "{}: job '{job}': needs '{need}', which is not a job in this graph{}",
        at(file, line),
        suggestion.as_deref().map(|s| format!(" (did you mean '{s}'?)")).unwrap_or_default()
    )]
    UnknownNeed {
        file: String,
        line: Option<usize>,
        job: String,
        need: String,
        /// The job of the graph whose name `need` most likely misspells.
        suggestion: Option<String>,
    },

    /// A job that needs itself.
    #[error("{}: job '{job}': needs itself", at(file, line))]
    SelfNeed {
        file: String,
        line: Option<usize>,
        job: String,
    },

    /// The same need twice (submitted graphs; `parse` removes duplicates).
    #[error("{}: job '{job}': needs '{need}' more than once", at(file, line))]
    DuplicateNeed {
        file: String,
        line: Option<usize>,
        job: String,
        need: String,
    },

    /// Two artifacts of one job with the same name.
    #[error(
        "{}: job '{job}': artifact '{artifact}' is declared more than once",
        at(file, line)
    )]
    DuplicateArtifact {
        file: String,
        line: Option<usize>,
        job: String,
        artifact: String,
    },

    /// `needs` go round in a circle; `path` starts and ends with the same job.
    #[error("{file}: cycle in needs: {}", path.join(" -> "))]
    Cycle { file: String, path: Vec<String> },

    /// One job's matrix has more combinations than allowed.
    #[error(
        "{}: job '{job}': matrix has {combinations} combinations, more than the limit of {limit}",
        at(file, line)
    )]
    MatrixTooLarge {
        file: String,
        line: Option<usize>,
        job: String,
        combinations: usize,
        limit: usize,
    },

    /// The whole graph is over a size limit; `what` is `jobs` or `needs`.
    #[error(
        "{}: graph has more than {limit} {what} after matrix expansion",
        at(file, line)
    )]
    GraphTooLarge {
        file: String,
        line: Option<usize>,
        what: String,
        limit: usize,
    },

    /// The file itself is larger than lwr reads (checked before parsing).
    #[error(
        "{file}: the file is {bytes} bytes, more than lwr.yml's size limit of {} MiB ({limit} bytes)",
        limit >> 20
    )]
    FileTooLarge {
        file: String,
        bytes: usize,
        limit: usize,
    },
}

fn at(file: &str, line: &Option<usize>) -> String {
    match line {
        Some(line) => format!("{file}:{line}"),
        None => file.to_string(),
    }
}

fn at_col(file: &str, line: &Option<usize>, column: &Option<usize>) -> String {
    match (line, column) {
        (Some(line), Some(column)) => format!("{file}:{line}:{column}"),
        _ => at(file, line),
    }
}

/// `job 'a': field 'x': `, or the parts of it that apply.
fn ctx(job: &Option<String>, field: &Option<String>) -> String {
    let mut out = String::new();
    if let Some(job) = job {
        out.push_str(&format!("job '{job}': "));
    }
    if let Some(field) = field {
        out.push_str(&format!("field '{field}': "));
    }
    out
}

/// The keys of the format, by where they appear.
pub(crate) const TOP_KEYS: &[&str] = &["version", "jobs", "checkout"];
pub(crate) const JOB_KEYS: &[&str] = &[
    "run",
    "needs",
    "node",
    "artifacts",
    "retries",
    "timeout",
    "expires",
    "env",
    "matrix",
    "requires",
    "when",
    "prefer",
    "affinity_wait",
    "keep_workdir",
    "timestamps",
    "checkout",
    "title",
    "buildbot",
];
pub(crate) const BUILDBOT_KEYS: &[&str] = &["builder", "properties"];
pub(crate) const CHECKOUT_KEYS: &[&str] = &["depth", "submodules", "lfs", "path"];
pub(crate) const ARTIFACT_KEYS: &[&str] = &["name", "path", "kind", "optional"];

/// The keys allowed where an unknown key was found: unknown keys are only reported at the top
/// level, in a job, in a checkout and in an artifact.
fn allowed(job: &Option<String>, field: &Option<String>) -> &'static [&'static str] {
    match (job, field) {
        (_, Some(f)) if f == "checkout" => CHECKOUT_KEYS,
        (_, Some(f)) if f == "buildbot" => BUILDBOT_KEYS,
        (None, _) => TOP_KEYS,
        (Some(_), None) => JOB_KEYS,
        (Some(_), Some(_)) => ARTIFACT_KEYS,
    }
}

/// `: did you mean 'needs'?` when `word` looks like a misspelling of one of `known`.
pub(crate) fn did_you_mean<'k>(word: &str, known: impl IntoIterator<Item = &'k str>) -> String {
    crate::words::closest(word, known)
        .map(|k| format!(": did you mean '{k}'?"))
        .unwrap_or_default()
}

fn missing_hint(field: &str) -> &'static str {
    match field {
        "version" => " (add 'version: 1')",
        "jobs" => " (a mapping of job name to job)",
        "run" => " (the shell command to run)",
        _ => "",
    }
}

fn duplicate_name(first: &str, second: &str, normalized: &str) -> String {
    if first == second {
        format!("job '{first}' appears more than once")
    } else {
        format!("jobs '{first}' and '{second}' both normalize to '{normalized}'")
    }
}

fn collision(first: &str, second: &str, name: &str) -> String {
    if first == second {
        format!("job '{first}': matrix expands to '{name}' twice (duplicate matrix values?)")
    } else {
        format!(
            "jobs '{first}' and '{second}' both produce the job name '{name}' (matrix expansion)"
        )
    }
}

impl GraphError {
    /// The file name given to `parse` (`graph` for `Graph::validate`).
    pub fn file(&self) -> &str {
        use GraphError::*;
        match self {
            Yaml { file, .. }
            | DuplicateKey { file, .. }
            | MissingField { file, .. }
            | UnsupportedVersion { file, .. }
            | UnknownKey { file, .. }
            | InvalidValue { file, .. }
            | EmptyName { file, .. }
            | UnnormalizedName { file, .. }
            | DuplicateName { file, .. }
            | NameCollision { file, .. }
            | UnknownNeed { file, .. }
            | SelfNeed { file, .. }
            | DuplicateNeed { file, .. }
            | DuplicateArtifact { file, .. }
            | Cycle { file, .. }
            | MatrixTooLarge { file, .. }
            | GraphTooLarge { file, .. }
            | FileTooLarge { file, .. } => file,
        }
    }

    /// The 1-based line in the file, when known.
    pub fn line(&self) -> Option<usize> {
        use GraphError::*;
        match self {
            Yaml { line, .. }
            | DuplicateKey { line, .. }
            | MissingField { line, .. }
            | UnsupportedVersion { line, .. }
            | UnknownKey { line, .. }
            | InvalidValue { line, .. }
            | EmptyName { line, .. }
            | UnnormalizedName { line, .. }
            | DuplicateName { line, .. }
            | NameCollision { line, .. }
            | UnknownNeed { line, .. }
            | SelfNeed { line, .. }
            | DuplicateNeed { line, .. }
            | DuplicateArtifact { line, .. }
            | MatrixTooLarge { line, .. }
            | GraphTooLarge { line, .. } => *line,
            Cycle { .. } | FileTooLarge { .. } => None,
        }
    }

    /// The job at fault, when there is one.
    pub fn job(&self) -> Option<&str> {
        use GraphError::*;
        match self {
            MissingField { job, .. } | UnknownKey { job, .. } | InvalidValue { job, .. } => {
                job.as_deref()
            }
            UnknownNeed { job, .. }
            | SelfNeed { job, .. }
            | DuplicateNeed { job, .. }
            | DuplicateArtifact { job, .. }
            | MatrixTooLarge { job, .. } => Some(job),
            EmptyName { name, .. } | UnnormalizedName { name, .. } => Some(name),
            DuplicateName { second, .. } | NameCollision { second, .. } => Some(second),
            Cycle { path, .. } => path.first().map(String::as_str),
            Yaml { .. }
            | DuplicateKey { .. }
            | UnsupportedVersion { .. }
            | GraphTooLarge { .. }
            | FileTooLarge { .. } => None,
        }
    }

    /// The field at fault (`run`, `needs`, `artifacts[0]`...), when there is one: what an HTTP
    /// error body names.
    pub fn field(&self) -> Option<&str> {
        use GraphError::*;
        match self {
            MissingField { field, .. } => Some(field),
            UnknownKey { field, key, .. } => Some(field.as_deref().unwrap_or(key)),
            InvalidValue { field, .. } => field.as_deref(),
            UnsupportedVersion { .. } => Some("version"),
            EmptyName { .. } | UnnormalizedName { .. } | DuplicateName { .. } => Some("name"),
            NameCollision { .. } | MatrixTooLarge { .. } => Some("matrix"),
            UnknownNeed { .. } | SelfNeed { .. } | DuplicateNeed { .. } | Cycle { .. } => {
                Some("needs")
            }
            DuplicateArtifact { .. } => Some("artifacts"),
            GraphTooLarge { .. } => Some("jobs"),
            Yaml { .. } | DuplicateKey { .. } | FileTooLarge { .. } => None,
        }
    }
}

/// Where a parsed job came from, so that the shared checks can name lines. Parallel to
/// `Graph.jobs`; `Graph::validate` has none.
#[derive(Debug, Clone, Default)]
pub(crate) struct JobLines {
    pub job: Option<usize>,
    pub run: Option<usize>,
    pub timeout: Option<usize>,
    pub expires: Option<usize>,
    pub affinity_wait: Option<usize>,
    pub prefer: Option<usize>,
    pub when: Option<usize>,
    pub checkout: Option<usize>,
    pub buildbot: Option<usize>,
    /// Per need of the `JobSpec`: its line and the name as the file wrote it.
    pub needs: Vec<(Option<usize>, String)>,
    /// Per artifact of the `JobSpec`.
    pub artifacts: Vec<Option<usize>>,
}

impl Graph {
    /// Checks an already expanded graph, as the server receives it: names non-empty,
    /// normalized and unique; `run` non-empty; needs existing, not the job itself, not
    /// repeated, and acyclic; artifact names non-empty and unique per job; env var names
    /// valid; timeout in `1..=MAX_TIMEOUT_SECS`.
    pub fn validate(&self) -> Result<(), GraphError> {
        // A push with nothing to run is a mistake, as `parse` says for `jobs: {}`.
        if self.jobs.is_empty() {
            return Err(GraphError::InvalidValue {
                file: "graph".into(),
                line: None,
                job: None,
                field: Some("jobs".into()),
                message: "has no jobs; declare at least one".into(),
            });
        }
        check(self, "graph", &[])
    }

    /// The job with this (normalized) name.
    pub fn job(&self, name: &str) -> Option<&JobSpec> {
        self.jobs.iter().find(|j| j.name == name)
    }
}

/// What is wrong with `checkout.path`, if anything: it names a directory inside the job
/// dir, so it is relative and never climbs out (`..`).
pub fn checkout_path_problem(path: &str) -> Option<String> {
    let shown = show(path);
    if path.trim().is_empty() {
        return Some("path is empty; leave it out to check out into the job dir".into());
    }
    if path.chars().any(char::is_control) {
        return Some(format!("path '{shown}' contains a control character"));
    }
    if path.starts_with('/') {
        return Some(format!(
            "path '{shown}' is absolute; give a directory inside the job dir, e.g. src"
        ));
    }
    if path.split('/').any(|part| part == "..") {
        return Some(format!("path '{shown}' leaves the job dir (..)"));
    }
    if path.split('/').all(|part| part.is_empty() || part == ".") {
        return Some(format!(
            "path '{shown}' is the job dir itself; leave it out for that"
        ));
    }
    None
}

/// The checks shared by `parse` and `Graph::validate`; `lines` may be shorter than the graph
/// (empty for `validate`), missing lines are `None`.
pub(crate) fn check(graph: &Graph, file: &str, lines: &[JobLines]) -> Result<(), GraphError> {
    if graph.jobs.len() > MAX_JOBS {
        let (what, limit) = ("jobs".to_string(), MAX_JOBS);
        return Err(GraphError::GraphTooLarge {
            file: file.into(),
            line: None,
            what,
            limit,
        });
    }
    let index = check_names(graph, file, lines)?;
    for (i, job) in graph.jobs.iter().enumerate() {
        check_job(job, file, lines.get(i))?;
    }
    let adjacency = resolve_needs(graph, file, lines, &index)?;
    match find_cycle(&adjacency) {
        Some(path) => Err(GraphError::Cycle {
            file: file.into(),
            path: path
                .into_iter()
                .map(|i| graph.jobs[i].name.clone())
                .collect(),
        }),
        None => Ok(()),
    }
}

/// Names non-empty, normalized and unique; returns name → index.
fn check_names<'g>(
    graph: &'g Graph,
    file: &str,
    lines: &[JobLines],
) -> Result<HashMap<&'g str, usize>, GraphError> {
    let mut index = HashMap::with_capacity(graph.jobs.len());
    for (i, job) in graph.jobs.iter().enumerate() {
        let line = lines.get(i).and_then(|l| l.job);
        let name = job.name.clone();
        let normalized = normalize_name(&job.name);
        if normalized.is_empty() {
            return Err(GraphError::EmptyName {
                file: file.into(),
                line,
                name,
            });
        }
        if crate::text::has_unsafe(&job.name) {
            let message = format!(
                "job name '{}' contains a control character or a direction override",
                show(&job.name)
            );
            let field = Some("name".to_string());
            return Err(GraphError::InvalidValue {
                file: file.into(),
                line,
                job: None,
                field,
                message,
            });
        }
        if normalized != job.name {
            return Err(GraphError::UnnormalizedName {
                file: file.into(),
                line,
                name,
                normalized,
            });
        }
        if index.insert(job.name.as_str(), i).is_some() {
            let (first, second) = (name.clone(), name);
            return Err(GraphError::DuplicateName {
                file: file.into(),
                line,
                first,
                second,
                normalized,
            });
        }
    }
    Ok(index)
}

/// A Buildbot job: a builder, no command, no artifacts of its own (its files stay on
/// Buildbot), no property lwr sets itself. `Err((field, message))`.
fn check_buildbot(job: &JobSpec, bb: &BuildbotJob) -> Result<(), (String, String)> {
    if bb.builder.trim().is_empty() {
        let message = "is empty; name the Buildbot builder".to_string();
        return Err(("buildbot.builder".into(), message));
    }
    if !job.run.is_empty() {
        let message =
            "a job has either run (a shell command) or buildbot (a build on Buildbot), not both";
        return Err(("buildbot".into(), message.into()));
    }
    if !job.artifacts.is_empty() {
        let message = "a Buildbot job declares no artifacts: its files stay on Buildbot \
                       (move it to run: to publish them through lwr)";
        return Err(("artifacts".into(), message.into()));
    }
    for key in bb.properties.keys() {
        if key.trim().is_empty() {
            return Err(("buildbot.properties".into(), "has an empty name".into()));
        }
        if RESERVED_PROPERTIES.contains(&key.as_str()) {
            let message = format!("'{}' is set by lwr itself; choose another name", show(key));
            return Err((format!("buildbot.properties.{}", show(key)), message));
        }
    }
    Ok(())
}

/// The checks that concern one job alone.
fn check_job(job: &JobSpec, file: &str, lines: Option<&JobLines>) -> Result<(), GraphError> {
    let invalid = |line: Option<usize>, field: String, message: String| GraphError::InvalidValue {
        file: file.into(),
        line,
        job: Some(job.name.clone()),
        field: Some(field),
        message,
    };
    let job_line = lines.and_then(|l| l.job);
    if let Some(problem) = job.title.as_deref().and_then(title_problem) {
        return Err(invalid(job_line, "title".into(), problem));
    }
    if let Some(bb) = &job.buildbot {
        let line = lines.and_then(|l| l.buildbot).or(job_line);
        check_buildbot(job, bb).map_err(|(field, message)| invalid(line, field, message))?;
    } else if job.run.trim().is_empty() {
        let line = lines.and_then(|l| l.run).or(job_line);
        return Err(invalid(
            line,
            "run".into(),
            "is empty; give the shell command to run".into(),
        ));
    }
    if job.timeout_secs == 0 || job.timeout_secs > MAX_TIMEOUT_SECS {
        let line = lines.and_then(|l| l.timeout).or(job_line);
        let message = format!("must be between 1 second and {MAX_TIMEOUT_SECS} seconds (366 days)");
        return Err(invalid(line, "timeout".into(), message));
    }
    if let Some(expires) = job.expires_secs
        && (expires == 0 || expires > MAX_EXPIRES_SECS)
    {
        let line = lines.and_then(|l| l.expires).or(job_line);
        let message =
            format!("must be between 1 second and {MAX_EXPIRES_SECS} seconds (3660 days)");
        return Err(invalid(line, "expires".into(), message));
    }
    if let Some(wait) = job.affinity_wait_secs
        && wait > MAX_AFFINITY_WAIT_SECS
    {
        let line = lines.and_then(|l| l.affinity_wait).or(job_line);
        let message = format!("must be at most {MAX_AFFINITY_WAIT_SECS} seconds (1 day)");
        return Err(invalid(line, "affinity_wait".into(), message));
    }
    let checkout_line = || lines.and_then(|l| l.checkout).or(job_line);
    if let Some(depth) = job.checkout.depth
        && !(1..=MAX_CHECKOUT_DEPTH).contains(&depth)
    {
        let message = format!(
            "depth must be between 1 and {MAX_CHECKOUT_DEPTH}; leave it out for all history"
        );
        return Err(invalid(checkout_line(), "checkout.depth".into(), message));
    }
    if let Some(problem) = job.checkout.path.as_deref().and_then(checkout_path_problem) {
        return Err(invalid(checkout_line(), "checkout.path".into(), problem));
    }
    for (i, p) in job.prefer.iter().enumerate() {
        if job.prefer[..i].contains(p) {
            let line = lines.and_then(|l| l.prefer).or(job_line);
            let message = format!("'{}' is listed twice", p.as_str());
            return Err(invalid(line, "prefer".into(), message));
        }
    }
    for key in job.env.keys() {
        if !is_env_name(key) {
            return Err(invalid(
                job_line,
                format!("env.{}", show(key)),
                env_name_message(&show(key)),
            ));
        }
    }
    if let Some(when) = &job.when
        && (when.changed.is_empty() || when.changed.iter().any(|p| p.trim().is_empty()))
    {
        let message = "needs at least one non-empty path pattern".to_string();
        return Err(invalid(job_line, "when.changed".into(), message));
    }
    if let Some(when) = &job.when {
        for (i, pattern) in when.changed.iter().enumerate() {
            if let Err(message) = glob::check(pattern.trim_start_matches('/')) {
                let line = lines.and_then(|l| l.when).or(job_line);
                return Err(invalid(line, format!("when.changed[{i}]"), message));
            }
        }
    }
    let mut seen = HashSet::new();
    for (i, artifact) in job.artifacts.iter().enumerate() {
        let line = lines
            .and_then(|l| l.artifacts.get(i).copied().flatten())
            .or(job_line);
        for (what, value) in [
            ("name", &artifact.name),
            ("path", &artifact.path),
            ("kind", &artifact.kind),
        ] {
            if value.trim().is_empty() {
                return Err(invalid(
                    line,
                    format!("artifacts[{i}].{what}"),
                    "is empty".into(),
                ));
            }
        }
        let field = |what: &str| format!("artifacts[{i}].{what}");
        if let Err(message) = manifest::check_artifact_name(&artifact.name) {
            return Err(invalid(line, field("name"), message));
        }
        if artifact.name == manifest::LOG_ARTIFACT {
            let message = "'log' is reserved for the run's log; choose another name".into();
            return Err(invalid(line, field("name"), message));
        }
        if let Err(message) =
            manifest::check_artifact_path(&artifact.path).and_then(|()| glob::check(&artifact.path))
        {
            return Err(invalid(line, field("path"), message));
        }
        if !manifest::valid_kind(&artifact.kind) {
            let message = format!(
                "'{}' is not a kind: use one of {} or a custom word of a-z, 0-9, '-', '_', '.'",
                show(&artifact.kind),
                manifest::KNOWN_KINDS.join(", ")
            );
            return Err(invalid(line, field("kind"), message));
        }
        if !seen.insert(artifact.name.as_str()) {
            return Err(GraphError::DuplicateArtifact {
                file: file.into(),
                line,
                job: job.name.clone(),
                artifact: show(&artifact.name),
            });
        }
    }
    Ok(())
}

/// What is wrong with a `title`, if anything: it is one line of text for people.
pub fn title_problem(title: &str) -> Option<String> {
    if title.trim().is_empty() {
        return Some("is empty; leave it out to show the job's name".into());
    }
    if title.chars().any(char::is_control) {
        return Some(format!(
            "'{}' contains a control character (a title is one line)",
            show(title)
        ));
    }
    let chars = title.chars().count();
    if chars > MAX_TITLE_CHARS {
        return Some(format!(
            "is {chars} characters long, more than the limit of {MAX_TITLE_CHARS}"
        ));
    }
    None
}

/// True for `[A-Za-z_][A-Za-z0-9_]*`.
pub(crate) fn is_env_name(key: &str) -> bool {
    let mut chars = key.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

pub(crate) fn env_name_message(key: &str) -> String {
    format!(
        "'{key}' is not a valid environment variable name (use letters, digits and _, not starting with a digit)"
    )
}

/// Needs → adjacency lists of job indices, reporting unknown, self and duplicate needs.
fn resolve_needs(
    graph: &Graph,
    file: &str,
    lines: &[JobLines],
    index: &HashMap<&str, usize>,
) -> Result<Vec<Vec<usize>>, GraphError> {
    let total: usize = graph.jobs.iter().map(|j| j.needs.len()).sum();
    if total > MAX_NEEDS {
        let (what, limit) = ("needs".to_string(), MAX_NEEDS);
        return Err(GraphError::GraphTooLarge {
            file: file.into(),
            line: None,
            what,
            limit,
        });
    }
    let mut adjacency = Vec::with_capacity(graph.jobs.len());
    for (i, job) in graph.jobs.iter().enumerate() {
        let mut edges = Vec::with_capacity(job.needs.len());
        let mut seen = HashSet::with_capacity(job.needs.len());
        for (k, need) in job.needs.iter().enumerate() {
            let source = lines.get(i).and_then(|l| l.needs.get(k));
            let line = source
                .and_then(|s| s.0)
                .or(lines.get(i).and_then(|l| l.job));
            let (file, job) = (file.to_string(), job.name.clone());
            let Some(&target) = index.get(need.as_str()) else {
                let suggestion =
                    crate::words::closest(need, index.keys().copied()).map(str::to_string);
                let need = show(source.map_or(need, |s| &s.1));
                return Err(GraphError::UnknownNeed {
                    file,
                    line,
                    job,
                    need,
                    suggestion,
                });
            };
            if target == i {
                return Err(GraphError::SelfNeed { file, line, job });
            }
            if !seen.insert(target) {
                return Err(GraphError::DuplicateNeed {
                    file,
                    line,
                    job,
                    need: show(need),
                });
            }
            edges.push(target);
        }
        adjacency.push(edges);
    }
    Ok(adjacency)
}

/// A cycle as job indices (first == last), if there is one. Iterative depth-first search,
/// linear in jobs + needs, so a 100,000-job chain cannot overflow the stack.
pub(crate) fn find_cycle(adjacency: &[Vec<usize>]) -> Option<Vec<usize>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    let mut mark = vec![Mark::New; adjacency.len()];
    // The current path: (job, index of its next need to visit).
    let mut path: Vec<(usize, usize)> = Vec::new();
    for start in 0..adjacency.len() {
        if mark[start] != Mark::New {
            continue;
        }
        mark[start] = Mark::OnPath;
        path.push((start, 0));
        while let Some((node, next)) = path.last_mut() {
            let node = *node;
            let Some(&child) = adjacency[node].get(*next) else {
                mark[node] = Mark::Done;
                path.pop();
                continue;
            };
            *next += 1;
            match mark.get(child).copied() {
                Some(Mark::New) => {
                    mark[child] = Mark::OnPath;
                    path.push((child, 0));
                }
                Some(Mark::OnPath) => {
                    let from = path.iter().position(|&(n, _)| n == child).unwrap_or(0);
                    let mut cycle: Vec<usize> = path[from..].iter().map(|&(n, _)| n).collect();
                    cycle.push(child);
                    return Some(cycle);
                }
                Some(Mark::Done) | None => {}
            }
        }
    }
    None
}

/// User text fit for a one-line message: control characters escaped, long text cut.
pub(crate) fn show(s: &str) -> String {
    const MAX: usize = 100;
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i == MAX {
            out.push_str("...");
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::{ArtifactDecl, DEFAULT_RETRIES, DEFAULT_TIMEOUT_SECS};

    fn job(name: &str, needs: &[&str]) -> JobSpec {
        JobSpec {
            name: name.into(),
            title: None,
            run: "true".into(),
            needs: needs.iter().map(|n| n.to_string()).collect(),
            node: Default::default(),
            artifacts: vec![],
            retries: DEFAULT_RETRIES,
            timeout_secs: DEFAULT_TIMEOUT_SECS,
            expires_secs: None,
            env: Default::default(),
            requires: Default::default(),
            when: None,
            prefer: Vec::new(),
            affinity_wait_secs: None,
            keep_workdir: false,
            timestamps: false,
            checkout: Default::default(),
            buildbot: None,
        }
    }

    fn graph(jobs: Vec<JobSpec>) -> Graph {
        Graph { jobs }
    }

    #[test]
    fn a_good_graph_validates() {
        let g = graph(vec![job("a", &[]), job("b", &["a"]), job("c", &["a", "b"])]);
        assert_eq!(g.validate(), Ok(()));
        assert_eq!(
            g.job("b").map(|j| j.needs.clone()),
            Some(vec!["a".to_string()])
        );
        assert!(g.job("zz").is_none());
        let empty = Graph::default().validate().unwrap_err();
        assert!(empty.to_string().contains("has no jobs"), "{empty}");
    }

    #[test]
    fn unnormalized_empty_and_duplicate_names_are_rejected() {
        let err = graph(vec![job("Test Linux", &[])]).validate().unwrap_err();
        assert_eq!(
            err.to_string(),
            "graph: job name 'Test Linux' is not normalized (expected 'test-linux')"
        );
        assert_eq!(err.field(), Some("name"));
        let err = graph(vec![job("", &[])]).validate().unwrap_err();
        assert!(matches!(err, GraphError::EmptyName { .. }), "{err}");
        let err = graph(vec![job("a", &[]), job("a", &[])])
            .validate()
            .unwrap_err();
        assert_eq!(err.to_string(), "graph: job 'a' appears more than once");
    }

    #[test]
    fn needs_must_exist_differ_and_not_repeat() {
        let err = graph(vec![job("a", &["nosuchjob"])])
            .validate()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "graph: job 'a': needs 'nosuchjob', which is not a job in this graph"
        );
        assert_eq!(
            (err.job(), err.line(), err.file()),
            (Some("a"), None, "graph")
        );
        let err = graph(vec![job("a", &["a"])]).validate().unwrap_err();
        assert_eq!(err.to_string(), "graph: job 'a': needs itself");
        let err = graph(vec![job("a", &[]), job("b", &["a", "a"])])
            .validate()
            .unwrap_err();
        assert_eq!(err.to_string(), "graph: job 'b': needs 'a' more than once");
    }

    #[test]
    fn cycles_are_reported_with_their_path() {
        let err = graph(vec![job("a", &["b"]), job("b", &["a"])])
            .validate()
            .unwrap_err();
        assert_eq!(err.to_string(), "graph: cycle in needs: a -> b -> a");
        let g = graph(vec![
            job("x", &[]),
            job("a", &["x", "b"]),
            job("b", &["c"]),
            job("c", &["a"]),
        ]);
        let err = g.validate().unwrap_err();
        assert_eq!(err.to_string(), "graph: cycle in needs: a -> b -> c -> a");
        assert_eq!(err.field(), Some("needs"));
    }

    #[test]
    fn diamonds_are_not_cycles() {
        let g = graph(vec![
            job("d", &["b", "c"]),
            job("b", &["a"]),
            job("c", &["a"]),
            job("a", &[]),
        ]);
        assert_eq!(g.validate(), Ok(()));
    }

    #[test]
    fn long_chains_do_not_overflow_the_stack() {
        let n = 50_000;
        // j0 needs the last job, every other job the one before it.
        let jobs: Vec<JobSpec> = (0..n)
            .map(|i| job(&format!("j{i}"), &[&format!("j{}", (i + n - 1) % n)]))
            .collect();
        let err = graph(jobs).validate().unwrap_err();
        match err {
            GraphError::Cycle { path, .. } => assert_eq!(path.len(), n + 1),
            other => panic!("expected a cycle, got {other}"),
        }
    }

    #[test]
    fn job_fields_are_checked() {
        let mut a = job("a", &[]);
        a.run = "  \n".into();
        let err = graph(vec![a]).validate().unwrap_err();
        assert_eq!(
            err.to_string(),
            "graph: job 'a': field 'run': is empty; give the shell command to run"
        );
        let mut a = job("a", &[]);
        a.timeout_secs = 0;
        assert_eq!(
            graph(vec![a]).validate().unwrap_err().field(),
            Some("timeout")
        );
        let mut a = job("a", &[]);
        a.env.insert("1BAD".into(), "x".into());
        assert_eq!(
            graph(vec![a]).validate().unwrap_err().field(),
            Some("env.1BAD")
        );
    }

    #[test]
    fn artifacts_need_unique_nonempty_names() {
        let artifact = |name: &str| ArtifactDecl {
            name: name.into(),
            path: "out/*".into(),
            kind: "other".into(),
            optional: false,
        };
        let mut a = job("a", &[]);
        a.artifacts = vec![artifact("x"), artifact("")];
        let err = graph(vec![a]).validate().unwrap_err();
        assert_eq!(err.field(), Some("artifacts[1].name"));
        let mut a = job("a", &[]);
        a.artifacts = vec![artifact("x"), artifact("x")];
        let err = graph(vec![a]).validate().unwrap_err();
        assert_eq!(
            err.to_string(),
            "graph: job 'a': artifact 'x' is declared more than once"
        );
    }

    #[test]
    fn messages_stay_on_one_line() {
        let mut env = job("a", &[]);
        env.env.insert("A\nB".into(), "x".into());
        let graphs = [
            graph(vec![job("a\nb", &[])]),
            graph(vec![job("a", &["x\ny"])]),
            graph(vec![env]),
        ];
        for g in graphs {
            let err = g.validate().unwrap_err();
            assert_eq!(err.to_string().lines().count(), 1, "{err}");
        }
    }

    #[test]
    fn env_names() {
        for good in ["A", "_x", "PATH_2", "a1"] {
            assert!(is_env_name(good), "{good}");
        }
        for bad in ["", "1A", "A-B", "A B", "é"] {
            assert!(!is_env_name(bad), "{bad}");
        }
    }
}
