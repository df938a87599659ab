//! `rt list`: a table, `--format json`, or `-q` for ids only.

use rt_container::Runtime;

use super::Format;
use crate::Global;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(short, long, value_enum, default_value = "table")]
    pub format: Format,
    /// Only the ids.
    #[arg(short, long)]
    pub quiet: bool,
}

pub fn run(g: &Global, a: Args) -> anyhow::Result<()> {
    let all = Runtime::new(&g.root).list()?;
    if a.quiet {
        for (st, _) in &all {
            println!("{}", st.id);
        }
        return Ok(());
    }
    match a.format {
        Format::Json => {
            let v: Vec<_> = all.iter().map(|(st, status)| st.oci(*status)).collect();
            println!("{}", serde_json::to_string(&v)?);
        }
        Format::Table => {
            let mut rows =
                vec![["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"].map(String::from)];
            for (st, status) in &all {
                let pid = if *status == rt_container::state::Status::Stopped {
                    0
                } else {
                    st.pid
                };
                rows.push([
                    st.id.clone(),
                    pid.to_string(),
                    status.to_string(),
                    st.bundle.display().to_string(),
                    st.created.clone(),
                    st.owner.clone(),
                ]);
            }
            let widths: Vec<usize> = (0..6)
                .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
                .collect();
            for r in rows {
                let line: Vec<String> = r
                    .iter()
                    .enumerate()
                    .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
                    .collect();
                println!("{}", line.join("   ").trim_end());
            }
        }
    }
    Ok(())
}
