//! The pages: the experiment list, a namespace's and a project's experiments, an experiment in
//! tabs (files, metrics, parameters, logs, storage), the store page, search, sign-in and
//! previews. Every page is rendered on the server from the same store the API serves.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::header::{CONTENT_TYPE, LOCATION, SET_COOKIE};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::{Extension, body::Body};
use ml_dash::{ExperimentKey, FileRecord, ListFilter, Scope};
use serde::Deserialize;
use serde_json::Value;

use super::WebSession;
use super::chart::{self, Series};
use super::html::{bytes, enc, esc, page, table};
use super::session::{set_anon_cookie, set_cookie};
use crate::Shared;
use crate::auth::Caller;
use crate::catalog::{Node, experiment_key};
use crate::error::ApiError;

/// Points per chart series the browser receives at most (twice the buckets).
const BUCKETS: usize = 1000;
/// Largest file previewed as text, and how much of it is shown.
const TEXT_PREVIEW: u64 = 256 * 1024;
/// Largest image shown inline.
const IMAGE_PREVIEW: u64 = 32 << 20;
/// Log lines per page.
const LOG_PAGE: usize = 200;
/// Versions listed per page of the Files tab.
const FILES_PAGE: usize = 500;
/// Folder READMEs rendered on one Files tab.
const MAX_READMES: usize = 20;

type PageResult = Result<Response, ApiError>;

fn html(title: &str, caller: Option<&Caller>, ws: &WebSession, body: &str) -> Response {
    let who = caller.map(|c| match c {
        Caller::Open => "open store".to_string(),
        Caller::Token(t) => t.name.clone(),
    });
    Html(page(
        title,
        who.as_deref().filter(|_| ws.signed_in),
        &ws.csrf,
        body,
    ))
    .into_response()
}

/// The sign-in form (a page asked for without a valid session or token).
fn sign_in(ws: &WebSession, next: &str, error: Option<&str>) -> Response {
    let err = error
        .map(|e| format!("<p class=\"error\">{}</p>", esc(e)))
        .unwrap_or_default();
    let body = format!(
        "<section class=\"signin\"><h1>Sign in</h1>{err}<p>Paste a token made with \
         <code>ml-dash token add NAME</code>.</p>\
         <form method=\"post\" action=\"/-/login\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
         <input type=\"hidden\" name=\"next\" value=\"{}\">\
         <input type=\"password\" name=\"token\" autocomplete=\"off\" aria-label=\"Token\" autofocus>\
         <button type=\"submit\">Sign in</button></form></section>",
        esc(&ws.csrf),
        esc(next)
    );
    // A page like any other (200): scripts see the sign-in form, not an error.
    Html(page("Sign in", None, &ws.csrf, &body)).into_response()
}

/// The link to an experiment's page.
pub fn exp_href(e: &ExperimentKey) -> String {
    format!(
        "{}/{}",
        ns_href(&e.namespace, &e.project),
        enc(&e.experiment)
    )
}

/// Namespaces that are also the server's own first path segments are linked under `/-/n/`.
fn ns_href(ns: &str, project: &str) -> String {
    let base = if matches!(ns, "api" | "graphql" | "health" | "-") {
        format!("/-/n/{}", enc(ns))
    } else {
        format!("/{}", enc(ns))
    };
    if project.is_empty() {
        base
    } else {
        format!("{base}/{}", enc(project))
    }
}

fn exp_name(e: &ExperimentKey) -> String {
    format!("{}/{}/{}", e.namespace, e.project, e.experiment)
}

fn version_node(r: &FileRecord) -> u64 {
    Node::Version {
        id: r.id.to_string(),
    }
    .id()
}

/// One experiment's row in a list.
struct ExpRow {
    key: ExperimentKey,
    status: String,
    updated: String,
    files: usize,
    logical: u64,
    new_bytes: u64,
}

/// The scope of one experiment.
fn exp_scope(key: &ExperimentKey) -> Scope {
    Scope {
        namespace: Some(key.namespace.clone()),
        project: Some(key.project.clone()),
        experiment: Some(key.experiment.clone()),
    }
}

fn exp_row(app: &Shared, key: ExperimentKey) -> Result<ExpRow, ApiError> {
    let recs = app.store.list(&ListFilter {
        scope: exp_scope(&key),
        all_versions: true,
        ..Default::default()
    })?;
    let j = app.store.journal_shared(&key)?;
    let mut paths = std::collections::HashSet::new();
    let (mut logical, mut new_bytes) = (0, 0);
    let mut updated = String::new();
    let mut latest: BTreeMap<String, u64> = BTreeMap::new();
    for r in &recs {
        paths.insert(r.full_path());
        latest.insert(r.full_path(), r.size_bytes);
        new_bytes += r.new_bytes;
        if r.updated_at > updated {
            updated.clone_from(&r.updated_at);
        }
    }
    logical += latest.values().sum::<u64>();
    if let Some(p) = &j.params
        && p.updated_at > updated
    {
        updated.clone_from(&p.updated_at);
    }
    if let Some(l) = j.logs.last()
        && l.timestamp > updated
    {
        updated.clone_from(&l.timestamp);
    }
    Ok(ExpRow {
        status: j
            .info
            .as_ref()
            .and_then(|i| i.status.clone())
            .unwrap_or_default(),
        key,
        updated,
        files: paths.len(),
        logical,
        new_bytes,
    })
}

fn exp_table(rows: &[ExpRow]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                format!(
                    "<a href=\"{}\">{}</a>",
                    esc(&ns_href(&r.key.namespace, "")),
                    esc(&r.key.namespace)
                ),
                format!(
                    "<a href=\"{}\">{}</a>",
                    esc(&ns_href(&r.key.namespace, &r.key.project)),
                    esc(&r.key.project)
                ),
                format!(
                    "<a class=\"exp\" href=\"{}\">{}</a>",
                    esc(&exp_href(&r.key)),
                    esc(&r.key.experiment)
                ),
                format!("<span class=\"status {0}\">{0}</span>", esc(&r.status)),
                esc(&r.updated),
                r.files.to_string(),
                bytes(r.logical),
                bytes(r.new_bytes),
            ]
        })
        .collect();
    table(
        "experiments",
        &[
            "Namespace",
            "Project",
            "Experiment",
            "Status",
            "Last update",
            "Files",
            "Logical",
            "Stored (new)",
        ],
        &cells,
    )
}

/// Experiments the caller may see, optionally of one namespace / project.
async fn experiment_rows(
    app: &Shared,
    caller: &Caller,
    ns: Option<String>,
    project: Option<String>,
) -> Result<Vec<ExpRow>, ApiError> {
    let (app, caller) = (app.clone(), caller.clone());
    crate::blocking(move || {
        let mut rows = Vec::new();
        for e in app.catalog.experiments(ns.as_deref(), project.as_deref()) {
            if caller.allows(&e.namespace) {
                rows.push(exp_row(&app, e)?);
            }
        }
        rows.sort_by(|a, b| b.updated.cmp(&a.updated));
        Ok(rows)
    })
    .await
}

