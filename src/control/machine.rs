//! The control state machine of one node (sans-IO): election, fencing, show replication and
//! channel placement. `now` is always a parameter; the glue in `transport.rs` moves the
//! messages, writes [`Output::Persist`] to disk (fsync) and starts/stops channels on
//! [`Event::Run`].
//!
//! Shape (house style): feed it with [`Node::handle_message`], [`Node::handle_timeout`] and
//! the operator actions; then drain [`Node::poll_output`] *in order* (a `Persist` always comes
//! before the messages that depend on it, so the epoch is on disk before the node acts as
//! manager) and [`Node::poll_event`]; then sleep until [`Node::poll_timeout`]. Poll again
//! after every call that takes `now`.
//!
//! Election (after VRRP, RFC 5798 §6.1, and the Compere/Pixotope/PIXERA behaviour): every node
//! advertises every `advert_interval`. The manager is the live, eligible (score > 0, role
//! "manager") node ranked highest by (show version, score, node_id). A peer is lost after
//! `Master_Down_Interval = 3 × advert_interval + Skew_Time`, `Skew_Time = (256 − score) ×
//! advert_interval / 256` of this node's score, so higher-scored nodes notice first. A start-up
//! grace of one master-down interval lets peers be seen before the first election, and a
//! node claims the manager role only after it has heard from a majority of the configured
//! members since it started (a lone node of a pair waits) unless an operator forces it.
//!
//! Fencing: a manager term is a [`Term`] `(n, node_id)`: `n` one above the highest term the
//! node has seen (persisted), the node id making terms of concurrent claimants distinct and
//! totally ordered, like Paxos ballots. Every command (a placement) is stamped with its
//! term; a node that has seen a higher term rejects it, and a manager that learns of a higher
//! term steps down at once.
//!
//! Epoch reservation: a claim must not wait for an fsync (on a busy disk one takes hundreds
//! of milliseconds). Every persisted state also records `reserved`, the term number this
//! node will claim next; once that write is durable ([`Node::handle_persisted`]), a claim of
//! that number acts at once — its epoch is already on disk — and a node that restarts never
//! claims a number at or below its persisted reservation again. A claim beyond the durable
//! reservation is a barrier: the glue writes it before anything that follows.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::show::{Digest, NodeId, Show, ShowChange, Version};

/// A manager term (the fencing epoch): `n`, then the claimant's id. Totally ordered; the
/// default `(0, "")` is "no manager ever seen".
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Term {
    pub n: u64,
    pub node: NodeId,
}

impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.n, self.node)
    }
}

/// What a node may do (`[cluster] roles`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Roles {
    /// May be elected manager (with a score above 0).
    pub manager: bool,
    /// May run channels whose home it is.
    pub client: bool,
    /// May take over channels it is the backup of.
    pub backup: bool,
}

impl Roles {
    pub const ALL: Roles = Roles {
        manager: true,
        client: true,
        backup: true,
    };
}

/// What happens when a better node returns (`[cluster] switch_back`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SwitchBack {
    /// Hand the manager role and a client's channels back once the returning node has been
    /// up for the grace period.
    Auto,
    /// Keep the current arrangement until an operator takes control back.
    Manual,
}

/// Static settings of a node.
#[derive(Clone, Debug)]
pub struct Settings {
    pub node_id: NodeId,
    /// Election score, 0 = never manager.
    pub score: u8,
    pub roles: Roles,
    pub advert_interval: Duration,
    pub switch_back: SwitchBack,
    /// How many other members are configured (`[cluster] peers`).
    pub peer_count: usize,
}

/// Where one channel runs, as commanded by the manager.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slot {
    /// The node that outputs the channel (`None`: neither its home nor its backup is up).
    pub active: Option<NodeId>,
    /// The node that receives and merges it with its output muted (hot standby).
    pub standby: Option<NodeId>,
}

/// The manager's command: where every channel runs. Stamped with the manager's term.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub term: Term,
    pub channels: BTreeMap<String, Slot>,
    /// Homes whose channels are on their backup because the home was lost.
    pub lost: BTreeSet<NodeId>,
    /// Homes whose channels an operator moved to their backup ("trigger backup").
    pub triggered: BTreeSet<NodeId>,
    /// Channels moved to their backup because their engine stopped on the home node; they
    /// stay there until an operator takes them back.
    #[serde(default)]
    pub failed: BTreeSet<String>,
}

/// A node's periodic announcement; from the manager it also carries the command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
// Fields added by a later version are ignored (rolling upgrades); the MAC still covers them.
pub struct Advert {
    pub node: NodeId,
    pub score: u8,
    pub roles: Roles,
    /// The highest term the sender has seen.
    pub seen: Term,
    /// Set while the sender is the manager of this term.
    pub manager: Option<Term>,
    pub version: Version,
    pub digest: Digest,
    /// Manager only: the command, stamped with `manager`'s term.
    pub placement: Option<Placement>,
    /// Channels placed on the sender whose engine has stopped there.
    #[serde(default)]
    pub failed: BTreeSet<String>,
}

/// Everything that travels between nodes (authenticated by `wire.rs`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
// Fields added by a later version are ignored (rolling upgrades); the MAC still covers them.
pub enum Message {
    Advert(Advert),
    /// A full copy of the show, sent to a peer that advertises an older version.
    Show {
        node: NodeId,
        version: Version,
        digest: Digest,
        show: Show,
    },
    /// The sender is shutting down: treat it as lost now rather than after master-down.
    Leave {
        node: NodeId,
    },
}

impl Message {
    /// The node that sent it (checked against the authenticated sender by the codec).
    pub fn sender(&self) -> &str {
        match self {
            Message::Advert(a) => &a.node,
            Message::Show { node, .. } | Message::Leave { node } => node,
        }
    }
}

/// Where a message goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dest {
    /// Every configured peer.
    All,
    Node(NodeId),
}

/// What the node persists (fsync).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Persisted {
    /// The highest term seen (a claim is always above it, even after a restart).
    pub seen: Term,
    /// Term numbers up to this one may have been claimed by this node: after a restart it
    /// claims only above it.
    #[serde(default)]
    pub reserved: u64,
    pub version: Version,
    pub show: Show,
}

// Outputs are drained as they are made, a handful at a time: their size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Write this to stable storage (fsync), in order with the other writes, then call
    /// [`Node::handle_persisted`]. With `barrier`, nothing that follows may be sent or acted
    /// on before the write is durable; without, the write may complete in the background.
    Persist {
        state: Persisted,
        barrier: bool,
    },
    Transmit {
        to: Dest,
        msg: Message,
    },
}

/// How this node runs a channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunMode {
    /// Receiving, merging and outputting.
    Active,
    /// Receiving and merging with the output muted (hot standby).
    Standby,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Start-up grace: listening for peers before the first election.
    Starting,
    /// No manager, and this node cannot prove its configuration is newest: it has not heard
    /// from a majority of the members. Waits for peers or an operator's force.
    Waiting,
    /// Another node is manager (or will be: it ranks higher).
    Follower,
    Manager,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Starting, Role::Waiting, Role::Follower, Role::Manager];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Starting => "starting",
            Role::Waiting => "waiting",
            Role::Follower => "follower",
            Role::Manager => "manager",
        }
    }
}

