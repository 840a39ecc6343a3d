//! Uploaded files over HTTP, shared by applications (CVs) and project
//! spaces: reading a multipart field without buffering more than the limit,
//! and serving a stored file as a download.

use axum::body::Body;
use axum::extract::multipart::Field;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::domain::MessageKey;
use crate::error::{AppError, AppResult};
use crate::state::AppState;

/// Reads a multipart field, keeping at most `max + 1` bytes: a file over the
/// limit comes back one byte too long, so `files::check` calls it too large,
/// and the rest is never buffered.
pub async fn read_capped(mut field: Field<'_>, max: usize) -> Result<Vec<u8>, MessageKey> {
    let mut bytes: Vec<u8> = Vec::new();
    loop {
        match field.chunk().await {
            Ok(Some(chunk)) => {
                let room = (max + 1).saturating_sub(bytes.len());
                bytes.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            Ok(None) => return Ok(bytes),
            // Over the route's body limit: certainly too large.
            Err(_) if bytes.len() > max => return Ok(bytes),
            Err(_) => return Err("upload_failed"),
        }
    }
}

/// `Content-Disposition: attachment` with an ASCII fallback name and the
/// exact name in RFC 5987 form.
pub fn attachment(name: &str) -> String {
    let fallback: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ' ' | '(' | ')') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut encoded = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            encoded.push(b as char);
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    format!("attachment; filename=\"{fallback}\"; filename*=UTF-8''{encoded}")
}

/// A stored file as a download: always an attachment, with the type it was
/// checked as, never sniffed, never cached by shared caches.
pub async fn download(
    state: &AppState,
    name: &str,
    content_type: &str,
    sha256: &str,
) -> AppResult<Response> {
    let bytes = crate::files::read(&state.config.data_dir, sha256)
        .await
        .map_err(|e| AppError::Internal(e.context("reading a stored file")))?;
    let content_type = HeaderValue::from_str(content_type)
        .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"));
    let disposition = HeaderValue::from_str(&attachment(name))
        .unwrap_or_else(|_| HeaderValue::from_static("attachment"));
    let mut response = (StatusCode::OK, Body::from(bytes)).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, content_type);
    headers.insert(header::CONTENT_DISPOSITION, disposition);
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-store"),
    );
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attachment_names_are_quoted_safely() {
        assert_eq!(
            attachment("report v2.pdf"),
            "attachment; filename=\"report v2.pdf\"; filename*=UTF-8''report%20v2.pdf"
        );
        let h = attachment("보고서\".pdf");
        assert!(h.starts_with("attachment; filename=\"____.pdf\""), "{h}");
        assert!(h.contains("%EB%B3%B4"), "{h}");
        assert!(HeaderValue::from_str(&h).is_ok());
    }
}
