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

use amq_protocol::types::{AMQPValue, FieldTable};

use crate::routing::exchange_type::{BindingId, ExchangeRouter, ExchangeType, RouteInput};

/// Factory for headers exchanges.
#[derive(Debug, Default, Clone, Copy)]
pub struct HeadersExchange;

impl ExchangeType for HeadersExchange {
    fn name(&self) -> &'static str {
        "headers"
    }

    fn create(&self, _arguments: &FieldTable) -> Result<Box<dyn ExchangeRouter>, String> {
        Ok(Box::new(HeadersRouter::default()))
    }
}

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
    let Some(value) = arguments.inner().get("x-match") else {
        // The spec is vague about omitting x-match; RabbitMQ defaults to all.
        return Ok(MatchKind::All);
    };
    let bytes = match value {
        AMQPValue::LongString(s) => s.as_bytes(),
        AMQPValue::ShortString(s) => s.as_str().as_bytes(),
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
    pattern: Vec<(String, Option<AMQPValue>)>,
}

impl Binding {
    fn matches(&self, headers: Option<&FieldTable>) -> bool {
        let entry_matches = |(key, want): &(String, Option<AMQPValue>)| {
            let got = headers.and_then(|h| h.inner().get(key.as_str()));
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

/// Routing state of one headers exchange.
#[derive(Debug, Default)]
pub struct HeadersRouter {
    bindings: Vec<Binding>,
}

impl ExchangeRouter for HeadersRouter {
    fn bind(
        &mut self,
        id: BindingId,
        _routing_key: &str,
        arguments: &FieldTable,
    ) -> Result<(), String> {
        let kind = parse_x_match(arguments)?;
        let pattern = arguments
            .into_iter()
            .filter(|(k, _)| {
                let k = k.as_str();
                k != "x-match" && (kind.keeps_x_keys() || !k.starts_with("x-"))
            })
            .map(|(k, v)| {
                let want = match v {
                    AMQPValue::Void => None,
                    v => Some(v.clone()),
                };
                (k.as_str().to_owned(), want)
            })
            .collect();
        self.unbind(id);
        self.bindings.push(Binding { id, kind, pattern });
        Ok(())
    }

    fn unbind(&mut self, id: BindingId) {
        self.bindings.retain(|b| b.id != id);
    }

    fn route(&self, msg: &RouteInput<'_>, out: &mut Vec<BindingId>) {
        out.extend(
            self.bindings
                .iter()
                .filter(|b| b.matches(msg.headers))
                .map(|b| b.id),
        );
    }
}

enum Loose<'a> {
    Int(i128),
    Float(f64),
    Bytes(&'a [u8]),
    Other(&'a AMQPValue),
}

fn loose(v: &AMQPValue) -> Loose<'_> {
    match v {
        AMQPValue::ShortShortInt(n) => Loose::Int((*n).into()),
        AMQPValue::ShortShortUInt(n) => Loose::Int((*n).into()),
        AMQPValue::ShortInt(n) => Loose::Int((*n).into()),
        AMQPValue::ShortUInt(n) => Loose::Int((*n).into()),
        AMQPValue::LongInt(n) => Loose::Int((*n).into()),
        AMQPValue::LongUInt(n) => Loose::Int((*n).into()),
        AMQPValue::LongLongInt(n) => Loose::Int((*n).into()),
        AMQPValue::Timestamp(n) => Loose::Int((*n).into()),
        AMQPValue::Float(f) => Loose::Float((*f).into()),
        AMQPValue::Double(f) => Loose::Float(*f),
        AMQPValue::LongString(s) => Loose::Bytes(s.as_bytes()),
        AMQPValue::ShortString(s) => Loose::Bytes(s.as_str().as_bytes()),
        AMQPValue::ByteArray(b) => Loose::Bytes(b.as_slice()),
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
/// value, so there the types must agree too (`[I 1] != [l 1]`). One known
/// difference: RabbitMQ compares nested tables in wire order, while
/// `FieldTable` is a sorted map, so tables with the same entries in a different
/// order are equal here and unequal in RabbitMQ.
pub fn loose_eq(a: &AMQPValue, b: &AMQPValue) -> bool {
    match (loose(a), loose(b)) {
        (Loose::Int(x), Loose::Int(y)) => x == y,
        (Loose::Float(x), Loose::Float(y)) => x == y,
        (Loose::Int(i), Loose::Float(f)) | (Loose::Float(f), Loose::Int(i)) => int_eq_float(i, f),
        (Loose::Bytes(x), Loose::Bytes(y)) => x == y,
        (Loose::Other(x), Loose::Other(y)) => other_eq(x, y),
        _ => false,
    }
}

fn other_eq(a: &AMQPValue, b: &AMQPValue) -> bool {
    match (a, b) {
        (AMQPValue::Boolean(x), AMQPValue::Boolean(y)) => x == y,
        (AMQPValue::DecimalValue(x), AMQPValue::DecimalValue(y)) => x == y,
        (AMQPValue::Void, AMQPValue::Void) => true,
        (AMQPValue::FieldArray(x), AMQPValue::FieldArray(y)) => {
            let (x, y) = (x.as_slice(), y.as_slice());
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| tagged_eq(x, y))
        }
        (AMQPValue::FieldTable(x), AMQPValue::FieldTable(y)) => {
            let (x, y) = (x.inner(), y.inner());
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|((kx, vx), (ky, vy))| kx == ky && tagged_eq(vx, vy))
        }
        _ => false,
    }
}

/// Equality of `{Type, Value}` pairs as found inside arrays and tables.
fn tagged_eq(a: &AMQPValue, b: &AMQPValue) -> bool {
    rabbit_type_name(a) == rabbit_type_name(b) && loose_eq(a, b)
}

/// The type atom `rabbit_binary_parser` gives each field type.
fn rabbit_type_name(v: &AMQPValue) -> &'static str {
    match v {
        AMQPValue::Boolean(_) => "bool",
        AMQPValue::ShortShortInt(_) => "byte",
        AMQPValue::ShortShortUInt(_) => "unsignedbyte",
        AMQPValue::ShortInt(_) => "short",
        AMQPValue::ShortUInt(_) => "unsignedshort",
        AMQPValue::LongInt(_) => "signedint",
        AMQPValue::LongUInt(_) => "unsignedint",
        AMQPValue::LongLongInt(_) => "long",
        AMQPValue::Float(_) => "float",
        AMQPValue::Double(_) => "double",
        AMQPValue::DecimalValue(_) => "decimal",
        // No wire type decodes to a short string in RabbitMQ; it is a string.
        AMQPValue::ShortString(_) | AMQPValue::LongString(_) => "longstr",
        AMQPValue::FieldArray(_) => "array",
        AMQPValue::Timestamp(_) => "timestamp",
        AMQPValue::FieldTable(_) => "table",
        AMQPValue::ByteArray(_) => "binary",
        AMQPValue::Void => "void",
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

/// Renders a decoded field value as Erlang's `~tp` would (approximately for
/// floats, whose shortest representation may differ in the last digits).
fn erlang_term(v: &AMQPValue) -> String {
    match v {
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::ShortShortInt(n) => n.to_string(),
        AMQPValue::ShortShortUInt(n) => n.to_string(),
        AMQPValue::ShortInt(n) => n.to_string(),
        AMQPValue::ShortUInt(n) => n.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        AMQPValue::LongUInt(n) => n.to_string(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        AMQPValue::Timestamp(n) => n.to_string(),
        AMQPValue::Float(f) => format!("{:?}", f64::from(*f)),
        AMQPValue::Double(f) => format!("{f:?}"),
        AMQPValue::DecimalValue(d) => format!("{{{},{}}}", d.scale, d.value),
        AMQPValue::ShortString(s) => erlang_binary(s.as_str().as_bytes()),
        AMQPValue::LongString(s) => erlang_binary(s.as_bytes()),
        AMQPValue::ByteArray(b) => erlang_binary(b.as_slice()),
        AMQPValue::Void => "undefined".to_owned(),
        AMQPValue::FieldArray(a) => {
            let parts: Vec<String> = a
                .as_slice()
                .iter()
                .map(|v| format!("{{{},{}}}", rabbit_type_name(v), erlang_term(v)))
                .collect();
            format!("[{}]", parts.join(","))
        }
        AMQPValue::FieldTable(t) => {
            let parts: Vec<String> = t
                .into_iter()
                .map(|(k, v)| {
                    format!(
                        "{{{},{},{}}}",
                        erlang_binary(k.as_str().as_bytes()),
                        rabbit_type_name(v),
                        erlang_term(v)
                    )
                })
                .collect();
            format!("[{}]", parts.join(","))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::types::{ByteArray, DecimalValue, FieldArray, LongString};

    fn s(v: &str) -> AMQPValue {
        AMQPValue::LongString(LongString::from(v))
    }

    fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in entries {
            t.insert((*k).into(), v.clone());
        }
        t
    }

    fn route(r: &HeadersRouter, headers: Option<&FieldTable>) -> Vec<BindingId> {
        let mut out = Vec::new();
        r.route(
            &RouteInput {
                routing_key: "ignored",
                headers,
            },
            &mut out,
        );
        out
    }

    fn one(args: &[(&str, AMQPValue)], headers: Option<&[(&str, AMQPValue)]>) -> bool {
        let mut r = HeadersRouter::default();
        r.bind(1, "", &table(args)).unwrap();
        let h = headers.map(table);
        route(&r, h.as_ref()) == [1]
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
        assert!(!one(&[("a", AMQPValue::Void)], None));
    }

    #[test]
    fn x_keys_ignored_unless_with_x() {
        let h: &[(&str, AMQPValue)] = &[("x-tenant", s("t1"))];
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
        let args = [("flag", AMQPValue::Void)];
        assert!(one(&args, Some(&[("flag", s("anything"))])));
        assert!(one(&args, Some(&[("flag", AMQPValue::Void)])));
        assert!(one(&args, Some(&[("flag", AMQPValue::Boolean(false))])));
        assert!(!one(&args, Some(&[("other", s("1"))])));
        let any = [
            ("x-match", s("any")),
            ("flag", AMQPValue::Void),
            ("k", s("v")),
        ];
        assert!(one(&any, Some(&[("flag", AMQPValue::LongInt(0))])));
    }

    #[test]
    fn void_header_only_equals_void_or_presence() {
        assert!(!one(&[("a", s(""))], Some(&[("a", AMQPValue::Void)])));
        assert!(!one(
            &[("a", AMQPValue::LongInt(0))],
            Some(&[("a", AMQPValue::Void)])
        ));
    }

    #[test]
    fn integers_of_any_width_compare_by_value() {
        let ints = [
            AMQPValue::ShortShortInt(5),
            AMQPValue::ShortShortUInt(5),
            AMQPValue::ShortInt(5),
            AMQPValue::ShortUInt(5),
            AMQPValue::LongInt(5),
            AMQPValue::LongUInt(5),
            AMQPValue::LongLongInt(5),
            AMQPValue::Timestamp(5),
            AMQPValue::Double(5.0),
            AMQPValue::Float(5.0),
        ];
        for a in &ints {
            for b in &ints {
                assert!(loose_eq(a, b), "{a:?} == {b:?}");
                assert!(one(&[("n", a.clone())], Some(&[("n", b.clone())])));
            }
        }
        assert!(!loose_eq(
            &AMQPValue::LongInt(-1),
            &AMQPValue::LongUInt(u32::MAX)
        ));
        assert!(!loose_eq(
            &AMQPValue::ShortShortInt(-1),
            &AMQPValue::ShortShortUInt(255)
        ));
        assert!(!loose_eq(&AMQPValue::LongInt(1), &AMQPValue::Double(1.5)));
        assert!(loose_eq(
            &AMQPValue::LongLongInt(i64::MIN),
            &AMQPValue::LongLongInt(i64::MIN)
        ));
        assert!(!loose_eq(
            &AMQPValue::Timestamp(u64::MAX),
            &AMQPValue::LongLongInt(-1)
        ));
    }

    #[test]
    fn floats_compare_after_widening() {
        assert!(loose_eq(&AMQPValue::Float(1.5), &AMQPValue::Double(1.5)));
        assert!(!loose_eq(&AMQPValue::Float(1.1), &AMQPValue::Double(1.1)));
        assert!(!loose_eq(
            &AMQPValue::Double(f64::NAN),
            &AMQPValue::Double(f64::NAN)
        ));
    }

    #[test]
    fn strings_and_other_kinds() {
        assert!(loose_eq(&s("abc"), &s("abc")));
        assert!(!loose_eq(&s("abc"), &s("ABC")));
        assert!(loose_eq(
            &s("abc"),
            &AMQPValue::ByteArray(ByteArray::from(b"abc".to_vec()))
        ));
        assert!(!loose_eq(&s("1"), &AMQPValue::LongInt(1)));
        assert!(!loose_eq(&s("true"), &AMQPValue::Boolean(true)));
        assert!(!loose_eq(
            &AMQPValue::Boolean(true),
            &AMQPValue::ShortShortUInt(1)
        ));
        assert!(loose_eq(
            &AMQPValue::Boolean(false),
            &AMQPValue::Boolean(false)
        ));
        let d = |scale, value| AMQPValue::DecimalValue(DecimalValue { scale, value });
        assert!(loose_eq(&d(2, 100), &d(2, 100)));
        assert!(!loose_eq(&d(2, 100), &d(1, 10)));
        assert!(!loose_eq(&d(0, 1), &AMQPValue::LongInt(1)));
    }

    #[test]
    fn nested_values_keep_their_type_tags() {
        let arr = |v: Vec<AMQPValue>| AMQPValue::FieldArray(FieldArray::from(v));
        assert!(loose_eq(
            &arr(vec![AMQPValue::LongInt(1), s("a")]),
            &arr(vec![AMQPValue::LongInt(1), s("a")])
        ));
        assert!(!loose_eq(
            &arr(vec![AMQPValue::LongInt(1)]),
            &arr(vec![AMQPValue::LongLongInt(1)])
        ));
        assert!(!loose_eq(&arr(vec![s("a")]), &arr(vec![s("a"), s("a")])));
        let t1 = AMQPValue::FieldTable(table(&[("k", AMQPValue::LongInt(1))]));
        let t2 = AMQPValue::FieldTable(table(&[("k", AMQPValue::LongInt(1))]));
        let t3 = AMQPValue::FieldTable(table(&[("k", AMQPValue::ShortInt(1))]));
        assert!(loose_eq(&t1, &t2));
        assert!(!loose_eq(&t1, &t3));
        assert!(one(&[("t", t1.clone())], Some(&[("t", t2)])));
    }

    #[test]
    fn bad_x_match_refused_with_rabbitmq_wording() {
        let mut r = HeadersRouter::default();
        let err = r.bind(1, "", &table(&[("x-match", s("foo"))])).unwrap_err();
        assert_eq!(
            err,
            "Invalid x-match field value <<\"foo\">>; expected all, any, all-with-x, or any-with-x"
        );
        let err = r.bind(1, "", &table(&[("x-match", s("ALL"))])).unwrap_err();
        assert!(err.starts_with("Invalid x-match field value <<\"ALL\">>;"));
        let err = r
            .bind(1, "", &table(&[("x-match", AMQPValue::LongInt(1))]))
            .unwrap_err();
        assert_eq!(
            err,
            "Invalid x-match field type signedint (value 1); expected longstr"
        );
        let err = r
            .bind(1, "", &table(&[("x-match", AMQPValue::Boolean(true))]))
            .unwrap_err();
        assert_eq!(
            err,
            "Invalid x-match field type bool (value true); expected longstr"
        );
        assert!(route(&r, None).is_empty(), "refused bindings are not added");
    }

    #[test]
    fn refused_rebind_keeps_old_binding() {
        let mut r = HeadersRouter::default();
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
        assert_eq!(erlang_term(&AMQPValue::Double(1.0)), "1.0");
    }

    #[test]
    fn several_bindings_unbind_and_rebind() {
        let mut r = HeadersRouter::default();
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
}
