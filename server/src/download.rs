//! `GET /api/nodes/{id}/download`: a version's bytes, streamed as they are read and verified,
//! with `Content-Length`, `ETag` (the SHA-256, quoted) and single `Range` requests
//! (`bytes=a-b`, `bytes=a-`, `bytes=-n`; 206 with `Content-Range`, 416 when unsatisfiable).
//!
//! Every chunk is checked against its BLAKE3 id before it is sent. If stored bytes turn out
//! damaged part way, the response is cut off (fewer bytes than `Content-Length`), so a client
//! never takes what it got for the whole file. The whole file's SHA-256 is the `ETag`, checked
//! where the bytes land (our CLI and Python module and the ml-dash client all compare it): the
//! server does not compute it a second time for every download.

use std::io::{Read, Seek, SeekFrom, Write};

use axum::body::Body;
use axum::extract::{Extension, Path, State};
use axum::http::header::{
    ACCEPT_RANGES, CONTENT_DISPOSITION, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, ETAG,
    IF_NONE_MATCH, RANGE,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use crate::auth::Caller;
use crate::catalog::{Node, version_id};
use crate::error::{ApiError, ApiResult};
use crate::{Shared, blocking};

/// Bytes per message from the reading thread to the connection.
const PIECE: usize = 1 << 20;
/// Messages in flight: bounds the memory of a download whatever the client's speed.
const DEPTH: usize = 4;

/// A `Range` header that does not fit the file (416), or does not parse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unsatisfiable;

/// Parse a single `bytes=` range against `len`: `Ok(None)` is the whole file.
pub fn parse_range(h: &str, len: u64) -> Result<Option<(u64, u64)>, Unsatisfiable> {
    let e = |_| Unsatisfiable;
    let spec = h.trim().strip_prefix("bytes=").ok_or(Unsatisfiable)?.trim();
    if spec.contains(',') {
        // Several ranges: answer the whole file, which is allowed.
        return Ok(None);
    }
    let (a, b) = spec.split_once('-').ok_or(Unsatisfiable)?;
    let (a, b) = (a.trim(), b.trim());
    let (start, end) = if a.is_empty() {
        let n: u64 = b.parse().map_err(e)?;
        if n == 0 {
            return Err(Unsatisfiable);
        }
        (
            len.saturating_sub(n),
            len.checked_sub(1).ok_or(Unsatisfiable)?,
        )
    } else {
        let s: u64 = a.parse().map_err(e)?;
        let e: u64 = if b.is_empty() {
            len.checked_sub(1).ok_or(Unsatisfiable)?
        } else {
            b.parse::<u64>().map_err(e)?.min(len.saturating_sub(1))
        };
        (s, e)
    };
    if start >= len || start > end {
        return Err(Unsatisfiable);
    }
    Ok(Some((start, end)))
}

/// `bytes=a-b`, `bytes=a-` or `bytes=-n` with `a <= b` (a list of them is well formed too).
fn well_formed(h: &str) -> bool {
    let Some(spec) = h.trim().strip_prefix("bytes=") else {
        return false;
    };
    spec.split(',').all(|r| {
        let Some((a, b)) = r.trim().split_once('-') else {
            return false;
        };
        let (a, b) = (a.trim(), b.trim());
        let num = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
        match (a.is_empty(), b.is_empty()) {
            (true, true) => false,
            (true, false) => num(b),
            (false, true) => num(a),
            (false, false) => num(a) && num(b) && a.parse::<u64>().ok() <= b.parse::<u64>().ok(),
        }
    })
}

/// A `Write` that hands what it is given to the connection, `PIECE` bytes at a time.
struct ToChannel {
    tx: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    buf: Vec<u8>,
}

impl Write for ToChannel {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        if self.buf.len() >= PIECE {
            self.flush()?;
        }
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let piece = Bytes::from(std::mem::take(&mut self.buf));
        self.tx
            .blocking_send(Ok(piece))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client went away"))
    }
}

