//! The `headers` exchange type, following `rabbit_exchange_type_headers`.
//!
//! A binding's arguments are the pattern; `x-match` picks how it combines:
//!
//! * `all` (the default when `x-match` is absent): every pattern entry must
//!   match. A binding with no pattern entries therefore matches every message,
//!   including one without headers.
//! * `any`: at least one entry must match, so a binding with no entries matches
//!   nothing.
//! * `all`/`any` skip pattern keys starting with `x-`; `all-with-x` and
//!   `any-with-x` keep them. `x-match` itself is never part of the pattern.
//!
//! A pattern entry of type void matches the mere presence of the header, with
//! any value. Otherwise values are compared the way RabbitMQ does, i.e. with
//! Erlang's `==` on the decoded value *without* its type tag (see [`loose_eq`]).
//! A message without headers is treated as having an empty table.
//!
//! Routing has to evaluate each binding (as RabbitMQ does); bindings are
//! pre-filtered at bind time so route does lookups only.
//!
//! Values arrive as the WIT `field-value`: every integer width as `Int`, both
//! float widths as `Float` (an f32 widened), arrays, nested tables and decimals
//! as `Encoded` wire bytes. When a table holds a key twice the first entry
//! counts, as in [`warren_sdk::field`].

use warren_sdk::{BindingId, ExchangeType, FieldTable, FieldValue, Message};

/// How a binding's pattern entries combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchKind {
    All,
    Any,
    AllWithX,
    AnyWithX,
}

impl MatchKind {
    fn is_any(self) -> bool {
        matches!(self, MatchKind::Any | MatchKind::AnyWithX)
    }

    fn keeps_x_keys(self) -> bool {
        matches!(self, MatchKind::AllWithX | MatchKind::AnyWithX)
    }
}

/// Reads `x-match` from binding arguments, refusing bad values with
/// RabbitMQ's wording (its `~tp` rendering of Erlang terms included).
pub fn parse_x_match(arguments: &FieldTable) -> Result<MatchKind, String> {
    let Some(value) = warren_sdk::field(arguments, "x-match") else {
        // The spec is vague about omitting x-match; RabbitMQ defaults to all.
        return Ok(MatchKind::All);
    };
    let bytes = match value {
        FieldValue::Text(s) => s.as_bytes(),
        // `bytes` is either a byte array or a long string that is not UTF-8.
        // Only the latter can fail UTF-8, so treat it as the longstr it was.
        FieldValue::Bytes(b) if std::str::from_utf8(b).is_err() => b.as_slice(),
        other => {
            return Err(format!(
                "Invalid x-match field type {} (value {}); expected longstr",
                rabbit_type_name(other),
                erlang_term(other)
            ));
        }
    };
    match bytes {
        b"all" => Ok(MatchKind::All),
        b"any" => Ok(MatchKind::Any),
        b"all-with-x" => Ok(MatchKind::AllWithX),
        b"any-with-x" => Ok(MatchKind::AnyWithX),
        other => Err(format!(
            "Invalid x-match field value {}; expected all, any, all-with-x, or any-with-x",
            erlang_binary(other)
        )),
    }
}

#[derive(Debug)]
struct Binding {
    id: BindingId,
    kind: MatchKind,
    // `None` is a void pattern value: presence only.
    pattern: Vec<(String, Option<FieldValue>)>,
}

impl Binding {
    fn matches(&self, headers: &Headers<'_>) -> bool {
        let entry_matches = |(key, want): &(String, Option<FieldValue>)| {
            let got = headers.get(key);
            match (want, got) {
                (_, None) => false,
                (None, Some(_)) => true,
                (Some(want), Some(got)) => loose_eq(want, got),
            }
        };
        if self.kind.is_any() {
            self.pattern.iter().any(entry_matches)
        } else {
            self.pattern.iter().all(entry_matches)
        }
    }
}

/// Above this many headers, route sorts them once per message so each
/// pattern lookup is a binary search instead of a scan.
const INDEX_HEADERS_ABOVE: usize = 16;

