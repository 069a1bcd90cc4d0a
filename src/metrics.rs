//! Turns channel snapshots into Prometheus metrics. The pure code counts in plain `Stats`
//! fields; this module is the only place that knows metric names. Labels are bounded:
//! channel, source, reason — never a sequence number or an address.
//!
//! Metrics are written from a fresh snapshot of every channel at scrape time, so a scrape
//! always reads the same numbers as `GET /api/v1/channels`.

use std::sync::OnceLock;

use metrics::{counter, describe_counter, describe_gauge, gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::runtime::ChannelSnapshot;

pub const SOURCE_PACKETS: &str = "hitless_source_packets_total";
pub const SOURCE_BYTES: &str = "hitless_source_bytes_total";
pub const SOURCE_DROPPED: &str = "hitless_source_dropped_packets_total";
pub const SOURCE_UP: &str = "hitless_source_up";
pub const MERGE_RECOVERED: &str = "hitless_merge_recovered_packets_total";
pub const MERGE_UNRECOVERED: &str = "hitless_merge_unrecovered_packets_total";
pub const MERGE_DUPLICATES: &str = "hitless_merge_duplicate_packets_total";
pub const MERGE_LATE: &str = "hitless_merge_late_packets_total";
pub const MERGE_RESYNCS: &str = "hitless_merge_resyncs_total";
pub const MERGE_OVERFLOW: &str = "hitless_merge_overflow_packets_total";
pub const MERGE_PATH_DIFF: &str = "hitless_merge_path_differential_seconds";
pub const OUTPUT_PACKETS: &str = "hitless_output_packets_total";
pub const OUTPUT_BYTES: &str = "hitless_output_bytes_total";
pub const OUTPUT_ERRORS: &str = "hitless_output_send_errors_total";
pub const ACTIVE_SOURCE: &str = "hitless_channel_active_source";
pub const FAILOVERS: &str = "hitless_failovers_total";
pub const TR101290_ERRORS: &str = "hitless_tr101290_errors_total";
pub const SOURCE_HEALTHY: &str = "hitless_source_healthy";
pub const SOURCE_HELD_DOWN: &str = "hitless_source_held_down";
pub const RULE_FAILING: &str = "hitless_rule_failing";
pub const CONTENT_STATE: &str = "hitless_content_state";
pub const CONTENT_QUEUED: &str = "hitless_content_jobs_queued_total";
pub const CONTENT_DROPPED: &str = "hitless_content_jobs_dropped_total";
pub const CHANNEL_LOCKED: &str = "hitless_channel_locked";
pub const CHANNEL_STAGE: &str = "hitless_channel_stage";
pub const CHANNEL_RUNNING: &str = "hitless_channel_running";
pub const SWITCH_GAP: &str = "hitless_switch_last_gap_seconds";
pub const MERGE_ALIGNED: &str = "hitless_merge_aligned";
pub const MERGE_DIVERGED: &str = "hitless_merge_diverged_total";
pub const MERGE_PLACEMENTS: &str = "hitless_merge_placements_total";

pub const CLUSTER_ROLE: &str = "hitless_cluster_role";
pub const CLUSTER_EPOCH: &str = "hitless_cluster_epoch";
pub const CLUSTER_CONFIG_VERSION: &str = "hitless_cluster_config_version";
pub const CLUSTER_CONFIG_EPOCH: &str = "hitless_cluster_config_epoch";
pub const CLUSTER_TAKEOVERS: &str = "hitless_cluster_takeovers_total";
pub const CLUSTER_PEER_UP: &str = "hitless_cluster_peer_up";
pub const CLUSTER_DIVERGENCE: &str = "hitless_cluster_divergence";
pub const CLUSTER_UNREPLICATED: &str = "hitless_cluster_unreplicated";
pub const CLUSTER_REJECTED: &str = "hitless_cluster_rejected_messages_total";
pub const CLUSTER_STALE_COMMANDS: &str = "hitless_cluster_stale_commands_total";

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Install the global Prometheus recorder once per process and return its handle.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // A second recorder can only exist if an embedding program installed its own;
            // then we still render ours from the handle.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            handle
        })
        .clone()
}

