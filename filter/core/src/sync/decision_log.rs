//! Decision logs on their way to policy-sync. Each VM keeps what its requests decided in a
//! bounded buffer and moves it, every [`FLUSH_PERIOD_MS`] at most, into its own slot in shared
//! data; the lease holder
//! empties every slot (compare-and-swap) into its outbox and posts batches to
//! `POST /v1/decisions`, at least once a second, one batch in flight. A batch that fails is
//! sent again (at least once); one policy-sync refuses, or any entry past a full buffer, is
//! dropped and counted, never silently.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::decision::{Outcome, Verdict};
use crate::sync::lease::SharedStore;

/// policy-sync's limit for one text field.
const MAX_TEXT: usize = 1024;
/// policy-sync's limit for the policy ids of one entry.
const MAX_POLICIES: usize = 64;
/// How often, at most, a VM moves its buffer into its slot (sooner when the buffer is half
/// full). Each move reads and rewrites the whole slot, which the holder empties only when it
/// ships (once a second), so moving on every tick would rewrite a growing slot many times over.
pub const FLUSH_PERIOD_MS: u64 = 250;

/// One decision as policy-sync stores it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogEntry {
    /// Unix seconds.
    pub time: f64,
    pub tenant: String,
    /// `allow`, `deny` or `unauthenticated`.
    pub decision: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    /// The Cedar action (`Action::"GET"`, or the route table's).
    pub action: String,
    /// The Cedar resource (`Path::"/api"`, or the route table's).
    pub resource: String,
    pub policies: Vec<String>,
    pub version: u64,
    pub dry_run: bool,
    /// The answer's status, the request's `x-request-id` and the trace id of its W3C
    /// `traceparent`, when it has them.
    pub details: serde_json::Value,
}

/// The trace id of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`; a later version may
/// append fields), or `None` when the header is not one: all-zero ids and version `ff` are
/// invalid, and upper-case hex is refused as the recommendation requires.
#[must_use]
pub fn trace_id(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.trim().split('-');
    let lower_hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let nonzero = |s: &str| s.bytes().any(|b| b != b'0');
    let version = parts.next()?;
    let trace = parts.next()?;
    let parent = parts.next()?;
    let flags = parts.next()?;
    let ok = lower_hex(version, 2)
        && version != "ff"
        && lower_hex(trace, 32)
        && nonzero(trace)
        && lower_hex(parent, 16)
        && nonzero(parent)
        && lower_hex(flags, 2)
        && (version != "00" || parts.next().is_none());
    ok.then_some(trace)
}

fn clip(text: &str) -> String {
    let mut end = text.len().min(MAX_TEXT);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.get(..end).unwrap_or_default().to_owned()
}

impl LogEntry {
    /// The entry for one decision, its fields cut to what policy-sync accepts; `target` is the
    /// request's Cedar action and resource.
    #[must_use]
    pub fn new(
        outcome: &Outcome,
        (action, resource): (&str, &str),
        request_id: Option<&str>,
        traceparent: Option<&str>,
        now_ms: u64,
        status: u16,
    ) -> Self {
        let decision = match outcome.verdict {
            Verdict::Allow => "allow",
            Verdict::Forbidden => "deny",
            Verdict::Unauthenticated(_) => "unauthenticated",
        };
        #[expect(clippy::cast_precision_loss, reason = "milliseconds fit f64's 53 bits")]
        let time = now_ms as f64 / 1000.0;
        let tenant = if outcome.policy_set.is_empty() {
            crate::authz::tenants::DEFAULT_SET.to_owned()
        } else {
            outcome.policy_set.clone()
        };
        Self {
            time,
            tenant,
            decision: decision.to_owned(),
            principal: outcome.principal.as_deref().map(clip),
            action: clip(action),
            resource: clip(resource),
            policies: outcome
                .policies
                .iter()
                .take(MAX_POLICIES)
                .map(|p| clip(p))
                .collect(),
            version: outcome.bundle_version,
            dry_run: outcome.dry_run.is_some(),
            details: serde_json::json!({
                "status": status,
                "requestId": request_id.map(clip),
                "traceId": traceparent.and_then(trace_id),
            }),
        }
    }
}

/// What shipping did, for counters and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogEvent {
    Shipped(usize),
    Dropped(usize),
    /// A batch failed and waits to be sent again.
    Retrying {
        entries: usize,
        why: String,
    },
}

/// One VM's side of the decision log.
#[derive(Debug)]
pub struct DecisionLog {
    slot_prefix: String,
    ids_key: String,
    me: u64,
    queue: usize,
    batch: usize,
    pending: Vec<LogEntry>,
    outbox: VecDeque<LogEntry>,
    in_flight: Option<(u32, Vec<LogEntry>)>,
    dropped: usize,
    /// When the buffer last went into the slot (host clock, ms).
    flushed_ms: Option<u64>,
}

