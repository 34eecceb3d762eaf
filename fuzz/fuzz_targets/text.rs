//! Fuzz the text segment parser and value helpers: arbitrary bytes as a `key=value\0` segment,
//! every value through the numeric / range / boolean / binary decoders, and a re-emit through
//! both `TextWriter` modes that must parse back to the same pairs.
#![no_main]

use iscsi_proto::text::{
    self, KeyValue, Special, TextWriter, decode_binary, list_items, parse_bool, parse_number,
    parse_range,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut kvs = [KeyValue::EMPTY; 64];
    let parsed = text::parse_pairs(data, &mut kvs);
    // The streaming iterator agrees with the array parser.
    let mut it = text::pairs(data);
    match parsed {
        Ok(pairs) => {
            for kv in pairs {
                assert_eq!(it.next(), Some(Ok(*kv)));
                assert!(!kv.key.is_empty() && kv.key.len() <= text::MAX_KEY_LEN);
                assert!(kv.value.len() <= text::max_value_len(kv.key));
                let _ = parse_number(kv.value);
                let _ = parse_range(kv.value);
                let _ = parse_bool(kv.value);
                let _ = Special::parse(kv.value);
                let mut bin = [0u8; 64];
                if let Ok(b) = decode_binary(kv.value, &mut bin) {
                    assert!(b.len() <= 64);
                }
                for item in list_items(kv.value) {
                    assert!(item.len() <= kv.value.len());
                }
            }
            assert_eq!(it.next(), None);
            // Re-emit strictly into a buffer large enough, then as 7-byte windows.
            let mut out = vec![0u8; data.len()];
            let mut w = TextWriter::new(&mut out);
            for kv in pairs {
                w.push(kv.key, kv.value).expect("re-emit");
            }
            let n = w.len();
            let mut again = [KeyValue::EMPTY; 64];
            let back = text::parse_pairs(&out[..n], &mut again).expect("re-parse");
            assert_eq!(back, pairs);
            let mut off = 0;
            loop {
                let mut chunk = [0u8; 7];
                let mut w = TextWriter::resume(&mut chunk, off);
                for kv in pairs {
                    w.push(kv.key, kv.value).expect("window");
                }
                let c = w.finish();
                assert_eq!(&chunk[..c.len], &out[off..off + c.len]);
                off += c.len;
                if !c.more {
                    break;
                }
            }
            assert_eq!(off, n);
        }
        Err(e) => {
            // The iterator reports the same first error (unless the array filled up first).
            if e != text::TextError::TooManyKeys {
                assert!(it.any(|r| r == Err(e)));
            }
        }
    }
});
