//! The manifest reader, as a dependent job or `lwr fetch` uses it on whatever a server (or
//! anything posing as one) returns: any bytes give a manifest or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(manifest) = lwr_model::manifest::read(data) {
        // What was read writes back out and reads again the same.
        let text = serde_json::to_vec(&manifest).expect("a manifest serializes");
        let again = lwr_model::manifest::read(&text).expect("a written manifest reads back");
        assert_eq!(
            serde_json::to_value(&manifest).ok(),
            serde_json::to_value(&again).ok()
        );
    }
});
