//! Audio level of one audio PID: splits its elementary stream into frames (ADTS AAC,
//! ISO/IEC 13818-7; MPEG-1/2 audio layers I–III, ISO/IEC 11172-3), decodes them with symphonia
//! and reports, per interval of `audio_interval` of *audio* (counted in samples, not wall
//! time), the peak level of every channel in dBFS. The interval is silent when every channel
//! stays below the threshold (default −60 dBFS, silencedetect's `noise`; like silencedetect a
//! sample is "silent" when its amplitude is below the threshold, so an interval is silent when
//! its peak is).

use symphonia::core::audio::{AudioBuffer, AudioBufferRef, Channels, Signal};
use symphonia::core::codecs::{
    CODEC_TYPE_AAC, CODEC_TYPE_MP1, CODEC_TYPE_MP2, CODEC_TYPE_MP3, CodecParameters, CodecType,
    Decoder, DecoderOptions,
};
use symphonia::core::formats::Packet;

use super::{AudioCodec, ContentConfig, CqaError};

/// Bytes of an unfinished frame carried to the next PES at most (larger: resynchronise).
const MAX_CARRY: usize = 8192;
/// PTS clock (ISO/IEC 13818-1).
const PTS_HZ: u64 = 90_000;

/// One interval's measurement.
#[derive(Clone, Debug, PartialEq)]
pub struct Level {
    /// PTS (90 kHz) of the first sample of the interval, when the PES had one.
    pub pts: Option<u64>,
    pub sample_rate: u32,
    /// Peak level of each channel in dBFS (`-inf` for digital silence).
    pub peak_dbfs: Vec<f64>,
    pub silent: bool,
}

/// The frame layout of an ADTS or MPEG audio header: (frame bytes, header bytes to strip
/// before decoding, decoder parameters key).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FrameHeader {
    len: usize,
    skip: usize,
    codec: CodecType,
    sample_rate: u32,
    channels: usize,
}

const AAC_RATES: [u32; 13] = [
    96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350,
];

fn adts_header(b: &[u8]) -> Option<FrameHeader> {
    if b.len() < 7 || b[0] != 0xff || b[1] & 0xf6 != 0xf0 {
        return None;
    }
    let protection_absent = b[1] & 1 == 1;
    let object = (b[2] >> 6) + 1;
    let rate = *AAC_RATES.get(usize::from((b[2] >> 2) & 0x0f))?;
    let channels = usize::from(((b[2] & 1) << 2) | (b[3] >> 6));
    let len = (usize::from(b[3] & 3) << 11) | (usize::from(b[4]) << 3) | usize::from(b[5] >> 5);
    let skip = if protection_absent { 7 } else { 9 };
    // Only AAC-LC (object type 2) with a plain channel configuration; the number of raw data
    // blocks must be 1 (`b[6] & 3 == 0`) for one decoder packet per frame.
    if object != 2 || channels == 0 || channels > 2 || len <= skip || b[6] & 3 != 0 {
        return None;
    }
    Some(FrameHeader {
        len,
        skip,
        codec: CODEC_TYPE_AAC,
        sample_rate: rate,
        channels,
    })
}

fn mpa_header(b: &[u8]) -> Option<FrameHeader> {
    if b.len() < 4 || b[0] != 0xff || b[1] & 0xe0 != 0xe0 {
        return None;
    }
    let version = (b[1] >> 3) & 3; // 3 = MPEG-1, 2 = MPEG-2, 0 = MPEG-2.5
    let layer = (b[1] >> 1) & 3; // 3 = I, 2 = II, 1 = III
    let br_index = usize::from(b[2] >> 4);
    let sr_index = usize::from((b[2] >> 2) & 3);
    let padding = usize::from((b[2] >> 1) & 1);
    if version == 1 || layer == 0 || br_index == 0 || br_index == 15 || sr_index == 3 {
        return None;
    }
    const BR_V1: [[u32; 15]; 3] = [
        [
            0, 32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448,
        ],
        [
            0, 32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384,
        ],
        [
            0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320,
        ],
    ];
    const BR_V2: [[u32; 15]; 2] = [
        [
            0, 32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256,
        ],
        [0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160],
    ];
    let li = usize::from(3 - layer); // 0 = I, 1 = II, 2 = III
    let kbps = if version == 3 {
        BR_V1[li][br_index]
    } else {
        BR_V2[usize::from(li > 0)][br_index]
    };
    let base = [44100u32, 48000, 32000][sr_index];
    let sample_rate = match version {
        3 => base,
        2 => base / 2,
        _ => base / 4,
    };
    let bps = kbps as usize * 1000;
    let sr = sample_rate as usize;
    let len = match li {
        0 => (12 * bps / sr + padding) * 4,
        2 if version != 3 => 72 * bps / sr + padding,
        _ => 144 * bps / sr + padding,
    };
    let channels = if b[3] >> 6 == 3 { 1 } else { 2 };
    Some(FrameHeader {
        len,
        skip: 0,
        codec: [CODEC_TYPE_MP1, CODEC_TYPE_MP2, CODEC_TYPE_MP3][li],
        sample_rate,
        channels,
    })
}