fn describe() {
    describe_counter!(SOURCE_PACKETS, "Valid datagrams received per source.");
    describe_counter!(
        SOURCE_BYTES,
        "Bytes of valid datagrams received per source (UDP payload)."
    );
    describe_counter!(SOURCE_DROPPED, "Datagrams dropped at ingest, by reason.");
    describe_gauge!(
        SOURCE_UP,
        "1 while the source delivers packets, 0 once it has been silent for leg_timeout_ms."
    );
    describe_counter!(
        MERGE_RECOVERED,
        "Packets this source delivered that no other leg delivered in time."
    );
    describe_counter!(
        MERGE_UNRECOVERED,
        "Packets missing on every leg when the merge window expired."
    );
    describe_counter!(MERGE_DUPLICATES, "Redundant copies dropped by the merger.");
    describe_counter!(
        MERGE_LATE,
        "Packets that arrived after their sequence number had been released."
    );
    describe_counter!(
        MERGE_RESYNCS,
        "Times the merger re-anchored (sender restart, SSRC change, jump)."
    );
    describe_counter!(
        MERGE_OVERFLOW,
        "Packets given up because the merge buffer bound was reached."
    );
    describe_gauge!(
        MERGE_PATH_DIFF,
        "How far this source trails the earliest source, in seconds."
    );
    describe_counter!(
        OUTPUT_PACKETS,
        "Datagrams sent per channel (summed over outputs)."
    );
    describe_counter!(
        OUTPUT_BYTES,
        "Bytes sent per channel (summed over outputs)."
    );
    describe_counter!(OUTPUT_ERRORS, "Datagrams the kernel refused to send.");
    describe_gauge!(
        ACTIVE_SOURCE,
        "1 for each source currently feeding the channel's output."
    );
    describe_counter!(
        FAILOVERS,
        "Times the channel lost or changed a source, by reason."
    );
    describe_counter!(
        TR101290_ERRORS,
        "ETSI TR 101 290 priority-1 errors per source, by indicator."
    );
    describe_gauge!(
        SOURCE_HEALTHY,
        "Switch mode: 1 while the source is online with no failing rule."
    );
    describe_gauge!(
        SOURCE_HELD_DOWN,
        "Switch mode: 1 while a flapping source is held down."
    );
    describe_gauge!(
        RULE_FAILING,
        "Switch and content-merge: 1 while a failover rule of the source fails, by condition."
    );
    describe_gauge!(
        CONTENT_STATE,
        "Content analysis: 1 while the condition is present on the source, 0 while absent, -1 while unknown (codec not decodable, nothing analysed recently)."
    );
    describe_counter!(
        CONTENT_QUEUED,
        "Content analysis: jobs (keyframes, audio PES) handed to the channel's worker."
    );
    describe_counter!(
        CONTENT_DROPPED,
        "Content analysis: jobs dropped because the worker was busy (analysis lost, never packets)."
    );
    describe_gauge!(
        CHANNEL_LOCKED,
        "Switch mode: 1 while an operator lock holds the channel on a source."
    );
    describe_gauge!(
        CHANNEL_STAGE,
        "Switch mode: 1 for the channel's live-event stage."
    );
    describe_gauge!(
        CHANNEL_RUNNING,
        "1 while the channel runs, 0 when disabled or stopped."
    );
    describe_gauge!(
        SWITCH_GAP,
        "Switch mode: output gap around the last switch, in seconds."
    );
    describe_gauge!(
        MERGE_ALIGNED,
        "Content merge: 1 while the legs are aligned and merged, 0 while falling back to switching."
    );
    describe_counter!(
        MERGE_DIVERGED,
        "Content merge: times the legs were found not to be the same stream."
    );
    describe_counter!(
        MERGE_PLACEMENTS,
        "Content merge: datagrams placed on evidence other than a content match, by kind (time, pcr, ambiguous, conflict)."
    );
    describe_gauge!(CLUSTER_ROLE, "1 for this node's cluster role.");
    describe_gauge!(CLUSTER_EPOCH, "Highest manager epoch this node has seen.");
    describe_gauge!(
        CLUSTER_CONFIG_VERSION,
        "Version counter of the replicated configuration held here."
    );
    describe_gauge!(
        CLUSTER_CONFIG_EPOCH,
        "Epoch of the replicated configuration held here."
    );
    describe_counter!(CLUSTER_TAKEOVERS, "Takeovers decided here, by kind.");
    describe_gauge!(CLUSTER_PEER_UP, "1 while the peer's adverts arrive.");
    describe_gauge!(
        CLUSTER_DIVERGENCE,
        "Peers holding the same configuration version with different content (alarm)."
    );
    describe_gauge!(
        CLUSTER_UNREPLICATED,
        "1 while a forced configuration change has not reached every member."
    );
    describe_counter!(
        CLUSTER_REJECTED,
        "Control messages dropped, by reason (unauthenticated, replayed, malformed)."
    );
    describe_counter!(
        CLUSTER_STALE_COMMANDS,
        "Manager commands refused because a higher epoch was already seen."
    );
}

