//! The pipeline loader and validator on arbitrary text: never a panic, and
//! every rejection is a diagnostic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use modelship::catalog::Catalog;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(loaded) = modelship::spec::load_str(Path::new("fuzz.yaml"), text) {
        let _ = modelship::spec::validate(&loaded, &Catalog::embedded(), &modelship::stages::Registry);
    }
});
