//! Time and timers: `proxy_get_current_time_nanoseconds` (the test's clock) and
//! `proxy_set_tick_period_milliseconds`.

use wasmtime::{Linker, Result};

use super::{C, ENV, code, write};
use crate::host::state::VmState;

/// Adds the clock and tick functions.
pub(super) fn add(linker: &mut Linker<VmState>) -> Result<()> {
    linker.func_wrap(
        ENV,
        "proxy_get_current_time_nanoseconds",
        |mut c: C<'_>, ret: i32| -> i32 {
            let now = c.data().shared.lock().clock_ns;
            code(write(&mut c, ret, &now.to_le_bytes()))
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_set_tick_period_milliseconds",
        |mut c: C<'_>, period: i32| -> i32 {
            let st = c.data_mut();
            let now = st.shared.lock().clock_ns;
            st.tick_period_ms = period as u32;
            st.next_tick_ns = (period != 0).then(|| now + u64::from(period as u32) * 1_000_000);
            0
        },
    )?;
    Ok(())
}
