//! File uploads: `POST /api/namespaces/{ns}/nodes` with a `multipart/form-data` body, as the
//! ml-dash client sends it: text parts (`type`, `projectId`, `experimentId`, `parentId`, `name`,
//! `checksum`, `description`, `tags`, `metadata`) and then the `file` part. A client that checks
//! the file as it sends it puts its check after the file: a `checksum` part (SHA-256) in place
//! of one before it, or a `crc32c` part announced by a `trailer: crc32c` part before the file
//! (what our CLI does: see `crc32c.rs`).
//!
//! The file part streams into the store's ingest as it arrives (a bounded channel between the
//! connection and a blocking ingest task), never whole in memory. The store computes the
//! SHA-256 of what it received and records the version only if it equals the declared
//! `checksum` and the body ended properly: bytes that changed after the client hashed them, a
//! body cut short or malformed, a part after the file, all fail with a 4xx and no version.
//! Uploads ingest in parallel up to the server's upload slots; more wait for a slot.

use std::collections::HashMap;
use std::io::Read;
use std::sync::{Arc, OnceLock};

use axum::Json;
use axum::body::Body;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use ml_dash::{NewVersion, Sha256};
use serde_json::{Value, json};

use crate::Shared;
use crate::api::{experiment, file_json, node};
use crate::auth::Caller;
use crate::catalog::Node;
use crate::error::{ApiError, ApiResult};
use crate::multipart::{Multipart, MultipartError};

/// Largest text part (metadata is at most 64 KiB as the store checks it; a description too).
const MAX_FIELD: usize = 128 * 1024;
/// Most text parts before the file.
const MAX_FIELDS: usize = 32;
/// Chunks of the body in flight between the connection and the ingest task.
const CHANNEL_DEPTH: usize = 16;
/// An upload whose body stalls this long is abandoned (nothing stored): a client that stopped
/// sending must not hold an upload slot.
const IDLE: std::time::Duration = std::time::Duration::from_secs(120);

enum Msg {
    Data(Bytes),
    End,
    Fail(String),
}

/// The blocking side of the channel: the ingest reads the body through it.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<Msg>,
    cur: Bytes,
    ended: bool,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.cur.is_empty() {
            if self.ended {
                return Ok(0);
            }
            match self.rx.blocking_recv() {
                Some(Msg::Data(b)) => self.cur = b,
                Some(Msg::End) => self.ended = true,
                Some(Msg::Fail(why)) => return Err(std::io::Error::other(why)),
                None => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the upload was cut off before its end",
                    ));
                }
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        let _ = self.cur.split_to(n);
        Ok(n)
    }
}

type Parts = Multipart<axum::body::BodyDataStream>;

fn malformed(e: &MultipartError) -> ApiError {
    ApiError::bad(
        "MALFORMED_MULTIPART",
        format!("malformed multipart body: {e}"),
    )
}

async fn text_field(mp: &mut Parts, name: &str) -> ApiResult<String> {
    let mut out = Vec::new();
    while let Some(chunk) = mp.chunk().await.map_err(|e| malformed(&e))? {
        if out.len() + chunk.len() > MAX_FIELD {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "TOO_LARGE",
                format!("part {name:?} is larger than {MAX_FIELD} bytes"),
            ));
        }
        out.extend_from_slice(&chunk);
    }
    String::from_utf8(out)
        .map_err(|_| ApiError::bad("INVALID_INPUT", format!("part {name:?} is not UTF-8 text")))
}

fn parse_checksum(c: &str) -> ApiResult<Sha256> {
    c.trim()
        .to_ascii_lowercase()
        .parse::<Sha256>()
        .map_err(|_| {
            ApiError::bad(
                "INVALID_INPUT",
                "`checksum` must be the SHA-256 of the file as 64 hex digits",
            )
        })
}

