//! The client verbs, modelled on local-gadget and kubectl: `apply`, `get`,
//! `operation`, `stream`, `delete`. Each is one request on the control
//! socket. Exit statuses: 0 done; 1 the server refused (unknown trace, an
//! operationError); 2 a bad profile; 125 no server, or another failure.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::control::{Client, Request, Response};
use crate::trace::profile::{self, Trace};

use sigvisor_proto::exit::{FAILED, REFUSED, USAGE};

fn failed(e: anyhow::Error) -> ExitCode {
    eprintln!("sigvisor: {e:#}");
    ExitCode::from(FAILED)
}

/// The response's Traces, or its error as an exit status.
fn traces(response: Response) -> Result<Vec<Trace>, ExitCode> {
    if response.ok {
        return Ok(response.traces);
    }
    eprintln!("sigvisor: {}", response.error);
    Err(ExitCode::from(if response.usage { USAGE } else { REFUSED }))
}

/// Reports a Trace's operationError, which makes the verb fail.
fn checked(trace: &Trace) -> ExitCode {
    let error = trace.status.as_ref().map(|s| s.operation_error.as_str()).unwrap_or_default();
    if error.is_empty() {
        return ExitCode::SUCCESS;
    }
    eprintln!("sigvisor: trace {}: operationError: {error}", trace.metadata.name);
    ExitCode::from(REFUSED)
}

fn state(trace: &Trace) -> &str {
    match trace.status.as_ref().map(|s| s.state.as_str()) {
        Some("") | None => "NotStarted",
        Some(state) => state,
    }
}

pub fn apply(file: &Path, control: PathBuf) -> ExitCode {
    // Refused here first, with the same messages as everywhere else.
    let text = match profile::load(file) {
        Ok(_) => std::fs::read_to_string(file).unwrap_or_default(),
        Err(e) => {
            eprintln!("sigvisor: {e}");
            return ExitCode::from(USAGE);
        }
    };
    let request = Request::Apply { file: file.display().to_string(), text };
    match Client::new(control).request(&request).map(traces) {
        Err(e) => failed(e),
        Ok(Err(code)) => code,
        Ok(Ok(applied)) => match applied.first() {
            Some(trace) => {
                println!("trace/{} applied ({})", trace.metadata.name, state(trace));
                checked(trace)
            }
            None => ExitCode::SUCCESS,
        },
    }
}

pub fn get(resource: &str, name: Option<String>, output: &str, control: PathBuf) -> ExitCode {
    let one = name.is_some() || resource == "trace";
    if resource == "trace" && name.is_none() {
        eprintln!("sigvisor: `get trace` needs a NAME (or use `get traces`)");
        return ExitCode::from(USAGE);
    }
    let response = match Client::new(control).request(&Request::Get { name }) {
        Ok(r) => r,
        Err(e) => return failed(e),
    };
    let found = match traces(response) {
        Ok(t) => t,
        Err(code) => return code,
    };
    if one {
        let rendered = match output {
            "json" => match &found[..] {
                [one] => serde_json::to_string_pretty(one),
                many => serde_json::to_string_pretty(many),
            }
            .map_err(anyhow::Error::from),
            _ => found
                .iter()
                .map(yaml_serde::to_string)
                .collect::<Result<Vec<_>, _>>()
                .map(|docs| docs.join("---\n"))
                .map_err(Into::into),
        };
        return match rendered {
            Ok(text) => {
                println!("{}", text.trim_end());
                ExitCode::SUCCESS
            }
            Err(e) => failed(e),
        };
    }
    print!("{}", table(&found));
    ExitCode::SUCCESS
}

/// `NAME GADGET NODE RUNMODE OUTPUTMODE STATE SIGNALS`, like kubectl.
fn table(traces: &[Trace]) -> String {
    let mut rows =
        vec![["NAME", "GADGET", "NODE", "RUNMODE", "OUTPUTMODE", "STATE", "SIGNALS"].map(String::from)];
    for t in traces {
        let signals = t
            .status
            .as_ref()
            .and_then(|s| yaml_serde::from_str::<yaml_serde::Value>(&s.output).ok())
            .and_then(|summary| summary["signalsSent"].as_u64())
            .unwrap_or(0);
        rows.push([
            t.metadata.name.clone(),
            t.spec.gadget.clone(),
            if t.spec.node.is_empty() { "<any>".into() } else { t.spec.node.clone() },
            t.spec.run_mode.clone(),
            t.spec.output_mode.clone(),
            state(t).to_owned(),
            signals.to_string(),
        ]);
    }
    let widths: Vec<usize> = (0..7).map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

pub fn operation(name: &str, operation: &str, control: PathBuf) -> ExitCode {
    let request = Request::Operation { name: name.to_owned(), operation: operation.to_owned() };
    match Client::new(control).request(&request).map(traces) {
        Err(e) => failed(e),
        Ok(Err(code)) => code,
        Ok(Ok(done)) => match done.first() {
            Some(trace) => {
                println!("trace/{name} {operation}: {}", state(trace));
                checked(trace)
            }
            None => ExitCode::SUCCESS,
        },
    }
}

pub fn stream(name: &str, control: PathBuf) -> ExitCode {
    match Client::new(control).stream(name, &mut std::io::stdout().lock()) {
        Err(e) => failed(e),
        Ok(response) => match traces(response) {
            Ok(_) => ExitCode::SUCCESS,
            Err(code) => code,
        },
    }
}

pub fn delete(name: &str, control: PathBuf) -> ExitCode {
    match Client::new(control).request(&Request::Delete { name: name.to_owned() }).map(traces) {
        Err(e) => failed(e),
        Ok(Err(code)) => code,
        Ok(Ok(_)) => {
            println!("trace/{name} deleted");
            ExitCode::SUCCESS
        }
    }
}
