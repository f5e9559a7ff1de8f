//! The lwr.yml parser: any bytes give a graph or an error, never a panic or a hang; and a
//! graph it accepts is one the server accepts too.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(graph) = lwr_model::graph::parse(text, "lwr.yml") {
        // What push sends, the server validates again: the two must agree.
        if let Err(e) = graph.validate() {
            panic!("parse accepted a graph that validate refuses: {e}");
        }
        let json = serde_json::to_vec(&graph).expect("a graph serializes");
        let back: lwr_model::Graph = serde_json::from_slice(&json).expect("and reads back");
        assert_eq!(back, graph, "a graph survives the trip through JSON");
    }
});
