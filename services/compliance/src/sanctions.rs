//! Sanctions screening: the list file, name normalisation and matching. Its one job is to say
//! which listed names a partner's name may be; it never decides the outcome (a reviewer does,
//! recorded in the partner's file) and never changes the list after start.
//!
//! # List file format
//!
//! UTF-8 text, at most [`MAX_FILE_BYTES`], one entry per line:
//!
//! ```text
//! # comment lines and blank lines are ignored
//! <entry id><TAB><name>[<TAB><alias>]...
//! ```
//!
//! The entry id is the list's own reference (1–64 of `[A-Za-z0-9._:/-]`, unique in the file);
//! each name or alias is 1–512 characters. At most [`MAX_ENTRIES`] entries and
//! [`MAX_NAMES_PER_ENTRY`] names per entry. A file breaking any rule is refused at start with
//! the line number. Its SHA-256 is recorded with every screening, so an auditor knows which
//! list a screening used.
//!
//! # Matching
//!
//! Names are normalised: Unicode compatibility decomposition (NFKD) with combining marks
//! dropped (accents: `Müller` → `muller`), lower case, a few letters with no decomposition
//! folded (`ß`→`ss`, `æ`→`ae`, `œ`→`oe`, `ø`→`o`, `ł`→`l`, `đ`/`ð`→`d`, `þ`→`th`, `ı`→`i`),
//! every other non-alphanumeric character a word break, and the words sorted — so case, accents,
//! punctuation and word order do not matter. Two names match `exact` when their word lists are
//! equal, `partial` when every word of one is among the other's and the shorter has at least two
//! words (`Ivan Petrov` against `Ivan Sergeyevich Petrov`). One-word names match only exactly.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use sha2::{Digest, Sha256};
use unicode_normalization::char::is_combining_mark;
use unicode_normalization::UnicodeNormalization;

use crate::partner::{MatchKind, SanctionsMatch};

pub const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;
pub const MAX_ENTRIES: usize = 500_000;
pub const MAX_NAMES_PER_ENTRY: usize = 64;
pub const MAX_NAME_CHARS: usize = 512;
pub const MAX_ID_CHARS: usize = 64;
/// Matches reported per screening (the strongest first).
pub const MAX_MATCHES: usize = 20;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListError {
    #[error("sanctions list {path}: {reason}")]
    Io { path: String, reason: String },
    #[error("sanctions list line {line}: {reason}")]
    Line { line: usize, reason: String },
    #[error("sanctions list: {0}")]
    Whole(String),
}

#[derive(Debug, Clone)]
struct Name {
    entry: usize,
    listed: String,
    words: Vec<String>,
}

/// A loaded list, indexed for matching.
#[derive(Debug, Clone)]
pub struct SanctionsList {
    sha256: String,
    ids: Vec<String>,
    names: Vec<Name>,
    /// Normalised key (sorted words) → names.
    exact: HashMap<String, Vec<usize>>,
    /// Word → names containing it.
    by_word: HashMap<String, Vec<usize>>,
}

/// The words of a name after normalisation, sorted.
pub fn normalise(name: &str) -> Vec<String> {
    let mut folded = String::with_capacity(name.len());
    for c in name.nfkd().filter(|c| !is_combining_mark(*c)) {
        for lower in c.to_lowercase() {
            match lower {
                'ß' => folded.push_str("ss"),
                'æ' => folded.push_str("ae"),
                'œ' => folded.push_str("oe"),
                'ø' => folded.push('o'),
                'ł' => folded.push('l'),
                'đ' | 'ð' => folded.push('d'),
                'þ' => folded.push_str("th"),
                'ı' => folded.push('i'),
                c if c.is_alphanumeric() => folded.push(c),
                _ => folded.push(' '),
            }
        }
    }
    let mut words: Vec<String> = folded.split_whitespace().map(str::to_owned).collect();
    words.sort();
    words
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.chars().count() <= MAX_ID_CHARS
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'/' | b'-'))
}

impl SanctionsList {
    /// Reads and parses the file at `path` (the one place this module does I/O: at start).
    pub fn load(path: &Path) -> Result<Self, ListError> {
        let io = |reason: String| ListError::Io {
            path: path.display().to_string(),
            reason,
        };
        let size = std::fs::metadata(path)
            .map_err(|e| io(e.to_string()))?
            .len();
        if size > MAX_FILE_BYTES {
            return Err(io(format!(
                "{size} bytes, more than the limit of {MAX_FILE_BYTES}"
            )));
        }
        let bytes = std::fs::read(path).map_err(|e| io(e.to_string()))?;
        Self::parse(&bytes)
    }

