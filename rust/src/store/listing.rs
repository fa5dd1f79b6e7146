//! Looking at executions from outside a run: listing and searching them (newest first, a page
//! at a time), counting them, and one execution's history (its journal, with the time each
//! record was stored).
//!
//! These reads serve operators (the proxy's listing routes, `plait list`, the dashboard), not
//! the engine: nothing here is on a run's path.

use super::{Execution, Status, Timer};

/// The most executions one [`super::Store::list`] call answers.
pub const MAX_LIMIT: usize = 1000;

/// Which executions a listing or a count takes. Every condition given must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only executions of this workflow.
    pub workflow: Option<String>,
    /// Only executions with this status.
    pub status: Option<Status>,
    /// Only executions whose stored result starts with one of these byte strings (none: any
    /// result, or none). The store does not decode results: the caller, which encodes them,
    /// says what an outcome's encoding starts with (a success, a failure, an interruption).
    pub result_prefixes: Vec<Vec<u8>>,
    /// Only executions created at or after this instant (ms since the Unix epoch).
    pub created_from_ms: Option<u64>,
    /// Only executions created before this instant (ms since the Unix epoch).
    pub created_before_ms: Option<u64>,
}

impl Filter {
    /// Whether a record with these fields passes the filter.
    pub fn matches(
        &self,
        workflow: &str,
        status: Status,
        result: Option<&[u8]>,
        created_ms: u64,
    ) -> bool {
        self.workflow.as_deref().is_none_or(|w| w == workflow)
            && self.status.is_none_or(|s| s == status)
            && (self.result_prefixes.is_empty()
                || result.is_some_and(|r| self.result_prefixes.iter().any(|p| r.starts_with(p))))
            && self.created_from_ms.is_none_or(|from| created_ms >= from)
            && self
                .created_before_ms
                .is_none_or(|before| created_ms < before)
    }

    /// Whether no record a database could hold passes: a text with a NUL character (which no
    /// store keeps), or an empty time range.
    pub fn matches_nothing(&self) -> bool {
        self.workflow.as_deref().is_some_and(|w| w.contains('\0'))
            || matches!(
                (self.created_from_ms, self.created_before_ms),
                (Some(from), Some(before)) if from >= before
            )
    }
}

/// Where a listing stopped: the position of the last execution it answered. Executions are
/// listed by creation time, newest first, ties broken by the order the store took them in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cursor {
    /// The last execution's creation time.
    pub created_ms: u64,
    /// The last execution's number: the order the store took it in.
    pub no: u64,
}

/// An execution as a listing shows it: its record without the payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    /// The execution's id.
    pub id: String,
    /// The workflow's name.
    pub workflow: String,
    /// The execution that started this one, if any.
    pub parent: Option<String>,
    /// Where it stands.
    pub status: Status,
    /// The encoded result (see [`Execution::result`]).
    pub result: Option<Vec<u8>>,
    /// Whether an interrupt was requested.
    pub interrupted: bool,
    /// When it was created (ms since the Unix epoch).
    pub created_ms: u64,
    /// When its record last changed: its status, result or interrupt flag.
    pub updated_ms: u64,
    /// Its number: the order the store took it in.
    pub no: u64,
}

impl Listed {
    /// The listing's position at this execution.
    pub fn cursor(&self) -> Cursor {
        Cursor {
            created_ms: self.created_ms,
            no: self.no,
        }
    }
}

/// One page of a listing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Page {
    /// The executions, newest first.
    pub executions: Vec<Listed>,
    /// Where to go on from (`after` of the next call); `None` when nothing is left.
    pub next: Option<Cursor>,
}

impl Page {
    /// The page of `limit` from `rows`, which hold up to `limit + 1` in listing order: one more
    /// than asked for says that there is a next page.
    pub fn of(mut rows: Vec<Listed>, limit: usize) -> Self {
        let more = rows.len() > limit;
        rows.truncate(limit);
        let next = if more {
            rows.last().map(Listed::cursor)
        } else {
            None
        };
        Self {
            executions: rows,
            next,
        }
    }
}

/// A step result with the time it was stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// The step's key within the execution (name, occurrence and attempt).
    pub key: String,
    /// The step's position in the run's call order.
    pub seq: u32,
    /// The encoded exit of the step.
    pub value: Vec<u8>,
    /// When it was stored (ms since the Unix epoch); `None` for a step stored before the
    /// store recorded times.
    pub at_ms: Option<u64>,
}

/// A deferred's result with the time it was stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeferredAt {
    /// The deferred's name.
    pub name: String,
    /// The encoded exit.
    pub value: Vec<u8>,
    /// When it was stored, as [`Step::at_ms`].
    pub at_ms: Option<u64>,
}

/// One execution and everything its journal holds, with times, read consistently.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct History {
    /// The execution's id.
    pub id: String,
    /// Its record.
    pub execution: Execution,
    /// When it was created (ms since the Unix epoch).
    pub created_ms: u64,
    /// When its record last changed.
    pub updated_ms: u64,
    /// Its step results, in the order they were stored.
    pub steps: Vec<Step>,
    /// Its deferred results, in the order they were stored.
    pub deferreds: Vec<DeferredAt>,
    /// Its timers still to fire, earliest first.
    pub timers: Vec<Timer>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(no: u64, created_ms: u64) -> Listed {
        Listed {
            id: format!("e{no}"),
            workflow: "W".into(),
            parent: None,
            status: Status::Running,
            result: None,
            interrupted: false,
            created_ms,
            updated_ms: created_ms,
            no,
        }
    }

    #[test]
    fn a_page_says_where_to_go_on_only_when_more_is_left() {
        let rows = vec![listed(3, 30), listed(2, 20), listed(1, 10)];
        let page = Page::of(rows.clone(), 2);
        assert_eq!(page.executions.len(), 2);
        assert_eq!(
            page.next,
            Some(Cursor {
                created_ms: 20,
                no: 2
            })
        );
        assert_eq!(Page::of(rows.clone(), 3).next, None);
        assert_eq!(Page::of(rows, 5).executions.len(), 3);
    }

    #[test]
    fn a_filter_holds_every_condition_given() {
        let mut filter = Filter::default();
        assert!(filter.matches("W", Status::Complete, None, 5));
        filter.result_prefixes = vec![b"ok".to_vec(), b"fine".to_vec()];
        assert!(!filter.matches("W", Status::Complete, None, 5));
        assert!(filter.matches("W", Status::Complete, Some(b"fine!"), 5));
        assert!(!filter.matches("W", Status::Complete, Some(b"bad"), 5));
        filter.result_prefixes.clear();
        filter.workflow = Some("V".into());
        assert!(!filter.matches("W", Status::Complete, None, 5));
        filter.workflow = None;
        filter.status = Some(Status::Suspended);
        assert!(!filter.matches("W", Status::Complete, None, 5));
        filter.status = None;
        filter.created_from_ms = Some(5);
        filter.created_before_ms = Some(6);
        assert!(filter.matches("W", Status::Complete, None, 5));
        assert!(!filter.matches("W", Status::Complete, None, 6));
        assert!(!filter.matches("W", Status::Complete, None, 4));
        assert!(!filter.matches_nothing());
        filter.created_before_ms = Some(5);
        assert!(filter.matches_nothing());
        let nul = Filter {
            workflow: Some("a\0b".into()),
            ..Filter::default()
        };
        assert!(nul.matches_nothing());
    }
}
