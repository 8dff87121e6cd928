//! The handoff decoder against generated and mutated input: whatever a
//! client sends, `decode` returns a handoff or an error that says what is
//! wrong, and never panics; fds that came along are owned either way.

use std::os::fd::OwnedFd;

use proptest::prelude::*;
use sigvisor_proto::{decode, encode, HandoffError, Metadata};

const RUNC: &[u8] = br#"{"ociVersion":"1.0.2-dev","fds":["seccompFd"],"pid":42,"metadata":"m","state":{"ociVersion":"1.0.2-dev","id":"c1","status":"creating","pid":42,"bundle":"/b","annotations":{"io.kubernetes.cri.container-name":"shop"}}}"#;
const CRUN: &[u8] = b"{\n  \"ociVersion\": \"0.2.0\",\n  \"fds\": [\n    \"seccompFd\"\n  ],\n  \"pid\": 7,\n  \"metadata\": \"\",\n  \"state\": {\n    \"ociVersion\": \"0.2.0\",\n    \"id\": \"c2\",\n    \"status\": \"creating\",\n    \"pid\": 7,\n    \"bundle\": \"/b\",\n    \"annotations\": {}\n  }\n}\n";

fn documents() -> Vec<Vec<u8>> {
    let ours =
        Metadata { wait_killable: true, launcher: true, user: Some("x".into()), watched_signals: 0x1f };
    vec![
        RUNC.to_vec(),
        CRUN.to_vec(),
        encode(1234, &ours, "c3", "/bundle", &[("k".to_owned(), "v".to_owned())]),
    ]
}

fn fds(n: usize) -> Vec<OwnedFd> {
    (0..n).map(|_| OwnedFd::from(std::fs::File::open("/dev/null").expect("/dev/null"))).collect()
}

/// An error names what is wrong: where the JSON broke, which fd is
/// missing, and so on, never an empty message.
fn check(result: Result<sigvisor_proto::Handoff, HandoffError>) -> Result<(), TestCaseError> {
    if let Err(e) = result {
        let text = e.to_string();
        prop_assert!(text.len() > 10, "a vague error: {text:?}");
        if let HandoffError::Json(_) = e {
            prop_assert!(text.contains("line") || text.contains("EOF"), "no position: {text}");
        }
    }
    Ok(())
}

/// One edit of a document: replace, delete or insert a byte.
fn mutate(mut bytes: Vec<u8>, edits: &[(usize, u8, u8)]) -> Vec<u8> {
    for &(at, byte, op) in edits {
        let at = at % (bytes.len() + 1);
        match op {
            0 if at < bytes.len() => bytes[at] = byte,
            1 if at < bytes.len() => {
                bytes.remove(at);
            }
            _ => bytes.insert(at, byte),
        }
    }
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048), n in 0usize..3) {
        check(decode(&bytes, fds(n)))?;
    }

    #[test]
    fn mutated_documents(
        which in 0usize..3,
        edits in proptest::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 1..6),
        n in 0usize..3,
    ) {
        let bytes = mutate(documents()[which].clone(), &edits);
        check(decode(&bytes, fds(n)))?;
    }

    #[test]
    fn truncated_documents(which in 0usize..3, keep in any::<usize>()) {
        let doc = &documents()[which];
        let bytes = &doc[..keep % (doc.len() + 1)];
        check(decode(bytes, fds(1)))?;
    }

    #[test]
    fn metadata_is_ours_or_user_text(text in ".{0,200}") {
        let m = Metadata::parse(Some(&text));
        // Foreign text never claims a killable filter.
        if serde_json::from_str::<Metadata>(&text).is_err() {
            prop_assert!(!m.wait_killable);
        }
    }
}
