//! import: OCI layers into an ostree commit (in progress).
