//! The route table is the one list of the server's routes: the checked-in OpenAPI document
//! must describe exactly its routes (public ones as needing no token), and a real server
//! with `--auth` must serve every one of them behind exactly the scope the table names.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use lwr_model::api::RegisterNode;
use lwr_model::{NodeId, NodeProperties, Scope, Scopes};
use lwr_server::Config;
use lwr_server::routes::access::Audience;
use lwr_server::routes::{Route, table};
use lwr_store::Store;
use serde_json::Value;

/// The route that serves the document is the one it does not describe.
const DOCUMENT: &str = "/v1/openapi.json";

fn checked_in() -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../openapi/lwr-v1.json");
    let text = std::fs::read_to_string(&path).expect("the checked-in OpenAPI document");
    serde_json::from_str(&text).expect("the checked-in OpenAPI document is JSON")
}

fn key(r: &Route) -> (String, String) {
    (r.method.as_str().to_string(), r.documented_path())
}

#[test]
fn the_table_and_the_checked_in_document_name_the_same_operations() {
    let routes = table();
    let keys: Vec<_> = routes.iter().map(key).collect();
    let unique: BTreeSet<_> = keys.iter().cloned().collect();
    assert_eq!(unique.len(), keys.len(), "a route is in the table twice");

    let doc = checked_in();
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("a path item") {
            let method = method.to_ascii_uppercase();
            let route = routes
                .iter()
                .find(|r| r.method.as_str() == method && r.documented_path() == *path)
                .unwrap_or_else(|| panic!("{method} {path} is documented but not in the table"));
            // Public operations say so; every other inherits the document's bearer scheme.
            let open = op.get("security") == Some(&serde_json::json!([{}]));
            assert_eq!(
                open,
                route.audience == Audience::Public,
                "{method} {path}: the document's security disagrees with {:?}",
                route.audience
            );
            if !open {
                for status in ["401", "403"] {
                    assert!(
                        op["responses"].get(status).is_some(),
                        "{method} {path} does not document {status}"
                    );
                }
            }
            documented.insert((method, path.clone()));
        }
    }
    let served: BTreeSet<_> = unique.into_iter().filter(|(_, p)| p != DOCUMENT).collect();
    assert_eq!(
        served.difference(&documented).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "routes in the table the document does not describe"
    );
    let doc_security = &doc["security"];
    assert_eq!(doc_security, &serde_json::json!([{"bearer": []}]));
}

/// A request's path for a route: ids no row has (so nothing changes), but the registered
/// node's id where a node acts for itself.
fn concrete(route: &Route, node: NodeId) -> String {
    let node_route = route.audience == Audience::Node;
    let id = if node_route && route.path.starts_with("/v1/nodes/{id}") {
        node.to_string()
    } else {
        "999999".to_string()
    };
    let mut path = route
        .path
        .replace("{id}", &id)
        .replace("{*name}", "x")
        .replace("{name}", "x");
    if node_route && route.path.starts_with("/v1/runs/") {
        path.push_str(&format!("?node={node}"));
    }
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_serves_every_route_of_the_table_behind_its_scope() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&format!("sqlite://{}", dir.path().join("lwr.db").display()))
        .await
        .unwrap();
    let now = lwr_store::now_ms();
    let mut tokens = Vec::new();
    for scope in Scope::ALL {
        let (_, secret) = store
            .create_token(&Scopes(vec![scope]), Some("routes test"), None, now)
            .await
            .unwrap();
        tokens.push((scope, secret));
    }
    let token = |scope: Scope| {
        tokens
            .iter()
            .find(|(s, _)| *s == scope)
            .map(|(_, t)| t.clone())
            .unwrap()
    };
    let reg = RegisterNode {
        name: "n1".into(),
        properties: NodeProperties::default(),
        slots: 1,
    };
    let node_token = token(Scope::NodeRegister);
    let node_token_id = store
        .check_token(&node_token, now)
        .await
        .map(|check| match check {
            lwr_store::TokenCheck::Valid(caller) => caller.token_id,
            other => panic!("the node token is {other:?}"),
        })
        .unwrap();
    let node = store
        .register_node_for(&reg, now, Some(node_token_id))
        .await
        .unwrap();

    let mut config = Config::new(dir.path().to_path_buf());
    config.auth = true;
    let (addr, serve) = lwr_server::bind("127.0.0.1:0".parse().unwrap(), store, config)
        .await
        .unwrap();
    tokio::spawn(serve);
    let base = format!("http://{addr}");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let call = |route: &Route, token: Option<String>| {
        let url = format!("{base}{}", concrete(route, node));
        let mut req = http.request(route.method.clone(), url);
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        async move { req.send().await.unwrap().status().as_u16() }
    };

    for route in table() {
        let what = format!("{} {}", route.method, route.path);
        let Some(needed) = route.audience.scope() else {
            // Served (a missing route would be 404, a missing method 405), without a token.
            assert_eq!(call(&route, None).await, 200, "{what} without a token");
            continue;
        };
        // Routed and guarded: the router's own 404 and 405 come before any token check.
        assert_eq!(call(&route, None).await, 401, "{what} without a token");
        for (scope, secret) in &tokens {
            let status = call(&route, Some(secret.clone())).await;
            if *scope == needed || *scope == Scope::Admin {
                // Past the check; what follows may still refuse (no such id, no body).
                assert!(
                    status != 401 && status != 403,
                    "{what} with {scope}: {status}"
                );
            } else {
                assert_eq!(status, 403, "{what} with only {scope}");
            }
        }
    }
}
