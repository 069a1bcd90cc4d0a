//! Virtual-time network of control nodes (tests only), after quinn's `Pair`: nodes start and
//! stop (keeping what they persisted), links go down and up, messages take a fixed delay,
//! and [`Sim::step`] jumps to the next delivery or timeout. [`Sim::check`] asserts the
//! invariants after every step.
#![allow(clippy::disallowed_methods)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use super::machine::{
    Dest, Message, Node, Output, Persisted, Role, RunMode, Settings, SwitchBack, Term,
};
use super::show::{Show, ShowChange, ShowChannel, Version};

pub(crate) const ADVERT: Duration = Duration::from_millis(20);

pub(crate) fn settings(i: usize, n: usize, score: u8) -> Settings {
    Settings {
        node_id: id(i),
        score,
        roles: super::machine::Roles::ALL,
        advert_interval: ADVERT,
        switch_back: SwitchBack::Auto,
        peer_count: n - 1,
    }
}

pub(crate) fn id(i: usize) -> String {
    format!("n{i}")
}

/// A seed show: channel `c{i}` homed on node i, backed up by node i+1.
pub(crate) fn seed(n: usize) -> Show {
    let mut s = Show::default();
    for i in 0..n {
        s.channels
            .insert(format!("c{i}"), chan(i, (i + 1) % n, i % 2 == 0));
    }
    s
}

pub(crate) fn chan(home: usize, backup: usize, hot: bool) -> ShowChannel {
    ShowChannel {
        body: format!("[[channel]]\nname = \"c{home}\"\n"),
        home: id(home),
        backup: Some(id(backup)),
        hot_standby: hot,
    }
}

pub(crate) struct SimNode {
    pub settings: Settings,
    pub node: Option<Node>,
    pub disk: Persisted,
    /// Background writes not yet durable: applied at the next step, lost by a kill.
    pending: Vec<Persisted>,
    started: Instant,
    /// Every term this node has claimed, in order (across restarts).
    claims: Vec<Term>,
    version_changed: Instant,
}

pub(crate) struct Sim {
    pub now: Instant,
    pub nodes: Vec<SimNode>,
    link: Vec<Vec<bool>>,
    link_changed: Instant,
    queue: BTreeMap<(Instant, u64), (usize, usize, Message)>,
    seq: u64,
    pub delay: Duration,
    all_claims: BTreeSet<Term>,
    /// The highest version any node ever held.
    pub max_version: Version,
}

impl Sim {
    pub fn new(scores: &[u8]) -> Sim {
        let now = Instant::now();
        let n = scores.len();
        let show = seed(n);
        Sim {
            now,
            nodes: scores
                .iter()
                .enumerate()
                .map(|(i, &sc)| SimNode {
                    settings: settings(i, n, sc),
                    node: None,
                    pending: Vec::new(),
                    disk: Persisted {
                        show: show.clone(),
                        ..Persisted::default()
                    },
                    started: now,
                    claims: Vec::new(),
                    version_changed: now,
                })
                .collect(),
            link: vec![vec![true; n]; n],
            link_changed: now,
            queue: BTreeMap::new(),
            seq: 0,
            delay: Duration::from_millis(1),
            all_claims: BTreeSet::new(),
            max_version: Version::default(),
        }
    }

    pub fn node(&self, i: usize) -> &Node {
        self.nodes[i].node.as_ref().expect("node running")
    }

    pub fn node_mut(&mut self, i: usize) -> &mut Node {
        self.nodes[i].node.as_mut().expect("node running")
    }

    pub fn running(&self, i: usize) -> bool {
        self.nodes[i].node.is_some()
    }

    pub fn start(&mut self, i: usize) {
        if self.running(i) {
            return;
        }
        let sn = &mut self.nodes[i];
        let mut s = sn.settings.clone();
        s.score = sn.settings.score;
        let now = self.now;
        sn.node = Some(Node::new(s, now, sn.disk.clone()));
        sn.started = now;
        self.node_mut(i).handle_timeout(now);
        self.pump(i);
    }

