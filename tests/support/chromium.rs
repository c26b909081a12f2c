//! Headless Chromium (Debian `chromium`, installed by
//! `scripts/setup.d/70-chromium.sh`) renders a report page and hands back
//! the DOM it built, so a test sees what a browser sees.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn chromium() -> PathBuf {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"].iter().map(PathBuf::from).find(|p| p.exists()).unwrap_or_else(
        || panic!("chromium not found: run scripts/test.sh (scripts/setup.d/70-chromium.sh installs it)"),
    )
}

/// The DOM after Chromium loaded `page` (a local file; the page has no
/// script and may not fetch anything).
pub fn rendered_dom(page: &Path) -> String {
    let profile = tempfile::tempdir().unwrap();
    let url = format!("file://{}", page.canonicalize().unwrap().display());
    let out = Command::new(chromium())
        .args(["--headless", "--disable-gpu", "--no-sandbox", "--no-first-run", "--disable-extensions"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(["--virtual-time-budget=5000", "--dump-dom"])
        .arg(&url)
        .stdin(Stdio::null())
        .output()
        .expect("start chromium");
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && dom.contains("</html>"),
        "chromium did not render {url} (exit {:?}):\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    dom
}

/// The text of the first element whose opening tag contains `marker`
/// (e.g. `class="num p95"`), tags inside it removed.
pub fn text_of(dom: &str, marker: &str) -> Option<String> {
    let at = dom.find(marker)?;
    let open_end = at + dom[at..].find('>')? + 1;
    let tag_start = dom[..at].rfind('<')?;
    let name: String = dom[tag_start + 1..].chars().take_while(|c| c.is_ascii_alphanumeric()).collect();
    let close = open_end + dom[open_end..].find(&format!("</{name}>"))?;
    let mut text = String::new();
    let mut in_tag = false;
    for c in dom[open_end..close].chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    Some(text.trim().to_string())
}