/// What may follow the file part: nothing, or the checks of a client that computed them as it
/// sent the file: a `checksum` (SHA-256; only when none came before the file), set into
/// `late` before the ingest sees the end of the bytes, and the `crc32c` that a `trailer` part
/// announced (returned). Each at most once; nothing else.
async fn after_file(
    mp: &mut Parts,
    late: Option<&OnceLock<Sha256>>,
    crc_announced: bool,
) -> ApiResult<Option<u32>> {
    let too_late = || {
        ApiError::bad(
            "INVALID_INPUT",
            "a part follows the `file` part: send every field before the file (only `checksum` \
             and an announced `crc32c` may follow it, once each)",
        )
    };
    let mut crc = None;
    let mut sum = None;
    while let Some(f) = mp.next_part().await.map_err(|e| malformed(&e))? {
        match f.name.as_str() {
            "checksum" if late.is_some() && sum.is_none() => {
                sum = Some(parse_checksum(&text_field(mp, "checksum").await?)?);
            }
            "crc32c" if crc_announced && crc.is_none() => {
                let t = text_field(mp, "crc32c").await?;
                let t = t.trim();
                crc = Some(
                    u32::from_str_radix(t, 16)
                        .ok()
                        .filter(|_| t.len() == 8)
                        .ok_or_else(|| {
                            ApiError::bad("INVALID_INPUT", "`crc32c` must be 8 hex digits")
                        })?,
                );
            }
            _ => return Err(too_late()),
        }
    }
    if crc_announced && crc.is_none() {
        return Err(ApiError::bad(
            "INVALID_INPUT",
            "the `crc32c` part announced by `trailer` does not follow the file; nothing stored",
        ));
    }
    if let (Some(late), Some(sum)) = (late, sum) {
        let _ = late.set(sum);
    }
    Ok(crc)
}

/// What the text parts say about the file.
struct Declared {
    key: ml_dash::FileKey,
    version: NewVersion,
    checksum: Option<Sha256>,
    /// A `crc32c` part follows the file (announced by `trailer: crc32c`).
    crc32c: bool,
}

