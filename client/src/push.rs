//! Submitting modules and following their builds.

use std::time::Duration;

use backon::{ConstantBuilder, Retryable};
use bytes::Bytes;
use eventsource_stream::{EventStreamError, Eventsource};
use futures::StreamExt;
use reqwest::header::CONTENT_TYPE;
use thaw_core::TagRef;
use thaw_core::api::{BuildResponse, BuildState, BuildStatus};

use crate::{ClientError, MAX_EVENT_STREAM_BYTES, RegistryClient, json};

/// Why an event stream stopped before the parser saw it.
#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error(transparent)]
    Transport(reqwest::Error),
    #[error("the event stream is larger than {MAX_EVENT_STREAM_BYTES} bytes")]
    TooLarge,
}

/// How many times a submission is retried while the build queue is full.
const MAX_QUEUE_RETRIES: usize = 5;

/// The longest wait between two submissions, whatever `Retry-After` says.
const MAX_QUEUE_WAIT: Duration = Duration::from_secs(30);

/// What to build from a submitted module.
#[derive(Clone, Debug, Default)]
pub struct PushRequest {
    /// The tag to point at the result.
    pub reference: Option<TagRef>,
    /// Target profile names; empty means the registry's defaults.
    pub targets: Vec<String>,
    /// Environment variables visible to init (baked into the snapshot).
    pub init_env: Vec<(String, String)>,
    /// Whether the artifacts keep the module's function names.
    pub keep_names: bool,
}

impl RegistryClient {
    /// Submits `wasm` and follows the build to its end, calling `on_status`
    /// with every change. Returns the final status, which is
    /// [`BuildState::Succeeded`]; a failed build is an error carrying the
    /// registry's reason.
    pub async fn push(
        &self,
        wasm: Bytes,
        request: &PushRequest,
        mut on_status: impl FnMut(&BuildStatus),
    ) -> Result<BuildStatus, ClientError> {
        let accepted = self.submit(wasm, request).await?;
        on_status(&accepted.build);
        let mut status = accepted.build;
        if !status.state.is_terminal() {
            let events = self.url(&accepted.events_url);
            match self
                .follow_events(&events, &mut status, &mut on_status)
                .await
            {
                Ok(()) => {}
                Err(e) => {
                    tracing::debug!(error = %thaw_core::error::chain(&e), "event stream ended; polling the build status");
                }
            }
            let status_url = self.url(&accepted.status_url);
            while !status.state.is_terminal() {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let response = self.send(&status_url, self.get_small(&status_url)).await?;
                let next: BuildStatus = json(&status_url, response).await?;
                if next != status {
                    on_status(&next);
                    status = next;
                }
            }
        }
        match &status.state {
            BuildState::Failed { error } => Err(ClientError::Status {
                url: self.url(&accepted.status_url),
                status: 422,
                message: format!("build {} failed: {error}", status.id),
                retry_after: None,
            }),
            _ => Ok(status),
        }
    }

    /// Posts the module, waiting out a full queue as the registry asks.
    async fn submit(
        &self,
        wasm: Bytes,
        request: &PushRequest,
    ) -> Result<BuildResponse, ClientError> {
        let mut query: Vec<(&str, String)> = Vec::new();
        if let Some(tag) = &request.reference {
            query.push(("name", tag.name().to_string()));
            query.push(("tag", tag.tag().to_string()));
        }
        if !request.targets.is_empty() {
            query.push(("targets", request.targets.join(",")));
        }
        for (key, value) in &request.init_env {
            query.push(("init_env", format!("{key}={value}")));
        }
        if request.keep_names {
            query.push(("keep_names", "true".to_string()));
        }
        let url = self.url("/v1/builds");
        let post = || async {
            let request = self
                .authorize(self.uploads.post(&url))
                .query(&query)
                .header(CONTENT_TYPE, "application/wasm")
                .body(wasm.clone());
            let response = self.send(&url, request).await?;
            json::<BuildResponse>(&url, response).await
        };
        post.retry(
            ConstantBuilder::default()
                .with_delay(Duration::from_secs(1))
                .with_max_times(MAX_QUEUE_RETRIES),
        )
        .when(|e| {
            matches!(
                e,
                ClientError::Status {
                    status: 429 | 503,
                    ..
                }
            )
        })
        // Wait as long as the registry asks, within reason, but only while
        // retries are left (`backoff` is `None` once they are spent).
        .adjust(|e, backoff| {
            backoff.map(|default| match e {
                ClientError::Status {
                    retry_after: Some(wait),
                    ..
                } => (*wait).min(MAX_QUEUE_WAIT),
                _ => default,
            })
        })
        .notify(|_, wait| {
            tracing::info!(?wait, "the registry's build queue is full; retrying");
        })
        .await
    }

    /// Reads Server-Sent Events until the build ends or the stream does.
    async fn follow_events(
        &self,
        url: &str,
        status: &mut BuildStatus,
        on_status: &mut impl FnMut(&BuildStatus),
    ) -> Result<(), ClientError> {
        let response = self.send(url, self.get(url)).await?;
        // Counted before the parser buffers anything: an event that never
        // ends must not grow without bound.
        let capped = response.bytes_stream().scan(0usize, |seen, chunk| {
            let chunk = chunk.map_err(StreamError::Transport).and_then(|bytes| {
                *seen += bytes.len();
                match *seen > MAX_EVENT_STREAM_BYTES {
                    true => Err(StreamError::TooLarge),
                    false => Ok(bytes),
                }
            });
            futures::future::ready(Some(chunk))
        });
        let mut events = capped.eventsource();
        while let Some(event) = events.next().await {
            let event = event.map_err(|e| match e {
                EventStreamError::Transport(StreamError::Transport(source)) => {
                    ClientError::Transport {
                        url: url.to_string(),
                        source,
                    }
                }
                EventStreamError::Transport(StreamError::TooLarge) => ClientError::TooLarge {
                    url: url.to_string(),
                    limit: MAX_EVENT_STREAM_BYTES,
                },
                other => ClientError::Protocol {
                    url: url.to_string(),
                    reason: format!("reading the event stream: {other}"),
                },
            })?;
            if event.data.is_empty() {
                continue;
            }
            let next: BuildStatus =
                serde_json::from_str(&event.data).map_err(|e| ClientError::Protocol {
                    url: url.to_string(),
                    reason: format!("bad event: {e}"),
                })?;
            on_status(&next);
            *status = next;
            if status.state.is_terminal() {
                return Ok(());
            }
        }
        Ok(())
    }
}
