//! `hitless recv` (stub: being written).

/// Arguments of `hitless recv`.
#[derive(clap::Args, Debug, Clone)]
pub struct RecvArgs {
    /// URL to receive from.
    pub url: String,
    /// File to write the TS payload to.
    #[arg(long)]
    pub out: std::path::PathBuf,
}

pub fn run(_args: RecvArgs) -> anyhow::Result<()> {
    anyhow::bail!("not written yet")
}
