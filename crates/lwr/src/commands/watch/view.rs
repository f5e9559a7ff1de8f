//! How a watched graph is shown: on a terminal, a block of its jobs redrawn in place
//! (running jobs with their elapsed time) with failures printed above it as they happen;
//! elsewhere (a CI log, a file), one line per change, never redrawn.

use std::time::Duration;

use console::{Term, style};
use lwr_model::JobState;
use lwr_model::api::{GraphInfo, JobInfo};

use super::changes::Change;
use crate::output::{duration, span};

/// Longest name padded to: longer names just push their line's text right.
const NAME_WIDTH_CAP: usize = 40;

pub enum View {
    Lines(Lines),
    Live(Box<Live>),
}

impl View {
    /// A live view when standard output is a terminal, else lines.
    pub fn new() -> View {
        let term = Term::stdout();
        match term.is_term() {
            true => View::Live(Box::new(Live {
                term,
                drawn: 0,
                info: None,
                jobs: Vec::new(),
            })),
            false => View::Lines(Lines { width: 0 }),
        }
    }

    /// A line that stays (above the live block on a terminal).
    pub fn note(&mut self, text: &str) {
        match self {
            View::Lines(_) => outln!("{text}"),
            View::Live(live) => live.above(&[text.to_string()]),
        }
    }

    /// A fresh look at the graph and its jobs, with what changed since the last one.
    pub fn update(&mut self, info: &GraphInfo, jobs: &[JobInfo], changes: &[Change]) {
        match self {
            View::Lines(lines) => {
                lines.width = name_width(jobs);
                for c in changes {
                    outln!("{}", lines.line(c));
                }
            }
            View::Live(live) => {
                live.info = Some(info.clone());
                live.jobs = jobs.to_vec();
                // Failures stay in the scrollback; the block shows the rest as it is now.
                let width = name_width(jobs);
                let kept: Vec<String> = changes
                    .iter()
                    .filter(|c| c.is_failure())
                    .map(|c| format!("{} {}", style("✗").red().bold(), describe(c, width)))
                    .collect();
                live.above(&kept);
            }
        }
    }

    /// Redraws the live block (its times move on); nothing without a terminal.
    pub fn tick(&mut self) {
        if let View::Live(live) = self {
            live.redraw();
        }
    }

    pub fn is_live(&self) -> bool {
        matches!(self, View::Live(_))
    }

    /// Leaves the block as it last was and moves below it, for the summary.
    pub fn finish(&mut self) {
        if let View::Live(live) = self {
            live.redraw();
            live.drawn = 0;
        }
    }
}

/// One line per change: `NAME  what happened`, names padded to the graph's longest.
pub struct Lines {
    width: usize,
}

impl Lines {
    fn line(&self, change: &Change) -> String {
        describe(change, self.width)
    }
}

fn name_width(jobs: &[JobInfo]) -> usize {
    jobs.iter()
        .map(|j| j.name.chars().count())
        .max()
        .unwrap_or(0)
        .min(NAME_WIDTH_CAP)
}

/// `a      succeeded in 1.2s`, `c      failed in 0.1s: exit code 4`, ...
pub fn describe(change: &Change, width: usize) -> String {
    let what = match change {
        Change::Started { node, run, .. } => match run {
            1 => format!("running on {node}"),
            n => format!("running on {node} (run {n})"),
        },
        Change::Ended {
            state,
            took,
            reason,
            ..
        } => {
            let mut s = state.as_str().to_string();
            if let Some(t) = took {
                s.push_str(&format!(" in {}", duration(*t)));
            }
            if let Some(r) = reason {
                s.push_str(&format!(": {r}"));
            }
            s
        }
        Change::Retrying { reason, .. } => match reason {
            Some(r) => format!("pending again: {r}"),
            None => "pending again".into(),
        },
        Change::CannotStart { why, .. } => format!("cannot start: {why}"),
    };
    format!("{:<width$}  {what}", change.name())
}

/// The block redrawn in place on a terminal.
pub struct Live {
    term: Term,
    /// Lines of the block now on the screen.
    drawn: usize,
    info: Option<GraphInfo>,
    jobs: Vec<JobInfo>,
}

impl Live {
    /// Prints `lines` where the block was, then the block again below them.
    fn above(&mut self, lines: &[String]) {
        if lines.is_empty() {
            return;
        }
        let _ = self.term.clear_last_lines(self.drawn);
        self.drawn = 0;
        let width = self.width();
        for line in lines {
            let _ = self
                .term
                .write_line(&console::truncate_str(line, width, "…"));
        }
        self.redraw();
    }