/// `/`: every experiment the caller may see, most recently updated first.
pub async fn home(
    State(app): State<Shared>,
    caller: Option<Extension<Caller>>,
    Extension(ws): Extension<WebSession>,
) -> PageResult {
    let Some(Extension(caller)) = caller else {
        return Ok(sign_in(&ws, "/", None));
    };
    let rows = experiment_rows(&app, &caller, None, None).await?;
    let body = format!(
        "<h1>Experiments</h1><p class=\"muted\">{} experiments</p>{}",
        rows.len(),
        exp_table(&rows)
    );
    Ok(html("Experiments", Some(&caller), &ws, &body))
}

#[derive(Deserialize, Default)]
pub struct PageQuery {
    tab: Option<String>,
    preview: Option<String>,
    x: Option<String>,
    xmin: Option<f64>,
    xmax: Option<f64>,
    q: Option<String>,
    level: Option<String>,
    page: Option<usize>,
    /// Metrics: other experiments (`ns/project/name`, comma separated) overlaid.
    compare: Option<String>,
    /// Parameters: another experiment (`ns/project/name`) to compare with.
    diff: Option<String>,
    /// Logs: from / to this time (ISO-8601 prefixes compare as text).
    from: Option<String>,
    to: Option<String>,
}

/// Experiments named `ns/project/name` in a comma-separated list, with their journals: only
/// those that exist and the caller may read.
fn others(
    app: &Shared,
    caller: &Caller,
    list: Option<&str>,
) -> Result<Vec<(ExperimentKey, std::sync::Arc<ml_dash::JournalContents>)>, ApiError> {
    let mut out = Vec::new();
    for item in list
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .take(8)
    {
        let parts: Vec<&str> = item.splitn(3, '/').collect();
        let [ns, project, name] = parts.as_slice() else {
            return Err(ApiError::bad(
                "INVALID_INPUT",
                "compare with `namespace/project/experiment`",
            ));
        };
        caller.check(ns)?;
        let key = experiment_key(ns, project, &name.replace('/', "."));
        if !app
            .catalog
            .experiments(Some(ns), Some(project))
            .contains(&key)
        {
            return Err(ApiError::not_found(format!("no experiment {item}")));
        }
        let j = app.store.journal_shared(&key)?;
        out.push((key, j));
    }
    Ok(out)
}

/// `/ns`, `/ns/project`, `/ns/project/experiment` (or `/ns/project/folder/.../experiment`,
/// whose stored name is the dotted path), and the same under `/-/n/`.
pub async fn path_page(
    State(app): State<Shared>,
    caller: Option<Extension<Caller>>,
    Extension(ws): Extension<WebSession>,
    Path(path): Path<String>,
    Query(q): Query<PageQuery>,
    uri: axum::http::Uri,
) -> PageResult {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let Some(Extension(caller)) = caller else {
        let back = uri.path_and_query().map_or("/", |p| p.as_str());
        return Ok(sign_in(
            &ws,
            if local_path(back) { back } else { "/" },
            None,
        ));
    };
    for s in &segs {
        ml_dash::validate::segment("name", s)?;
    }
    match segs.as_slice() {
        [] => Err(ApiError::not_found("no such page")),
        [ns] => {
            caller.check(ns)?;
            let rows = experiment_rows(&app, &caller, Some((*ns).to_string()), None).await?;
            let body = format!("<h1>{}</h1>{}", esc(ns), exp_table(&rows));
            Ok(html(ns, Some(&caller), &ws, &body))
        }
        [ns, project] => {
            caller.check(ns)?;
            let rows = experiment_rows(
                &app,
                &caller,
                Some((*ns).to_string()),
                Some((*project).to_string()),
            )
            .await?;
            let body = format!(
                "<h1><a href=\"{}\">{}</a> / {}</h1>{}",
                esc(&ns_href(ns, "")),
                esc(ns),
                esc(project),
                exp_table(&rows)
            );
            Ok(html(project, Some(&caller), &ws, &body))
        }
        [ns, project, rest @ ..] => {
            caller.check(ns)?;
            let key = experiment_key(ns, project, &rest.join("."));
            experiment_page(app, caller, ws, key, q).await
        }
    }
}

const TABS: [(&str, &str); 5] = [
    ("files", "Files"),
    ("metrics", "Metrics"),
    ("params", "Parameters"),
    ("logs", "Logs"),
    ("storage", "Storage"),
];

async fn experiment_page(
    app: Shared,
    caller: Caller,
    ws: WebSession,
    key: ExperimentKey,
    q: PageQuery,
) -> PageResult {
    let tab = q.tab.clone().unwrap_or_else(|| "files".into());
    if !TABS.iter().any(|(t, _)| *t == tab) {
        return Err(ApiError::bad("INVALID_INPUT", "no such tab"));
    }
    let (app2, key2, tab2) = (app.clone(), key.clone(), tab.clone());
    let csrf = ws.csrf.clone();
    let caller2 = caller.clone();
    let (head, content) = crate::blocking(move || {
        let known = app2
            .catalog
            .experiments(Some(&key2.namespace), Some(&key2.project));
        if !known.contains(&key2) {
            return Err(ApiError::not_found(format!(
                "no experiment {}",
                exp_name(&key2)
            )));
        }
        let j = app2.store.journal_shared(&key2)?;
        let info = j.info.clone().unwrap_or_default();
        let head = format!(
            "<h1><a href=\"{}\">{}</a> / <a href=\"{}\">{}</a> / {}</h1><p>{} {} {}</p>",
            esc(&ns_href(&key2.namespace, "")),
            esc(&key2.namespace),
            esc(&ns_href(&key2.namespace, &key2.project)),
            esc(&key2.project),
            esc(&key2.experiment),
            info.status
                .as_deref()
                .map(|s| format!("<span class=\"status {0}\">{0}</span>", esc(s)))
                .unwrap_or_default(),
            esc(info.description.as_deref().unwrap_or_default()),
            info.tags
                .unwrap_or_default()
                .iter()
                .map(|t| format!("<span class=\"tag\">{}</span>", esc(t)))
                .collect::<String>(),
        );
        let content = match tab2.as_str() {
            "files" => files_tab(&app2, &key2, &q, &csrf)?,
            "metrics" => metrics_tab(&j, &others(&app2, &caller2, q.compare.as_deref())?, &q),
            "params" => params_tab(
                &j,
                &others(
                    &app2,
                    &caller2,
                    q.diff
                        .as_deref()
                        .map(|d| d.split(',').next().unwrap_or_default()),
                )?,
                &q,
            ),
            "logs" => logs_tab(&j, &q),
            _ => storage_tab(&app2, &caller2, &key2)?,
        };
        Ok((head, content))
    })
    .await?;
    let base = exp_href(&key);
    let mut nav = String::from("<nav class=\"tabs\">");
    for (t, label) in TABS {
        let _ = write!(
            nav,
            "<a href=\"{}?tab={t}\" class=\"tab{}\" data-tab=\"{t}\">{label}</a>",
            esc(&base),
            if t == tab { " active" } else { "" }
        );
    }
    nav.push_str("</nav>");
    let body =
        format!("{head}{nav}<section class=\"tab-body\" id=\"tab-{tab}\">{content}</section>");
    Ok(html(&key.experiment, Some(&caller), &ws, &body))
}

