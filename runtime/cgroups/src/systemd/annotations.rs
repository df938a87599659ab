//! runc's `org.systemd.property.<Name>` annotations: extra properties of
//! the container's transient unit, each value in GVariant's text format
//! (`uint64 123`, `'inactive-or-failed'`, `true`, `["a", "b"]`), passed
//! to StartTransientUnit after rt's own (so they win where both set one).
//!
//! As in runc: the name must be at least three ASCII letters; a name
//! ending in `Sec` with a lowercase letter before it (`TimeoutStopSec`) is
//! given in seconds, possibly fractional, and sent as the `…USec`
//! property in microseconds.
//!
//! GVariant's text format is parsed here by hand: the crates that parse it
//! bind libglib (a C library rt does not otherwise load), and zvariant only
//! has the binary format. The subset is what unit properties use: booleans,
//! the integer types, strings and arrays of them; anything else is refused
//! by name.

use std::collections::HashMap;

use super::props::{Property, Value};
use crate::{Error, Result};

const PREFIX: &str = "org.systemd.property.";

/// The unit properties the spec's annotations ask for, in name order (so
/// that a unit's properties do not depend on a map's iteration order).
pub fn properties(annotations: &HashMap<String, String>) -> Result<Vec<Property>> {
    let mut keys: Vec<&String> = annotations
        .keys()
        .filter(|k| k.starts_with(PREFIX))
        .collect();
    keys.sort();
    let mut out = Vec::new();
    for key in keys {
        let value = &annotations[key];
        let name = &key[PREFIX.len()..];
        check_name(name).map_err(|message| Error::AnnotationName {
            key: key.clone(),
            message,
        })?;
        let bad = |message: String| Error::AnnotationValue {
            key: key.clone(),
            value: value.clone(),
            message,
        };
        let parsed = parse(value).map_err(bad)?;
        let seconds = name
            .strip_suffix("Sec")
            .filter(|stem| stem.ends_with(|c: char| c.is_ascii_lowercase()));
        let prop = match seconds {
            Some(stem) => (
                format!("{stem}USec"),
                Value::U64(usec(&parsed).map_err(bad)?),
            ),
            None => (name.to_string(), value_of(parsed).map_err(bad)?),
        };
        out.push(prop);
    }
    Ok(out)
}

/// runc's rule: three or more ASCII letters.
fn check_name(name: &str) -> std::result::Result<(), String> {
    if name.len() < 3 {
        return Err("too short".into());
    }
    if !name.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err("contains non-alphabetic character".into());
    }
    Ok(())
}

/// A parsed GVariant value.
#[derive(Debug, Clone, PartialEq)]
enum Variant {
    Bool(bool),
    Byte(u8),
    I16(i16),
    U16(u16),
    I32(i32),
    U32(u32),
    I64(i64),
    U64(u64),
    Double(f64),
    Str(String),
    /// Elements of one type (its signature letter).
    Array(char, Vec<Variant>),
}

/// Seconds (a number of any type) as microseconds.
fn usec(v: &Variant) -> std::result::Result<u64, String> {
    let secs = match *v {
        Variant::Byte(n) => n as f64,
        Variant::I16(n) => n as f64,
        Variant::U16(n) => n as f64,
        Variant::I32(n) => n as f64,
        Variant::U32(n) => n as f64,
        Variant::I64(n) => n as f64,
        Variant::U64(n) => return n.checked_mul(1_000_000).ok_or("out of range".into()),
        Variant::Double(d) => d,
        _ => return Err("not a number of seconds".into()),
    };
    if !(0.0..=(u64::MAX / 1_000_000) as f64).contains(&secs) {
        return Err("out of range".into());
    }
    Ok((secs * 1_000_000.0).round() as u64)
}

fn value_of(v: Variant) -> std::result::Result<Value, String> {
    Ok(match v {
        Variant::Bool(b) => Value::Bool(b),
        Variant::Byte(n) => Value::Byte(n),
        Variant::I16(n) => Value::I16(n),
        Variant::U16(n) => Value::U16(n),
        Variant::I32(n) => Value::I32(n),
        Variant::U32(n) => Value::U32(n),
        Variant::I64(n) => Value::I64(n),
        Variant::U64(n) => Value::U64(n),
        Variant::Str(s) => Value::Str(s),
        Variant::Double(_) => {
            return Err("a double is not a unit property's type (only …Sec takes seconds)".into())
        }
        Variant::Array(t, items) => {
            macro_rules! all {
                ($variant:ident) => {
                    items
                        .into_iter()
                        .filter_map(|i| match i {
                            Variant::$variant(x) => Some(x),
                            _ => None,
                        })
                        .collect()
                };
            }
            match t {
                's' => Value::Strs(all!(Str)),
                'y' => Value::Mask(all!(Byte)),
                'u' => Value::Pids(all!(U32)),
                't' => Value::U64s(all!(U64)),
                'i' => Value::I32s(all!(I32)),
                'x' => Value::I64s(all!(I64)),
                other => return Err(format!("arrays of type {other:?} are not supported")),
            }
        }
    })
}

