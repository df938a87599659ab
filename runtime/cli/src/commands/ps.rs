//! `rt ps`: the container's processes, as JSON host pids or as `ps` output
//! filtered to the container.

use std::process::Command;

use rt_container::Runtime;

use super::Format;
use crate::Global;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(short, long, value_enum, default_value = "table")]
    pub format: Format,
    pub id: String,
    /// Options for ps(1) (default -ef).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub ps_args: Vec<String>,
}

pub fn run(g: &Global, a: Args) -> anyhow::Result<()> {
    let rt = Runtime::new(&g.root);
    // A VM container's processes are the guest's: its rt answers.
    if let Some(out) = rt.ps(&a.id, matches!(a.format, Format::Json), &a.ps_args)? {
        print!("{out}");
        return Ok(());
    }
    let pids = rt.pids(&a.id)?;
    if let Format::Json = a.format {
        let v: Vec<i32> = pids.iter().map(|p| p.as_raw()).collect();
        println!("{}", serde_json::to_string(&v)?);
        return Ok(());
    }
    let ps_args = if a.ps_args.is_empty() {
        vec!["-ef".to_string()]
    } else {
        a.ps_args
    };
    let out = Command::new("ps")
        .args(&ps_args)
        .output()
        .map_err(|e| anyhow::anyhow!("running ps: {e}"))?;
    if !out.status.success() {
        anyhow::bail!(
            "ps {}: {}",
            ps_args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    let col = header
        .split_whitespace()
        .position(|h| h == "PID")
        .ok_or_else(|| anyhow::anyhow!("ps output has no PID column"))?;
    println!("{header}");
    for line in lines {
        let pid: Option<i32> = line
            .split_whitespace()
            .nth(col)
            .and_then(|p| p.parse().ok());
        if pid.is_some_and(|p| pids.iter().any(|q| q.as_raw() == p)) {
            println!("{line}");
        }
    }
    Ok(())
}
