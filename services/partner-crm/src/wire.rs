//! The JSON conventions of the published contract (`proto/partnerledger/crm/v1/events.proto`):
//! an absent id is the empty string, uint64 travels as a string (proto3 JSON), absent
//! timestamps are left out. Its one job is these encodings; it must never decide anything.

use serde::{Deserialize, Deserializer, Serializer};
use uuid::Uuid;

/// `Option<Uuid>` as a string, `""` for none.
pub mod opt_id {
    use super::*;

    pub fn serialize<S: Serializer>(v: &Option<Uuid>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(id) => s.collect_str(id),
            None => s.serialize_str(""),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Uuid>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        match s.as_deref() {
            None | Some("") => Ok(None),
            Some(v) => Uuid::try_parse(v)
                .map(Some)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// `u64` as a decimal string, as proto3 JSON writes uint64.
pub mod u64_str {
    use super::*;

    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use serde::{Deserialize, Serialize};

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Probe {
        #[serde(with = "opt_id", default)]
        id: Option<Uuid>,
        #[serde(with = "u64_str")]
        n: u64,
    }

    #[test]
    fn an_absent_id_is_the_empty_string_and_uint64_is_a_string() {
        let p = Probe { id: None, n: 7 };
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(json, r#"{"id":"","n":"7"}"#);
        assert_eq!(serde_json::from_str::<Probe>(&json).unwrap(), p);
        let q: Probe = serde_json::from_str(r#"{"n":"1"}"#).unwrap();
        assert_eq!(q.id, None);
    }
}