/// Parses one GVariant text value (the whole string).
fn parse(text: &str) -> std::result::Result<Variant, String> {
    let mut p = Parser {
        s: text.as_bytes(),
        at: 0,
    };
    let node = p.value()?;
    p.blanks();
    if p.at != p.s.len() {
        return Err(format!("unexpected {:?} at offset {}", p.rest(), p.at));
    }
    resolve(node, None)
}

/// A value before its type is settled: untyped numbers take the type of
/// their annotation or their array's, else GVariant's defaults (int32,
/// double).
#[derive(Debug)]
enum Node {
    Int(i128),
    Float(f64),
    Bool(bool),
    Str(String),
    Array(Vec<Node>),
    Typed(String, Box<Node>),
}

struct Parser<'a> {
    s: &'a [u8],
    at: usize,
}

const KEYWORDS: [(&str, &str); 8] = [
    ("byte", "y"),
    ("int16", "n"),
    ("uint16", "q"),
    ("int32", "i"),
    ("uint32", "u"),
    ("int64", "x"),
    ("uint64", "t"),
    ("double", "d"),
];

impl Parser<'_> {
    fn rest(&self) -> String {
        String::from_utf8_lossy(&self.s[self.at..]).into_owned()
    }

    fn blanks(&mut self) {
        while self.at < self.s.len() && self.s[self.at].is_ascii_whitespace() {
            self.at += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.at).copied()
    }

    fn word(&mut self) -> String {
        let start = self.at;
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_')
        {
            self.at += 1;
        }
        String::from_utf8_lossy(&self.s[start..self.at]).into_owned()
    }

    fn value(&mut self) -> std::result::Result<Node, String> {
        self.blanks();
        match self.peek() {
            None => Err("empty value".into()),
            Some(b'@') => {
                self.at += 1;
                let start = self.at;
                while self.peek().is_some_and(|c| !c.is_ascii_whitespace()) {
                    self.at += 1;
                }
                let sig = String::from_utf8_lossy(&self.s[start..self.at]).into_owned();
                Ok(Node::Typed(sig, Box::new(self.value()?)))
            }
            Some(b'[') => {
                self.at += 1;
                let mut items = Vec::new();
                self.blanks();
                if self.peek() == Some(b']') {
                    self.at += 1;
                    return Ok(Node::Array(items));
                }
                loop {
                    items.push(self.value()?);
                    self.blanks();
                    match self.peek() {
                        Some(b',') => self.at += 1,
                        Some(b']') => {
                            self.at += 1;
                            return Ok(Node::Array(items));
                        }
                        _ => return Err(format!("expected ',' or ']' at offset {}", self.at)),
                    }
                }
            }
            Some(q @ (b'\'' | b'"')) => self.string(q).map(Node::Str),
            Some(c) if c == b'-' || c == b'+' || c.is_ascii_digit() => self.number(),
            Some(c) if c.is_ascii_alphabetic() => {
                let at = self.at;
                let w = self.word();
                match w.as_str() {
                    "true" => Ok(Node::Bool(true)),
                    "false" => Ok(Node::Bool(false)),
                    _ => match KEYWORDS.iter().find(|(k, _)| *k == w) {
                        Some((_, sig)) => Ok(Node::Typed(sig.to_string(), Box::new(self.value()?))),
                        None => Err(format!("unsupported GVariant syntax at offset {at}: {w:?}")),
                    },
                }
            }
            Some(_) => Err(format!(
                "unexpected {:?} at offset {}",
                self.rest(),
                self.at
            )),
        }
    }

    fn string(&mut self, quote: u8) -> std::result::Result<String, String> {
        self.at += 1;
        let mut out = Vec::new();
        loop {
            let Some(c) = self.peek() else {
                return Err("unterminated string".into());
            };
            self.at += 1;
            match c {
                c if c == quote => break,
                b'\\' => {
                    let Some(e) = self.peek() else {
                        return Err("unterminated string".into());
                    };
                    self.at += 1;
                    match e {
                        b'n' => out.push(b'\n'),
                        b't' => out.push(b'\t'),
                        b'r' => out.push(b'\r'),
                        b'u' | b'U' => {
                            let len = if e == b'u' { 4 } else { 8 };
                            let hex = self
                                .s
                                .get(self.at..self.at + len)
                                .and_then(|h| std::str::from_utf8(h).ok())
                                .and_then(|h| u32::from_str_radix(h, 16).ok())
                                .and_then(char::from_u32)
                                .ok_or("bad unicode escape")?;
                            self.at += len;
                            out.extend_from_slice(hex.to_string().as_bytes());
                        }
                        other => out.push(other),
                    }
                }
                c => out.push(c),
            }
        }
        String::from_utf8(out).map_err(|_| "a string that is not UTF-8".into())
    }

    fn number(&mut self) -> std::result::Result<Node, String> {
        let start = self.at;
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'+' | b'.'))
        {
            self.at += 1;
        }
        let t = std::str::from_utf8(&self.s[start..self.at]).unwrap_or_default();
        let (neg, digits) = match t.as_bytes().first() {
            Some(b'-') => (true, &t[1..]),
            Some(b'+') => (false, &t[1..]),
            _ => (false, t),
        };
        let int = match digits
            .strip_prefix("0x")
            .or_else(|| digits.strip_prefix("0X"))
        {
            Some(hex) => i128::from_str_radix(hex, 16).ok(),
            None => digits.parse::<i128>().ok(),
        };
        if let Some(n) = int {
            return Ok(Node::Int(if neg { -n } else { n }));
        }
        t.parse::<f64>()
            .map(Node::Float)
            .map_err(|_| format!("bad number {t:?}"))
    }
}

