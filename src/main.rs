//! `hitless` command line: thin wrapper that loads configuration and starts the runtime.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use hitless::config::Config;
use hitless::tools;

#[derive(Parser)]
#[command(
    name = "hitless",
    version,
    about = "Hitless stream-merge gateway for MPEG-TS over UDP/RTP (SMPTE ST 2022-7)"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the gateway (on the embedded default configuration when --config is not given).
    Run {
        /// Configuration file (TOML).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Validate a configuration file: exit 0 when valid, else print every error.
    CheckConfig {
        /// Configuration file (TOML).
        file: PathBuf,
    },
    /// Send a TS file to one or more legs, paced, with seeded impairments.
    Send(tools::send::SendArgs),
    /// Capture a stream's TS payload to a file and report what arrived.
    Recv(tools::recv::RecvArgs),
    /// ETSI TR 101 290 Priority 1 report of a TS file (PCR-timed) or a udp:// / rtp:// stream.
    Analyze(tools::analyze::AnalyzeArgs),
    /// A first look: run the default gateway, feed it two impaired legs, show the result.
    Demo(tools::demo::DemoArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo draws its own live status line: the gateway it runs logs only errors there
    // (HITLESS_LOG still overrides).
    init_tracing(if matches!(cli.command, Cmd::Demo(_)) {
        "error"
    } else {
        "info"
    });
    let res = match cli.command {
        Cmd::Run { config } => run(config),
        Cmd::CheckConfig { file } => check_config(&file),
        Cmd::Send(a) => tools::send::run(a),
        Cmd::Recv(a) => tools::recv::run(a),
        Cmd::Analyze(a) => tools::analyze::run(a),
        Cmd::Demo(a) => tools::demo::run(a),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(default_level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("HITLESS_LOG").unwrap_or_else(|_| EnvFilter::new(default_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn check_config(file: &std::path::Path) -> anyhow::Result<()> {
    let cfg = Config::load(file)?;
    println!(
        "{}: valid ({} channel{})",
        file.display(),
        cfg.channels.len(),
        if cfg.channels.len() == 1 { "" } else { "s" }
    );
    Ok(())
}

fn run(config: Option<PathBuf>) -> anyhow::Result<()> {
    let cfg = match &config {
        Some(p) => Config::load(p)?,
        None => {
            tracing::info!("no --config given: running the embedded default configuration");
            Config::from_str(hitless::config::DEFAULT_CONFIG, None)?
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("hitless")
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(serve(cfg))
}

async fn serve(cfg: Config) -> anyhow::Result<()> {
    let prometheus = hitless::metrics::install();
    let api_token = match &cfg.node.api_token_file {
        Some(p) => {
            let t = std::fs::read_to_string(p)
                .with_context(|| format!("reading node.api_token_file {}", p.display()))?;
            let t = t.trim().to_owned();
            anyhow::ensure!(
                !t.is_empty(),
                "node.api_token_file {} is empty",
                p.display()
            );
            Some(t)
        }
        None => None,
    };
    // A cluster member starts no channel by itself: the manager places them.
    let gateway = if cfg.cluster.is_some() {
        hitless::runtime::Gateway::start(&Config {
            channels: Vec::new(),
            ..cfg.clone()
        })?
    } else {
        hitless::runtime::Gateway::start(&cfg)?
    };
    let listener = hitless::http::bind(cfg.node.http_listen)
        .await
        .with_context(|| format!("binding node.http_listen {}", cfg.node.http_listen))?;
    let http_addr = listener.local_addr()?;
    let state = Arc::new(hitless::http::AppState {
        node: cfg.node.name.clone(),
        gateway: tokio::sync::RwLock::new(gateway),
        prometheus,
        cluster: std::sync::OnceLock::new(),
        api_token,
    });
    if let Some(cl) = &cfg.cluster {
        let h = hitless::control::transport::start(&cfg, cl, state.clone()).await?;
        let _ = state.cluster.set(h);
    }
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let http = tokio::spawn(hitless::http::serve(listener, state.clone(), async {
        let _ = stop_rx.await;
    }));
    // Tests and scripts wait for this exact line.
    tracing::info!(node = %cfg.node.name, http = %http_addr, channels = cfg.channels.len(), "hitless ready");
    shutdown_signal().await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(());
    let _ = http.await;
    if let Some(c) = state.cluster.get() {
        c.shutdown().await;
    }
    let state = Arc::try_unwrap(state)
        .map_err(|_| anyhow::anyhow!("HTTP state still in use at shutdown"))?;
    for s in state.gateway.into_inner().shutdown().await {
        tracing::info!(
            channel = %s.name,
            output_packets = s.output.packets,
            unrecovered = s.merge.unrecovered,
            duplicates = s.merge.duplicates,
            "final counters"
        );
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
