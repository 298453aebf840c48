//! A connection's writer task: encodes what channels and queues hand it, writes in batches
//! (one syscall for many frames) and sends heartbeats when the line is otherwise idle.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use amq_protocol::protocol::{AMQPClass, basic};
use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;

use super::codec::{encode_content, encode_heartbeat, encode_method};
use super::outbound::{Outbound, OutboundRx};
use crate::amqp::short_string::short;

/// Settings the reader negotiates and the writer follows.
pub struct WriterShared {
    pub frame_max: AtomicU32,
    /// Heartbeat interval in seconds; 0 = none.
    pub heartbeat: AtomicU32,
    pub sent_bytes: AtomicU64,
}

const BATCH_BYTES: usize = 256 * 1024;

/// Channels whose close went out (ours, or our close-ok to the client's): nothing but
/// close and close-ok may follow on that number until it is opened again. Work that was in
/// flight when the channel closed (a confirm, a delivery) is dropped here, in the one place
/// that sees every frame in order; the client would take it for a frame on an unknown channel.
#[derive(Default)]
struct ClosedChannels(std::collections::HashSet<u16>);

impl ClosedChannels {
    /// Whether `item` may go out, noting closes and opens as they pass.
    fn admit(&mut self, item: &Outbound) -> bool {
        use amq_protocol::protocol::channel::AMQPMethod as Ch;
        let channel = match item {
            Outbound::Method { channel, method } => {
                match method {
                    AMQPClass::Channel(Ch::OpenOk(_)) => {
                        self.0.remove(channel);
                        return true;
                    }
                    AMQPClass::Channel(Ch::Close(_) | Ch::CloseOk(_)) => {
                        self.0.insert(*channel);
                        return true;
                    }
                    _ => {}
                }
                *channel
            }
            Outbound::Deliver { channel, .. }
            | Outbound::GetOk { channel, .. }
            | Outbound::Return { channel, .. } => *channel,
            Outbound::Close => return true,
        };
        channel == 0 || !self.0.contains(&channel)
    }
}

fn encode(out: &mut BytesMut, item: Outbound, frame_max: u32) -> bool {
    match item {
        Outbound::Method { channel, method } => encode_method(out, channel, method),
        Outbound::Deliver {
            channel,
            consumer_tag,
            delivery_tag,
            redelivered,
            msg,
        } => {
            encode_method(
                out,
                channel,
                AMQPClass::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
                    consumer_tag: short(consumer_tag.as_ref()),
                    delivery_tag,
                    redelivered,
                    exchange: short(msg.exchange.as_str()),
                    routing_key: short(msg.routing_key.as_str()),
                })),
            );
            encode_content(out, channel, &msg.properties_raw, &msg.body, frame_max);
        }
        Outbound::GetOk {
            channel,
            delivery_tag,
            redelivered,
            message_count,
            msg,
        } => {
            encode_method(
                out,
                channel,
                AMQPClass::Basic(basic::AMQPMethod::GetOk(basic::GetOk {
                    delivery_tag,
                    redelivered,
                    exchange: short(msg.exchange.as_str()),
                    routing_key: short(msg.routing_key.as_str()),
                    message_count,
                })),
            );
            encode_content(out, channel, &msg.properties_raw, &msg.body, frame_max);
        }
        Outbound::Return {
            channel,
            reply_code,
            reply_text,
            msg,
        } => {
            encode_method(
                out,
                channel,
                AMQPClass::Basic(basic::AMQPMethod::Return(basic::Return {
                    reply_code,
                    reply_text: short(reply_text),
                    exchange: short(msg.exchange.as_str()),
                    routing_key: short(msg.routing_key.as_str()),
                })),
            );
            encode_content(out, channel, &msg.properties_raw, &msg.body, frame_max);
        }
        Outbound::Close => return false,
    }
    true
}

pub async fn run_writer(mut socket: OwnedWriteHalf, mut rx: OutboundRx, shared: Arc<WriterShared>) {
    // Grown by what is encoded into it, and let go whenever the writer waits for more: an
    // idle connection holds no write buffer.
    let mut buf = BytesMut::new();
    let mut open = true;
    let mut closed = ClosedChannels::default();
    while open {
        if rx.is_empty() {
            buf = BytesMut::new();
        }
        let hb = shared.heartbeat.load(Ordering::Relaxed);
        let first = if hb == 0 {
            rx.recv().await
        } else {
            // RabbitMQ sends a heartbeat after half the interval of silence.
            match tokio::time::timeout(Duration::from_millis(hb as u64 * 500), rx.recv()).await {
                Ok(item) => item,
                Err(_) => {
                    encode_heartbeat(&mut buf);
                    if socket.write_all(&buf).await.is_err() {
                        return;
                    }
                    buf.clear();
                    continue;
                }
            }
        };
        let Some(first) = first else { break };
        let frame_max = shared.frame_max.load(Ordering::Relaxed);
        // The bytes these items were counted for, given back once the kernel has them.
        let mut cost = first.cost();
        if closed.admit(&first) {
            open = encode(&mut buf, first, frame_max);
        }
        while open && buf.len() < BATCH_BYTES {
            let Some(item) = rx.try_recv() else { break };
            cost += item.cost();
            if closed.admit(&item) {
                open = encode(&mut buf, item, frame_max);
            }
        }
        if buf.is_empty() {
            rx.release(cost);
            continue;
        }
        shared
            .sent_bytes
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        if socket.write_all(&buf).await.is_err() {
            return;
        }
        rx.release(cost);
        buf.clear();
    }
    let _ = socket.flush().await;
    let _ = socket.shutdown().await;
}
