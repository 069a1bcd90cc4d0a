//! Content analysis cost: decoding and measuring one HD H.264 keyframe (1920×1080 High,
//! testdata/cqa_hd_h264.ts), measuring 1 s of AAC audio, and the tap on the packet path per
//! TS packet. Target: one analysed keyframe per second per channel within 5 % of one core,
//! i.e. `picture/h264_1080p_keyframe` well under 50 ms.
#![allow(clippy::disallowed_methods)]
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use hitless::rules::cqa::ContentConfig;
use hitless::rules::cqa::audio::AudioAnalyser;
use hitless::rules::cqa::tap::{ContentTap, Job, JobKind, TapEvent};
use hitless::rules::cqa::video::PictureAnalyser;
use hitless::rules::cqa::{AudioCodec, VideoCodec, worker::Analysers};
use hitless::ts::PACKET_LEN;

/// Every job the tap selects from a file (every keyframe: interval 0).
fn jobs(data: &[u8]) -> Vec<Job> {
    let t0 = Instant::now();
    let mut tap = ContentTap::new(true, true, Duration::ZERO);
    let mut out = Vec::new();
    for p in data.chunks_exact(PACKET_LEN) {
        tap.push(t0, p);
        while let Some(ev) = tap.poll_event() {
            if let TapEvent::Job(j) = ev {
                out.push(j);
            }
        }
    }
    out
}

fn bench(c: &mut Criterion) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/cqa_hd_h264.ts");
    let data = std::fs::read(path).expect("testdata/cqa_hd_h264.ts");
    let all = jobs(&data);
    let keyframes: Vec<&Job> = all
        .iter()
        .filter(|j| matches!(j.kind, JobKind::Video(_)))
        .collect();
    let audio: Vec<&Job> = all
        .iter()
        .filter(|j| matches!(j.kind, JobKind::Audio(_)))
        .collect();
    assert!(keyframes.len() >= 5, "{} keyframes", keyframes.len());
    let cfg = ContentConfig::default();

    let mut g = c.benchmark_group("cqa");
    g.measurement_time(Duration::from_secs(5));
    g.sample_size(20);

    g.throughput(Throughput::Elements(1));
    let mut pa = PictureAnalyser::new(&cfg);
    let mut k = 0;
    g.bench_function("picture/h264_1080p_keyframe", |b| {
        b.iter(|| {
            let j = keyframes[k % keyframes.len()];
            k += 1;
            black_box(
                pa.analyse(VideoCodec::H264, black_box(&j.data))
                    .expect("decodes"),
            )
        })
    });

    // About one second of audio (the PES packets whose PTS span ≤ 1 s).
    let first = audio[0].pts.unwrap_or(0);
    let second: Vec<&Job> = audio
        .iter()
        .copied()
        .filter(|j| j.pts.unwrap_or(0).wrapping_sub(first) < 90_000)
        .collect();
    g.bench_function("audio/aac_stereo_1s", |b| {
        b.iter_batched(
            || AudioAnalyser::new(AudioCodec::Aac, &cfg),
            |mut a| {
                for j in &second {
                    a.push(j.pts, &j.data, |l| {
                        black_box(l);
                    })
                    .expect("decodes");
                }
                a
            },
            BatchSize::LargeInput,
        )
    });

    // The packet path: every TS packet of the file through a tap copying one keyframe per
    // second and all audio (buffers recycled as the glue does).
    let n = data.len() / PACKET_LEN;
    g.throughput(Throughput::Elements(n as u64));
    let t0 = Instant::now();
    g.bench_function("tap/per_ts_packet", |b| {
        let mut tap = ContentTap::new(true, true, Duration::from_secs(1));
        b.iter(|| {
            for p in data.chunks_exact(PACKET_LEN) {
                tap.push(t0, black_box(p));
                while let Some(ev) = tap.poll_event() {
                    if let TapEvent::Job(j) = ev {
                        tap.recycle(j.data);
                    }
                }
            }
        })
    });

    // The worker's whole job for one source from a cold start (decoders created and the
    // first SPS parsed inside the measurement): every keyframe and all audio of the 6 s file.
    g.throughput(Throughput::Elements(1));
    let selected = jobs(&data);
    g.bench_function("worker/hd_file_6s_cold_start", |b| {
        b.iter_batched(
            || Analysers::new(cfg.clone()),
            |mut an| {
                for j in &selected {
                    an.handle_job(0, j, &mut |r| {
                        black_box(r);
                    });
                }
                an
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