/// Decodes one audio PID and measures its level per interval.
pub struct AudioAnalyser {
    codec: AudioCodec,
    decoder: Option<(FrameHeader, Box<dyn Decoder>)>,
    /// Bytes of a frame split across PES packets.
    carry: Vec<u8>,
    threshold_dbfs: f64,
    interval_ms: u64,
    /// Running interval: peak amplitude per channel, sample frames so far, its start PTS.
    peaks: Vec<f32>,
    frames: u64,
    start_pts: Option<u64>,
    /// Scratch for decoders that do not output f32.
    convert: Option<AudioBuffer<f32>>,
}

impl AudioAnalyser {
    pub fn new(codec: AudioCodec, cfg: &ContentConfig) -> AudioAnalyser {
        AudioAnalyser {
            codec,
            decoder: None,
            carry: Vec::new(),
            threshold_dbfs: cfg.silence_dbfs,
            interval_ms: u64::try_from(cfg.audio_interval.as_millis())
                .unwrap_or(u64::MAX)
                .max(1),
            peaks: Vec::new(),
            frames: 0,
            start_pts: None,
            convert: None,
        }
    }

    /// Feed one PES payload (`pts` from its header, when present); every completed interval is
    /// passed to `out`. Frames that do not decode are skipped; an error is returned only when
    /// nothing in this PES could be decoded for a reason that will not go away by itself
    /// (an unsupported format).
    pub fn push(
        &mut self,
        pts: Option<u64>,
        es: &[u8],
        mut out: impl FnMut(Level),
    ) -> Result<(), CqaError> {
        let mut data = std::mem::take(&mut self.carry);
        let carried = data.len();
        data.extend_from_slice(es);
        let mut pos = 0;
        let mut decoded_in_pes: u64 = 0;
        let mut unsupported = None;
        while pos < data.len() {
            let rest = &data[pos..];
            let header = match self.codec {
                AudioCodec::Aac => adts_header(rest),
                AudioCodec::Mpeg => mpa_header(rest),
            };
            let Some(h) = header else {
                if rest.len() < 9 {
                    break; // maybe a header cut by the PES boundary
                }
                if rest[0] == 0xff
                    && matches!(self.codec, AudioCodec::Aac)
                    && rest[1] & 0xf6 == 0xf0
                {
                    unsupported = Some("ADTS frame that is not AAC-LC mono/stereo".to_owned());
                }
                pos += 1;
                continue;
            };
            if h.len < 4 {
                pos += 1; // not a frame: cannot happen with valid tables, but never loop on it
                continue;
            }
            if rest.len() < h.len {
                break;
            }
            // Samples before this frame in the PES, to time the interval's start: frames of
            // the carried part started in the previous PES.
            let frame_pts = if pos >= carried {
                pts.map(|p| p + decoded_in_pes * PTS_HZ / u64::from(h.sample_rate.max(1)))
            } else {
                None
            };
            match self.decode(h, &rest[h.skip..h.len]) {
                Ok(n) => {
                    self.account(frame_pts, h.sample_rate, n, &mut out);
                    if pos >= carried {
                        decoded_in_pes += n;
                    }
                }
                Err(CqaError::Unsupported(why)) => unsupported = Some(why),
                Err(_) => {}
            }
            pos += h.len;
        }
        if data.len() - pos <= MAX_CARRY {
            data.drain(..pos);
            self.carry = data;
        }
        match unsupported {
            Some(why) if decoded_in_pes == 0 => Err(CqaError::Unsupported(why)),
            _ => Ok(()),
        }
    }