fn versions_of(app: &Shared, key: &ExperimentKey) -> Result<Vec<FileRecord>, ApiError> {
    Ok(app.store.list(&ListFilter {
        scope: exp_scope(key),
        all_versions: true,
        ..Default::default()
    })?)
}

fn is_image(r: &FileRecord) -> bool {
    let n = r.filename.to_ascii_lowercase();
    [".png", ".jpg", ".jpeg", ".gif", ".webp", ".svg"]
        .iter()
        .any(|e| n.ends_with(e))
}

fn text_kind(r: &FileRecord) -> Option<&'static str> {
    let n = r.filename.to_ascii_lowercase();
    let ext = n.rsplit_once('.').map(|(_, e)| e).unwrap_or_default();
    Some(match ext {
        "json" => "json",
        "csv" => "csv",
        "md" | "markdown" => "markdown",
        "yaml" | "yml" | "txt" | "log" | "toml" | "py" | "cfg" | "ini" => "text",
        _ => return None,
    })
}

fn files_tab(
    app: &Shared,
    key: &ExperimentKey,
    q: &PageQuery,
    csrf: &str,
) -> Result<String, ApiError> {
    let recs = versions_of(app, key)?;
    let mut out = String::new();
    if let Some(p) = &q.preview {
        let id = crate::catalog::parse_id(p)
            .ok_or_else(|| ApiError::bad("INVALID_ID", "not a node id"))?;
        if let Some(r) = recs.iter().find(|r| version_node(r) == id) {
            out.push_str(&preview(app, r)?);
        }
    }
    // The experiment's README.md, shown on its page.
    if q.preview.is_none()
        && let Some(r) = recs
            .iter()
            .rev()
            .find(|r| r.path == "/" && r.filename.eq_ignore_ascii_case("readme.md"))
    {
        out.push_str(&preview(app, r)?);
    }
    // Group by directory, then file name (versions ascending).
    let mut by_path: BTreeMap<(String, String), Vec<&FileRecord>> = BTreeMap::new();
    for r in &recs {
        by_path
            .entry((r.path.clone(), r.filename.clone()))
            .or_default()
            .push(r);
    }
    let _ = write!(
        out,
        "<p class=\"muted\">{} files, {} versions</p><div class=\"files\">",
        by_path.len(),
        recs.len()
    );
    let mut shown = 0;
    let mut readmes = 0;
    let mut last_dir = String::new();
    for versions in by_path.values() {
        let path = versions[0].full_path();
        let dir = versions[0].path.clone();
        if dir != last_dir {
            let _ = write!(out, "<h3 class=\"dir\">{}</h3>", esc(&dir));
            // A folder's README.md, shown under its name (the experiment's own is above).
            if dir != "/"
                && readmes < MAX_READMES
                && let Some(r) = recs
                    .iter()
                    .rev()
                    .find(|r| r.path == dir && r.filename.eq_ignore_ascii_case("readme.md"))
            {
                readmes += 1;
                out.push_str(&preview(app, r)?);
            }
            last_dir = dir;
        }
        let mut rows = Vec::new();
        for r in versions.iter().rev() {
            if shown >= FILES_PAGE {
                break;
            }
            shown += 1;
            let id = version_node(r);
            let previewable = is_image(r) || text_kind(r).is_some();
            rows.push(vec![
                format!("v{}", r.version),
                bytes(r.size_bytes),
                bytes(r.new_bytes),
                format!(
                    "<code title=\"{0}\">{1}</code>",
                    esc(&r.checksum.to_string()),
                    esc(&r.checksum.to_string()[..12])
                ),
                r.tags
                    .iter()
                    .map(|t| format!("<span class=\"tag\">{}</span>", esc(t)))
                    .collect(),
                esc(r.description.as_deref().unwrap_or_default()),
                if r.metadata.is_null() {
                    String::new()
                } else {
                    format!("<code>{}</code>", esc(&r.metadata.to_string()))
                },
                esc(&r.uploaded_at),
                format!(
                    "<a class=\"download\" href=\"/api/nodes/{id}/download\" download>download</a>{}",
                    if previewable {
                        format!(
                            " <a class=\"preview\" href=\"?tab=files&amp;preview={id}\">preview</a>"
                        )
                    } else {
                        String::new()
                    }
                ),
            ]);
        }
        let latest = versions[versions.len() - 1];
        let actions = format!(
            "<form method=\"post\" action=\"/-/tags\" class=\"inline tags-form\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
             <input type=\"hidden\" name=\"id\" value=\"{id}\">\
             <input type=\"text\" name=\"tags\" value=\"{tags}\" aria-label=\"Tags of v{v}\" placeholder=\"tags, comma separated\">\
             <button type=\"submit\">Save tags</button></form> \
             <form method=\"post\" action=\"/-/delete\" class=\"inline delete-form\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
             <input type=\"hidden\" name=\"id\" value=\"{id}\">\
             <button type=\"submit\">Delete</button></form>",
            csrf = esc(csrf),
            id = version_node(latest),
            tags = esc(&latest.tags.join(", ")),
            v = latest.version,
        );
        let _ = write!(
            out,
            "<details class=\"file\" open><summary>{}</summary>{actions}{}</details>",
            esc(&path),
            table(
                "versions",
                &[
                    "Version",
                    "Size",
                    "New bytes",
                    "SHA-256",
                    "Tags",
                    "Description",
                    "Metadata",
                    "Uploaded",
                    ""
                ],
                &rows
            )
        );
        if shown >= FILES_PAGE {
            let _ = write!(
                out,
                "<p class=\"muted\">Showing the first {FILES_PAGE} versions; use \
                 <code>ml-dash list</code> for all.</p>"
            );
            break;
        }
    }
    out.push_str("</div>");
    Ok(out)
}

