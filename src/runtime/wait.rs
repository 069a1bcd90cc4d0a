//! The one wait point of a channel thread: a command, a readable source socket, or the
//! channel's timer — in that order of priority, with the sources in rotation so that a busy
//! one cannot starve the others, and the timer only when no socket is ready (after a stall,
//! every queued datagram is read before silence deadlines are judged).

use std::future::poll_fn;
use std::pin::Pin;
use std::task::Poll;
use std::time::Instant;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Sleep;

use super::Command;

pub(super) enum Wake {
    Readable(usize),
    Timer,
    Command(Option<Command>),
}

pub(super) struct Waiter {
    timer: Pin<Box<Sleep>>,
    armed: Option<Instant>,
    next: usize,
}

impl Waiter {
    pub(super) fn new() -> Waiter {
        Waiter {
            timer: Box::pin(tokio::time::sleep_until(tokio::time::Instant::now())),
            armed: None,
            next: 0,
        }
    }

    /// Arm the timer for `deadline`. Re-armed only when the deadline moves earlier (or nothing
    /// is armed): deadlines move later with almost every packet (a source's silence
    /// deadline), and a timer that fires early is harmless — the state machines do what is
    /// due and the timer is armed again.
    pub(super) fn arm(&mut self, deadline: Option<Instant>) {
        if let Some(t) = deadline
            && self.armed.is_none_or(|a| t < a)
        {
            self.timer.as_mut().reset(tokio::time::Instant::from_std(t));
            self.armed = Some(t);
        }
    }

    /// Wait for the next thing to do. `socket(i)` is source `i`'s socket (`None` for a source
    /// without one, e.g. a slate file), for `i` in `0..sources`.
    pub(super) async fn wait<'a>(
        &mut self,
        commands: &mut mpsc::Receiver<Command>,
        sources: usize,
        socket: impl Fn(usize) -> Option<&'a UdpSocket>,
    ) -> Wake {
        let (next, armed, timer) = (self.next, self.armed, &mut self.timer);
        let wake = poll_fn(|cx| {
            if let Poll::Ready(c) = commands.poll_recv(cx) {
                return Poll::Ready(Wake::Command(c));
            }
            for k in 0..sources {
                let i = (next + k) % sources;
                if let Some(s) = socket(i)
                    && s.poll_recv_ready(cx).is_ready()
                {
                    return Poll::Ready(Wake::Readable(i));
                }
            }
            if armed.is_some() && timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Wake::Timer);
            }
            Poll::Pending
        })
        .await;
        match wake {
            Wake::Readable(i) => self.next = (i + 1) % sources.max(1),
            Wake::Timer => self.armed = None,
            Wake::Command(_) => {}
        }
        wake
    }
}
