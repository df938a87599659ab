//! `rt image pull`: the OCI distribution API over HTTP(S) with ureq —
//! anonymous, basic and bearer-token auth, image indexes (Docker manifest
//! lists too) resolved to the host platform, gzip and zstd layers. Blobs
//! already in the store are skipped; each blob is verified as it streams in
//! and retried on failure, so an interrupted pull can simply be run again.

use std::io::Read;
use std::time::Duration;

use crate::digest::Digest;
use crate::reference::Reference;
use crate::store::{self, Store};
use crate::types::{
    Descriptor, Index, Manifest, DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST,
};

/// Errors of pulling.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{url}: {status} {text}")]
    Status {
        url: String,
        status: u16,
        text: String,
    },
    #[error("{url}")]
    Transport {
        url: String,
        #[source]
        source: Box<ureq::Transport>,
    },
    #[error("{url}: reading the response")]
    Read {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}: the registry requires authentication; pass --username and --password")]
    NeedAuth(String),
    #[error("{0}: unsupported authentication challenge {1:?}")]
    Challenge(String, String),
    #[error("{url}: parsing {what}")]
    Json {
        url: String,
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("{0}: unsupported manifest media type {1:?}")]
    MediaType(String, String),
    #[error("{reference}: no manifest for {platform}")]
    NoPlatform { reference: String, platform: String },
    #[error(transparent)]
    Reference(#[from] crate::reference::Error),
    #[error(transparent)]
    Store(#[from] store::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

/// How to reach the registry.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Speak HTTP instead of HTTPS (implied for 127.0.0.1 and localhost).
    pub plain_http: bool,
    pub username: Option<String>,
    pub password: Option<String>,
}

/// What a pull reports as it goes.
pub trait Progress {
    fn start(&mut self, digest: &str, size: u64);
    fn advance(&mut self, digest: &str, bytes: u64);
    fn done(&mut self, digest: &str, skipped: bool);
}

const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";
const MANIFEST_LIMIT: u64 = 4 << 20;
const ATTEMPTS: u32 = 3;

struct Client {
    agent: ureq::Agent,
    base: String,
    repository: String,
    opts: Options,
    auth: Option<String>,
}

fn is_loopback(host: &str) -> bool {
    let name = host.rsplit_once(':').map_or(host, |(h, _)| h);
    matches!(name, "localhost" | "127.0.0.1" | "[::1]")
}

impl Client {
    fn new(r: &Reference, opts: Options) -> Client {
        let host = if r.registry == crate::reference::DEFAULT_REGISTRY {
            "registry-1.docker.io".to_string()
        } else {
            r.registry.clone()
        };
        let scheme = if opts.plain_http || is_loopback(&host) {
            "http"
        } else {
            "https"
        };
        Client {
            agent: ureq::AgentBuilder::new()
                .timeout_connect(Duration::from_secs(30))
                .timeout_read(Duration::from_secs(120))
                .redirects(8)
                .build(),
            base: format!("{scheme}://{host}/v2/{}", r.repository),
            repository: r.repository.clone(),
            opts,
            auth: None,
        }
    }

    /// GET `path` under the repository, authenticating on a 401 challenge.
    fn get(&mut self, path: &str, accept: Option<&str>) -> Result<ureq::Response> {
        let url = format!("{}/{path}", self.base);
        for retry_auth in [true, false] {
            let mut req = self.agent.get(&url);
            if let Some(a) = accept {
                req = req.set("Accept", a);
            }
            if let Some(auth) = &self.auth {
                req = req.set("Authorization", auth);
            }
            match req.call() {
                Ok(resp) => return Ok(resp),
                Err(ureq::Error::Status(401, resp)) if retry_auth => {
                    let challenge = resp
                        .header("WWW-Authenticate")
                        .unwrap_or_default()
                        .to_string();
                    self.auth = Some(self.authenticate(&url, &challenge)?);
                }
                Err(ureq::Error::Status(status, resp)) => {
                    let text = resp.into_string().unwrap_or_default();
                    return Err(Error::Status {
                        url,
                        status,
                        text: text.chars().take(300).collect(),
                    });
                }
                Err(ureq::Error::Transport(t)) => {
                    return Err(Error::Transport {
                        url,
                        source: Box::new(t),
                    })
                }
            }
        }
        Err(Error::NeedAuth(url))
    }

    fn basic(&self) -> Option<String> {
        use base64::Engine;
        let (u, p) = (
            self.opts.username.as_ref()?,
            self.opts.password.as_deref().unwrap_or_default(),
        );
        Some(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
        ))
    }

    /// The Authorization header answering `challenge`.
    fn authenticate(&self, url: &str, challenge: &str) -> Result<String> {
        let (scheme, params) = challenge.split_once(' ').unwrap_or((challenge, ""));
        match scheme.to_ascii_lowercase().as_str() {
            "basic" => self.basic().ok_or_else(|| Error::NeedAuth(url.to_string())),
            "bearer" => {
                let p = parse_challenge(params);
                let realm = p
                    .iter()
                    .find(|(k, _)| k == "realm")
                    .map(|(_, v)| v.clone())
                    .ok_or_else(|| Error::Challenge(url.to_string(), challenge.to_string()))?;
                let mut req = self.agent.get(&realm);
                for (k, v) in &p {
                    if k == "service" || k == "scope" {
                        req = req.query(k, v);
                    }
                }
                if !p.iter().any(|(k, _)| k == "scope") {
                    req = req.query("scope", &format!("repository:{}:pull", self.repository));
                }
                if let Some(b) = self.basic() {
                    req = req.set("Authorization", &b);
                }
                let resp = req.call().map_err(|e| match e {
                    ureq::Error::Status(401 | 403, _) => Error::NeedAuth(url.to_string()),
                    ureq::Error::Status(status, r) => Error::Status {
                        url: realm.clone(),
                        status,
                        text: r.into_string().unwrap_or_default(),
                    },
                    ureq::Error::Transport(t) => Error::Transport {
                        url: realm.clone(),
                        source: Box::new(t),
                    },
                })?;
                let v: serde_json::Value = read_json(resp, &realm, "token response")?;
                let token = v["token"]
                    .as_str()
                    .or(v["access_token"].as_str())
                    .ok_or_else(|| Error::Challenge(url.to_string(), challenge.to_string()))?;
                Ok(format!("Bearer {token}"))
            }
            _ => Err(Error::Challenge(url.to_string(), challenge.to_string())),
        }
    }
}