/// Gives `node` a type: `want` (an annotation's or its array's), else its
/// own default.
fn resolve(node: Node, want: Option<&str>) -> std::result::Result<Variant, String> {
    match node {
        Node::Typed(sig, inner) => {
            if let Some(w) = want.filter(|w| *w != sig) {
                return Err(format!("type {sig:?} where {w:?} was expected"));
            }
            resolve(*inner, Some(&sig))
        }
        Node::Int(n) => {
            let range = || format!("{n} is out of range for type {:?}", want.unwrap_or("i"));
            Ok(match want.unwrap_or("i") {
                "y" => Variant::Byte(u8::try_from(n).map_err(|_| range())?),
                "n" => Variant::I16(i16::try_from(n).map_err(|_| range())?),
                "q" => Variant::U16(u16::try_from(n).map_err(|_| range())?),
                "i" => Variant::I32(i32::try_from(n).map_err(|_| range())?),
                "u" => Variant::U32(u32::try_from(n).map_err(|_| range())?),
                "x" => Variant::I64(i64::try_from(n).map_err(|_| range())?),
                "t" => Variant::U64(u64::try_from(n).map_err(|_| range())?),
                "d" => Variant::Double(n as f64),
                other => return Err(format!("a number where type {other:?} was expected")),
            })
        }
        Node::Float(f) => match want.unwrap_or("d") {
            "d" => Ok(Variant::Double(f)),
            other => Err(format!("{f} is not of type {other:?}")),
        },
        Node::Bool(b) => match want.unwrap_or("b") {
            "b" => Ok(Variant::Bool(b)),
            other => Err(format!("a boolean where type {other:?} was expected")),
        },
        Node::Str(s) => match want.unwrap_or("s") {
            "s" => Ok(Variant::Str(s)),
            other => Err(format!("a string where type {other:?} was expected")),
        },
        Node::Array(items) => {
            let elem = match want {
                Some(w) => Some(
                    w.strip_prefix('a')
                        .ok_or_else(|| format!("an array where type {w:?} was expected"))?
                        .to_string(),
                ),
                None => items.iter().find_map(|i| match i {
                    Node::Typed(sig, _) => Some(sig.clone()),
                    _ => None,
                }),
            };
            let mut out = Vec::new();
            let mut elem = elem;
            for item in items {
                let v = resolve(item, elem.as_deref())?;
                if elem.is_none() {
                    elem = Some(signature(&v));
                }
                out.push(v);
            }
            let elem = elem.ok_or("the type of an empty array (give it as @as [] or similar)")?;
            let mut chars = elem.chars();
            match (chars.next(), chars.next()) {
                (Some(t), None) => Ok(Variant::Array(t, out)),
                _ => Err(format!("arrays of type {elem:?} are not supported")),
            }
        }
    }
}

