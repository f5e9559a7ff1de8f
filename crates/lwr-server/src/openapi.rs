//! The OpenAPI document of the v1 API: the operations the handlers describe, with what every
//! operation shares added from the route table (the bearer scheme, which operations need no
//! token, the error answers any request may get).

use axum::http::Method;
use lwr_model::api::*;
use lwr_model::auth::{CreateToken, CreatedToken, TokenInfo, TokenList};
use lwr_model::graph::LeftOut;
use lwr_model::logstream::{
    ChunkAck, EndEvent, LiveState, LiveToggle, LogEvent, LogStats, LogStreams, RunEvent, Stats,
    StreamRequest,
};
use lwr_model::{
    ArtifactDecl, Graph, JobSpec, JobState, NodeProperties, Requirements, Requires, RunState,
    Scope, When,
};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use crate::routes;
use crate::routes::node::*;
use crate::routes::operator::*;
use crate::routes::public::*;
use crate::routes::reader::*;
use crate::routes::source::*;

/// Adds what every operation shares to the document: the bearer scheme, the error answers
/// any request may get (bad path or query, malformed body, no token, missing scope), and
/// the public operations that need no token.
struct Shared_;

impl Modify for Shared_ {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let table = routes::table();
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
        let error = |what: &str| {
            RefOr::T(
                ResponseBuilder::new()
                    .description(what)
                    .content(
                        "application/json",
                        utoipa::openapi::ContentBuilder::new()
                            .schema(Some(utoipa::openapi::Ref::from_schema_name("ErrorBody")))
                            .build(),
                    )
                    .build(),
            )
        };
        for (path, item) in doc.paths.paths.iter_mut() {
            for (method, op) in [
                (Method::GET, &mut item.get),
                (Method::PUT, &mut item.put),
                (Method::POST, &mut item.post),
                (Method::DELETE, &mut item.delete),
                (Method::PATCH, &mut item.patch),
                (Method::HEAD, &mut item.head),
            ] {
                let Some(op) = op else { continue };
                // The routes the table lets through without a token.
                let public = table.iter().any(|r| {
                    r.method == method
                        && r.documented_path() == *path
                        && r.audience.scope().is_none()
                });
                let has_params = path.contains('{') || op.parameters.is_some();
                let responses = &mut op.responses.responses;
                if path.contains('{') {
                    responses
                        .entry("404".into())
                        .or_insert_with(|| error("nothing with that id"));
                }
                if has_params || op.request_body.is_some() {
                    responses
                        .entry("400".into())
                        .or_insert_with(|| error("bad path, query or body"));
                }
                if op.request_body.is_some() {
                    responses
                        .entry("413".into())
                        .or_insert_with(|| error("body too large"));
                    responses
                        .entry("415".into())
                        .or_insert_with(|| error("wrong Content-Type"));
                    responses
                        .entry("422".into())
                        .or_insert_with(|| error("a field is invalid; `field` names it"));
                }
                if public {
                    op.security = Some(vec![
                        utoipa::openapi::security::SecurityRequirement::default(),
                    ]);
                } else {
                    responses.entry("401".into()).or_insert_with(|| {
                        error("no token, or an unknown, revoked or expired one")
                    });
                    responses
                        .entry("403".into())
                        .or_insert_with(|| error("the token lacks the scope the operation needs"));
                }
            }
        }
        doc.security = Some(vec![utoipa::openapi::security::SecurityRequirement::new(
            "bearer",
            Vec::<String>::new(),
        )]);
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "lwr",
        description = "The lwr server's v1 API: graphs, jobs, runs, nodes, polled repositories, \
            pushes and artifacts. With `lwr server --auth`, every operation but /v1/health, /v1/openapi.json and /v1/schemas/manifest-v1.json needs \
            `Authorization: Bearer TOKEN` with the scope it names in docs/security.md."
    ),
    modifiers(&Shared_),
    paths(
        health,
        submit_graph,
        list_graphs,
        get_graph,
        get_job_by_name,
        list_jobs,
        get_job,
        get_log,
        cancel_job,
        cancel_graph,
        keep_graph,
        keep_job,
        gc,
        retrigger_job,
        get_graph_spec,
        add_repo,
        list_repos,
        remove_repo,
        edit_repo,
        list_pushes,
        get_push,
        trigger_job,
        register_node,
        list_nodes,
        claim,
        heartbeat,
        report_results,
        upload_log,
        upload_artifact,
        commit_artifact,
        get_artifact,
        put_manifest,
        get_run_manifest,
        get_job_manifest,
        manifest_schema,
        create_token,
        list_tokens,
        revoke_token,
        set_node_state,
        label_node,
        node_streams,
        stream_piece,
        set_live,
        stats,
        metrics,
        put_bundle,
        has_bundle,
        get_run_bundle
    ),
    components(schemas(
        ErrorBody,
        BundleInfo,
        SubmitGraph,
        Graph,
        JobSpec,
        ArtifactDecl,
        Requirements,
        GraphInfo,
        GraphList,
        StateCounts,
        JobInfo,
        JobList,
        JobDetail,
        RunInfo,
        JobState,
        RunState,
        RegisterNode,
        NodeProperties,
        NodeInfo,
        NodeList,
        ClaimRequest,
        ClaimResponse,
        Assignment,
        Heartbeat,
        HeartbeatResponse,
        Outcome,
        RunResult,
        ReportResults,
        ResultAck,
        ReportAck,
        ManifestUpload,
        StagedArtifact,
        ArtifactCommit,
        Health,
        CancelResult,
        RetriggerRequest,
        GcRequest,
        GcResult,
        KeepRequest,
        RetriggerResult,
        Requires,
        When,
        LeftOut,
        GraphSpec,
        AddRepo,
        EditRepo,
        RepoInfo,
        RepoList,
        PushInfo,
        PushList,
        TriggerRequest,
        TriggerResult,
        Scope,
        CreateToken,
        CreatedToken,
        TokenInfo,
        TokenList,
        SetNodeState,
        LabelNode,
        lwr_model::NodeState,
        lwr_model::Prefer,
        LogStreams,
        StreamRequest,
        ChunkAck,
        LiveToggle,
        LiveState,
        LogStats,
        Stats,
        LogEvent,
        RunEvent,
        EndEvent
    ))
)]
struct ApiDoc;

/// The OpenAPI document of the v1 API, generated from the handlers and types above.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    // A fixed version keeps the checked-in document stable across releases of the binary.
    doc.info.version = "1".into();
    doc
}

/// The OpenAPI document as the server serves it and the repository keeps it.
pub fn openapi_string() -> String {
    let doc = serde_json::to_value(openapi()).map(|mut v| {
        unsigned_ranges(&mut v);
        v
    });
    let mut text = doc
        .and_then(|v| serde_json::to_string_pretty(&v))
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    text.push('\n');
    text
}

/// utoipa describes `u32` as `int32` and `u64` as `int64` with a minimum of 0, which claims
/// half the range the server takes; say the real range instead, so that a client (or a
/// schemathesis run) and the server agree on which numbers are valid.
fn unsigned_ranges(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            let unsigned = map.get("minimum").and_then(|m| m.as_f64()) == Some(0.0);
            let max = match map.get("format").and_then(|f| f.as_str()) {
                Some("int32") if unsigned => Some(serde_json::Value::from(u32::MAX)),
                Some("int64") if unsigned => Some(serde_json::Value::from(u64::MAX)),
                _ => None,
            };
            if let Some(max) = max {
                map.remove("format");
                map.insert("maximum".into(), max);
            }
            map.values_mut().for_each(unsigned_ranges);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(unsigned_ranges),
        _ => {}
    }
}
