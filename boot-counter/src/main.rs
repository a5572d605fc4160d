//! `otter-boot`: boot counting, health checks and rollback on the device.
//! Exit codes: 0 ok (green), 1 failure (red verdict, backend error), 2 usage or config error.

use std::process::ExitCode;

fn main() -> ExitCode {
    ExitCode::from(otter_boot::cli::main(
        std::env::args().skip(1),
        "otter-boot",
    ))
}
