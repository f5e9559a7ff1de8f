//! Every request the client makes, built in one place: [`ROUTES`] lists each route (a test
//! checks them against the checked-in OpenAPI document), and one function per route fills
//! its parameters in, each percent-encoded as one path segment, so a job named `c#` is never
//! read as job `c` and a fragment.

use std::fmt::{self, Display};

use lwr_model::urlpath;
use reqwest::Method;

/// One request: a method and a path on the server, with its query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub method: Method,
    /// The route as the OpenAPI document names it (`/v1/jobs/{id}`).
    pub route: &'static str,
    /// The route with its parameters and query filled in.
    pub path: String,
}

impl Endpoint {
    fn new(method: Method, route: &'static str, params: &[(&str, &dyn Display)]) -> Endpoint {
        let mut path = route.to_string();
        for (name, value) in params {
            path = path.replace(
                &format!("{{{name}}}"),
                &urlpath::segment(&value.to_string()),
            );
        }
        Endpoint {
            method,
            route,
            path,
        }
    }

    /// Adds `name=value` to the query, the value percent-encoded.
    pub fn query(mut self, name: &str, value: impl Display) -> Endpoint {
        let sep = if self.path.contains('?') { '&' } else { '?' };
        let value = urlpath::segment(&value.to_string());
        self.path = format!("{}{sep}{name}={value}", self.path);
        self
    }

    /// [`Endpoint::query`] when there is a value.
    pub fn query_opt(self, name: &str, value: Option<impl Display>) -> Endpoint {
        match value {
            Some(v) => self.query(name, v),
            None => self,
        }
    }
}

impl Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.method, self.path)
    }
}

/// Defines [`ROUTES`] and a function per route whose arguments are the route's parameters.
macro_rules! routes {
    ($($(#[$doc:meta])* $name:ident: $method:ident $route:literal ($($arg:ident),*);)*) => {
        /// Every route the client requests: method, route, parameter names.
        pub const ROUTES: &[(&str, &str, &[&str])] =
            &[$((stringify!($method), $route, &[$(stringify!($arg)),*])),*];

        $(
            $(#[$doc])*
            pub fn $name($($arg: impl Display),*) -> Endpoint {
                Endpoint::new(
                    Method::$method,
                    $route,
                    &[$((stringify!($arg), &$arg as &dyn Display)),*],
                )
            }
        )*
    };
}

routes! {
    health: GET "/v1/health" ();
    submit_graph: POST "/v1/graphs" ();
    graphs: GET "/v1/graphs" ();
    graph: GET "/v1/graphs/{id}" (id);
    graph_spec: GET "/v1/graphs/{id}/spec" (id);
    cancel_graph: POST "/v1/graphs/{id}/cancel" (id);
    keep_graph: PUT "/v1/graphs/{id}/keep" (id);
    gc: POST "/v1/gc" ();
    job_by_name: GET "/v1/graphs/{id}/jobs/{name}" (id, name);
    jobs: GET "/v1/jobs" ();
    job: GET "/v1/jobs/{id}" (id);
    job_log: GET "/v1/jobs/{id}/log" (id);
    job_live: PUT "/v1/jobs/{id}/log/live" (id);
    job_manifest: GET "/v1/jobs/{id}/manifest" (id);
    cancel_job: POST "/v1/jobs/{id}/cancel" (id);
    retrigger: POST "/v1/jobs/{id}/retrigger" (id);
    keep_job: PUT "/v1/jobs/{id}/keep" (id);
    tokens: GET "/v1/tokens" ();
    create_token: POST "/v1/tokens" ();
    revoke_token: POST "/v1/tokens/{id}/revoke" (id);
    repos: GET "/v1/repos" ();
    add_repo: POST "/v1/repos" ();
    remove_repo: DELETE "/v1/repos/{id}" (id);
    edit_repo: PATCH "/v1/repos/{id}" (id);
    pushes: GET "/v1/pushes" ();
    push: GET "/v1/pushes/{id}" (id);
    trigger: POST "/v1/pushes/{id}/trigger" (id);
    nodes: GET "/v1/nodes" ();
    register_node: POST "/v1/nodes" ();
    /// A node by name or id.
    node_state: POST "/v1/nodes/{id}/state" (id);
    /// A node by name or id.
    node_labels: POST "/v1/nodes/{id}/labels" (id);
    claim: POST "/v1/nodes/{id}/claim" (id);
    heartbeat: POST "/v1/nodes/{id}/heartbeat" (id);
    results: POST "/v1/nodes/{id}/results" (id);
    log_streams: GET "/v1/nodes/{id}/streams" (id);
    upload_log: PUT "/v1/runs/{id}/log" (id);
    log_piece: POST "/v1/runs/{id}/log/stream" (id);
    upload_artifact: PUT "/v1/runs/{id}/artifacts" (id);
    commit_artifact: POST "/v1/runs/{id}/artifact-commits" (id);
    put_manifest: PUT "/v1/runs/{id}/manifest" (id);
    run_bundle: GET "/v1/runs/{id}/bundle" (id);
    has_bundle: HEAD "/v1/bundles/{revision}" (revision);
    upload_bundle: PUT "/v1/bundles/{revision}" (revision);
    stats: GET "/v1/stats" ();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_and_query_values_are_one_segment_each() {
        let ep = job_by_name(3, "c#?%/x");
        assert_eq!(ep.path, "/v1/graphs/3/jobs/c%23%3F%25%2Fx");
        assert_eq!(ep.route, "/v1/graphs/{id}/jobs/{name}");
        let ep = job_log(4).query("run", 2).query_opt("x", Some("a&b=c"));
        assert_eq!(ep.path, "/v1/jobs/4/log?run=2&x=a%26b%3Dc");
        assert_eq!(jobs().query_opt("graph", None::<i64>).path, "/v1/jobs");
    }

    #[test]
    fn each_route_names_exactly_its_parameters() {
        for (method, route, params) in ROUTES {
            let mut named: Vec<&str> = route
                .split('{')
                .skip(1)
                .filter_map(|rest| rest.split_once('}').map(|(name, _)| name))
                .collect();
            named.sort();
            let mut args = params.to_vec();
            args.sort();
            assert_eq!(named, args, "{method} {route}");
        }
    }
}
