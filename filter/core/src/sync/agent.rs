//! One VM's part in following policy-sync. Every VM ticks; the one holding the lease
//! long-polls each followed tenant and stores what passes [`accept`] in shared data (the
//! document, then its version); every VM, the holder included, notices a newer version on its
//! tick and hands the document to the glue to compile into its own snapshot (never on the
//! request path). The host (clock, randomness, shared data, HTTP calls) is behind
//! [`SyncHost`], so all of this runs natively in tests.

use std::time::Duration;

use crate::bundle::Bundle;
use crate::bundle::chunks::Chunks;
use crate::bundle::signed::BundleDocument;
use crate::sync::accept::{Accepted, SyncFailure, accept};
use crate::sync::backoff::Backoff;
use crate::sync::config::{SyncSettings, WhenStale};
use crate::sync::decision_log::{DecisionLog, LogEntry, LogEvent};
use crate::sync::health::{Episode, Health};
use crate::sync::lease::{Lease, LeaseState, SharedStore, unique_id};

/// What the glue provides.
pub trait SyncHost: SharedStore {
    /// The host's clock, milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
    /// Any 64-bit random value (jitter).
    fn random(&self) -> u64;
    /// Starts a call to policy-sync's cluster; its id, or why it could not start.
    fn dispatch(&self, call: &Call) -> Result<u32, String>;
}

/// An HTTP call to policy-sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub method: &'static str,
    pub path: String,
    /// Regular headers (`:method`, `:path` and `:authority` come from the fields).
    pub headers: Vec<(&'static str, String)>,
    pub authority: String,
    pub body: Option<Vec<u8>>,
    pub timeout: Duration,
}

impl Call {
    /// The headers to send: `:method`, `:path`, the authority under `authority` (the name the
    /// host's call API reads it from), then the regular headers.
    #[must_use]
    pub fn header_pairs(&self, authority: &'static str) -> Vec<(&str, &str)> {
        let mut headers: Vec<(&str, &str)> = vec![
            (":method", self.method),
            (":path", &self.path),
            (authority, &self.authority),
        ];
        headers.extend(self.headers.iter().map(|(k, v)| (*k, v.as_str())));
        headers
    }
}

/// What came back: the status (`None` when the call failed without an answer: connection
/// refused or reset, timeout) and the body.
#[derive(Debug, Clone, Copy)]
pub struct Answer<'a> {
    pub status: Option<u16>,
    pub body: &'a [u8],
}

/// What happened, for the glue to log and count.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// This VM now polls for the Envoy (`took_over`: from a holder whose lease ran out).
    LeaseTaken { took_over: bool },
    /// Another VM holds the lease now.
    LeaseLost,
    /// A poll started.
    Polling { tenant: String, after: u64 },
    /// A document passed every check and was stored for all workers.
    Accepted { tenant: String, version: u64 },
    /// policy-sync answered that nothing is newer.
    Unchanged { tenant: String },
    /// An attempt failed; `first` for the first failure of an episode (log that one).
    Failed {
        tenant: String,
        failure: SyncFailure,
        first: bool,
    },
    /// The first success after `failures` failed attempts.
    Recovered { tenant: String, failures: u64 },
    /// A newer document is in shared data: compile it and put it in force.
    Document(Box<BundleDocument>),
    /// A key refresh was asked of policy-sync for `issuer`.
    KeyRefresh { issuer: String },
    /// A key refresh could not be asked, or policy-sync refused it.
    KeyRefreshFailed { issuer: String, why: String },
    /// Decision-log entries shipped, dropped, or waiting to be sent again.
    DecisionLog(LogEvent),
}

/// A poll in flight.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    token: u32,
    started_ms: u64,
}

/// One followed tenant, as this VM sees it.
#[derive(Debug)]
struct Followed {
    id: String,
    /// The newest version this VM has been offered (or configured with inline).
    applied: Option<u64>,
    poll: Option<InFlight>,
    next_poll_ms: u64,
    backoff: Backoff,
    health: Health,
}

