//! Held datagrams: where a leg's datagrams go that content could not place when they came
//! (new packets another leg lost, null-only datagrams, a copy further away than the jitter
//! explains, or, at the front, a datagram that seems to follow a loss while the PCR ruler
//! works). They wait for a later datagram of the same leg that content or the ruler places,
//! then go between the leg's cursor and it: by content where their packets are in that
//! interval, else where the leg's arrival times and continuity counters put them
//! (`chain_back`, `line_chain`, `cc_constraints`, `resolve_held`); or, held too long, once
//! more through placement and then by time (`flush_held`). The module docs of
//! [`content`](super) give the rules.

use super::{BUFFERED_DATAGRAMS, ContentMerger, Dgram, Kind, LOOKUPS, NO_CC, NONE, Pk};
use crate::ts::TsPacket;

impl ContentMerger {
    /// Positions of the held datagrams (all of them, or all but the last if `skip_last`)
    /// between the leg's cursor and a successor placed at `q` (arrived at `t`, `k` packets).
    /// A held datagram whose packets are in the timeline in that interval goes there
    /// (content wins). The others go between their neighbours where the leg's arrival times
    /// say, forwards; if the time gaps add up to more than the room, the largest give way
    /// first (a stall delays one datagram and bunches the next ones); room left over
    /// (another leg's positions moved) stays before the next neighbour. `None` if they do
    /// not fit or contradict the timeline; with `skip_last`, also unless one of them matches
    /// content (confirmation of a far copy). Also how many matched content.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn chain_back(
        &mut self,
        now_ns: u64,
        li: usize,
        q: u64,
        t: u64,
        k: usize,
        succ: Option<&[Pk]>,
        skip_last: bool,
    ) -> Option<(Vec<u64>, usize)> {
        let n = self.legs[li].held.len() - usize::from(skip_last);
        let cons = self.cc_constraints(li, n, succ);
        // late[j]: datagram j (the successor for n) was followed by one bunched behind it.
        let late: Vec<bool> = {
            let held = &self.legs[li].held;
            let s = self.spacing(li);
            (0..=n)
                .map(|j| {
                    let next_t = if j + 1 < n {
                        Some(held[j + 1].t)
                    } else if j + 1 == n {
                        Some(t)
                    } else {
                        None
                    };
                    j < n
                        && s > 0.0
                        && next_t.is_some_and(|nt| {
                            (nt.saturating_sub(held[j].t) as f64)
                                < 0.5 * s * held[j].pk.len() as f64
                        })
                })
                .collect()
        };
        let next = self.legs[li].next;
        let s = self.spacing(li);
        // gaps[j]: before held j (j < n); gaps[n]: before the successor.
        let mut gaps = vec![0u64; n + 1];
        if n > 0 {
            let h = &self.legs[li].held[0];
            let last_t = self.legs[li].last_t;
            gaps[0] = self.forward_gap(li, next, last_t, h.t, &h.pk).1;
        }
        for j in 1..=n {
            let held = &self.legs[li].held;
            let pt = held[j - 1].t;
            let (ct, ck) = if j < n {
                (held[j].t, held[j].pk.len())
            } else {
                (t, k)
            };
            if s > 0.0 {
                gaps[j] = self.gap_round(
                    li,
                    ct.saturating_sub(pt) as f64 / s - self.timed_len(li, ck) as f64,
                );
            }
        }
        // At the front (nothing between the cursor and the successor): the arrival line.
        if succ.is_some()
            && !skip_last
            && (next..q).all(|x| self.slot(x).is_none())
            && let Some(pos) = self.line_chain(li, n, q, &cons)
        {
            return Some((pos, 0));
        }
        // Content first.
        let mut fixed: Vec<Option<u64>> = vec![None; n];
        let mut lo = next;
        // Where time puts datagram j: after the last one found and the ones since, with
        // their gaps.
        let mut at = next;
        let mut matched = 0;
        for (j, f) in fixed.iter_mut().enumerate() {
            let pk = std::mem::take(&mut self.legs[li].held[j].pk);
            let kj = pk.len() as u64;
            let est = at + gaps[j];
            at = est + kj;
            if pk.iter().any(|p| !p.null) {
                self.candidates(now_ns, &pk, lo, false);
                // Near where time puts it, or a fingerprint seen once (not a repeat).
                let tol = self.tolerance(li);
                let cands = std::mem::take(&mut self.cands);
                *f = cands
                    .iter()
                    .filter(|c| c.1 > 0 && c.0 >= lo && c.0 + kj <= q)
                    .filter(|c| c.0.abs_diff(est) <= tol || self.unique_at(c.0, &pk) > 0)
                    .min_by_key(|c| c.0.abs_diff(est))
                    .map(|c| c.0);
                self.cands = cands;
            }
            if let Some(p) = *f {
                lo = p + kj;
                at = lo;
                matched += self.unique_at(p, &pk);
            }
            self.legs[li].held[j].pk = pk;
        }
        // The rest between their neighbours, forwards.
        let held = &self.legs[li].held;
        let mut pos = vec![0u64; n];
        let mut start = next;
        let mut j = 0;
        while j <= n {
            // The run of unplaced datagrams j..e, then the neighbour at `end`.
            let mut e = j;
            while e < n && fixed[e].is_none() {
                e += 1;
            }
            let end = if e < n { fixed[e]? } else { q };
            let sizes: u64 = held[j..e].iter().map(|h| h.pk.len() as u64).sum();
            let room = end.checked_sub(start)?.checked_sub(sizes)?;
            let saved: Vec<u64> = gaps[j..=e].to_vec();
            let mut chosen = None;
            // Three tries: times and counters; times alone; all room unexplained (the
            // layout with the most packets coinciding: the times were off).
            for attempt in 0..3 {
                let use_cons = attempt == 0;
                gaps[j..=e].copy_from_slice(&saved);
                if attempt == 2 {
                    gaps[j..=e].fill(0);
                }
                let g = &mut gaps[j..=e];
                let step = if self.legs[li].fixed > 0 {
                    self.legs[li].fixed as u64
                } else {
                    1
                };
                // The leg's continuity counters within this run (local gap indexes); if the
                // datagrams do not fit the timeline with them, once more without.
                let local: Vec<(usize, usize, u64)> = cons
                    .iter()
                    .filter(|c| use_cons && c.0 >= j && c.1 <= e)
                    .map(|c| (c.0 - j, c.1 - j, c.2))
                    .collect();
                // Packets the counters say were lost in a range of gaps that time does not
                // give: to the range's largest gap.
                for &(a, b, need) in &local {
                    let have: u64 = g[a..=b].iter().sum();
                    if need > have {
                        let i = (a..=b).rev().max_by_key(|&i| g[i]).unwrap_or(a);
                        g[i] += (need - have).div_ceil(step) * step;
                    }
                }
                // Too much: a stall delayed a datagram (its gap is too large) and bunched the
                // next ones (their gaps read zero), so where the real loss lies among them is
                // unknown by time: the largest gaps give way entirely, those the counters need
                // last; what room remains is placed like unexplained room below.
                let mut total: u64 = g.iter().sum();
                while total > room {
                    let needed = |g: &[u64], i: usize| {
                        local.iter().any(|&(a, b, need)| {
                            need > 0
                                && a <= i
                                && i <= b
                                && g[a..=b].iter().sum::<u64>() - g[i] < need
                        })
                    };
                    let pick = |pred: &dyn Fn(usize) -> bool| {
                        (0..g.len())
                            .filter(|&i| g[i] > 0 && pred(i))
                            .max_by_key(|&i| g[i])
                    };
                    // Among equal gaps, a datagram the next one came bunched behind was late.
                    let i = pick(&|i| !needed(g, i) && late[j + i])
                        .filter(|&i| (0..g.len()).all(|x| g[x] <= g[i]))
                        .or_else(|| pick(&|i| !needed(g, i)))
                        .or_else(|| pick(&|_| true))?;
                    total -= g[i];
                    g[i] = 0;
                }
                // Room the leg's times do not explain (another leg's positions moved): at the
                // one place where the datagrams then coincide with the most packets already
                // there; ties: just before the neighbour.
                let slack = room - total;
                // One split point (all the room there), or, for a few datagrams, two (the room
                // shared: two stalls on another leg); step: the leg's datagram size if fixed.
                let mut layouts: Vec<(usize, usize, u64)> =
                    (j..=e).rev().map(|s| (s, s, slack)).collect();
                if slack > 0 && e - j <= 8 && slack / step <= 16 {
                    for s1 in j..=e {
                        for s2 in s1 + 1..=e {
                            let mut a = step;
                            while a < slack {
                                layouts.push((s1, s2, a));
                                a += step;
                            }
                        }
                    }
                }
                let mut best: Option<(u32, (usize, usize, u64))> = None;
                for &(s1, s2, a) in &layouts {
                    let mut at = start;
                    let mut overlap = 0u32;
                    let mut ok = true;
                    for i in j..e {
                        let extra = if i == s1 { a } else { 0 }
                            + if i == s2 && s2 != s1 { slack - a } else { 0 };
                        let p = at + gaps[i] + extra;
                        match self.validate_overlap(p, &held[i].pk) {
                            Some(o) => overlap += o,
                            None => {
                                ok = false;
                                break;
                            }
                        }
                        at = p + held[i].pk.len() as u64;
                    }
                    if ok && best.is_none_or(|b| overlap > b.0) {
                        best = Some((overlap, (s1, s2, a)));
                    }
                    if slack == 0 {
                        break;
                    }
                }
                if let Some((_, l)) = best {
                    chosen = Some((l, slack));
                    break;
                }
            }
            let ((s1, s2, a), slack) = chosen?;
            let mut at = start;
            for i in j..e {
                let extra =
                    if i == s1 { a } else { 0 } + if i == s2 && s2 != s1 { slack - a } else { 0 };
                let p = at + gaps[i] + extra;
                pos[i] = p;
                at = p + held[i].pk.len() as u64;
            }
            if e < n {
                pos[e] = end;
                start = end + held[e].pk.len() as u64;
            }
            j = e + 1;
        }
        (!skip_last || matched > 0).then_some((pos, matched))
    }

    /// Positions of the held datagrams `0..n` of a leg at the front, between its cursor and a
    /// successor placed exactly at `q` (by its PCR): each as late as its arrival line allows
    /// (the line errs late only, so a datagram that came on time is placed exactly) and
    /// before its successor (so a late one goes right before the next on-time one). `None`
    /// if that contradicts the cursor or the leg's continuity counters (`cons`).
    pub(super) fn line_chain(
        &self,
        li: usize,
        n: usize,
        q: u64,
        cons: &[(usize, usize, u64)],
    ) -> Option<Vec<u64>> {
        let l = &self.legs[li];
        let (rt, rp) = l.line?;
        // Only with the long-baseline spacing: the line is extrapolated over many packets.
        let s = l.slope.s;
        if s <= 0.0 {
            return None;
        }
        let next = l.next;
        let mut pos = vec![0u64; n];
        let mut ub = q;
        for j in (0..n).rev() {
            let h = &l.held[j];
            let k = h.pk.len() as u64;
            let g = rp as f64 + (h.t as f64 - rt) / s
                - self.timed_len(li, h.pk.len()) as f64
                - next as f64;
            ub = ub.checked_sub(k)?.min(next + self.gap_round(li, g));
            pos[j] = ub;
        }
        let mut end = next;
        let mut gaps = vec![0u64; n + 1];
        for j in 0..n {
            gaps[j] = pos[j].checked_sub(end)?;
            end = pos[j] + l.held[j].pk.len() as u64;
        }
        gaps[n] = q.checked_sub(end)?;
        cons.iter()
            .all(|&(a, b, need)| gaps[a..=b].iter().sum::<u64>() >= need)
            .then_some(pos)
    }

    /// What the leg's continuity counters say about the gaps before its held datagrams
    /// `0..n` and the successor `succ` (gap `j` lies before datagram `j`, the successor is
    /// datagram `n`): `(a, b, lost)`, at least `lost` packets were lost in gaps `a..=b`.
    /// For each PID, its first packet with payload in a datagram against the leg's previous
    /// packet of it: in an earlier held datagram, or placed (only when the leg's own packets
    /// of other PIDs fill the positions from there to its cursor).
    pub(super) fn cc_constraints(
        &self,
        li: usize,
        n: usize,
        succ: Option<&[Pk]>,
    ) -> Vec<(usize, usize, u64)> {
        let l = &self.legs[li];
        let dg = |j: usize| -> Option<&[Pk]> { if j < n { Some(&l.held[j].pk) } else { succ } };
        let mut out = Vec::new();
        for j in 0..=n {
            let Some(pk) = dg(j) else { continue };
            for (i, p) in pk.iter().enumerate() {
                if p.null || p.cc == NO_CC || pk[..i].iter().any(|x| x.pid == p.pid) {
                    continue;
                }
                if TsPacket::try_new(&p.bytes).is_none_or(|t| t.discontinuity()) {
                    continue;
                }
                let prev = (0..j).rev().find_map(|jj| {
                    dg(jj)?
                        .iter()
                        .rev()
                        .find(|x| x.pid == p.pid && x.cc != NO_CC)
                        .map(|x| (jj, x.cc))
                });
                match prev {
                    Some((jj, c0)) => {
                        let d = u64::from(p.cc.wrapping_sub(c0).wrapping_sub(1) & 15);
                        if d > 0 {
                            out.push((jj + 1, j, d));
                        }
                    }
                    None => {
                        let e = l.last_cc[usize::from(p.pid)];
                        if e == NONE || e >> 4 >= l.next {
                            continue;
                        }
                        let (p0, c0) = (e >> 4, (e & 15) as u8);
                        // Only when the leg's own packets fill the positions since then: the
                        // lost ones all lie after its cursor.
                        if l.next - p0 > 4096
                            || (p0 + 1..l.next).any(|x| {
                                self.slot(x).is_none_or(|s| {
                                    s.legs & (1 << li) == 0
                                        || s.kind == Kind::Data && s.pid == p.pid
                                })
                            })
                        {
                            continue;
                        }
                        let d = u64::from(p.cc.wrapping_sub(c0).wrapping_sub(1) & 15);
                        if d > 0 {
                            out.push((0, j, d));
                        }
                    }
                }
            }
        }
        out
    }

    /// A datagram was placed by content at `q`: place what the leg held before it, backwards
    /// from it, or (if they do not fit) by time.
    pub(super) fn resolve_held(
        &mut self,
        now_ns: u64,
        li: usize,
        q: u64,
        t: u64,
        pk: &[Pk],
    ) -> u64 {
        let k = pk.len();
        if self.legs[li].held.is_empty() {
            return q;
        }
        let mut q = q;
        // Nulls another leg placed by time after a gap (soft) may be its copies of this leg's
        // null datagrams misplaced by a stall: they give way to this leg's data.
        self.soft_ok = Some(li);
        let mut chain = self.chain_back(now_ns, li, q, t, k, Some(pk), false);
        if chain.is_none() {
            // They came before it on a FIFO leg: if the positions before it are too few (a
            // time estimate on another leg was short), make room right before it.
            let sizes: u64 = self.legs[li].held.iter().map(|h| h.pk.len() as u64).sum();
            let room = q.saturating_sub(self.legs[li].next);
            if room < sizes && q >= self.legs[li].next.max(self.out) {
                self.stats.conflicts += 1;
                self.insert(q, sizes - room);
                q += sizes - room;
                chain = self.chain_back(now_ns, li, q, t, k, Some(pk), false);
            }
        }
        match chain {
            Some((pos, _)) => {
                let held = std::mem::take(&mut self.legs[li].held);
                let start = self.legs[li].next;
                let mut prev = start;
                let mut lost = false;
                for (h, p) in held.iter().zip(&pos) {
                    if *p > prev {
                        self.stats.time_placed += 1;
                        lost = true;
                    }
                    prev = p + h.pk.len() as u64;
                }
                // This leg's times say it lost nothing from its cursor to `q`: soft nulls
                // another leg alone put in that interval, where this leg has none, are its
                // own null datagrams misplaced by that leg's time estimate (a stall): drop
                // them (counted), this leg's copies go where its times say.
                let tail = self.gap_round(
                    li,
                    t.saturating_sub(held.last().map_or(t, |h| h.t)) as f64
                        / self.spacing(li).max(1.0)
                        - k as f64,
                );
                if !lost && tail == 0 && held.iter().any(|h| h.pk.iter().all(|p| p.null)) {
                    for p in start.max(self.out)..q {
                        let covered = held
                            .iter()
                            .zip(&pos)
                            .any(|(h, &hp)| p >= hp && p < hp + h.pk.len() as u64);
                        let i = (p & self.mask) as usize;
                        if !covered
                            && let Some(s) = self.slot(p)
                            && s.soft
                            && s.creator as usize != li
                            && s.legs == 1 << s.creator
                        {
                            let c = s.creator as usize;
                            self.stats.legs[c].dropped += 1;
                            self.stats.conflicts += 1;
                            let s = &mut self.slots[i];
                            s.kind = Kind::Empty;
                            s.pkt = None;
                            s.pos = NONE;
                        }
                    }
                }
                // Null datagrams placed among room (a loss somewhere between the cursor and
                // `q`) are where time put them, nothing proves which side of the room they
                // lie on: soft.
                let mut end = start;
                let room = held.iter().zip(&pos).any(|(h, &p)| {
                    let gap = p > end;
                    end = p + h.pk.len() as u64;
                    gap
                }) || q > end;
                for (h, &p) in held.iter().zip(&pos) {
                    self.soft_put = room && h.pk.iter().all(|x| x.null);
                    self.put(now_ns, li, h.t, p, &h.pk);
                }
                self.soft_put = false;
                self.soft_ok = None;
            }
            None => {
                self.soft_ok = None;
                self.flush_held(now_ns, li);
            }
        }
        q
    }

    /// Place the held datagrams by time. False if the leg was unanchored meanwhile.
    pub(super) fn flush_held(&mut self, now_ns: u64, li: usize) -> bool {
        // A held datagram whose content is only behind the cursor means the leg went back
        // (restart, replay): on a FIFO leg the datagrams held before it are part of the
        // replay too. Placed by time one by one, null-only ones among them would be inserted
        // as new positions before `place_by_time` sees the content that reveals the restart
        // (extra nulls in the output). Unanchor first: `unanchor` re-buffers them all.
        // Three such packets, as for a far copy: one packet "seen once" may be a still
        // picture's repeat whose other instance this leg's window has not seen.
        // A packet whose counter continues the leg's own (from its previous packet of that
        // PID, held or placed) is a still picture's repeat rather than a replay: a replay
        // continues it only by chance (1 in 16 per PID), and its content then shows the
        // restart when it is placed.
        if self.other_live_anchored(li) && self.held_behind(li) >= 3 {
            self.unanchor(li);
            return false;
        }
        // Once more through `place` (another leg may have delivered them meanwhile: one found
        // by content bounds those before it), then what is still held by time.
        // (Not again from within that pass: a bound whose held datagrams do not fit flushes
        // them by time.)
        let (nested, no_hold) = (self.flushing, self.no_hold);
        self.flushing = true;
        for pass in usize::from(nested)..2 {
            let held = std::mem::take(&mut self.legs[li].held);
            self.no_hold = pass == 1;
            for h in held {
                if !self.legs[li].anchored || !self.place(now_ns, li, h.t, &h.pk) {
                    self.rebuffer(li, h.t, h.pk);
                }
            }
        }
        self.no_hold = no_hold;
        self.flushing = nested;
        self.legs[li].anchored
    }

    pub(super) fn rebuffer(&mut self, li: usize, t: u64, pk: Vec<Pk>) {
        let l = &mut self.legs[li];
        let seq = l.seq;
        l.seq += 1;
        if l.buf.len() < BUFFERED_DATAGRAMS {
            l.buf.push_back(Dgram { seq, t, pk });
        } else {
            self.stats.legs[li].dropped += pk.len() as u64;
        }
    }

    /// Packets of leg `li`'s held datagrams found only behind its cursor ([`Self::behind_count`]),
    /// except those of a PID whose first such packet continues the leg's previous packet of
    /// that PID (held or placed) by its continuity counter, skipping no more packets than the
    /// leg's times say it lost.
    pub(super) fn held_behind(&self, li: usize) -> usize {
        let l = &self.legs[li];
        // PIDs decided so far: (pid, a repeat).
        let mut seen: Vec<(u16, bool)> = Vec::new();
        let mut n = 0;
        for (j, h) in l.held.iter().enumerate() {
            // As `behind_count`: the first LOOKUPS non-null packets of each datagram.
            let looked =
                h.pk.iter()
                    .enumerate()
                    .filter(|(_, p)| !p.null)
                    .take(LOOKUPS);
            for (i, p) in looked {
                if self.behind_count(std::slice::from_ref(p), l.next) == 0 {
                    continue;
                }
                let repeat = match seen.iter().find(|e| e.0 == p.pid) {
                    Some(e) => e.1,
                    None => {
                        let before = h.pk[..i]
                            .iter()
                            .rev()
                            .chain(l.held[..j].iter().rev().flat_map(|g| g.pk.iter().rev()))
                            .find(|x| x.pid == p.pid && x.cc != NO_CC)
                            .map(|x| x.cc)
                            .or_else(|| {
                                let e = l.last_cc[usize::from(p.pid)];
                                (e != NONE).then_some((e & 15) as u8)
                            });
                        // The leg's own times bound what it lost since its last placed
                        // packet; the counter's step may skip that many.
                        let sent: usize = l.held[..j].iter().map(|g| g.pk.len()).sum();
                        let lost = l.last_t.map_or(f64::INFINITY, |lt| {
                            self.gap_est(li, lt, h.t, sent + h.pk.len()).max(0.0)
                        });
                        let r = p.cc != NO_CC
                            && before.is_some_and(|c| {
                                f64::from(p.cc.wrapping_sub(c).wrapping_sub(1) & 15) <= lost + 1.0
                            });
                        seen.push((p.pid, r));
                        r
                    }
                };
                if !repeat {
                    n += 1;
                }
            }
        }
        n
    }
}
