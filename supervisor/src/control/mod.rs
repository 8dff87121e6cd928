//! The control plane: a unix socket (mode 0600) that `serve` and `run`
//! expose, and the client verbs that use it (`apply`, `get`, `operation`,
//! `stream`, `delete`).
//!
//! One JSON request line per connection; one JSON response line; for
//! `stream`, the Trace's events follow as JSON lines until either side
//! closes. Peers other than root and the server's own uid are refused
//! (SO_PEERCRED): the socket's mode is the first fence, this the second.

mod entry;
pub mod handle;
pub mod registry;
pub mod verbs;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

use crate::control::registry::Registry;
use crate::trace::profile::{self, Trace};

/// The largest request accepted (an `apply` carries a whole profile).
const MAX_REQUEST_BYTES: u64 = 1 << 20;

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "verb", rename_all = "lowercase")]
pub enum Request {
    Apply { file: String, text: String },
    Get { name: Option<String> },
    Operation { name: String, operation: String },
    Delete { name: String },
    Stream { name: String },
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
    /// The error is the request's fault (a bad profile): exit status 2.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub usage: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub traces: Vec<Trace>,
}

impl Response {
    fn traces(traces: Vec<Trace>) -> Response {
        Response { ok: true, traces, ..Response::default() }
    }

    fn error(error: impl std::fmt::Display, usage: bool) -> Response {
        Response { ok: false, error: error.to_string(), usage, traces: Vec::new() }
    }
}

/// Accepts control clients until the process ends.
pub async fn serve(listener: UnixListener, registry: Arc<Registry>) {
    let own_uid = crate::sys::process::euid();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!("control: accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let uid = stream.peer_cred().map(|c| c.uid()).ok();
        let registry = Arc::clone(&registry);
        tokio::spawn(async move {
            let allowed = uid.is_some_and(|u| u == 0 || u == own_uid);
            if let Err(e) = client(stream, registry, allowed, uid).await {
                tracing::debug!("control client: {e}");
            }
        });
    }
}

async fn client(stream: UnixStream, registry: Arc<Registry>, allowed: bool, uid: Option<u32>) -> Result<()> {
    let (read, mut write) = stream.into_split();
    // A request line is small; a peer may not make us buffer more.
    let mut lines = tokio::io::BufReader::new(read.take(MAX_REQUEST_BYTES)).lines();
    let reply = |r: &Response| {
        serde_json::to_string(r).map(|mut s| {
            s.push('\n');
            s
        })
    };
    // Read the request even from a refused peer, so that it gets the reason
    // rather than a broken pipe.
    let line = lines.next_line().await?;
    if !allowed {
        tracing::warn!("control: refused a client with uid {uid:?}");
        let refusal = Response::error(
            format!("permission denied: uid {} is neither root nor the server's", uid.map_or(-1, i64::from)),
            false,
        );
        write.write_all(reply(&refusal)?.as_bytes()).await?;
        return Ok(());
    }
    let Some(line) = line else { return Ok(()) };
    let request = match parse_request(&line) {
        Ok(r) => r,
        Err(refusal) => {
            write.write_all(reply(&refusal)?.as_bytes()).await?;
            return Ok(());
        }
    };
    let response = match request {
        Request::Stream { name } => {
            let mut events = match registry.subscribe(&name) {
                Ok(rx) => rx,
                Err(e) => {
                    write.write_all(reply(&Response::error(e, false))?.as_bytes()).await?;
                    return Ok(());
                }
            };
            write.write_all(reply(&Response::traces(Vec::new()))?.as_bytes()).await?;
            loop {
                tokio::select! {
                    event = events.recv() => match event {
                        Ok(line) => {
                            write.write_all(line.as_bytes()).await?;
                            write.write_all(b"\n").await?;
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                            tracing::warn!("control: a stream client of {name} fell {n} events behind");
                        }
                        // The trace was deleted or its output changed.
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return Ok(()),
                    },
                    // The client hung up (or sent something: it should not).
                    _ = lines.next_line() => return Ok(()),
                }
            }
        }
        other => respond(&registry, other),
    };
    write.write_all(reply(&response)?.as_bytes()).await?;
    Ok(())
}

/// One request line, or the response that refuses it.
pub fn parse_request(line: &str) -> Result<Request, Response> {
    serde_json::from_str(line).map_err(|e| Response::error(format!("bad request: {e}"), true))
}

/// The response to any request but `stream` (which `client` follows);
/// a change is saved to the state directory, if there is one.
pub fn respond(registry: &Registry, request: Request) -> Response {
    let changes = !matches!(request, Request::Get { .. });
    let response = match request {
        Request::Apply { file, text } => match profile::parse(&text, Path::new(&file)) {
            Ok((trace, policy)) => Response::traces(vec![registry.apply(trace, policy)]),
            Err(e) => Response::error(e, true),
        },
        Request::Get { name: None } => Response::traces(registry.list()),
        Request::Get { name: Some(name) } => result(registry.get(&name)),
        Request::Operation { name, operation } => result(registry.operation(&name, &operation)),
        Request::Delete { name } => match registry.delete(&name) {
            Ok(()) => Response::traces(Vec::new()),
            Err(e) => Response::error(e, false),
        },
        Request::Stream { name } => {
            Response::error(format!("stream {name}: follow it through a connection"), false)
        }
    };
    if changes {
        registry.save_state();
    }
    response
}

fn result(r: Result<Trace, crate::control::registry::RegistryError>) -> Response {
    match r {
        Ok(trace) => Response::traces(vec![trace]),
        Err(e) => Response::error(e, false),
    }
}

/// The client side: one request, one response (blocking; the CLI verbs).
pub struct Client {
    path: PathBuf,
}

impl Client {
    pub fn new(path: PathBuf) -> Client {
        Client { path }
    }

    fn connect(&self) -> Result<std::os::unix::net::UnixStream> {
        std::os::unix::net::UnixStream::connect(&self.path).map_err(|e| {
            let path = self.path.display();
            if e.kind() == std::io::ErrorKind::PermissionDenied {
                anyhow::anyhow!(
                    "permission denied on the control socket {path}: it is for root and sigvisor's own user"
                )
            } else {
                anyhow::anyhow!(
                    "no sigvisor is serving the control socket {path} ({e}); start one with `sigvisor serve` \
                     (or `sigvisor run --control {path} ...`), or give --control PATH"
                )
            }
        })
    }

    fn send(&self, request: &Request) -> Result<(Response, BufReader<std::os::unix::net::UnixStream>)> {
        let mut stream = self.connect()?;
        let mut line = serde_json::to_string(request)?;
        line.push('\n');
        stream.write_all(line.as_bytes()).context("sending the request")?;
        let mut reader = BufReader::new(stream);
        let mut answer = String::new();
        reader.read_line(&mut answer).context("reading the response")?;
        let response = serde_json::from_str(&answer).with_context(|| {
            format!("the server's response is not what this sigvisor expects: {answer:?}")
        })?;
        Ok((response, reader))
    }

    pub fn request(&self, request: &Request) -> Result<Response> {
        self.send(request).map(|(response, _)| response)
    }

    /// Copies a Trace's events to `out` until the server ends the stream.
    pub fn stream(&self, name: &str, out: &mut impl Write) -> Result<Response> {
        let (response, reader) = self.send(&Request::Stream { name: name.to_owned() })?;
        if response.ok {
            for line in reader.lines() {
                let line = line.context("reading events")?;
                writeln!(out, "{line}")?;
                out.flush()?;
            }
        }
        Ok(response)
    }
}
