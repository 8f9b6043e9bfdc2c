//! Submitting modules and following their builds.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, RETRY_AFTER};
use thaw_artifact::TagRef;

use crate::api::{BuildResponse, BuildState, BuildStatus};
use crate::{ClientError, RegistryClient, error_of, json};

/// How many times a submission is retried while the build queue is full.
const MAX_QUEUE_RETRIES: u32 = 5;

/// What to build from a submitted module.
#[derive(Clone, Debug, Default)]
pub struct PushRequest {
    /// The tag to point at the result.
    pub reference: Option<TagRef>,
    /// Target profile names; empty means the registry's defaults.
    pub targets: Vec<String>,
    /// Environment variables visible to init (baked into the snapshot).
    pub init_env: Vec<(String, String)>,
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
                    tracing::debug!(error = %e, "event stream ended; polling the build status");
                }
            }
            let status_url = self.url(&accepted.status_url);
            while !status.state.is_terminal() {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let response = self.send(&status_url, self.get(&status_url)).await?;
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
        let url = self.url("/v1/builds");
        let mut retries = 0;
        loop {
            let post = self
                .authorize(self.http.post(&url))
                .query(&query)
                .header(CONTENT_TYPE, "application/wasm")
                .body(wasm.clone());
            let response = post.send().await.map_err(|source| ClientError::Transport {
                url: url.clone(),
                source,
            })?;
            let status = response.status();
            let busy = status == StatusCode::TOO_MANY_REQUESTS
                || status == StatusCode::SERVICE_UNAVAILABLE;
            if busy && retries < MAX_QUEUE_RETRIES {
                let wait = response
                    .headers()
                    .get(RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(1)
                    .min(30);
                tracing::info!(wait, "the registry's build queue is full; retrying");
                tokio::time::sleep(Duration::from_secs(wait)).await;
                retries += 1;
                continue;
            }
            if !status.is_success() {
                return Err(error_of(&url, response).await);
            }
            return json(&url, response).await;
        }
    }

    /// Reads Server-Sent Events until the build ends or the stream does.
    async fn follow_events(
        &self,
        url: &str,
        status: &mut BuildStatus,
        on_status: &mut impl FnMut(&BuildStatus),
    ) -> Result<(), ClientError> {
        let response = self.send(url, self.get(url)).await?;
        let mut body = response.bytes_stream();
        let mut pending = Vec::new();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|source| ClientError::Transport {
                url: url.to_string(),
                source,
            })?;
            pending.extend_from_slice(&chunk);
            while let Some(end) = find(&pending, b"\n\n") {
                let event: Vec<u8> = pending.drain(..end + 2).collect();
                let data: String = String::from_utf8_lossy(&event)
                    .lines()
                    .filter_map(|line| line.strip_prefix("data:"))
                    .map(str::trim_start)
                    .collect();
                if data.is_empty() {
                    continue;
                }
                let next: BuildStatus =
                    serde_json::from_str(&data).map_err(|e| ClientError::Protocol {
                        url: url.to_string(),
                        reason: format!("bad event: {e}"),
                    })?;
                on_status(&next);
                *status = next;
                if status.state.is_terminal() {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
