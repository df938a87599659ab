//! Image references: `[registry/]repository[:tag][@digest]`, normalised as
//! Docker does (docker.io, `library/` for one-component names, tag `latest`).

use std::fmt;

/// Errors of reference parsing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid image reference {0:?}")]
    Invalid(String),
}

pub const DEFAULT_REGISTRY: &str = "docker.io";

/// A parsed reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl Reference {
    pub fn parse(s: &str) -> Result<Reference, Error> {
        let bad = || Error::Invalid(s.to_string());
        if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad());
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (r, Some(d.to_string())),
            None => (s, None),
        };
        // A tag is after the last ':' that follows the last '/'.
        let slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[slash..].rfind(':') {
            Some(i) => (&rest[..slash + i], Some(rest[slash + i + 1..].to_string())),
            None => (rest, None),
        };
        let (registry, repository) = match name.split_once('/') {
            Some((first, more))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), more.to_string())
            }
            _ => (DEFAULT_REGISTRY.to_string(), name.to_string()),
        };
        let repository = if registry == DEFAULT_REGISTRY && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        let valid_part = |p: &str| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
                && p != "."
                && p != ".."
        };
        if !repository.split('/').all(valid_part) {
            return Err(bad());
        }
        if let Some(t) = &tag {
            if t.is_empty()
                || t.len() > 128
                || !t
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            {
                return Err(bad());
            }
        }
        if let Some(d) = &digest {
            d.parse::<crate::digest::Digest>().map_err(|_| bad())?;
        }
        let tag = match (&tag, &digest) {
            (None, None) => Some("latest".to_string()),
            _ => tag,
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// What to ask the registry for: the digest if pinned, else the tag.
    pub fn object(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_like_docker() {
        let r = |s: &str| Reference::parse(s).unwrap().to_string();
        assert_eq!(r("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(r("user/app:1.0"), "docker.io/user/app:1.0");
        assert_eq!(
            r("127.0.0.1:5000/test/img"),
            "127.0.0.1:5000/test/img:latest"
        );
        assert_eq!(r("localhost/img:v2"), "localhost/img:v2");
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(r(&format!("quay.io/x/y@{d}")), format!("quay.io/x/y@{d}"));
        let p = Reference::parse("127.0.0.1:5000/a:t").unwrap();
        assert_eq!(
            (p.registry.as_str(), p.repository.as_str(), p.object()),
            ("127.0.0.1:5000", "a", "t")
        );
        for bad in ["", "UPPER", "a/../b", "a:b:c/d e", "x@sha256:12"] {
            assert!(Reference::parse(bad).is_err(), "{bad}");
        }
    }
}
