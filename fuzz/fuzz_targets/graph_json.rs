//! A submitted graph as the server reads it: JSON into `Graph`, then `validate`. Any bytes
//! give an error or a valid graph, never a panic or a hang.
//!
//! (The manifest reader has its own target, `manifest`.)
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(graph) = serde_json::from_slice::<lwr_model::Graph>(data) else {
        return;
    };
    if graph.validate().is_ok() {
        // A valid graph compares equal to itself with no differences.
        let diff = lwr_model::graph::diff(&graph, &graph);
        assert!(diff.is_empty(), "a graph differs from itself: {diff:?}");
    }
});
