//! Plugins that listen: the host accepts HTTP/1.1 connections on the port the
//! manifest names (read from the node's own config, so two nodes on one host
//! use two ports) and hands each request to the component.

use std::sync::Arc;

use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use wasmtime::Store;

use super::PluginError;
use super::bindings::http::exports::warren::plugin::http_handler as hh;
use super::bindings::http::{HttpPlugin, HttpPluginPre};
use super::host_api::PluginCtx;
use super::runtime::{Runtime, State, instantiation_failed, root_cause, run_now};

const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 1 << 20;

pub struct WasmHttp {
    pub plugin: String,
    pub port: u16,
    runtime: Arc<Runtime>,
    pre: HttpPluginPre<State>,
    ctx: Arc<PluginCtx>,
    live: Mutex<Option<(Store<State>, HttpPlugin)>>,
    server: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl WasmHttp {
    pub fn load(
        runtime: &Arc<Runtime>,
        ctx: Arc<PluginCtx>,
        component: &wasmtime::component::Component,
    ) -> Result<Arc<WasmHttp>, PluginError> {
        let name = ctx.name.clone();
        let pre = runtime.instance_pre(&name, "http-plugin", component, HttpPluginPre::new)?;
        let port = match &ctx.manifest.listens {
            Some(l) => match ctx.settings.get(&l.port_key) {
                Some(v) => v.trim().parse::<u16>().map_err(|_| {
                    PluginError::BadConfig(format!("{} = {v}: not a port number", l.port_key))
                })?,
                None => l.default_port,
            },
            None => {
                return Err(PluginError::BadManifest(format!(
                    "{name}: no listens entry"
                )));
            }
        };
        let http = WasmHttp {
            plugin: name,
            port,
            runtime: runtime.clone(),
            pre,
            ctx,
            live: Mutex::new(None),
            server: Mutex::new(None),
        };
        let live = http.instantiate()?;
        *http.live.lock() = Some(live);
        Ok(Arc::new(http))
    }

    fn instantiate(&self) -> Result<(Store<State>, HttpPlugin), PluginError> {
        let mut store = self.runtime.store(self.ctx.clone());
        self.runtime.arm(&mut store);
        let bindings = run_now(self.pre.instantiate_async(&mut store))?
            .map_err(|e| instantiation_failed(&self.plugin, &e))?;
        Ok((store, bindings))
    }

    /// Binds the port and serves until [`WasmHttp::stop`].
    pub async fn start(self: &Arc<Self>) -> Result<(), PluginError> {
        let listener = TcpListener::bind(("0.0.0.0", self.port))
            .await
            .map_err(|e| {
                PluginError::Io(format!(
                    "plugin '{}' cannot listen on port {}: {e}",
                    self.plugin, self.port
                ))
            })?;
        let me = self.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    continue;
                };
                let me = me.clone();
                tokio::spawn(async move {
                    if let Err(e) = me.serve(sock).await {
                        tracing::debug!(plugin = %me.plugin, error = %e, "http connection ended");
                    }
                });
            }
        });
        *self.server.lock() = Some(task);
        tracing::info!(plugin = %self.plugin, port = self.port, "plugin listening");
        Ok(())
    }

    pub fn stop(&self) {
        if let Some(t) = self.server.lock().take() {
            t.abort();
        }
    }

    async fn serve(&self, mut sock: TcpStream) -> std::io::Result<()> {
        let mut buf = Vec::with_capacity(1024);
        let head_end = loop {
            if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break pos + 4;
            }
            if buf.len() > MAX_HEAD {
                return write_plain(&mut sock, 431, "request header too large").await;
            }
            let mut chunk = [0u8; 4096];
            let n = sock.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let mut first = lines.next().unwrap_or("").split(' ');
        let (method, path) = match (first.next(), first.next()) {
            (Some(m), Some(p)) if !m.is_empty() => (m.to_string(), p.to_string()),
            _ => return write_plain(&mut sock, 400, "bad request line").await,
        };
        let mut headers = Vec::new();
        let mut length = 0usize;
        for line in lines.filter(|l| !l.is_empty()) {
            if let Some((k, v)) = line.split_once(':') {
                let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_string());
                if k == "content-length" {
                    length = v.parse().unwrap_or(0);
                }
                headers.push((k, v));
            }
        }
        if length > MAX_BODY {
            return write_plain(&mut sock, 413, "request body too large").await;
        }
        let mut body = buf[head_end..].to_vec();
        while body.len() < length {
            let mut chunk = [0u8; 4096];
            let n = sock.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
        body.truncate(length);
        let request = hh::Request {
            method,
            path,
            headers,
            body,
        };
        let response = match self.handle(&request) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(plugin = %self.plugin, error = %e, "http handler failed");
                return write_plain(&mut sock, 500, &e).await;
            }
        };
        let mut out = format!(
            "HTTP/1.1 {} {}\r\n",
            response.status,
            reason(response.status)
        );
        for (k, v) in &response.headers {
            if k.eq_ignore_ascii_case("content-length") || k.eq_ignore_ascii_case("connection") {
                continue;
            }
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out.push_str(&format!(
            "content-length: {}\r\nconnection: close\r\n\r\n",
            response.body.len()
        ));
        sock.write_all(out.as_bytes()).await?;
        sock.write_all(&response.body).await?;
        sock.shutdown().await
    }

    fn handle(&self, request: &hh::Request) -> Result<hh::Response, String> {
        let mut live = self.live.lock();
        if live.is_none() {
            *live = Some(self.instantiate().map_err(|e| e.to_string())?);
        }
        let Some((store, bindings)) = live.as_mut() else {
            return Err(format!("plugin '{}' has no instance", self.plugin));
        };
        self.runtime.arm(store);
        let result = run_now(
            bindings
                .warren_plugin_http_handler()
                .call_handle(&mut *store, request),
        );
        match result {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => {
                *live = None;
                Err(format!(
                    "plugin '{}' failed: {}",
                    self.plugin,
                    root_cause(&e)
                ))
            }
            Err(e) => {
                *live = None;
                Err(format!("plugin '{}' failed: {e}", self.plugin))
            }
        }
    }
}

async fn write_plain(sock: &mut TcpStream, status: u16, text: &str) -> std::io::Result<()> {
    let out = format!(
        "HTTP/1.1 {status} {}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
        reason(status),
        text.len()
    );
    sock.write_all(out.as_bytes()).await?;
    sock.shutdown().await
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    }
}
