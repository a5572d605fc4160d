//! fetch: see lib.rs.
