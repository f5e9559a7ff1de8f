//! The `/v1` HTTP API: one table of every route, from which the router, each route's scope
//! check and the OpenAPI `security` of each operation come.
//!
//! Handlers are grouped by who calls them: [`node`], [`operator`], [`reader`], [`public`].
//! Each handler's first argument is its caller type (see [`access`]), and the table's row
//! for it is made by the function of that audience, which accepts only handlers taking
//! that caller: a row cannot name one scope while its handler expects another caller.

pub mod access;
pub(crate) mod extract;
pub(crate) mod follow;
pub(crate) mod node;
pub(crate) mod operator;
pub(crate) mod public;
pub(crate) mod reader;
pub(crate) mod source;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Extension};
use axum::handler::Handler;
use axum::http::{Method, StatusCode};
use axum::middleware;
use axum::routing::{MethodFilter, MethodRouter, on};
use lwr_model::Scope;

use self::access::{Admin, Audience, NewNode, NodeCaller, Operator, Public, Reader, RunCaller};
pub(crate) use self::public::ApiDocument;
use crate::{ApiError, AppState};

type Handlers = MethodRouter<Arc<AppState>>;

/// One row of the route table.
pub struct Route {
    pub method: Method,
    /// The path template as the router and the OpenAPI document write it (`/v1/jobs/{id}`).
    pub path: &'static str,
    /// Who may call it, hence the scope a token needs.
    pub audience: Audience,
    /// Uploads stream their bodies: the JSON body limit does not apply.
    streamed: bool,
    handler: Handlers,
}

/// The argument types of a handler taking `Caller` first, as axum's [`Handler`] sees them
/// (a marker type, then each argument).
pub trait CalledBy {
    type Caller;
}

macro_rules! called_by {
    ($($rest:ident),*) => {
        impl<M, C, $($rest),*> CalledBy for (M, C, $($rest,)*) {
            type Caller = C;
        }
    };
}
called_by!();
called_by!(T1);
called_by!(T1, T2);
called_by!(T1, T2, T3);
called_by!(T1, T2, T3, T4);
called_by!(T1, T2, T3, T4, T5);
called_by!(T1, T2, T3, T4, T5, T6);

/// Callers a node's routes may take.
pub trait NodeSide {}
impl NodeSide for NewNode {}
impl NodeSide for NodeCaller {}
impl NodeSide for RunCaller {}

type S = Arc<AppState>;

