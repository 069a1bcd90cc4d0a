//! The analysis worker of one channel: a thread that runs the decoders behind a bounded
//! queue, so that the packet path never waits for them. [`Worker::submit`] never blocks: when
//! the queue is full the job is handed back (its buffer recycled by the caller) and counted as
//! dropped. Results come back through [`Worker::poll_report`], to be polled by the channel's
//! thread whenever it wakes up.
//!
//! [`Analysers`] is the sans-IO core (one picture analyser and one audio analyser per PID of
//! each source); tests and benches drive it directly.

use std::sync::mpsc;
use std::thread;

use super::audio::{AudioAnalyser, Level};
use super::tap::{Job, JobKind};
use super::video::{Picture, PictureAnalyser};
use super::{ContentConfig, CqaError};
use crate::ts::Pid;

/// What the worker found, for the source it was given.
#[derive(Debug)]
pub enum Report {
    Picture {
        source: usize,
        pid: Pid,
        pts: Option<u64>,
        picture: Picture,
    },
    Level {
        source: usize,
        pid: Pid,
        level: Level,
    },
    Error {
        source: usize,
        pid: Pid,
        error: CqaError,
    },
    /// The job's buffer, for reuse by the source's tap.
    Done { source: usize, buf: Vec<u8> },
}

/// Decoders and measures of every source of a channel.
pub struct Analysers {
    cfg: ContentConfig,
    sources: Vec<SourceAnalysers>,
}

#[derive(Default)]
struct SourceAnalysers {
    video: Option<(Pid, PictureAnalyser)>,
    audio: Vec<(Pid, AudioAnalyser)>,
}

impl Analysers {
    pub fn new(cfg: ContentConfig) -> Analysers {
        Analysers {
            cfg,
            sources: Vec::new(),
        }
    }

    /// Forget the decoders of `source` (they start afresh with its next job).
    pub fn reset(&mut self, source: usize) {
        if let Some(s) = self.sources.get_mut(source) {
            *s = SourceAnalysers::default();
        }
    }

    /// Analyse one job of `source`; every finding goes to `out` (the buffer stays with the
    /// caller).
    pub fn handle_job(&mut self, source: usize, job: &Job, out: &mut impl FnMut(Report)) {
        if self.sources.len() <= source {
            self.sources
                .resize_with(source + 1, SourceAnalysers::default);
        }
        let cfg = &self.cfg;
        let s = &mut self.sources[source];
        match job.kind {
            JobKind::Video(codec) => {
                let a = match &mut s.video {
                    Some((pid, a)) if *pid == job.pid => a,
                    slot => &mut slot.insert((job.pid, PictureAnalyser::new(cfg))).1,
                };
                match a.analyse(codec, &job.data) {
                    Ok(Some(picture)) => out(Report::Picture {
                        source,
                        pid: job.pid,
                        pts: job.pts,
                        picture,
                    }),
                    Ok(None) => {}
                    Err(error) => out(Report::Error {
                        source,
                        pid: job.pid,
                        error,
                    }),
                }
            }
            JobKind::Audio(codec) => {
                let i = match s.audio.iter().position(|(p, _)| *p == job.pid) {
                    Some(i) => i,
                    None => {
                        s.audio.push((job.pid, AudioAnalyser::new(codec, cfg)));
                        s.audio.len() - 1
                    }
                };
                let pid = job.pid;
                let res = s.audio[i].1.push(job.pts, &job.data, |level| {
                    out(Report::Level { source, pid, level })
                });
                if let Err(error) = res {
                    out(Report::Error { source, pid, error });
                }
            }
        }
    }
}

/// Counters of the queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct QueueStats {
    /// Jobs handed to the worker.
    pub queued: u64,
    /// Jobs dropped because the worker was busy (its queue full).
    pub dropped: u64,
}

/// The worker thread and its two queues. Dropping it closes the job queue; the thread ends
/// after the job it is on.
pub struct Worker {
    jobs: Option<mpsc::SyncSender<(usize, Job)>>,
    reports: mpsc::Receiver<Report>,
    stats: QueueStats,
}

/// The worker thread's side of the queues: [`Runner::run`] analyses jobs until the job
/// queue is closed.
pub struct Runner {
    jobs: mpsc::Receiver<(usize, Job)>,
    reports: mpsc::Sender<Report>,
    analysers: Analysers,
}