fn signature(v: &Variant) -> String {
    match v {
        Variant::Bool(_) => "b".into(),
        Variant::Byte(_) => "y".into(),
        Variant::I16(_) => "n".into(),
        Variant::U16(_) => "q".into(),
        Variant::I32(_) => "i".into(),
        Variant::U32(_) => "u".into(),
        Variant::I64(_) => "x".into(),
        Variant::U64(_) => "t".into(),
        Variant::Double(_) => "d".into(),
        Variant::Str(_) => "s".into(),
        Variant::Array(t, _) => format!("a{t}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(pairs: &[(&str, &str)]) -> Result<Vec<Property>> {
        let map = pairs
            .iter()
            .map(|(k, v)| (format!("{PREFIX}{k}"), v.to_string()))
            .chain([("other".to_string(), "x".to_string())])
            .collect();
        properties(&map)
    }

    #[test]
    fn values_in_gvariant_text_become_properties() {
        let p = props(&[
            ("CollectMode", "'inactive-or-failed'"),
            ("TimeoutStopUSec", "uint64 123456789"),
            ("IgnoreSIGPIPE", "false"),
            ("Nice", "-5"),
            ("Environment", r#"["A=1", 'B=\u00e9 "q"']"#),
            ("LimitNOFILE", "@t 1024"),
            ("CPUAffinity", "[byte 1, 2]"),
            ("Weights", "[uint64 1, 0x10]"),
        ])
        .unwrap();
        assert_eq!(
            p,
            vec![
                ("CPUAffinity".into(), Value::Mask(vec![1, 2])),
                (
                    "CollectMode".into(),
                    Value::Str("inactive-or-failed".into())
                ),
                (
                    "Environment".into(),
                    Value::Strs(vec!["A=1".into(), "B=é \"q\"".into()])
                ),
                ("IgnoreSIGPIPE".into(), Value::Bool(false)),
                ("LimitNOFILE".into(), Value::U64(1024)),
                ("Nice".into(), Value::I32(-5)),
                ("TimeoutStopUSec".into(), Value::U64(123_456_789)),
                ("Weights".into(), Value::U64s(vec![1, 16])),
            ]
        );
    }

    #[test]
    fn sec_names_take_seconds_and_become_usec() {
        let p = props(&[("TimeoutStopSec", "2"), ("RuntimeMaxSec", "1.5")]).unwrap();
        assert_eq!(
            p,
            vec![
                ("RuntimeMaxUSec".into(), Value::U64(1_500_000)),
                ("TimeoutStopUSec".into(), Value::U64(2_000_000)),
            ]
        );
        // An uppercase letter before Sec: not a seconds name.
        let p = props(&[("FooUSec", "uint64 7")]).unwrap();
        assert_eq!(p, vec![("FooUSec".into(), Value::U64(7))]);
        let e = props(&[("TimeoutStopSec", "'x'")]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "annotation org.systemd.property.TimeoutStopSec='x' value parse error: not a number of seconds"
        );
    }

    #[test]
    fn bad_names_and_values_get_runcs_errors() {
        let e = props(&[("AB", "1")]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "annotation org.systemd.property.AB name incorrect: too short"
        );
        let e = props(&[("Foo1", "1")]).unwrap_err();
        assert!(
            e.to_string().ends_with("contains non-alphabetic character"),
            "{e}"
        );
        for (v, why) in [
            ("", "empty value"),
            ("'open", "unterminated string"),
            ("byte 300", "300 is out of range for type \"y\""),
            ("uint64 -1", "out of range"),
            ("[1, 'a']", "a string where type \"i\" was expected"),
            ("[]", "the type of an empty array"),
            ("1 2", "unexpected"),
            ("<1>", "unexpected"),
            ("objectpath '/x'", "unsupported GVariant syntax"),
            ("1.5", "a double is not"),
            ("[[1]]", "arrays of type \"ai\" are not supported"),
            ("[true]", "arrays of type 'b' are not supported"),
        ] {
            let e = props(&[("Foo", v)]).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!(
                    "annotation org.systemd.property.Foo={v} value parse error: "
                )) && e.contains(why),
                "{v}: {e}"
            );
        }
        assert_eq!(
            props(&[("Foo", "@as []")]).unwrap(),
            vec![("Foo".into(), Value::Strs(vec![]))]
        );
    }
}
