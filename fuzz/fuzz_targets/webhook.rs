//! Push webhook payloads as GitHub and GitLab would post them, and as the CLI
//! guesses them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use modelship::triggers::signature::{verify_github, verify_gitlab};
use modelship::triggers::{Provider, PushEvent};

fuzz_target!(|data: &[u8]| {
    // The signature header is attacker-controlled too: never a panic on it.
    if let Some((header, body)) = std::str::from_utf8(data).ok().and_then(|s| s.split_once('\n')) {
        let _ = verify_github(b"secret", body.as_bytes(), Some(header));
        let _ = verify_gitlab(b"secret", Some(header));
    }
    for provider in [None, Some(Provider::GitHub), Some(Provider::GitLab)] {
        if let Ok(event) = PushEvent::from_json(data, provider, "fuzz") {
            let _ = (event.branch(), event.is_new_ref(), event.is_deleted_ref());
        }
    }
});
