//! Arming the boot counter and reading its verdict.
