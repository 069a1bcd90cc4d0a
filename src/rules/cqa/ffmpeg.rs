//! Feature `ffmpeg`: keyframes decoded by the system FFmpeg (libavcodec), for MPEG-2 video,
//! HEVC and interlaced H.264, which OpenH264 does not decode. Each keyframe is decoded on its
//! own: sent, followed by end-of-stream, its picture taken, and the decoder flushed for the
//! next one (a keyframe references nothing).

use std::sync::Once;

use ff::format::Pixel;
use ffmpeg_next as ff;

use super::video::Luma;
use super::{CqaError, VideoCodec};

pub struct FfmpegDecoder {
    dec: ff::decoder::Video,
    frame: ff::frame::Video,
}

impl FfmpegDecoder {
    pub fn new(codec: VideoCodec) -> Result<FfmpegDecoder, CqaError> {
        static INIT: Once = Once::new();
        INIT.call_once(|| {
            let _ = ff::init();
            // Concealment messages would flood the gateway's log; errors come back as values.
            ff::util::log::set_level(ff::util::log::Level::Quiet);
        });
        let id = match codec {
            VideoCodec::H264 => ff::codec::Id::H264,
            VideoCodec::Mpeg2 => ff::codec::Id::MPEG2VIDEO,
            VideoCodec::Hevc => ff::codec::Id::HEVC,
            VideoCodec::Other(t) => {
                return Err(CqaError::Unsupported(format!("stream type 0x{t:02x}")));
            }
        };
        let c = ff::decoder::find(id)
            .ok_or_else(|| CqaError::Unsupported(format!("{id:?}: no decoder in this FFmpeg")))?;
        let dec = ff::codec::Context::new_with_codec(c)
            .decoder()
            .video()
            .map_err(|e| CqaError::Decoder(e.to_string()))?;
        Ok(FfmpegDecoder {
            dec,
            frame: ff::frame::Video::empty(),
        })
    }

    /// Decode one keyframe and hand its luma plane to `measure`. `Ok(None)` when no picture
    /// came out.
    pub fn decode<T>(
        &mut self,
        au: &[u8],
        measure: impl FnOnce(Luma<'_>) -> T,
    ) -> Result<Option<T>, CqaError> {
        let sent = self
            .dec
            .send_packet(&ff::Packet::copy(au))
            .and_then(|()| self.dec.send_eof());
        let got = sent.is_ok() && self.dec.receive_frame(&mut self.frame).is_ok();
        // Drain anything else and reset the end-of-stream state for the next keyframe.
        let mut spare = ff::frame::Video::empty();
        while self.dec.receive_frame(&mut spare).is_ok() {}
        self.dec.flush();
        if let Err(e) = sent {
            return Err(CqaError::Decode(e.to_string()));
        }
        if !got {
            return Ok(None);
        }
        let f = &self.frame;
        match f.format() {
            Pixel::YUV420P
            | Pixel::YUV422P
            | Pixel::YUV444P
            | Pixel::YUVJ420P
            | Pixel::YUVJ422P
            | Pixel::YUVJ444P
            | Pixel::NV12
            | Pixel::GRAY8 => {}
            other => {
                return Err(CqaError::Unsupported(format!(
                    "pixel format {other:?} (only 8-bit luma is measured)"
                )));
            }
        }
        Ok(Some(measure(Luma {
            data: f.data(0),
            width: f.width() as usize,
            height: f.height() as usize,
            stride: f.stride(0),
        })))
    }
}
