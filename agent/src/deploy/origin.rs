//! `.origin` files: GKeyFile text next to each deployment (`deploy/CSUM.SERIAL.origin`).
//!
//! otter writes
//! ```text
//! [origin]
//! container-image-reference=ostree-unverified-registry:host/repo:tag
//!
//! [otter]
//! image=docker://host/repo:tag
//! ```
//! `container-image-reference` is the key bootc/rpm-ostree use (so their tools recognise the
//! deployment as container-based); `[otter] image` is otter's own canonical image reference and
//! the one `otter upgrade` tracks. `ostree admin status` prints "origin: <unknown origin type>"
//! for it, because it only knows `refspec`.

use anyhow::{bail, Result};

/// Group holding otter's own keys.
pub const OTTER_GROUP: &str = "otter";

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Origin {
    groups: Vec<(String, Vec<(String, String)>)>,
}

impl Origin {
    /// The origin of a deployment made from `image` (canonical otter image reference).
    pub fn for_image(image: &str) -> Origin {
        let mut o = Origin::default();
        o.set("origin", "container-image-reference", &container_ref(image));
        o.set(OTTER_GROUP, "image", image);
        o
    }

    pub fn parse(text: &str) -> Result<Origin> {
        let mut o = Origin::default();
        for (n, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(g) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                o.groups.push((g.to_owned(), Vec::new()));
                continue;
            }
            let Some((k, v)) = line.split_once('=') else {
                bail!("line {}: expected key=value, found {raw:?}", n + 1);
            };
            let Some((_, keys)) = o.groups.last_mut() else {
                bail!("line {}: key {:?} before any [group]", n + 1, k.trim());
            };
            keys.push((k.trim().to_owned(), unescape(v.trim_start())));
        }
        Ok(o)
    }

    pub fn get(&self, group: &str, key: &str) -> Option<&str> {
        self.groups
            .iter()
            .filter(|(g, _)| g == group)
            .flat_map(|(_, keys)| keys.iter())
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn set(&mut self, group: &str, key: &str, value: &str) {
        let idx = match self.groups.iter().position(|(g, _)| g == group) {
            Some(i) => i,
            None => {
                self.groups.push((group.to_owned(), Vec::new()));
                self.groups.len() - 1
            }
        };
        let keys = &mut self.groups[idx].1;
        match keys.iter_mut().find(|(k, _)| k == key) {
            Some(kv) => kv.1 = value.to_owned(),
            None => keys.push((key.to_owned(), value.to_owned())),
        }
    }

    /// The image otter tracks for this deployment.
    pub fn image(&self) -> Option<&str> {
        self.get(OTTER_GROUP, "image")
    }

    /// The ostree refspec, for deployments made by `ostree admin deploy`.
    pub fn refspec(&self) -> Option<&str> {
        self.get("origin", "refspec")
    }

    /// GKeyFile text, as `g_key_file_to_data` lays it out.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        for (i, (g, keys)) in self.groups.iter().enumerate() {
            if i > 0 {
                s.push('\n');
            }
            s.push_str(&format!("[{g}]\n"));
            for (k, v) in keys {
                s.push_str(&format!("{k}={}\n", escape(v)));
            }
        }
        s
    }
}

/// ostree-ext's spelling of an image reference (`ostree-unverified-registry:` for registries,
/// `ostree-unverified-image:TRANSPORT:…` otherwise). otter verifies images itself.
fn container_ref(image: &str) -> String {
    if let Some(rest) = image.strip_prefix("docker://") {
        format!("ostree-unverified-registry:{rest}")
    } else if image.starts_with("oci:") || image.starts_with("oci-archive:") {
        format!("ostree-unverified-image:{image}")
    } else {
        format!("ostree-unverified-registry:{image}")
    }
}

fn escape(v: &str) -> String {
    let mut s = String::new();
    for (i, c) in v.chars().enumerate() {
        match c {
            ' ' if i == 0 => s.push_str("\\s"),
            '\n' => s.push_str("\\n"),
            '\t' => s.push_str("\\t"),
            '\r' => s.push_str("\\r"),
            '\\' => s.push_str("\\\\"),
            c => s.push(c),
        }
    }
    s
}

fn unescape(v: &str) -> String {
    let mut s = String::new();
    let mut it = v.chars();
    while let Some(c) = it.next() {
        if c != '\\' {
            s.push(c);
            continue;
        }
        match it.next() {
            Some('s') => s.push(' '),
            Some('n') => s.push('\n'),
            Some('t') => s.push('\t'),
            Some('r') => s.push('\r'),
            Some(o) => s.push(o),
            None => {}
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let o = Origin::for_image("docker://example.com/os:1");
        let t = o.to_text();
        assert_eq!(
            t,
            "[origin]\ncontainer-image-reference=ostree-unverified-registry:example.com/os:1\n\n\
             [otter]\nimage=docker://example.com/os:1\n"
        );
        assert_eq!(Origin::parse(&t).unwrap(), o);
        assert_eq!(
            Origin::parse("[origin]\nrefspec=os/x\n").unwrap().refspec(),
            Some("os/x")
        );
        assert!(Origin::parse("x=1\n").is_err());
    }
}
