//! The agent's metrics over HTTP (hyper's HTTP/1 server on the agent's runtime):
//! `GET /metrics` answers what the agent's loop encodes at that moment (`metrics`), which
//! owns the duties' state; anything else is 404. The address is the operator's
//! (`--metrics-address`; the node's loopback by default).
//!
//! Whoever reaches the address may scrape, so a scraper holds little: a few connections at
//! once (each with one of the agent's descriptors, leased), each closed after its answer or
//! `CONNECTION_WAIT`, whatever it sends.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use crate::agent::budget::Pool;

/// A scrape's request to the agent's loop: where the encoded metrics go.
pub type Scrape = oneshot::Sender<String>;

/// Connections served at once (the agent's bounds count them); more are closed at accept.
pub const SCRAPES_AT_ONCE: usize = crate::agent::budget::MAX_SCRAPES;
/// How long one connection may take, from accept to its answer written.
pub const CONNECTION_WAIT: Duration = Duration::from_secs(10);

/// prometheus-client encodes OpenMetrics text, which Prometheus asks for and reads.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves `listener` until dropped (aborting it ends every connection with it).
pub async fn serve(listener: TcpListener, scrapes: mpsc::Sender<Scrape>, descriptors: Arc<Pool>) {
    let at_once = Pool::leasing(SCRAPES_AT_ONCE);
    let mut connections = JoinSet::new();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors, say: wait rather than spin.
                log::warn!("agent: metrics: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        while let Some(done) = connections.try_join_next() {
            crate::agent::supervise::ended("a metrics scrape", done, "its connection closed");
        }
        // Without room the stream is dropped here: the scraper sees it closed.
        let Some(leases) = at_once.lease(1).zip(descriptors.lease(1)) else {
            continue;
        };
        let scrapes = scrapes.clone();
        connections.spawn(async move {
            let _leases = leases;
            let service = service_fn(move |request| answer(request, scrapes.clone()));
            let connection = http1::Builder::new()
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_WAIT, connection).await;
        });
    }
}

async fn answer(
    request: Request<Incoming>,
    scrapes: mpsc::Sender<Scrape>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if request.method() != Method::GET || request.uri().path() != "/metrics" {
        return Ok(plain(StatusCode::NOT_FOUND, "only GET /metrics here\n"));
    }
    let (asked, answered) = oneshot::channel();
    if scrapes.send(asked).await.is_err() {
        return Ok(plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "the agent is stopping\n",
        ));
    }
    Ok(match answered.await {
        Ok(text) => {
            let mut response = Response::new(Full::new(Bytes::from(text)));
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(OPENMETRICS));
            response
        }
        Err(_) => plain(StatusCode::SERVICE_UNAVAILABLE, "the agent is stopping\n"),
    })
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response
}
