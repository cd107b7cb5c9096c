//! Metrics: defining counters, gauges and histograms, and reading and recording them.

use wasmtime::{Linker, Result};

use super::{C, ENV, code, idx, read_str, write};
use crate::host::abi::{MetricKind, Status};
use crate::host::state::{Metric, VmState};

/// Adds the metric functions.
pub(super) fn add(linker: &mut Linker<VmState>) -> Result<()> {
    linker.func_wrap(
        ENV,
        "proxy_define_metric",
        |mut c: C<'_>, kind: i32, np: i32, nl: i32, ret: i32| -> i32 {
            let r = (|| {
                let kind = MetricKind::from_raw(kind).ok_or(Status::BadArgument)?;
                let name = read_str(&mut c, np, nl)?;
                let id = {
                    let mut sh = c.data().shared.lock();
                    match sh.metrics.iter().position(|m| m.name == name) {
                        Some(pos) => pos + 1,
                        None => {
                            sh.metrics.push(Metric {
                                name,
                                kind,
                                value: 0,
                                samples: Vec::new(),
                            });
                            sh.metrics.len()
                        }
                    }
                };
                write(&mut c, ret, &(id as u32).to_le_bytes())
            })();
            code(r)
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_get_metric",
        |mut c: C<'_>, id: i32, ret: i32| -> i32 {
            let r = (|| {
                let value = {
                    let sh = c.data().shared.lock();
                    let m = idx(id)
                        .checked_sub(1)
                        .and_then(|i| sh.metrics.get(i))
                        .ok_or(Status::NotFound)?;
                    if m.kind == MetricKind::Histogram {
                        return Err(Status::BadArgument);
                    }
                    m.value
                };
                write(&mut c, ret, &value.to_le_bytes())
            })();
            code(r)
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_record_metric",
        |c: C<'_>, id: i32, value: i64| -> i32 {
            let mut sh = c.data().shared.lock();
            let Some(m) = idx(id).checked_sub(1).and_then(|i| sh.metrics.get_mut(i)) else {
                return Status::NotFound.into();
            };
            let value = value as u64;
            match m.kind {
                MetricKind::Counter => m.value = m.value.wrapping_add(value),
                MetricKind::Gauge => m.value = value,
                MetricKind::Histogram => m.samples.push(value),
            }
            0
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_increment_metric",
        |c: C<'_>, id: i32, offset: i64| -> i32 {
            let mut sh = c.data().shared.lock();
            let Some(m) = idx(id).checked_sub(1).and_then(|i| sh.metrics.get_mut(i)) else {
                return Status::NotFound.into();
            };
            match m.kind {
                MetricKind::Counter if offset > 0 => m.value = m.value.wrapping_add(offset as u64),
                MetricKind::Gauge => m.value = m.value.wrapping_add_signed(offset),
                _ => return Status::BadArgument.into(),
            }
            0
        },
    )?;
    Ok(())
}
