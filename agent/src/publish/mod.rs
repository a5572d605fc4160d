//! Publisher side: keys, signing, attaching release artifacts (feature `publish`).
