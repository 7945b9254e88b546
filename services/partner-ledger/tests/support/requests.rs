//! Requests built from the API's own descriptors, so that a test covers every RPC there is,
//! including ones added after it was written: which RPCs mutate (their request carries a
//! `RequestContext`), a plausible body for each (ids, currencies, amounts and times filled in
//! by field name and type), and random bodies for the fuzz pass.

// Shared by several test binaries, each using a part.
#![allow(dead_code)]

use std::collections::HashMap;

use prost::encoding::{encode_key, encode_varint, WireType};
use prost::Message;
use prost_types::field_descriptor_proto::Type;
use prost_types::{DescriptorProto, FileDescriptorSet};
use uuid::Uuid;

const CONTEXT_TYPE: &str = ".partnerledger.common.v1.RequestContext";
const TIMESTAMP_TYPE: &str = ".google.protobuf.Timestamp";
/// How deep nested messages are filled in (the API's deepest request is shallower).
const MAX_DEPTH: usize = 4;
/// 2026-01-01T00:00:00Z: the business time of timestamp fields that start something.
const SECONDS: i64 = 1_767_225_600;
/// 2030-01-01T00:00:00Z: for ends and expiries.
const SECONDS_LATER: i64 = 1_893_456_000;

/// One RPC of the API.
#[derive(Debug, Clone)]
pub struct Rpc {
    /// `/package.Service/Method`.
    pub path: String,
    /// Fully qualified request type (`.package.Message`).
    pub input: String,
    /// Whether the request carries a `RequestContext` (an idempotency key): a mutating RPC.
    pub mutating: bool,
    /// Whether the server answers with a stream of messages.
    pub streaming: bool,
}

/// The API's messages and RPCs, from `pl_proto::FILE_DESCRIPTOR_SET`.
pub struct Api {
    messages: HashMap<String, DescriptorProto>,
    pub rpcs: Vec<Rpc>,
}

impl Api {
    pub fn load() -> Self {
        let set = FileDescriptorSet::decode(pl_proto::FILE_DESCRIPTOR_SET).unwrap();
        let mut messages = HashMap::new();
        let mut services = Vec::new();
        for file in &set.file {
            let package = file.package();
            for m in &file.message_type {
                collect(&format!(".{package}"), m, &mut messages);
            }
            for s in &file.service {
                services.push((package.to_owned(), s.clone()));
            }
        }
        let mut rpcs = Vec::new();
        for (package, service) in services {
            for method in &service.method {
                let input = method.input_type().to_owned();
                let mutating = messages
                    .get(&input)
                    .is_some_and(|m| m.field.iter().any(|f| f.type_name() == CONTEXT_TYPE));
                rpcs.push(Rpc {
                    path: format!("/{package}.{}/{}", service.name(), method.name()),
                    input,
                    mutating,
                    streaming: method.server_streaming(),
                });
            }
        }
        Self { messages, rpcs }
    }

    /// A plausible request for `rpc`: the context carries `key` and no business time (the
    /// server fills in its receipt time), every other field a value chosen by its name.
    pub fn plausible(&self, rpc: &Rpc, key: &str) -> Vec<u8> {
        let mut out = Vec::new();
        self.fill(&rpc.input, key, 0, &mut out);
        out
    }

    fn fill(&self, type_name: &str, key: &str, depth: usize, out: &mut Vec<u8>) {
        let Some(message) = self.messages.get(type_name) else {
            return;
        };
        let mut oneofs_filled = Vec::new();
        for field in &message.field {
            // One member of each oneof (proto3 `optional` is a oneof of one).
            if let Some(index) = field.oneof_index {
                if oneofs_filled.contains(&index) {
                    continue;
                }
                oneofs_filled.push(index);
            }
            // A deprecated field is one a current client leaves empty (AssignPlan refuses its
            // old hand-typed tier and parent).
            let deprecated = field.options.as_ref().and_then(|o| o.deprecated) == Some(true);
            if deprecated || LEFT_EMPTY.contains(&field.name()) {
                continue;
            }
            let number = u32::try_from(field.number()).unwrap();
            match field.r#type() {
                Type::String => {
                    prost::encoding::string::encode(number, &string_for(field.name()), out);
                }
                Type::Bytes => prost::encoding::bytes::encode(number, &b"x".to_vec(), out),
                Type::Bool => prost::encoding::bool::encode(number, &true, out),
                Type::Int32 | Type::Int64 | Type::Uint32 | Type::Uint64 | Type::Enum => {
                    encode_key(number, WireType::Varint, out);
                    encode_varint(1, out);
                }
                Type::Message => {
                    let nested = field.type_name();
                    let mut inner = Vec::new();
                    if nested == CONTEXT_TYPE {
                        pl_proto::common::v1::RequestContext {
                            idempotency_key: key.to_owned(),
                            occurred_at: None,
                            correlation_id: String::new(),
                        }
                        .encode(&mut inner)
                        .unwrap();
                    } else if nested == TIMESTAMP_TYPE {
                        prost_types::Timestamp {
                            seconds: seconds_for(field.name()),
                            nanos: 0,
                        }
                        .encode(&mut inner)
                        .unwrap();
                    } else if depth < MAX_DEPTH {
                        self.fill(nested, key, depth + 1, &mut inner);
                    } else {
                        continue;
                    }
                    encode_key(number, WireType::LengthDelimited, out);
                    encode_varint(inner.len() as u64, out);
                    out.extend_from_slice(&inner);
                }
                // Floats have no place in this API; groups and fixed-width ints neither.
                _ => {}
            }
        }
    }
}

