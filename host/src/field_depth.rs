//! How deep AMQP field tables and arrays nest, measured without recursion.
//!
//! amq-protocol decodes tables recursively, and so do serde, `Drop` and `Debug` on what it
//! returns: a table nested a few thousand levels deep (a few KiB, well under `frame_max`)
//! overflows a worker's stack and aborts the whole node, and one nested 64 levels deep cannot
//! be read back from the metadata log's JSON. Every decoder fed by clients, peers or the disk
//! therefore measures the nesting first, with an explicit stack, and refuses anything deeper
//! than [`MAX_DEPTH`] before the recursive parser sees it. The scan follows amq-protocol's
//! grammar exactly (RabbitMQ's type tags), so a value it accepts nests no deeper than measured.

/// Tables and arrays nested inside one another, the outermost counting as one. Real headers
/// nest a few levels (`x-death` is a table in an array in a table); RabbitMQ's own are under 8.
pub const MAX_DEPTH: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DepthError {
    #[error("field table nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("malformed field table")]
    Malformed,
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Result<usize, DepthError> {
        let start = self.pos;
        let end = start.checked_add(n).ok_or(DepthError::Malformed)?;
        if end > self.buf.len() {
            return Err(DepthError::Malformed);
        }
        self.pos = end;
        Ok(start)
    }

    fn u8(&mut self) -> Result<u8, DepthError> {
        let at = self.take(1)?;
        Ok(self.buf[at])
    }

    fn u16(&mut self) -> Result<u16, DepthError> {
        let at = self.take(2)?;
        Ok(u16::from_be_bytes([self.buf[at], self.buf[at + 1]]))
    }

    fn u32(&mut self) -> Result<u32, DepthError> {
        let at = self.take(4)?;
        let b = &self.buf[at..at + 4];
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn short_string(&mut self) -> Result<(), DepthError> {
        let n = self.u8()?;
        self.take(n.into()).map(|_| ())
    }
}

#[derive(Clone, Copy)]
enum Container {
    /// Entries are a short-string key and a value.
    Table,
    /// Entries are values.
    Array,
}

/// Checks the field table that starts `buf` (its 4-byte length first) and returns how many
/// bytes it spans.
pub fn check_table(buf: &[u8]) -> Result<usize, DepthError> {
    let mut c = Cursor { buf, pos: 0 };
    scan_table(&mut c)?;
    Ok(c.pos)
}

fn scan_table(c: &mut Cursor<'_>) -> Result<(), DepthError> {
    let len = c.u32()? as usize;
    let start = c.take(len)?;
    // The body is scanned again from its start, with an explicit stack of open containers.
    c.pos = start;
    let mut stack: Vec<(Container, usize)> = vec![(Container::Table, start + len)];
    while let Some(&(kind, end)) = stack.last() {
        if c.pos == end {
            stack.pop();
            continue;
        }
        // An entry may not run past the end of its container.
        let mut inner = Cursor {
            buf: &c.buf[..end],
            pos: c.pos,
        };
        if let Container::Table = kind {
            inner.short_string()?;
        }
        let tag = inner.u8()?;
        let fixed = match tag {
            b't' | b'b' | b'B' => 1,
            b's' | b'U' | b'u' => 2,
            b'I' | b'i' | b'f' => 4,
            b'L' | b'l' | b'd' | b'T' => 8,
            b'D' => 5,
            b'V' => 0,
            b'S' | b'x' => {
                let n = inner.u32()? as usize;
                inner.take(n)?;
                c.pos = inner.pos;
                continue;
            }
            b'F' | b'A' => {
                let n = inner.u32()? as usize;
                let body = inner.take(n)?;
                if stack.len() >= MAX_DEPTH {
                    return Err(DepthError::TooDeep);
                }
                c.pos = body;
                let kind = if tag == b'F' {
                    Container::Table
                } else {
                    Container::Array
                };
                stack.push((kind, body + n));
                continue;
            }
            _ => return Err(DepthError::Malformed),
        };
        inner.take(fixed)?;
        c.pos = inner.pos;
    }
    Ok(())
}

/// Checks the tables in a method frame's payload (class and method ids first). Methods that
/// carry no table pass; a payload too short to hold its table is left to the real parser.
pub fn check_method(payload: &[u8]) -> Result<(), DepthError> {
    let mut c = Cursor {
        buf: payload,
        pos: 0,
    };
    let (Ok(class), Ok(method)) = (c.u16(), c.u16()) else {
        return Ok(());
    };
    // The fields before each method's table: u16 = reserved short, s = short string,
    // o = octet (bits).
    let before: &[u8] = match (class, method) {
        (10, 10) => b"oo",    // connection.start: version major, minor
        (10, 11) => b"",      // connection.start-ok: client-properties first
        (40, 10) => b"rsso",  // exchange.declare
        (40, 30) => b"rssso", // exchange.bind
        (40, 40) => b"rssso", // exchange.unbind
        (50, 10) => b"rso",   // queue.declare
        (50, 20) => b"rssso", // queue.bind
        (50, 50) => b"rsss",  // queue.unbind
        (60, 20) => b"rsso",  // basic.consume
        _ => return Ok(()),
    };
    for field in before {
        let skipped = match field {
            b'r' => c.u16().map(|_| ()),
            b's' => c.short_string(),
            _ => c.u8().map(|_| ()),
        };
        if skipped.is_err() {
            return Ok(());
        }
    }
    scan_table(&mut c)
}

/// Checks the `headers` table of a content header's property list (flags first).
pub fn check_properties(raw: &[u8]) -> Result<(), DepthError> {
    let mut c = Cursor { buf: raw, pos: 0 };
    let flags = c.u16()?;
    const CONTENT_TYPE: u16 = 1 << 15;
    const CONTENT_ENCODING: u16 = 1 << 14;
    const HEADERS: u16 = 1 << 13;
    if flags & HEADERS == 0 {
        return Ok(());
    }
    if flags & CONTENT_TYPE != 0 {
        c.short_string()?;
    }
    if flags & CONTENT_ENCODING != 0 {
        c.short_string()?;
    }
    scan_table(&mut c)
}

/// How deep a decoded table nests (the table itself counting as one), walked with an explicit
/// stack: for tables that did not come off the wire (the CLI's JSON, a peer's command).
pub fn table_depth(table: &amq_protocol::types::FieldTable) -> usize {
    use amq_protocol::types::AMQPValue;
    let mut deepest = 1;
    let mut stack: Vec<(&AMQPValue, usize)> = table.inner().values().map(|v| (v, 1)).collect();
    while let Some((v, depth)) = stack.pop() {
        match v {
            AMQPValue::FieldTable(t) => {
                deepest = deepest.max(depth + 1);
                stack.extend(t.inner().values().map(|v| (v, depth + 1)));
            }
            AMQPValue::FieldArray(a) => {
                deepest = deepest.max(depth + 1);
                stack.extend(a.as_slice().iter().map(|v| (v, depth + 1)));
            }
            _ => {}
        }
    }
    deepest
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table holding a table holding ... `depth` tables in all.
    fn nested(depth: usize) -> Vec<u8> {
        let mut inner: Vec<u8> = 0u32.to_be_bytes().to_vec();
        for _ in 1..depth {
            let mut t = Vec::new();
            t.push(1);
            t.push(b'k');
            t.push(b'F');
            t.extend_from_slice(&inner);
            let mut outer = (t.len() as u32).to_be_bytes().to_vec();
            outer.extend_from_slice(&t);
            inner = outer;
        }
        inner
    }

    #[test]
    fn nesting_is_measured_without_recursion() {
        assert_eq!(check_table(&nested(1)), Ok(4));
        assert!(check_table(&nested(MAX_DEPTH)).is_ok());
        assert_eq!(
            check_table(&nested(MAX_DEPTH + 1)),
            Err(DepthError::TooDeep)
        );
        // Far deeper than any stack would take recursively.
        assert_eq!(check_table(&nested(200_000)), Err(DepthError::TooDeep));
    }

    #[test]
    fn what_the_scan_accepts_amq_protocol_parses_alike() {
        let mut t = amq_protocol::types::FieldTable::default();
        t.insert("a".into(), amq_protocol::types::AMQPValue::LongLongInt(7));
        t.insert(
            "b".into(),
            amq_protocol::types::AMQPValue::FieldArray(
                vec![
                    amq_protocol::types::AMQPValue::LongString(b"x".to_vec().into()),
                    amq_protocol::types::AMQPValue::Boolean(true),
                    amq_protocol::types::AMQPValue::Double(1.5),
                    amq_protocol::types::AMQPValue::Void,
                ]
                .into(),
            ),
        );
        let bytes = cookie_factory::gen_simple(
            amq_protocol::types::generation::gen_field_table(&t),
            Vec::new(),
        )
        .unwrap();
        assert_eq!(check_table(&bytes), Ok(bytes.len()));
        // A value running past its table's end is malformed, as for the real parser.
        let mut bad = bytes.clone();
        bad[3] -= 1;
        assert!(check_table(&bad).is_err());
    }

    #[test]
    fn methods_and_headers_are_checked_where_their_tables_sit() {
        // queue.declare: reserved, queue "q", bits, arguments.
        let mut declare = vec![0, 50, 0, 10, 0, 0, 1, b'q', 0];
        declare.extend(nested(MAX_DEPTH + 1));
        assert_eq!(check_method(&declare), Err(DepthError::TooDeep));
        let mut start_ok = vec![0, 10, 0, 11];
        start_ok.extend(nested(3));
        assert!(check_method(&start_ok).is_ok());
        // Flags: content-type and headers.
        let mut props = vec![0b1010_0000, 0, 4, b't', b'e', b'x', b't'];
        props.extend(nested(MAX_DEPTH + 1));
        assert_eq!(check_properties(&props), Err(DepthError::TooDeep));
        assert!(check_properties(&[0, 0]).is_ok());
    }

    #[test]
    fn decoded_tables_are_measured_alike() {
        use amq_protocol::types::{AMQPValue, FieldTable};
        let mut t = FieldTable::default();
        for _ in 1..40 {
            let mut outer = FieldTable::default();
            outer.insert("k".into(), AMQPValue::FieldTable(t));
            t = outer;
        }
        assert_eq!(table_depth(&t), 40);
        assert_eq!(table_depth(&FieldTable::default()), 1);
    }
}
