//! A streaming `multipart/form-data` parser for uploads, written so that a part's bytes are
//! handed on as slices of the frames the connection received: a GiB file part is not copied
//! on its way from the socket to the ingest (only the few bytes where a frame ends in what
//! could be the start of a boundary are joined to the next frame).
//!
//! It reads what clients send (RFC 7578): a preamble (at most 64 KiB, ignored), parts each
//! with a header block (at most 8 KiB; `Content-Disposition: form-data; name=...;
//! filename=...`), and the closing delimiter; whatever follows the closing delimiter is
//! ignored. A body that ends before the closing delimiter is an error, as is a header block
//! without a `form-data` disposition and a `name`.

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};

/// Bytes of preamble before the first boundary that are tolerated.
const MAX_PREAMBLE: usize = 64 * 1024;
/// Largest header block of a part.
const MAX_HEADERS: usize = 8 * 1024;
/// Longest boundary (RFC 2046 says 70 characters).
const MAX_BOUNDARY: usize = 200;

/// A malformed or cut-off body, or a failure of the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MultipartError(pub String);

impl std::fmt::Display for MultipartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn err<T>(why: impl Into<String>) -> Result<T, MultipartError> {
    Err(MultipartError(why.into()))
}

/// The boundary of a `multipart/form-data` content type.
pub fn boundary(content_type: &str) -> Result<String, MultipartError> {
    let mut it = content_type.split(';');
    let mime = it.next().unwrap_or_default().trim();
    if !mime.eq_ignore_ascii_case("multipart/form-data") {
        return err(format!(
            "the content type is not multipart/form-data: {mime:?}"
        ));
    }
    for p in it {
        if let Some((k, v)) = p.split_once('=')
            && k.trim().eq_ignore_ascii_case("boundary")
        {
            let v = unquote(v.trim());
            if v.is_empty() || v.len() > MAX_BOUNDARY || v.bytes().any(|b| b == b'\r' || b == b'\n')
            {
                return err("the multipart boundary is empty, too long or has a line break");
            }
            return Ok(v);
        }
    }
    err("the multipart content type has no boundary")
}

fn unquote(v: &str) -> String {
    match v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        Some(inner) => {
            let mut out = String::with_capacity(inner.len());
            let mut esc = false;
            for c in inner.chars() {
                if esc || c != '\\' {
                    out.push(c);
                    esc = false;
                } else {
                    esc = true;
                }
            }
            out
        }
        None => v.to_string(),
    }
}

/// One part's headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// The form field's name.
    pub name: String,
    /// The file name, for a file part.
    pub filename: Option<String>,
}

/// Where the parser is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum At {
    /// Before the first boundary.
    Start,
    /// In a part's body.
    Body,
    /// A part's body has ended: `buf` starts with the delimiter.
    Delimiter,
    /// After the closing delimiter.
    Done,
}

/// A multipart body read from a stream of frames.
pub struct Multipart<S> {
    stream: S,
    /// `\r\n--` and the boundary.
    delim: Vec<u8>,
    /// Received and not yet handed on.
    buf: Bytes,
    ended: bool,
    at: At,
}

