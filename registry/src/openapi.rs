//! The OpenAPI document of the registry, generated from the handlers, and
//! its rendering as `docs/api.md`.

use axum::Json;
use axum::response::IntoResponse;
use serde_json::Value;
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

use thaw_core::api::{
    BuildResponse, BuildState, BuildStatus, ErrorBody, StepStatus, TagEntry, TagMoveRequest,
};
use thaw_core::release::TagRecord;

/// Where the document is served.
pub const PATH: &str = "/openapi.json";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "thaw registry",
        description = "Submit Go Wasm modules to build; pull signed manifests and verified blobs."
    ),
    paths(
        crate::builds::submit,
        crate::builds::status,
        crate::builds::events,
        crate::tags::move_tag,
        crate::read::list_tags,
        crate::read::get_tag,
        crate::read::tag_history,
        crate::read::get_manifest,
        crate::read::get_blob,
        crate::read::head_blob,
    ),
    components(schemas(
        BuildResponse,
        BuildStatus,
        BuildState,
        StepStatus,
        TagEntry,
        TagRecord,
        TagMoveRequest,
        ErrorBody
    )),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The OpenAPI document as JSON.
pub fn document() -> Value {
    serde_json::to_value(ApiDoc::openapi()).expect("the OpenAPI document serializes")
}

pub(crate) async fn serve() -> impl IntoResponse {
    Json(document())
}

/// Renders the document as Markdown: one section per operation, then the
/// schemas. `docs/api.md` is this output (a test keeps it current).
pub fn markdown() -> String {
    let doc = document();
    let mut out = String::new();
    out.push_str("# Registry HTTP API\n\n");
    out.push_str(
        "<!-- Generated from the OpenAPI document (`GET /openapi.json`) by \
         `thaw_registry::openapi::markdown`. Do not edit: run \
         `THAW_UPDATE_DOCS=1 cargo test -p thaw-registry api_doc` instead. -->\n\n",
    );
    if let Some(description) = doc.pointer("/info/description").and_then(Value::as_str) {
        out.push_str(&format!("{description}\n\n"));
    }
    out.push_str(
        "Every error answer has a JSON body `{\"error\": \"...\"}`. Operations marked \
         *bearer* need `Authorization: Bearer <token>`. Reads need a token too, whose \
         scopes cover the names read, unless the registry runs with `--public-reads`. \
         Pushes and tag moves need a token whose scopes cover the name (403 otherwise).\n\n",
    );
    let empty = serde_json::Map::new();
    let paths = doc["paths"].as_object().unwrap_or(&empty);
    for (path, item) in paths {
        for (method, operation) in item.as_object().unwrap_or(&empty) {
            render_operation(&mut out, path, method, operation);
        }
    }
    out.push_str("## Schemas\n\n");
    let schemas = doc
        .pointer("/components/schemas")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    for (name, schema) in schemas {
        out.push_str(&format!("### `{name}`\n\n```json\n"));
        out.push_str(&serde_json::to_string_pretty(schema).expect("JSON"));
        out.push_str("\n```\n\n");
    }
    out
}

fn render_operation(out: &mut String, path: &str, method: &str, op: &Value) {
    out.push_str(&format!("## `{} {path}`\n\n", method.to_uppercase()));
    let summary = op
        .get("description")
        .or_else(|| op.get("summary"))
        .and_then(Value::as_str)
        .unwrap_or("");
    out.push_str(summary.trim());
    if op.get("security").is_some() {
        out.push_str(" *(bearer)*");
    }
    out.push_str("\n\n");
    if let Some(params) = op.get("parameters").and_then(Value::as_array) {
        out.push_str("| parameter | in | required | description |\n|---|---|---|---|\n");
        for p in params {
            out.push_str(&format!(
                "| `{}` | {} | {} | {} |\n",
                p["name"].as_str().unwrap_or(""),
                p["in"].as_str().unwrap_or(""),
                if p["required"].as_bool().unwrap_or(false) {
                    "yes"
                } else {
                    "no"
                },
                p["description"].as_str().unwrap_or("").replace('|', "\\|"),
            ));
        }
        out.push('\n');
    }
    if let Some(body) = op.get("requestBody") {
        let types: Vec<_> = body["content"]
            .as_object()
            .map(|c| c.keys().map(|k| format!("`{k}`")).collect())
            .unwrap_or_default();
        out.push_str(&format!(
            "Request body ({}): {}\n\n",
            types.join(", "),
            body["description"].as_str().unwrap_or("")
        ));
    }
    out.push_str("| status | meaning | body |\n|---|---|---|\n");
    if let Some(responses) = op.get("responses").and_then(Value::as_object) {
        for (status, response) in responses {
            let body = response["content"]
                .as_object()
                .and_then(|c| c.iter().next())
                .map(|(content_type, media)| {
                    match media.pointer("/schema/$ref").and_then(Value::as_str) {
                        Some(reference) => {
                            format!("`{}`", reference.rsplit('/').next().unwrap_or(reference))
                        }
                        None => match media.pointer("/schema/items/$ref").and_then(Value::as_str) {
                            Some(reference) => format!(
                                "array of `{}`",
                                reference.rsplit('/').next().unwrap_or(reference)
                            ),
                            None => format!("`{content_type}`"),
                        },
                    }
                })
                .unwrap_or_default();
            out.push_str(&format!(
                "| {status} | {} | {body} |\n",
                response["description"]
                    .as_str()
                    .unwrap_or("")
                    .replace('|', "\\|")
            ));
        }
    }
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `docs/api.md` must be the rendering of the current document.
    #[test]
    fn api_doc_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/api.md");
        let rendered = markdown();
        if std::env::var_os("THAW_UPDATE_DOCS").is_some() {
            std::fs::write(&path, &rendered).unwrap();
        }
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            on_disk == rendered,
            "docs/api.md is stale: run THAW_UPDATE_DOCS=1 cargo test -p thaw-registry api_doc"
        );
        for operation in [
            "POST /v1/builds",
            "GET /v1/blobs/{digest}",
            "HEAD /v1/blobs/{digest}",
        ] {
            assert!(rendered.contains(operation), "{operation} is documented");
        }
    }
}
