//! Content analysis (CQA) for the failover conditions `frozen-video`, `blank-picture` and
//! `silent-audio`, in the spirit of ffmpeg's freezedetect, blackdetect and silencedetect.
//!
//! The work is split along the cost:
//! - [`tap`] sits on the packet path of each source (sans-IO, no allocation in the steady
//!   state): it reads the PAT/PMT and copies out one H.264 keyframe per `video_interval` and
//!   the audio PES packets, as [`tap::Job`]s;
//! - [`worker`] runs the decoders on a thread of its own behind a bounded queue: when the
//!   queue is full the job is dropped (counted), never a packet, and the packet path never
//!   waits for a decoder. [`worker::Analysers`] is the sans-IO core ([`video`], [`audio`]);
//! - [`monitor`] keeps, per source, what was last measured and turns it into per-condition
//!   states (present / absent / unknown) that feed the sampled rule engine
//!   ([`crate::rules::SourceRules`]) exactly like the other conditions.
//!
//! A stream whose codec this build cannot decode (MPEG-2 or HEVC video without the `ffmpeg`
//! feature, AC-3, LATM AAC, ...) is *unknown*: its content rules neither pass nor fail, and the API says why.

pub mod audio;
#[cfg(feature = "ffmpeg")]
pub mod ffmpeg;
pub mod monitor;
pub mod tap;
pub mod video;
pub mod worker;

use std::time::Duration;

use crate::ts::Pid;

/// `black_pixel_threshold` default (blackdetect `pix_th`).
pub const DEFAULT_BLACK_PIXEL_THRESHOLD: f64 = 0.10;
/// `black_picture_threshold` default (blackdetect `pic_th`).
pub const DEFAULT_BLACK_PICTURE_THRESHOLD: f64 = 0.98;
/// `freeze_noise_db` default (freezedetect `noise`).
pub const DEFAULT_FREEZE_NOISE_DB: f64 = -60.0;
/// `silence_threshold_dbfs` default (silencedetect `noise`).
pub const DEFAULT_SILENCE_DBFS: f64 = -60.0;
/// `video_interval_ms` default: one analysed keyframe per second.
pub const DEFAULT_VIDEO_INTERVAL_MS: u64 = 1000;
/// `audio_interval_ms` default: one level measurement per half second of audio.
pub const DEFAULT_AUDIO_INTERVAL_MS: u64 = 500;
/// `analysis_queue` default: jobs waiting for the worker before new ones are dropped.
pub const DEFAULT_QUEUE_JOBS: usize = 64;

/// Analysis settings of a channel (`[channel.content]`).
#[derive(Clone, Debug, PartialEq)]
pub struct ContentConfig {
    /// Luma at or below `16 + t × 219` is black (0..=1).
    pub black_pixel_threshold: f64,
    /// Share of black luma samples (0..=1) from which a picture is blank.
    pub black_picture_threshold: f64,
    /// Sampled pictures differing by at most this many dB are frozen.
    pub freeze_noise_db: f64,
    /// Audio whose peak stays below this many dBFS on every channel is silent.
    pub silence_dbfs: f64,
    /// At most one keyframe per interval is analysed (0: every keyframe).
    pub video_interval: Duration,
    /// Audio level is measured over this much audio.
    pub audio_interval: Duration,
    /// Jobs that may wait for the worker (per channel).
    pub queue_jobs: usize,
}

impl Default for ContentConfig {
    fn default() -> ContentConfig {
        ContentConfig {
            black_pixel_threshold: DEFAULT_BLACK_PIXEL_THRESHOLD,
            black_picture_threshold: DEFAULT_BLACK_PICTURE_THRESHOLD,
            freeze_noise_db: DEFAULT_FREEZE_NOISE_DB,
            silence_dbfs: DEFAULT_SILENCE_DBFS,
            video_interval: Duration::from_millis(DEFAULT_VIDEO_INTERVAL_MS),
            audio_interval: Duration::from_millis(DEFAULT_AUDIO_INTERVAL_MS),
            queue_jobs: DEFAULT_QUEUE_JOBS,
        }
    }
}