    /// Decode one frame; returns its sample frames and folds its peaks into the interval.
    fn decode(&mut self, h: FrameHeader, frame: &[u8]) -> Result<u64, CqaError> {
        let same = self.decoder.as_ref().is_some_and(|(k, _)| {
            k.codec == h.codec && k.sample_rate == h.sample_rate && k.channels == h.channels
        });
        if !same {
            let mut params = CodecParameters::new();
            params
                .for_codec(h.codec)
                .with_sample_rate(h.sample_rate)
                .with_channels(Channels::from_bits_truncate((1u32 << h.channels) - 1));
            let dec = symphonia::default::get_codecs()
                .make(&params, &DecoderOptions::default())
                .map_err(|e| CqaError::Unsupported(e.to_string()))?;
            self.decoder = Some((h, dec));
            self.peaks.clear();
            self.frames = 0;
        }
        let Some((_, dec)) = self.decoder.as_mut() else {
            return Ok(0);
        };
        let packet = Packet::new_from_slice(0, 0, 0, frame);
        let buf = dec
            .decode(&packet)
            .map_err(|e| CqaError::Decode(e.to_string()))?;
        let peaks = &mut self.peaks;
        let n = buf.frames();
        let channels = buf.spec().channels.count();
        if peaks.len() != channels {
            peaks.clear();
            peaks.resize(channels, 0.0);
        }
        match buf {
            AudioBufferRef::F32(b) => fold_peaks(peaks, &b),
            other => {
                let spec = *other.spec();
                let dur = other.capacity() as u64;
                let tmp = self
                    .convert
                    .get_or_insert_with(|| AudioBuffer::new(dur, spec));
                if tmp.capacity() < other.capacity() || *tmp.spec() != spec {
                    *tmp = AudioBuffer::new(dur, spec);
                }
                other.convert(tmp);
                fold_peaks(peaks, tmp);
            }
        }
        Ok(n as u64)
    }

    fn account(&mut self, pts: Option<u64>, rate: u32, n: u64, out: &mut impl FnMut(Level)) {
        if self.frames == 0 {
            self.start_pts = pts;
        }
        self.frames += n;
        let want = u64::from(rate) * self.interval_ms / 1000;
        if self.frames >= want.max(1) {
            let peak_dbfs: Vec<f64> = self
                .peaks
                .iter()
                .map(|&p| 20.0 * f64::from(p).log10())
                .collect();
            let silent =
                !peak_dbfs.is_empty() && peak_dbfs.iter().all(|&d| d < self.threshold_dbfs);
            out(Level {
                pts: self.start_pts,
                sample_rate: rate,
                peak_dbfs,
                silent,
            });
            self.peaks.iter_mut().for_each(|p| *p = 0.0);
            self.frames = 0;
        }
    }
}

fn fold_peaks(peaks: &mut [f32], b: &AudioBuffer<f32>) {
    for (c, peak) in peaks.iter_mut().enumerate() {
        let m = b.chan(c).iter().fold(0f32, |m, s| m.max(s.abs()));
        *peak = peak.max(m);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adts_header_fields() {
        // AAC-LC, 48 kHz (index 3), stereo, 371-byte frame, no CRC.
        let len = 371usize;
        let h = [
            0xff,
            0xf1,
            (1 << 6) | (3 << 2),
            (2 << 6) | ((len >> 11) as u8 & 3),
            (len >> 3) as u8,
            ((len & 7) << 5) as u8 | 0x1f,
            0xfc,
        ];
        let f = adts_header(&h).expect("valid");
        assert_eq!(
            (f.len, f.skip, f.sample_rate, f.channels),
            (371, 7, 48000, 2)
        );
        let mut he = h;
        he[2] = 3 << 2; // object type 1 (AAC Main): refused
        assert_eq!(adts_header(&he), None);
    }

    #[test]
    fn mpeg_audio_header_fields() {
        // MPEG-1 layer II, 128 kbit/s (index 8), 48 kHz (index 1), stereo: 384 bytes.
        let h = [0xff, 0xfd, (8 << 4) | (1 << 2), 0x00];
        let f = mpa_header(&h).expect("valid");
        assert_eq!(
            (f.len, f.codec, f.sample_rate, f.channels),
            (384, CODEC_TYPE_MP2, 48000, 2)
        );
        // Layer III 128 kbit/s 44.1 kHz with padding: 418 bytes; mono.
        let h = [0xff, 0xfb, (9 << 4) | 2, 0xc0];
        let f = mpa_header(&h).expect("valid");
        assert_eq!((f.len, f.codec, f.channels), (418, CODEC_TYPE_MP3, 1));
        assert_eq!(
            mpa_header(&[0xff, 0xfd, 0xf0, 0]),
            None,
            "bad bitrate index"
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Random elementary-stream bytes (with frame syncs sprinkled in) never panic the
        /// frame splitter or the decoders.
        #[test]
        fn random_audio_never_panics(
            pes in proptest::collection::vec(
                proptest::collection::vec(proptest::num::u8::ANY, 0..2000),
                1..8,
            ),
            mpeg in proptest::bool::ANY,
        ) {
            let codec = if mpeg { AudioCodec::Mpeg } else { AudioCodec::Aac };
            let mut a = AudioAnalyser::new(codec, &ContentConfig::default());
            for mut es in pes {
                for k in (0..es.len()).step_by(97) {
                    es[k] = 0xff;
                    if let Some(b) = es.get_mut(k + 1) {
                        *b |= 0xf0;
                    }
                }
                let _ = a.push(Some(0), &es, |_| {});
            }
        }
    }
}