/// Kinds of takeover, a bounded metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TakeoverKind {
    /// A new manager after the previous one was lost.
    Manager,
    /// A lost client's channels moved to their backup.
    Client,
    /// An operator's "trigger backup".
    Triggered,
    /// Channels returned to their home node (automatic switch back or "take back").
    TakeBack,
    /// An operator took the manager role ("take control").
    TakeControl,
}

impl TakeoverKind {
    pub const ALL: [TakeoverKind; 5] = [
        TakeoverKind::Manager,
        TakeoverKind::Client,
        TakeoverKind::Triggered,
        TakeoverKind::TakeBack,
        TakeoverKind::TakeControl,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TakeoverKind::Manager => "manager",
            TakeoverKind::Client => "client",
            TakeoverKind::Triggered => "triggered",
            TakeoverKind::TakeBack => "take-back",
            TakeoverKind::TakeControl => "take-control",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    RoleChanged {
        from: Role,
        to: Role,
        term: Option<Term>,
        reason: &'static str,
    },
    PeerUp(NodeId),
    PeerDown(NodeId),
    /// The channels this node must run now, and how (replaces the previous set).
    Run(BTreeMap<String, RunMode>),
    /// A newer show was adopted from `from` (or made here).
    ShowChanged {
        version: Version,
        from: NodeId,
    },
    Takeover {
        kind: TakeoverKind,
        /// The node replaced (the lost manager or client, or the home given back to).
        node: NodeId,
    },
    /// `peer` holds the same version with different content.
    Divergence {
        peer: NodeId,
        version: Version,
    },
    /// A command stamped with a term lower than one already seen was refused.
    StaleCommand {
        from: NodeId,
        term: Term,
    },
}

/// Counters, turned into metrics by `metrics.rs`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Stats {
    pub commands_accepted: u64,
    pub stale_commands: u64,
    pub stale_shows: u64,
    pub bad_shows: u64,
    pub elections_won: u64,
    pub takeovers: BTreeMap<&'static str, u64>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ControlError {
    #[error("this node is not the manager (manager: {})", .manager.as_deref().unwrap_or("none"))]
    NotManager { manager: Option<NodeId> },
    #[error(
        "only {up} of {expected} peers are reachable: changes are refused unless forced (they would be unreplicated)"
    )]
    PeersUnreachable { up: usize, expected: usize },
    #[error(
        "the configuration has diverged from {0:?}: resolve it first (keep-local on the copy to keep) or force"
    )]
    Divergent(Vec<NodeId>),
    #[error("this node cannot be manager: {0}")]
    Ineligible(&'static str),
    #[error("this node's configuration {mine} is older than {peer}'s {theirs}")]
    OlderConfiguration {
        mine: Version,
        peer: NodeId,
        theirs: Version,
    },
    #[error("no member named {0:?}")]
    UnknownNode(NodeId),
    #[error("{0}")]
    Show(String),
}

struct Peer {
    advert: Advert,
    last: Instant,
    /// Up (heard within master-down) since.
    since: Instant,
    up: bool,
    show_sent: Option<Instant>,
}

/// One node's control state machine.
pub struct Node {
    s: Settings,
    started: Instant,
    last_now: Instant,
    role: Role,
    /// Highest term seen (persisted).
    seen: Term,
    /// When a peer told us of `seen`: its manager is presumed alive for a master-down
    /// interval even if we have not heard it yet (a deposed manager must not reclaim at once).
    seen_at: Option<Instant>,
    /// This node's term while it is manager.
    my_term: Option<Term>,
    version: Version,
    show: Show,
    digest: Digest,
    /// Changed while peers were unreachable (forced) and not yet held by every member.
    unreplicated: bool,
    forced: bool,
    peers: BTreeMap<NodeId, Peer>,
    /// Peers heard from since this node started (the majority rule).
    heard: BTreeSet<NodeId>,
    /// The current command: made here (manager) or accepted from the manager.
    placement: Option<Placement>,
    run: BTreeMap<String, RunMode>,
    divergent: BTreeSet<NodeId>,
    /// Channels placed here whose engine stopped (reported by the glue).
    failed_here: BTreeSet<String>,
    /// Term numbers this node may have claimed before its last start: never claimed again.
    burned: u64,
    /// The reservation known to be on disk: a claim of a number up to it needs no barrier.
    durable_reserved: u64,
    /// The last manager this node knew of (to tell a manager takeover from a first election).
    last_manager: Option<Term>,
    next_advert: Instant,
    advert_now: bool,
    out: VecDeque<Output>,
    events: VecDeque<Event>,
    pub stats: Stats,
    /// Tests: every accepted command's term and the highest term seen before accepting it.
    #[cfg(test)]
    pub accepted: Vec<(Term, Term)>,
}

impl Node {
    /// A node starting at `now` from what it persisted (or the seed show at version (0, 0)).
    pub fn new(s: Settings, now: Instant, persisted: Persisted) -> Node {
        let digest = persisted.show.digest();
        let burned = persisted.reserved.max(persisted.seen.n);
        let mut node = Node {
            started: now,
            last_now: now,
            role: Role::Starting,
            seen: persisted.seen,
            seen_at: None,
            my_term: None,
            version: persisted.version,
            show: persisted.show,
            digest,
            unreplicated: false,
            forced: false,
            peers: BTreeMap::new(),
            heard: BTreeSet::new(),
            placement: None,
            run: BTreeMap::new(),
            divergent: BTreeSet::new(),
            failed_here: BTreeSet::new(),
            burned,
            durable_reserved: 0,
            last_manager: None,
            next_advert: now,
            advert_now: false,
            out: VecDeque::new(),
            events: VecDeque::new(),
            stats: Stats::default(),
            #[cfg(test)]
            accepted: Vec::new(),
            s,
        };
        // Reserve the next term number in the background, so that a claim need not wait.
        node.persist(false);
        node
    }

    // ---- accessors -------------------------------------------------------------------

    pub fn id(&self) -> &str {
        &self.s.node_id
    }
    pub fn role(&self) -> Role {
        self.role
    }
    pub fn term(&self) -> Option<&Term> {
        self.my_term.as_ref()
    }
    pub fn seen(&self) -> &Term {
        &self.seen
    }
    pub fn version(&self) -> Version {
        self.version
    }
    pub fn digest(&self) -> Digest {
        self.digest
    }
    pub fn show(&self) -> &Show {
        &self.show
    }
    pub fn score(&self) -> u8 {
        self.s.score
    }
    pub fn run_set(&self) -> &BTreeMap<String, RunMode> {
        &self.run
    }
    pub fn placement(&self) -> Option<&Placement> {
        self.placement.as_ref()
    }
    pub fn divergent(&self) -> &BTreeSet<NodeId> {
        &self.divergent
    }
    pub fn unreplicated(&self) -> bool {
        self.unreplicated
    }
    pub fn forced(&self) -> bool {
        self.forced
    }
    pub fn settings(&self) -> &Settings {
        &self.s
    }

