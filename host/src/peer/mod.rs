//! How nodes talk to each other: a protocol of its own, not the CLI's.
//!
//! A peer connection opens with the dist port's cookie handshake (`handshake`, shared with the
//! CLI), asking for `peer/2` (the version of its frames); after that it carries
//! length-prefixed binary frames (`frame`).
//! Each request is one typed [`Call`], encoded with postcard, and carries a correlation id, so
//! many requests are in flight on one connection and answers come back in any order. Message
//! bodies travel as raw bytes. A refusal is a [`Failure`] with an AMQP reply code as a number.
//!
//! `Peers` is the client side (one multiplexed `link` per peer and lane, who answered lately);
//! `Router` is the server side: each area (cluster, quorum queues, the data plane) registers
//! handlers for its calls, and `serve` runs them as frames arrive, a bounded number at a time.
//!
//! Why postcard: serde-compatible (openraft's RPC types and our own derive serde already), a
//! documented, stable wire format (1.0), compact varints, no schema step, and it writes bytes
//! as bytes. Its limits (no `deserialize_any`, so no `serde_json::Value`, no untagged enums)
//! are the right ones for a typed protocol.

mod call;
pub mod frame;
pub mod handshake;
mod link;
mod peers;
mod router;

pub use call::{Call, Failure, PeerError, code, decode_call};
pub use peers::{ClusterNode, Peers, Sent};
pub use router::{Router, serve};

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use serde::{Deserialize, Serialize};
    use tokio::io::BufReader;
    use tokio::net::TcpListener;

    use super::*;

    #[derive(Serialize, Deserialize)]
    struct Sleep(u64);
    crate::peer_call!(Sleep, 9000, "misc", u64);

    #[derive(Serialize, Deserialize)]
    struct Refuse;
    crate::peer_call!(Refuse, 9001, "misc", ());

    #[derive(Serialize, Deserialize)]
    struct Unknown;
    crate::peer_call!(Unknown, 9002, "misc", ());

    /// A peer on a real socket: the cookie handshake, then `serve` with two calls.
    async fn peer(cookie: &'static str) -> ClusterNode {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let mut router = Router::new();
        router.on(|s: Sleep| async move {
            tokio::time::sleep(Duration::from_millis(s.0)).await;
            Ok(s.0)
        });
        router.on(|_: Refuse| async { Err(Failure::new(code::ACCESS_REFUSED, "no")) });
        let router = Arc::new(router);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let router = router.clone();
                tokio::spawn(async move {
                    let (r, mut w) = stream.into_split();
                    let mut r = BufReader::new(r);
                    let (name, _) = handshake::server_handshake(&mut r, &mut w, "t", "b@h", cookie)
                        .await
                        .unwrap();
                    let info = handshake::PeerInfo {
                        node: name,
                        addr: None,
                    };
                    let _ = serve(r, w, info, router).await;
                });
            }
        });
        ClusterNode {
            name: "b@h".into(),
            addr,
        }
    }

    #[tokio::test]
    async fn answers_come_back_to_their_callers_in_any_order_with_typed_refusals() {
        let node = peer("C").await;
        let peers = Peers::new("a@h".into(), "C".into());
        let t = Duration::from_secs(5);
        // A slow request does not hold up a quick one on the same link.
        let (slow, quick) = tokio::join!(peers.call(&node, &Sleep(300), t), async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let started = std::time::Instant::now();
            let a = peers.call(&node, &Sleep(1), t).await;
            (a, started.elapsed())
        });
        assert_eq!(slow.unwrap(), 300);
        assert_eq!(quick.0.unwrap(), 1);
        assert!(quick.1 < Duration::from_millis(200), "{:?}", quick.1);
        match peers.call(&node, &Refuse, t).await {
            Err(PeerError::Remote(f)) => assert_eq!((f.code, f.text.as_str()), (403, "no")),
            other => panic!("{:?}", other.map(|_| ())),
        }
        match peers.call(&node, &Unknown, t).await {
            Err(e) => assert_eq!(e.code(), Some(code::NOT_IMPLEMENTED)),
            Ok(()) => panic!("an unknown call was answered"),
        }
        // A caller that gives up gets an answer of its own, and the link goes on.
        let late = peers
            .call(&node, &Sleep(500), Duration::from_millis(50))
            .await;
        assert!(matches!(late, Err(PeerError::Unreachable(_))));
        assert_eq!(peers.call(&node, &Sleep(2), t).await.unwrap(), 2);
        assert!(peers.reachability.is_up("b@h"));
    }

    #[tokio::test]
    async fn a_wrong_cookie_or_no_peer_is_unreachable() {
        let node = peer("C").await;
        let stranger = Peers::new("x@h".into(), "other".into());
        let t = Duration::from_secs(5);
        assert!(matches!(
            stranger.call(&node, &Sleep(1), t).await,
            Err(PeerError::Unreachable(_))
        ));
        let gone = ClusterNode {
            name: "c@h".into(),
            addr: "127.0.0.1:1".into(),
        };
        let peers = Peers::new("a@h".into(), "C".into());
        assert!(matches!(
            peers.call(&gone, &Sleep(1), t).await,
            Err(PeerError::Unreachable(_))
        ));
        assert!(!peers.reachability.is_up("c@h"));
    }
}
