//! The strict template renderer and reference scanner on arbitrary templates
//! (what a `with:` value or a catalog override can hold).
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::json;

fuzz_target!(|data: &[u8]| {
    let Ok(template) = std::str::from_utf8(data) else { return };
    let _ = modelship::template::references(template);
    let context = json!({
        "params": { "tag": "v1", "list": [1, 2, 3] },
        "stages": { "build": { "outputs": { "imageDigest": "sha256:00" } } },
        "env": { "HOME": "/root" },
    });
    let _ = modelship::template::render(template, &context, "fuzz");
});