    /// kill -9: nothing more is sent; what was persisted stays.
    pub fn stop(&mut self, i: usize) {
        self.nodes[i].node = None;
        self.nodes[i].pending.clear();
        self.queue.retain(|_, (from, to, _)| *from != i && *to != i);
    }

    pub fn set_link(&mut self, a: usize, b: usize, up: bool) {
        if a != b {
            self.link[a][b] = up;
            self.link[b][a] = up;
            self.link_changed = self.now;
        }
    }

    pub fn heal(&mut self) {
        for row in &mut self.link {
            row.iter_mut().for_each(|l| *l = true);
        }
        self.link_changed = self.now;
    }

    /// Apply a closure to a running node, then deliver its outputs.
    pub fn act<T>(&mut self, i: usize, f: impl FnOnce(&mut Node, Instant) -> T) -> Option<T> {
        let now = self.now;
        let r = f(self.nodes[i].node.as_mut()?, now);
        self.pump(i);
        self.check();
        Some(r)
    }

    /// Drain node `i`'s outputs and events into the network and its disk.
    fn pump(&mut self, i: usize) {
        let Some(node) = self.nodes[i].node.as_mut() else {
            return;
        };
        let mut sends = Vec::new();
        let mut writes = Vec::new();
        while let Some(o) = node.poll_output() {
            match o {
                Output::Persist { state, barrier } => writes.push((state, barrier)),
                Output::Transmit { to, msg } => sends.push((to, msg)),
            }
        }
        while node.poll_event().is_some() {}
        let (role, term) = (node.role(), node.term().cloned());
        // A barrier write makes every earlier write durable too (writes are in order).
        if let Some(last) = writes.iter().rposition(|(_, b)| *b) {
            let durable: Vec<Persisted> = self.nodes[i]
                .pending
                .drain(..)
                .chain(writes.drain(..=last).map(|(s, _)| s))
                .collect();
            for p in durable {
                self.write(i, p);
            }
        }
        self.nodes[i]
            .pending
            .extend(writes.into_iter().map(|(s, _)| s));
        if role == Role::Manager {
            let term = term.expect("a manager has a term");
            let disk = &self.nodes[i].disk;
            assert!(
                disk.seen >= term || disk.reserved >= term.n,
                "{}: acting as manager of {term} before its epoch is on disk",
                id(i)
            );
            if self.nodes[i].claims.last() != Some(&term) {
                assert!(
                    self.all_claims.insert(term.clone()),
                    "term {term} claimed twice"
                );
                self.check_claim(i);
                self.nodes[i].claims.push(term);
            }
        }
        for (to, msg) in sends {
            let targets: Vec<usize> = match &to {
                Dest::All => (0..self.nodes.len()).filter(|&j| j != i).collect(),
                Dest::Node(n) => n[1..].parse().ok().into_iter().collect(),
            };
            for j in targets {
                if self.link[i][j] && self.running(j) {
                    self.seq += 1;
                    self.queue
                        .insert((self.now + self.delay, self.seq), (i, j, msg.clone()));
                }
            }
        }
    }

    /// A write becomes durable: check it and tell the node.
    fn write(&mut self, i: usize, p: Persisted) {
        let sn = &mut self.nodes[i];
        assert!(
            p.version >= sn.disk.version,
            "{}: persisted version went backwards",
            id(i)
        );
        assert!(p.seen >= sn.disk.seen, "seen term went backwards");
        assert!(p.reserved >= sn.disk.reserved, "reservation went backwards");
        if p.version != sn.disk.version {
            sn.version_changed = self.now;
        }
        self.max_version = self.max_version.max(p.version);
        if let Some(n) = sn.node.as_mut() {
            n.handle_persisted(&p);
        }
        sn.disk = p;
    }