/// A preview of one version: an image from `/-/raw/`, or the start of a text file rendered.
fn preview(app: &Shared, r: &FileRecord) -> Result<String, ApiError> {
    let id = version_node(r);
    let title = format!(
        "<h2 class=\"preview-title\">{} <span class=\"muted\">v{}</span></h2>",
        esc(&r.full_path()),
        r.version
    );
    if is_image(r) {
        if r.size_bytes > IMAGE_PREVIEW {
            return Ok(format!(
                "{title}<p>Too large to preview ({}).</p>",
                bytes(r.size_bytes)
            ));
        }
        return Ok(format!(
            "<figure class=\"preview\">{title}<img src=\"/-/raw/{id}\" alt=\"{}\"></figure>",
            esc(&r.filename)
        ));
    }
    let Some(kind) = text_kind(r) else {
        return Ok(String::new());
    };
    let mut reader = app.store.open_version(r.id)?;
    let mut buf = Vec::new();
    std::io::Read::read_to_end(
        &mut std::io::Read::take(&mut reader, TEXT_PREVIEW),
        &mut buf,
    )
    .map_err(|e| ApiError::internal(format!("cannot read {}: {e}", r.full_path())))?;
    let cut = r.size_bytes > TEXT_PREVIEW;
    let text = String::from_utf8_lossy(&buf);
    let rendered = match kind {
        "json" if !cut => match serde_json::from_str::<Value>(&text) {
            Ok(v) => format!(
                "<pre class=\"json\">{}</pre>",
                esc(&serde_json::to_string_pretty(&v).unwrap_or_default())
            ),
            Err(_) => format!("<pre>{}</pre>", esc(&text)),
        },
        "csv" => {
            let mut rows: Vec<Vec<String>> = Vec::new();
            for line in text.lines().take(200) {
                rows.push(line.split(',').map(|c| esc(c.trim())).collect());
            }
            let head: Vec<String> = if rows.is_empty() {
                vec![]
            } else {
                rows.remove(0)
            };
            let mut t = String::from("<table class=\"csv\"><thead><tr>");
            for h in &head {
                let _ = write!(t, "<th>{h}</th>");
            }
            t.push_str("</tr></thead><tbody>");
            for r in &rows {
                t.push_str("<tr>");
                for c in r {
                    let _ = write!(t, "<td>{c}</td>");
                }
                t.push_str("</tr>");
            }
            t.push_str("</tbody></table>");
            t
        }
        "markdown" => markdown(&text),
        _ => format!("<pre>{}</pre>", esc(&text)),
    };
    Ok(format!(
        "<section class=\"preview\">{title}{rendered}{}</section>",
        if cut {
            format!(
                "<p class=\"muted\">The first {} of {} shown.</p>",
                bytes(TEXT_PREVIEW),
                bytes(r.size_bytes)
            )
        } else {
            String::new()
        }
    ))
}

/// Markdown as HTML, with any HTML in it shown as text.
fn markdown(text: &str) -> String {
    use pulldown_cmark::{CowStr, Tag};
    use pulldown_cmark::{Event, Parser, html::push_html};
    // Links and images keep relative, http(s) and mailto targets only.
    let safe = |u: &CowStr<'_>| {
        let l = u.trim_start().to_ascii_lowercase();
        let scheme = l.split_once(':').map(|(s, _)| s.to_string());
        match scheme {
            Some(s) if !s.contains('/') && !s.contains('?') && !s.contains('#') => {
                matches!(s.as_str(), "http" | "https" | "mailto")
            }
            _ => true,
        }
    };
    let events = Parser::new(text).map(|e| match e {
        Event::Html(h) | Event::InlineHtml(h) => Event::Text(h),
        Event::Start(Tag::Link {
            link_type,
            dest_url,
            title,
            id,
        }) if !safe(&dest_url) => Event::Start(Tag::Link {
            link_type,
            dest_url: "#".into(),
            title,
            id,
        }),
        Event::Start(Tag::Image {
            link_type,
            dest_url,
            title,
            id,
        }) if !safe(&dest_url) => Event::Start(Tag::Image {
            link_type,
            dest_url: "#".into(),
            title,
            id,
        }),
        other => other,
    });
    let mut out = String::from("<div class=\"markdown\">");
    push_html(&mut out, events);
    out.push_str("</div>");
    out
}

/// `<option>`s of a select (fixed values), `selected` marked.
fn options(values: &[&str], selected: &str) -> String {
    values
        .iter()
        .map(|v| {
            let mark = if *v == selected { " selected" } else { "" };
            format!("<option value=\"{v}\"{mark}>{v}</option>")
        })
        .collect()
}

/// The numeric value of a point's field (`_ts` for time, `index` for step).
fn field(p: &ml_dash::MetricPoint, x: &str) -> Option<f64> {
    match x {
        "step" => {
            #[expect(clippy::cast_precision_loss, reason = "a step as a coordinate")]
            let index = p.index as f64;
            Some(p.data.get("step").and_then(Value::as_f64).unwrap_or(index))
        }
        "time" => p.data.get("_ts").and_then(Value::as_f64),
        other => p.data.get(other).and_then(Value::as_f64),
    }
}

/// The series of one metric: each numeric field but the x axis, downsampled.
fn metric_series(
    points: &[ml_dash::MetricPoint],
    x: &str,
    q: &PageQuery,
    prefix: &str,
) -> Vec<Series> {
    let mut fields: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for p in points {
        let Some(xv) = field(p, x) else { continue };
        if q.xmin.is_some_and(|m| xv < m) || q.xmax.is_some_and(|m| xv > m) {
            continue;
        }
        for (k, v) in &p.data {
            if k == "_ts" || k == x || k == "step" || (x != "epoch" && k == "epoch") {
                continue;
            }
            if let Some(y) = v.as_f64() {
                fields.entry(k.clone()).or_default().push((xv, y));
            }
        }
    }
    fields
        .into_iter()
        .map(|(label, mut pts)| {
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            Series {
                label: format!("{prefix}{label}"),
                points: chart::downsample(&pts, BUCKETS),
            }
        })
        .collect()
}

fn metrics_tab(
    j: &ml_dash::JournalContents,
    compare: &[(ExperimentKey, std::sync::Arc<ml_dash::JournalContents>)],
    q: &PageQuery,
) -> String {
    let x = q.x.clone().unwrap_or_else(|| "step".into());
    let mut out = String::from(
        "<form class=\"controls\" method=\"get\"><input type=\"hidden\" name=\"tab\" value=\"metrics\"><label>x axis <select name=\"x\" class=\"autosubmit\">",
    );
    out.push_str(&options(&["step", "epoch", "time"], &x));
    let _ = write!(
        out,
        "</select></label> <input type=\"text\" name=\"compare\" value=\"{}\" \
         placeholder=\"compare with ns/project/experiment, ...\" aria-label=\"Compare with\"> \
         <button type=\"submit\">Overlay</button>",
        esc(q.compare.as_deref().unwrap_or_default())
    );
    if q.xmin.is_some() || q.xmax.is_some() {
        let _ = write!(
            out,
            " <a class=\"reset\" href=\"?tab=metrics&amp;x={}&amp;compare={}\">reset zoom</a>",
            enc(&x),
            enc(q.compare.as_deref().unwrap_or_default())
        );
    }
    out.push_str("</form>");
    if j.metrics.is_empty() {
        out.push_str("<p class=\"muted\">No metrics.</p>");
    }
    out.push_str("<div class=\"charts\">");
    for (name, points) in &j.metrics {
        let mut series: Vec<Series> = metric_series(points, &x, q, "");
        for (other, oj) in compare {
            if let Some(op) = oj.metrics.get(name) {
                series.extend(metric_series(op, &x, q, &format!("{}: ", other.experiment)));
            }
        }
        let _ = write!(
            out,
            "<figure class=\"metric\" data-metric=\"{0}\"><figcaption>{0} <span class=\"muted\">{1} points</span></figcaption>{2}<div class=\"legend\">{3}</div><div class=\"hover muted\"></div></figure>",
            esc(name),
            points.len(),
            chart::svg(name, &x, &series),
            series
                .iter()
                .enumerate()
                .map(|(i, s)| format!("<span class=\"key s{}\">{}</span>", i % 8, esc(&s.label)))
                .collect::<String>()
        );
    }
    out.push_str("</div>");
    out
}

