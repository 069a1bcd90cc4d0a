//! Picture analysis of sampled H.264 keyframes: blank picture (ffmpeg blackdetect's measure)
//! and frozen video (freezedetect's measure), on the luma plane.
//!
//! - **Blank.** A luma sample is black when it is at or below
//!   `16 + pixel_threshold × (235 − 16)` (limited range, as blackdetect computes it for
//!   `yuv420p`); the picture is blank when the share of black samples is at least
//!   `picture_threshold` (defaults 0.10 and 0.98, blackdetect's `pix_th` and `pic_th`).
//! - **Frozen.** The mean absolute difference of two consecutive *sampled* pictures, divided by
//!   the sample range (256 for 8-bit), in dB (`20·log10`); frozen when at or below the noise
//!   threshold (default −60 dB, freezedetect's `noise`). Unlike freezedetect only the luma
//!   plane is compared: chroma alone rarely moves when luma stands still, and it halves the
//!   cost.
//!
//! The measures are pure functions over borrowed planes; [`PictureAnalyser`] wraps the
//! decoder (OpenH264; the system FFmpeg with the `ffmpeg` feature) and keeps the previous
//! sampled luma (one copy per analysed keyframe).

use openh264::decoder::Decoder;
use openh264::formats::YUVSource;

use super::{ContentConfig, CqaError, VideoCodec};

/// A borrowed 8-bit luma plane.
#[derive(Clone, Copy, Debug)]
pub struct Luma<'a> {
    pub data: &'a [u8],
    pub width: usize,
    pub height: usize,
    pub stride: usize,
}

impl Luma<'_> {
    fn rows(&self) -> impl Iterator<Item = &[u8]> {
        let w = self.width;
        self.data
            .chunks(self.stride.max(1))
            .take(self.height)
            .filter_map(move |r| r.get(..w))
    }
}

/// Largest luma value counted as black for `pixel_threshold` (blackdetect, limited range).
pub fn black_level(pixel_threshold: f64) -> u8 {
    (16.0 + pixel_threshold.clamp(0.0, 1.0) * (235.0 - 16.0)) as u8
}

/// Share (0..=1) of luma samples at or below `level`.
pub fn black_share(y: Luma<'_>, level: u8) -> f64 {
    let mut black = 0u64;
    let mut total = 0u64;
    for row in y.rows() {
        black += row.iter().filter(|&&v| v <= level).count() as u64;
        total += row.len() as u64;
    }
    if total == 0 {
        0.0
    } else {
        black as f64 / total as f64
    }
}

/// Mean absolute difference of two same-sized planes over the 8-bit range, in dB
/// (`20·log10(sad / count / 256)`; `-inf` when identical). `None` when the sizes differ.
pub fn difference_db(a: Luma<'_>, b: Luma<'_>) -> Option<f64> {
    if a.width != b.width || a.height != b.height || a.width == 0 || a.height == 0 {
        return None;
    }
    let mut sad = 0u64;
    for (ra, rb) in a.rows().zip(b.rows()) {
        sad += ra
            .iter()
            .zip(rb)
            .map(|(&x, &y)| u64::from(x.abs_diff(y)))
            .sum::<u64>();
    }
    let mafd = sad as f64 / (a.width * a.height) as f64 / 256.0;
    Some(20.0 * mafd.log10())
}

/// What one analysed keyframe showed.
#[derive(Clone, Debug, PartialEq)]
pub struct Picture {
    pub width: usize,
    pub height: usize,
    /// Share of black luma samples (0..=1).
    pub black_share: f64,
    /// Difference to the previous sampled picture in dB; `None` for the first one or after a
    /// size change. `-inf` when identical.
    pub difference_db: Option<f64>,
    pub blank: bool,
    /// `None` when there is nothing to compare with yet.
    pub frozen: Option<bool>,
}

/// The decoder behind a [`PictureAnalyser`]: OpenH264 for H.264 in the default build; the
/// system FFmpeg for every supported codec with the `ffmpeg` feature.
enum Backend {
    #[cfg_attr(feature = "ffmpeg", allow(dead_code))]
    OpenH264(Decoder),
    #[cfg(feature = "ffmpeg")]
    Ffmpeg(super::ffmpeg::FfmpegDecoder),
}

impl Backend {
    #[cfg(feature = "ffmpeg")]
    fn new(codec: VideoCodec) -> Result<Backend, CqaError> {
        super::ffmpeg::FfmpegDecoder::new(codec).map(Backend::Ffmpeg)
    }

    #[cfg(not(feature = "ffmpeg"))]
    fn new(codec: VideoCodec) -> Result<Backend, CqaError> {
        match codec {
            VideoCodec::H264 => Decoder::new()
                .map(Backend::OpenH264)
                .map_err(|e| CqaError::Decoder(e.to_string())),
            other => Err(CqaError::Unsupported(format!("{other:?} video"))),
        }
    }
}

/// Thresholds and the previous sampled luma: what a measure needs besides the picture.
struct Measure {
    /// Luma of the previous sampled picture, tightly packed (`width × height`).
    prev: Vec<u8>,
    prev_size: (usize, usize),
    black_level: u8,
    picture_threshold: f64,
    noise_db: f64,
}

