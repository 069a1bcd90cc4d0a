//! Anchoring: how a leg finds its place in the timeline (alone: at its end once its spacing
//! is known; otherwise on a streak of packets matching it, with the datagrams it buffered
//! before), loses it (a jump, a restart, disagreement) and when it is diverged. The module
//! docs of [`content`](super) give the rules.

use std::collections::VecDeque;

use super::{
    ANCHOR_RUN, BASE_POS, BUFFERED_DATAGRAMS, ContentEvent, ContentMerger, Dgram, FIRST_ROOM,
    LegId, NONE, Pk, Slope, Streak,
};

impl ContentMerger {
    pub(super) fn unanchor(&mut self, li: usize) {
        let l = &mut self.legs[li];
        if l.anchored {
            l.anchored = false;
            l.buf.clear();
            l.conflicts = 0;
            for h in std::mem::take(&mut l.held) {
                self.rebuffer(li, h.t, h.pk);
            }
        }
        self.stats.legs[li].aligned = false;
    }

    /// A datagram of a leg that is not anchored.
    pub(super) fn unanchored(&mut self, now_ns: u64, li: usize, pk: Vec<Pk>) {
        if !self.other_live_anchored(li) {
            // Alone: it defines the timeline from here on, once its packet spacing is known
            // (the gaps of its first datagrams cannot be measured before).
            if self.spacing(li) <= 0.0 && self.legs[li].buf.len() < BUFFERED_DATAGRAMS {
                let l = &mut self.legs[li];
                let seq = l.seq;
                l.seq += 1;
                l.buf.push_back(Dgram { seq, t: now_ns, pk });
                return;
            }
            // The very first anchor leaves room below it for what another leg delivers from
            // before this leg's first datagram (see `place_before`).
            let at = if self.hi == BASE_POS {
                BASE_POS + FIRST_ROOM
            } else {
                self.hi.max(self.out)
            };
            self.set_anchored(now_ns, li, at);
            let buf = std::mem::take(&mut self.legs[li].buf);
            for d in buf {
                self.place(now_ns, li, d.t, &d.pk);
            }
            self.place(now_ns, li, now_ns, &pk);
            return;
        }
        let l = &mut self.legs[li];
        l.unaligned_since.get_or_insert(now_ns);
        let seq = l.seq;
        l.seq += 1;
        if l.buf.len() == BUFFERED_DATAGRAMS
            && let Some(d) = l.buf.pop_front()
        {
            self.stats.legs[li].dropped += d.pk.len() as u64;
        }
        l.buf.push_back(Dgram { seq, t: now_ns, pk });
        // Look for a streak over the whole buffer: a leg ahead of the anchored ones finds its
        // matches only once they have caught up.
        let buf = std::mem::take(&mut self.legs[li].buf);
        let mut streak: Option<Streak> = None;
        let mut found = None;
        for d in &buf {
            let k = d.pk.len();
            self.candidates(now_ns, &d.pk, self.lo, true);
            let best = streak
                .and_then(|s| {
                    let g = self.gap_est(li, s.t_last, d.t, k).max(0.0) as u64;
                    let want = s.next + g;
                    self.cands
                        .iter()
                        .filter(|c| c.1 > 0 && c.0 >= s.next && c.0 <= want + 64 + k as u64)
                        .min_by_key(|c| c.0.abs_diff(want))
                        .copied()
                })
                .or_else(|| {
                    self.cands
                        .iter()
                        .filter(|c| c.1 > 0)
                        .max_by_key(|c| (c.2, c.1, c.0))
                        .copied()
                });
            let Some((q, m, unique)) = best else {
                continue;
            };
            let s = match streak {
                Some(mut s) if q >= s.next => {
                    s.count += m;
                    s.unique |= unique;
                    s.next = q + k as u64;
                    s.t_last = d.t;
                    s
                }
                _ => Streak {
                    seq: d.seq,
                    q_first: q,
                    next: q + k as u64,
                    t_last: d.t,
                    count: m,
                    unique,
                },
            };
            streak = Some(s);
            if s.count >= ANCHOR_RUN && s.unique {
                found = Some(s);
                break;
            }
        }
        let Some(s) = found else {
            self.legs[li].buf = buf;
            return;
        };
        let first = !self.legs[li].was_anchored;
        self.set_anchored(now_ns, li, s.q_first);
        let mut buf = buf;
        let pre = buf.iter().take_while(|d| d.seq < s.seq).count();
        let pre: Vec<Dgram> = buf.drain(..pre).collect();
        if first {
            self.place_before(now_ns, li, pre, &buf);
        } else {
            // Re-anchoring (jump, restart, another stream before): what came before the
            // streak belongs to where the leg was, not here.
            for d in pre {
                self.stats.legs[li].dropped += d.pk.len() as u64;
            }
        }
        let mut rest = buf.into_iter();
        for d in rest.by_ref() {
            if !self.place(now_ns, li, d.t, &d.pk) {
                // Unanchored again while replaying: keep the rest for the next try.
                let l = &mut self.legs[li];
                l.buf.push_back(d);
                l.buf.extend(rest);
                return;
            }
        }
    }

