//! The bodies of the fuzz targets in `fuzz/`: each takes arbitrary bytes and feeds them to one
//! of Warren's decoders the way the broker does. libFuzzer runs them under `cargo fuzz`; the
//! `fuzz_corpus` test replays every saved input through them on stable, so whatever fuzzing
//! once found stays fixed. A target passes an input when it returns: errors are the expected
//! answer to bad bytes, a panic or an abort is a finding.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::OnceLock;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use warren::fuzzing::codec;

/// A target's body: returns for any input, panics only on a finding.
pub type Target = fn(&[u8]);

/// The targets by name (the names of `fuzz/fuzz_targets/*.rs` and of the corpus folders).
pub const TARGETS: &[(&str, Target)] = &[
    ("frames", frames),
    ("method", method),
    ("content_header", content_header),
    ("field_table", field_table),
    ("stored_message", stored_message),
    ("peer_request", peer_request),
    ("connection", connection),
];

/// The frame reader over a byte stream, and every frame it yields decoded by its kind, as a
/// connection's reader does.
pub fn frames(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    while let Ok(Some(frame)) = codec::take_frame(&mut buf, 131_072) {
        match frame {
            codec::RawFrame::Method { payload, .. } => {
                let _ = codec::decode_method(&payload);
            }
            codec::RawFrame::Header { payload, .. } => {
                let _ = codec::decode_content_header(payload);
            }
            _ => {}
        }
    }
}

/// One method frame's payload.
pub fn method(data: &[u8]) {
    let _ = codec::decode_method(data);
}

/// One content header frame's payload (with its property flags and tables).
pub fn content_header(data: &[u8]) {
    let _ = codec::decode_content_header(Bytes::copy_from_slice(data));
}

/// A field table: the nesting check, and amq-protocol's parser only for what passes it.
pub fn field_table(data: &[u8]) {
    if warren::fuzzing::check_table(data).is_ok() {
        let _ = amq_protocol::types::parsing::parse_field_table(data);
    }
}

/// A message in the store's encoding, as a forwarded publish or a store record brings it.
pub fn stored_message(data: &[u8]) {
    let _ = warren::fuzzing::Message::decode(Bytes::copy_from_slice(data));
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = warren::fuzzing::Message::from_wire_text(text);
    }
}

/// What crosses the dist port after the cookie check: a CLI request line, and peer frames
/// with every kind of request body a node decodes.
pub fn peer_request(data: &[u8]) {
    use warren::fuzzing::decode_call;
    let _ = serde_json::from_slice::<warren::cli::Request>(data);
    let bodies = |body: &[u8]| {
        use warren::fuzzing::calls::*;
        let _ = decode_call::<MetaAppend>(body);
        let _ = decode_call::<MetaVote>(body);
        let _ = decode_call::<MetaSnapshot>(body);
        let _ = decode_call::<MetaSubmit>(body);
        let _ = decode_call::<ClusterJoin>(body);
        let _ = decode_call::<QqAppend>(body);
        let _ = decode_call::<QqSnapshot>(body);
        let _ = decode_call::<Publish>(body);
        let _ = decode_call::<ProxyOpen>(body);
        let _ = decode_call::<ProxyDeliver>(body);
        let _ = decode_call::<ProxySettle>(body);
        let _ = decode_call::<QueueDelete>(body);
        let _ = decode_call::<warren::fuzzing::QueueRows>(body);
    };
    // The input as one body, and as a stream of frames.
    bodies(data);
    let mut rest = data;
    while let Ok(Some((frame, used))) = warren::fuzzing::frame::parse(rest) {
        bodies(&frame.body);
        rest = &rest[used..];
    }
}

/// A whole connection: a valid handshake, then the bytes, to a node running in this process
/// (started once). The node must answer and go on serving: after each input a fresh
/// connection must still get `connection.start`.
pub fn connection(data: &[u8]) {
    let port = in_process_node();
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        panic!("the node stopped accepting connections");
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    let _ = s.set_nodelay(true);
    let mut session = handshake();
    session.extend_from_slice(data);
    let _ = s.write_all(&session);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut sink = [0u8; 16 * 1024];
    while let Ok(n) = s.read(&mut sink) {
        if n == 0 {
            break;
        }
    }
    drop(s);
    assert!(
        node_answers(port),
        "the node stopped answering after an input"
    );
}

/// The client half of a handshake as guest on `/`, frame_max 131072, no heartbeat, with
/// everything pipelined (the broker reads it in order).
pub fn handshake() -> Vec<u8> {
    fn frame(out: &mut Vec<u8>, kind: u8, channel: u16, payload: &[u8]) {
        out.push(kind);
        out.extend_from_slice(&channel.to_be_bytes());
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(payload);
        out.push(0xCE);
    }
    fn short(out: &mut Vec<u8>, s: &str) {
        out.push(s.len() as u8);
        out.extend_from_slice(s.as_bytes());
    }
    let mut out = b"AMQP\x00\x00\x09\x01".to_vec();
    let mut start_ok = vec![0, 10, 0, 11];
    start_ok.extend_from_slice(&0u32.to_be_bytes());
    short(&mut start_ok, "PLAIN");
    let response = b"\0guest\0guest";
    start_ok.extend_from_slice(&(response.len() as u32).to_be_bytes());
    start_ok.extend_from_slice(response);
    short(&mut start_ok, "en_US");
    frame(&mut out, 1, 0, &start_ok);
    let mut tune_ok = vec![0, 10, 0, 31];
    tune_ok.extend_from_slice(&2047u16.to_be_bytes());
    tune_ok.extend_from_slice(&131_072u32.to_be_bytes());
    tune_ok.extend_from_slice(&0u16.to_be_bytes());
    frame(&mut out, 1, 0, &tune_ok);
    let mut open = vec![0, 10, 0, 40];
    short(&mut open, "/");
    short(&mut open, "");
    open.push(0);
    frame(&mut out, 1, 0, &open);
    out
}

fn node_answers(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    if s.write_all(b"AMQP\x00\x00\x09\x01").is_err() {
        return false;
    }
    let mut head = [0u8; 7];
    s.read_exact(&mut head).is_ok() && head[0] == 1
}

/// Removes the node bases of fuzzers whose process is gone.
fn remove_bases_of_gone_fuzzers() {
    let Ok(dir) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("warren-fuzz-node-"))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// A node in this process on a free port, in a temporary base removed at exit by nobody: the
/// fuzzer is killed, not stopped. It lives under the system temp dir with the pid in its name,
/// and each fuzzer removes the bases of fuzzers no longer running (they piled up in /tmp).
fn in_process_node() -> u16 {
    static PORT: OnceLock<u16> = OnceLock::new();
    *PORT.get_or_init(|| {
        remove_bases_of_gone_fuzzers();
        let port = crate::free_port();
        let base = std::env::temp_dir().join(format!("warren-fuzz-node-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).expect("fuzz node base");
        let vars = {
            let base = base.display().to_string();
            move |k: &str| match k {
                "WARREN_BASE" => Some(base.clone()),
                "WARREN_NODENAME" => Some("fuzz@localhost".to_string()),
                "WARREN_NODE_PORT" => Some(port.to_string()),
                "WARREN_DIST_PORT" => Some(crate::free_port().to_string()),
                _ => None,
            }
        };
        let config = warren::config::NodeConfig::from_vars(&vars, None).expect("fuzz node config");
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let node = warren::open(config, "fuzz-cookie".to_string())
                    .await
                    .expect("fuzz node");
                let _ = node.run().await;
            });
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while !node_answers(port) {
            assert!(
                std::time::Instant::now() < deadline,
                "the in-process node did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        port
    })
}