fn params_tab(
    j: &ml_dash::JournalContents,
    diff: &[(ExperimentKey, std::sync::Arc<ml_dash::JournalContents>)],
    q: &PageQuery,
) -> String {
    let Some(p) = &j.params else {
        return "<p class=\"muted\">No parameters.</p>".into();
    };
    if let Some((other, oj)) = diff.first() {
        let empty = BTreeMap::new();
        let theirs = oj.params.as_ref().map_or(&empty, |p| &p.data);
        let keys: std::collections::BTreeSet<&String> =
            p.data.keys().chain(theirs.keys()).collect();
        let rows: Vec<Vec<String>> = keys
            .into_iter()
            .filter(|k| p.data.get(*k) != theirs.get(*k))
            .map(|k| {
                let show = |v: Option<&Value>| {
                    v.map(|v| esc(&v.to_string()))
                        .unwrap_or_else(|| "<span class=\"muted\">(unset)</span>".into())
                };
                vec![
                    format!("<code>{}</code>", esc(k)),
                    show(p.data.get(k)),
                    show(theirs.get(k)),
                ]
            })
            .collect();
        return format!(
            "<h3>Differences with {}</h3><p class=\"muted\">{} of the keys differ.</p>{}",
            esc(&exp_name(other)),
            rows.len(),
            table(
                "params diff",
                &["Key", "This experiment", &other.experiment],
                &rows
            )
        );
    }
    let needle = q.q.clone().unwrap_or_default().to_lowercase();
    let mut out = format!(
        "<form class=\"controls\" method=\"get\"><input type=\"hidden\" name=\"tab\" value=\"params\">\
         <input type=\"search\" name=\"q\" value=\"{}\" placeholder=\"Filter parameters\" aria-label=\"Filter parameters\"> \
         <input type=\"text\" name=\"diff\" placeholder=\"diff with ns/project/experiment\" aria-label=\"Diff with\"> \
         <button type=\"submit\">Go</button></form>",
        esc(&needle)
    );
    let mut groups: BTreeMap<String, Vec<Vec<String>>> = BTreeMap::new();
    for (k, v) in &p.data {
        let shown = v.to_string();
        if !needle.is_empty()
            && !k.to_lowercase().contains(&needle)
            && !shown.to_lowercase().contains(&needle)
        {
            continue;
        }
        let group = k.split_once('.').map_or("", |(g, _)| g).to_string();
        groups
            .entry(group)
            .or_default()
            .push(vec![format!("<code>{}</code>", esc(k)), esc(&shown)]);
    }
    for (g, rows) in &groups {
        let _ = write!(
            out,
            "<h3>{}</h3>{}",
            if g.is_empty() {
                "(top level)".to_string()
            } else {
                esc(g)
            },
            table("params", &["Key", "Value"], rows)
        );
    }
    out
}

fn logs_tab(j: &ml_dash::JournalContents, q: &PageQuery) -> String {
    let level = q.level.clone().unwrap_or_default();
    let needle = q.q.clone().unwrap_or_default();
    let lower = needle.to_lowercase();
    let matching: Vec<&ml_dash::LogEntry> = j
        .logs
        .iter()
        .filter(|l| level.is_empty() || l.level == level)
        .filter(|l| lower.is_empty() || l.message.to_lowercase().contains(&lower))
        .filter(|l| {
            q.from
                .as_deref()
                .is_none_or(|f| f.is_empty() || l.timestamp.as_str() >= f)
        })
        .filter(|l| {
            q.to.as_deref()
                .is_none_or(|t| t.is_empty() || l.timestamp.as_str() <= t)
        })
        .collect();
    let pages = matching.len().div_ceil(LOG_PAGE).max(1);
    let page_no = q.page.unwrap_or(1).clamp(1, pages);
    let mut out = String::from(
        "<form class=\"controls\" method=\"get\"><input type=\"hidden\" name=\"tab\" value=\"logs\"><select name=\"level\" class=\"autosubmit\" aria-label=\"Level\"><option value=\"\">all levels</option>",
    );
    out.push_str(&options(
        &["debug", "info", "warn", "error", "critical"],
        &level,
    ));
    let _ = write!(
        out,
        "</select> <input type=\"search\" name=\"q\" value=\"{}\" placeholder=\"Search logs\" aria-label=\"Search logs\"> \
         <input type=\"text\" name=\"from\" value=\"{}\" placeholder=\"from 2026-01-01T00:00\" aria-label=\"From\"> \
         <input type=\"text\" name=\"to\" value=\"{}\" placeholder=\"to\" aria-label=\"To\"> \
         <button type=\"submit\">Filter</button></form><p class=\"muted\">{} lines, page {page_no} of {pages}</p>",
        esc(&needle),
        esc(q.from.as_deref().unwrap_or_default()),
        esc(q.to.as_deref().unwrap_or_default()),
        matching.len()
    );
    let rows: Vec<Vec<String>> = matching
        .iter()
        .skip((page_no - 1) * LOG_PAGE)
        .take(LOG_PAGE)
        .map(|l| {
            vec![
                l.sequence_number.to_string(),
                esc(&l.timestamp),
                format!("<span class=\"level {0}\">{0}</span>", esc(&l.level)),
                esc(&l.message),
            ]
        })
        .collect();
    out.push_str(&table("logs", &["#", "Time", "Level", "Message"], &rows));
    let link = |p: usize, label: &str| {
        format!(
            "<a href=\"?tab=logs&amp;level={}&amp;q={}&amp;from={}&amp;to={}&amp;page={p}\">{label}</a>",
            enc(&level),
            enc(&needle),
            enc(q.from.as_deref().unwrap_or_default()),
            enc(q.to.as_deref().unwrap_or_default())
        )
    };
    out.push_str("<p class=\"pager\">");
    if page_no > 1 {
        out.push_str(&link(page_no - 1, "previous"));
    }
    if page_no < pages {
        out.push(' ');
        out.push_str(&link(page_no + 1, "next"));
    }
    out.push_str("</p>");
    out
}

/// Versions whose storage figures the Storage tab reads (each reads a manifest).
const STORAGE_VERSIONS: usize = 500;

/// Sees the whole store (a store without tokens, or a token for every namespace)?
fn unrestricted(caller: &Caller) -> bool {
    match caller {
        Caller::Open => true,
        Caller::Token(t) => t.namespaces.is_empty(),
    }
}

