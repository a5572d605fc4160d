//! cli: see lib.rs.

/// Runs the command line; returns the process exit code.
pub fn main() -> i32 {
    eprintln!("otter: not built yet");
    2
}
