//! deploy: see lib.rs.