impl Measure {
    fn picture(&mut self, y: Luma<'_>) -> Picture {
        let (width, height) = (y.width, y.height);
        let share = black_share(y, self.black_level);
        let difference_db = if self.prev_size == (width, height) {
            difference_db(
                Luma {
                    data: &self.prev,
                    width,
                    height,
                    stride: width,
                },
                y,
            )
        } else {
            None
        };
        self.prev.clear();
        for row in y.rows() {
            self.prev.extend_from_slice(row);
        }
        self.prev_size = (width, height);
        Picture {
            width,
            height,
            black_share: share,
            difference_db,
            blank: share >= self.picture_threshold,
            frozen: difference_db.map(|d| d <= self.noise_db),
        }
    }
}

/// Decodes sampled keyframes (H.264 Annex B access units with their SPS/PPS; with the
/// `ffmpeg` feature also MPEG-2 video and HEVC) and measures them.
pub struct PictureAnalyser {
    backend: Option<(VideoCodec, Backend)>,
    measure: Measure,
}

impl PictureAnalyser {
    pub fn new(cfg: &ContentConfig) -> PictureAnalyser {
        PictureAnalyser {
            backend: None,
            measure: Measure {
                prev: Vec::new(),
                prev_size: (0, 0),
                black_level: black_level(cfg.black_pixel_threshold),
                picture_threshold: cfg.black_picture_threshold,
                noise_db: cfg.freeze_noise_db,
            },
        }
    }

    /// Decode one access unit (a keyframe) of `codec` and measure it. `Ok(None)` when the
    /// decoder needs more data (no picture came out).
    pub fn analyse(&mut self, codec: VideoCodec, au: &[u8]) -> Result<Option<Picture>, CqaError> {
        if self.backend.as_ref().is_none_or(|(c, _)| *c != codec) {
            self.backend = Some((codec, Backend::new(codec)?));
        }
        let Some((_, backend)) = self.backend.as_mut() else {
            return Ok(None);
        };
        let measure = &mut self.measure;
        let res = match backend {
            Backend::OpenH264(decoder) => match decoder.decode(au) {
                Ok(Some(yuv)) => {
                    let (width, height) = yuv.dimensions();
                    Ok(Some(measure.picture(Luma {
                        data: yuv.y(),
                        width,
                        height,
                        stride: yuv.strides().0,
                    })))
                }
                Ok(None) => Ok(None),
                Err(e) => Err(CqaError::Decode(e.to_string())),
            },
            #[cfg(feature = "ffmpeg")]
            Backend::Ffmpeg(decoder) => decoder.decode(au, |y| measure.picture(y)),
        };
        if res.is_err() {
            // The decoder's state after an error is not worth trusting: start afresh.
            self.backend = None;
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plane(w: usize, h: usize, stride: usize, f: impl Fn(usize, usize) -> u8) -> Vec<u8> {
        let mut v = vec![0xee; stride * h];
        for y in 0..h {
            for x in 0..w {
                v[y * stride + x] = f(x, y);
            }
        }
        v
    }

    #[test]
    fn black_level_matches_blackdetect() {
        assert_eq!(black_level(0.10), 37);
        assert_eq!(black_level(0.0), 16);
        assert_eq!(black_level(1.0), 235);
    }

    #[test]
    fn black_share_ignores_stride_padding() {
        // 10×4 visible, stride 16 (padding 0xee is not black and must not count).
        let v = plane(10, 4, 16, |x, _| if x < 9 { 16 } else { 200 });
        let y = Luma {
            data: &v,
            width: 10,
            height: 4,
            stride: 16,
        };
        assert!((black_share(y, 37) - 0.9).abs() < 1e-9);
        assert_eq!(black_share(y, 15), 0.0);
        let at_level = plane(4, 4, 4, |_, _| 37);
        let y = Luma {
            data: &at_level,
            width: 4,
            height: 4,
            stride: 4,
        };
        assert_eq!(black_share(y, 37), 1.0, "at the level is black");
    }

    #[test]
    fn difference_in_db() {
        let a = plane(8, 8, 8, |_, _| 100);
        let b = plane(8, 8, 8, |_, _| 100);
        fn l(d: &[u8]) -> Luma<'_> {
            Luma {
                data: d,
                width: 8,
                height: 8,
                stride: 8,
            }
        }
        let same = difference_db(l(&a), l(&b)).expect("same size");
        assert!(same.is_infinite() && same < 0.0);
        // One sample off by 16 out of 64: mafd = 16/64/256 → 20·log10(1/1024) ≈ −60.2 dB.
        let c = plane(8, 8, 8, |x, y| if x == 0 && y == 0 { 116 } else { 100 });
        let d = difference_db(l(&a), l(&c)).expect("same size");
        assert!((d - (-60.206)).abs() < 0.01, "{d}");
        let small = plane(4, 4, 4, |_, _| 0);
        let s = Luma {
            data: &small,
            width: 4,
            height: 4,
            stride: 4,
        };
        assert_eq!(difference_db(l(&a), s), None);
    }
}