/// `realm="…",service="…",scope="…"` as pairs.
pub fn parse_challenge(params: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = params.trim();
    while !rest.is_empty() {
        let Some((k, after)) = rest.split_once('=') else {
            break;
        };
        let k = k.trim().trim_start_matches(',').trim().to_string();
        let (v, tail) = if let Some(q) = after.strip_prefix('"') {
            let end = q.find('"').unwrap_or(q.len());
            (q[..end].to_string(), q.get(end + 1..).unwrap_or(""))
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_string(), &after[end..])
        };
        out.push((k, v));
        rest = tail.trim_start_matches(',').trim();
    }
    out
}

fn read_json<T: serde::de::DeserializeOwned>(
    resp: ureq::Response,
    url: &str,
    what: &'static str,
) -> Result<T> {
    let mut bytes = Vec::new();
    resp.into_reader()
        .take(MANIFEST_LIMIT)
        .read_to_end(&mut bytes)
        .map_err(|source| Error::Read {
            url: url.to_string(),
            source,
        })?;
    serde_json::from_slice(&bytes).map_err(|source| Error::Json {
        url: url.to_string(),
        what,
        source,
    })
}

/// Fetches a manifest or index (by tag or digest) into the store.
fn fetch_manifest(c: &mut Client, store: &Store, object: &str) -> Result<Descriptor> {
    let resp = c.get(&format!("manifests/{object}"), Some(ACCEPT))?;
    let url = resp.get_url().to_string();
    let media = resp.content_type().to_string();
    let mut bytes = Vec::new();
    resp.into_reader()
        .take(MANIFEST_LIMIT)
        .read_to_end(&mut bytes)
        .map_err(|source| Error::Read {
            url: url.clone(),
            source,
        })?;
    let media = if [OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST].contains(&media.as_str())
    {
        media
    } else {
        // Some registries answer application/json: use the document's own.
        let v: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|source| Error::Json {
                url: url.clone(),
                what: "manifest",
                source,
            })?;
        match v["mediaType"].as_str() {
            Some(m) => m.to_string(),
            None if v.get("manifests").is_some() => OCI_INDEX.to_string(),
            None if v.get("layers").is_some() => OCI_MANIFEST.to_string(),
            None => return Err(Error::MediaType(url, media)),
        }
    };
    let expected = object.parse::<Digest>().ok();
    let (d, n) = store.put(
        &bytes[..],
        expected.as_ref().map(|d| (d, Some(bytes.len() as u64))),
    )?;
    Ok(Descriptor::new(&media, &d, n))
}

