//! Property tests of the parsers that read untrusted text and bytes:
//! references (from users and URLs), manifests and release records (from
//! stores and registries) and guest responses (from untrusted modules).

use bytes::Bytes;
use proptest::collection::vec;
use proptest::prelude::*;
use thaw_core::abi::{parse_cgi_response, parse_http1_response};
use thaw_core::release::{Release, TagRecord};
use thaw_core::signing::{RegistryKey, TrustedKeys};
use thaw_core::{Digest, Manifest, Reference, TagRef};

proptest! {
    #[test]
    fn any_reference_text_parses_or_is_refused_and_round_trips(text in "\\PC{0,80}") {
        if let Ok(reference) = text.parse::<Reference>() {
            prop_assert_eq!(reference.to_string().parse::<Reference>().unwrap(), reference);
        }
    }

    #[test]
    fn valid_tags_round_trip_through_text_and_storage_keys(
        name in "[a-z0-9][a-z0-9._-]{0,20}(/[a-z0-9][a-z0-9._-]{0,10}){0,3}",
        tag in "[A-Za-z0-9][A-Za-z0-9._-]{0,20}",
    ) {
        let tag = TagRef::new(&name, &tag).unwrap();
        prop_assert_eq!(tag.to_string().parse::<TagRef>().unwrap(), tag.clone());
        prop_assert_eq!(TagRef::from_storage_key(&tag.storage_key()), Some(tag));
    }

    #[test]
    fn any_bytes_as_a_manifest_parse_or_are_refused(bytes in vec(any::<u8>(), 0..2048)) {
        if let Ok(manifest) = Manifest::from_bytes(&bytes) {
            prop_assert_eq!(Manifest::from_bytes(&manifest.to_bytes()).unwrap(), manifest);
        }
    }

    #[test]
    fn any_bytes_as_a_tag_record_parse_or_are_refused(bytes in vec(any::<u8>(), 0..1024)) {
        if let Ok(record) = TagRecord::from_bytes(&bytes) {
            prop_assert_eq!(TagRecord::from_bytes(&record.to_bytes()).unwrap(), record.clone());
            if let Ok(release) = record.release_unverified() {
                let _ = release.tag_ref();
            }
        }
    }

    #[test]
    fn a_signed_release_verifies_and_any_changed_byte_is_refused(
        name in "[a-z0-9][a-z0-9._-]{0,20}",
        tag in "[A-Za-z0-9][A-Za-z0-9._-]{0,20}",
        sequence in any::<u64>(),
        requested_at_ms in any::<u64>(),
        flip in any::<usize>(),
    ) {
        let key = RegistryKey::generate();
        let trusted = TrustedKeys::new(vec![key.public()]);
        let tag = TagRef::new(&name, &tag).unwrap();
        let mut release = Release::first(&tag, Digest::of(name.as_bytes()), requested_at_ms, None);
        release.sequence = sequence;
        let record = TagRecord::signed(&release, &key);
        let parsed = TagRecord::from_bytes(&record.to_bytes()).unwrap();
        prop_assert_eq!(parsed.verify(&trusted).unwrap(), release.clone());
        prop_assert!(release.check(&tag, Some(&release), None).is_ok());

        let mut bytes = record.release.clone().into_bytes();
        let at = flip % bytes.len();
        bytes[at] ^= 0x01;
        if let Ok(text) = String::from_utf8(bytes) {
            let tampered = TagRecord { release: text, ..record };
            prop_assert!(tampered.verify(&trusted).is_err());
        }
    }

    #[test]
    fn any_guest_output_parses_or_is_refused(bytes in vec(any::<u8>(), 0..4096), head in any::<bool>()) {
        let raw = Bytes::from(bytes);
        let method = if head { "HEAD" } else { "GET" };
        if let Ok(response) = parse_http1_response(&raw, method) {
            prop_assert!(response.body.len() <= raw.len());
        }
        if let Ok(response) = parse_cgi_response(&raw) {
            prop_assert!(response.body.len() <= raw.len());
        }
    }

    #[test]
    fn well_formed_sdk_responses_parse_to_their_parts(
        status in 200u16..600,
        body in vec(any::<u8>(), 0..512),
        trailing in vec(any::<u8>(), 0..64),
    ) {
        let mut raw = format!("HTTP/1.1 {status} X\r\nX-A: b\r\nContent-Length: {}\r\n\r\n", body.len())
            .into_bytes();
        raw.extend_from_slice(&body);
        raw.extend_from_slice(&trailing);
        let response = parse_http1_response(&Bytes::from(raw), "GET").unwrap();
        prop_assert_eq!(response.status, status);
        prop_assert_eq!(response.header("x-a"), Some("b"));
        prop_assert_eq!(&response.body[..], &body[..]);
    }
}
