//! One request through the core: the glue's whole per-request work, with no decision logic
//! of its own (the same steps as the Wasm glue, through Envoy's dynamic-module callbacks).

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use portcullis_core::effects::{self, HeaderEdit};
use portcullis_core::metrics::{self, Counter};
use portcullis_core::{AuthError, HeaderMap, RequestView, Verdict};

use crate::abi;
use crate::config::{NoEngine, SharedConfig};
use crate::host::Stream;

/// The body of every 503 the filter sends.
const UNAVAILABLE: &[u8] = b"authorization unavailable\n";

/// `Retry-After` of the 503 sent while there is no bundle the filter may decide with.
const RETRY_AFTER: &str = "5";

/// Refuses the request while the filter has nothing it may decide with (no document from
/// policy-sync yet, or the one in force is stale): 503 with `Retry-After`, never allow.
fn retry_later(config: &SharedConfig, stream: Stream) -> u32 {
    if let Some(id) = config.stats.sync_counter(metrics::SYNC_REFUSED_REQUESTS) {
        stream.count(id, None, 1);
    }
    stream.send_response(
        503,
        &[("content-type", "text/plain"), ("retry-after", RETRY_AFTER)],
        UNAVAILABLE,
    );
    abi::status::STOP_ITERATION
}

/// The request as the core sees it: Envoy's headers read in place, the client address on
/// demand.
struct EnvoyRequest<'a> {
    stream: Stream,
    headers: HeaderMap<'a>,
}

impl RequestView for EnvoyRequest<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)
    }

    fn source_address(&self) -> Option<String> {
        self.stream.source_address()
    }
}

/// Fails the request closed: 503, counted as an error, logged without detail for the client.
pub fn unavailable(config: Option<&SharedConfig>, stream: Stream, why: &str) -> u32 {
    log::warn!("portcullis: {why}; denying");
    if let Some(id) = config.and_then(|c| c.stats.counters.get(Counter::Errors)) {
        stream.count(id, None, 1);
    }
    stream.send_response(503, &[("content-type", "text/plain")], UNAVAILABLE);
    abi::status::STOP_ITERATION
}

/// Decides the request whose headers Envoy has: lets it continue (with the upstream edits) or
/// answers it; the hook's status.
pub fn on_request_headers(config: &Arc<SharedConfig>, stream: Stream) -> u32 {
    if config.sync.as_ref().is_some_and(|s| s.refusing()) {
        return retry_later(config, stream);
    }
    let engine = match config.engine() {
        Ok(engine) => engine,
        Err(NoEngine::Pending) => return retry_later(config, stream),
        Err(NoEngine::Busy) => {
            return unavailable(Some(config), stream, "the worker's engine is busy");
        }
    };
    let started = Instant::now();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let Some(raw) = stream.request_headers() else {
        return unavailable(
            Some(config),
            stream,
            "Envoy did not hand over the request headers",
        );
    };
    #[expect(unsafe_code, reason = "reading the header slices Envoy handed over")]
    // SAFETY: Envoy filled these entries in this hook and owns the bytes until it returns or a
    // header is changed (changes come after the last read below).
    let headers = HeaderMap::from_pairs(raw.iter().map(|h| unsafe { h.parts() }));
    let request = EnvoyRequest { stream, headers };
    let decided = engine.decide(&request, now);
    if decided.evaluated {
        let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        stream.record(config.stats.decision_us, us);
    }
    for (counter, n) in effects::counts(&decided) {
        if let Some(id) = config.stats.counters.get(counter) {
            stream.count(id, None, n);
        }
    }
    config.flush_signature_counts(stream);
    let outcome = decided.outcome;
    effects::log(&outcome);
    for policy in effects::denied_by(&outcome) {
        stream.count(config.stats.denied_by_policy, Some(policy), 1);
    }
    let reply = outcome.local_reply(engine.debug_headers());
    if let Some(sync) = &config.sync {
        if let Verdict::Unauthenticated(AuthError::NoKey { issuer, .. }) = &outcome.verdict {
            sync.want_refresh(issuer);
        }
        let status = reply.as_ref().map_or(200, |r| r.status);
        if !sync.log_decision(&engine, &outcome, &request.headers, status)
            && let Some(id) = config.stats.sync_counter(metrics::DECISION_LOG_DROPPED)
        {
            stream.count(id, None, 1);
        }
    }
    match reply {
        None => {
            // Every edit is worked out before the first one: an edit may move the bytes the
            // header map borrows.
            let edits = effects::upstream_edits(&outcome, &request.headers, engine.debug_headers());
            for edit in &edits {
                match edit {
                    HeaderEdit::Remove(name) => stream.set_request_header(name, None),
                    HeaderEdit::Set(name, value) => stream.set_request_header(name, Some(value)),
                }
            }
            abi::status::CONTINUE
        }
        Some(reply) => {
            stream.send_response(reply.status, &reply.header_pairs(), reply.body.as_bytes());
            abi::status::STOP_ITERATION
        }
    }
}
