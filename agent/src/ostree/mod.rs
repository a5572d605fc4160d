//! ostree: see lib.rs.