    /// A leg anchoring for the first time on a streak that starts at its cursor: its
    /// datagrams buffered before the streak (`pre`, in order; `streak[0]` is the streak's
    /// first) came right before it on a FIFO leg. Typically another leg lost the stream's
    /// first datagrams and anchored after them. Place them backwards from the streak, each
    /// gap as this leg's arrival times say, while the positions are unreleased and agree
    /// with the timeline; the rest (and anything that contradicts) is dropped, counted.
    pub(super) fn place_before(
        &mut self,
        now_ns: u64,
        li: usize,
        pre: Vec<Dgram>,
        streak: &VecDeque<Dgram>,
    ) {
        let Some(f) = streak.front() else {
            for d in pre {
                self.stats.legs[li].dropped += d.pk.len() as u64;
            }
            return;
        };
        let (mut start, mut t, mut k) = (self.legs[li].next, f.t, f.pk.len());
        let floor = self.out.max(self.lo);
        let mut at = vec![None; pre.len()];
        for (j, d) in pre.iter().enumerate().rev() {
            let g = self.gap_round(li, self.gap_est(li, d.t, t, k));
            let Some(q) = start
                .checked_sub(g + d.pk.len() as u64)
                .filter(|&q| q >= floor && self.validate_overlap(q, &d.pk).is_some())
            else {
                break;
            };
            at[j] = Some(q);
            (start, t, k) = (q, d.t, d.pk.len());
        }
        for (d, q) in pre.iter().zip(at) {
            match q {
                Some(q) => self.put(now_ns, li, d.t, q, &d.pk),
                None => self.stats.legs[li].dropped += d.pk.len() as u64,
            }
        }
    }

    pub(super) fn set_anchored(&mut self, now_ns: u64, li: usize, at: u64) {
        let reanchor = self.legs[li].was_anchored;
        let l = &mut self.legs[li];
        l.anchored = true;
        l.was_anchored = true;
        l.next = at;
        l.last_t = None;
        l.line = None;
        l.slope = Slope::default();
        l.last_cc.fill(NONE);
        l.pcr_ref = None;
        l.conflicts = 0;
        l.unaligned_since = None;
        l.diverged = false;
        for l in &mut self.legs {
            if l.anchored {
                l.agree_ns = now_ns;
            }
        }
        self.stats.legs[li].aligned = true;
        if reanchor {
            self.stats.reanchors += 1;
            self.emit(ContentEvent::Reanchored { leg: LegId(li) });
        }
        self.update_aligned();
    }

    /// Legs not anchored for a window while another is live and anchored are diverged.
    pub(super) fn check_divergence(&mut self, now_ns: u64) {
        for i in 0..self.legs.len() {
            let l = &self.legs[i];
            if l.anchored || l.diverged || self.stats.legs[i].lost || !self.other_live_anchored(i) {
                continue;
            }
            if let Some(s) = l.unaligned_since
                && now_ns >= s + self.window_ns
            {
                self.legs[i].diverged = true;
                self.stats.diverged_events += 1;
                self.emit(ContentEvent::Diverged { leg: LegId(i) });
                self.update_aligned();
            }
        }
    }

    /// An anchored leg delivering non-null packets that has not agreed with another for a
    /// window, while another anchored leg agreed later, is unanchored.
    pub(super) fn check_agreement(&mut self, now_ns: u64) {
        let live = |m: &Self, j: usize| {
            let l = &m.legs[j];
            l.anchored && !m.stats.legs[j].lost && l.data_ns + m.window_ns >= now_ns
        };
        for i in 0..self.legs.len() {
            if !live(self, i) || self.legs[i].agree_ns + self.window_ns >= now_ns {
                continue;
            }
            let a = self.legs[i].agree_ns;
            let worse = (0..self.legs.len()).any(|j| {
                j != i
                    && live(self, j)
                    && (self.legs[j].agree_ns > a || (self.legs[j].agree_ns == a && j < i))
            });
            if worse {
                self.unanchor(i);
                self.legs[i].unaligned_since = Some(self.legs[i].agree_ns + self.window_ns);
            }
        }
    }

    pub(super) fn update_aligned(&mut self) {
        let now_aligned =
            (0..self.legs.len()).all(|i| !self.legs[i].diverged || self.stats.legs[i].lost);
        if now_aligned && !self.aligned {
            self.emit(ContentEvent::Aligned);
        }
        self.aligned = now_aligned;
    }
}