/// Write the cluster status into the recorder.
pub fn publish_cluster(s: &crate::control::transport::ClusterStatus) {
    for role in crate::control::transport::role_labels() {
        let l = [("node", s.node.clone()), ("role", role.to_owned())];
        gauge!(CLUSTER_ROLE, &l).set(if s.role == role { 1.0 } else { 0.0 });
    }
    gauge!(CLUSTER_EPOCH).set(s.epoch as f64);
    gauge!(CLUSTER_CONFIG_VERSION).set(s.config_version.version as f64);
    gauge!(CLUSTER_CONFIG_EPOCH).set(s.config_version.epoch as f64);
    for kind in crate::control::transport::takeover_kinds() {
        let n = s.takeovers.get(kind).copied().unwrap_or(0);
        counter!(CLUSTER_TAKEOVERS, "kind" => kind).absolute(n);
    }
    for m in s.members.iter().filter(|m| !m.this_node) {
        gauge!(CLUSTER_PEER_UP, "peer" => m.node.clone()).set(if m.up { 1.0 } else { 0.0 });
    }
    gauge!(CLUSTER_DIVERGENCE).set(s.divergent.len() as f64);
    gauge!(CLUSTER_UNREPLICATED).set(if s.unreplicated { 1.0 } else { 0.0 });
    for (reason, n) in &s.rejected_messages {
        counter!(CLUSTER_REJECTED, "reason" => *reason).absolute(*n);
    }
    counter!(CLUSTER_STALE_COMMANDS).absolute(s.stale_commands);
}