    /// Invariant: a claimant never has an older configuration than an eligible node it has
    /// been in steady contact with.
    fn check_claim(&self, i: usize) {
        let me = self.node(i);
        // In the claimant's own view: no live member advertises a newer configuration.
        for (peer, up, advert) in me.members() {
            assert!(
                !up || advert.version <= me.version(),
                "{} claimed {:?} with version {} over live {peer} advertising {}",
                id(i),
                me.term(),
                me.version(),
                advert.version
            );
        }
        // And in the simulation's ground truth, for members in steady contact.
        let settle = me.master_down() * 2;
        for (j, sn) in self.nodes.iter().enumerate() {
            let Some(other) = &sn.node else { continue };
            if j == i
                || !self.link[i][j]
                || other.score() == 0
                || self.now < self.link_changed + settle
                || self.now < sn.started + settle
                || self.now < self.nodes[i].started + settle
                || self.now < sn.version_changed + settle
            {
                continue;
            }
            assert!(
                other.version() <= me.version(),
                "{} claimed {:?} with version {} while {} (up, linked) holds {}",
                id(i),
                me.term(),
                me.version(),
                id(j),
                other.version()
            );
        }
    }

    /// Invariants that hold at every instant.
    pub fn check(&self) {
        let mut terms = BTreeSet::new();
        for sn in &self.nodes {
            let Some(n) = &sn.node else { continue };
            if n.role() == Role::Manager {
                let t = n.term().cloned().expect("manager term");
                assert!(terms.insert(t.clone()), "two managers with epoch {t}");
            }
            for (cmd, seen_before) in &n.accepted {
                assert!(
                    cmd >= seen_before,
                    "{} accepted a command of {cmd} after seeing {seen_before}",
                    n.id()
                );
            }
        }
    }

    /// Advance to the next delivery or timeout (but not past `until`); false when idle.
    pub fn step(&mut self, until: Instant) -> bool {
        let next_msg = self.queue.keys().next().map(|k| k.0);
        let next_timer = self
            .nodes
            .iter()
            .filter_map(|n| n.node.as_ref()?.poll_timeout())
            .min();
        let Some(t) = [next_msg, next_timer].into_iter().flatten().min() else {
            return false;
        };
        if t > until {
            self.now = until;
            return false;
        }
        self.now = self.now.max(t);
        for i in 0..self.nodes.len() {
            let pending: Vec<Persisted> = self.nodes[i].pending.drain(..).collect();
            for p in pending {
                self.write(i, p);
            }
        }
        while let Some(entry) = self.queue.first_entry() {
            if entry.key().0 > self.now {
                break;
            }
            let (_, (from, to, msg)) = entry.remove_entry();
            let now = self.now;
            if self.link[from][to] {
                if let Some(n) = self.nodes[to].node.as_mut() {
                    n.handle_message(now, msg);
                    self.pump(to);
                }
            }
        }
        for i in 0..self.nodes.len() {
            let now = self.now;
            if let Some(n) = self.nodes[i].node.as_mut() {
                if n.poll_timeout().is_some_and(|t| t <= now) {
                    n.handle_timeout(now);
                    self.pump(i);
                }
            }
        }
        self.check();
        true
    }

    pub fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        let mut guard = 0;
        while self.step(until) {
            guard += 1;
            assert!(guard < 1_000_000, "simulation does not settle");
        }
        self.now = until;
    }

    pub fn managers(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| {
                self.nodes[i]
                    .node
                    .as_ref()
                    .is_some_and(|n| n.role() == Role::Manager)
            })
            .collect()
    }

    /// The nodes running channel `ch` in `mode`.
    pub fn runners(&self, ch: &str, mode: RunMode) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| {
                self.nodes[i]
                    .node
                    .as_ref()
                    .is_some_and(|n| n.run_set().get(ch) == Some(&mode))
            })
            .collect()
    }

    /// Make a configuration change at a manager, if there is one.
    pub fn change(&mut self, tag: u64, force: bool) -> Option<Version> {
        let managers = self.managers();
        let m = *managers.get(tag as usize % managers.len().max(1))?;
        let n = self.nodes.len();
        let change = ShowChange::Put {
            name: format!("x{}", tag % 3),
            channel: ShowChannel {
                body: format!("# change {tag}"),
                home: id(tag as usize % n),
                backup: Some(id((tag as usize + 1) % n)),
                hot_standby: tag % 2 == 0,
            },
        };
        self.act(m, |node, now| node.change_show(now, &change, force))?
            .ok()
    }
}
