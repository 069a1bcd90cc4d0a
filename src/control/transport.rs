//! Control glue (tokio): the only part of the control module that touches a socket, the
//! clock, the disk or the channels. One task owns the [`Node`] state machine and the UDP
//! socket: it feeds datagrams, timeouts and API requests in, writes `Persist` outputs to the
//! state directory (fsync) *before* sending what follows them, sends the authenticated
//! messages, and starts, stops, mutes and unmutes the gateway's channels on `Run` events.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};

use super::machine::{
    ControlError, Dest, Event, Node, Output, Persisted, Role, RunMode, Settings, TakeoverKind,
};
use super::show::{Show, ShowChange, ShowChannel, Version};
use super::store::{Store, StoreError};
use super::wire::{Decoder, Encoder, WireError};
use crate::config::{ChannelConfig, ClusterConfig, Config};
use crate::http::AppState;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("[cluster] key_file {}: {source}", path.display())]
    Key {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("[cluster] key_file {}: {source}", path.display())]
    KeyInvalid { path: PathBuf, source: WireError },
    #[error("[cluster] state_dir: {0}")]
    Store(#[from] StoreError),
    #[error("[cluster] listen {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

#[allow(clippy::disallowed_methods)] // the control glue reads the clock
fn now() -> Instant {
    Instant::now()
}

/// Wall clock in microseconds since the Unix epoch: the message counter.
#[allow(clippy::disallowed_methods)] // the control glue reads the clock
fn unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Largest replicated configuration (canonical JSON), leaving room in one datagram for the
/// message envelope and its escaping.
pub const MAX_SHOW_BYTES: usize = 48_000;

/// Operator requests from the API.
pub enum Request {
    Score(u8, oneshot::Sender<Result<(), ControlError>>),
    Force(oneshot::Sender<Result<(), ControlError>>),
    TakeControl(oneshot::Sender<Result<(), ControlError>>),
    TriggerBackup(String, oneshot::Sender<Result<(), ControlError>>),
    TakeBack(String, oneshot::Sender<Result<(), ControlError>>),
    Change(
        ShowChange,
        bool,
        oneshot::Sender<Result<Version, ControlError>>,
    ),
    KeepLocal(oneshot::Sender<Result<Version, ControlError>>),
}

/// Handle held by the HTTP side.
pub struct ClusterHandle {
    pub tx: mpsc::Sender<Request>,
    pub status: watch::Receiver<ClusterStatus>,
    /// Where channel bodies are validated (relative `file://` slates resolve from here).
    pub show_path: PathBuf,
    stop: std::sync::Mutex<Option<oneshot::Sender<()>>>,
    join: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl ClusterHandle {
    /// Tell the peers we leave, then stop the task.
    pub async fn shutdown(&self) {
        let stop = self.stop.lock().ok().and_then(|mut s| s.take());
        if let Some(s) = stop {
            let _ = s.send(());
        }
        let join = self.join.lock().ok().and_then(|mut j| j.take());
        if let Some(j) = join {
            let _ = j.await;
        }
    }
}

/// One member as the API shows it.
#[derive(Clone, Debug, Serialize)]
pub struct MemberStatus {
    pub node: String,
    pub this_node: bool,
    pub up: bool,
    pub score: u8,
    pub roles: super::machine::Roles,
    pub manager: bool,
    pub config_version: Version,
    pub config_digest: String,
}

/// One channel of the show, with where it runs.
#[derive(Clone, Debug, Serialize)]
pub struct ChannelPlacement {
    pub name: String,
    pub home: String,
    pub backup: Option<String>,
    pub hot_standby: bool,
    pub active: Option<String>,
    pub standby: Option<String>,
}

/// `GET /api/v1/cluster`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ClusterStatus {
    pub node: String,
    pub role: &'static str,
    /// Highest manager epoch seen (this node's own while it is manager).
    pub epoch: u64,
    pub manager: Option<String>,
    pub manager_epoch: Option<u64>,
    pub config_version: Version,
    pub config_digest: String,
    pub unreplicated: bool,
    pub forced: bool,
    pub score: u8,
    pub master_down_ms: f64,
    pub members: Vec<MemberStatus>,
    pub channels: Vec<ChannelPlacement>,
    /// Channels this node runs and how ("active" | "standby").
    pub running_here: BTreeMap<String, RunMode>,
    pub divergent: Vec<String>,
    pub alarms: Vec<String>,
    pub takeovers: BTreeMap<&'static str, u64>,
    /// Control messages dropped, by reason ("unauthenticated", "replayed", "malformed", ...).
    pub rejected_messages: BTreeMap<&'static str, u64>,
    pub stale_commands: u64,
    pub commands_accepted: u64,
}

fn status(node: &Node, rejected: &BTreeMap<&'static str, u64>) -> ClusterStatus {
    let manager = node.manager();
    let mut members = vec![MemberStatus {
        node: node.id().to_owned(),
        this_node: true,
        up: true,
        score: node.score(),
        roles: node.settings().roles,
        manager: node.role() == Role::Manager,
        config_version: node.version(),
        config_digest: node.digest().to_string(),
    }];
    for (id, up, a) in node.members() {
        members.push(MemberStatus {
            node: id.to_owned(),
            this_node: false,
            up,
            score: a.score,
            roles: a.roles,
            manager: up && manager.as_ref().is_some_and(|m| m.node == id),
            config_version: a.version,
            config_digest: a.digest.to_string(),
        });
    }
    let placement = node.placement();
    let channels: Vec<ChannelPlacement> = node
        .show()
        .channels
        .iter()
        .map(|(name, c)| {
            let slot = placement.and_then(|p| p.channels.get(name));
            ChannelPlacement {
                name: name.clone(),
                home: c.home.clone(),
                backup: c.backup.clone(),
                hot_standby: c.hot_standby,
                active: slot.and_then(|s| s.active.clone()),
                standby: slot.and_then(|s| s.standby.clone()),
            }
        })
        .collect();
    let mut alarms = Vec::new();
    for d in node.divergent() {
        alarms.push(format!(
            "divergence: {d} holds configuration {} with different content",
            node.version()
        ));
    }
    if node.unreplicated() {
        alarms.push("configuration changed while peers were unreachable (unreplicated)".into());
    }
    if node.role() == Role::Waiting {
        alarms
            .push("no manager: waiting for peers (POST /api/v1/cluster/force to run alone)".into());
    }
    if let Some(p) = placement {
        for c in &p.failed {
            alarms.push(format!(
                "channel {c}: its engine stopped on its home node; on its backup until take-back"
            ));
        }
        for c in channels.iter().filter(|c| c.active.is_none()) {
            alarms.push(format!(
                "channel {}: neither its home nor its backup is up",
                c.name
            ));
        }
    }
    ClusterStatus {
        node: node.id().to_owned(),
        role: node.role().as_str(),
        epoch: node.seen().n,
        manager_epoch: manager.as_ref().map(|t| t.n),
        manager: manager.map(|t| t.node),
        config_version: node.version(),
        config_digest: node.digest().to_string(),
        unreplicated: node.unreplicated(),
        forced: node.forced(),
        score: node.score(),
        master_down_ms: node.master_down().as_secs_f64() * 1000.0,
        members,
        channels,
        running_here: node.run_set().clone(),
        divergent: node.divergent().iter().cloned().collect(),
        alarms,
        takeovers: node.stats.takeovers.clone(),
        rejected_messages: rejected.clone(),
        stale_commands: node.stats.stale_commands,
        commands_accepted: node.stats.commands_accepted,
    }
}

/// The seed show: the file's `[[channel]]` tables with their `[[cluster.channel]]` placement.
pub fn seed_show(cfg: &Config, cluster: &ClusterConfig) -> Show {
    let text = cfg
        .path
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_default();
    let mut show = Show::default();
    for (name, body) in crate::config::cluster::channel_bodies(&text) {
        if let Some(p) = cluster.placement.get(&name) {
            show.channels.insert(
                name,
                ShowChannel {
                    body,
                    home: p.home.clone(),
                    backup: p.backup.clone(),
                    hot_standby: p.hot_standby,
                },
            );
        }
    }
    show
}

/// Validate channel bodies together (names, overlapping ports) as one configuration.
pub fn parse_channels(
    show_path: &Path,
    bodies: &[(&str, &str)],
) -> Result<Vec<ChannelConfig>, String> {
    if bodies.is_empty() {
        return Ok(Vec::new());
    }
    let text: String = bodies.iter().map(|(_, b)| format!("{b}\n")).collect();
    let cfg = Config::from_str(&text, Some(show_path)).map_err(|e| e.to_string())?;
    Ok(cfg.channels)
}

/// Bind the control socket, load the state directory and start the control task.
pub async fn start(
    cfg: &Config,
    cluster: &ClusterConfig,
    state: Arc<AppState>,
) -> Result<ClusterHandle, TransportError> {
    let key = std::fs::read_to_string(&cluster.key_file).map_err(|source| TransportError::Key {
        path: cluster.key_file.clone(),
        source,
    })?;
    let key = key.trim().as_bytes().to_vec();
    let invalid = |source| TransportError::KeyInvalid {
        path: cluster.key_file.clone(),
        source,
    };
    let enc = Encoder::new(&key, &cluster.node_id).map_err(invalid)?;
    let dec = Decoder::new(&key).map_err(invalid)?;
    let store = Store::open(&cluster.state_dir)?;
    let persisted = match store.load()? {
        Some(p) => {
            tracing::info!(epoch = %p.seen, version = %p.version, "cluster: state loaded");
            p
        }
        None => {
            let p = Persisted {
                show: seed_show(cfg, cluster),
                ..Persisted::default()
            };
            store.save(&p)?;
            tracing::info!(
                channels = p.show.channels.len(),
                "cluster: first start, seed configuration from the file (version 0.0)"
            );
            p
        }
    };
    let sock = UdpSocket::bind(cluster.listen)
        .await
        .map_err(|source| TransportError::Bind {
            addr: cluster.listen,
            source,
        })?;
    let settings = Settings {
        node_id: cluster.node_id.clone(),
        score: cluster.score,
        roles: cluster.roles,
        advert_interval: cluster.advert_interval,
        switch_back: cluster.switch_back,
        peer_count: cluster.peers.len(),
    };
    let node = Node::new(settings, now(), persisted);
    let (tx, rx) = mpsc::channel(16);
    let (status_tx, status_rx) = watch::channel(status(&node, &BTreeMap::new()));
    let (stop_tx, stop_rx) = oneshot::channel();
    let (desired_tx, desired_rx) = watch::channel((BTreeMap::new(), Show::default()));
    let (failed_tx, failed_rx) = mpsc::channel(4);
    let (acks_tx, acks_rx) = mpsc::unbounded_channel();
    let show_path = cfg
        .path
        .as_ref()
        .and_then(|p| p.parent())
        .unwrap_or(Path::new("."))
        .join("cluster-show.toml");
    let task = Task {
        node,
        sock,
        peers: cluster.peers.clone(),
        addrs: HashMap::new(),
        enc,
        dec,
        writer: spawn_writer(store, acks_tx),
        status: status_tx,
        rejected: BTreeMap::new(),
        show_path: show_path.clone(),
        desired: desired_tx,
    };
    let reconciler = Reconciler {
        state,
        show_path: show_path.clone(),
        running: HashMap::new(),
        failed: BTreeSet::new(),
    };
    let reconcile = tokio::spawn(reconciler.run(desired_rx, failed_tx, cluster.advert_interval));
    tracing::info!(node = %cluster.node_id, listen = %cluster.listen, peers = cluster.peers.len(), score = cluster.score, "cluster: control started");
    let join = tokio::spawn(async move {
        task.run(rx, stop_rx, failed_rx, acks_rx).await;
        // The control task dropped the desired-state sender: the reconciler ends.
        let _ = reconcile.await;
    });
    Ok(ClusterHandle {
        tx,
        status: status_rx,
        show_path,
        stop: std::sync::Mutex::new(Some(stop_tx)),
        join: std::sync::Mutex::new(Some(join)),
    })
}

struct Task {
    node: Node,
    sock: UdpSocket,
    peers: Vec<SocketAddr>,
    /// Where each peer's datagrams come from (for messages to one node).
    addrs: HashMap<String, SocketAddr>,
    enc: Encoder,
    dec: Decoder,
    /// The state directory's writer thread: writes in order, fsync'd.
    writer: std::sync::mpsc::Sender<WriteJob>,
    status: watch::Sender<ClusterStatus>,
    rejected: BTreeMap<&'static str, u64>,
    show_path: PathBuf,
    /// What the channels must be: the reconciler task applies the latest.
    desired: watch::Sender<(BTreeMap<String, RunMode>, Show)>,
}

/// One write for the state directory's writer thread.
struct WriteJob {
    state: Persisted,
    /// Barrier writes: the control task waits for this answer before going on.
    done: Option<oneshot::Sender<Result<(), StoreError>>>,
}

/// The writer thread: writes (fsync) in order, so that the state on disk never goes
/// backwards; background writes are acknowledged to the control task through `acks`.
fn spawn_writer(
    store: Store,
    acks: mpsc::UnboundedSender<Result<Persisted, StoreError>>,
) -> std::sync::mpsc::Sender<WriteJob> {
    let (tx, rx) = std::sync::mpsc::channel::<WriteJob>();
    let spawned = std::thread::Builder::new()
        .name("cluster-store".into())
        .spawn(move || {
            for job in rx {
                let t = now();
                let r = store.save(&job.state);
                let took = t.elapsed();
                if took > std::time::Duration::from_millis(20) {
                    tracing::warn!(
                        took_ms = took.as_secs_f64() * 1000.0,
                        barrier = job.done.is_some(),
                        "cluster: persisting the state (fsync) was slow"
                    );
                }
                match job.done {
                    Some(done) => {
                        let _ = done.send(r);
                    }
                    None => {
                        let _ = acks.send(r.map(|()| job.state));
                    }
                }
            }
        });
    if let Err(e) = spawned {
        // Without a writer every barrier write fails and the node never acts as manager.
        tracing::error!(error = %e, "cluster: cannot start the state writer thread");
    }
    tx
}

/// Applies the run set to the gateway in its own task, so that a slow channel start or a
/// busy gateway lock never delays an advert (which would look like a lost node).
struct Reconciler {
    state: Arc<AppState>,
    show_path: PathBuf,
    /// Channels started here and the body they were started with.
    running: HashMap<String, String>,
    /// Channels started here whose thread has ended, as last reported.
    failed: BTreeSet<String>,
}

impl Task {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Request>,
        mut stop: oneshot::Receiver<()>,
        mut failed: mpsc::Receiver<BTreeSet<String>>,
        mut acks: mpsc::UnboundedReceiver<Result<Persisted, StoreError>>,
    ) {
        let mut buf = vec![0u8; super::wire::MAX_DATAGRAM];
        self.node.handle_timeout(now());
        self.flush().await;
        loop {
            let deadline = self
                .node
                .poll_timeout()
                .map(tokio::time::Instant::from_std)
                .unwrap_or_else(|| tokio::time::Instant::now() + std::time::Duration::from_secs(1));
            tokio::select! {
                r = self.sock.recv_from(&mut buf) => match r {
                    Ok((len, from)) => self.datagram(&buf[..len], from),
                    Err(e) => tracing::debug!(error = %e, "cluster: receive failed"),
                },
                _ = tokio::time::sleep_until(deadline) => self.node.handle_timeout(now()),
                Some(f) = failed.recv() => self.node.set_failed(now(), f),
                Some(r) = acks.recv() => match r {
                    Ok(state) => self.node.handle_persisted(&state),
                    Err(e) => tracing::error!(error = %e, "cluster: cannot persist the state"),
                },
                Some(req) = rx.recv() => self.request(req),
                _ = &mut stop => {
                    self.node.leave();
                    self.flush().await;
                    tracing::info!("cluster: left");
                    return;
                }
            }
            self.flush().await;
        }
    }

    fn datagram(&mut self, data: &[u8], from: SocketAddr) {
        match self.dec.decode(unix_us(), data) {
            Ok(msg) => {
                self.addrs.insert(msg.sender().to_owned(), from);
                self.node.handle_message(now(), msg);
            }
            Err(e) => {
                let n = self.rejected.entry(e.label()).or_default();
                *n += 1;
                // Tests and operators look for this line; bounded by powers of two.
                if n.is_power_of_two() {
                    tracing::warn!(from = %from, reason = e.label(), count = *n, error = %e, "cluster: control message rejected");
                }
            }
        }
    }

    fn request(&mut self, req: Request) {
        let t = now();
        let n = &mut self.node;
        match req {
            Request::Score(s, tx) => {
                n.set_score(t, s);
                tracing::info!(score = s, "cluster: score changed by operator");
                let _ = tx.send(Ok(()));
            }
            Request::Force(tx) => {
                let _ = tx.send(n.force(t));
            }
            Request::TakeControl(tx) => {
                let _ = tx.send(n.take_control(t).map(|_| ()));
            }
            Request::TriggerBackup(node, tx) => {
                let _ = tx.send(n.trigger_backup(t, &node));
            }
            Request::TakeBack(node, tx) => {
                let _ = tx.send(n.take_back(t, &node));
            }
            Request::Change(change, force, tx) => {
                // The whole resulting show must validate (names, overlapping ports).
                let mut show = n.show().clone();
                let r = change
                    .apply(&mut show)
                    .and_then(|()| {
                        let bodies: Vec<(&str, &str)> = show
                            .channels
                            .iter()
                            .map(|(k, c)| (k.as_str(), c.body.as_str()))
                            .collect();
                        parse_channels(&self.show_path, &bodies).map(|_| ())
                    })
                    .and_then(|()| {
                        // A show travels in one datagram (with JSON escaping and the header).
                        let len = show.canonical().len();
                        if len > MAX_SHOW_BYTES {
                            Err(format!("the configuration would be {len} bytes: at most {MAX_SHOW_BYTES} replicate in one control datagram"))
                        } else {
                            Ok(())
                        }
                    })
                    .map_err(ControlError::Show)
                    .and_then(|()| n.change_show(t, &change, force));
                if let Ok(v) = &r {
                    tracing::info!(version = %v, forced = force, "cluster: configuration changed");
                }
                let _ = tx.send(r);
            }
            Request::KeepLocal(tx) => {
                let v = n.keep_local(t);
                tracing::warn!(version = %v, "cluster: operator kept this node's configuration");
                let _ = tx.send(Ok(v));
            }
        }
    }

    /// Drain outputs (persist before send), then events; publish the status.
    async fn flush(&mut self) {
        let mut reconcile = false;
        loop {
            while let Some(o) = self.node.poll_output() {
                match o {
                    Output::Persist {
                        state,
                        barrier: false,
                    } => {
                        let _ = self.writer.send(WriteJob { state, done: None });
                    }
                    Output::Persist {
                        state,
                        barrier: true,
                    } => {
                        let (tx, rx) = oneshot::channel();
                        let job = WriteJob {
                            state: state.clone(),
                            done: Some(tx),
                        };
                        let written = match self.writer.send(job) {
                            Ok(()) => rx.await.unwrap_or_else(|_| {
                                Err(StoreError::Io {
                                    path: PathBuf::from("state_dir"),
                                    source: std::io::Error::other("writer thread stopped"),
                                })
                            }),
                            Err(_) => Err(StoreError::Io {
                                path: PathBuf::from("state_dir"),
                                source: std::io::Error::other("writer thread stopped"),
                            }),
                        };
                        match written {
                            Ok(()) => self.node.handle_persisted(&state),
                            Err(e) => {
                                tracing::error!(error = %e, "cluster: cannot persist the state: not acting as manager");
                                self.node.persist_failed(now());
                            }
                        }
                    }
                    Output::Transmit { to, msg } => self.send(&to, &msg).await,
                }
            }
            let mut any = false;
            while let Some(ev) = self.node.poll_event() {
                any = true;
                reconcile |= self.event(ev);
            }
            if !any {
                break;
            }
        }
        if reconcile {
            let _ = self
                .desired
                .send((self.node.run_set().clone(), self.node.show().clone()));
        }
        let st = status(&self.node, &self.rejected);
        let _ = self.status.send(st);
    }

    async fn send(&mut self, to: &Dest, msg: &super::machine::Message) {
        let data = match self.enc.encode(unix_us(), msg) {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "cluster: cannot encode a control message");
                return;
            }
        };
        let targets: Vec<SocketAddr> = match to {
            Dest::All => self.peers.clone(),
            Dest::Node(id) => match self.addrs.get(id) {
                Some(a) => vec![*a],
                None => self.peers.clone(),
            },
        };
        for a in targets {
            if let Err(e) = self.sock.send_to(&data, a).await {
                tracing::debug!(peer = %a, error = %e, "cluster: send failed");
            }
        }
    }

    /// Log an event; true when the channels must be reconciled.
    fn event(&mut self, ev: Event) -> bool {
        match ev {
            Event::RoleChanged {
                from,
                to,
                term,
                reason,
            } => {
                let epoch = term.map(|t| t.to_string()).unwrap_or_default();
                tracing::info!(from = from.as_str(), to = to.as_str(), epoch = %epoch, reason, "cluster: role changed");
                if to == Role::Manager {
                    tracing::info!(epoch = %epoch, version = %self.node.version(), "cluster: this node is manager");
                }
                false
            }
            Event::PeerUp(p) => {
                tracing::info!(peer = %p, "cluster: peer up");
                false
            }
            Event::PeerDown(p) => {
                tracing::warn!(peer = %p, "cluster: peer lost");
                false
            }
            Event::Run(_) => true,
            Event::ShowChanged { version, from } => {
                tracing::info!(version = %version, from = %from, "cluster: configuration adopted");
                true
            }
            Event::Takeover { kind, node } => {
                tracing::warn!(kind = kind.as_str(), node = %node, "cluster: takeover");
                false
            }
            Event::Divergence { peer, version } => {
                tracing::error!(peer = %peer, version = %version, "cluster: configuration divergence: same version, different content — an operator must choose (POST /api/v1/cluster/keep-local on the copy to keep)");
                false
            }
            Event::StaleCommand { from, term } => {
                tracing::warn!(from = %from, epoch = %term, "cluster: command with a stale epoch rejected");
                false
            }
        }
    }
}

