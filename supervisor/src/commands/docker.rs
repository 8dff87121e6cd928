//! What docker knows of a container and its bundle does not: its name and
//! labels, asked of the Docker Engine API by the shim when it patches a
//! bundle of docker's, so that `spec.filter.containerName` and
//! `filter.labels` select docker containers as they do Kubernetes ones.
//!
//! One request on a unix socket, written here rather than through a client
//! crate (bollard): the shim is a short-lived process that asks one thing
//! once per container, and an async HTTP stack would double its start-up
//! for it. The list endpoint is used, not `inspect`: docker holds the
//! container's lock while it starts it, which is when the shim asks, and
//! only the list reads docker's lock-free view.
#![forbid(unsafe_code)]

use std::io::{Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};

use crate::trace::container::ENGINE_NAME as NAME;

/// The namespace docker's containers have in containerd, which names the
/// bundle's directory.
const NAMESPACE: &str = "moby";
/// A container's entry is a few kilobytes; labels add some.
const MAX_RESPONSE: u64 = 1 << 20;
/// docker answers at once; a hung one must not hang every container start.
const DEADLINE: Duration = Duration::from_secs(2);

/// Whether `bundle` is where docker's containerd keeps container `id`'s
/// (`…/io.containerd.runtime.v2.task/moby/ID`).
pub fn owns(bundle: &Path, id: &str) -> bool {
    bundle.file_name().is_some_and(|n| n == id)
        && bundle.parent().and_then(Path::file_name).is_some_and(|n| n == NAMESPACE)
}

/// Container `id`'s name (as the annotation `NAME`) and labels, from the
/// Engine API at `host` (`unix:///var/run/docker.sock` or a path); empty
/// when docker does not know it.
pub fn annotations(host: &str, id: &str) -> Result<Vec<(String, String)>> {
    let path = host.strip_prefix("unix://").unwrap_or(host);
    if !id.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b)) {
        bail!("{id:?} is not a docker container id");
    }
    let mut stream = UnixStream::connect(path).with_context(|| format!("connecting to docker at {path}"))?;
    stream.set_read_timeout(Some(DEADLINE))?;
    stream.set_write_timeout(Some(DEADLINE))?;
    // HTTP/1.0: the body ends where the connection does, never chunked.
    let request = format!(
        "GET /containers/json?all=1&filters=%7B%22id%22%3A%5B%22{id}%22%5D%7D HTTP/1.0\r\nHost: docker\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).with_context(|| format!("asking docker at {path}"))?;
    let mut response = Vec::new();
    stream
        .take(MAX_RESPONSE)
        .read_to_end(&mut response)
        .with_context(|| format!("reading docker at {path}"))?;
    parse(&response, id)
}

fn parse(response: &[u8], id: &str) -> Result<Vec<(String, String)>> {
    let split = response.windows(4).position(|w| w == b"\r\n\r\n").context("docker's answer has no body")?;
    let status = String::from_utf8_lossy(&response[..split]);
    let code = status.split_whitespace().nth(1).unwrap_or_default();
    if code != "200" {
        bail!("docker answered {}", status.lines().next().unwrap_or_default());
    }
    let list: serde_json::Value =
        serde_json::from_slice(&response[split + 4..]).context("docker's answer")?;
    // The id filter matches a prefix: only the container itself counts.
    let Some(entry) = list.as_array().and_then(|l| l.iter().find(|c| c["Id"] == id)) else {
        return Ok(Vec::new());
    };
    let mut found = Vec::new();
    if let Some(name) = entry["Names"].as_array().and_then(|n| n.first()).and_then(|n| n.as_str()) {
        found.push((NAME.to_owned(), name.trim_start_matches('/').to_owned()));
    }
    if let Some(labels) = entry["Labels"].as_object() {
        found.extend(labels.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned()))));
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_name_and_labels_of_that_container_only() {
        let body = r#"[{"Id":"abc1","Names":["/web"],"Labels":{"tier":"front","n":1}},
                       {"Id":"abc","Names":["/db"],"Labels":{"tier":"back"}}]"#;
        let response = format!("HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{body}");
        let mut got = parse(response.as_bytes(), "abc").unwrap();
        got.sort();
        assert_eq!(got, [(NAME.to_owned(), "db".to_owned()), ("tier".to_owned(), "back".to_owned())]);
        assert!(parse(response.as_bytes(), "zzz").unwrap().is_empty());
        let refused = parse(b"HTTP/1.0 500 Internal Server Error\r\n\r\n{}", "abc").unwrap_err();
        assert!(refused.to_string().contains("500"), "{refused}");
        assert!(parse(b"HTTP/1.0 200 OK\r\n\r\nnot json", "abc").is_err());
        assert!(parse(b"garbage", "abc").is_err());
        assert!(annotations("/nonexistent", "a/b").is_err(), "an id that is no id is never sent");
    }

    #[test]
    fn knows_dockers_bundles() {
        let bundle = Path::new("/run/docker/containerd/daemon/io.containerd.runtime.v2.task/moby/abc");
        assert!(owns(bundle, "abc"));
        assert!(!owns(bundle, "abd"));
        assert!(!owns(Path::new("/run/containerd/io.containerd.runtime.v2.task/k8s.io/abc"), "abc"));
    }
}
