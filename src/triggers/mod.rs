//! Git push triggers: pipeline selection from a push payload (git2), and the
//! webhook server.
