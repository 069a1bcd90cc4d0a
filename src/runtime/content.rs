//! Glue of the content analyser for a switch channel: one [`ContentTap`] per source on the
//! packet path, one [`Worker`] thread per channel behind a bounded queue, one
//! [`ContentMonitor`] per source that turns the worker's reports into rule observations.
//! The channel thread only copies what a tap selected and polls the worker's reports when it
//! wakes up anyway; it never waits for a decoder.

use std::time::Instant;

use crate::config::ChannelConfig;
use crate::rules::Condition;
use crate::rules::SourceRules;
use crate::rules::cqa::ContentConfig;
use crate::rules::cqa::monitor::{CONTENT_CONDITIONS, ContentMonitor, ContentStatus, State};
use crate::rules::cqa::tap::{ContentTap, TapEvent};
use crate::rules::cqa::worker::{QueueStats, Report, Worker};

/// Counters of a channel's analysis, for the API and metrics.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct ContentStats {
    /// Jobs (keyframes, audio PES) handed to the worker.
    pub queued: u64,
    /// Jobs dropped because the worker was busy: analysis lost, never packets.
    pub dropped: u64,
    /// Keyframes or PES packets too large to copy.
    pub oversize: u64,
}

pub(super) struct ChannelContent {
    channel: String,
    sources: Vec<String>,
    worker: Worker,
    taps: Vec<ContentTap>,
    monitors: Vec<ContentMonitor>,
    /// Reports received and not yet applied (reused).
    reports: Vec<Report>,
    /// Last logged state of each content condition, per source.
    logged: Vec<[Option<State>; 3]>,
}

impl ChannelContent {
    /// `None` when no rule of the channel needs content analysis.
    pub(super) fn open(cfg: &ChannelConfig) -> std::io::Result<Option<ChannelContent>> {
        let wants = |c: Condition| cfg.rules.iter().any(|r| r.condition == c);
        let video = wants(Condition::FrozenVideo) || wants(Condition::BlankPicture);
        let audio = wants(Condition::SilentAudio);
        if !video && !audio {
            return Ok(None);
        }
        let content: &ContentConfig = &cfg.content;
        // When every silence rule names its PID, only those audio PIDs are copied.
        let audio_pids: Option<Vec<_>> = cfg
            .rules
            .iter()
            .filter(|r| r.condition == Condition::SilentAudio)
            .map(|r| r.pid)
            .collect();
        let worker = Worker::spawn(&cfg.name, content.clone())?;
        tracing::info!(
            channel = %cfg.name,
            video,
            audio,
            video_interval_ms = content.video_interval.as_millis() as u64,
            queue = content.queue_jobs,
            "content analysis started"
        );
        Ok(Some(ChannelContent {
            channel: cfg.name.clone(),
            sources: cfg.sources.iter().map(|s| s.name.clone()).collect(),
            worker,
            taps: cfg
                .sources
                .iter()
                .map(|_| {
                    let tap = ContentTap::new(video, audio, content.video_interval);
                    match &audio_pids {
                        Some(p) => tap.with_audio_pids(p.clone()),
                        None => tap,
                    }
                })
                .collect(),
            monitors: cfg
                .sources
                .iter()
                .map(|_| ContentMonitor::new(content))
                .collect(),
            reports: Vec::with_capacity(64),
            logged: cfg.sources.iter().map(|_| [None, None, None]).collect(),
        }))
    }

    /// One TS packet of source `i`.
    #[inline]
    pub(super) fn push(&mut self, now: Instant, i: usize, pkt: &[u8]) {
        if let Some(t) = self.taps.get_mut(i) {
            t.push(now, pkt);
        }
    }

