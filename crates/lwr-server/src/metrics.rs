//! `GET /metrics`: this server's counters and the fleet's gauges in the Prometheus text
//! format (0.0.4), encoded by `prometheus-client`.
//!
//! On the hot path only atomic counters and histograms move (a claim, a result, a request);
//! everything that is a count of rows (jobs by state, the ready queue, runs by outcome,
//! stored bytes) and the pool's state are read when scraped, into a registry made for that
//! one answer. Counters are this server's (sum them over the servers); gauges read from the
//! database are the whole fleet's (every server answers the same: take any one).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use futures_util::TryStreamExt;
use lwr_model::DurationMs;
use lwr_model::api::{Outcome, ResultAck, RunResult};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::AppState;
use crate::duty::Duty;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    /// The route's template (`/v1/jobs/:id`), never the raw path: bounded cardinality.
    route: String,
    method: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// Durations in seconds from 1 ms to about 33 s (long polls wait up to 20 s).
fn seconds_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// This server's counters since it started. Cloning a metric shares it.
#[derive(Debug)]
pub struct Metrics {
    claimed: Counter,
    results: Family<OutcomeLabels, Counter>,
    ready_to_claimed: Histogram,
    http_requests: Family<HttpLabels, Counter>,
    http_duration: Family<RouteLabels, Histogram>,
    log_streamed: Counter,
    log_uploaded: Counter,
    artifact_uploaded: Counter,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            claimed: Counter::default(),
            results: Family::default(),
            ready_to_claimed: seconds_histogram(),
            http_requests: Family::default(),
            http_duration: Family::new_with_constructor(seconds_histogram),
            log_streamed: Counter::default(),
            log_uploaded: Counter::default(),
            artifact_uploaded: Counter::default(),
        }
    }
}

/// Request bodies counted by route: what nodes send the server.
const COUNTED_BODIES: [(&str, Carried); 3] = [
    ("/v1/runs/{id}/log/stream", Carried::LogStreamed),
    ("/v1/runs/{id}/log", Carried::LogUploaded),
    ("/v1/runs/{id}/artifacts", Carried::ArtifactUploaded),
];

#[derive(Clone, Copy)]
enum Carried {
    LogStreamed,
    LogUploaded,
    ArtifactUploaded,
}

impl Metrics {
    /// Jobs handed to nodes, each with how long it had been ready.
    pub fn claimed(&self, waited: &[DurationMs]) {
        self.claimed.inc_by(waited.len() as u64);
        for w in waited {
            self.ready_to_claimed
                .observe(w.get().max(0) as f64 / 1000.0);
        }
    }

    /// Results recorded now (not those acknowledged again, nor refused), by outcome.
    pub fn recorded(&self, results: &[RunResult], acks: &[ResultAck]) {
        for ack in acks.iter().filter(|a| a.recorded && a.note.is_none()) {
            if let Some(result) = results.iter().find(|r| r.run_id == ack.run_id) {
                let outcome = match result.outcome {
                    Outcome::Succeeded => "succeeded",
                    Outcome::Failed => "failed",
                    // Claimed ahead and never started: no trouble to alert on.
                    Outcome::Exception if result.unstarted => "given-back",
                    Outcome::Exception => "exception",
                };
                self.results.get_or_create(&OutcomeLabels { outcome }).inc();
            }
        }
    }

    fn request(&self, route: &str, method: &str, status: u16, took: Duration) {
        let route = &route_label(route);
        self.http_requests
            .get_or_create(&HttpLabels {
                route: route.to_string(),
                method: method.to_string(),
                status: status.to_string(),
            })
            .inc();
        self.http_duration
            .get_or_create(&RouteLabels {
                route: route.to_string(),
                method: method.to_string(),
            })
            .observe(took.as_secs_f64());
    }

    fn body_counter(&self, route: &str) -> Option<Counter> {
        let (_, which) = COUNTED_BODIES.iter().find(|(r, _)| *r == route)?;
        Some(match which {
            Carried::LogStreamed => self.log_streamed.clone(),
            Carried::LogUploaded => self.log_uploaded.clone(),
            Carried::ArtifactUploaded => self.artifact_uploaded.clone(),
        })
    }

    /// Registers this server's counters in `registry` (shared, not copied).
    fn register(&self, r: &mut Registry) {
        r.register(
            "claimed_jobs",
            "Jobs handed to nodes by this server",
            self.claimed.clone(),
        );
        r.register(
            "results",
            "Run results recorded by this server, by outcome",
            self.results.clone(),
        );
        r.register_with_unit(
            "ready_to_claimed",
            "How long a job was ready before a node claimed it through this server",
            Unit::Seconds,
            self.ready_to_claimed.clone(),
        );
        r.register(
            "http_requests",
            "HTTP requests this server answered, by route template, method and status",
            self.http_requests.clone(),
        );
        r.register_with_unit(
            "http_request_duration",
            "Time to the response's head (a stream's body is not counted), by route template",
            Unit::Seconds,
            self.http_duration.clone(),
        );
        r.register_with_unit(
            "log_streamed",
            "Live log bytes nodes streamed to this server",
            Unit::Bytes,
            self.log_streamed.clone(),
        );
        r.register_with_unit(
            "log_uploaded",
            "Finished runs' log bytes nodes uploaded to this server",
            Unit::Bytes,
            self.log_uploaded.clone(),
        );
        r.register_with_unit(
            "artifact_uploaded",
            "Artifact bytes nodes uploaded to this server",
            Unit::Bytes,
            self.artifact_uploaded.clone(),
        );
    }
}