impl<S, E> Multipart<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    /// A parser of `stream` with `boundary` (see [`boundary`]).
    pub fn new(stream: S, boundary: &str) -> Multipart<S> {
        Multipart {
            stream,
            delim: [b"\r\n--", boundary.as_bytes()].concat(),
            // The first delimiter has no line break before it: one is supplied.
            buf: Bytes::from_static(b"\r\n"),
            ended: false,
            at: At::Start,
        }
    }

    /// Append the next frame to `buf` (copying only when `buf` still holds something, which
    /// is at most a partial delimiter or a header block). False at the end of the stream.
    async fn more(&mut self) -> Result<bool, MultipartError> {
        if self.ended {
            return Ok(false);
        }
        loop {
            match self.stream.next().await {
                None => {
                    self.ended = true;
                    return Ok(false);
                }
                Some(Err(e)) => return err(format!("the body failed: {e}")),
                Some(Ok(f)) if f.is_empty() => {}
                Some(Ok(f)) => {
                    if self.buf.is_empty() {
                        self.buf = f;
                    } else {
                        let mut joined = BytesMut::with_capacity(self.buf.len() + f.len());
                        joined.extend_from_slice(&self.buf);
                        joined.extend_from_slice(&f);
                        self.buf = joined.freeze();
                    }
                    return Ok(true);
                }
            }
        }
    }

    /// The next part's headers, or `None` after the closing delimiter. The rest of the
    /// current part, if any, is skipped.
    pub async fn next_part(&mut self) -> Result<Option<Part>, MultipartError> {
        while self.at == At::Body {
            self.chunk().await?;
        }
        match self.at {
            At::Done => return Ok(None),
            At::Start => loop {
                if let Some(i) = memchr::memmem::find(&self.buf, &self.delim)
                    && i <= MAX_PREAMBLE
                {
                    let _ = self.buf.split_to(i);
                    break;
                }
                if self.buf.len() > MAX_PREAMBLE {
                    return err("no multipart boundary in the first 64 KiB of the body");
                }
                if !self.more().await? {
                    return err("the body has no multipart boundary");
                }
            },
            At::Delimiter | At::Body => {}
        }
        // The delimiter, then `--` (the end) or optional blanks and a line break.
        let d = self.delim.len();
        while self.buf.len() < d + 2 {
            if !self.more().await? {
                return err("the body ends inside a multipart boundary");
            }
        }
        if self.buf[d..d + 2] == *b"--" {
            self.at = At::Done;
            self.buf = Bytes::new();
            return Ok(None);
        }
        let head_end = loop {
            if let Some(i) = memchr::memmem::find(&self.buf[d..], b"\r\n\r\n") {
                break d + i;
            }
            if self.buf.len() > d + MAX_HEADERS {
                return err("a multipart part has more than 8 KiB of headers");
            }
            if !self.more().await? {
                return err("the body ends inside a part's headers");
            }
        };
        if head_end + 4 > d + MAX_HEADERS {
            return err("a multipart part has more than 8 KiB of headers");
        }
        let block = self.buf.split_to(head_end + 4);
        let text = &block[d..head_end + 2];
        // Blanks may follow the boundary before its line break.
        let first_break = memchr::memmem::find(text, b"\r\n").unwrap_or(text.len());
        if text[..first_break]
            .iter()
            .any(|b| *b != b' ' && *b != b'\t')
        {
            return err("a multipart boundary is followed by something other than a line break");
        }
        let headers = &text[(first_break + 2).min(text.len())..];
        let part = parse_headers(headers)?;
        self.at = At::Body;
        Ok(Some(part))
    }

    /// The next bytes of the current part's body, `None` at its end.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, MultipartError> {
        if self.at != At::Body {
            return Ok(None);
        }
        loop {
            if let Some(i) = memchr::memmem::find(&self.buf, &self.delim) {
                if i > 0 {
                    return Ok(Some(self.buf.split_to(i)));
                }
                self.at = At::Delimiter;
                return Ok(None);
            }
            // No delimiter: all but a possible start of one at the end is the part's.
            let keep = partial_suffix(&self.buf, &self.delim);
            if self.buf.len() > keep {
                return Ok(Some(self.buf.split_to(self.buf.len() - keep)));
            }
            if !self.more().await? {
                return err(
                    "the body ends inside a part (it was cut off before its last boundary)",
                );
            }
        }
    }
}

/// The length of the longest end of `buf` that is a beginning of `delim` (shorter than it).
fn partial_suffix(buf: &[u8], delim: &[u8]) -> usize {
    let most = buf.len().min(delim.len() - 1);
    for k in (1..=most).rev() {
        if buf[buf.len() - k..] == delim[..k] {
            return k;
        }
    }
    0
}

/// A part's header lines: its `Content-Disposition` gives the name and file name.
fn parse_headers(block: &[u8]) -> Result<Part, MultipartError> {
    let Ok(text) = std::str::from_utf8(block) else {
        return err("a multipart part's headers are not UTF-8");
    };
    let mut part = None;
    for line in text.split("\r\n").filter(|l| !l.is_empty()) {
        let Some((k, v)) = line.split_once(':') else {
            return err("a multipart part has a header line without ':'");
        };
        if !k.trim().eq_ignore_ascii_case("content-disposition") {
            continue;
        }
        let mut it = split_params(v);
        if !it
            .next()
            .is_some_and(|t| t.trim().eq_ignore_ascii_case("form-data"))
        {
            return err("a multipart part's disposition is not form-data");
        }
        let (mut name, mut filename) = (None, None);
        for p in it {
            let Some((k, v)) = p.split_once('=') else {
                continue;
            };
            match k.trim().to_ascii_lowercase().as_str() {
                "name" => name = Some(unquote(v.trim())),
                "filename" => filename = Some(unquote(v.trim())),
                _ => {}
            }
        }
        let Some(name) = name else {
            return err("a multipart part has no name");
        };
        part = Some(Part { name, filename });
    }
    match part {
        Some(p) => Ok(p),
        None => err("a multipart part has no Content-Disposition header"),
    }
}

