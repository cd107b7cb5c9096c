//! The filters' counters read around a measured run: each must grow by at least the answers wrk
//! counted, so that a filter letting requests through undecided cannot look fast.

use harness::envoy::Envoy;

use super::COUNTS_SETTLE;
use super::variant::Variant;
use crate::Result;

/// How much each counter grew over a run; an error if any grew by less than the answers wrk
/// counted (a filter that let requests through undecided must not look fast).
pub fn counted_every_answer(
    who: &str,
    before: &[(&'static str, u64)],
    after: &[(&'static str, u64)],
    answers: u64,
) -> Result<Vec<u64>> {
    before
        .iter()
        .zip(after)
        .map(|((name, b), (_, a))| {
            let grew = a.saturating_sub(*b);
            if grew < answers {
                Err(format!(
                    "{who}: {name} grew by {grew} while wrk counted {answers} answers"
                ))
            } else {
                Ok(grew)
            }
        })
        .collect()
}

/// The variant's counters after [`COUNTS_SETTLE`].
pub fn read_settled(proxy: &Envoy, variant: Variant) -> Result<Vec<(&'static str, u64)>> {
    // Portcullis hands its counts to Envoy once a second. Every variant waits the same, so
    // that each measured run starts after the same pause.
    std::thread::sleep(COUNTS_SETTLE);
    read_now(proxy, variant)
}

/// The variant's counters as Envoy reports them now.
pub fn read_now(proxy: &Envoy, variant: Variant) -> Result<Vec<(&'static str, u64)>> {
    variant
        .counters()
        .iter()
        .map(|name| {
            proxy
                .stat(name)
                .map_err(|e| e.to_string())?
                .map(|v| (*name, v))
                .ok_or_else(|| format!("{}: no counter {name}", variant.name()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_answer_must_be_counted() {
        let before = [("allowed", 10), ("hits", 5)];
        assert_eq!(
            counted_every_answer("v", &before, &[("allowed", 110), ("hits", 105)], 100),
            Ok(vec![100, 100])
        );
        assert_eq!(
            counted_every_answer("v", &before, &[("allowed", 110), ("hits", 104)], 100),
            Err("v: hits grew by 99 while wrk counted 100 answers".to_owned())
        );
    }
}
