//! The dashboard: one page, its script and its style sheet, compiled into the binary (no
//! CDN, no build step, works offline). The script reads the same JSON endpoints outside
//! tools read (`/status`, `/history`, `/policy`, `/conflicts`) every two seconds and draws
//! each replica's lag and round trip of the last minutes on a canvas.
//!
//! The page carries the figures it shows in `data-` attributes too (`data-state`,
//! `data-lag`, `data-pending` …), which is what the browser test asserts on.

use axum::http::header;
use axum::response::{IntoResponse, Response};

const PAGE: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/dashboard.js");
const STYLE: &str = include_str!("dashboard/dashboard.css");

/// No caching: a new capgate version must not run an old script.
const NO_STORE: (header::HeaderName, &str) = (header::CACHE_CONTROL, "no-store");

pub(super) async fn page() -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8"), NO_STORE], PAGE).into_response()
}

pub(super) async fn script() -> Response {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8"), NO_STORE], SCRIPT).into_response()
}

pub(super) async fn style() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8"), NO_STORE], STYLE).into_response()
}
