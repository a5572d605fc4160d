//! The configuration file (/etc/otter/otter.conf).