/// Streams a blob into the store, verified, retrying a failed attempt.
fn fetch_blob(
    c: &mut Client,
    store: &Store,
    desc: &Descriptor,
    progress: &mut dyn Progress,
) -> Result<()> {
    let d = store::parse_digest(&desc.digest)?;
    if store.has(&d) {
        progress.done(&desc.digest, true);
        return Ok(());
    }
    let mut last = None;
    for _ in 0..ATTEMPTS {
        progress.start(&desc.digest, desc.size);
        let resp = match c.get(&format!("blobs/{}", desc.digest), None) {
            Ok(r) => r,
            Err(e @ (Error::Status { .. } | Error::NeedAuth(_) | Error::Challenge(..))) => {
                return Err(e)
            }
            Err(e) => {
                last = Some(e);
                continue;
            }
        };
        let reader = Counting {
            inner: resp.into_reader(),
            digest: &desc.digest,
            progress: &mut *progress,
        };
        match store.put(reader, Some((&d, Some(desc.size)))) {
            Ok(_) => {
                progress.done(&desc.digest, false);
                return Ok(());
            }
            Err(e) => last = Some(e.into()),
        }
    }
    Err(last.expect("at least one attempt"))
}

struct Counting<'a, R> {
    inner: R,
    digest: &'a str,
    progress: &'a mut dyn Progress,
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.advance(self.digest, n as u64);
        Ok(n)
    }
}

/// Pulls `reference` into the store and names it; returns the name.
pub fn pull(
    store: &Store,
    reference: &str,
    opts: Options,
    progress: &mut dyn Progress,
) -> Result<String> {
    let r = Reference::parse(reference)?;
    let _lock = store.writer_lock()?;
    let mut c = Client::new(&r, opts);
    let top = fetch_manifest(&mut c, store, r.object())?;
    let manifest_desc = if top.is_index() {
        let index: Index = store.read_json(&top, "index")?;
        let chosen = store::select_platform(&index.manifests)
            .cloned()
            .ok_or_else(|| {
                let (os, arch) = store::host_platform();
                Error::NoPlatform {
                    reference: r.to_string(),
                    platform: format!("{os}/{arch}"),
                }
            })?;
        fetch_manifest(&mut c, store, &chosen.digest)?
    } else {
        top.clone()
    };
    let manifest: Manifest = store.read_json(&manifest_desc, "manifest")?;
    fetch_blob(&mut c, store, &manifest.config, progress)?;
    for l in &manifest.layers {
        fetch_blob(&mut c, store, l, progress)?;
    }
    let name = r.to_string();
    store.tag(&name, top)?;
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        let p = parse_challenge(
            r#"realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
        );
        assert_eq!(
            p[0],
            ("realm".into(), "https://auth.docker.io/token".into())
        );
        assert_eq!(p[1], ("service".into(), "registry.docker.io".into()));
        assert_eq!(p[2].1, "repository:library/busybox:pull");
        assert!(
            is_loopback("127.0.0.1:5000") && is_loopback("localhost") && !is_loopback("quay.io")
        );
    }
}