fn storage_tab(app: &Shared, caller: &Caller, key: &ExperimentKey) -> Result<String, ApiError> {
    let recs = versions_of(app, key)?;
    let scope = exp_scope(key);
    let st = app.web_cache.stats(&app.store, &scope, &recs)?;
    let mut out = format!(
        "<h3>This experiment</h3><dl class=\"stats\"><dt>Logical</dt><dd>{}</dd><dt>Unique</dt><dd>{}</dd><dt>Stored</dt><dd>{}</dd>\
         <dt>Dedup (logical / unique)</dt><dd>{:.2}x</dd><dt>Compression (unique / stored)</dt><dd>{:.2}x</dd>\
         <dt>Saving (logical / stored)</dt><dd>{:.2}x</dd><dt>Codecs (unique bytes)</dt><dd>whole {} · byte planes {} · delta {}</dd></dl>",
        bytes(st.logical_bytes),
        bytes(st.unique_bytes),
        bytes(st.stored_bytes),
        ratio(st.logical_bytes, st.unique_bytes),
        ratio(st.unique_bytes, st.stored_bytes),
        st.saving_ratio,
        bytes(st.codec_bytes.whole),
        bytes(st.codec_bytes.planes),
        bytes(st.codec_bytes.delta),
    );
    // The whole store's ratios, to a caller who may see the whole store.
    if unrestricted(caller) {
        let everything = app.store.list(&ListFilter {
            all_versions: true,
            ..Default::default()
        })?;
        let all = app
            .web_cache
            .stats(&app.store, &Scope::default(), &everything)?;
        let _ = write!(
            out,
            "<h3>The store</h3><dl class=\"stats\"><dt>Dedup</dt><dd>{:.2}x</dd>\
             <dt>Compression</dt><dd>{:.2}x</dd><dt>Saving</dt><dd>{:.2}x</dd></dl>",
            ratio(all.logical_bytes, all.unique_bytes),
            ratio(all.unique_bytes, all.stored_bytes),
            all.saving_ratio,
        );
    }
    // The most recent versions' figures.
    let mut shown: Vec<(&FileRecord, ml_dash::VersionStorage)> = Vec::new();
    let mut recent: Vec<&FileRecord> = recs.iter().collect();
    recent.sort_by(|a, b| b.uploaded_at.cmp(&a.uploaded_at));
    for r in recent.into_iter().take(STORAGE_VERSIONS) {
        shown.push((r, app.web_cache.version_storage(&app.store, r)?));
    }
    shown.sort_by(|a, b| {
        (a.0.path.as_str(), a.0.filename.as_str(), a.0.version).cmp(&(
            b.0.path.as_str(),
            b.0.filename.as_str(),
            b.0.version,
        ))
    });
    // Per path with several versions: logical, new and stored bytes over versions.
    let mut by_path: BTreeMap<String, Vec<&(&FileRecord, ml_dash::VersionStorage)>> =
        BTreeMap::new();
    for v in &shown {
        by_path.entry(v.0.full_path()).or_default().push(v);
    }
    out.push_str("<div class=\"charts\">");
    for (path, versions) in by_path.iter().filter(|(_, v)| v.len() > 1).take(20) {
        #[expect(clippy::cast_precision_loss, reason = "bytes on a chart")]
        let line = |label: &str, f: &dyn Fn(&ml_dash::VersionStorage) -> u64| Series {
            label: label.into(),
            points: versions
                .iter()
                .map(|(r, s)| (f64::from(r.version), f(s) as f64))
                .collect(),
        };
        let series = vec![
            line("logical", &|s| s.logical_bytes),
            line("stored", &|s| s.stored_bytes),
            line("new", &|s| s.new_bytes),
        ];
        let _ = write!(
            out,
            "<figure class=\"metric storage\"><figcaption>{}</figcaption>{}<div class=\"legend\"><span class=\"key s0\">logical</span><span class=\"key s1\">stored</span><span class=\"key s2\">new</span></div><div class=\"hover muted\"></div></figure>",
            esc(path),
            chart::svg(path, "version", &series)
        );
    }
    out.push_str("</div>");
    let rows: Vec<Vec<String>> = shown
        .iter()
        .map(|(r, s)| {
            vec![
                esc(&r.full_path()),
                format!("v{}", r.version),
                bytes(s.logical_bytes),
                bytes(s.new_bytes),
                bytes(s.stored_bytes),
                format!("{:.1} %", percent(s.new_bytes, s.logical_bytes)),
                bytes(s.codec_bytes.whole),
                bytes(s.codec_bytes.planes),
                bytes(s.codec_bytes.delta),
                s.delta_depth.to_string(),
            ]
        })
        .collect();
    out.push_str(&table(
        "storage",
        &[
            "Path",
            "Version",
            "Logical",
            "New",
            "Stored (its chunks)",
            "New / logical",
            "Whole",
            "Byte planes",
            "Delta",
            "Delta depth",
        ],
        &rows,
    ));
    if recs.len() > STORAGE_VERSIONS {
        let _ = write!(
            out,
            "<p class=\"muted\">The {STORAGE_VERSIONS} most recent of {} versions; \
             <code>ml-dash list --json</code> has every one.</p>",
            recs.len()
        );
    }
    Ok(out)
}

fn ratio(a: u64, b: u64) -> f64 {
    #[expect(clippy::cast_precision_loss, reason = "a ratio for display")]
    if b == 0 { 1.0 } else { a as f64 / b as f64 }
}

fn percent(a: u64, b: u64) -> f64 {
    ratio(a, b) * if b == 0 { 0.0 } else { 100.0 }
}

