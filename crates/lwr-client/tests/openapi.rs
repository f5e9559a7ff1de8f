//! Every route the client requests exists, with its method, in the checked-in OpenAPI
//! document (which the server's own test keeps equal to what the server serves): a client
//! path the server does not route fails here, not in production.

use std::path::PathBuf;

use lwr_client::paths::ROUTES;

/// `/v1/graphs/{id}/jobs/{name}` as `/v1/graphs/{}/jobs/{}`: parameter names are each
/// side's own.
fn shape(route: &str) -> String {
    let mut out = String::new();
    let mut rest = route;
    while let Some((before, after)) = rest.split_once('{') {
        out.push_str(before);
        out.push_str("{}");
        rest = after.split_once('}').map_or("", |(_, tail)| tail);
    }
    out.push_str(rest);
    out
}

#[test]
fn every_client_route_is_in_the_checked_in_openapi_document() {
    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../openapi/lwr-v1.json");
    let text = std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
    let doc: serde_json::Value = serde_json::from_str(&text).expect("the document is JSON");
    let paths = doc["paths"].as_object().expect("the document has paths");
    let documented: Vec<(String, String)> = paths
        .iter()
        .flat_map(|(route, item)| {
            let methods = item
                .as_object()
                .map(|m| m.keys().cloned().collect::<Vec<_>>());
            methods
                .unwrap_or_default()
                .into_iter()
                .map(move |method| (method.to_uppercase(), shape(route)))
        })
        .collect();
    let missing: Vec<String> = ROUTES
        .iter()
        .filter(|(method, route, _)| !documented.contains(&(method.to_string(), shape(route))))
        .map(|(method, route, _)| format!("{method} {route}"))
        .collect();
    assert!(
        missing.is_empty(),
        "the client requests routes {} does not describe: {missing:?}",
        file.display()
    );
    assert!(ROUTES.len() > 30, "{} routes", ROUTES.len());
}

#[test]
fn the_shape_ignores_parameter_names_only() {
    assert_eq!(
        shape("/v1/graphs/{id}/jobs/{name}"),
        "/v1/graphs/{}/jobs/{}"
    );
    assert_eq!(shape("/v1/health"), "/v1/health");
    assert_ne!(shape("/v1/jobs/{id}"), shape("/v1/jobs/{id}/log"));
}
