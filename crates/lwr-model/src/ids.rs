//! Typed ids, instants and durations.
//!
//! Every id in lwr is a database integer, and every time is milliseconds since the epoch; as
//! bare `i64`s, `claim(node, max, now, lease)` would compile with its arguments swapped. These
//! newtypes are `#[serde(transparent)]`, so the wire format and the v1 API stay plain integers.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
            utoipa::ToSchema,
        )]
        #[serde(transparent)]
        #[schema(value_type = i64)]
        pub struct $name(pub i64);

        impl $name {
            /// The plain integer, for SQL binds and URLs.
            pub const fn get(self) -> i64 {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl From<i64> for $name {
            fn from(v: i64) -> $name {
                $name(v)
            }
        }

        impl From<$name> for i64 {
            fn from(v: $name) -> i64 {
                v.0
            }
        }

        impl FromStr for $name {
            type Err = IdParseError;

            fn from_str(s: &str) -> Result<$name, IdParseError> {
                s.parse::<i64>().map($name).map_err(|_| IdParseError {
                    what: $what,
                    text: s.to_string(),
                })
            }
        }
    };
}

id_type!(
    /// A job: one node of a graph.
    JobId, "job id"
);
id_type!(
    /// A run: one attempt of a job.
    RunId, "run id"
);
id_type!(
    /// A registered node.
    NodeId, "node id"
);
id_type!(
    /// A stored graph.
    GraphId, "graph id"
);
id_type!(
    /// A push (a polled commit or a manual submission).
    PushId, "push id"
);

/// The JSON Schema of a plain integer, inlined: the manifest schema says `integer` for an id,
/// as it did before the newtypes (a derive would add a named definition per type).
macro_rules! integer_json_schema {
    ($($name:ident),*) => {$(
        impl schemars::JsonSchema for $name {
            fn inline_schema() -> bool {
                true
            }

            fn schema_name() -> std::borrow::Cow<'static, str> {
                <i64 as schemars::JsonSchema>::schema_name()
            }

            fn schema_id() -> std::borrow::Cow<'static, str> {
                <i64 as schemars::JsonSchema>::schema_id()
            }

            fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
                <i64 as schemars::JsonSchema>::json_schema(generator)
            }
        }
    )*};
}

integer_json_schema!(JobId, RunId, NodeId, GraphId, PushId, Millis, DurationMs);

/// Text that is not an id of the kind asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} must be an integer, not {text:?}")]
pub struct IdParseError {
    pub what: &'static str,
    pub text: String,
}

macro_rules! ms_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize,
            Deserialize, utoipa::ToSchema,
        )]
        #[serde(transparent)]
        #[schema(value_type = i64)]
        pub struct $name(pub i64);
    };
}

ms_type!(
    /// An instant: milliseconds since the Unix epoch, as stored in the database.
    Millis
);
ms_type!(
    /// A span of time in milliseconds (leases, timeouts, waits).
    DurationMs
);

impl Millis {
    pub const fn get(self) -> i64 {
        self.0
    }

    /// This instant moved later by `d`.
    pub const fn plus(self, d: DurationMs) -> Millis {
        Millis(self.0.saturating_add(d.0))
    }

    /// This instant moved earlier by `d`.
    pub const fn minus(self, d: DurationMs) -> Millis {
        Millis(self.0.saturating_sub(d.0))
    }

    /// How long from `earlier` to this instant (zero if `earlier` is later).
    pub const fn since(self, earlier: Millis) -> DurationMs {
        let d = self.0.saturating_sub(earlier.0);
        DurationMs(if d < 0 { 0 } else { d })
    }
}

impl DurationMs {
    pub const fn get(self) -> i64 {
        self.0
    }

    pub const fn from_secs(s: i64) -> DurationMs {
        DurationMs(s.saturating_mul(1000))
    }

    /// As a std duration (negative spans count as zero).
    pub fn to_std(self) -> std::time::Duration {
        std::time::Duration::from_millis(u64::try_from(self.0).unwrap_or(0))
    }

    /// From a std duration, saturating at `i64::MAX` milliseconds.
    pub fn from_std(d: std::time::Duration) -> DurationMs {
        DurationMs(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    }
}

impl From<i64> for Millis {
    fn from(v: i64) -> Millis {
        Millis(v)
    }
}

impl From<i64> for DurationMs {
    fn from(v: i64) -> DurationMs {
        DurationMs(v)
    }
}

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for DurationMs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ms", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_plain_integers_on_the_wire() {
        let v = serde_json::to_value(JobId(7)).unwrap();
        assert_eq!(v, serde_json::json!(7));
        let back: NodeId = serde_json::from_value(serde_json::json!(3)).unwrap();
        assert_eq!(back, NodeId(3));
    }

    #[test]
    fn parse_says_what_was_expected() {
        assert_eq!("12".parse::<RunId>(), Ok(RunId(12)));
        let err = "c#".parse::<JobId>().unwrap_err();
        assert_eq!(err.to_string(), "job id must be an integer, not \"c#\"");
    }

    #[test]
    fn time_arithmetic_saturates() {
        let t = Millis(1_000);
        assert_eq!(t.plus(DurationMs(500)), Millis(1_500));
        assert_eq!(t.minus(DurationMs(1_500)), Millis(-500));
        assert_eq!(Millis(10).since(Millis(20)), DurationMs(0));
        assert_eq!(Millis(i64::MAX).plus(DurationMs(1)), Millis(i64::MAX));
        assert_eq!(DurationMs(-5).to_std(), std::time::Duration::ZERO);
    }
}