pub async fn download(
    State(app): State<Shared>,
    Path(id): Path<String>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let app2 = app.clone();
    let reader = blocking(move || {
        let (n, nd) = crate::api::node(&app2, &id)?;
        let Node::Version { .. } = &nd else {
            return Err(ApiError::bad(
                "INVALID_INPUT",
                format!("node {n} is not a file"),
            ));
        };
        let vid = version_id(&nd).ok_or_else(|| ApiError::not_found("not a file"))?;
        let r = app2.store.open_version(vid)?;
        caller.check(&r.record().namespace)?;
        if r.record().is_deleted() {
            return Err(ApiError::not_found(format!("file {n} is deleted")));
        }
        Ok(r)
    })
    .await?;
    let rec = reader.record().clone();
    let len = rec.size_bytes;
    let etag = format!("\"{}\"", rec.checksum);
    if headers
        .get(IF_NONE_MATCH)
        .and_then(|h| h.to_str().ok())
        .is_some_and(|h| h.split(',').any(|t| t.trim() == etag || t.trim() == "*"))
    {
        return Ok((StatusCode::NOT_MODIFIED, [(ETAG, etag)]).into_response());
    }
    // A Range header that does not parse is ignored (the whole file, as HTTP says); one that
    // parses but does not fit the file is a 416.
    let range = match headers
        .get(RANGE)
        .and_then(|h| h.to_str().ok())
        .filter(|h| well_formed(h))
    {
        None => None,
        Some(h) => match parse_range(h, len) {
            Ok(r) => r,
            Err(Unsatisfiable) => {
                return Ok((
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    [(CONTENT_RANGE, format!("bytes */{len}"))],
                    axum::Json(serde_json::json!({
                        "error": format!("range {h:?} does not fit a file of {len} bytes"),
                        "code": "BAD_RANGE"})),
                )
                    .into_response());
            }
        },
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(DEPTH);
    let (status, body_len) = match range {
        None => (StatusCode::OK, len),
        Some((s, e)) => (StatusCode::PARTIAL_CONTENT, e - s + 1),
    };
    let shown = rec_display(&rec);
    tokio::task::spawn_blocking(move || {
        let mut out = ToChannel {
            tx: tx.clone(),
            buf: Vec::with_capacity(PIECE),
        };
        let r = match range {
            None => reader
                .copy_to_no_sha256(&mut out)
                .map_err(std::io::Error::other)
                .and_then(|_| out.flush()),
            Some((s, e)) => {
                let mut reader = reader;
                let mut copy = || -> std::io::Result<()> {
                    reader.seek(SeekFrom::Start(s))?;
                    let mut left = e - s + 1;
                    let mut buf = vec![0u8; PIECE];
                    while left > 0 {
                        let want = usize::try_from(left.min(PIECE as u64)).unwrap_or(PIECE);
                        let n = reader.read(&mut buf[..want])?;
                        if n == 0 {
                            return Err(std::io::Error::new(
                                std::io::ErrorKind::UnexpectedEof,
                                "the version is shorter than its record",
                            ));
                        }
                        out.write_all(&buf[..n])?;
                        left -= n as u64;
                    }
                    out.flush()
                };
                copy()
            }
        };
        if let Err(e) = r {
            if e.kind() != std::io::ErrorKind::BrokenPipe {
                eprintln!("ml-dash serve: download of {shown} stopped: {e}");
            }
            // The connection is cut: the client sees fewer bytes than Content-Length.
            let _ = tx.blocking_send(Err(e));
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let mut resp = Response::new(Body::from_stream(stream));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(CONTENT_LENGTH, HeaderValue::from(body_len));
    h.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&rec.content_type) {
        h.insert(CONTENT_TYPE, v);
    } else {
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
    }
    let ascii: String = rec
        .filename
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{ascii}\"")) {
        h.insert(CONTENT_DISPOSITION, v);
    }
    if let Some((s, e)) = range
        && let Ok(v) = HeaderValue::from_str(&format!("bytes {s}-{e}/{len}"))
    {
        h.insert(CONTENT_RANGE, v);
    }
    Ok(resp)
}

fn rec_display(r: &ml_dash::FileRecord) -> String {
    r.key().display()
}

#[cfg(test)]
mod tests {
    use super::{Unsatisfiable, parse_range};

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Ok(Some((0, 9))));
        assert_eq!(parse_range("bytes=90-", 100), Ok(Some((90, 99))));
        assert_eq!(parse_range("bytes=-10", 100), Ok(Some((90, 99))));
        assert_eq!(parse_range("bytes=-1000", 100), Ok(Some((0, 99))));
        assert_eq!(parse_range("bytes=50-1000", 100), Ok(Some((50, 99))));
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Ok(None));
        for bad in [
            "bytes=100-",
            "bytes=5-4",
            "bytes=-0",
            "items=0-1",
            "bytes=a-b",
            "bytes=0-0",
        ] {
            let len = if bad == "bytes=0-0" { 0 } else { 100 };
            assert_eq!(parse_range(bad, len), Err(Unsatisfiable), "{bad}");
        }
    }
}