    fn width(&self) -> usize {
        usize::from(self.term.size().1).saturating_sub(1).max(20)
    }

    fn redraw(&mut self) {
        let block = self.block();
        let width = self.width();
        let _ = self.term.clear_last_lines(self.drawn);
        for line in &block {
            // Never wider than the terminal: a wrapped line would break the next redraw.
            let _ = self
                .term
                .write_line(&console::truncate_str(line, width, "…"));
        }
        self.drawn = block.len();
        let _ = self.term.flush();
    }

    /// The graph's line, then a line per job (the interesting ones when they are too many
    /// for the screen).
    fn block(&self) -> Vec<String> {
        let Some(info) = &self.info else {
            return Vec::new();
        };
        let c = &info.counts;
        let done = c.total() - c.pending - c.running;
        let took = span(
            info.started_at.as_deref().or(Some(&info.created_at)),
            info.finished_at.as_deref(),
        )
        .unwrap_or(Duration::ZERO);
        let mut head = format!(
            "graph {}: {done}/{} done, {} running",
            info.id,
            c.total(),
            c.running
        );
        for (n, word) in [
            (c.failed, "failed"),
            (c.exception, "exception"),
            (c.blocked, "blocked"),
            (c.cancelled, "cancelled"),
        ] {
            if n > 0 {
                head.push_str(&format!(", {n} {word}"));
            }
        }
        head.push_str(&format!("  [{}]", duration(took)));
        let mut lines = vec![style(head).bold().to_string()];
        let room = usize::from(self.term.size().0).saturating_sub(3).max(3);
        let width = name_width(&self.jobs);
        let shown: Vec<&JobInfo> = if self.jobs.len() <= room {
            self.jobs.iter().collect()
        } else {
            let mut busy: Vec<&JobInfo> = self
                .jobs
                .iter()
                .filter(|j| j.state == JobState::Running || j.cannot_start.is_some())
                .collect();
            busy.truncate(room - 1);
            busy
        };
        for job in &shown {
            lines.push(job_line(job, width));
        }
        if shown.len() < self.jobs.len() {
            lines.push(format!(
                "  … and {} more ({done} done, {} waiting)",
                self.jobs.len() - shown.len(),
                c.pending
            ));
        }
        lines
    }
}

/// `  ● build   running 12s on dev-1`.
fn job_line(job: &JobInfo, width: usize) -> String {
    let took = || span(job.started_at.as_deref(), job.finished_at.as_deref());
    let (mark, what) = match job.state {
        JobState::Running => (
            style("●").yellow(),
            format!(
                "running {} on {}",
                duration(took().unwrap_or_default()),
                job.node.as_deref().unwrap_or("?")
            ),
        ),
        JobState::Pending => (
            style("·").dim(),
            match (&job.cannot_start, &job.reason) {
                (Some(why), _) => format!("cannot start: {why}"),
                (None, Some(r)) => format!("pending: {r}"),
                (None, None) => "pending".into(),
            },
        ),
        JobState::Succeeded => (
            style("✓").green(),
            format!("succeeded in {}", duration(took().unwrap_or_default())),
        ),
        state => (
            match state {
                JobState::Failed | JobState::Exception => style("✗").red(),
                _ => style("-").dim(),
            },
            match &job.reason {
                Some(r) => format!("{state}: {r}"),
                None => state.to_string(),
            },
        ),
    };
    format!("  {mark} {:<width$}  {what}", job.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_is_one_line_with_the_name_padded() {
        let ended = Change::Ended {
            name: "c".into(),
            state: JobState::Failed,
            took: Some(Duration::from_millis(120)),
            reason: Some("exit code 4".into()),
        };
        assert_eq!(describe(&ended, 5), "c      failed in 0.1s: exit code 4");
        let started = Change::Started {
            name: "build".into(),
            node: "n1".into(),
            run: 2,
        };
        assert_eq!(describe(&started, 3), "build  running on n1 (run 2)");
        let stuck = Change::CannotStart {
            name: "x".into(),
            why: "no node matches: os=plan9".into(),
        };
        assert_eq!(
            describe(&stuck, 1),
            "x  cannot start: no node matches: os=plan9"
        );
        let blocked = Change::Ended {
            name: "d".into(),
            state: JobState::Blocked,
            took: None,
            reason: None,
        };
        assert_eq!(describe(&blocked, 1), "d  blocked");
    }
}
