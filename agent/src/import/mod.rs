//! import: see lib.rs.