/// A message's headers, ready for lookups by key.
enum Headers<'a> {
    Few(&'a FieldTable),
    // Sorted by key, stably, so the first of duplicate keys comes first.
    Many(Vec<(&'a str, &'a FieldValue)>),
}

impl<'a> Headers<'a> {
    fn new(table: &'a FieldTable) -> Self {
        if table.len() <= INDEX_HEADERS_ABOVE {
            return Headers::Few(table);
        }
        let mut sorted: Vec<(&str, &FieldValue)> =
            table.iter().map(|(k, v)| (k.as_str(), v)).collect();
        sorted.sort_by(|a, b| a.0.cmp(b.0));
        Headers::Many(sorted)
    }

    fn get(&self, key: &str) -> Option<&'a FieldValue> {
        match self {
            Headers::Few(table) => warren_sdk::field(table, key),
            Headers::Many(sorted) => {
                let at = sorted.partition_point(|(k, _)| *k < key);
                sorted.get(at).filter(|(k, _)| *k == key).map(|(_, v)| *v)
            }
        }
    }
}

/// Routing state of one headers exchange.
#[derive(Debug, Default)]
pub struct HeadersExchange {
    bindings: Vec<Binding>,
}

impl ExchangeType for HeadersExchange {
    const NEEDS_HEADERS: bool = true;

    fn create(_arguments: &FieldTable) -> Result<Self, String> {
        Ok(Self::default())
    }

    fn bind(
        &mut self,
        id: BindingId,
        _binding_key: &str,
        arguments: &FieldTable,
    ) -> Result<(), String> {
        let kind = parse_x_match(arguments)?;
        let mut pattern: Vec<(String, Option<FieldValue>)> = Vec::new();
        for (k, v) in arguments {
            if k == "x-match" || (!kind.keeps_x_keys() && k.starts_with("x-")) {
                continue;
            }
            if pattern.iter().any(|(seen, _)| seen == k) {
                continue;
            }
            let want = match v {
                FieldValue::Void => None,
                v => Some(v.clone()),
            };
            pattern.push((k.clone(), want));
        }
        self.unbind(id);
        self.bindings.push(Binding { id, kind, pattern });
        Ok(())
    }

    fn unbind(&mut self, id: BindingId) {
        self.bindings.retain(|b| b.id != id);
    }

    fn route(&self, message: &Message, out: &mut Vec<BindingId>) {
        if self.bindings.is_empty() {
            return;
        }
        let headers = Headers::new(&message.headers);
        out.extend(
            self.bindings
                .iter()
                .filter(|b| b.matches(&headers))
                .map(|b| b.id),
        );
    }
}

warren_sdk::export_exchange_type!(HeadersExchange);

enum Loose<'a> {
    Int(i128),
    Float(f64),
    Bytes(&'a [u8]),
    Other(&'a FieldValue),
}

fn loose(v: &FieldValue) -> Loose<'_> {
    match v {
        FieldValue::Int(n) => Loose::Int((*n).into()),
        FieldValue::Timestamp(n) => Loose::Int((*n).into()),
        FieldValue::Float(f) => Loose::Float(*f),
        FieldValue::Text(s) => Loose::Bytes(s.as_bytes()),
        FieldValue::Bytes(b) => Loose::Bytes(b.as_slice()),
        other => Loose::Other(other),
    }
}

fn int_eq_float(i: i128, f: f64) -> bool {
    // Erlang converts whichever side is less precise, which for these ranges
    // amounts to an exact comparison: 1 == 1.0, but 2^53+1 != 2^53 as a float.
    f.is_finite() && f.fract() == 0.0 && f.abs() < 1e38 && f as i128 == i
}

