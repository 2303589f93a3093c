//! The pages, embedded in the binary: no file to deploy, nothing fetched from the internet.
//!
//! `web/` holds Vigie's own page, script and style; `web/vendor/` holds Leaflet (map) and
//! uPlot (charts) exactly as published on npm, copied there by `scripts/vendor-console.sh`,
//! which checks their SHA-256. The list below is the whole site: a file missing from `web/`
//! fails the build.

use axum::extract::Path;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// `(path, content type, bytes)` of every file the console serves.
const FILES: &[(&str, &str, &[u8])] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_bytes!("../web/index.html"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../web/app.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_bytes!("../web/style.css"),
    ),
    (
        "vendor/leaflet.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../web/vendor/leaflet.js"),
    ),
    (
        "vendor/leaflet.css",
        "text/css; charset=utf-8",
        include_bytes!("../web/vendor/leaflet.css"),
    ),
    (
        "vendor/uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../web/vendor/uPlot.iife.min.js"),
    ),
    (
        "vendor/uPlot.min.css",
        "text/css; charset=utf-8",
        include_bytes!("../web/vendor/uPlot.min.css"),
    ),
];

fn file(path: &str) -> Response {
    match FILES.iter().find(|(name, _, _)| *name == path) {
        Some((_, content_type, bytes)) => {
            let mut response = bytes.into_response();
            let headers = response.headers_mut();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
            // Vendored files never change under the same name; Vigie's own change with the binary.
            headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            response
        }
        None => (StatusCode::NOT_FOUND, "not found").into_response(),
    }
}

/// `GET /`: the console's single page.
pub(crate) async fn index() -> Response {
    file("index.html")
}

/// `GET /assets/{*path}`.
pub(crate) async fn asset(Path(path): Path<String>) -> Response {
    file(&path)
}

/// The size of every file together: the console's page weight before compression.
pub fn page_weight() -> usize {
    FILES.iter().map(|(_, _, bytes)| bytes.len()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_is_served_and_others_are_not() {
        for (name, _, bytes) in FILES {
            assert!(!bytes.is_empty(), "{name} is empty");
            assert_eq!(file(name).status(), StatusCode::OK);
        }
        assert_eq!(file("../Cargo.toml").status(), StatusCode::NOT_FOUND);
    }
}