/// `/-/store`: the store's figures.
pub async fn store_page(
    State(app): State<Shared>,
    caller: Option<Extension<Caller>>,
    Extension(ws): Extension<WebSession>,
) -> PageResult {
    let Some(Extension(caller)) = caller else {
        return Ok(sign_in(&ws, "/-/store", None));
    };
    if !unrestricted(&caller) {
        // A token for some namespaces sees only theirs.
        let (app2, caller2) = (app.clone(), caller.clone());
        let rows = crate::blocking(move || {
            let mut rows = Vec::new();
            let Caller::Token(t) = &caller2 else {
                return Ok(rows);
            };
            for ns in &t.namespaces {
                let st = app2.store.stats(&Scope {
                    namespace: Some(ns.clone()),
                    ..Default::default()
                })?;
                rows.push(vec![
                    esc(ns),
                    st.files.to_string(),
                    st.versions.to_string(),
                    bytes(st.logical_bytes),
                    bytes(st.stored_bytes),
                    format!("{:.2}x", st.saving_ratio),
                ]);
            }
            Ok(rows)
        })
        .await?;
        let body = format!(
            "<h1>Your namespaces</h1>{}",
            table(
                "store",
                &[
                    "Namespace",
                    "Files",
                    "Versions",
                    "Logical",
                    "Stored",
                    "Saving"
                ],
                &rows
            )
        );
        return Ok(html("Store", Some(&caller), &ws, &body));
    }
    let app2 = app.clone();
    let (st, verify, gc) = crate::blocking(move || {
        let everything = app2.store.list(&ListFilter {
            all_versions: true,
            ..Default::default()
        })?;
        Ok((
            app2.web_cache
                .stats(&app2.store, &Scope::default(), &everything)?,
            app2.store.last_result("verify"),
            app2.store.last_result("gc"),
        ))
    })
    .await?;
    let last = |what: &str, v: Option<Value>, summary: &dyn Fn(&Value) -> String| match v {
        None => format!("<dt>Last {what}</dt><dd class=\"muted\">not run yet</dd>"),
        Some(v) => format!(
            "<dt>Last {what}</dt><dd>{} <span class=\"muted\">{}</span></dd>",
            esc(&summary(&v["report"])),
            esc(v["at"].as_str().unwrap_or_default())
        ),
    };
    let verify = last("verify", verify, &|r| {
        if r["ok"] == Value::Bool(true) {
            format!(
                "ok: {} versions, {} chunks, {} packs",
                r["versions"], r["chunks"], r["packs"]
            )
        } else {
            format!(
                "problems: {} damaged files, {} other problems",
                r["damagedFiles"].as_array().map_or(0, Vec::len),
                r["problems"].as_array().map_or(0, Vec::len)
            )
        }
    });
    let gc = last("gc", gc, &|r| {
        format!(
            "{} deleted versions dropped, {} garbage bytes, {} packs deleted, {} rewritten",
            r["deletedVersions"], r["garbageBytes"], r["packsDeleted"], r["packsRewritten"]
        )
    });
    #[cfg(feature = "remote")]
    let push = match &app.push {
        Some(p) => format!(
            "<dt>Push to the remote</dt><dd><code>{}</code></dd>",
            esc(&p.status().to_string())
        ),
        None => "<dt>Push to a remote</dt><dd class=\"muted\">off (<code>--remote</code>)</dd>"
            .to_string(),
    };
    #[cfg(not(feature = "remote"))]
    let push = String::new();
    let body = format!(
        "<h1>Store</h1><dl class=\"stats\"><dt>Files</dt><dd>{}</dd><dt>Versions</dt><dd>{}</dd>\
         <dt>Deleted versions (until gc)</dt><dd>{}</dd><dt>Logical</dt><dd>{}</dd><dt>Unique</dt><dd>{}</dd>\
         <dt>Stored</dt><dd>{}</dd><dt>Saving (logical / stored)</dt><dd>{:.2}x</dd><dt>Packs</dt><dd>{} ({})</dd>\
         <dt>Codecs (unique bytes)</dt><dd>whole {} · byte planes {} · delta {}</dd>{verify}{gc}{push}</dl>",
        st.files,
        st.versions,
        st.deleted_versions,
        bytes(st.logical_bytes),
        bytes(st.unique_bytes),
        bytes(st.stored_bytes),
        st.saving_ratio,
        st.packs,
        bytes(st.pack_bytes),
        bytes(st.codec_bytes.whole),
        bytes(st.codec_bytes.planes),
        bytes(st.codec_bytes.delta),
    );
    Ok(html("Store", Some(&caller), &ws, &body))
}

#[derive(Deserialize)]
pub struct SearchQuery {
    q: Option<String>,
}

/// `/-/search?q=`: experiments and files whose names contain the text.
pub async fn search(
    State(app): State<Shared>,
    caller: Option<Extension<Caller>>,
    Extension(ws): Extension<WebSession>,
    Query(sq): Query<SearchQuery>,
) -> PageResult {
    let Some(Extension(caller)) = caller else {
        return Ok(sign_in(&ws, "/", None));
    };
    let needle = sq.q.unwrap_or_default();
    let lower = needle.to_lowercase();
    let (app2, caller2) = (app.clone(), caller.clone());
    let (exps, files) = crate::blocking(move || {
        let exps: Vec<ExperimentKey> = app2
            .catalog
            .experiments(None, None)
            .into_iter()
            .filter(|e| caller2.allows(&e.namespace))
            .filter(|e| e.experiment.to_lowercase().contains(&lower))
            .take(200)
            .collect();
        let files: Vec<FileRecord> = if lower.is_empty() {
            Vec::new()
        } else {
            app2.store.list(&ListFilter::default())?
        }
        .into_iter()
        .filter(|r| caller2.allows(&r.namespace))
        .filter(|r| !lower.is_empty() && r.full_path().to_lowercase().contains(&lower))
        .take(200)
        .collect();
        Ok((exps, files))
    })
    .await?;
    let mut body = format!("<h1>Search: {}</h1><h2>Experiments</h2><ul>", esc(&needle));
    for e in &exps {
        let _ = write!(
            body,
            "<li><a href=\"{}\">{}</a></li>",
            esc(&exp_href(e)),
            esc(&exp_name(e))
        );
    }
    body.push_str("</ul><h2>Files</h2><ul>");
    for r in &files {
        let e = experiment_key(&r.namespace, &r.project, &r.experiment);
        let _ = write!(
            body,
            "<li><a href=\"{}?tab=files\">{}</a> {}</li>",
            esc(&exp_href(&e)),
            esc(&exp_name(&e)),
            esc(&r.full_path())
        );
    }
    body.push_str("</ul>");
    Ok(html("Search", Some(&caller), &ws, &body))
}

/// `/-/raw/{id}`: an image's bytes for an `<img>` (inline, its own content type, in a sandbox).
pub async fn raw(
    State(app): State<Shared>,
    caller: Option<Extension<Caller>>,
    Path(id): Path<String>,
) -> PageResult {
    let Some(Extension(caller)) = caller else {
        return Err(ApiError::unauthorized());
    };
    let app2 = app.clone();
    let (rec, data) = crate::blocking(move || {
        let (_, node) = crate::api::node(&app2, &id)?;
        let rec = crate::api::version_record(&app2, &node)?;
        caller.check(&rec.namespace)?;
        if !is_image(&rec) || rec.size_bytes > IMAGE_PREVIEW || rec.is_deleted() {
            return Err(ApiError::bad(
                "INVALID_INPUT",
                "not an image that can be previewed",
            ));
        }
        let mut data = Vec::new();
        let mut r = app2.store.open_version(rec.id)?;
        std::io::Read::read_to_end(&mut r, &mut data)
            .map_err(|e| ApiError::internal(format!("cannot read the image: {e}")))?;
        Ok((rec, data))
    })
    .await?;
    let mut resp = Response::new(Body::from(data));
    let h = resp.headers_mut();
    // The type from the name's extension (never what the uploader claimed).
    let lower = rec.filename.to_ascii_lowercase();
    let ct = match lower.rsplit_once('.').map(|(_, e)| e) {
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("gif") => "image/gif",
        Some("webp") => "image/webp",
        Some("svg") => "image/svg+xml",
        _ => "application/octet-stream",
    };
    h.insert(CONTENT_TYPE, HeaderValue::from_static(ct));
    // An SVG opened on its own cannot run scripts either.
    h.insert(
        "content-security-policy",
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; sandbox"),
    );
    Ok(resp)
}

