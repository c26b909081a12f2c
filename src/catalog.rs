//! The stage catalog: `stages/<kind>/` folders (README + handlebars
//! templates), embedded at build time. Lookups go, first hit wins: the
//! pipeline's `templates:` directory, `--stages-dir`, the embedded copy.

use std::path::{Path, PathBuf};

use include_dir::{Dir, include_dir};

static EMBEDDED: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/stages");

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("template `{kind}/{file}` not found (looked in {looked})")]
    NotFound { kind: String, file: String, looked: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One template's text and where it came from (for error messages).
#[derive(Debug, Clone)]
pub struct TemplateSource {
    pub text: String,
    /// `embedded:render/Dockerfile.hbs` or a filesystem path.
    pub origin: String,
}

#[derive(Debug, Clone, Default)]
pub struct Catalog {
    /// Override directories, highest priority first; each holds `<kind>/<file>`.
    overrides: Vec<PathBuf>,
}

impl Catalog {
    /// The embedded catalog only.
    pub fn embedded() -> Self {
        Catalog::default()
    }

    /// Layer a directory over what is already there (it wins).
    pub fn with_override(mut self, dir: impl AsRef<Path>) -> Self {
        self.overrides.insert(0, dir.as_ref().to_path_buf());
        self
    }

    pub fn template(&self, kind: &str, file: &str) -> Result<TemplateSource, CatalogError> {
        for dir in &self.overrides {
            let path = dir.join(kind).join(file);
            match std::fs::read_to_string(&path) {
                Ok(text) => return Ok(TemplateSource { text, origin: path.display().to_string() }),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => return Err(CatalogError::Io { path, source }),
            }
        }
        let rel = format!("{kind}/{file}");
        if let Some(f) = EMBEDDED.get_file(&rel)
            && let Some(text) = f.contents_utf8()
        {
            return Ok(TemplateSource { text: text.to_string(), origin: format!("embedded:{rel}") });
        }
        let mut looked: Vec<String> = self.overrides.iter().map(|d| d.display().to_string()).collect();
        looked.push("embedded catalog".into());
        Err(CatalogError::NotFound { kind: kind.into(), file: file.into(), looked: looked.join(", ") })
    }

    /// A kind's README (inputs and outputs), if the catalog has one.
    pub fn readme(&self, kind: &str) -> Option<String> {
        self.template(kind, "README.md").ok().map(|t| t.text)
    }

    /// File names the embedded catalog has for `kind`.
    pub fn embedded_files(kind: &str) -> Vec<String> {
        EMBEDDED
            .get_dir(kind)
            .map(|d| {
                d.files().map(|f| f.path().file_name().unwrap_or_default().to_string_lossy().into_owned()).collect()
            })
            .unwrap_or_default()
    }
}