/// A VM's sync agent.
#[derive(Debug)]
pub struct Agent {
    settings: SyncSettings,
    prefix: String,
    lease: Lease,
    holder: bool,
    started_ms: u64,
    tenants: Vec<Followed>,
    refreshes: Vec<(u32, String)>,
    log: DecisionLog,
    last_ship_ms: u64,
    /// The bundle of the last document this VM accepted, as the check compiled it.
    compiled: Option<(String, u64, Bundle)>,
    /// Per tenant, the policies parsed for the last document this VM accepted.
    parsed: Vec<(String, Chunks)>,
}

/// How long past its timeout a call may stay unanswered before the agent gives up on it (the
/// host should always answer by then).
const WATCHDOG: Duration = Duration::from_secs(2);

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// FNV-1a: a short, stable name for the policy-sync a configuration follows.
fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Percent-encodes a query value (everything but RFC 3986's unreserved characters).
fn query_value(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn read_u64(store: &dyn SharedStore, key: &str) -> Option<u64> {
    let (bytes, _) = store.get(key)?;
    Some(u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?))
}

impl Agent {
    /// The agent of one VM. `in_force` gives the version each tenant starts with (its inline
    /// bundle), if any. `None` when the host refuses shared data.
    pub fn new(
        settings: SyncSettings,
        host: &dyn SyncHost,
        in_force: impl Fn(&str) -> Option<u64>,
    ) -> Option<Self> {
        let prefix = format!(
            "portcullis.sync.{:016x}",
            fnv(&format!("{}\n{}", settings.cluster, settings.authority))
        );
        let me = unique_id(host, &format!("{prefix}.ids"))?;
        let now = host.now_ms();
        let tenants = settings
            .tenants
            .iter()
            .map(|t| Followed {
                id: t.clone(),
                applied: in_force(t),
                poll: None,
                next_poll_ms: now,
                backoff: Backoff::new(settings.retry_initial, settings.retry_max),
                health: Health::default(),
            })
            .collect();
        Some(Self {
            log: DecisionLog::new(&prefix, me, settings.queue, settings.batch),
            last_ship_ms: now,
            compiled: None,
            parsed: Vec::new(),
            lease: Lease::new(format!("{prefix}.lease"), me, settings.lease),
            settings,
            prefix,
            holder: false,
            started_ms: now,
            tenants,
            refreshes: Vec::new(),
        })
    }

    /// The checked `sync` settings.
    #[must_use]
    pub fn settings(&self) -> &SyncSettings {
        &self.settings
    }

    /// Whether this VM polls for the Envoy.
    #[must_use]
    pub fn is_holder(&self) -> bool {
        self.holder
    }

    fn key(&self, what: &str, tenant: &str) -> String {
        format!("{}.{what}.{tenant}", self.prefix)
    }

    /// The newest version any VM of this Envoy has accepted for `tenant`.
    fn shared_version(&self, host: &dyn SyncHost, tenant: &str) -> Option<u64> {
        read_u64(host, &self.key("version", tenant))
    }

    /// The periodic step: the lease, polls (holder), newer documents (every VM).
    pub fn tick(&mut self, host: &dyn SyncHost) -> Vec<Event> {
        let now = host.now_ms();
        let mut events = Vec::new();
        match self.lease.tick(host, now) {
            LeaseState::Holder { took_over } => {
                if !self.holder {
                    self.holder = true;
                    for t in &mut self.tenants {
                        t.next_poll_ms = now;
                    }
                    events.push(Event::LeaseTaken { took_over });
                }
            }
            LeaseState::Follower => {
                if self.holder {
                    self.holder = false;
                    for t in &mut self.tenants {
                        t.poll = None;
                    }
                    self.log.hand_over(host);
                    events.push(Event::LeaseLost);
                }
            }
        }
        if self.holder {
            self.start_polls(host, now, &mut events);
        }
        self.offer_documents(host, &mut events);
        self.log.flush(host, now);
        if self.holder && now.saturating_sub(self.last_ship_ms) >= 1000 {
            self.last_ship_ms = now;
            self.ship(host, &mut events);
        }
        events.extend(self.log.take_dropped().map(Event::DecisionLog));
        events
    }

    /// Keeps a decision for shipping to policy-sync; `false` when the buffer is full (the
    /// entry is dropped and counted).
    pub fn record(&mut self, entry: LogEntry) -> bool {
        self.log.record(entry)
    }

    fn ship(&mut self, host: &dyn SyncHost, events: &mut Vec<Event>) {
        let Some(body) = self.log.next_batch(host) else {
            return;
        };
        let call = Call {
            method: "POST",
            path: "/v1/decisions".to_owned(),
            headers: vec![
                ("authorization", format!("Bearer {}", self.settings.token)),
                ("content-type", "application/json".to_owned()),
            ],
            authority: self.settings.authority.clone(),
            body: Some(body),
            timeout: self.settings.timeout,
        };
        match host.dispatch(&call) {
            Ok(token) => self.log.started(Some(token)),
            Err(why) => {
                self.log.started(None);
                events.push(Event::DecisionLog(LogEvent::Retrying { entries: 0, why }));
            }
        }
    }

    fn start_polls(&mut self, host: &dyn SyncHost, now: u64, events: &mut Vec<Event>) {
        let overdue = millis(self.settings.wait + self.settings.timeout + WATCHDOG);
        for i in 0..self.tenants.len() {
            let Some(t) = self.tenants.get(i) else {
                continue;
            };
            if let Some(p) = t.poll {
                if now.saturating_sub(p.started_ms) > overdue {
                    // The host never answered: count it as a timeout and poll again.
                    self.finish(host, i, Err(SyncFailure::Timeout), events);
                }
                continue;
            }
            if now < t.next_poll_ms {
                continue;
            }
            let id = t.id.clone();
            let after = self.shared_version(host, &id).max(t.applied).unwrap_or(0);
            let call = Call {
                method: "GET",
                path: format!(
                    "/v1/bundles/{}?after={after}&wait={}",
                    query_value(&id),
                    self.settings.wait.as_secs()
                ),
                headers: vec![("authorization", format!("Bearer {}", self.settings.token))],
                authority: self.settings.authority.clone(),
                body: None,
                timeout: self.settings.wait + self.settings.timeout,
            };
            match host.dispatch(&call) {
                Ok(token) => {
                    if let Some(t) = self.tenants.get_mut(i) {
                        t.poll = Some(InFlight {
                            token,
                            started_ms: now,
                        });
                    }
                    events.push(Event::Polling { tenant: id, after });
                }
                Err(why) => self.finish(host, i, Err(SyncFailure::Unreachable(why)), events),
            }
        }
    }

    fn offer_documents(&mut self, host: &dyn SyncHost, events: &mut Vec<Event>) {
        for i in 0..self.tenants.len() {
            let Some(t) = self.tenants.get(i) else {
                continue;
            };
            let Some(version) = self.shared_version(host, &t.id) else {
                continue;
            };
            if t.applied.is_some_and(|a| a >= version) {
                continue;
            }
            let doc = host
                .get(&self.key("doc", &t.id))
                .and_then(|(bytes, _)| serde_json::from_slice::<BundleDocument>(&bytes).ok());
            if let (Some(doc), Some(t)) = (doc, self.tenants.get_mut(i))
                && doc.tenant == t.id
                && t.applied.is_none_or(|a| doc.version > a)
            {
                t.applied = Some(doc.version);
                events.push(Event::Document(Box::new(doc)));
            }
        }
    }

    /// An answer to one of this VM's calls (others are ignored).
    pub fn on_answer(&mut self, host: &dyn SyncHost, token: u32, answer: Answer<'_>) -> Vec<Event> {
        let mut events = Vec::new();
        if self.log.owns(token) {
            events.extend(self.log.answered(answer.status).map(Event::DecisionLog));
            if !self.holder {
                self.log.hand_over(host);
            }
            events.extend(self.log.take_dropped().map(Event::DecisionLog));
            return events;
        }
        if let Some(pos) = self.refreshes.iter().position(|(t, _)| *t == token) {
            let (_, issuer) = self.refreshes.swap_remove(pos);
            match answer.status {
                Some(200..=299 | 429) => {}
                Some(s) => events.push(Event::KeyRefreshFailed {
                    issuer,
                    why: format!("policy-sync answered {s}"),
                }),
                None => events.push(Event::KeyRefreshFailed {
                    issuer,
                    why: "no answer".into(),
                }),
            }
            return events;
        }
        let Some(i) = self
            .tenants
            .iter()
            .position(|t| t.poll.is_some_and(|p| p.token == token))
        else {
            return events;
        };
        let now = host.now_ms();
        let (tenant, started) = match self.tenants.get(i) {
            Some(t) => (t.id.clone(), t.poll.map_or(now, |p| p.started_ms)),
            None => return events,
        };
        let known = self
            .shared_version(host, &tenant)
            .max(self.tenants.get(i).and_then(|t| t.applied));
        // Envoy answers a call that ran past its timeout with a 504 of its own.
        let timed_out =
            now.saturating_sub(started) >= millis(self.settings.wait + self.settings.timeout);
        let result = match answer.status {
            None | Some(504) if timed_out => Err(SyncFailure::Timeout),
            None => Err(SyncFailure::Unreachable(
                "the connection failed or was cut".into(),
            )),
            Some(304) => Ok(None),
            Some(200) => {
                let previous = self
                    .parsed
                    .iter()
                    .find(|(t, _)| *t == tenant)
                    .map(|(_, c)| c.clone())
                    .unwrap_or_default();
                accept(
                    answer.body,
                    &tenant,
                    known,
                    &self.settings.signing_keys,
                    &previous,
                )
                .map(Some)
            }
            Some(s) => Err(SyncFailure::Status(s)),
        };
        let result = result.and_then(|doc| match doc {
            None => Ok(None),
            Some(Accepted { doc, bundle }) => self.store(host, &doc).map(|()| {
                self.parsed.retain(|(t, _)| *t != doc.tenant);
                self.parsed
                    .push((doc.tenant.clone(), bundle.chunks().clone()));
                self.compiled = Some((doc.tenant.clone(), doc.version, bundle));
                Some(doc.version)
            }),
        });
        self.finish(host, i, result, &mut events);
        events
    }

    /// Stores an accepted document for every VM: the document first, then its version.
    fn store(&self, host: &dyn SyncHost, doc: &BundleDocument) -> Result<(), SyncFailure> {
        let bytes = serde_json::to_vec(doc).map_err(|e| SyncFailure::Format(e.to_string()))?;
        let stored = host.set(&self.key("doc", &doc.tenant), &bytes, 0)
            && host.set(
                &self.key("version", &doc.tenant),
                &doc.version.to_le_bytes(),
                0,
            );
        if stored {
            Ok(())
        } else {
            Err(SyncFailure::Unreachable(
                "the host refused to store the document in shared data".into(),
            ))
        }
    }

    /// Ends a poll of tenant `i`: health, backoff, the next poll.
    fn finish(
        &mut self,
        host: &dyn SyncHost,
        i: usize,
        result: Result<Option<u64>, SyncFailure>,
        events: &mut Vec<Event>,
    ) {
        let now = host.now_ms();
        let ok_key = self.tenants.get(i).map(|t| self.key("ok", &t.id));
        let Some(t) = self.tenants.get_mut(i) else {
            return;
        };
        t.poll = None;
        match result {
            Ok(version) => {
                if let Some(k) = ok_key {
                    let _ = host.set(&k, &now.to_le_bytes(), 0);
                }
                if let Episode::Ended { failures } = t.health.success(now) {
                    events.push(Event::Recovered {
                        tenant: t.id.clone(),
                        failures,
                    });
                }
                t.backoff.reset();
                t.next_poll_ms = now;
                events.push(match version {
                    Some(version) => Event::Accepted {
                        tenant: t.id.clone(),
                        version,
                    },
                    None => Event::Unchanged {
                        tenant: t.id.clone(),
                    },
                });
            }
            Err(failure) => {
                let first = matches!(t.health.failure(&failure), Episode::Started(_));
                let delay = t.backoff.next_delay(host.random());
                t.next_poll_ms = now.saturating_add(millis(delay));
                events.push(Event::Failed {
                    tenant: t.id.clone(),
                    failure,
                    first,
                });
            }
        }
    }

    /// The compiled bundle of the document `tenant`/`version` if this VM checked it (once):
    /// compiling it again would only repeat the check's work.
    pub fn take_compiled(&mut self, tenant: &str, version: u64) -> Option<Bundle> {
        match self.compiled.take() {
            Some((t, v, bundle)) if t == tenant && v == version => Some(bundle),
            other => {
                self.compiled = other;
                None
            }
        }
    }

    /// Milliseconds since policy-sync last answered a poll for `tenant` (any VM's), or since
    /// this VM started when it never has.
    #[must_use]
    pub fn since_sync_ms(&self, host: &dyn SyncHost, tenant: &str) -> u64 {
        let since = read_u64(host, &self.key("ok", tenant)).unwrap_or(self.started_ms);
        host.now_ms().saturating_sub(since)
    }

    /// The followed tenants.
    pub fn tenants(&self) -> impl Iterator<Item = &str> {
        self.tenants.iter().map(|t| t.id.as_str())
    }

    /// Whether requests must be refused for staleness: some followed tenant has gone longer
    /// than `maxStaleness` without an answer from policy-sync and `whenStale` is
    /// `failClosed`.
    #[must_use]
    pub fn refuse_stale(&self, host: &dyn SyncHost) -> bool {
        self.settings.when_stale == WhenStale::FailClosed && self.any_stale(host)
    }

    /// Whether some followed tenant is past `maxStaleness`.
    #[must_use]
    pub fn any_stale(&self, host: &dyn SyncHost) -> bool {
        let max = millis(self.settings.max_staleness);
        self.tenants
            .iter()
            .any(|t| self.since_sync_ms(host, &t.id) > max)
    }

    /// A token named a key `issuer` does not have: ask policy-sync to fetch the issuer's keys,
    /// at most once per `keyRefreshInterval` for the whole Envoy (the first VM to claim the
    /// interval asks; the others do nothing).
    pub fn refresh_keys(&mut self, host: &dyn SyncHost, issuer: &str) -> Option<Event> {
        let now = host.now_ms();
        let key = self.key("refresh", &query_value(issuer));
        let (last, cas) = match host.get(&key) {
            Some((bytes, cas)) => (
                bytes
                    .get(..8)
                    .and_then(|b| b.try_into().ok())
                    .map_or(0, u64::from_le_bytes),
                cas,
            ),
            None => (0, 0),
        };
        if last != 0 && now.saturating_sub(last) < millis(self.settings.key_refresh_interval) {
            return None;
        }
        if !host.set(&key, &now.to_le_bytes(), cas) {
            return None;
        }
        let call = Call {
            method: "POST",
            path: format!("/v1/keys/refresh?iss={}", query_value(issuer)),
            headers: vec![("authorization", format!("Bearer {}", self.settings.token))],
            authority: self.settings.authority.clone(),
            body: None,
            timeout: self.settings.timeout,
        };
        Some(match host.dispatch(&call) {
            Ok(token) => {
                self.refreshes.push((token, issuer.to_owned()));
                Event::KeyRefresh {
                    issuer: issuer.to_owned(),
                }
            }
            Err(why) => Event::KeyRefreshFailed {
                issuer: issuer.to_owned(),
                why,
            },
        })
    }

    /// The VM stops: what it holds of the decision log goes to its slot in shared data (for
    /// the next holder), and another VM takes the lease at its next tick.
    pub fn stop(&mut self, host: &dyn SyncHost) {
        self.log.hand_over(host);
        self.lease.release(host);
    }
}