    pub fn parse(bytes: &[u8]) -> Result<Self, ListError> {
        if bytes.len() as u64 > MAX_FILE_BYTES {
            return Err(ListError::Whole(format!(
                "more than {MAX_FILE_BYTES} bytes"
            )));
        }
        let text =
            std::str::from_utf8(bytes).map_err(|e| ListError::Whole(format!("not UTF-8: {e}")))?;
        let mut list = SanctionsList {
            sha256: hex::encode(Sha256::digest(bytes)),
            ids: Vec::new(),
            names: Vec::new(),
            exact: HashMap::new(),
            by_word: HashMap::new(),
        };
        let mut ids = BTreeSet::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let err = |reason: String| ListError::Line { line, reason };
            let trimmed = raw.trim_end_matches('\r');
            if trimmed.trim().is_empty() || trimmed.trim_start().starts_with('#') {
                continue;
            }
            let mut fields = trimmed.split('\t');
            let id = fields.next().unwrap_or_default().trim();
            if !valid_id(id) {
                return Err(err(format!(
                    "entry id {id:?} must be 1 to {MAX_ID_CHARS} of [A-Za-z0-9._:/-]"
                )));
            }
            if !ids.insert(id.to_owned()) {
                return Err(err(format!("entry id {id} appears twice")));
            }
            if list.ids.len() >= MAX_ENTRIES {
                return Err(err(format!("more than {MAX_ENTRIES} entries")));
            }
            let names: Vec<&str> = fields.map(str::trim).collect();
            if names.is_empty() || names.len() > MAX_NAMES_PER_ENTRY {
                return Err(err(format!(
                    "entry {id} needs 1 to {MAX_NAMES_PER_ENTRY} tab-separated names"
                )));
            }
            let entry = list.ids.len();
            list.ids.push(id.to_owned());
            for name in names {
                if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
                    return Err(err(format!(
                        "entry {id}: each name is 1 to {MAX_NAME_CHARS} characters"
                    )));
                }
                if name.chars().any(char::is_control) {
                    return Err(err(format!(
                        "entry {id}: a name contains a control character"
                    )));
                }
                let words = normalise(name);
                if words.is_empty() {
                    return Err(err(format!("entry {id}: name {name:?} has no letters")));
                }
                let n = list.names.len();
                list.exact.entry(words.join(" ")).or_default().push(n);
                let distinct: BTreeSet<&String> = words.iter().collect();
                for w in distinct {
                    list.by_word.entry(w.clone()).or_default().push(n);
                }
                list.names.push(Name {
                    entry,
                    listed: name.to_owned(),
                    words,
                });
            }
        }
        Ok(list)
    }

    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    pub fn entries(&self) -> usize {
        self.ids.len()
    }

    /// The listed names `name` may be, exact matches first, one per entry, at most
    /// [`MAX_MATCHES`].
    pub fn screen(&self, name: &str) -> Vec<SanctionsMatch> {
        let words = normalise(name);
        if words.is_empty() {
            return vec![];
        }
        let mut found: Vec<(MatchKind, usize)> = Vec::new();
        if let Some(hits) = self.exact.get(&words.join(" ")) {
            found.extend(hits.iter().map(|n| (MatchKind::Exact, *n)));
        }
        let mine: BTreeSet<&String> = words.iter().collect();
        if mine.len() >= 2 {
            // Listed names containing every word of ours: scan the rarest word's names.
            let rarest = mine
                .iter()
                .filter_map(|w| self.by_word.get(*w))
                .min_by_key(|v| v.len());
            let all_present = mine.iter().all(|w| self.by_word.contains_key(*w));
            if let (Some(candidates), true) = (rarest, all_present) {
                for n in candidates {
                    if let Some(listed) = self.names.get(*n) {
                        let theirs: BTreeSet<&String> = listed.words.iter().collect();
                        if mine.is_subset(&theirs) && mine != theirs {
                            found.push((MatchKind::Partial, *n));
                        }
                    }
                }
            }
            // Listed names (of two words or more) whose every word is among ours.
            let mut hits: HashMap<usize, usize> = HashMap::new();
            for w in &mine {
                for n in self.by_word.get(*w).into_iter().flatten() {
                    *hits.entry(*n).or_default() += 1;
                }
            }
            for (n, count) in hits {
                if let Some(listed) = self.names.get(n) {
                    let theirs: BTreeSet<&String> = listed.words.iter().collect();
                    if theirs.len() >= 2 && count == theirs.len() && theirs != mine {
                        found.push((MatchKind::Partial, n));
                    }
                }
            }
        }
        found.sort_by_key(|(kind, n)| (*kind != MatchKind::Exact, *n));
        let mut entries = BTreeSet::new();
        let mut out = Vec::new();
        for (kind, n) in found {
            let Some(listed) = self.names.get(n) else {
                continue;
            };
            if !entries.insert(listed.entry) {
                continue;
            }
            out.push(SanctionsMatch {
                entry_id: self.ids.get(listed.entry).cloned().unwrap_or_default(),
                listed_name: listed.listed.clone(),
                kind,
            });
            if out.len() >= MAX_MATCHES {
                break;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    const LIST: &str = "# test list\n\
        SDN-1\tPETROV, Ivan Sergeyevich\tIvan Petrov\n\
        SDN-2\tJosé María García-López\n\
        \n\
        EU-77\tMadonna\n\
        UK-3\tStraße Holding GmbH\n";

    fn list() -> SanctionsList {
        SanctionsList::parse(LIST.as_bytes()).unwrap()
    }

    #[test]
    fn names_fold_case_accents_punctuation_and_word_order() {
        assert_eq!(
            normalise("García-López, José María"),
            normalise("jose maria GARCIA LOPEZ")
        );
        assert_eq!(normalise("Müller"), vec!["muller"]);
        assert_eq!(normalise("STRASSE"), normalise("Straße"));
        assert_eq!(normalise("Øyvind Łukasz"), vec!["lukasz", "oyvind"]);
        assert_eq!(
            normalise("ＩＶＡＮ"),
            vec!["ivan"],
            "full-width letters are compatibility-folded"
        );
    }

    #[test]
    fn given_the_list_when_a_name_differs_only_in_case_accents_and_order_then_it_matches_exactly() {
        let m = list().screen("Garcia Lopez Jose Maria");
        assert_eq!(m.len(), 1);
        assert_eq!(
            (m[0].entry_id.as_str(), m[0].kind),
            ("SDN-2", MatchKind::Exact)
        );
        let m = list().screen("petrov ivan");
        assert_eq!(
            (m[0].entry_id.as_str(), m[0].kind),
            ("SDN-1", MatchKind::Exact)
        );
        assert_eq!(m[0].listed_name, "Ivan Petrov");
        assert_eq!(m.len(), 1, "one match per entry");
    }

    #[test]
    fn given_a_name_with_a_middle_name_more_or_less_then_it_matches_partially() {
        let m = list().screen("Jose Garcia");
        assert_eq!(
            (m[0].entry_id.as_str(), m[0].kind),
            ("SDN-2", MatchKind::Partial)
        );
        let m = list().screen("Ivan Sergeyevich Petrov Jr");
        assert_eq!(
            (m[0].entry_id.as_str(), m[0].kind),
            ("SDN-1", MatchKind::Partial)
        );
    }

    #[test]
    fn given_a_one_word_name_then_it_matches_only_exactly() {
        assert!(list().screen("Ivan").is_empty());
        assert_eq!(list().screen("MADONNA")[0].entry_id, "EU-77");
        assert!(list().screen("Madonna Smith").is_empty());
    }

    #[test]
    fn given_an_unrelated_name_then_nothing_matches() {
        assert!(list().screen("Acme Affiliates Ltd").is_empty());
        assert!(list().screen("  ,, ").is_empty());
    }

    #[test]
    fn a_broken_file_is_refused_with_its_line_number() {
        for (text, line) in [
            ("A1\tName\nA1\tOther\n", 2),
            ("bad id\tName\n", 1),
            ("# c\nA1\n", 2),
            ("A1\t\u{7}\n", 1),
            ("A1\t...\n", 1),
        ] {
            match SanctionsList::parse(text.as_bytes()) {
                Err(ListError::Line { line: l, .. }) => assert_eq!(l, line, "{text:?}"),
                other => panic!("{text:?}: {other:?}"),
            }
        }
        assert!(matches!(
            SanctionsList::parse(&[0xff, 0xfe]),
            Err(ListError::Whole(_))
        ));
    }

    #[test]
    fn the_list_is_identified_by_the_sha256_of_its_bytes() {
        let l = list();
        assert_eq!(l.entries(), 4);
        assert_eq!(l.sha256(), hex::encode(Sha256::digest(LIST.as_bytes())));
    }
}
