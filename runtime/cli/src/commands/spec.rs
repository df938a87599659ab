//! `rt spec`: writes a default config.json, as `runc spec` does.

use std::path::PathBuf;

use rt_container::defaults::default_spec;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where to write config.json.
    #[arg(short, long, default_value = ".")]
    pub bundle: PathBuf,
    /// A spec for a rootless container (user namespace, no network namespace).
    #[arg(long)]
    pub rootless: bool,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let path = a.bundle.join("config.json");
    if path.exists() {
        anyhow::bail!("File {} exists. Remove it first", path.display());
    }
    let text = serde_json::to_string_pretty(&default_spec(a.rootless))?;
    std::fs::write(&path, text + "\n")
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_spec_validates() {
        for rootless in [false, true] {
            let spec: oci_spec::runtime::Spec =
                serde_json::from_value(default_spec(rootless)).unwrap();
            rt_container::spec::validate(&spec).unwrap();
            let profile = spec.linux().as_ref().unwrap().seccomp().as_ref().unwrap();
            assert_eq!(
                profile.default_action(),
                oci_spec::runtime::LinuxSeccompAction::ScmpActErrno
            );
        }
    }
}
