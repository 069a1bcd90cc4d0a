//! `hitless send` (stub: being written).

/// Arguments of `hitless send`.
#[derive(clap::Args, Debug, Clone)]
pub struct SendArgs {
    /// MPEG-TS file to send.
    pub file: std::path::PathBuf,
    /// Destination URL (repeat for several legs).
    #[arg(long = "to", required = true)]
    pub to: Vec<String>,
}

pub fn run(_args: SendArgs) -> anyhow::Result<()> {
    anyhow::bail!("not written yet")
}