    /// The live manager as this node sees it (itself included).
    pub fn manager(&self) -> Option<Term> {
        if self.role == Role::Manager {
            return self.my_term.clone();
        }
        self.live_manager().map(|(_, t)| t)
    }

    /// Peers: id, up, score, roles, manager term, version, digest.
    pub fn members(&self) -> impl Iterator<Item = (&str, bool, &Advert)> {
        self.peers
            .iter()
            .map(|(id, p)| (id.as_str(), p.up, &p.advert))
    }

    /// VRRP Master_Down_Interval for this node's score.
    pub fn master_down(&self) -> Duration {
        let skew = self.s.advert_interval * (256 - u32::from(self.s.score)) / 256;
        self.s.advert_interval * 3 + skew
    }

    fn grace_end(&self) -> Instant {
        self.started + self.master_down()
    }

    fn eligible(&self) -> Result<(), &'static str> {
        if self.s.score == 0 {
            Err("score 0 (never manager)")
        } else if !self.s.roles.manager {
            Err("its roles do not include \"manager\"")
        } else {
            Ok(())
        }
    }

    /// Whether `node` is up (this node always is) and has the role to run a channel.
    fn runs(&self, node: &str, home: bool) -> bool {
        let roles = if node == self.s.node_id {
            self.s.roles
        } else {
            match self.peers.get(node) {
                Some(p) if p.up => p.advert.roles,
                _ => return false,
            }
        };
        if home { roles.client } else { roles.backup }
    }

    fn node_up(&self, node: &str) -> bool {
        node == self.s.node_id || self.peers.get(node).is_some_and(|p| p.up)
    }

    fn peers_up(&self) -> usize {
        self.peers.values().filter(|p| p.up).count()
    }

    /// The highest-term live peer that claims the manager role with a term not below the
    /// highest seen.
    fn live_manager(&self) -> Option<(NodeId, Term)> {
        self.peers
            .iter()
            .filter(|(_, p)| p.up)
            .filter_map(|(id, p)| p.advert.manager.clone().map(|t| (id.clone(), t)))
            .filter(|(_, t)| *t >= self.seen)
            .max_by(|a, b| a.1.cmp(&b.1))
    }

    /// The best-ranked eligible candidate among this node and its live peers (peers only
    /// once up for the grace period when `settled`): (version, score, node_id), highest wins.
    fn best(&self, now: Instant, settled: bool) -> Option<NodeId> {
        let md = self.master_down();
        let mut best: Option<(Version, u8, &str)> = None;
        if self.eligible().is_ok() {
            best = Some((self.version, self.s.score, &self.s.node_id));
        }
        for (id, p) in &self.peers {
            let a = &p.advert;
            if !p.up || a.score == 0 || !a.roles.manager {
                continue;
            }
            if settled && now < p.since + md {
                continue;
            }
            let key = (a.version, a.score, id.as_str());
            if best.is_none_or(|b| key > b) {
                best = Some(key);
            }
        }
        best.map(|b| b.2.to_owned())
    }

    // ---- sans-IO interface --------------------------------------------------------------

    /// The next output; poll until `None` after every call that takes `now`. Process in order.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Node::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let md = self.master_down();
        let mut t = self.next_advert;
        let mut consider = |d: Instant| {
            if d > self.last_now && d < t {
                t = d;
            }
        };
        consider(self.grace_end());
        if let Some(t) = self.seen_at {
            consider(t + md);
        }
        for p in self.peers.values().filter(|p| p.up) {
            consider(p.last + md);
            consider(p.since + md);
        }
        Some(t)
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.last_now = self.last_now.max(now);
        if now >= self.next_advert {
            self.advert_now = true;
        }
        self.evaluate(now);
    }

    /// A message from a peer (already authenticated by the codec).
    pub fn handle_message(&mut self, now: Instant, msg: Message) {
        self.last_now = self.last_now.max(now);
        if msg.sender() == self.s.node_id {
            return;
        }
        match msg {
            Message::Advert(a) => self.handle_advert(now, a),
            Message::Show {
                node,
                version,
                digest,
                show,
            } => self.handle_show(now, node, version, digest, show),
            Message::Leave { node } => {
                if let Some(p) = self.peers.get_mut(&node) {
                    if p.up {
                        p.up = false;
                        self.events.push_back(Event::PeerDown(node));
                    }
                }
            }
        }
        self.evaluate(now);
    }

    fn raise_seen(&mut self, now: Instant, t: &Term) {
        if *t > self.seen {
            self.seen = t.clone();
            self.seen_at = Some(now);
            self.persist(false);
        }
    }

    /// The term number of this node's next claim.
    fn next_n(&self) -> u64 {
        self.seen.n.max(self.burned) + 1
    }

    fn persist(&mut self, barrier: bool) {
        let reserved = self.next_n().max(self.my_term.as_ref().map_or(0, |t| t.n));
        self.out.push_back(Output::Persist {
            state: Persisted {
                seen: self.seen.clone(),
                reserved,
                version: self.version,
                show: self.show.clone(),
            },
            barrier,
        });
    }

    /// A write of [`Output::Persist`] completed: its reservation is durable.
    pub fn handle_persisted(&mut self, state: &Persisted) {
        self.durable_reserved = self.durable_reserved.max(state.reserved);
    }

    fn handle_advert(&mut self, now: Instant, a: Advert) {
        let id = a.node.clone();
        self.heard.insert(id.clone());
        let came_up = match self.peers.get_mut(&id) {
            Some(p) => {
                p.last = now;
                let came_up = !p.up;
                if came_up {
                    p.up = true;
                    p.since = now;
                }
                p.advert = a.clone();
                came_up
            }
            None => {
                self.peers.insert(
                    id.clone(),
                    Peer {
                        advert: a.clone(),
                        last: now,
                        since: now,
                        up: true,
                        show_sent: None,
                    },
                );
                true
            }
        };
        if came_up {
            self.events.push_back(Event::PeerUp(id.clone()));
            // Tell it about us now rather than at the next interval.
            self.advert_now = true;
        }
        // Fencing: learn the highest term; a manager below it is deposed.
        self.raise_seen(now, &a.seen);
        if let Some(t) = &a.manager {
            self.raise_seen(now, t);
        }
        if self.role == Role::Manager && self.my_term.as_ref() < Some(&self.seen) {
            self.step_down(Role::Follower, "deposed: a higher epoch exists");
        }
        if let Some(t) = &a.manager {
            if *t < self.seen {
                self.stats.stale_commands += 1;
                self.events.push_back(Event::StaleCommand {
                    from: id.clone(),
                    term: t.clone(),
                });
            } else if let Some(p) = &a.placement {
                if p.term == *t && self.role != Role::Manager {
                    #[cfg(test)]
                    self.accepted.push((p.term.clone(), self.seen.clone()));
                    self.stats.commands_accepted += 1;
                    self.last_manager = Some(t.clone());
                    if self.placement.as_ref() != Some(p) {
                        self.placement = Some(p.clone());
                    }
                }
            }
        }
        // Replication: send our newer show; notice a divergence.
        if a.version < self.version {
            self.send_show(now, &id);
        } else if a.version == self.version && a.digest != self.digest {
            if self.divergent.insert(id.clone()) {
                self.events.push_back(Event::Divergence {
                    peer: id,
                    version: a.version,
                });
            }
        } else {
            self.divergent.remove(&id);
        }
    }

    fn send_show(&mut self, now: Instant, to: &str) {
        let interval = self.s.advert_interval;
        let Some(p) = self.peers.get_mut(to) else {
            return;
        };
        if p.show_sent.is_some_and(|t| now < t + interval) {
            return;
        }
        p.show_sent = Some(now);
        self.out.push_back(Output::Transmit {
            to: Dest::Node(to.to_owned()),
            msg: Message::Show {
                node: self.s.node_id.clone(),
                version: self.version,
                digest: self.digest,
                show: self.show.clone(),
            },
        });
    }

    fn handle_show(
        &mut self,
        _now: Instant,
        from: NodeId,
        version: Version,
        digest: Digest,
        show: Show,
    ) {
        if show.digest() != digest {
            self.stats.bad_shows += 1;
            return;
        }
        if version > self.version {
            self.adopt(version, show, digest, from);
        } else if version == self.version && digest != self.digest {
            if self.divergent.insert(from.clone()) {
                self.events.push_back(Event::Divergence {
                    peer: from,
                    version,
                });
            }
        } else {
            self.stats.stale_shows += 1;
        }
    }

    fn adopt(&mut self, version: Version, show: Show, digest: Digest, from: NodeId) {
        self.version = version;
        self.show = show;
        self.digest = digest;
        self.unreplicated = false;
        self.divergent.clear();
        // Replicated configuration never goes backwards on disk: written before it is
        // advertised.
        self.persist(true);
        self.advert_now = true;
        self.events.push_back(Event::ShowChanged { version, from });
    }

    /// Re-run the election and the placement; queue an advert when due or when something
    /// changed.
    fn evaluate(&mut self, now: Instant) {
        let md = self.master_down();
        // Lost peers.
        let mut lost = Vec::new();
        for (id, p) in self.peers.iter_mut() {
            if p.up && now >= p.last + md {
                p.up = false;
                lost.push(id.clone());
            }
        }
        for id in lost {
            self.events.push_back(Event::PeerDown(id));
        }
        if self.role == Role::Manager {
            if let Err(why) = self.eligible() {
                self.step_down(Role::Follower, why);
            } else if self.s.switch_back == SwitchBack::Auto
                && self.best(now, true).is_some_and(|b| b != self.s.node_id)
            {
                self.step_down(Role::Follower, "handing back to a higher-ranked node");
            }
        }
        if self.role != Role::Manager {
            let next = if let Some((_, t)) = self.live_manager() {
                self.last_manager = Some(t);
                Role::Follower
            } else if now < self.grace_end() && !self.forced {
                Role::Starting
            } else if !self.forced && (self.heard.len() + 1) * 2 <= self.s.peer_count + 1 {
                Role::Waiting
            } else if !self.forced
                && self.seen.node != self.s.node_id
                && self.seen_at.is_some_and(|t| now < t + md)
            {
                // A higher term was just reported: give its manager time to be heard.
                Role::Follower
            } else if self.eligible().is_ok()
                && self.best(now, false).as_deref() == Some(self.s.node_id.as_str())
                && self
                    .peers
                    .values()
                    .all(|p| !p.up || p.advert.version <= self.version)
            {
                let reason = if self.forced {
                    "forced by operator"
                } else {
                    "elected"
                };
                self.claim(reason);
                Role::Manager
            } else {
                Role::Follower
            };
            if next != self.role && next != Role::Manager {
                self.events.push_back(Event::RoleChanged {
                    from: self.role,
                    to: next,
                    term: None,
                    reason: "election",
                });
                self.role = next;
            }
        }
        if self.role == Role::Manager {
            self.update_placement(now);
        }
        if self.unreplicated_cleared() {
            self.unreplicated = false;
        }
        self.update_run();
        if self.advert_now {
            self.advert_now = false;
            self.next_advert = now + self.s.advert_interval;
            let advert = self.advert();
            self.out.push_back(Output::Transmit {
                to: Dest::All,
                msg: Message::Advert(advert),
            });
        }
    }

    fn unreplicated_cleared(&self) -> bool {
        self.unreplicated
            && self.peers.len() >= self.s.peer_count
            && self
                .peers
                .values()
                .all(|p| p.up && p.advert.version >= self.version)
    }

    fn advert(&self) -> Advert {
        let manager = if self.role == Role::Manager {
            self.my_term.clone()
        } else {
            None
        };
        Advert {
            node: self.s.node_id.clone(),
            score: self.s.score,
            roles: self.s.roles,
            seen: self.seen.clone(),
            placement: manager.as_ref().and(self.placement.clone()),
            manager,
            version: self.version,
            digest: self.digest,
            failed: self.failed_here.clone(),
        }
    }

    /// Become manager with a term above every term seen; persisted before any command.
    fn claim(&mut self, reason: &'static str) {
        let term = Term {
            n: self.next_n(),
            node: self.s.node_id.clone(),
        };
        // The epoch is on disk before the node acts: already reserved, or written now.
        let barrier = term.n > self.durable_reserved;
        self.seen = term.clone();
        self.my_term = Some(term.clone());
        self.persist(barrier);
        let from = self.role;
        self.role = Role::Manager;
        self.stats.elections_won += 1;
        self.events.push_back(Event::RoleChanged {
            from,
            to: Role::Manager,
            term: Some(term.clone()),
            reason,
        });
        if let Some(prev) = self.last_manager.take() {
            if prev.node != self.s.node_id && !self.node_up(&prev.node) {
                self.takeover(TakeoverKind::Manager, prev.node);
            }
        }
        // The command inherits the last accepted placement (lost/triggered homes).
        let mut p = self.placement.take().unwrap_or_default();
        p.term = term;
        self.placement = Some(p);
        self.forced = false;
        self.advert_now = true;
    }

    fn step_down(&mut self, to: Role, reason: &'static str) {
        let term = self.my_term.take();
        self.last_manager = term.clone();
        self.events.push_back(Event::RoleChanged {
            from: self.role,
            to,
            term,
            reason,
        });
        self.role = to;
        self.advert_now = true;
    }

    fn takeover(&mut self, kind: TakeoverKind, node: NodeId) {
        *self.stats.takeovers.entry(kind.as_str()).or_default() += 1;
        self.events.push_back(Event::Takeover { kind, node });
    }

    /// Manager: recompute where every channel runs.
    fn update_placement(&mut self, now: Instant) {
        let md = self.master_down();
        let Some(old) = self.placement.clone() else {
            return;
        };
        let mut p = old.clone();
        let homes: BTreeSet<NodeId> = self
            .show
            .channels
            .values()
            .map(|c| c.home.clone())
            .collect();
        for h in &homes {
            if !self.runs(h, true) {
                p.lost.insert(h.clone());
            }
        }
        p.lost.retain(|h| homes.contains(h));
        p.triggered.retain(|h| homes.contains(h));
        p.failed.retain(|c| self.show.channels.contains_key(c));
        let mut engine_failed = Vec::new();
        for (name, c) in &self.show.channels {
            let reported = if c.home == self.s.node_id {
                self.failed_here.contains(name)
            } else {
                self.peers
                    .get(&c.home)
                    .is_some_and(|x| x.up && x.advert.failed.contains(name))
            };
            if reported && p.failed.insert(name.clone()) {
                engine_failed.push(c.home.clone());
            }
        }
        let mut returned = Vec::new();
        if self.s.switch_back == SwitchBack::Auto {
            let settled = |h: &NodeId| {
                *h == self.s.node_id
                    || self
                        .peers
                        .get(h)
                        .is_some_and(|x| x.up && now >= x.since + md)
            };
            for h in p.lost.iter().filter(|h| settled(h)) {
                returned.push(h.clone());
            }
            p.lost.retain(|h| !settled(h));
        }
        p.channels.clear();
        for (name, c) in &self.show.channels {
            let backup = c.backup.as_ref().filter(|b| self.runs(b, false));
            let moved = p.lost.contains(&c.home)
                || p.triggered.contains(&c.home)
                || p.failed.contains(name);
            let slot = if moved || !self.runs(&c.home, true) {
                Slot {
                    active: backup.cloned(),
                    standby: None,
                }
            } else {
                Slot {
                    active: Some(c.home.clone()),
                    standby: backup.filter(|_| c.hot_standby).cloned(),
                }
            };
            p.channels.insert(name.clone(), slot);
        }
        if p != old {
            let newly_lost: Vec<NodeId> = p.lost.difference(&old.lost).cloned().collect();
            for h in newly_lost.into_iter().chain(engine_failed) {
                self.takeover(TakeoverKind::Client, h);
            }
            for h in returned {
                self.takeover(TakeoverKind::TakeBack, h);
            }
            self.placement = Some(p);
            self.advert_now = true;
        }
    }

    fn update_run(&mut self) {
        let me = &self.s.node_id;
        let mut run = BTreeMap::new();
        if let Some(p) = &self.placement {
            for (name, slot) in &p.channels {
                if slot.active.as_ref() == Some(me) {
                    run.insert(name.clone(), RunMode::Active);
                } else if slot.standby.as_ref() == Some(me) {
                    run.insert(name.clone(), RunMode::Standby);
                }
            }
        }
        if run != self.run {
            self.run = run.clone();
            self.events.push_back(Event::Run(run));
        }
    }

    // ---- operator actions -------------------------------------------------------------

    /// Change this node's election score (0 = never manager); re-runs the election.
    pub fn set_score(&mut self, now: Instant, score: u8) {
        self.s.score = score;
        self.advert_now = true;
        self.evaluate(now);
    }

    /// Claim the manager role without waiting for the grace period or for peers.
    pub fn force(&mut self, now: Instant) -> Result<(), ControlError> {
        self.eligible().map_err(ControlError::Ineligible)?;
        self.forced = true;
        self.evaluate(now);
        Ok(())
    }

    /// Take the manager role now (operator "take control"), deposing the current manager;
    /// refused when a live peer holds a newer configuration.
    pub fn take_control(&mut self, now: Instant) -> Result<Term, ControlError> {
        self.eligible().map_err(ControlError::Ineligible)?;
        if let Some((id, p)) = self
            .peers
            .iter()
            .find(|(_, p)| p.up && p.advert.version > self.version)
        {
            return Err(ControlError::OlderConfiguration {
                mine: self.version,
                peer: id.clone(),
                theirs: p.advert.version,
            });
        }
        if self.role != Role::Manager {
            if let Some(p) = &self.placement {
                self.last_manager = Some(p.term.clone());
            }
            self.claim("operator took control");
            self.last_manager = None;
            self.takeover(TakeoverKind::TakeControl, self.s.node_id.clone());
        }
        self.evaluate(now);
        Ok(self.my_term.clone().unwrap_or_default())
    }

    fn require_manager(&self) -> Result<(), ControlError> {
        if self.role == Role::Manager {
            Ok(())
        } else {
            Err(ControlError::NotManager {
                manager: self.manager().map(|t| t.node),
            })
        }
    }

    fn require_home(&self, node: &str) -> Result<(), ControlError> {
        if self.show.channels.values().any(|c| c.home == node) {
            Ok(())
        } else {
            Err(ControlError::UnknownNode(node.to_owned()))
        }
    }

    /// Manager: move `node`'s channels to their backups (operator "trigger backup").
    pub fn trigger_backup(&mut self, now: Instant, node: &str) -> Result<(), ControlError> {
        self.require_manager()?;
        self.require_home(node)?;
        if let Some(p) = &mut self.placement {
            if p.triggered.insert(node.to_owned()) {
                self.takeover(TakeoverKind::Triggered, node.to_owned());
            }
        }
        self.evaluate(now);
        Ok(())
    }

    /// Manager: return `node`'s channels to it (operator "take back").
    pub fn take_back(&mut self, now: Instant, node: &str) -> Result<(), ControlError> {
        self.require_manager()?;
        self.require_home(node)?;
        if let Some(p) = &mut self.placement {
            let a = p.triggered.remove(node);
            let b = p.lost.remove(node);
            let before = p.failed.len();
            let show = &self.show;
            p.failed
                .retain(|c| show.channels.get(c).is_none_or(|x| x.home != node));
            if a || b || p.failed.len() != before {
                self.takeover(TakeoverKind::TakeBack, node.to_owned());
            }
        }
        self.evaluate(now);
        Ok(())
    }

    /// Manager: change the show. Refused while a peer is unreachable or a copy diverges,
    /// unless `force` (the change is then flagged unreplicated until every member has it).
    pub fn change_show(
        &mut self,
        now: Instant,
        change: &ShowChange,
        force: bool,
    ) -> Result<Version, ControlError> {
        self.require_manager()?;
        let up = self.peers_up();
        if !force && up < self.s.peer_count {
            return Err(ControlError::PeersUnreachable {
                up,
                expected: self.s.peer_count,
            });
        }
        if !force && !self.divergent.is_empty() {
            return Err(ControlError::Divergent(
                self.divergent.iter().cloned().collect(),
            ));
        }
        let mut show = self.show.clone();
        change.apply(&mut show).map_err(ControlError::Show)?;
        let version = self.next_version();
        let digest = show.digest();
        let me = self.s.node_id.clone();
        self.adopt(version, show, digest, me);
        self.unreplicated = up < self.s.peer_count;
        self.send_show_to_all(now);
        self.evaluate(now);
        Ok(version)
    }

    fn next_version(&self) -> Version {
        Version {
            epoch: self
                .seen
                .n
                .max(self.version.epoch)
                .max(self.my_term.as_ref().map_or(0, |t| t.n)),
            version: self.version.version + 1,
        }
    }

    fn send_show_to_all(&mut self, now: Instant) {
        let ids: Vec<NodeId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.up)
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            if let Some(p) = self.peers.get_mut(&id) {
                p.show_sent = None;
            }
            self.send_show(now, &id);
        }
    }

    /// Resolve a divergence in favour of this node's copy: give it a version above every
    /// copy, so that it replaces the others everywhere.
    pub fn keep_local(&mut self, now: Instant) -> Version {
        let version = self.next_version();
        let me = self.s.node_id.clone();
        let (show, digest) = (self.show.clone(), self.digest);
        self.adopt(version, show, digest, me);
        self.send_show_to_all(now);
        self.evaluate(now);
        version
    }

    /// The glue found these placed channels' engines stopped here: the manager moves them to
    /// their backups (until taken back).
    pub fn set_failed(&mut self, now: Instant, failed: BTreeSet<String>) {
        if failed != self.failed_here {
            self.failed_here = failed;
            self.advert_now = true;
            self.evaluate(now);
        }
    }

    /// Persisting failed: a node that cannot record its epoch must not act as manager.
    pub fn persist_failed(&mut self, now: Instant) {
        if self.role == Role::Manager {
            self.step_down(Role::Follower, "cannot persist the epoch");
            self.s.score = 0;
        }
        self.evaluate(now);
    }

    /// The node is shutting down: tell the peers.
    pub fn leave(&mut self) {
        self.out.push_back(Output::Transmit {
            to: Dest::All,
            msg: Message::Leave {
                node: self.s.node_id.clone(),
            },
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::super::show::{ShowChange, Version};
    use super::super::sim::{ADVERT, Sim, chan, id};
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    fn started(scores: &[u8]) -> Sim {
        let mut sim = Sim::new(scores);
        for i in 0..scores.len() {
            sim.start(i);
        }
        sim.run_for(SEC);
        sim
    }

    fn active(sim: &Sim, ch: &str) -> Vec<usize> {
        sim.runners(ch, RunMode::Active)
    }

    #[test]
    fn master_down_follows_vrrp_arithmetic() {
        let mut s = super::super::sim::settings(0, 2, 100);
        s.advert_interval = Duration::from_secs(1);
        let n = Node::new(
            s,
            super::super::sim::Sim::new(&[1]).now,
            Persisted::default(),
        );
        // RFC 5798: 3 × 1 s + (256 − 100) / 256 s = 3.609375 s.
        assert_eq!(n.master_down(), Duration::from_micros(3_609_375));
    }

    #[test]
    fn highest_score_is_elected_and_channels_run_at_home() {
        let sim = started(&[100, 200, 150]);
        assert_eq!(sim.managers(), vec![1]);
        for i in [0, 2] {
            assert_eq!(sim.node(i).role(), Role::Follower);
            assert_eq!(sim.node(i).manager().map(|t| t.node), Some(id(1)));
        }
        for i in 0..3 {
            assert_eq!(active(&sim, &format!("c{i}")), vec![i]);
        }
        // c0 and c2 are hot standby on their backups (1 and 0).
        assert_eq!(sim.runners("c0", RunMode::Standby), vec![1]);
        assert_eq!(sim.runners("c2", RunMode::Standby), vec![0]);
        assert!(sim.runners("c1", RunMode::Standby).is_empty());
    }

    #[test]
    fn equal_scores_break_ties_by_node_id() {
        let sim = started(&[50, 50, 50]);
        assert_eq!(sim.managers(), vec![2]);
    }

    #[test]
    fn no_election_during_the_startup_grace() {
        let mut sim = Sim::new(&[100, 200]);
        sim.start(0);
        sim.start(1);
        let md = sim.node(1).master_down();
        sim.run_for(md - Duration::from_millis(5));
        assert!(sim.managers().is_empty());
        assert_eq!(sim.node(1).role(), Role::Starting);
        sim.run_for(Duration::from_millis(10));
        assert_eq!(sim.managers(), vec![1]);
    }

    #[test]
    fn a_lone_node_waits_for_its_peer_or_a_force() {
        let mut sim = Sim::new(&[100, 200]);
        sim.start(0);
        sim.run_for(5 * SEC);
        assert_eq!(sim.node(0).role(), Role::Waiting);
        assert!(sim.node(0).run_set().is_empty());
        sim.act(0, |n, now| n.force(now)).unwrap().unwrap();
        assert_eq!(sim.managers(), vec![0]);
        // Its own channel runs; the absent peer's channel is on its backup (node 0).
        sim.run_for(SEC);
        assert_eq!(active(&sim, "c0"), vec![0]);
        assert_eq!(active(&sim, "c1"), vec![0]);
    }

    #[test]
    fn two_of_three_is_a_majority() {
        let mut sim = Sim::new(&[100, 200, 150]);
        sim.start(0);
        sim.start(2);
        sim.run_for(SEC);
        assert_eq!(sim.managers(), vec![2]);
    }

    #[test]
    fn score_zero_is_never_manager() {
        let mut sim = started(&[0, 0]);
        assert!(sim.managers().is_empty());
        let r = sim.act(0, |n, now| n.force(now)).unwrap();
        assert!(matches!(r, Err(ControlError::Ineligible(_))));
        // A manager whose score drops to 0 steps down and the next one takes over.
        let mut sim = started(&[100, 200]);
        sim.act(1, |n, now| n.set_score(now, 0));
        sim.run_for(SEC);
        assert_eq!(sim.managers(), vec![0]);
    }

    #[test]
    fn killed_manager_is_replaced_within_master_down_with_a_higher_epoch() {
        let mut sim = started(&[100, 200, 150]);
        let old = sim.node(1).term().cloned().unwrap();
        let t0 = sim.now;
        sim.stop(1);
        let md = sim.node(2).master_down();
        let mut guard = 0;
        while sim.managers().is_empty() {
            assert!(sim.step(t0 + SEC));
            guard += 1;
            assert!(guard < 10_000);
        }
        let took = sim.now - t0;
        assert_eq!(sim.managers(), vec![2], "the next score wins");
        assert!(took <= md + ADVERT, "took {took:?}, master-down {md:?}");
        let new = sim.node(2).term().cloned().unwrap();
        assert!(new.n > old.n);
        assert_eq!(sim.node(2).stats.takeovers.get("manager"), Some(&1));
        // The lost manager's channel resumes on its backup (node 2); the others stay put.
        sim.run_for(SEC);
        assert_eq!(active(&sim, "c1"), vec![2]);
        assert_eq!(active(&sim, "c0"), vec![0]);
        assert_eq!(active(&sim, "c2"), vec![2]);
    }

    #[test]
    fn killed_client_channels_move_to_backup_and_hot_standby_only_unmutes() {
        let mut sim = started(&[100, 200, 150]);
        assert_eq!(sim.runners("c0", RunMode::Standby), vec![1]);
        sim.stop(0);
        sim.run_for(SEC);
        assert_eq!(active(&sim, "c0"), vec![1], "standby became active");
        assert_eq!(sim.node(1).stats.takeovers.get("client"), Some(&1));
        // Auto switch back: the client returns and gets its channel back after the grace.
        sim.start(0);
        sim.run_for(SEC);
        assert_eq!(active(&sim, "c0"), vec![0]);
        assert_eq!(sim.runners("c0", RunMode::Standby), vec![1]);
    }

    #[test]
    fn deposed_manager_steps_down_on_the_first_higher_epoch() {
        let mut sim = started(&[100, 200, 150]);
        let old = sim.node(1).term().cloned().unwrap();
        sim.set_link(1, 0, false);
        sim.set_link(1, 2, false);
        sim.run_for(SEC);
        // Both sides have a manager (no quorum with a partition), with distinct epochs.
        assert_eq!(sim.managers(), vec![1, 2]);
        let new = sim.node(2).term().cloned().unwrap();
        assert!(new > old);
        sim.heal();
        // One advert from the new side is enough.
        sim.run_for(ADVERT * 2);
        assert_eq!(sim.managers(), vec![2]);
        assert_eq!(sim.node(1).seen(), &new);
        // auto switch back: n1 (score 200) gets the role back after its grace, with a
        // new epoch above both.
        sim.run_for(SEC);
        assert_eq!(sim.managers(), vec![1]);
        assert!(sim.node(1).term().unwrap() > &new);
    }

    #[test]
    fn stale_commands_are_rejected_and_counted() {
        let mut sim = started(&[100, 200]);
        let stale = Advert {
            node: id(1),
            score: 200,
            roles: Roles::ALL,
            seen: Term::default(),
            manager: Some(Term { n: 0, node: id(1) }),
            version: Version::default(),
            digest: sim.node(0).digest(),
            placement: Some(Placement::default()),
            failed: BTreeSet::new(),
        };
        let before = sim.node(0).placement().cloned();
        sim.act(0, |n, now| n.handle_message(now, Message::Advert(stale)));
        assert_eq!(sim.node(0).stats.stale_commands, 1);
        assert_eq!(sim.node(0).placement().cloned(), before);
    }

    #[test]
    fn manual_switch_back_keeps_the_backup_until_taken_back() {
        let mut sim = Sim::new(&[100, 200]);
        for n in &mut sim.nodes {
            n.settings.switch_back = SwitchBack::Manual;
        }
        sim.start(0);
        sim.start(1);
        sim.run_for(SEC);
        assert_eq!(sim.managers(), vec![1]);
        sim.stop(1);
        sim.run_for(SEC);
        assert_eq!(sim.managers(), vec![0]);
        assert_eq!(active(&sim, "c1"), vec![0]);
        sim.start(1);
        sim.run_for(2 * SEC);
        assert_eq!(
            sim.managers(),
            vec![0],
            "manual: the returning node follows"
        );
        assert_eq!(
            active(&sim, "c1"),
            vec![0],
            "manual: channels stay on the backup"
        );
        sim.act(0, |n, now| n.take_back(now, "n1"))
            .unwrap()
            .unwrap();
        sim.run_for(SEC);
        assert_eq!(active(&sim, "c1"), vec![1]);
        let t = sim.act(1, |n, now| n.take_control(now)).unwrap().unwrap();
        sim.run_for(SEC);
        assert_eq!(sim.managers(), vec![1]);
        assert_eq!(sim.node(0).seen(), &t);
    }

    #[test]
    fn a_stopped_engine_moves_its_channel_to_the_backup_until_taken_back() {
        let mut sim = started(&[100, 200, 150]);
        let failed: BTreeSet<String> = ["c0".to_owned()].into();
        sim.act(0, |n, now| n.set_failed(now, failed));
        sim.run_for(SEC);
        assert_eq!(active(&sim, "c0"), vec![1]);
        assert_eq!(sim.node(1).stats.takeovers.get("client"), Some(&1));
        // The glue stops the dead channel and clears the report: the channel stays moved.
        sim.act(0, |n, now| n.set_failed(now, BTreeSet::new()));
        sim.run_for(2 * SEC);
        assert_eq!(active(&sim, "c0"), vec![1]);
        sim.act(1, |n, now| n.take_back(now, "n0"))
            .unwrap()
            .unwrap();
        sim.run_for(SEC);
        assert_eq!(active(&sim, "c0"), vec![0]);
    }

    #[test]
    fn trigger_backup_and_take_back() {
        let mut sim = started(&[100, 200, 150]);
        sim.act(1, |n, now| n.trigger_backup(now, "n0"))
            .unwrap()
            .unwrap();
        sim.run_for(SEC);
        assert_eq!(active(&sim, "c0"), vec![1]);
        // Auto switch back does not undo an operator's trigger.
        sim.run_for(SEC);
        assert_eq!(active(&sim, "c0"), vec![1]);
        let r = sim.act(0, |n, now| n.trigger_backup(now, "n2")).unwrap();
        assert!(matches!(r, Err(ControlError::NotManager { .. })));
        sim.act(1, |n, now| n.take_back(now, "n0"))
            .unwrap()
            .unwrap();
        sim.run_for(SEC);
        assert_eq!(active(&sim, "c0"), vec![0]);
    }

    #[test]
    fn changes_replicate_and_are_refused_while_a_peer_is_unreachable() {
        let mut sim = started(&[100, 200, 150]);
        let v = sim.change(7, false).unwrap();
        sim.run_for(SEC);
        for i in 0..3 {
            assert_eq!(sim.node(i).version(), v);
            assert_eq!(sim.node(i).digest(), sim.node(1).digest());
        }
        sim.stop(0);
        sim.run_for(SEC);
        let put = ShowChange::Put {
            name: "late".into(),
            channel: chan(1, 2, false),
        };
        let r = sim
            .act(1, |n, now| n.change_show(now, &put, false))
            .unwrap();
        assert_eq!(
            r,
            Err(ControlError::PeersUnreachable { up: 1, expected: 2 })
        );
        let v2 = sim
            .act(1, |n, now| n.change_show(now, &put, true))
            .unwrap()
            .unwrap();
        assert!(v2 > v);
        assert!(sim.node(1).unreplicated());
        sim.start(0);
        sim.run_for(SEC);
        assert_eq!(sim.node(0).version(), v2);
        assert!(!sim.node(1).unreplicated());
    }

    /// Hog 4 multi-server hazard: a server with an older copy launched first must not
    /// overwrite the newer copy.
    #[test]
    fn hog4_start_order_never_loses_the_newest_configuration() {
        // The older copy will be on node 0, which has the higher score: freshness ranks
        // first.
        let mut sim = started(&[250, 100]);
        assert_eq!(sim.managers(), vec![0]);
        sim.stop(0);
        sim.run_for(SEC);
        assert_eq!(sim.managers(), vec![1]);
        let put = ShowChange::Put {
            name: "new".into(),
            channel: chan(1, 0, true),
        };
        let newest = sim
            .act(1, |n, now| n.change_show(now, &put, true))
            .unwrap()
            .unwrap();
        sim.stop(1);
        // All servers are off; the one with the older copy starts first.
        sim.start(0);
        sim.run_for(5 * SEC);
        assert!(sim.managers().is_empty(), "the older copy must wait");
        assert!(sim.node(0).version() < newest);
        sim.start(1);
        // Node 0 first receives the newer copy; only then does its score make it manager.
        let t = sim.now;
        while sim.managers().is_empty() {
            assert!(sim.step(t + SEC));
        }
        assert_eq!(sim.managers(), vec![0]);
        assert_eq!(
            sim.node(0).version(),
            newest,
            "elected with the newest copy"
        );
        sim.run_for(SEC);
        assert_eq!(sim.node(0).show(), sim.node(1).show());
        assert_eq!(sim.node(1).version(), newest);

        // Same with three servers: the two older ones elect each other, the newest still
        // wins when it returns.
        let mut sim = started(&[100, 250, 200]);
        sim.stop(0);
        sim.stop(2);
        sim.run_for(SEC);
        let newest = sim
            .act(1, |n, now| n.change_show(now, &put, true))
            .unwrap()
            .unwrap();
        sim.stop(1);
        sim.start(0);
        sim.start(2);
        sim.run_for(2 * SEC);
        assert_eq!(sim.managers(), vec![2]);
        sim.start(1);
        sim.run_for(2 * SEC);
        for i in 0..3 {
            assert_eq!(sim.node(i).version(), newest, "n{i}");
        }
        assert_eq!(sim.managers(), vec![1]);
    }

    #[test]
    fn divergence_is_an_alarm_and_the_operator_chooses() {
        let mut sim = Sim::new(&[100, 200]);
        sim.nodes[0].disk.show.channels.remove("c0");
        sim.start(0);
        sim.start(1);
        sim.run_for(SEC);
        assert!(sim.node(0).divergent().contains("n1"));
        assert!(sim.node(1).divergent().contains("n0"));
        let put = ShowChange::Remove { name: "c1".into() };
        let r = sim
            .act(1, |n, now| n.change_show(now, &put, false))
            .unwrap();
        assert!(matches!(r, Err(ControlError::Divergent(_))));
        // The operator keeps node 0's copy.
        let v = sim.act(0, |n, now| n.keep_local(now)).unwrap();
        sim.run_for(SEC);
        assert_eq!(sim.node(1).version(), v);
        assert!(!sim.node(1).show().channels.contains_key("c0"));
        assert!(sim.node(0).divergent().is_empty());
        assert!(sim.node(1).divergent().is_empty());
    }

    #[test]
    fn a_restarted_node_rejoins_as_follower_and_never_reuses_an_epoch() {
        let mut sim = started(&[100, 200]);
        let t1 = sim.node(1).term().cloned().unwrap();
        sim.stop(1);
        sim.run_for(SEC);
        sim.stop(0);
        sim.start(1);
        sim.act(1, |n, now| n.force(now)).unwrap().unwrap();
        let t2 = sim.node(1).term().cloned().unwrap();
        let t0 = sim.nodes[0].disk.seen.clone();
        assert!(t2 > t1, "{t2} must be above {t1}");
        // Node 0 claimed 2 while node 1 was down, unknown to node 1; node 1 never claims a
        // number it had reserved (2) again after a restart, and ids keep terms apart anyway.
        assert_eq!(t0.n, 2);
        assert_eq!(t2.n, 3);
        assert_ne!(t0, t2);
        sim.start(0);
        sim.run_for(SEC);
        assert_eq!(sim.node(0).role(), Role::Follower);
        assert_eq!(sim.node(0).seen(), &t2);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Start(usize),
        Stop(usize),
        Cut(usize, usize),
        Heal,
        Score(usize, u8),
        Change(u64, bool),
        Force(usize),
        TakeControl(usize),
        Wait(u64),
    }

    fn op(n: usize) -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0..n).prop_map(Op::Start),
            2 => (0..n).prop_map(Op::Stop),
            2 => (0..n, 0..n).prop_map(|(a, b)| Op::Cut(a, b)),
            1 => Just(Op::Heal),
            1 => (0..n, prop_oneof![Just(0u8), 1u8..=255]).prop_map(|(i, s)| Op::Score(i, s)),
            2 => (any::<u64>(), any::<bool>()).prop_map(|(t, f)| Op::Change(t, f)),
            1 => (0..n).prop_map(Op::Force),
            1 => (0..n).prop_map(Op::TakeControl),
            4 => (1u64..400).prop_map(Op::Wait),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        /// Random starts, kills, partitions, score changes, configuration changes and
        /// operator actions. At every step: never two managers with the same epoch, no epoch
        /// claimed twice, no accepted command below the epoch already seen, no persisted
        /// version going backwards, no claim with an older configuration than a settled,
        /// reachable eligible peer. After healing everything: one manager, the newest
        /// configuration everywhere, every channel output by exactly one node.
        #[test]
        fn election_fencing_and_replication_invariants(
            scores in proptest::collection::vec(0u8..=255, 2..=4),
            ops in proptest::collection::vec(op(4), 1..40),
        ) {
            let n = scores.len();
            let mut scores = scores;
            scores[0] = scores[0].max(1); // at least one eligible node
            let mut sim = Sim::new(&scores);
            for i in 0..n {
                sim.start(i);
            }
            for o in ops {
                match o {
                    Op::Start(i) if i < n => sim.start(i),
                    Op::Stop(i) if i < n => sim.stop(i),
                    Op::Cut(a, b) if a < n && b < n => sim.set_link(a, b, false),
                    Op::Heal => sim.heal(),
                    Op::Score(i, s) if i < n => {
                        sim.nodes[i].settings.score = s;
                        sim.act(i, |node, now| node.set_score(now, s));
                    }
                    Op::Change(tag, force) => {
                        sim.change(tag, force);
                    }
                    Op::Force(i) if i < n => {
                        let _ = sim.act(i, |node, now| node.force(now));
                    }
                    Op::TakeControl(i) if i < n => {
                        let _ = sim.act(i, |node, now| node.take_control(now));
                    }
                    Op::Wait(ms) => sim.run_for(Duration::from_millis(ms)),
                    _ => {}
                }
                sim.run_for(Duration::from_millis(5));
            }
            sim.heal();
            sim.nodes[0].settings.score = sim.nodes[0].settings.score.max(1);
            for i in 0..n {
                sim.start(i);
            }
            let s0 = sim.nodes[0].settings.score;
            sim.act(0, |node, now| node.set_score(now, s0));
            sim.run_for(5 * SEC);
            // Forced changes on both sides of a partition can diverge: the operator keeps
            // the manager's copy.
            if let Some(&m) = sim.managers().first() {
                if (0..n).any(|i| !sim.node(i).divergent().is_empty()) {
                    sim.act(m, |node, now| node.keep_local(now));
                    sim.run_for(5 * SEC);
                }
            }
            let managers = sim.managers();
            prop_assert_eq!(managers.len(), 1, "managers: {:?}", managers);
            let m = managers[0];
            for i in 0..n {
                prop_assert_eq!(sim.node(i).version(), sim.max_version, "n{} version", i);
                prop_assert_eq!(sim.node(i).digest(), sim.node(m).digest());
                prop_assert_eq!(sim.node(i).manager().map(|t| t.node), Some(id(m)));
            }
            for ch in sim.node(m).show().channels.keys() {
                prop_assert_eq!(sim.runners(ch, RunMode::Active).len(), 1, "channel {}", ch);
            }
        }
    }
}
