//! Small pieces shared by the tools: Ctrl-C as a flag, rate parsing, status display.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// The tools are glue: this is where they read the clock.
#[allow(clippy::disallowed_methods)]
#[inline]
pub fn clock() -> std::time::Instant {
    std::time::Instant::now()
}

/// A flag raised by the first SIGINT (Ctrl-C); a second one exits at once with status 130.
/// The handler runs on a helper thread with a tiny tokio runtime, so the tools' loops stay
/// plain blocking code that checks the flag.
pub fn ctrl_c_flag() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    let spawned = std::thread::Builder::new()
        .name("ctrl-c".into())
        .spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if tokio::signal::ctrl_c().await.is_ok() {
                    f.store(true, Ordering::Relaxed);
                }
                if tokio::signal::ctrl_c().await.is_ok() {
                    std::process::exit(130);
                }
            });
        });
    if let Err(e) = spawned {
        tracing::warn!("cannot watch for Ctrl-C: {e}");
    }
    flag
}

/// Parse a rate in bit/s with an optional k/M/G suffix (decimal): `2000000`, `2M`, `1.5M`.
pub fn parse_bitrate(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, 'k' | 'K')) => (&t[..i], 1e3),
        Some((i, 'm' | 'M')) => (&t[..i], 1e6),
        Some((i, 'g' | 'G')) => (&t[..i], 1e9),
        _ => (t, 1.0),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a bitrate (e.g. 2000000, 2M, 500k)"))?;
    let bps = v * mult;
    if !(bps.is_finite() && bps >= 1.0) {
        return Err(format!("bitrate {s:?} must be at least 1 bit/s"));
    }
    Ok(bps.round() as u64)
}

/// Whether live status goes to stderr (a terminal only; scripts and tests get quiet runs).
pub fn stderr_is_terminal() -> bool {
    std::io::stderr().is_terminal()
}

/// A spinner-style status line on stderr when it is a terminal, nothing otherwise.
pub fn status_bar(len: Option<u64>) -> Option<indicatif::ProgressBar> {
    if !stderr_is_terminal() {
        return None;
    }
    let pb = match len {
        Some(n) => {
            let pb = indicatif::ProgressBar::new(n);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{elapsed_precise} [{bar:30}] {percent:>3}% {msg}",
            ) {
                pb.set_style(style.progress_chars("=> "));
            }
            pb
        }
        None => {
            let pb = indicatif::ProgressBar::new_spinner();
            if let Ok(style) =
                indicatif::ProgressStyle::with_template("{elapsed_precise} {spinner} {msg}")
            {
                pb.set_style(style);
            }
            pb
        }
    };
    Some(pb)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitrates() {
        assert_eq!(parse_bitrate("2000000"), Ok(2_000_000));
        assert_eq!(parse_bitrate("2M"), Ok(2_000_000));
        assert_eq!(parse_bitrate("1.5m"), Ok(1_500_000));
        assert_eq!(parse_bitrate("500k"), Ok(500_000));
        assert!(parse_bitrate("fast").is_err());
        assert!(parse_bitrate("0").is_err());
    }
}