impl Reconciler {
    async fn run(
        mut self,
        mut desired: watch::Receiver<(BTreeMap<String, RunMode>, Show)>,
        report: mpsc::Sender<BTreeSet<String>>,
        period: std::time::Duration,
    ) {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                r = desired.changed() => {
                    if r.is_err() {
                        return;
                    }
                    let (want, show) = desired.borrow_and_update().clone();
                    self.reconcile(&want, &show).await;
                }
                _ = tick.tick() => self.check_engines(&report).await,
            }
        }
    }

    /// Report channels whose engine (thread) stopped: the manager moves them to their backup.
    async fn check_engines(&mut self, report: &mpsc::Sender<BTreeSet<String>>) {
        let gw = self.state.gateway.read().await;
        let failed: BTreeSet<String> = self
            .running
            .keys()
            .filter(|n| {
                gw.find(n)
                    .and_then(|c| c.handle.as_ref())
                    .is_some_and(|h| !h.is_running())
            })
            .cloned()
            .collect();
        drop(gw);
        if failed != self.failed {
            for c in failed.difference(&self.failed) {
                tracing::error!(channel = %c, "cluster: channel engine stopped: asking the manager to move it to its backup");
            }
            self.failed = failed.clone();
            let _ = report.send(failed).await;
        }
    }

    /// Make the gateway's channels match the run set: start, stop, mute, unmute.
    async fn reconcile(&mut self, want: &BTreeMap<String, RunMode>, show: &Show) {
        let mut gw = self.state.gateway.write().await;
        // Stop what is no longer placed here, or whose configuration changed.
        let stale: Vec<String> = self
            .running
            .iter()
            .filter(|(name, body)| {
                !want.contains_key(*name)
                    || show.channels.get(*name).map(|c| &c.body) != Some(*body)
            })
            .map(|(n, _)| n.clone())
            .collect();
        for name in stale {
            gw.remove(&name).await;
            self.running.remove(&name);
            tracing::info!(channel = %name, "cluster: channel stopped");
        }
        // Unmute first: a hot-standby takeover must not wait for other channels to start.
        for (name, mode) in want {
            let standby = *mode == RunMode::Standby;
            if self.running.contains_key(name) && gw.set_standby(name, standby) == Some(!standby) {
                tracing::info!(channel = %name, "cluster: channel output {}", if standby { "muted (hot standby)" } else { "unmuted" });
            }
        }
        for (name, mode) in want {
            let standby = *mode == RunMode::Standby;
            if self.running.contains_key(name) {
                continue;
            }
            let Some(c) = show.channels.get(name) else {
                continue;
            };
            let cfgs = match parse_channels(&self.show_path, &[(name, &c.body)]) {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(channel = %name, error = %e, "cluster: channel configuration invalid");
                    continue;
                }
            };
            let Some(cfg) = cfgs.into_iter().next() else {
                continue;
            };
            match tokio::task::block_in_place(|| gw.add(&cfg, standby)) {
                Ok(()) => {
                    self.running.insert(name.clone(), c.body.clone());
                    tracing::info!(channel = %name, mode = if standby { "standby" } else { "active" }, "cluster: channel started");
                }
                Err(e) => {
                    tracing::error!(channel = %name, error = %e, "cluster: cannot start channel")
                }
            }
        }
    }
}

/// Bounded labels for `hitless_cluster_takeovers_total{kind}`.
pub fn takeover_kinds() -> impl Iterator<Item = &'static str> {
    TakeoverKind::ALL.into_iter().map(TakeoverKind::as_str)
}

/// Role labels for `hitless_cluster_role{node,role}`.
pub fn role_labels() -> impl Iterator<Item = &'static str> {
    Role::ALL.into_iter().map(Role::as_str)
}