/// A route template as a label value: `/v1/jobs/:id`, not `/v1/jobs/{id}`. Braces are
/// legal in a label value, but scrapers and checkers that split the label set at the first
/// `}` are common.
fn route_label(template: &str) -> String {
    template.replace('{', ":").replace('}', "")
}

/// Counts every request by its route's template, method and status, with its duration;
/// counts the bodies nodes upload on the routes that carry logs and artifacts.
pub(crate) async fn track(
    State(state): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    let start = Instant::now();
    let metrics = state.queue.metrics();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |m| m.as_str())
        .to_string();
    let method = req.method().as_str().to_string();
    let req = match metrics.body_counter(&route) {
        Some(counter) => {
            let (parts, body) = req.into_parts();
            let counted = body.into_data_stream().inspect_ok(move |bytes| {
                counter.inc_by(bytes.len() as u64);
            });
            Request::from_parts(parts, Body::from_stream(counted))
        }
        None => req,
    };
    let response = next.run(req).await;
    metrics.request(&route, &method, response.status().as_u16(), start.elapsed());
    response
}

/// The metrics as one Prometheus text answer.
pub(crate) async fn render(state: &AppState) -> Result<String, lwr_store::StoreError> {
    let store = state.queue.store();
    let gauges = store.gauges().await?;
    let pool = store.pool().await?;
    let mut registry = Registry::with_prefix("lwr");
    state.queue.metrics().register(&mut registry);

    let labelled = |pairs: &[(String, i64)], key: &'static str| {
        let family = Family::<[(&'static str, String); 1], Gauge>::default();
        for (value, n) in pairs {
            family.get_or_create(&[(key, value.clone())]).set(*n);
        }
        family
    };
    registry.register(
        "jobs",
        "Jobs by state (the whole fleet's, from the database)",
        labelled(&gauges.jobs, "state"),
    );
    let ready = Gauge::<i64>::default();
    ready.set(gauges.ready);
    registry.register(
        "ready_jobs",
        "Jobs ready to be claimed: the queue's depth (the fleet's)",
        ready,
    );
    let waiting = Gauge::<i64>::default();
    waiting.set(i64::try_from(state.queue.claims_waiting()).unwrap_or(i64::MAX));
    registry.register(
        "claims_waiting",
        "Nodes' claims waiting for work on this server: nodes with free slots and nothing to run (this server's)",
        waiting,
    );
    registry.register(
        "runs",
        "Runs by state: running, or how they ended (the fleet's)",
        labelled(&gauges.runs, "state"),
    );
    let now = lwr_store::now_ms();
    let lost_after = store.pool_config().lost_after_ms;
    let mut nodes: Vec<(String, i64)> = lwr_model::NodeState::ALL
        .iter()
        .map(|s| (s.as_str().to_string(), 0))
        .chain([("lost".to_string(), 0)])
        .collect();
    for node in pool.nodes() {
        let state = match now.since(node.last_seen) > lost_after {
            true => "lost",
            false => node.state.as_str(),
        };
        if let Some(entry) = nodes.iter_mut().find(|(s, _)| s == state) {
            entry.1 += 1;
        }
    }
    registry.register(
        "nodes",
        "Nodes by state; `lost`: not heard from within the lost-after time (the fleet's)",
        labelled(&nodes, "state"),
    );
    let bytes = |n: i64| {
        let g = Gauge::<i64>::default();
        g.set(n);
        g
    };
    registry.register_with_unit(
        "log_stored",
        "Bytes of finished runs' stored logs (the fleet's)",
        Unit::Bytes,
        bytes(gauges.log_bytes),
    );
    registry.register_with_unit(
        "artifact_stored",
        "Bytes of the artifacts kept (the fleet's)",
        Unit::Bytes,
        bytes(gauges.artifact_bytes),
    );
    registry.register(
        "artifacts",
        "Artifacts kept (the fleet's)",
        bytes(gauges.artifacts),
    );
    let connections = Family::<[(&'static str, &'static str); 2], Gauge>::default();
    let max = Family::<[(&'static str, &'static str); 1], Gauge>::default();
    for p in store.pool_use() {
        let busy = i64::from(p.open.saturating_sub(p.idle));
        connections
            .get_or_create(&[("pool", p.pool), ("state", "busy")])
            .set(busy);
        connections
            .get_or_create(&[("pool", p.pool), ("state", "idle")])
            .set(i64::from(p.idle));
        max.get_or_create(&[("pool", p.pool)]).set(i64::from(p.max));
    }
    registry.register(
        "db_connections",
        "This server's database connections by pool, busy or idle",
        connections,
    );
    registry.register(
        "db_connections_max",
        "The most connections each of this server's pools opens",
        max,
    );
    let held = Family::<[(&'static str, &'static str); 1], Gauge>::default();
    for duty in Duty::ALL {
        held.get_or_create(&[("duty", duty.as_str())])
            .set(i64::from(state.duties.holds(duty)));
    }
    registry.register(
        "duty_held",
        "1 for each duty this server does now (one server of the fleet does each)",
        held,
    );
    let mut out = String::new();
    // Writing to a String cannot fail; an encoder error would be a bug in a metric.
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry) {
        tracing::error!("encoding the metrics: {e}");
    }
    Ok(out)
}

/// The `Content-Type` of the answer.
pub(crate) const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

#[cfg(test)]
mod tests {
    #[test]
    fn route_labels_have_no_braces() {
        assert_eq!(
            super::route_label("/v1/nodes/{id}/claim"),
            "/v1/nodes/:id/claim"
        );
        assert_eq!(
            super::route_label("/v1/runs/{id}/artifacts/{*name}"),
            "/v1/runs/:id/artifacts/:*name"
        );
    }
}