/// Why a picture or a sound could not be judged.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CqaError {
    #[error("decoder could not be created: {0}")]
    Decoder(String),
    #[error("decoding failed: {0}")]
    Decode(String),
    #[error("not decodable by this build: {0}")]
    Unsupported(String),
}

/// Video codecs by PMT stream_type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VideoCodec {
    H264,
    Mpeg2,
    Hevc,
    Other(u8),
}

/// Audio codecs by PMT stream_type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AudioType {
    /// ADTS AAC (0x0F).
    Aac,
    /// LATM/LOAS AAC (0x11).
    AacLatm,
    /// MPEG-1/2 audio, layers I–III (0x03, 0x04).
    Mpeg,
    Ac3,
    Eac3,
}

/// The audio formats this build decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AudioCodec {
    Aac,
    Mpeg,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamKind {
    Video(VideoCodec),
    Audio(AudioType),
    Other,
}

impl StreamKind {
    /// ISO/IEC 13818-1 Table 2-34 (and ATSC A/52 for 0x81/0x87).
    pub fn from_stream_type(t: u8) -> StreamKind {
        match t {
            0x1b => StreamKind::Video(VideoCodec::H264),
            0x01 | 0x02 => StreamKind::Video(VideoCodec::Mpeg2),
            0x24 => StreamKind::Video(VideoCodec::Hevc),
            0x10 | 0x20 | 0x42 | 0xd1 | 0xea => StreamKind::Video(VideoCodec::Other(t)),
            0x03 | 0x04 => StreamKind::Audio(AudioType::Mpeg),
            0x0f => StreamKind::Audio(AudioType::Aac),
            0x11 => StreamKind::Audio(AudioType::AacLatm),
            0x81 => StreamKind::Audio(AudioType::Ac3),
            0x87 => StreamKind::Audio(AudioType::Eac3),
            _ => StreamKind::Other,
        }
    }

    /// Name in the API and logs.
    pub fn label(self) -> String {
        match self {
            StreamKind::Video(VideoCodec::H264) => "h264".into(),
            StreamKind::Video(VideoCodec::Mpeg2) => "mpeg2-video".into(),
            StreamKind::Video(VideoCodec::Hevc) => "hevc".into(),
            StreamKind::Video(VideoCodec::Other(t)) => format!("video-stream-type-0x{t:02x}"),
            StreamKind::Audio(AudioType::Aac) => "aac".into(),
            StreamKind::Audio(AudioType::AacLatm) => "aac-latm".into(),
            StreamKind::Audio(AudioType::Mpeg) => "mpeg-audio".into(),
            StreamKind::Audio(AudioType::Ac3) => "ac3".into(),
            StreamKind::Audio(AudioType::Eac3) => "e-ac3".into(),
            StreamKind::Other => "other".into(),
        }
    }

    /// Whether this build decodes it.
    pub fn decodable(self) -> bool {
        self.video().is_some() || self.audio().is_some()
    }

    /// The codec of a video stream this build decodes: H.264 (OpenH264); with the `ffmpeg`
    /// feature also MPEG-2 video and HEVC.
    pub fn video(self) -> Option<VideoCodec> {
        match self {
            StreamKind::Video(VideoCodec::H264) => Some(VideoCodec::H264),
            #[cfg(feature = "ffmpeg")]
            StreamKind::Video(c @ (VideoCodec::Mpeg2 | VideoCodec::Hevc)) => Some(c),
            _ => None,
        }
    }

    /// The decoder for an audio stream this build decodes.
    pub fn audio(self) -> Option<AudioCodec> {
        match self {
            StreamKind::Audio(AudioType::Aac) => Some(AudioCodec::Aac),
            StreamKind::Audio(AudioType::Mpeg) => Some(AudioCodec::Mpeg),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamInfo {
    pub pid: Pid,
    pub codec: StreamKind,
}

/// The streams of the (first) program, from its PMT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Streams {
    pub video: Option<StreamInfo>,
    pub audio: Vec<StreamInfo>,
}

#[cfg(test)]
mod tests;