    /// After a batch of source `i`: hand what its tap selected to the worker (or drop it when
    /// the worker is busy), and take note of stream changes.
    pub(super) fn flush_source(&mut self, i: usize) {
        let Some(tap) = self.taps.get_mut(i) else {
            return;
        };
        while let Some(ev) = tap.poll_event() {
            match ev {
                TapEvent::Job(job) => {
                    if let Err(job) = self.worker.submit(i, job) {
                        tap.recycle(job.data);
                    }
                }
                TapEvent::Streams(s) => {
                    let label = |v: &crate::rules::cqa::StreamInfo| {
                        format!(
                            "{} on PID {}{}",
                            v.codec.label(),
                            v.pid.0,
                            if v.codec.decodable() {
                                ""
                            } else {
                                " (not decodable by this build: unknown)"
                            }
                        )
                    };
                    tracing::info!(
                        channel = %self.channel,
                        source = %self.sources[i],
                        video = %s.video.as_ref().map_or_else(|| "none".to_owned(), label),
                        audio = %s.audio.iter().map(label).collect::<Vec<_>>().join(", "),
                        "content analysis streams"
                    );
                    self.monitors[i].handle_streams(&s);
                }
            }
        }
    }

    /// Collect the worker's reports; `true` when there are some to [`apply`](Self::apply).
    pub(super) fn poll_reports(&mut self) -> bool {
        while let Some(r) = self.worker.poll_report() {
            match r {
                Report::Done { source, buf } => {
                    if let Some(t) = self.taps.get_mut(source) {
                        t.recycle(buf);
                    }
                }
                r => self.reports.push(r),
            }
        }
        !self.reports.is_empty()
    }

    /// Apply the collected reports of source `i` to its monitor and rules, then bring the
    /// rules' unknown flags up to date. Call for every source after `poll_reports`, then
    /// [`clear`](Self::clear).
    pub(super) fn apply(&mut self, now: Instant, i: usize, rules: &mut SourceRules) {
        let Some(m) = self.monitors.get_mut(i) else {
            return;
        };
        let mut k = 0;
        while k < self.reports.len() {
            if report_source(&self.reports[k]) == i {
                let r = self.reports.swap_remove(k);
                m.handle_report(now, r, rules);
            } else {
                k += 1;
            }
        }
        self.sync(now, i, rules);
    }

    pub(super) fn clear(&mut self) {
        self.reports.clear();
    }

    /// Unknown flags of source `i`'s rules (stale measurements), with a log line for every
    /// condition whose state changed.
    pub(super) fn sync(&mut self, now: Instant, i: usize, rules: &mut SourceRules) {
        let Some(m) = self.monitors.get(i) else {
            return;
        };
        m.sync_rules(now, rules);
        for (k, c) in CONTENT_CONDITIONS.into_iter().enumerate() {
            let st = m.state(now, c, None);
            if self.logged[i][k].as_ref() == Some(&st) {
                continue;
            }
            let status = m.status(now);
            let video = status.video.as_ref();
            let audio_dbfs: Vec<f64> = status
                .audio
                .iter()
                .flat_map(|a| a.peak_dbfs.iter().copied())
                .collect();
            tracing::info!(
                channel = %self.channel,
                source = %self.sources[i],
                condition = c.label(),
                state = st.label(),
                reason = match &st { State::Unknown(why) => why.as_str(), _ => "" },
                black_share = video.and_then(|v| v.black_share).unwrap_or(f64::NAN),
                difference_db = video.and_then(|v| v.difference_db).unwrap_or(f64::NAN),
                audio_peak_dbfs = ?audio_dbfs,
                "content condition"
            );
            self.logged[i][k] = Some(st);
        }
    }

    pub(super) fn status(&self, now: Instant, i: usize) -> Option<ContentStatus> {
        self.monitors.get(i).map(|m| m.status(now))
    }

    pub(super) fn stats(&self) -> ContentStats {
        let QueueStats { queued, dropped } = self.worker.stats();
        ContentStats {
            queued,
            dropped,
            oversize: self.taps.iter().map(|t| t.stats().oversize).sum(),
        }
    }
}

fn report_source(r: &Report) -> usize {
    match r {
        Report::Picture { source, .. }
        | Report::Level { source, .. }
        | Report::Error { source, .. }
        | Report::Done { source, .. } => *source,
    }
}