fn collect(scope: &str, m: &DescriptorProto, into: &mut HashMap<String, DescriptorProto>) {
    let name = format!("{scope}.{}", m.name());
    for nested in &m.nested_type {
        collect(&name, nested, into);
    }
    into.insert(name, m.clone());
}

/// Fields left empty: filled in, they describe another kind of request (a refund's original,
/// a net revenue report) than the plausible one.
const LEFT_EMPTY: &[&str] = &[
    "original_external_id",
    "net_revenue_report",
    // A regulated program holds every partner for compliance, which is another story.
    "jurisdictions",
    "jurisdiction",
    "regulated",
    // Only tax forms are signed.
    "signed_at",
    // A program requiring agreements holds its partners' payouts, another story again.
    "required_verifications",
    // A counter adjustment needs its original: a plausible adjustment is a first one.
    "counters_adjustment_id",
];

fn id_for(field: &str) -> String {
    Uuid::new_v5(&Uuid::NAMESPACE_OID, field.as_bytes()).to_string()
}

/// A value a caller could mean for a string field of this name: the same id for the same
/// name everywhere (so a partner created by one RPC is the one the next RPC names).
fn string_for(field: &str) -> String {
    let amount = [
        "amount", "price", "fee", "budget", "net", "gross", "bonus", "total", "value",
    ];
    if field.ends_with("_id") || field == "id" {
        id_for(field)
    } else if let Some(singular) = field.strip_suffix('s').filter(|f| f.ends_with("_id")) {
        id_for(singular)
    } else if field.contains("json") {
        format!(
            r#"{{"plan_id": "{}", "version": 1, "effective_from": "2026-01-01T00:00:00Z",
               "payout_currency": "USD", "hold_days": 0,
               "minimum_payout": {{"amount": "0.00", "currency": "USD"}},
               "rules": [{{"id": "sale", "conditions": {{"conversion_kind": "sale"}},
                           "reward": {{"percent_of_gross": "10"}}}}]}}"#,
            id_for("plan_id")
        )
    } else if field == "to_currency" {
        "EUR".into()
    } else if field.contains("currency") {
        "USD".into()
    } else if field.contains("country") {
        "DE".into()
    } else if field.contains("jurisdiction") {
        "MT".into()
    } else if field.contains("ip_address") {
        "203.0.113.7".into()
    } else if field.contains("domain") {
        "example.com".into()
    } else if field.contains("email") {
        "partner@example.com".into()
    } else if ["url", "uri", "website", "landing"]
        .iter()
        .any(|u| field.contains(u))
    {
        "https://example.com/landing".into()
    } else if field == "period" {
        "2026-01".into()
    } else if field == "rate" {
        "1.10".into()
    } else if field.ends_with("_rate") || field.contains("share") || field.contains("percent") {
        "0.10".into()
    } else if field == "lots" || field == "quantity" {
        "1".into()
    } else if amount.iter().any(|a| field.contains(a)) {
        "10.00".into()
    } else if field.contains("tier") || field == "code" {
        // A tier's code, and the tier a partner or an asset names.
        "gold".into()
    } else if field.contains("code") {
        "SPRING26".into()
    } else {
        "x".into()
    }
}

/// Business times by field name: ends and expiries well after starts and after today.
fn seconds_for(field: &str) -> i64 {
    if ["end", "expires", "until", "to"]
        .iter()
        .any(|w| field.contains(w))
    {
        SECONDS_LATER
    } else {
        SECONDS
    }
}

/// RPCs that close what others work on (a rejected partner takes no deals) go last, so the
/// others reach their decisions.
pub fn closing_last(rpcs: &mut [Rpc]) {
    const CLOSING: &[&str] = &[
        "Reject",
        "Terminate",
        "Revoke",
        "Lose",
        "Retire",
        "Deactivate",
        "Fail",
        "Release",
        "Suspend",
    ];
    rpcs.sort_by_key(|r| {
        let method = r.path.rsplit('/').next().unwrap_or_default();
        CLOSING.iter().any(|c| method.starts_with(c))
    });
}

/// Small deterministic generator for the fuzz pass; its seed is printed on failure.
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A mutation of `body`: random bytes, a flipped, dropped or duplicated span, or a field
    /// appended with a random key and wire type.
    pub fn mutate(&mut self, body: &[u8]) -> Vec<u8> {
        let mut b = body.to_vec();
        match self.next() % 5 {
            0 => {
                let n = (self.next() % 64) as usize;
                (0..n).map(|_| self.next() as u8).collect()
            }
            1 if !b.is_empty() => {
                for _ in 0..=(self.next() % 4) {
                    let i = (self.next() as usize) % b.len();
                    b[i] ^= 1 << (self.next() % 8);
                }
                b
            }
            2 if !b.is_empty() => {
                let i = (self.next() as usize) % b.len();
                b.truncate(i);
                b
            }
            3 => {
                let mut key = Vec::new();
                encode_varint(self.next() % 4096, &mut key);
                b.extend_from_slice(&key);
                b.extend((0..(self.next() % 16)).map(|_| self.next() as u8));
                b
            }
            _ => {
                let dup = b.clone();
                b.extend_from_slice(&dup);
                b
            }
        }
    }
}