/// Header value equality as RabbitMQ implements it: Erlang `==` on the
/// decoded values, ignoring the AMQP type tag at the top level. Consequences:
///
/// * all integer widths and timestamps compare by numeric value
///   (`I 5 == l 5 == T 5 == B 5`);
/// * integers equal floats of the same value (`I 1 == d 1.0`), and float
///   equals double when the f32 widens to the same f64 (so `f 1.5 == d 1.5`
///   but `f 1.1 != d 1.1`);
/// * long strings and byte arrays (`S`/`x`, both Erlang binaries) compare by
///   bytes;
/// * booleans, decimals and void only equal their own kind.
///
/// Inside arrays and nested tables RabbitMQ keeps the type tag next to each
/// value, so there the types must agree too (`[I 1] != [l 1]`). Those arrive
/// as wire bytes and compare byte for byte, which is the same test, with two
/// known differences: a nested `0.0` differs from `-0.0` here (Erlang: equal)
/// and a nested NaN equals itself here. Nested tables compare in wire order,
/// as in RabbitMQ.
pub fn loose_eq(a: &FieldValue, b: &FieldValue) -> bool {
    match (loose(a), loose(b)) {
        (Loose::Int(x), Loose::Int(y)) => x == y,
        (Loose::Float(x), Loose::Float(y)) => x == y,
        (Loose::Int(i), Loose::Float(f)) | (Loose::Float(f), Loose::Int(i)) => int_eq_float(i, f),
        (Loose::Bytes(x), Loose::Bytes(y)) => x == y,
        (Loose::Other(x), Loose::Other(y)) => other_eq(x, y),
        _ => false,
    }
}

fn other_eq(a: &FieldValue, b: &FieldValue) -> bool {
    match (a, b) {
        (FieldValue::Boolean(x), FieldValue::Boolean(y)) => x == y,
        (FieldValue::Void, FieldValue::Void) => true,
        (FieldValue::Encoded(x), FieldValue::Encoded(y)) => x == y,
        _ => false,
    }
}

/// The type atom `rabbit_binary_parser` gives a field value. The interface
/// erases integer and float widths, so those are guessed from the value the
/// way clients choose them (Java and pika send an int that fits 32 bits as
/// `I`).
fn rabbit_type_name(v: &FieldValue) -> &'static str {
    match v {
        FieldValue::Void => "void",
        FieldValue::Boolean(_) => "bool",
        FieldValue::Int(n) if i32::try_from(*n).is_ok() => "signedint",
        FieldValue::Int(_) => "long",
        FieldValue::Float(_) => "double",
        FieldValue::Text(_) => "longstr",
        FieldValue::Bytes(_) => "binary",
        FieldValue::Timestamp(_) => "timestamp",
        FieldValue::Encoded(bytes) => {
            let mut buf = bytes.as_slice();
            wire::render_tagged(&mut buf).map_or("unknown", |(name, _)| name)
        }
    }
}

/// Renders a binary the way Erlang's `~tp` does, so error texts match
/// RabbitMQ's: `<<"foo">>`, `<<"é"/utf8>>`, or `<<255,0>>`.
fn erlang_binary(bytes: &[u8]) -> String {
    let escape = |s: &str| {
        let mut o = String::with_capacity(s.len());
        for c in s.chars() {
            match c {
                '"' => o.push_str("\\\""),
                '\\' => o.push_str("\\\\"),
                c => o.push(c),
            }
        }
        o
    };
    match std::str::from_utf8(bytes) {
        Ok(s) if s.bytes().all(|b| (0x20..0x7f).contains(&b)) => format!("<<\"{}\">>", escape(s)),
        Ok(s) if !s.chars().any(char::is_control) => format!("<<\"{}\"/utf8>>", escape(s)),
        _ => {
            let parts: Vec<String> = bytes.iter().map(u8::to_string).collect();
            format!("<<{}>>", parts.join(","))
        }
    }
}

/// Renders a field value as Erlang's `~tp` would (approximately for floats,
/// whose shortest representation may differ in the last digits).
fn erlang_term(v: &FieldValue) -> String {
    match v {
        FieldValue::Void => "undefined".to_owned(),
        FieldValue::Boolean(b) => b.to_string(),
        FieldValue::Int(n) => n.to_string(),
        FieldValue::Float(f) => format!("{f:?}"),
        FieldValue::Text(s) => erlang_binary(s.as_bytes()),
        FieldValue::Bytes(b) => erlang_binary(b),
        FieldValue::Timestamp(n) => n.to_string(),
        FieldValue::Encoded(bytes) => {
            let mut buf = bytes.as_slice();
            match wire::render_tagged(&mut buf) {
                Some((_, term)) if buf.is_empty() => term,
                _ => erlang_binary(bytes),
            }
        }
    }
}