/// A path of this server to go back to after sign-in: never a redirect elsewhere (no `//`,
/// no backslash, nothing but the characters of an already percent-encoded path and query).
fn local_path(n: &str) -> bool {
    n.starts_with('/')
        && !n.starts_with("//")
        && n.len() < 2048
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._~%?&=+,;:@!$'()*-".contains(&b))
}

#[derive(Deserialize)]
pub struct LoginForm {
    token: String,
    csrf: String,
    next: Option<String>,
}

/// `POST /-/login`: check the token, start a signed-in session (a new id), go back.
pub async fn login(
    State(app): State<Shared>,
    Extension(ws): Extension<WebSession>,
    Form(f): Form<LoginForm>,
) -> PageResult {
    if f.csrf != ws.csrf {
        return Ok(sign_in(&ws, "/", Some("The form expired; try again.")));
    }
    let app2 = app.clone();
    let secret = f.token.trim().to_string();
    let s2 = secret.clone();
    let ok = crate::blocking(move || Ok(app2.store.check_token(&s2)?.is_some())).await?;
    if !ok {
        return Ok(sign_in(
            &ws,
            f.next.as_deref().unwrap_or("/"),
            Some("That token is not valid."),
        ));
    }
    app.sessions.remove(&ws.id);
    let (id, _) = app.sessions.create(Some(secret));
    let next = f
        .next
        .filter(|n| local_path(n))
        .unwrap_or_else(|| "/".into());
    let mut r = see_other(&next);
    for c in [set_cookie(Some(&id)), set_anon_cookie(None)] {
        if let Ok(v) = HeaderValue::from_str(&c) {
            r.headers_mut().append(SET_COOKIE, v);
        }
    }
    Ok(r)
}

#[derive(Deserialize)]
pub struct CsrfForm {
    csrf: String,
}

/// `POST /-/logout`.
pub async fn logout(
    State(app): State<Shared>,
    Extension(ws): Extension<WebSession>,
    Form(f): Form<CsrfForm>,
) -> PageResult {
    if f.csrf != ws.csrf {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "CSRF",
            "the form's CSRF token is not this session's",
        ));
    }
    app.sessions.remove(&ws.id);
    let mut r = StatusCode::SEE_OTHER.into_response();
    r.headers_mut()
        .insert(LOCATION, HeaderValue::from_static("/"));
    if let Ok(v) = HeaderValue::from_str(&set_cookie(None)) {
        r.headers_mut().insert(SET_COOKIE, v);
    }
    Ok(r)
}

/// `GET /-/login`: the form.
pub async fn login_form(Extension(ws): Extension<WebSession>) -> Response {
    sign_in(&ws, "/", None)
}

#[derive(Deserialize)]
pub struct VersionForm {
    csrf: String,
    id: String,
    tags: Option<String>,
}

/// The experiment page of a version, to go back to after an action.
fn back_to(r: &FileRecord) -> String {
    format!(
        "{}?tab=files",
        exp_href(&experiment_key(&r.namespace, &r.project, &r.experiment))
    )
}

fn see_other(to: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    r.headers_mut().insert(
        LOCATION,
        HeaderValue::from_str(to).unwrap_or(HeaderValue::from_static("/")),
    );
    r
}

/// Check a form's CSRF token and the caller.
fn form_caller(
    caller: Option<Extension<Caller>>,
    ws: &WebSession,
    csrf: &str,
) -> Result<Caller, ApiError> {
    if csrf != ws.csrf {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "CSRF",
            "the form's CSRF token is not this session's: reload the page",
        ));
    }
    caller
        .map(|Extension(c)| c)
        .ok_or_else(ApiError::unauthorized)
}

/// `POST /-/delete`: delete a version's path (soft: `gc` reclaims the bytes).
pub async fn delete_version(
    State(app): State<Shared>,
    caller: Option<Extension<Caller>>,
    Extension(ws): Extension<WebSession>,
    Form(f): Form<VersionForm>,
) -> PageResult {
    let caller = form_caller(caller, &ws, &f.csrf)?;
    let app2 = app.clone();
    let back = crate::blocking(move || {
        let (_, node) = crate::api::node(&app2, &f.id)?;
        let r = crate::api::version_record(&app2, &node)?;
        caller.check(&r.namespace)?;
        app2.store.delete(&r.key())?;
        Ok(back_to(&r))
    })
    .await?;
    #[cfg(feature = "remote")]
    if let Some(p) = &app.push {
        p.committed();
    }
    Ok(see_other(&back))
}

/// `POST /-/tags`: replace a version's tags (comma separated).
pub async fn update_tags(
    State(app): State<Shared>,
    caller: Option<Extension<Caller>>,
    Extension(ws): Extension<WebSession>,
    Form(f): Form<VersionForm>,
) -> PageResult {
    let caller = form_caller(caller, &ws, &f.csrf)?;
    let tags: Vec<String> = f
        .tags
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect();
    ml_dash::validate::check_tags(&tags)?;
    let app2 = app.clone();
    let back = crate::blocking(move || {
        let (_, node) = crate::api::node(&app2, &f.id)?;
        let r = crate::api::version_record(&app2, &node)?;
        caller.check(&r.namespace)?;
        let changes = ml_dash::RecordChanges {
            description: None,
            tags: Some(tags),
            metadata: None,
        };
        let r = app2.store.update(r.id, &changes)?;
        Ok(back_to(&r))
    })
    .await?;
    #[cfg(feature = "remote")]
    if let Some(p) = &app.push {
        p.committed();
    }
    Ok(see_other(&back))
}

#[cfg(test)]
mod tests {
    use super::{local_path, markdown};

    #[test]
    fn markdown_shows_html_as_text_and_drops_script_links() {
        let h = markdown(
            "# T\n\n<script>x</script>\n\nSee [a](JavaScript:alert(1)) [b](https://x.org) [c](rel/p.md) ![i]( data:image/png;base64,AA)",
        );
        assert!(!h.contains("<script>"), "{h}");
        assert!(h.contains("&lt;script&gt;"), "{h}");
        assert!(!h.to_ascii_lowercase().contains("javascript:"), "{h}");
        assert!(!h.contains("data:"), "{h}");
        assert!(
            h.contains("href=\"https://x.org\"") && h.contains("href=\"rel/p.md\""),
            "{h}"
        );
    }

    #[test]
    fn only_local_paths_come_back_after_sign_in() {
        assert!(local_path("/alice/vision/run?tab=files&x=1"));
        for bad in [
            "//evil.example/",
            "/\t/evil.example",
            "https://evil.example",
            "/a\\b",
            "/a b",
            "",
        ] {
            assert!(!local_path(bad), "{bad:?}");
        }
    }
}
