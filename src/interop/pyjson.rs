//! JSON written the way Python's `json.dump` writes it (ml-dash's own files): `", "` and
//! `": "` separators, one line, non-ASCII escaped as `\uXXXX`. Readers only need valid JSON;
//! matching the spacing keeps an exported tree diffable against one the client wrote.

use std::io::{self, Write};

use serde::Serialize;
use serde_json::ser::{Formatter, Serializer};

struct PyFormatter;

impl Formatter for PyFormatter {
    fn begin_array_value<W: ?Sized + Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }

    fn begin_object_key<W: ?Sized + Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }

    fn begin_object_value<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(b": ")
    }

    fn write_string_fragment<W: ?Sized + Write>(
        &mut self,
        w: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        let mut start = 0;
        for (i, c) in fragment.char_indices() {
            if c.is_ascii() {
                continue;
            }
            w.write_all(&fragment.as_bytes()[start..i])?;
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                write!(w, "\\u{u:04x}")?;
            }
            start = i + c.len_utf8();
        }
        w.write_all(&fragment.as_bytes()[start..])
    }
}

/// One JSON document in Python's `json.dumps` style (no trailing newline).
pub(crate) fn to_vec(v: &impl Serialize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut ser = Serializer::with_formatter(&mut out, PyFormatter);
    v.serialize(&mut ser)
        .expect("serializing JSON values into memory cannot fail");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_python_json_dumps() {
        // python3 -c 'import json; print(json.dumps({"a": [1, 2.5, None], "b": "é\u{1F600}\n", "c": {}}))'
        let v = serde_json::json!({"a": [1, 2.5, null], "b": "é\u{1F600}\n", "c": {}});
        assert_eq!(
            String::from_utf8(to_vec(&v)).unwrap(),
            r#"{"a": [1, 2.5, null], "b": "\u00e9\ud83d\ude00\n", "c": {}}"#
        );
    }
}
