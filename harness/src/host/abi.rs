//! Constants and wire formats of the proxy-wasm ABI 0.2.1, as Envoy implements them.

/// `WasmResult` codes returned by host functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum Status {
    Ok = 0,
    NotFound = 1,
    BadArgument = 2,
    SerializationFailure = 3,
    ParseFailure = 4,
    InvalidMemoryAccess = 6,
    Empty = 7,
    CasMismatch = 8,
    InternalFailure = 10,
    Unimplemented = 12,
}

impl From<Status> for i32 {
    fn from(s: Status) -> Self {
        s as Self
    }
}

/// Log levels (`proxy_log`), in the ABI's order (`as u32` is the wire value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogLevel {
    Trace = 0,
    Debug = 1,
    Info = 2,
    Warn = 3,
    Error = 4,
    Critical = 5,
}

impl LogLevel {
    /// Every level, at the index of its wire value.
    const ALL: [Self; 6] = [
        Self::Trace,
        Self::Debug,
        Self::Info,
        Self::Warn,
        Self::Error,
        Self::Critical,
    ];

    pub(crate) fn from_raw(v: i32) -> Option<Self> {
        usize::try_from(v)
            .ok()
            .and_then(|i| Self::ALL.get(i).copied())
    }
}

/// Filter return actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Continue,
    Pause,
}

impl Action {
    pub(crate) fn from_raw(v: i32) -> Self {
        // Envoy treats anything but 0 (Continue) as a stop of iteration.
        if v == 0 { Self::Continue } else { Self::Pause }
    }
}

pub(crate) mod buffer {
    pub const HTTP_REQUEST_BODY: i32 = 0;
    pub const HTTP_RESPONSE_BODY: i32 = 1;
    pub const HTTP_CALL_RESPONSE_BODY: i32 = 4;
    pub const GRPC_RECEIVE_BUFFER: i32 = 5;
    pub const VM_CONFIGURATION: i32 = 6;
    pub const PLUGIN_CONFIGURATION: i32 = 7;
}

pub(crate) mod map {
    pub const HTTP_REQUEST_HEADERS: i32 = 0;
    pub const HTTP_REQUEST_TRAILERS: i32 = 1;
    pub const HTTP_RESPONSE_HEADERS: i32 = 2;
    pub const HTTP_RESPONSE_TRAILERS: i32 = 3;
    pub const HTTP_CALL_RESPONSE_HEADERS: i32 = 6;
    pub const HTTP_CALL_RESPONSE_TRAILERS: i32 = 7;
}

/// Metric kinds (`proxy_define_metric`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

impl MetricKind {
    pub(crate) fn from_raw(v: i32) -> Option<Self> {
        Some(match v {
            0 => Self::Counter,
            1 => Self::Gauge,
            2 => Self::Histogram,
            _ => return None,
        })
    }
}

/// Header pairs: names as text (Envoy refuses a name that is not a token), values as the bytes
/// they are (HTTP allows any byte above 0x7F in a value, and Envoy passes such values on).
pub type Headers = Vec<(String, Vec<u8>)>;

/// Serializes a header map: count, then (key length, value length) pairs, then each key and
/// value followed by a NUL byte. Written here from the ABI, apart from the filter's own reader
/// (`portcullis_core::http::header_map`), so that the host tests would catch that reader getting the
/// format wrong.
pub(crate) fn encode_map(pairs: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    let count = u32::try_from(pairs.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&count.to_le_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&u32::try_from(k.len()).unwrap_or(u32::MAX).to_le_bytes());
        out.extend_from_slice(&u32::try_from(v.len()).unwrap_or(u32::MAX).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

/// Parses a serialized header map; `None` if it is malformed.
pub(crate) fn decode_map(bytes: &[u8]) -> Option<Headers> {
    let u32_at = |i: usize| -> Option<usize> {
        let b: [u8; 4] = bytes.get(i..i + 4)?.try_into().ok()?;
        usize::try_from(u32::from_le_bytes(b)).ok()
    };
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let count = u32_at(0)?;
    let mut sizes = Vec::with_capacity(count.min(1024));
    for i in 0..count {
        let at = 4 + i.checked_mul(8)?;
        sizes.push((u32_at(at)?, u32_at(at + 4)?));
    }
    let mut pos = 4 + count.checked_mul(8)?;
    let mut out = Vec::with_capacity(sizes.len());
    for (kl, vl) in sizes {
        let k = bytes.get(pos..pos.checked_add(kl)?)?;
        pos = pos.checked_add(kl + 1)?;
        let v = bytes.get(pos..pos.checked_add(vl)?)?;
        pos = pos.checked_add(vl + 1)?;
        out.push((String::from_utf8(k.to_vec()).ok()?, v.to_vec()));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_round_trip() {
        let m = vec![
            (":path".to_owned(), b"/a".to_vec()),
            ("x".to_owned(), Vec::new()),
            ("latin-1".to_owned(), b"caf\xe9\xff".to_vec()),
        ];
        assert_eq!(decode_map(&encode_map(&m)), Some(m));
        assert_eq!(decode_map(&[1, 0, 0, 0, 9, 0]), None);
        assert_eq!(decode_map(&[255, 255, 255, 255]), None);
    }

    #[test]
    fn log_levels_round_trip_their_wire_values() {
        for level in LogLevel::ALL {
            assert_eq!(LogLevel::from_raw(level as i32), Some(level));
        }
        assert_eq!(LogLevel::from_raw(-1), None);
        assert_eq!(LogLevel::from_raw(6), None);
    }
}
