//! source: see lib.rs.
