//! otter-boot library: boot-count backends and health checks.
