//! A lean HTTP/1.1 client for the loads: one keep-alive connection per client task, made with
//! hyper's client connection directly, and requests whose parts are parsed once.
//!
//! The load generator shares the machine's two cores with the server it measures, so what it
//! spends per request the server does not get. reqwest parses the URL, builds the headers and
//! checks a connection out of its pool for every request; measured under 64 clients over 1,000
//! workers, the generator took about a sixth of the machine that way.

use std::net::SocketAddr;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;

/// A request made again and again: its parts parsed once, and the address it goes to (its URL's
/// host is an IP address and port, as the loads' servers are on loopback).
#[derive(Clone)]
pub(crate) struct Template {
    address: SocketAddr,
    method: Method,
    uri: Uri,
    host: HeaderValue,
    authorization: Option<HeaderValue>,
    body: Option<Bytes>,
}

impl Template {
    /// A GET of `url` (`http://host:port/path`), without a key.
    pub(crate) fn get(url: &str) -> anyhow::Result<Template> {
        Template::new(Method::GET, url, None, None)
    }

    /// A POST of a JSON `body` to `url` with the API key `key`.
    pub(crate) fn post_json(url: &str, key: &str, body: &'static str) -> anyhow::Result<Template> {
        Template::new(
            Method::POST,
            url,
            Some(key),
            Some(Bytes::from_static(body.as_bytes())),
        )
    }

    fn new(
        method: Method,
        url: &str,
        key: Option<&str>,
        body: Option<Bytes>,
    ) -> anyhow::Result<Template> {
        let full: Uri = url.parse().with_context(|| format!("the URL {url}"))?;
        let host = full.authority().context("a URL with a host")?.as_str();
        let path = full.path_and_query().map_or("/", |p| p.as_str());
        Ok(Template {
            address: host
                .parse()
                .with_context(|| format!("{url}: an IP address and port"))?,
            method,
            uri: path.parse()?,
            host: HeaderValue::from_str(host)?,
            authorization: key
                .map(|key| HeaderValue::from_str(&format!("Bearer {key}")))
                .transpose()?,
            body,
        })
    }

    fn request(&self) -> anyhow::Result<Request<Full<Bytes>>> {
        let mut request = Request::builder()
            .method(self.method.clone())
            .uri(self.uri.clone())
            .header(HOST, self.host.clone());
        if let Some(authorization) = &self.authorization {
            request = request.header(AUTHORIZATION, authorization.clone());
        }
        let body = match &self.body {
            Some(body) => {
                request = request.header(CONTENT_TYPE, "application/json");
                body.clone()
            }
            None => Bytes::new(),
        };
        Ok(request.body(Full::new(body))?)
    }
}

/// One keep-alive connection, made at the first request (to its template's address) and again
/// after a failure. The requests sent on one connection go to one server.
#[derive(Default)]
pub(crate) struct Connection {
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Connection {
    /// Sends the request; its body, or an error unless the answer is 200. A failed connection is
    /// dropped, and the next request makes a new one.
    pub(crate) async fn send_ok(&mut self, template: &Template) -> anyhow::Result<Bytes> {
        let (status, body) = match self.send(template).await {
            Ok(answer) => answer,
            Err(e) => {
                self.sender = None;
                return Err(e);
            }
        };
        if status != StatusCode::OK {
            bail!("HTTP {status}: {}", String::from_utf8_lossy(&body));
        }
        Ok(body)
    }

    async fn send(&mut self, template: &Template) -> anyhow::Result<(StatusCode, Bytes)> {
        let sender = match &mut self.sender {
            Some(sender) => sender,
            None => self.sender.insert(connect(template.address).await?),
        };
        sender.ready().await?;
        let response = sender.send_request(template.request()?).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }
}

async fn connect(address: SocketAddr) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(address).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        // Ends when the sender is dropped or the server closes; a failure shows in `send_ok`.
        let _ = connection.await;
    });
    Ok(sender)
}