fn declared(
    app: &Shared,
    caller: &Caller,
    ns: &str,
    fields: &HashMap<String, String>,
    part_filename: Option<&str>,
) -> ApiResult<Declared> {
    let get = |k: &str| fields.get(k).map(String::as_str).filter(|s| !s.is_empty());
    if let Some(t) = get("type")
        && t != "FILE"
    {
        return Err(ApiError::bad(
            "INVALID_INPUT",
            format!("a multipart upload makes a FILE node, not {t:?}"),
        ));
    }
    let exp_id = get("experimentId")
        .ok_or_else(|| ApiError::bad("INVALID_INPUT", "the `experimentId` part is required"))?;
    let exp = experiment(app, caller, exp_id)?;
    if exp.namespace != ns {
        return Err(ApiError::bad(
            "INVALID_INPUT",
            format!("experiment {exp_id} is not in namespace {ns:?}"),
        ));
    }
    let prefix = match get("parentId") {
        None | Some("ROOT") => "/".to_string(),
        Some(p) if p == exp_id => "/".to_string(),
        Some(p) => match node(app, p)? {
            (
                _,
                Node::ExpFolder {
                    ns: a,
                    project,
                    name,
                    prefix,
                },
            ) if a == exp.namespace && project == exp.project && name == exp.experiment => prefix,
            (n, _) => {
                return Err(ApiError::not_found(format!(
                    "node {n} is not a folder of experiment {exp_id}"
                )));
            }
        },
    };
    let filename = get("name")
        .or(part_filename.filter(|f| !f.is_empty()))
        .ok_or_else(|| ApiError::bad("INVALID_INPUT", "the `name` part is required"))?;
    ml_dash::validate::segment("file name", filename)?;
    let checksum = get("checksum").map(parse_checksum).transpose()?;
    let crc32c = match get("trailer") {
        None => false,
        Some("crc32c") => true,
        Some(t) => {
            return Err(ApiError::bad(
                "INVALID_INPUT",
                format!(
                    "`trailer` may only announce `crc32c`, not {:?}",
                    t.chars().take(40).collect::<String>()
                ),
            ));
        }
    };
    let tags: Vec<String> = get("tags")
        .map(|t| {
            t.split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    ml_dash::validate::check_tags(&tags)?;
    let metadata = match get("metadata") {
        None => Value::Null,
        Some(m) => {
            let v: Value = serde_json::from_str(m).map_err(|e| {
                ApiError::bad(
                    "INVALID_INPUT",
                    format!("`metadata` is not valid JSON: {e}"),
                )
            })?;
            if !(v.is_object() || v.is_null()) {
                return Err(ApiError::bad(
                    "INVALID_INPUT",
                    "`metadata` must be a JSON object",
                ));
            }
            ml_dash::validate::check_metadata(&v)?;
            v
        }
    };
    let description = get("description").map(str::to_string);
    if let Some(d) = &description {
        ml_dash::validate::check_description(d)?;
    }
    Ok(Declared {
        key: exp.file(prefix, filename.to_string()),
        version: NewVersion {
            description,
            tags,
            metadata,
        },
        checksum,
        crc32c,
    })
}

/// Stream one multipart upload into the store.
pub async fn upload(
    app: Shared,
    ns: String,
    caller: Caller,
    content_type: &str,
    body: Body,
) -> ApiResult<Response> {
    let boundary = crate::multipart::boundary(content_type).map_err(|e| malformed(&e))?;
    let mut mp = Multipart::new(body.into_data_stream(), &boundary);
    let mut fields: HashMap<String, String> = HashMap::new();
    let file = loop {
        let Some(f) = mp.next_part().await.map_err(|e| malformed(&e))? else {
            return Err(ApiError::bad(
                "INVALID_INPUT",
                "the body has no `file` part",
            ));
        };
        let name = f.name;
        if name == "file" {
            break f.filename;
        }
        if fields.len() >= MAX_FIELDS {
            return Err(ApiError::bad(
                "INVALID_INPUT",
                "too many parts before the file",
            ));
        }
        let text = text_field(&mut mp, &name).await?;
        if fields.insert(name.clone(), text).is_some() {
            return Err(ApiError::bad(
                "INVALID_INPUT",
                format!(
                    "part {:?} is given twice",
                    name.chars().take(40).collect::<String>()
                ),
            ));
        }
    };
    let part_filename = file;
    let (app2, caller2, ns2) = (app.clone(), caller.clone(), ns.clone());
    let d =
        crate::blocking(move || declared(&app2, &caller2, &ns2, &fields, part_filename.as_deref()))
            .await?;
    let _slot = app
        .upload_slots
        .acquire()
        .await
        .map_err(|_| ApiError::internal("the server is stopping"))?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Msg>(CHANNEL_DEPTH);
    let app2 = app.clone();
    // No checksum before the file: it may come after it.
    let late = d.checksum.is_none().then(|| Arc::new(OnceLock::new()));
    let late2 = late.clone();
    let crc_announced = d.crc32c;
    let mut crc = crate::crc32c::Crc32c::new();
    let ingest = tokio::task::spawn_blocking(move || {
        let reader = ChannelReader {
            rx,
            cur: Bytes::new(),
            ended: false,
        };
        let mut batch = app2.store.upload_batch();
        match (d.checksum, late2) {
            (Some(c), _) => batch.reader_checked(reader, d.key, d.version, c),
            (None, Some(late)) => batch.reader_checked_at_end(reader, d.key, d.version, late),
            (None, None) => batch.reader(reader, d.key, d.version),
        };
        batch.commit()
    });
    let mut failure: Option<ApiError> = None;
    let mut complete = false;
    loop {
        let Ok(next) = tokio::time::timeout(IDLE, mp.chunk()).await else {
            let e = ApiError::new(
                axum::http::StatusCode::REQUEST_TIMEOUT,
                "STALLED",
                format!(
                    "no bytes of the upload for {} s; nothing stored",
                    IDLE.as_secs()
                ),
            );
            let _ = tx.send(Msg::Fail(e.message.clone())).await;
            failure = Some(e);
            break;
        };
        match next {
            Ok(Some(b)) => {
                if crc_announced {
                    crc.update(&b);
                }
                if tx.send(Msg::Data(b)).await.is_err() {
                    // The ingest stopped early: its error is the answer.
                    break;
                }
            }
            Ok(None) => {
                complete = true;
                break;
            }
            Err(e) => {
                let e = malformed(&e);
                let _ = tx.send(Msg::Fail(e.message.clone())).await;
                failure = Some(e);
                break;
            }
        }
    }
    if complete {
        // Other fields would come too late to apply; a checksum is set before the ingest
        // reads the end of the bytes.
        let end = match after_file(&mut mp, late.as_deref(), crc_announced).await {
            Ok(Some(want)) if want != crc.value() => {
                let e = ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "CHECKSUM_MISMATCH",
                    format!(
                        "the bytes received have CRC-32C {:08x}, the client sent {want:08x}: \
                         damaged on the way; nothing stored",
                        crc.value()
                    ),
                );
                let m = Msg::Fail(e.message.clone());
                failure = Some(e);
                m
            }
            Ok(_) => Msg::End,
            Err(e) => {
                let m = Msg::Fail(e.message.clone());
                failure = Some(e);
                m
            }
        };
        let _ = tx.send(end).await;
    }
    drop(tx);
    let result = ingest
        .await
        .map_err(|e| ApiError::internal(format!("the upload task failed: {e}")))?;
    if let Some(f) = failure {
        return Err(f);
    }
    let mut records = result?;
    let r = records
        .pop()
        .ok_or_else(|| ApiError::internal("an upload of one file stored none"))?;
    app.catalog.register_version(&r);
    #[cfg(feature = "remote")]
    if let Some(p) = &app.push {
        p.committed();
    }
    let node = file_json(&r);
    let physical = node["physicalFile"].clone();
    Ok((
        StatusCode::CREATED,
        Json(json!({"node": node, "physicalFile": physical})),
    )
        .into_response())
}
