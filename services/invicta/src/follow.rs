//! `invicta worker logs --follow`: reads the server-sent events of a worker's log and prints
//! each line as it comes. When the connection drops (the server restarted, or was killed), it
//! reconnects with `Last-Event-ID`, so no line is lost or printed twice; it gives up, saying so,
//! when the server stays unreachable for [`RECONNECT_FOR`].

use std::io::Write;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::Value;

use crate::session::{Client, Failure, Output};

/// How long the server may stay unreachable before following stops.
pub const RECONNECT_FOR: Duration = Duration::from_secs(30);

#[derive(Default)]
struct Event {
    id: Option<u64>,
    name: String,
    data: String,
}

enum Next {
    /// The stream ended for good (the worker is gone).
    Stop,
    /// Connect again.
    Reconnect,
}

pub(crate) async fn follow(
    client: &Client,
    path: &str,
    from: u64,
    json: bool,
) -> Result<Output, Failure> {
    let mut last_id = from.checked_sub(1).filter(|id| *id > 0);
    let mut down_since: Option<Instant> = None;
    loop {
        let mut request = client
            .http
            .get(format!("{}{path}?follow=true", client.base))
            .header("accept", "text/event-stream");
        if let Some(key) = &client.key {
            request = request.bearer_auth(key);
        }
        if let Some(id) = last_id {
            request = request.header("last-event-id", id.to_string());
        }
        match request.send().await {
            Ok(response) if response.status().is_success() => {
                if down_since.take().is_some() {
                    eprintln!("reconnected");
                }
                match read(response, &mut last_id, json).await {
                    Next::Stop => return Ok(Output::Nothing),
                    Next::Reconnect => {
                        down_since.get_or_insert_with(Instant::now);
                    }
                }
            }
            Ok(response) => {
                let status = response.status().as_u16();
                let body = response.json::<Value>().await.unwrap_or(Value::Null);
                return Err(Failure::Api(status, body));
            }
            Err(e) => {
                if down_since.is_none() {
                    eprintln!("cannot reach {} ({e}); reconnecting…", client.base);
                    down_since = Some(Instant::now());
                }
            }
        }
        if down_since.is_some_and(|since| since.elapsed() > RECONNECT_FOR) {
            eprintln!("stream ended: the server stayed unreachable");
            return Err(Failure::Network(format!(
                "{} unreachable for {} s",
                client.base,
                RECONNECT_FOR.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Prints the events of one connection until it ends.
async fn read(response: reqwest::Response, last_id: &mut Option<u64>, json: bool) -> Next {
    let mut stream = response.bytes_stream();
    let mut buffer: Vec<u8> = Vec::new();
    let mut event = Event::default();
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else {
            break;
        };
        buffer.extend_from_slice(&chunk);
        while let Some(pos) = buffer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=pos).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                let done = std::mem::take(&mut event);
                if let Some(next) = dispatch(done, last_id, json) {
                    return next;
                }
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "id" => event.id = value.parse().ok(),
                "event" => event.name = value.to_string(),
                "data" => {
                    if !event.data.is_empty() {
                        event.data.push('\n');
                    }
                    event.data.push_str(value);
                }
                // Comments (keep-alives) and unknown fields.
                _ => {}
            }
        }
    }
    eprintln!("connection lost; reconnecting…");
    Next::Reconnect
}

fn dispatch(event: Event, last_id: &mut Option<u64>, json: bool) -> Option<Next> {
    match event.name.as_str() {
        "log" => {
            if let Some(id) = event.id {
                *last_id = Some(id);
            }
            let mut out = std::io::stdout().lock();
            if json {
                let _ = writeln!(out, "{}", event.data);
            } else {
                let line: Value = serde_json::from_str(&event.data).unwrap_or(Value::Null);
                let _ = write!(out, "{}", line["text"].as_str().unwrap_or_default());
            }
            let _ = out.flush();
            None
        }
        "end" => {
            let end: Value = serde_json::from_str(&event.data).unwrap_or(Value::Null);
            let reason = end["reason"].as_str().unwrap_or("unknown");
            if reason.contains("shutting down") {
                eprintln!("the server is shutting down; reconnecting…");
                Some(Next::Reconnect)
            } else {
                eprintln!("stream ended: {reason}");
                Some(Next::Stop)
            }
        }
        _ => None,
    }
}
