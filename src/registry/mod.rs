//! OCI image copy by digest between registries (Distribution API v2).