impl Runner {
    /// Analyse every queued job, returning each buffer in a [`Report::Done`]; returns once the
    /// [`Worker`] is gone and the queue is empty.
    pub fn run(mut self) {
        for (source, job) in self.jobs {
            let reports = &self.reports;
            let mut send = |r| {
                let _ = reports.send(r);
            };
            // A decoder that panics on hostile input must not end the analysis of the whole
            // channel: that source's decoders start afresh and the job counts as an error.
            let analysers = &mut self.analysers;
            let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                analysers.handle_job(source, &job, &mut send)
            }));
            if res.is_err() {
                analysers.reset(source);
                send(Report::Error {
                    source,
                    pid: job.pid,
                    error: CqaError::Decode("the decoder panicked; restarted".into()),
                });
            }
            send(Report::Done {
                source,
                buf: job.data,
            });
        }
    }
}

impl Worker {
    /// The two ends of the queues; [`spawn`](Worker::spawn) runs the [`Runner`] on a thread.
    pub fn new(cfg: ContentConfig) -> (Worker, Runner) {
        let (jobs, rx) = mpsc::sync_channel::<(usize, Job)>(cfg.queue_jobs.max(1));
        let (tx, reports) = mpsc::channel();
        (
            Worker {
                jobs: Some(jobs),
                reports,
                stats: QueueStats::default(),
            },
            Runner {
                jobs: rx,
                reports: tx,
                analysers: Analysers::new(cfg),
            },
        )
    }

    /// Start the thread (named `cqa-CHANNEL`).
    pub fn spawn(channel: &str, cfg: ContentConfig) -> std::io::Result<Worker> {
        let (worker, runner) = Worker::new(cfg);
        thread::Builder::new()
            .name(format!("cqa-{channel}"))
            .spawn(move || runner.run())?;
        Ok(worker)
    }

    /// Queue a job without waiting. `Err(job)` when the queue is full (counted as dropped) or
    /// the worker is gone: the caller recycles its buffer.
    pub fn submit(&mut self, source: usize, job: Job) -> Result<(), Job> {
        let Some(tx) = &self.jobs else {
            return Err(job);
        };
        match tx.try_send((source, job)) {
            Ok(()) => {
                self.stats.queued += 1;
                Ok(())
            }
            Err(mpsc::TrySendError::Full((_, job))) => {
                self.stats.dropped += 1;
                Err(job)
            }
            Err(mpsc::TrySendError::Disconnected((_, job))) => {
                self.jobs = None;
                Err(job)
            }
        }
    }

    /// The next finding, if any is ready (never blocks).
    pub fn poll_report(&mut self) -> Option<Report> {
        self.reports.try_recv().ok()
    }

    pub fn stats(&self) -> QueueStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::cqa::AudioCodec;

    fn job(n: u8) -> Job {
        Job {
            pid: Pid(0x101),
            kind: JobKind::Audio(AudioCodec::Aac),
            pts: None,
            data: vec![n; 16],
        }
    }

    #[test]
    fn a_full_queue_drops_work_and_hands_the_buffer_back() {
        let cfg = ContentConfig {
            queue_jobs: 2,
            ..ContentConfig::default()
        };
        let (mut w, runner) = Worker::new(cfg);
        assert!(w.submit(0, job(1)).is_ok());
        assert!(w.submit(1, job(2)).is_ok());
        // The worker is busy (here: not running at all): the third job comes straight back.
        let back = w.submit(0, job(3)).expect_err("queue full");
        assert_eq!(back.data, vec![3; 16]);
        assert_eq!(
            w.stats(),
            QueueStats {
                queued: 2,
                dropped: 1
            }
        );
        // Close the queue and let the runner drain it on this thread: every queued buffer
        // comes back to its source (16 bytes of 0x01 are no ADTS frame: nothing to report).
        w.jobs = None;
        runner.run();
        let mut done = Vec::new();
        while let Some(r) = w.poll_report() {
            if let Report::Done { source, buf } = r {
                done.push((source, buf[0]));
            }
        }
        assert_eq!(done, [(0, 1), (1, 2)]);
        assert!(
            w.submit(0, job(4)).is_err(),
            "closed: nothing is queued any more"
        );
        assert_eq!(w.stats().dropped, 1, "a closed queue is not a busy worker");
    }
}
