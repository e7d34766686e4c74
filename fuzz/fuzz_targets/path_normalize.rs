//! The path normalizer on arbitrary strings. Beyond "never panics": what
//! comes out is canonical (normalizing it again changes nothing), carries
//! no dot-segment, empty segment, backslash, encoded slash or control
//! byte, and a naive upstream that percent-decodes once and resolves
//! dot-segments reads it as the same path.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::path::normalize;
use portcullis_fuzz::percent_decode;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(path) = normalize(raw) else {
        return;
    };
    let text = path.as_str();
    assert!(text.starts_with('/'), "{raw:?} → {text:?}");
    assert!(text.len() <= raw.len(), "{raw:?} grew into {text:?}");
    for bad in [
        "//", "/../", "/./", "%2F", "%2f", "%5C", "%5c", "\\", "?", "#",
    ] {
        assert!(!text.contains(bad), "{raw:?} → {text:?} contains {bad:?}");
    }
    assert!(
        text.bytes().all(|b| (0x21..=0x7e).contains(&b)),
        "{raw:?} → {text:?} has a byte outside printable ASCII"
    );
    if text != "/" {
        for segment in text[1..].split('/') {
            assert!(!segment.is_empty(), "{raw:?} → {text:?}: empty segment");
            assert!(
                !segment.ends_with('.'),
                "{raw:?} → {text:?}: segment {segment:?} ends in a dot"
            );
        }
    }
    // Escapes left are upper-case and never of an unreserved character.
    let bytes = text.as_bytes();
    for (i, _) in text.match_indices('%') {
        let escape = bytes.get(i + 1..i + 3).unwrap_or_default();
        assert!(
            escape.len() == 2
                && escape
                    .iter()
                    .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(b)),
            "{raw:?} → {text:?}: escape at {i} is not %XX upper-case"
        );
        let value =
            u8::from_str_radix(std::str::from_utf8(escape).unwrap_or("00"), 16).unwrap_or(0);
        assert!(
            !portcullis::path::is_unreserved(value) && value > 0x1f && value != 0x7f,
            "{raw:?} → {text:?}: %{value:02X} should have been decoded or refused"
        );
    }
    // Canonical: a second pass is the identity.
    assert_eq!(
        normalize(text).as_ref(),
        Ok(&path),
        "{raw:?} → {text:?} is not a fixed point"
    );
    assert_eq!(path.segments().count(), path.len());
    // A naive upstream decodes once: no dot-segment or slash appears.
    let decoded = percent_decode(text);
    assert!(
        !decoded.contains(&b'\\'),
        "{raw:?} → {text:?} decodes to a backslash"
    );
    let segments: Vec<&[u8]> = decoded.split(|b| *b == b'/').skip(1).collect();
    assert_eq!(
        segments.len(),
        path.len().max(1),
        "{raw:?} → {text:?} decodes to other segments"
    );
    for segment in segments {
        assert!(
            segment != b"." && segment != b"..",
            "{raw:?} → {text:?} decodes to a dot-segment"
        );
    }
});
