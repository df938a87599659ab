//! Content digests (`sha256:<hex>`) and a reader that checks one as it reads.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

/// Errors of digest parsing and verification.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid digest {0:?}: rt supports sha256:<64 hex digits>")]
    Invalid(String),
    #[error("content does not match its digest: expected {expected}, got {actual}")]
    Mismatch { expected: Digest, actual: Digest },
    #[error("content of {digest} has {actual} bytes, its descriptor says {expected}")]
    Size {
        digest: Digest,
        expected: u64,
        actual: u64,
    },
}

/// A sha256 digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    hex: String,
}

impl Digest {
    /// The 64 hex digits.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// Where the blob lives under an image layout's `blobs` directory.
    pub fn path_in(&self, blobs: &Path) -> PathBuf {
        blobs.join("sha256").join(&self.hex)
    }

    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest {
            hex: format!("{:x}", Sha256::digest(bytes)),
        }
    }
}

impl FromStr for Digest {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let hex = s
            .strip_prefix("sha256:")
            .filter(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            .ok_or_else(|| Error::Invalid(s.to_string()))?;
        Ok(Digest {
            hex: hex.to_string(),
        })
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

/// Hashes and counts everything read through it.
#[derive(Debug)]
pub struct Verifier<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> Verifier<R> {
    pub fn new(inner: R) -> Self {
        Verifier {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// Reads what is left (a tar reader may stop before the padding), then
    /// returns the digest and size of everything read.
    pub fn finish(self) -> std::io::Result<(Digest, u64)> {
        self.finish_into().map(|(d, _)| d)
    }

    /// Like `finish`, also giving back the inner reader.
    pub fn finish_into(mut self) -> std::io::Result<((Digest, u64), R)> {
        std::io::copy(&mut self, &mut std::io::sink())?;
        let hex = format!("{:x}", self.hasher.finalize());
        Ok(((Digest { hex }, self.count), self.inner))
    }
}

impl<R: Read> Read for Verifier<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// Checks a computed digest and size against what a descriptor says.
pub fn check(expected: &Digest, size: Option<u64>, actual: (Digest, u64)) -> Result<(), Error> {
    if actual.0 != *expected {
        return Err(Error::Mismatch {
            expected: expected.clone(),
            actual: actual.0,
        });
    }
    match size {
        Some(s) if s != actual.1 => Err(Error::Size {
            digest: expected.clone(),
            expected: s,
            actual: actual.1,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_verify() {
        let d = Digest::of(b"hello");
        assert_eq!(
            d.to_string(),
            "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(d.to_string().parse::<Digest>().unwrap(), d);
        for bad in [
            "sha256:abc",
            "md5:00",
            "sha256:../../etc/passwd",
            &d.to_string().to_uppercase(),
        ] {
            assert!(bad.parse::<Digest>().is_err(), "{bad}");
        }
        let mut v = Verifier::new(&b"hello"[..]);
        let mut buf = [0u8; 2];
        v.read_exact(&mut buf).unwrap();
        let got = v.finish().unwrap();
        assert!(check(&d, Some(5), got.clone()).is_ok());
        assert!(matches!(
            check(&d, Some(6), got.clone()),
            Err(Error::Size { .. })
        ));
        let other = Digest::of(b"x");
        assert!(matches!(
            check(&other, None, got),
            Err(Error::Mismatch { .. })
        ));
    }
}