fn read_slot(store: &dyn SharedStore, key: &str) -> (Vec<LogEntry>, u32) {
    match store.get(key) {
        Some((bytes, cas)) => (serde_json::from_slice(&bytes).unwrap_or_default(), cas),
        None => (Vec::new(), 0),
    }
}

impl DecisionLog {
    #[must_use]
    pub fn new(prefix: &str, me: u64, queue: usize, batch: usize) -> Self {
        Self {
            slot_prefix: format!("{prefix}.log."),
            ids_key: format!("{prefix}.ids"),
            me,
            queue,
            batch,
            pending: Vec::new(),
            outbox: VecDeque::new(),
            in_flight: None,
            dropped: 0,
            flushed_ms: None,
        }
    }

    /// Keeps an entry for shipping; `false` (and counted) when the buffer is full.
    pub fn record(&mut self, entry: LogEntry) -> bool {
        if self.pending.len() >= self.queue {
            self.dropped += 1;
            return false;
        }
        self.pending.push(entry);
        true
    }

    /// Moves this VM's buffer into its slot when [`FLUSH_PERIOD_MS`] have passed since the
    /// last move or the buffer is half full (what does not fit is dropped and counted).
    pub fn flush(&mut self, store: &dyn SharedStore, now_ms: u64) {
        // A clock that went back (or reads 0 after a failure) makes the move due, as a
        // period passed would: entries must not wait for a clock to catch up.
        let due = self
            .flushed_ms
            .is_none_or(|then| now_ms < then || now_ms - then >= FLUSH_PERIOD_MS)
            || self.pending.len().saturating_mul(2) >= self.queue;
        // A move that lost every compare-and-swap is tried again on the next tick.
        if due && !self.pending.is_empty() && self.move_to_slot(store) {
            self.flushed_ms = Some(now_ms);
        }
    }

    /// `true` when the buffer went into the slot (or was empty).
    fn move_to_slot(&mut self, store: &dyn SharedStore) -> bool {
        if self.pending.is_empty() {
            return true;
        }
        let key = format!("{}{}", self.slot_prefix, self.me);
        for _ in 0..8 {
            let (mut slot, cas) = read_slot(store, &key);
            let room = self.queue.saturating_sub(slot.len());
            let take = room.min(self.pending.len());
            let over = self.pending.len() - take;
            slot.extend(self.pending.iter().take(take).cloned());
            let Ok(bytes) = serde_json::to_vec(&slot) else {
                return false;
            };
            if store.set(&key, &bytes, cas) {
                self.dropped += over;
                self.pending.clear();
                return true;
            }
        }
        false
    }

    /// The holder's step: empties every VM's slot into the outbox and, when no batch is in
    /// flight, hands back the next batch to post (its body).
    pub fn next_batch(&mut self, store: &dyn SharedStore) -> Option<Vec<u8>> {
        let last = store
            .get(&self.ids_key)
            .and_then(|(b, _)| Some(u64::from_le_bytes(b.get(..8)?.try_into().ok()?)))
            .unwrap_or(self.me)
            .min(4096);
        for id in 1..=last {
            let key = format!("{}{id}", self.slot_prefix);
            let (slot, cas) = read_slot(store, &key);
            // A slot that does not fit waits in shared data for a later round (its VM drops
            // what does not fit there): nothing is dropped here.
            let room = self.queue.max(self.batch).saturating_sub(self.outbox.len());
            if slot.is_empty() || slot.len() > room || !store.set(&key, b"[]", cas) {
                continue;
            }
            self.outbox.extend(slot);
        }
        if self.in_flight.is_some() || self.outbox.is_empty() {
            return None;
        }
        let n = self.batch.min(self.outbox.len());
        let batch: Vec<LogEntry> = self.outbox.drain(..n).collect();
        let body = serde_json::to_vec(&serde_json::json!({ "decisions": batch })).ok()?;
        self.in_flight = Some((0, batch));
        Some(body)
    }

    /// The call carrying the batch [`DecisionLog::next_batch`] gave started (`Some(token)`)
    /// or could not start (`None`: the batch goes back to the front of the outbox).
    pub fn started(&mut self, token: Option<u32>) {
        match (token, self.in_flight.take()) {
            (Some(t), Some((_, batch))) => self.in_flight = Some((t, batch)),
            (None, Some((_, batch))) => {
                for e in batch.into_iter().rev() {
                    self.outbox.push_front(e);
                }
            }
            _ => {}
        }
    }

    /// Whether `token` is this log's batch in flight.
    #[must_use]
    pub fn owns(&self, token: u32) -> bool {
        self.in_flight.as_ref().is_some_and(|(t, _)| *t == token)
    }

