//! One frame on a peer connection:
//!
//! ```text
//! u32 length of what follows | u8 kind | u64 correlation id | u16 call | body
//! ```
//!
//! Big-endian, like AMQP's own frames. A request names its call; an answer or a failure
//! repeats the request's id (and call) so the caller matches it to its request, in whatever
//! order answers come. The body is the postcard encoding of the call, its answer or a
//! `Failure`.

use std::io;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;

/// Bytes of a frame after its length: kind, id, call.
const HEADER: usize = 1 + 8 + 2;
/// The largest frame accepted: a metadata or quorum snapshot of a big broker still fits; a
/// corrupt length does not make us allocate gigabytes.
pub const MAX_FRAME: usize = 512 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Request = 1,
    Answer = 2,
    Failure = 3,
}

impl Kind {
    fn from_byte(b: u8) -> Option<Kind> {
        match b {
            1 => Some(Kind::Request),
            2 => Some(Kind::Answer),
            3 => Some(Kind::Failure),
            _ => None,
        }
    }
}

#[derive(Debug)]
pub struct Frame {
    pub kind: Kind,
    pub id: u64,
    pub call: u16,
    pub body: Bytes,
}

fn invalid(reason: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, reason)
}

/// Writes one frame (buffered: the caller flushes).
pub async fn write<W: AsyncWrite + Unpin>(w: &mut W, frame: &Frame) -> io::Result<()> {
    let len = HEADER + frame.body.len();
    if len > MAX_FRAME {
        return Err(invalid(format!(
            "a frame of {len} bytes is over the limit of {MAX_FRAME}"
        )));
    }
    let mut head = [0u8; 4 + HEADER];
    head[..4].copy_from_slice(&(len as u32).to_be_bytes());
    head[4] = frame.kind as u8;
    head[5..13].copy_from_slice(&frame.id.to_be_bytes());
    head[13..15].copy_from_slice(&frame.call.to_be_bytes());
    w.write_all(&head).await?;
    w.write_all(&frame.body).await
}

/// Writes the frames `rx` yields until it closes, flushing whenever it runs dry: a burst
/// shares one write. Ends with an error when the connection breaks.
pub async fn pump(writer: OwnedWriteHalf, mut rx: mpsc::Receiver<Frame>) -> io::Result<()> {
    let mut w = BufWriter::with_capacity(64 * 1024, writer);
    while let Some(f) = rx.recv().await {
        write(&mut w, &f).await?;
        while let Ok(f) = rx.try_recv() {
            write(&mut w, &f).await?;
        }
        w.flush().await?;
    }
    w.shutdown().await
}

/// Reads one frame; `Ok(None)` on a clean end of stream between frames.
pub async fn read<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Option<Frame>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = checked_len(len)?;
    let mut head = [0u8; HEADER];
    r.read_exact(&mut head).await?;
    let mut body = BytesMut::zeroed(len - HEADER);
    r.read_exact(&mut body).await?;
    assemble(head, body.freeze()).map(Some)
}

/// Cuts one frame off the front of `buf`: the frame and the bytes it took, `Ok(None)` when
/// `buf` holds no whole frame yet.
pub fn parse(buf: &[u8]) -> io::Result<Option<(Frame, usize)>> {
    let Some(len) = buf.get(..4) else {
        return Ok(None);
    };
    let len = checked_len([len[0], len[1], len[2], len[3]])?;
    let Some(frame) = buf.get(4..4 + len) else {
        return Ok(None);
    };
    let mut head = [0u8; HEADER];
    head.copy_from_slice(&frame[..HEADER]);
    let f = assemble(head, Bytes::copy_from_slice(&frame[HEADER..]))?;
    Ok(Some((f, 4 + len)))
}

fn checked_len(len: [u8; 4]) -> io::Result<usize> {
    let len = u32::from_be_bytes(len) as usize;
    if !(HEADER..=MAX_FRAME).contains(&len) {
        return Err(invalid(format!("a frame length of {len} bytes")));
    }
    Ok(len)
}

fn assemble(head: [u8; HEADER], body: Bytes) -> io::Result<Frame> {
    let kind =
        Kind::from_byte(head[0]).ok_or_else(|| invalid(format!("frame kind {}", head[0])))?;
    let id = u64::from_be_bytes([
        head[1], head[2], head[3], head[4], head[5], head[6], head[7], head[8],
    ]);
    let call = u16::from_be_bytes([head[9], head[10]]);
    Ok(Frame {
        kind,
        id,
        call,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_frame_reads_back_as_written() {
        let mut buf = Vec::new();
        let f = Frame {
            kind: Kind::Answer,
            id: 0x0102_0304_0506_0708,
            call: 513,
            body: Bytes::from_static(b"body"),
        };
        write(&mut buf, &f).await.unwrap();
        assert_eq!(&buf[..4], &[0, 0, 0, 15]);
        let mut r = &buf[..];
        let back = read(&mut r).await.unwrap().unwrap();
        assert_eq!((back.kind, back.id, back.call), (Kind::Answer, f.id, 513));
        assert_eq!(&back.body[..], b"body");
        assert!(read(&mut r).await.unwrap().is_none());
        let (parsed, used) = parse(&buf).unwrap().unwrap();
        assert_eq!((parsed.id, used), (f.id, buf.len()));
        assert!(parse(&buf[..buf.len() - 1]).unwrap().is_none());
    }

    #[tokio::test]
    async fn bad_lengths_and_kinds_are_errors_not_allocations() {
        let mut r: &[u8] = &[0xff, 0xff, 0xff, 0xff];
        assert!(read(&mut r).await.is_err());
        let mut r: &[u8] = &[0, 0, 0, 2, 1, 1];
        assert!(read(&mut r).await.is_err());
        let mut r: &[u8] = &[0, 0, 0, 11, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert!(read(&mut r).await.is_err());
        // Cut short inside a frame: an error, not a clean end.
        let mut r: &[u8] = &[0, 0, 0, 20, 1, 0];
        assert!(read(&mut r).await.is_err());
    }
}