/// Just enough of an AMQP 0-9-1 field decoder (RabbitMQ's dialect) to word
/// refusals about `encoded` values; matching never decodes.
mod wire {
    use super::erlang_binary;

    fn take<'a>(buf: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, rest) = buf.split_at_checked(n)?;
        *buf = rest;
        Some(head)
    }

    fn be<const N: usize>(buf: &mut &[u8]) -> Option<[u8; N]> {
        take(buf, N)?.try_into().ok()
    }

    fn long_len(buf: &mut &[u8]) -> Option<usize> {
        Some(u32::from_be_bytes(be(buf)?) as usize)
    }

    /// Reads one tagged value; returns its RabbitMQ type name and `~tp` rendering.
    pub(super) fn render_tagged(buf: &mut &[u8]) -> Option<(&'static str, String)> {
        let [tag] = be::<1>(buf)?;
        Some(match tag {
            b't' => ("bool", (be::<1>(buf)?[0] != 0).to_string()),
            b'b' => ("byte", i8::from_be_bytes(be(buf)?).to_string()),
            b'B' => ("unsignedbyte", u8::from_be_bytes(be(buf)?).to_string()),
            // RabbitMQ reads `s` as a short int, not the spec's short string.
            b's' | b'U' => ("short", i16::from_be_bytes(be(buf)?).to_string()),
            b'u' => ("unsignedshort", u16::from_be_bytes(be(buf)?).to_string()),
            b'I' => ("signedint", i32::from_be_bytes(be(buf)?).to_string()),
            b'i' => ("unsignedint", u32::from_be_bytes(be(buf)?).to_string()),
            b'l' | b'L' => ("long", i64::from_be_bytes(be(buf)?).to_string()),
            b'f' => (
                "float",
                format!("{:?}", f64::from(f32::from_be_bytes(be(buf)?))),
            ),
            b'd' => ("double", format!("{:?}", f64::from_be_bytes(be(buf)?))),
            b'D' => {
                let [scale] = be::<1>(buf)?;
                let value = u32::from_be_bytes(be(buf)?);
                ("decimal", format!("{{{scale},{value}}}"))
            }
            b'S' => {
                let n = long_len(buf)?;
                ("longstr", erlang_binary(take(buf, n)?))
            }
            b'x' => {
                let n = long_len(buf)?;
                ("binary", erlang_binary(take(buf, n)?))
            }
            b'T' => ("timestamp", u64::from_be_bytes(be(buf)?).to_string()),
            b'V' => ("void", "undefined".to_owned()),
            b'A' => {
                let n = long_len(buf)?;
                let mut items = take(buf, n)?;
                let mut parts = Vec::new();
                while !items.is_empty() {
                    let (name, term) = render_tagged(&mut items)?;
                    parts.push(format!("{{{name},{term}}}"));
                }
                ("array", format!("[{}]", parts.join(",")))
            }
            b'F' => {
                let n = long_len(buf)?;
                let mut entries = take(buf, n)?;
                let mut parts = Vec::new();
                while !entries.is_empty() {
                    let [klen] = be::<1>(&mut entries)?;
                    let key = take(&mut entries, klen.into())?;
                    let (name, term) = render_tagged(&mut entries)?;
                    parts.push(format!("{{{},{name},{term}}}", erlang_binary(key)));
                }
                ("table", format!("[{}]", parts.join(",")))
            }
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> FieldValue {
        FieldValue::Text(v.to_owned())
    }

    fn table(entries: &[(&str, FieldValue)]) -> FieldTable {
        entries
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect()
    }

    /// Wire encodings (tag first), as the host passes `encoded` values.
    mod w {
        pub fn int(n: i32) -> Vec<u8> {
            [&[b'I'][..], &n.to_be_bytes()].concat()
        }
        pub fn long(n: i64) -> Vec<u8> {
            [&[b'l'][..], &n.to_be_bytes()].concat()
        }
        pub fn short(n: i16) -> Vec<u8> {
            [&[b's'][..], &n.to_be_bytes()].concat()
        }
        pub fn str(s: &str) -> Vec<u8> {
            [&[b'S'][..], &(s.len() as u32).to_be_bytes(), s.as_bytes()].concat()
        }
        pub fn decimal(scale: u8, value: u32) -> Vec<u8> {
            [&[b'D', scale][..], &value.to_be_bytes()].concat()
        }
        pub fn array(items: &[Vec<u8>]) -> Vec<u8> {
            let body = items.concat();
            [&[b'A'][..], &(body.len() as u32).to_be_bytes(), &body].concat()
        }
        pub fn table(entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
            let body: Vec<u8> = entries
                .iter()
                .flat_map(|(k, v)| [&[k.len() as u8][..], k.as_bytes(), v].concat())
                .collect();
            [&[b'F'][..], &(body.len() as u32).to_be_bytes(), &body].concat()
        }
    }

    fn enc(bytes: Vec<u8>) -> FieldValue {
        FieldValue::Encoded(bytes)
    }

    fn route(r: &HeadersExchange, headers: Option<&FieldTable>) -> Vec<BindingId> {
        let mut out = Vec::new();
        r.route(
            &Message {
                routing_key: "ignored".into(),
                headers: headers.cloned().unwrap_or_default(),
                properties: None,
            },
            &mut out,
        );
        out
    }

    fn one(args: &[(&str, FieldValue)], headers: Option<&[(&str, FieldValue)]>) -> bool {
        let mut r = HeadersExchange::default();
        r.bind(1, "", &table(args)).unwrap();
        let h = headers.map(table);
        route(&r, h.as_ref()) == [1]
    }

    #[test]
    fn declares_it_needs_headers() {
        const { assert!(<HeadersExchange as ExchangeType>::NEEDS_HEADERS) };
    }

    #[test]
    fn default_is_all() {
        let args = [("a", s("1")), ("b", s("2"))];
        assert!(one(
            &args,
            Some(&[("a", s("1")), ("b", s("2")), ("c", s("3"))])
        ));
        assert!(!one(&args, Some(&[("a", s("1"))])));
        assert!(!one(&args, Some(&[("a", s("1")), ("b", s("x"))])));
    }

    #[test]
    fn any_needs_one_matching_entry() {
        let args = [("x-match", s("any")), ("a", s("1")), ("b", s("2"))];
        assert!(one(&args, Some(&[("a", s("1"))])));
        assert!(one(&args, Some(&[("a", s("0")), ("b", s("2"))])));
        assert!(!one(&args, Some(&[("a", s("0")), ("c", s("2"))])));
        assert!(!one(&args, None));
    }

    #[test]
    fn empty_pattern_all_matches_everything_any_matches_nothing() {
        assert!(one(&[], None));
        assert!(one(&[], Some(&[("a", s("1"))])));
        assert!(one(&[("x-match", s("all"))], None));
        assert!(!one(&[("x-match", s("any"))], None));
        assert!(!one(&[("x-match", s("any"))], Some(&[("a", s("1"))])));
        // Only x- keys: ignored by all/any, so still "empty".
        assert!(one(&[("x-foo", s("1"))], Some(&[])));
        assert!(!one(
            &[("x-match", s("any")), ("x-foo", s("1"))],
            Some(&[("x-foo", s("1"))])
        ));
    }

    #[test]
    fn missing_headers_fail_non_empty_all() {
        assert!(!one(&[("a", s("1"))], None));
        assert!(!one(&[("a", FieldValue::Void)], None));
    }

    #[test]
    fn x_keys_ignored_unless_with_x() {
        let h: &[(&str, FieldValue)] = &[("x-tenant", s("t1"))];
        assert!(one(&[("x-tenant", s("other"))], Some(h)));
        assert!(!one(
            &[("x-match", s("any")), ("x-tenant", s("t1"))],
            Some(h)
        ));
        assert!(one(
            &[("x-match", s("all-with-x")), ("x-tenant", s("t1"))],
            Some(h)
        ));
        assert!(!one(
            &[("x-match", s("all-with-x")), ("x-tenant", s("t2"))],
            Some(h)
        ));
        assert!(one(
            &[
                ("x-match", s("any-with-x")),
                ("x-tenant", s("t1")),
                ("k", s("v"))
            ],
            Some(h)
        ));
        assert!(!one(
            &[
                ("x-match", s("any-with-x")),
                ("x-tenant", s("t2")),
                ("k", s("v"))
            ],
            Some(h)
        ));
        // x-match is never a pattern entry, even with-x.
        assert!(one(&[("x-match", s("all-with-x"))], Some(&[])));
        // Message header keys starting with x- are ordinary for matching purposes.
        assert!(one(
            &[("x-match", s("all-with-x")), ("x-a", s("1"))],
            Some(&[("x-a", s("1"))])
        ));
    }

    #[test]
    fn void_pattern_means_presence() {
        let args = [("flag", FieldValue::Void)];
        assert!(one(&args, Some(&[("flag", s("anything"))])));
        assert!(one(&args, Some(&[("flag", FieldValue::Void)])));
        assert!(one(&args, Some(&[("flag", FieldValue::Boolean(false))])));
        assert!(!one(&args, Some(&[("other", s("1"))])));
        let any = [
            ("x-match", s("any")),
            ("flag", FieldValue::Void),
            ("k", s("v")),
        ];
        assert!(one(&any, Some(&[("flag", FieldValue::Int(0))])));
    }

    #[test]
    fn void_header_only_equals_void_or_presence() {
        assert!(!one(&[("a", s(""))], Some(&[("a", FieldValue::Void)])));
        assert!(!one(
            &[("a", FieldValue::Int(0))],
            Some(&[("a", FieldValue::Void)])
        ));
    }

    #[test]
    fn integers_of_any_width_compare_by_value() {
        // Every integer width arrives as `Int`; floats of both widths as `Float`.
        let ints = [
            FieldValue::Int(5),
            FieldValue::Timestamp(5),
            FieldValue::Float(5.0),
            FieldValue::Float(f64::from(5.0f32)),
        ];
        for a in &ints {
            for b in &ints {
                assert!(loose_eq(a, b), "{a:?} == {b:?}");
                assert!(one(&[("n", a.clone())], Some(&[("n", b.clone())])));
            }
        }
        assert!(!loose_eq(
            &FieldValue::Int(-1),
            &FieldValue::Int(u32::MAX.into())
        ));
        assert!(!loose_eq(&FieldValue::Int(-1), &FieldValue::Int(255)));
        assert!(!loose_eq(&FieldValue::Int(1), &FieldValue::Float(1.5)));
        assert!(loose_eq(
            &FieldValue::Int(i64::MIN),
            &FieldValue::Int(i64::MIN)
        ));
        assert!(!loose_eq(
            &FieldValue::Timestamp(u64::MAX),
            &FieldValue::Int(-1)
        ));
        assert!(!loose_eq(
            &FieldValue::Int((1 << 53) + 1),
            &FieldValue::Float(((1u64 << 53) + 1) as f64)
        ));
    }

    #[test]
    fn floats_compare_after_widening() {
        assert!(loose_eq(
            &FieldValue::Float(f64::from(1.5f32)),
            &FieldValue::Float(1.5)
        ));
        assert!(!loose_eq(
            &FieldValue::Float(f64::from(1.1f32)),
            &FieldValue::Float(1.1)
        ));
        assert!(!loose_eq(
            &FieldValue::Float(f64::NAN),
            &FieldValue::Float(f64::NAN)
        ));
    }

    #[test]
    fn strings_and_other_kinds() {
        assert!(loose_eq(&s("abc"), &s("abc")));
        assert!(!loose_eq(&s("abc"), &s("ABC")));
        assert!(loose_eq(&s("abc"), &FieldValue::Bytes(b"abc".to_vec())));
        assert!(loose_eq(
            &FieldValue::Bytes(vec![0xff]),
            &FieldValue::Bytes(vec![0xff])
        ));
        assert!(!loose_eq(&s("1"), &FieldValue::Int(1)));
        assert!(!loose_eq(&s("true"), &FieldValue::Boolean(true)));
        assert!(!loose_eq(&FieldValue::Boolean(true), &FieldValue::Int(1)));
        assert!(loose_eq(
            &FieldValue::Boolean(false),
            &FieldValue::Boolean(false)
        ));
        let d = |scale, value| enc(w::decimal(scale, value));
        assert!(loose_eq(&d(2, 100), &d(2, 100)));
        assert!(!loose_eq(&d(2, 100), &d(1, 10)));
        assert!(!loose_eq(&d(0, 1), &FieldValue::Int(1)));
        assert!(!loose_eq(&d(0, 1), &FieldValue::Bytes(w::decimal(0, 1))));
    }

    #[test]
    fn nested_values_keep_their_type_tags() {
        let arr = |v: &[Vec<u8>]| enc(w::array(v));
        assert!(loose_eq(
            &arr(&[w::int(1), w::str("a")]),
            &arr(&[w::int(1), w::str("a")])
        ));
        assert!(!loose_eq(&arr(&[w::int(1)]), &arr(&[w::long(1)])));
        assert!(!loose_eq(
            &arr(&[w::str("a")]),
            &arr(&[w::str("a"), w::str("a")])
        ));
        let t1 = enc(w::table(&[("k", w::int(1))]));
        let t2 = enc(w::table(&[("k", w::int(1))]));
        let t3 = enc(w::table(&[("k", w::short(1))]));
        assert!(loose_eq(&t1, &t2));
        assert!(!loose_eq(&t1, &t3));
        assert!(one(&[("t", t1.clone())], Some(&[("t", t2)])));
        // Arrays and tables never equal scalars.
        assert!(!loose_eq(&arr(&[]), &s("")));
    }

    #[test]
    fn bad_x_match_refused_with_rabbitmq_wording() {
        let mut r = HeadersExchange::default();
        let err = r.bind(1, "", &table(&[("x-match", s("foo"))])).unwrap_err();
        assert_eq!(
            err,
            "Invalid x-match field value <<\"foo\">>; expected all, any, all-with-x, or any-with-x"
        );
        let err = r.bind(1, "", &table(&[("x-match", s("ALL"))])).unwrap_err();
        assert!(err.starts_with("Invalid x-match field value <<\"ALL\">>;"));
        let err = r
            .bind(1, "", &table(&[("x-match", FieldValue::Int(1))]))
            .unwrap_err();
        assert_eq!(
            err,
            "Invalid x-match field type signedint (value 1); expected longstr"
        );
        let err = r
            .bind(1, "", &table(&[("x-match", FieldValue::Int(1 << 40))]))
            .unwrap_err();
        assert_eq!(
            err,
            "Invalid x-match field type long (value 1099511627776); expected longstr"
        );
        let err = r
            .bind(1, "", &table(&[("x-match", FieldValue::Boolean(true))]))
            .unwrap_err();
        assert_eq!(
            err,
            "Invalid x-match field type bool (value true); expected longstr"
        );
        let err = r
            .bind(
                1,
                "",
                &table(&[("x-match", enc(w::array(&[w::int(1), w::str("a")])))]),
            )
            .unwrap_err();
        assert_eq!(
            err,
            "Invalid x-match field type array (value [{signedint,1},{longstr,<<\"a\">>}]); \
             expected longstr"
        );
        let err = r
            .bind(
                1,
                "",
                &table(&[("x-match", enc(w::table(&[("k", w::decimal(2, 5))])))]),
            )
            .unwrap_err();
        assert_eq!(
            err,
            "Invalid x-match field type table (value [{<<\"k\">>,decimal,{2,5}}]); \
             expected longstr"
        );
        // A byte array that spells "all" is still not a longstr…
        let err = r
            .bind(
                1,
                "",
                &table(&[("x-match", FieldValue::Bytes(b"all".to_vec()))]),
            )
            .unwrap_err();
        assert_eq!(
            err,
            "Invalid x-match field type binary (value <<\"all\">>); expected longstr"
        );
        // …while bytes that are not UTF-8 were a longstr that isn't.
        let err = r
            .bind(1, "", &table(&[("x-match", FieldValue::Bytes(vec![0xff]))]))
            .unwrap_err();
        assert!(err.starts_with("Invalid x-match field value <<255>>;"));
        assert!(route(&r, None).is_empty(), "refused bindings are not added");
    }

    #[test]
    fn refused_rebind_keeps_old_binding() {
        let mut r = HeadersExchange::default();
        r.bind(1, "", &FieldTable::default()).unwrap();
        assert!(r.bind(1, "", &table(&[("x-match", s("nope"))])).is_err());
        assert_eq!(route(&r, None), [1]);
    }

    #[test]
    fn erlang_rendering() {
        assert_eq!(erlang_binary(b"a\"b"), "<<\"a\\\"b\">>");
        assert_eq!(erlang_binary("é".as_bytes()), "<<\"é\"/utf8>>");
        assert_eq!(erlang_binary(&[0xff, 0]), "<<255,0>>");
        assert_eq!(erlang_binary(b""), "<<\"\">>");
        assert_eq!(erlang_term(&FieldValue::Float(1.0)), "1.0");
        assert_eq!(erlang_term(&enc(w::decimal(1, 15))), "{1,15}");
        // Truncated wire bytes fall back to the raw binary.
        assert_eq!(erlang_term(&enc(vec![b'A', 0, 0])), "<<65,0,0>>");
        assert_eq!(rabbit_type_name(&enc(vec![b'?'])), "unknown");
    }

    #[test]
    fn several_bindings_unbind_and_rebind() {
        let mut r = HeadersExchange::default();
        r.bind(1, "", &table(&[("a", s("1"))])).unwrap();
        r.bind(
            2,
            "",
            &table(&[("x-match", s("any")), ("a", s("1")), ("b", s("2"))]),
        )
        .unwrap();
        r.bind(3, "", &table(&[("b", s("2"))])).unwrap();
        let h = table(&[("a", s("1"))]);
        assert_eq!(route(&r, Some(&h)), [1, 2]);
        r.bind(1, "", &table(&[("a", s("2"))])).unwrap();
        assert_eq!(route(&r, Some(&h)), [2]);
        r.unbind(2);
        r.unbind(2);
        assert!(route(&r, Some(&h)).is_empty());
        assert_eq!(route(&r, Some(&table(&[("b", s("2"))]))), [3]);
    }

    #[test]
    fn many_headers_use_the_sorted_index_with_first_key_winning() {
        let mut entries: Vec<(String, FieldValue)> = (0..40)
            .rev()
            .map(|i| (format!("h{i}"), FieldValue::Int(i)))
            .collect();
        entries.push(("h7".into(), FieldValue::Int(-7)));
        let mut r = HeadersExchange::default();
        r.bind(1, "", &table(&[("h7", FieldValue::Int(7))]))
            .unwrap();
        r.bind(2, "", &table(&[("h7", FieldValue::Int(-7))]))
            .unwrap();
        r.bind(
            3,
            "",
            &table(&[("h0", FieldValue::Int(0)), ("h39", FieldValue::Int(39))]),
        )
        .unwrap();
        r.bind(4, "", &table(&[("h40", FieldValue::Void)])).unwrap();
        assert!(matches!(Headers::new(&entries), Headers::Many(_)));
        assert_eq!(route(&r, Some(&entries)), [1, 3]);
        // The same answers from the linear scan (h39 is still first).
        entries.truncate(INDEX_HEADERS_ABOVE - 3);
        entries.push(("h0".into(), FieldValue::Int(0)));
        entries.push(("h7".into(), FieldValue::Int(7)));
        entries.push(("h7".into(), FieldValue::Int(-7)));
        assert!(matches!(Headers::new(&entries), Headers::Few(_)));
        assert_eq!(route(&r, Some(&entries)), [1, 3]);
    }

    #[test]
    fn duplicate_pattern_keys_keep_the_first() {
        let args = [("a", s("1")), ("a", s("2"))];
        assert!(one(&args, Some(&[("a", s("1"))])));
    }
}