fn row<H, T>(method: Method, path: &'static str, audience: Audience, handler: H) -> Route
where
    H: Handler<T, S>,
    T: 'static,
{
    // The table is code, not input: a method axum cannot route by fails every test at once.
    let filter = MethodFilter::try_from(method.clone())
        .expect("the route table uses only methods axum routes by");
    Route {
        method,
        path,
        audience,
        streamed: false,
        handler: on(filter, handler),
    }
}

fn public<H, T>(method: Method, path: &'static str, handler: H) -> Route
where
    H: Handler<T, S>,
    T: CalledBy<Caller = Public> + 'static,
{
    row(method, path, Audience::Public, handler)
}

fn reader<H, T>(method: Method, path: &'static str, handler: H) -> Route
where
    H: Handler<T, S>,
    T: CalledBy<Caller = Reader> + 'static,
{
    row(method, path, Audience::Reader, handler)
}

fn operator<H, T>(scope: Scope, method: Method, path: &'static str, handler: H) -> Route
where
    H: Handler<T, S>,
    T: CalledBy<Caller = Operator> + 'static,
{
    row(method, path, Audience::Operator(scope), handler)
}

fn admin<H, T>(method: Method, path: &'static str, handler: H) -> Route
where
    H: Handler<T, S>,
    T: CalledBy<Caller = Admin> + 'static,
{
    row(method, path, Audience::Admin, handler)
}

fn node<H, T>(method: Method, path: &'static str, handler: H) -> Route
where
    H: Handler<T, S>,
    T: CalledBy + 'static,
    T::Caller: NodeSide,
{
    row(method, path, Audience::Node, handler)
}

impl Route {
    /// The path as OpenAPI writes it: a wildcard `{*name}` is a plain `{name}` there.
    pub fn documented_path(&self) -> String {
        self.path.replace("{*", "{")
    }

    fn streamed(mut self) -> Route {
        self.streamed = true;
        self
    }
}

/// Every route of the server.
pub fn table() -> Vec<Route> {
    use Method as M;
    vec![
        // Public: liveness and what the API and its documents look like, never data.
        public(M::GET, "/v1/health", public::health),
        public(M::GET, "/v1/openapi.json", public::openapi_json),
        public(
            M::GET,
            "/v1/schemas/manifest-v1.json",
            public::manifest_schema,
        ),
        // Nodes: `node:register`, each for its own node.
        node(M::POST, "/v1/nodes", node::register_node),
        node(M::POST, "/v1/nodes/{id}/claim", node::claim),
        node(M::POST, "/v1/nodes/{id}/heartbeat", node::heartbeat),
        node(M::POST, "/v1/nodes/{id}/results", node::report_results),
        node(M::GET, "/v1/nodes/{id}/streams", node::node_streams),
        node(M::PUT, "/v1/runs/{id}/log", node::upload_log).streamed(),
        node(M::POST, "/v1/runs/{id}/log/stream", node::stream_piece),
        node(M::PUT, "/v1/runs/{id}/artifacts", node::upload_artifact).streamed(),
        node(
            M::POST,
            "/v1/runs/{id}/artifact-commits",
            node::commit_artifact,
        ),
        node(M::PUT, "/v1/runs/{id}/manifest", node::put_manifest),
        node(M::GET, "/v1/runs/{id}/bundle", source::get_run_bundle),
        // Operators: the scope each row names.
        operator(
            Scope::GraphSubmit,
            M::POST,
            "/v1/graphs",
            operator::submit_graph,
        ),
        operator(
            Scope::GraphSubmit,
            M::POST,
            "/v1/pushes/{id}/trigger",
            operator::trigger_job,
        ),
        operator(
            Scope::JobCancel,
            M::POST,
            "/v1/graphs/{id}/cancel",
            operator::cancel_graph,
        ),
        operator(
            Scope::JobCancel,
            M::POST,
            "/v1/jobs/{id}/cancel",
            operator::cancel_job,
        ),
        operator(
            Scope::JobRetrigger,
            M::POST,
            "/v1/jobs/{id}/retrigger",
            operator::retrigger_job,
        ),
        operator(
            Scope::GraphSubmit,
            M::PUT,
            "/v1/bundles/{revision}",
            source::put_bundle,
        )
        .streamed(),
        operator(
            Scope::GraphSubmit,
            M::HEAD,
            "/v1/bundles/{revision}",
            source::has_bundle,
        ),
        operator(Scope::RepoAdmin, M::POST, "/v1/repos", operator::add_repo),
        operator(
            Scope::RepoAdmin,
            M::DELETE,
            "/v1/repos/{id}",
            operator::remove_repo,
        ),
        operator(
            Scope::RepoAdmin,
            M::PATCH,
            "/v1/repos/{id}",
            operator::edit_repo,
        ),
        operator(
            Scope::NodeAdmin,
            M::POST,
            "/v1/nodes/{id}/state",
            operator::set_node_state,
        ),
        operator(
            Scope::NodeAdmin,
            M::POST,
            "/v1/nodes/{id}/labels",
            operator::label_node,
        ),
        operator(
            Scope::JobCancel,
            M::PUT,
            "/v1/graphs/{id}/keep",
            operator::keep_graph,
        ),
        operator(
            Scope::JobCancel,
            M::PUT,
            "/v1/jobs/{id}/keep",
            operator::keep_job,
        ),
        admin(M::POST, "/v1/gc", operator::gc),
        admin(M::POST, "/v1/tokens", operator::create_token),
        admin(M::GET, "/v1/tokens", operator::list_tokens),
        admin(M::POST, "/v1/tokens/{id}/revoke", operator::revoke_token),
        // Readers: `read`.
        reader(M::GET, "/v1/graphs", reader::list_graphs),
        reader(M::GET, "/v1/graphs/{id}", reader::get_graph),
        reader(
            M::GET,
            "/v1/graphs/{id}/jobs/{name}",
            reader::get_job_by_name,
        ),
        reader(M::GET, "/v1/graphs/{id}/spec", reader::get_graph_spec),
        reader(M::GET, "/v1/repos", reader::list_repos),
        reader(M::GET, "/v1/pushes", reader::list_pushes),
        reader(M::GET, "/v1/pushes/{id}", reader::get_push),
        reader(M::GET, "/v1/jobs", reader::list_jobs),
        reader(M::GET, "/v1/jobs/{id}", reader::get_job),
        reader(M::GET, "/v1/jobs/{id}/log", reader::get_log),
        // Following a log makes its node stream it too: turning that on needs no more.
        reader(M::PUT, "/v1/jobs/{id}/log/live", reader::set_live),
        reader(M::GET, "/v1/jobs/{id}/manifest", reader::get_job_manifest),
        reader(M::GET, "/v1/nodes", reader::list_nodes),
        reader(
            M::GET,
            "/v1/runs/{id}/artifacts/{*name}",
            reader::get_artifact,
        ),
        reader(M::GET, "/v1/runs/{id}/manifest", reader::get_run_manifest),
        reader(M::GET, "/v1/stats", reader::stats),
        // Beside /v1, where scrapers look; read-only, so a reader's token suffices.
        reader(M::GET, "/metrics", reader::metrics),
    ]
}

/// The router of [`table`]: each route behind the check of its audience.
pub(crate) fn router(state: Arc<AppState>, document: ApiDocument) -> Router {
    let mut router = Router::new();
    for route in table() {
        let gate =
            middleware::from_fn_with_state((state.clone(), route.audience), access::authenticate);
        // A route layer: a method the path does not take gets 405, not 401.
        let mut handler = route.handler.route_layer(gate);
        if route.streamed {
            handler = handler.layer(DefaultBodyLimit::disable());
        }
        router = router.route(route.path, handler);
    }
    router
        .layer(Extension(document))
        .layer(DefaultBodyLimit::max(extract::MAX_JSON_BODY))
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .with_state(state)
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "this endpoint does not take that method; see /v1/openapi.json",
    )
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no such endpoint; see /v1/openapi.json",
    )
}
