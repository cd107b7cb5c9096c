//! The bodies of policy-sync's API through the checks the API gives them, without a database:
//! the first byte picks the body, the rest is its JSON. Policy writes (one policy, or several
//! rows) get the row checks, then the whole tenant source is checked as a publish would check
//! it; a whole tenant source and a whole source (what `validate` and a rollback hold) get the
//! publish check; a decision batch gets the batch checks. Nothing may panic; a refused body is
//! an error.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use policy_sync::api::{Batch, check_batch};
use policy_sync::publish;
use policy_sync::source::{PolicyRow, Source, TenantSource};
use policy_sync::store::check_policy_rows;

fn tenant(policies: Vec<PolicyRow>) -> Source {
    Source {
        tenants: BTreeMap::from([(
            "default".to_owned(),
            TenantSource {
                policies,
                ..TenantSource::default()
            },
        )]),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    match kind % 5 {
        0 => {
            if let Ok(rows) = serde_json::from_slice::<Vec<PolicyRow>>(body)
                && check_policy_rows(&rows).is_ok()
            {
                let _ = publish::check(&tenant(rows));
            }
        }
        1 => {
            // `PUT .../policies/{id}`: `{"text": ...}` as one row.
            let Ok(serde_json::Value::Object(o)) = serde_json::from_slice(body) else {
                return;
            };
            let Some(text) = o.get("text").and_then(|t| t.as_str()) else {
                return;
            };
            let rows = vec![PolicyRow {
                id: "p1".into(),
                text: text.to_owned(),
                enabled: true,
            }];
            if check_policy_rows(&rows).is_ok() {
                let _ = publish::check(&tenant(rows));
            }
        }
        2 => {
            if let Ok(t) = serde_json::from_slice::<TenantSource>(body) {
                let _ = t.bundle(1);
                let _ = publish::check(&Source {
                    tenants: BTreeMap::from([("default".to_owned(), t)]),
                });
            }
        }
        3 => {
            if let Ok(s) = serde_json::from_slice::<Source>(body) {
                let _ = publish::check(&s);
            }
        }
        _ => {
            if let Ok(batch) = serde_json::from_slice::<Batch>(body) {
                let _ = check_batch(&batch, 1_800_000_000.0, 1000, 7);
            }
        }
    }
});