    /// policy-sync's answer to the batch in flight.
    pub fn answered(&mut self, status: Option<u16>) -> Option<LogEvent> {
        let (_, batch) = self.in_flight.take()?;
        let n = batch.len();
        match status {
            Some(200..=299) => Some(LogEvent::Shipped(n)),
            // Refused as invalid or too large: sending it again changes nothing.
            Some(400 | 413 | 422) => {
                self.dropped += n;
                None
            }
            other => {
                for e in batch.into_iter().rev() {
                    self.outbox.push_front(e);
                }
                Some(LogEvent::Retrying {
                    entries: n,
                    why: other.map_or_else(|| "no answer".to_owned(), |s| format!("status {s}")),
                })
            }
        }
    }

    /// The lease went elsewhere: what this VM held for shipping goes back to its own slot,
    /// for the next holder.
    pub fn hand_over(&mut self, store: &dyn SharedStore) {
        let held: Vec<LogEntry> = self.outbox.drain(..).collect();
        self.pending.splice(0..0, held);
        let over = self.pending.len().saturating_sub(self.queue);
        if over > 0 {
            self.pending.truncate(self.queue);
            self.dropped += over;
        }
        // Nothing more can be done for what does not go: it is tried again on the next tick.
        let _ = self.move_to_slot(store);
    }

    /// Entries dropped since the last call.
    pub fn take_dropped(&mut self) -> Option<LogEvent> {
        let n = std::mem::take(&mut self.dropped);
        (n > 0).then_some(LogEvent::Dropped(n))
    }
}

#[cfg(test)]
mod tests {
    use super::{DecisionLog, FLUSH_PERIOD_MS, LogEntry, read_slot, trace_id};
    use crate::sync::lease::MemoryStore;

    fn entry(n: u64) -> LogEntry {
        LogEntry {
            time: 0.0,
            tenant: "t".to_owned(),
            decision: "allow".to_owned(),
            principal: None,
            action: "Action::\"GET\"".to_owned(),
            resource: format!("Path::\"/{n}\""),
            policies: Vec::new(),
            version: 1,
            dry_run: false,
            details: serde_json::Value::Null,
        }
    }

    #[test]
    fn the_buffer_goes_to_the_slot_once_per_period_or_when_half_full() {
        let store = MemoryStore::default();
        let slot =
            |log: &DecisionLog| read_slot(&store, &format!("{}{}", log.slot_prefix, log.me)).0;
        let mut log = DecisionLog::new("p", 1, 8, 4);
        let t = 1_000_000;
        assert!(log.record(entry(0)));
        log.flush(&store, t);
        assert_eq!(
            slot(&log),
            [entry(0)],
            "the first entry after a quiet spell goes at once"
        );
        assert!(log.record(entry(1)));
        log.flush(&store, t + FLUSH_PERIOD_MS - 1);
        assert_eq!(
            slot(&log).len(),
            1,
            "within the period the slot is not rewritten"
        );
        log.flush(&store, t + FLUSH_PERIOD_MS);
        assert_eq!(slot(&log), [entry(0), entry(1)]);
        // Half the buffer (4 of 8) goes without waiting for the period.
        for n in 2..6 {
            assert!(log.record(entry(n)));
        }
        log.flush(&store, t + FLUSH_PERIOD_MS + 1);
        assert_eq!(slot(&log).len(), 6);
        // A clock that went back makes the move due.
        assert!(log.record(entry(6)));
        log.flush(&store, t);
        assert_eq!(slot(&log).len(), 7);
        // A lease handed over moves what is held at once, whatever the period.
        assert!(log.record(entry(7)));
        log.hand_over(&store);
        assert_eq!(slot(&log).len(), 8);
        assert_eq!(log.take_dropped(), None);
    }

    #[test]
    fn trace_ids_come_only_from_valid_traceparents() {
        let id = "4bf92f3577b34da6a3ce929d0e0e4736";
        assert_eq!(trace_id(&format!("00-{id}-00f067aa0ba902b7-01")), Some(id));
        // A later version may append fields; version 00 may not.
        assert_eq!(
            trace_id(&format!("01-{id}-00f067aa0ba902b7-01-x")),
            Some(id)
        );
        for bad in [
            format!("00-{id}-00f067aa0ba902b7-01-x"),
            format!("ff-{id}-00f067aa0ba902b7-01"),
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01".to_owned(),
            format!("00-{id}-0000000000000000-01"),
            format!("00-{}-00f067aa0ba902b7-01", id.to_uppercase()),
            format!("00-{id}-00f067aa0ba902b7"),
            "00-abc-def-01".to_owned(),
            String::new(),
        ] {
            assert_eq!(trace_id(&bad), None, "{bad}");
        }
    }
}
