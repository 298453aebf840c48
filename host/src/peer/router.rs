//! The server side: handlers by call id, and the loop that serves one peer connection.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use tokio::io::BufReader;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Semaphore, mpsc};

use super::call::{self, Call, Failure, code};
use super::frame::{self, Frame, Kind};
use super::handshake::PeerInfo;

/// Requests of one connection handled at once; past that the connection is not read, and
/// TCP pushes back on the sender.
const IN_FLIGHT: usize = 512;

type Answering = Pin<Box<dyn Future<Output = Result<Bytes, Failure>> + Send>>;
type Handler = Box<dyn Fn(Bytes) -> Answering + Send + Sync>;

/// What a node answers to its peers: one handler per call.
#[derive(Default)]
pub struct Router {
    handlers: HashMap<u16, (&'static str, Handler)>,
}

impl Router {
    pub fn new() -> Router {
        Router::default()
    }

    /// Answers call `C` with `handle`. Ids are unique by construction (each area's calls are
    /// numbered in its own range); a second handler for one id is a bug, and the first stays.
    pub fn on<C, F, Fut>(&mut self, handle: F) -> &mut Router
    where
        C: Call,
        F: Fn(C) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<C::Answer, Failure>> + Send + 'static,
    {
        let handle = Arc::new(handle);
        let handler: Handler = Box::new(move |body: Bytes| {
            let handle = handle.clone();
            Box::pin(async move {
                let req: C = call::decode(&body, C::NAME)?;
                let answer = handle(req).await?;
                call::encode(&answer)
            })
        });
        let previous = self.handlers.insert(C::ID, (C::NAME, handler));
        debug_assert!(previous.is_none(), "two handlers for peer call {}", C::ID);
        self
    }

    /// Answers call `C` with `handle`, called in the connection's read loop: what it does
    /// before returning its future happens in the order the requests came (the forwarder
    /// keeps several publish batches in flight and their messages must stay in order); the
    /// future runs concurrently like any other call's. `handle` must not block.
    pub fn on_ordered<C, F, Fut>(&mut self, handle: F) -> &mut Router
    where
        C: Call,
        F: Fn(C) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<C::Answer, Failure>> + Send + 'static,
    {
        let handler: Handler = Box::new(move |body: Bytes| {
            let answering = call::decode::<C>(&body, C::NAME).map(&handle);
            Box::pin(async move { call::encode(&answering?.await?) })
        });
        let previous = self.handlers.insert(C::ID, (C::NAME, handler));
        debug_assert!(previous.is_none(), "two handlers for peer call {}", C::ID);
        self
    }
}

/// Serves one authenticated peer connection until the peer closes it. Requests run
/// concurrently (at most [`IN_FLIGHT`]); each answer is written when it is ready.
pub async fn serve(
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    peer: PeerInfo,
    router: Arc<Router>,
) -> io::Result<()> {
    let (answers, rx) = mpsc::channel::<Frame>(IN_FLIGHT);
    let writing = tokio::spawn(write_answers(writer, rx));
    let permits = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut r = reader;
    let result = loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break Ok(());
        };
        let f = match frame::read(&mut r).await {
            Ok(Some(f)) => f,
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        };
        if f.kind != Kind::Request {
            break Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("peer {} sent an answer nobody asked for", peer.node),
            ));
        }
        let answering = match router.handlers.get(&f.call) {
            Some((_, h)) => h(f.body),
            None => {
                let call = f.call;
                Box::pin(async move {
                    Err(Failure::new(
                        code::NOT_IMPLEMENTED,
                        format!("peer call {call} is not known to this node"),
                    ))
                })
            }
        };
        let answers = answers.clone();
        let (id, call_id) = (f.id, f.call);
        tokio::spawn(async move {
            let (kind, body) = match answering.await {
                Ok(body) => (Kind::Answer, body),
                Err(failure) => (Kind::Failure, call::encode(&failure).unwrap_or_default()),
            };
            let _ = answers
                .send(Frame {
                    kind,
                    id,
                    call: call_id,
                    body,
                })
                .await;
            drop(permit);
        });
    };
    drop(answers);
    let _ = writing.await;
    result
}

async fn write_answers(writer: OwnedWriteHalf, rx: mpsc::Receiver<Frame>) {
    if let Err(e) = frame::pump(writer, rx).await {
        tracing::debug!("peer answers write failed: {e}");
    }
}
