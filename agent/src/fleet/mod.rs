//! fleet: see lib.rs.