/// Write one channel's snapshot into the recorder.
pub fn publish(s: &ChannelSnapshot) {
    let ch = s.name.clone();
    for src in &s.sources {
        let l = [("channel", ch.clone()), ("source", src.name.clone())];
        counter!(SOURCE_PACKETS, &l).absolute(src.packets);
        counter!(SOURCE_BYTES, &l).absolute(src.bytes);
        counter!(MERGE_RECOVERED, &l).absolute(src.recovered);
        gauge!(MERGE_PATH_DIFF, &l).set(src.path_differential_ms / 1000.0);
        gauge!(SOURCE_UP, &l).set(if src.up { 1.0 } else { 0.0 });
        gauge!(ACTIVE_SOURCE, &l).set(if src.active { 1.0 } else { 0.0 });
        if let Some(p1) = &src.tr101290 {
            for (ind, n) in p1 {
                let l = [
                    ("channel", ch.clone()),
                    ("source", src.name.clone()),
                    ("indicator", (*ind).to_owned()),
                ];
                counter!(TR101290_ERRORS, &l).absolute(*n);
            }
        }
        for r in &src.rules {
            let l = [
                ("channel", ch.clone()),
                ("source", src.name.clone()),
                ("condition", r.condition.label().to_owned()),
            ];
            gauge!(RULE_FAILING, &l).set(if r.failing { 1.0 } else { 0.0 });
        }
        for (reason, n) in &src.dropped {
            let l = [
                ("channel", ch.clone()),
                ("source", src.name.clone()),
                ("reason", (*reason).to_owned()),
            ];
            counter!(SOURCE_DROPPED, &l).absolute(*n);
        }
    }
    for src in &s.sources {
        for (cond, st) in src.content.iter().flat_map(|c| &c.conditions) {
            let l = [
                ("channel", ch.clone()),
                ("source", src.name.clone()),
                ("condition", (*cond).to_owned()),
            ];
            let v = match st.state {
                "present" => 1.0,
                "absent" => 0.0,
                _ => -1.0,
            };
            gauge!(CONTENT_STATE, &l).set(v);
        }
    }
    let l = [("channel", ch.clone())];
    if let Some(c) = &s.content {
        counter!(CONTENT_QUEUED, &l).absolute(c.queued);
        counter!(CONTENT_DROPPED, &l).absolute(c.dropped);
    }
    gauge!(CHANNEL_RUNNING, &l).set(if s.state == "running" { 1.0 } else { 0.0 });
    if let Some(aligned) = s.aligned {
        gauge!(MERGE_ALIGNED, &l).set(if aligned { 1.0 } else { 0.0 });
    }
    if let Some(n) = s.diverged {
        counter!(MERGE_DIVERGED, &l).absolute(n);
    }
    if let Some(sw) = &s.switch {
        gauge!(CHANNEL_LOCKED, &l).set(if sw.locked.is_some() { 1.0 } else { 0.0 });
        for stage in crate::config::Stage::ALL {
            let l = [
                ("channel", ch.clone()),
                ("stage", stage.as_str().to_owned()),
            ];
            gauge!(CHANNEL_STAGE, &l).set(if sw.stage == stage { 1.0 } else { 0.0 });
        }
        for (src, st) in s.sources.iter().zip(&sw.sources) {
            let l = [("channel", ch.clone()), ("source", src.name.clone())];
            gauge!(SOURCE_HEALTHY, &l).set(if st.healthy { 1.0 } else { 0.0 });
            gauge!(SOURCE_HELD_DOWN, &l).set(if st.held_down_for_ms.is_some() {
                1.0
            } else {
                0.0
            });
        }
        if let Some(gap) = s.last_switch_gap_ms {
            gauge!(SWITCH_GAP, &l).set(gap / 1000.0);
        }
    }
    counter!(MERGE_UNRECOVERED, &l).absolute(s.merge.unrecovered);
    counter!(MERGE_DUPLICATES, &l).absolute(s.merge.duplicates);
    counter!(MERGE_LATE, &l).absolute(s.merge.late);
    counter!(MERGE_RESYNCS, &l).absolute(s.merge.resyncs);
    counter!(MERGE_OVERFLOW, &l).absolute(s.merge.overflow);
    for (by, n) in s.merge.placements.iter().flatten() {
        let l = [("channel", ch.clone()), ("by", (*by).to_owned())];
        counter!(MERGE_PLACEMENTS, &l).absolute(*n);
    }
    counter!(OUTPUT_PACKETS, &l).absolute(s.output.packets);
    counter!(OUTPUT_BYTES, &l).absolute(s.output.bytes);
    counter!(OUTPUT_ERRORS, &l).absolute(s.output.errors);
    for (reason, n) in &s.failovers {
        let l = [("channel", ch.clone()), ("reason", (*reason).to_owned())];
        counter!(FAILOVERS, &l).absolute(*n);
    }
}
