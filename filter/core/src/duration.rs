//! Typed durations in configuration: `"60s"`, `"5m"`, `"250ms"`, `"1h"`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration written as a number followed by a unit (`ms`, `s`, `m`, `h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ConfigDuration(pub Duration);

/// A duration string that could not be understood.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "invalid duration {0:?}: expected a whole number followed by ms, s, m or h, such as \"60s\""
)]
pub struct DurationError(String);

impl FromStr for ConfigDuration {
    type Err = DurationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || DurationError(s.to_owned());
        let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
        let (digits, unit) = s.split_at(split);
        let n: u64 = digits.parse().map_err(|_| err())?;
        let d = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.checked_mul(60).ok_or_else(err)?),
            "h" => Duration::from_secs(n.checked_mul(3600).ok_or_else(err)?),
            _ => return Err(err()),
        };
        Ok(Self(d))
    }
}

impl fmt::Display for ConfigDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0.as_millis())
    }
}

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for ConfigDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// In the configuration's JSON Schema: a string such as `"60s"`.
#[cfg(feature = "schema")]
impl schemars::JsonSchema for ConfigDuration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^[0-9]+(ms|s|m|h)$",
            "description": "A whole number followed by ms, s, m or h, such as \"60s\".",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!("60s".parse(), Ok(ConfigDuration(Duration::from_secs(60))));
        assert_eq!("5m".parse(), Ok(ConfigDuration(Duration::from_secs(300))));
        assert_eq!(
            "250ms".parse(),
            Ok(ConfigDuration(Duration::from_millis(250)))
        );
        assert_eq!("2h".parse(), Ok(ConfigDuration(Duration::from_secs(7200))));
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "s",
            "60",
            "60 s",
            "-1s",
            "1.5s",
            "1d",
            "99999999999999999999s",
        ] {
            assert!(bad.parse::<ConfigDuration>().is_err(), "{bad:?} accepted");
        }
    }
}