/// `a; b="x;y"; c` split at the semicolons outside quotes.
fn split_params(v: &str) -> impl Iterator<Item = &str> {
    let mut out = Vec::new();
    let (mut start, mut quoted, mut esc) = (0, false, false);
    for (i, c) in v.char_indices() {
        match c {
            _ if esc => esc = false,
            '\\' if quoted => esc = true,
            '"' => quoted = !quoted,
            ';' if !quoted => {
                out.push(&v[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&v[start..]);
    out.into_iter()
}

/// Parse a whole body given as frames: every part's name, file name and bytes (for tests and
/// the fuzz target, which checks that any cut of the same body into frames parses the same).
pub async fn parse_frames(
    frames: Vec<Bytes>,
    boundary: &str,
) -> Result<Vec<(Part, Vec<u8>)>, MultipartError> {
    let stream =
        futures_util::stream::iter(frames.into_iter().map(Ok::<_, std::convert::Infallible>));
    let mut mp = Multipart::new(stream, boundary);
    let mut out = Vec::new();
    while let Some(p) = mp.next_part().await? {
        let mut body = Vec::new();
        while let Some(c) = mp.chunk().await? {
            body.extend_from_slice(&c);
        }
        out.push((p, body));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::{Part, boundary, parse_frames, partial_suffix};
    use bytes::Bytes;

    fn run(frames: Vec<Bytes>, b: &str) -> Result<Vec<(Part, Vec<u8>)>, super::MultipartError> {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(parse_frames(frames, b))
    }

    fn body(b: &str, file: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(
            format!(
                "preamble\r\n--{b}\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\nx.bin\r\n\
                 --{b}  \r\nContent-Disposition: form-data; name=\"file\"; filename=\"a;\\\"b\\\".bin\"\r\n\
                 Content-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        v.extend_from_slice(file);
        v.extend_from_slice(format!("\r\n--{b}--\r\nepilogue").as_bytes());
        v
    }

    #[test]
    fn any_cut_into_frames_parses_the_same() {
        let b = "XyZ";
        // A file full of near-boundaries.
        let mut file = Vec::new();
        for i in 0..200u32 {
            file.extend_from_slice(b"\r\n--X");
            file.extend_from_slice(b"\r\n--Xy\r");
            file.push(u8::try_from(i % 251).unwrap());
        }
        let whole = body(b, &file);
        let want = run(vec![Bytes::from(whole.clone())], b).unwrap();
        assert_eq!(want.len(), 2);
        assert_eq!(want[0].0.name, "name");
        assert_eq!(want[0].1, b"x.bin");
        assert_eq!(want[1].0.filename.as_deref(), Some("a;\"b\".bin"));
        assert_eq!(want[1].1, file);
        for size in [1, 2, 3, 5, 7, 13, 64, 1000] {
            let frames: Vec<Bytes> = whole.chunks(size).map(Bytes::copy_from_slice).collect();
            assert_eq!(run(frames, b).unwrap(), want, "frames of {size}");
        }
    }

    #[test]
    fn cut_off_and_malformed_bodies_fail() {
        let b = "bound";
        let whole = body(b, b"data");
        let end = whole.len() - "--\r\nepilogue".len();
        for cut in [0, 10, 40, 90, 130, end - 4] {
            assert!(
                run(vec![Bytes::copy_from_slice(&whole[..cut])], b).is_err(),
                "cut {cut}"
            );
        }
        let no_name = format!("--{b}\r\nContent-Disposition: form-data\r\n\r\nx\r\n--{b}--");
        assert!(run(vec![Bytes::from(no_name)], b).is_err());
        let junk =
            format!("--{b}junk\r\nContent-Disposition: form-data; name=a\r\n\r\nx\r\n--{b}--");
        assert!(run(vec![Bytes::from(junk)], b).is_err());
        assert!(run(vec![Bytes::from(vec![b'a'; 100_000])], b).is_err());
    }

    #[test]
    fn boundaries_and_suffixes() {
        assert_eq!(
            boundary("multipart/form-data; boundary=abc").unwrap(),
            "abc"
        );
        assert_eq!(
            boundary("Multipart/Form-Data;boundary=\"a b\"").unwrap(),
            "a b"
        );
        assert!(boundary("text/plain; boundary=abc").is_err());
        assert!(boundary("multipart/form-data").is_err());
        assert_eq!(partial_suffix(b"data\r\n-", b"\r\n--b"), 3);
        assert_eq!(partial_suffix(b"data\r", b"\r\n--b"), 1);
        assert_eq!(partial_suffix(b"data", b"\r\n--b"), 0);
    }
}
