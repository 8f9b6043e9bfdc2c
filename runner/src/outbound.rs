//! Outbound HTTP on an edge host: which origins each function may reach
//! ([`OutboundRules`]), and the HTTP client its allowed requests go
//! through ([`HttpTransport`]). The policy itself is enforced by
//! `thaw_engine::outbound`.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use thaw_engine::outbound::{
    OriginPattern, OutboundLimits, OutboundPolicy, Transport, TransportError,
};

/// The origins functions may reach, and the limits of every request's
/// outbound calls. Everything not allowed here is denied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OutboundRules {
    /// Origins every function may reach.
    pub shared: Vec<OriginPattern>,
    /// Origins only one function may reach, by its served name, besides
    /// the shared ones.
    pub by_function: BTreeMap<String, Vec<OriginPattern>>,
    /// The limits, the same for every function.
    pub limits: OutboundLimits,
}

/// [`OutboundRules`] as each function's policy, built once rather than per
/// request.
#[derive(Debug)]
pub(crate) struct Policies {
    shared: Arc<OutboundPolicy>,
    by_function: BTreeMap<String, Arc<OutboundPolicy>>,
}

impl Policies {
    pub(crate) fn new(rules: &OutboundRules) -> Self {
        let policy = |allowed: Vec<OriginPattern>| {
            Arc::new(OutboundPolicy {
                allowed,
                limits: rules.limits,
            })
        };
        Self {
            shared: policy(rules.shared.clone()),
            by_function: rules
                .by_function
                .iter()
                .map(|(name, own)| {
                    (
                        name.clone(),
                        policy(rules.shared.iter().chain(own).cloned().collect()),
                    )
                })
                .collect(),
        }
    }

    /// Function `name`'s policy.
    pub(crate) fn of(&self, name: &str) -> &Arc<OutboundPolicy> {
        self.by_function.get(name).unwrap_or(&self.shared)
    }

    pub(crate) fn names(&self) -> impl Iterator<Item = &String> + Clone {
        self.by_function.keys()
    }
}

/// The HTTP client allowed outbound requests go through: HTTP/1.1 and TLS
/// (rustls) with a connection pool shared by every function, no proxy,
/// and no redirects (the guest follows them, each hop checked against its
/// policy). Built at the first request, so a host whose functions never
/// call out pays nothing at start.
#[derive(Default)]
pub struct HttpTransport {
    client: OnceLock<reqwest::Client>,
}

/// Time to establish a connection, within the request's own timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

impl HttpTransport {
    fn client(&self) -> Result<reqwest::Client, TransportError> {
        if let Some(client) = self.client.get() {
            return Ok(client.clone());
        }
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .map_err(|e| TransportError::Failed(format!("the HTTP client: {e}")))?;
        Ok(self.client.get_or_init(|| client).clone())
    }
}

impl Transport for HttpTransport {
    fn send(
        &self,
        request: http::Request<Bytes>,
        timeout: Duration,
        max_body: usize,
    ) -> Pin<Box<dyn Future<Output = Result<http::Response<Bytes>, TransportError>> + Send>> {
        let client = self.client();
        Box::pin(async move {
            let client = client?;
            let request = reqwest::Request::try_from(request)
                .map_err(|e| TransportError::Failed(thaw_core::error::chain(&e)))?;
            tokio::time::timeout(timeout, fetch(client, request, max_body))
                .await
                .map_err(|_| TransportError::TimedOut(timeout))?
        })
    }
}

async fn fetch(
    client: reqwest::Client,
    request: reqwest::Request,
    max_body: usize,
) -> Result<http::Response<Bytes>, TransportError> {
    let failed = |e: reqwest::Error| TransportError::Failed(thaw_core::error::chain(&e));
    let mut response = client.execute(request).await.map_err(failed)?;
    if response
        .content_length()
        .is_some_and(|length| length > max_body as u64)
    {
        return Err(TransportError::TooLarge(max_body));
    }
    let mut body = BytesMut::new();
    while let Some(chunk) = response.chunk().await.map_err(failed)? {
        if body.len() + chunk.len() > max_body {
            return Err(TransportError::TooLarge(max_body));
        }
        body.extend_from_slice(&chunk);
    }
    let mut answer = http::Response::new(body.freeze());
    *answer.status_mut() = response.status();
    *answer.headers_mut() = std::mem::take(response.headers_mut());
    Ok(answer)
}
