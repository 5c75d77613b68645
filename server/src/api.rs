//! The REST routes of the ml-dash server API (everything but uploads, downloads and GraphQL).
//!
//! Every body read here is bounded (`MAX_JSON`, or `MAX_BATCH` for log and metric batches);
//! every name is checked by the engine's own rules before anything is written; every answer is
//! JSON, errors as `{"error", "code"}`.

use axum::Json;
use axum::body::Body;
use axum::extract::{Extension, Path, Query, Request, State};
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use ml_dash::{ExperimentInfo, ExperimentKey, FileRecord, ListFilter, RecordChanges, Scope};
use serde_json::{Map, Value, json};

use crate::auth::Caller;
use crate::catalog::{self, Node, experiment_key, parse_id};
use crate::error::{ApiError, ApiResult};
use crate::{Shared, blocking};

/// Largest JSON body of a node, parameters or a status change.
pub const MAX_JSON: usize = 1 << 20;
/// Largest JSON body of a batch of log lines or metric points.
pub const MAX_BATCH: usize = 32 << 20;

/// Read a JSON body of at most `limit` bytes.
pub async fn read_json(body: Body, limit: usize) -> ApiResult<Value> {
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|e| {
        let too_big = std::error::Error::source(&e)
            .is_some_and(|s| s.to_string().contains("length limit"))
            || e.to_string().contains("length limit");
        if too_big {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "TOO_LARGE",
                format!("the body is larger than {limit} bytes"),
            )
        } else {
            ApiError::bad("BAD_BODY", format!("cannot read the body: {e}"))
        }
    })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad("MALFORMED_JSON", format!("the body is not valid JSON: {e}")))
}

fn object(v: Value, what: &str) -> ApiResult<Map<String, Value>> {
    match v {
        Value::Object(m) => Ok(m),
        _ => Err(ApiError::bad(
            "MALFORMED_JSON",
            format!("{what} must be a JSON object"),
        )),
    }
}

fn opt_str<'a>(m: &'a Map<String, Value>, key: &str) -> ApiResult<Option<&'a str>> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(Value::Number(_)) if key.ends_with("Id") => Err(ApiError::bad(
            "INVALID_INPUT",
            format!("{key} must be a string (ids are sent as strings)"),
        )),
        Some(_) => Err(ApiError::bad(
            "INVALID_INPUT",
            format!("{key} must be a string"),
        )),
    }
}

fn tags_of(m: &Map<String, Value>) -> ApiResult<Option<Vec<String>>> {
    match m.get("tags") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(a)) => a
            .iter()
            .map(|t| match t {
                Value::String(s) => Ok(s.clone()),
                _ => Err(ApiError::bad("INVALID_INPUT", "tags must be strings")),
            })
            .collect::<ApiResult<Vec<_>>>()
            .map(Some),
        Some(_) => Err(ApiError::bad(
            "INVALID_INPUT",
            "tags must be a list of strings",
        )),
    }
}

/// The node `id` names (refreshing the catalog once on a miss), or 404.
pub fn node(app: &Shared, id: &str) -> ApiResult<(u64, Node)> {
    let n = parse_id(id).ok_or_else(|| {
        ApiError::bad(
            "INVALID_ID",
            format!(
                "{:?} is not a node id (ids are decimal numbers)",
                shorten(id)
            ),
        )
    })?;
    match app.catalog.resolve(&app.store, n)? {
        Some(node) => Ok((n, node)),
        None => Err(ApiError::not_found(format!("no node with id {n}"))),
    }
}

/// The experiment `id` names, checked against the caller's namespaces.
pub fn experiment(app: &Shared, caller: &Caller, id: &str) -> ApiResult<ExperimentKey> {
    match node(app, id)? {
        (_, Node::Experiment { ns, project, name }) => {
            caller.check(&ns)?;
            Ok(experiment_key(&ns, &project, &name))
        }
        (n, _) => Err(ApiError::not_found(format!(
            "node {n} is not an experiment"
        ))),
    }
}

fn shorten(s: &str) -> String {
    s.chars().take(40).collect()
}

/// The experiment's name as the client knows it (without its folders).
pub fn display_name(name: &str, folder: Option<&str>) -> String {
    if let Some(f) = folder.filter(|f| !f.is_empty()) {
        let dotted = format!("{}.", f.replace('/', "."));
        if let Some(rest) = name.strip_prefix(&dotted) {
            return rest.to_string();
        }
    }
    name.to_string()
}

/// An experiment as the API shows it.
pub fn experiment_json(exp: &ExperimentKey, info: Option<&ExperimentInfo>) -> Value {
    let id = Node::experiment(exp).id().to_string();
    let project_id = Node::Project {
        ns: exp.namespace.clone(),
        project: exp.project.clone(),
    }
    .id()
    .to_string();
    let folder = info.and_then(|i| i.folder.clone());
    let parent = folder.as_ref().filter(|f| !f.is_empty()).map(|f| {
        Node::Folder {
            ns: exp.namespace.clone(),
            project: exp.project.clone(),
            path: f.clone(),
        }
        .id()
        .to_string()
    });
    let name = display_name(&exp.experiment, folder.as_deref());
    let display_path = match folder.as_deref().filter(|f| !f.is_empty()) {
        Some(f) => format!("{}/{}/{f}/{name}", exp.namespace, exp.project),
        None => format!("{}/{}/{name}", exp.namespace, exp.project),
    };
    let status = info.and_then(|i| i.status.clone());
    let ended = match status.as_deref() {
        Some("COMPLETED" | "FAILED" | "CANCELLED") => info.map(|i| i.updated_at.clone()),
        _ => None,
    };
    json!({
        "id": id,
        "type": "EXPERIMENT",
        "name": name,
        "storedName": exp.experiment,
        "experimentId": id,
        "projectId": project_id,
        "parentId": parent,
        "namespace": exp.namespace,
        "project": exp.project,
        "status": status,
        "description": info.and_then(|i| i.description.clone()),
        "tags": info.and_then(|i| i.tags.clone()).unwrap_or_default(),
        "metadata": info.and_then(|i| i.metadata.clone()),
        "createdAt": info.map(|i| i.created_at.clone()),
        "updatedAt": info.map(|i| i.updated_at.clone()),
        "startedAt": info.map(|i| i.created_at.clone()),
        "endedAt": ended,
        "displayPath": display_path,
    })
}

/// A file version as the API shows it (a node with its `physicalFile`). `path` is the prefix
/// (`/ckpt`), `pPath` the full path in the experiment (`/ckpt/model.pt`).
pub fn file_json(r: &FileRecord) -> Value {
    let id = Node::Version {
        id: r.id.to_string(),
    }
    .id()
    .to_string();
    let exp = experiment_key(&r.namespace, &r.project, &r.experiment);
    let exp_id = Node::experiment(&exp).id().to_string();
    let parent = if r.path == "/" {
        exp_id.clone()
    } else {
        Node::ExpFolder {
            ns: r.namespace.clone(),
            project: r.project.clone(),
            name: r.experiment.clone(),
            prefix: r.path.clone(),
        }
        .id()
        .to_string()
    };
    let project_id = Node::Project {
        ns: r.namespace.clone(),
        project: r.project.clone(),
    }
    .id()
    .to_string();
    json!({
        "id": id,
        "type": "FILE",
        "name": r.filename,
        "filename": r.filename,
        "path": r.path,
        "pPath": r.full_path(),
        "experimentId": exp_id,
        "projectId": project_id,
        "parentId": parent,
        "namespace": r.namespace,
        "project": r.project,
        "experiment": r.experiment,
        "version": r.version,
        "versionId": r.id.to_string(),
        "description": r.description,
        "tags": r.tags,
        "metadata": r.metadata,
        "sizeBytes": r.size_bytes,
        "checksum": r.checksum.to_string(),
        "contentType": r.content_type,
        "createdAt": r.uploaded_at,
        "updatedAt": r.updated_at,
        "deletedAt": r.deleted_at,
        "physicalFile": {
            "id": id,
            "filename": r.filename,
            "contentType": r.content_type,
            "sizeBytes": r.size_bytes,
            "checksum": r.checksum.to_string(),
            "s3Url": Value::Null,
        },
        // The record exactly as `ml-dash list --json` prints it (for our own clients).
        "record": r,
    })
}

fn folder_json(id: u64, n: &Node) -> Value {
    match n {
        Node::Folder { ns, project, path } => {
            let (parent, name) = match path.rsplit_once('/') {
                Some((p, name)) => (
                    Some(
                        Node::Folder {
                            ns: ns.clone(),
                            project: project.clone(),
                            path: p.to_string(),
                        }
                        .id()
                        .to_string(),
                    ),
                    name,
                ),
                None => (None, path.as_str()),
            };
            json!({"id": id.to_string(), "type": "FOLDER", "name": name, "parentId": parent,
                   "projectId": Node::Project { ns: ns.clone(), project: project.clone() }.id().to_string(),
                   "pPath": path, "experimentId": Value::Null})
        }
        Node::ExpFolder {
            ns,
            project,
            name,
            prefix,
        } => {
            let exp_id = Node::Experiment {
                ns: ns.clone(),
                project: project.clone(),
                name: name.clone(),
            }
            .id()
            .to_string();
            let (up, last) = prefix.rsplit_once('/').unwrap_or(("", prefix));
            let parent = if up.is_empty() {
                exp_id.clone()
            } else {
                Node::ExpFolder {
                    ns: ns.clone(),
                    project: project.clone(),
                    name: name.clone(),
                    prefix: up.to_string(),
                }
                .id()
                .to_string()
            };
            json!({"id": id.to_string(), "type": "FOLDER", "name": last, "parentId": parent,
                   "projectId": Node::Project { ns: ns.clone(), project: project.clone() }.id().to_string(),
                   "experimentId": exp_id, "pPath": prefix})
        }
        Node::Project { ns, project } => json!({"id": id.to_string(), "type": "PROJECT",
            "name": project, "slug": project, "namespace": ns}),
        Node::Namespace { ns } => json!({"id": id.to_string(), "type": "NAMESPACE", "slug": ns}),
        _ => json!({"id": id.to_string()}),
    }
}

/// `POST /api/namespaces/{ns}/nodes`: a project, folder or experiment (JSON), or a file
/// (multipart).
pub async fn post_nodes(
    State(app): State<Shared>,
    Path(ns): Path<String>,
    Extension(caller): Extension<Caller>,
    req: Request,
) -> ApiResult<Response> {
    ml_dash::validate::segment("namespace", &ns)?;
    caller.check(&ns)?;
    let ct = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
        .to_string();
    if ct.starts_with("multipart/form-data") {
        return crate::upload::upload(app, ns, caller, &ct, req.into_body()).await;
    }
    let body = object(read_json(req.into_body(), MAX_JSON).await?, "the node")?;
    let kind = opt_str(&body, "type")?.unwrap_or("").to_string();
    let out = blocking(move || match kind.as_str() {
        "PROJECT" => create_project(&app, &ns, &body),
        "FOLDER" => create_folder(&app, &caller, &ns, &body),
        "EXPERIMENT" => create_experiment(&app, &ns, &body),
        "FILE" => Err(ApiError::bad(
            "INVALID_INPUT",
            "a FILE node is made by a multipart/form-data upload with a `file` part",
        )),
        other => Err(ApiError::bad(
            "INVALID_INPUT",
            format!(
                "unknown node type {:?}: use PROJECT, FOLDER, EXPERIMENT or FILE",
                shorten(other)
            ),
        )),
    })
    .await?;
    Ok((StatusCode::CREATED, Json(out)).into_response())
}

fn project_json(ns: &str, project: &str) -> Value {
    let id = Node::Project {
        ns: ns.to_string(),
        project: project.to_string(),
    }
    .id()
    .to_string();
    json!({"id": id, "slug": project, "name": project, "namespace": ns,
           "namespaceId": Node::Namespace { ns: ns.to_string() }.id().to_string()})
}

fn create_project(app: &Shared, ns: &str, body: &Map<String, Value>) -> ApiResult<Value> {
    let slug = opt_str(body, "slug")?
        .or(opt_str(body, "name")?)
        .ok_or_else(|| ApiError::bad("INVALID_INPUT", "a project needs a slug or a name"))?;
    ml_dash::validate::segment("project", slug)?;
    let id = app.catalog.register(Node::Project {
        ns: ns.to_string(),
        project: slug.to_string(),
    });
    let p = project_json(ns, slug);
    Ok(json!({"project": p, "node": {"id": id.to_string(), "type": "PROJECT", "name": slug}}))
}

/// The project a body names by `projectId` (in namespace `ns`) or `projectSlug`.
fn project_of(app: &Shared, ns: &str, body: &Map<String, Value>) -> ApiResult<String> {
    if let Some(id) = opt_str(body, "projectId")? {
        return match node(app, id)? {
            (_, Node::Project { ns: pns, project }) if pns == ns => Ok(project),
            (n, _) => Err(ApiError::not_found(format!(
                "node {n} is not a project of namespace {ns:?}"
            ))),
        };
    }
    let slug = opt_str(body, "projectSlug")?
        .ok_or_else(|| ApiError::bad("INVALID_INPUT", "projectId or projectSlug is required"))?;
    ml_dash::validate::segment("project", slug)?;
    app.catalog.register(Node::Project {
        ns: ns.to_string(),
        project: slug.to_string(),
    });
    Ok(slug.to_string())
}

fn is_root(parent: Option<&str>) -> bool {
    parent.is_none_or(|p| p.is_empty() || p == "ROOT")
}

fn create_folder(
    app: &Shared,
    caller: &Caller,
    ns: &str,
    body: &Map<String, Value>,
) -> ApiResult<Value> {
    let name = opt_str(body, "name")?
        .ok_or_else(|| ApiError::bad("INVALID_INPUT", "a folder needs a name"))?;
    ml_dash::validate::segment("folder", name)?;
    let parent = opt_str(body, "parentId")?;
    let node_of = if let Some(exp_id) = opt_str(body, "experimentId")? {
        // A folder inside an experiment: a prefix of its files.
        let exp = experiment(app, caller, exp_id)?;
        if exp.namespace != ns {
            return Err(ApiError::bad(
                "INVALID_INPUT",
                "the experiment is not in this namespace",
            ));
        }
        let up = if is_root(parent) || parent == Some(exp_id) {
            String::new()
        } else {
            match node(app, parent.unwrap_or_default())? {
                (
                    _,
                    Node::Experiment {
                        ns: a,
                        project,
                        name: e,
                    },
                ) if a == exp.namespace && project == exp.project && e == exp.experiment => {
                    String::new()
                }
                (
                    _,
                    Node::ExpFolder {
                        ns: a,
                        project,
                        name: e,
                        prefix,
                    },
                ) if a == exp.namespace && project == exp.project && e == exp.experiment => prefix,
                (n, _) => {
                    return Err(ApiError::not_found(format!(
                        "node {n} is not a folder of this experiment"
                    )));
                }
            }
        };
        let prefix = ml_dash::validate::prefix(&format!("{up}/{name}"))?;
        Node::ExpFolder {
            ns: exp.namespace,
            project: exp.project,
            name: exp.experiment,
            prefix,
        }
    } else {
        let project = project_of(app, ns, body)?;
        let path = if is_root(parent) {
            name.to_string()
        } else {
            match node(app, parent.unwrap_or_default())? {
                (
                    _,
                    Node::Folder {
                        ns: a,
                        project: p,
                        path,
                    },
                ) if a == ns && p == project => {
                    format!("{path}/{name}")
                }
                (n, _) => {
                    return Err(ApiError::not_found(format!(
                        "node {n} is not a folder of project {project:?}"
                    )));
                }
            }
        };
        if path.split('/').count() > ml_dash::validate::MAX_DEPTH {
            return Err(ApiError::bad("INVALID_INPUT", "folders nest too deep"));
        }
        Node::Folder {
            ns: ns.to_string(),
            project,
            path,
        }
    };
    let id = app.catalog.register(node_of.clone());
    Ok(json!({"node": folder_json(id, &node_of)}))
}

fn create_experiment(app: &Shared, ns: &str, body: &Map<String, Value>) -> ApiResult<Value> {
    let name = opt_str(body, "name")?
        .ok_or_else(|| ApiError::bad("INVALID_INPUT", "an experiment needs a name"))?;
    ml_dash::validate::segment("experiment", name)?;
    let project = project_of(app, ns, body)?;
    let parent = opt_str(body, "parentId")?;
    let folder = if is_root(parent) {
        None
    } else {
        match node(app, parent.unwrap_or_default())? {
            (
                _,
                Node::Folder {
                    ns: a,
                    project: p,
                    path,
                },
            ) if a == ns && p == project => Some(path),
            (n, _) => {
                return Err(ApiError::not_found(format!(
                    "node {n} is not a folder of project {project:?}"
                )));
            }
        }
    };
    let stored = match &folder {
        Some(f) => format!("{}.{name}", f.replace('/', ".")),
        None => name.to_string(),
    };
    let exp = ExperimentKey::new(ns, &project, &stored)?;
    // Our own clients name experiments as stored (`keepStatus`): they take it as it is.
    let keep = body.get("keepStatus") == Some(&Value::Bool(true));
    // Folders are joined with `.` in the stored name, so `f1/f2/name` and `f1.f2/name` would
    // be one experiment: refuse the second rather than merge them.
    if !keep
        && let Some(had) = app.store.journal(&exp)?.info.and_then(|i| i.folder)
        && had != folder.clone().unwrap_or_default()
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "NAME_TAKEN",
            format!(
                "experiment {name:?} in folder {:?} would be stored as {stored:?}, which \
                 experiment {:?} in folder {had:?} already is; rename one of them",
                folder.clone().unwrap_or_default(),
                display_name(&stored, Some(&had)),
            ),
        ));
    }
    let metadata = match body.get("metadata") {
        None | Some(Value::Null) => None,
        Some(m @ Value::Object(_)) => Some(m.clone()),
        Some(_) => {
            return Err(ApiError::bad(
                "INVALID_INPUT",
                "metadata must be a JSON object",
            ));
        }
    };
    // Opening an experiment (the ml-dash client) marks it running; our own clients only make
    // sure it exists.
    let change = ExperimentInfo {
        status: (!keep).then(|| "RUNNING".to_string()),
        description: opt_str(body, "description")?.map(str::to_string),
        tags: tags_of(body)?,
        metadata,
        folder: (!keep).then(|| folder.clone().unwrap_or_default()),
        ..ExperimentInfo::default()
    };
    let unchanged = change.status.is_none()
        && change.description.is_none()
        && change.tags.is_none()
        && change.metadata.is_none()
        && change.folder.is_none();
    let info = if unchanged {
        // Nothing to record (our own clients making sure it exists): no journal line.
        app.store.journal(&exp)?.info.unwrap_or_default()
    } else {
        app.store.set_experiment_info(&exp, change)?
    };
    let id = app.catalog.register_experiment(&exp, folder.as_deref());
    let e = experiment_json(&exp, Some(&info));
    Ok(json!({
        "experiment": e,
        "node": {"id": id.to_string(), "type": "EXPERIMENT", "name": name,
                 "experimentId": id.to_string(), "parentId": e["parentId"]},
        "project": project_json(ns, &project),
    }))
}

/// `GET /api/nodes/{id}`
pub async fn get_node(
    State(app): State<Shared>,
    Path(id): Path<String>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<Value>> {
    blocking(move || {
        let (n, nd) = node(&app, &id)?;
        match &nd {
            Node::Version { .. } => {
                let r = version_record(&app, &nd)?;
                caller.check(&r.namespace)?;
                Ok(Json(file_json(&r)))
            }
            Node::Experiment { ns, project, name } => {
                caller.check(ns)?;
                let exp = experiment_key(ns, project, name);
                let info = app.store.journal(&exp)?.info;
                Ok(Json(experiment_json(&exp, info.as_ref())))
            }
            other => {
                caller.check(other.namespace())?;
                Ok(Json(folder_json(n, other)))
            }
        }
    })
    .await
}

/// The record of a version node (deleted ones too).
pub fn version_record(app: &Shared, n: &Node) -> ApiResult<FileRecord> {
    let vid = catalog::version_id(n).ok_or_else(|| ApiError::not_found("not a file"))?;
    match app.store.version_record(vid) {
        Ok(r) => Ok(r),
        Err(ml_dash::Error::NotFound(_)) => Err(ApiError::not_found(format!(
            "version {vid} is gone (collected)"
        ))),
        Err(e) => Err(e.into()),
    }
}

/// `PATCH /api/nodes/{id}`: an experiment's status (and description, tags, metadata), or a
/// file's description, tags and metadata.
pub async fn patch_node(
    State(app): State<Shared>,
    Path(id): Path<String>,
    Extension(caller): Extension<Caller>,
    req: Request,
) -> ApiResult<Json<Value>> {
    let body = object(read_json(req.into_body(), MAX_JSON).await?, "the change")?;
    blocking(move || {
        let (n, nd) = node(&app, &id)?;
        match &nd {
            Node::Experiment { ns, project, name } => {
                caller.check(ns)?;
                let exp = experiment_key(ns, project, name);
                let metadata = match body.get("metadata") {
                    None | Some(Value::Null) => None,
                    Some(m @ Value::Object(_)) => Some(m.clone()),
                    Some(_) => {
                        return Err(ApiError::bad(
                            "INVALID_INPUT",
                            "metadata must be a JSON object",
                        ));
                    }
                };
                let status = opt_str(&body, "status")?.map(str::to_string);
                if let Some(s) = &status
                    && !["RUNNING", "COMPLETED", "FAILED", "CANCELLED"].contains(&s.as_str())
                {
                    return Err(ApiError::bad(
                        "INVALID_INPUT",
                        format!(
                            "unknown status {:?}: use RUNNING, COMPLETED, FAILED or CANCELLED",
                            shorten(s)
                        ),
                    ));
                }
                let change = ExperimentInfo {
                    status,
                    description: opt_str(&body, "description")?.map(str::to_string),
                    tags: tags_of(&body)?,
                    metadata,
                    ..ExperimentInfo::default()
                };
                let info = app.store.set_experiment_info(&exp, change)?;
                Ok(Json(experiment_json(&exp, Some(&info))))
            }
            Node::Version { .. } => {
                let r = version_record(&app, &nd)?;
                caller.check(&r.namespace)?;
                let mut ch = RecordChanges::new();
                match body.get("description") {
                    None => {}
                    Some(Value::Null) => ch = ch.clear_description(),
                    Some(Value::String(s)) => ch = ch.description(s.clone()),
                    Some(_) => {
                        return Err(ApiError::bad(
                            "INVALID_INPUT",
                            "description must be a string",
                        ));
                    }
                }
                if let Some(t) = tags_of(&body)? {
                    ch = ch.tags(t);
                }
                match body.get("metadata") {
                    None => {}
                    Some(m @ (Value::Null | Value::Object(_))) => ch = ch.metadata(m.clone()),
                    Some(_) => {
                        return Err(ApiError::bad(
                            "INVALID_INPUT",
                            "metadata must be a JSON object or null",
                        ));
                    }
                }
                let r = app.store.update(r.id, &ch)?;
                #[cfg(feature = "remote")]
                if let Some(p) = &app.push {
                    p.committed();
                }
                Ok(Json(file_json(&r)))
            }
            _ => Err(ApiError::bad(
                "INVALID_INPUT",
                format!("node {n} cannot be changed (only experiments and files can)"),
            )),
        }
    })
    .await
}

/// `DELETE /api/nodes/{id}`: soft-delete a file (every version of its path).
pub async fn delete_node(
    State(app): State<Shared>,
    Path(id): Path<String>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<Value>> {
    blocking(move || {
        let (n, nd) = node(&app, &id)?;
        let Node::Version { .. } = &nd else {
            return Err(ApiError::bad(
                "INVALID_INPUT",
                format!("node {n} is not a file: only files can be deleted"),
            ));
        };
        let r = version_record(&app, &nd)?;
        caller.check(&r.namespace)?;
        let gone = app.store.delete(&r.key())?;
        #[cfg(feature = "remote")]
        if let Some(p) = &app.push {
            p.committed();
        }
        let at = gone
            .iter()
            .find_map(|g| g.deleted_at.clone())
            .or(r.deleted_at.clone());
        Ok(Json(json!({
            "id": n.to_string(),
            "deletedAt": at,
            "versionsDeleted": gone.len(),
            "records": gone,
            "path": r.full_path(),
        })))
    })
    .await
}

/// The ml-dash client sends `pattern`, `limit`, `offset` and `experimentId`; the rest is what
/// `ml-dash list --server` sends (stored names, as `list` takes them).
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SearchQuery {
    pattern: Option<String>,
    limit: Option<String>,
    offset: Option<String>,
    experiment_id: Option<String>,
    namespace: Option<String>,
    project: Option<String>,
    experiment: Option<String>,
    /// A prefix (`/models`: whole segments).
    prefix: Option<String>,
    /// Comma-separated: every one must be present.
    tags: Option<String>,
    /// One full path (`/models/best.pt`).
    path: Option<String>,
    /// `true`: every version, not only the latest live one.
    all_versions: Option<String>,
    /// `true`: deleted versions too.
    deleted: Option<String>,
    /// `newest` (default: the client wants the likeliest match first) or `path`.
    order: Option<String>,
}

fn flag(v: Option<&str>, what: &str) -> ApiResult<bool> {
    match v {
        None | Some("" | "false" | "0") => Ok(false),
        Some("true" | "1") => Ok(true),
        Some(_) => Err(ApiError::bad(
            "INVALID_INPUT",
            format!("{what} must be true or false"),
        )),
    }
}

fn number(v: Option<&str>, default: usize, max: usize, what: &str) -> ApiResult<usize> {
    match v {
        None | Some("") => Ok(default),
        Some(s) => s
            .parse::<usize>()
            .map(|n| n.min(max))
            .map_err(|_| ApiError::bad("INVALID_INPUT", format!("{what} must be a number"))),
    }
}

/// `GET /api/search/files?pattern=**/name&limit&offset&experimentId`: live files whose path
/// matches, newest first.
pub async fn search_files(
    State(app): State<Shared>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<SearchQuery>,
) -> ApiResult<Json<Value>> {
    blocking(move || {
        let limit = number(q.limit.as_deref(), 100, 10_000, "limit")?;
        let offset = number(q.offset.as_deref(), 0, usize::MAX, "offset")?;
        let glob = match q.pattern.as_deref().filter(|p| !p.is_empty()) {
            Some(p) => Some(ml_dash::Glob::new(p)?),
            None => None,
        };
        let scope = match q.experiment_id.as_deref().filter(|s| !s.is_empty()) {
            Some(id) => {
                let e = experiment(&app, &caller, id)?;
                Scope {
                    namespace: Some(e.namespace),
                    project: Some(e.project),
                    experiment: Some(e.experiment),
                }
            }
            None => {
                let name = |what: &'static str, v: &Option<String>| -> ApiResult<Option<String>> {
                    match v.as_deref().filter(|s| !s.is_empty()) {
                        Some(s) => Ok(Some(ml_dash::validate::segment(what, s)?.to_string())),
                        None => Ok(None),
                    }
                };
                let scope = Scope {
                    namespace: name("namespace", &q.namespace)?,
                    project: name("project", &q.project)?,
                    experiment: name("experiment", &q.experiment)?,
                };
                if let Some(ns) = &scope.namespace {
                    caller.check(ns)?;
                }
                scope
            }
        };
        let (prefix, glob) = match q.path.as_deref().filter(|s| !s.is_empty()) {
            // One path: its directory as the prefix, its name matched exactly below.
            Some(p) => {
                let (dir, _) = ml_dash::validate::split_full(p)?;
                (Some(dir), glob)
            }
            None => (
                q.prefix
                    .as_deref()
                    .filter(|s| !s.is_empty())
                    .map(ml_dash::validate::prefix)
                    .transpose()?,
                glob,
            ),
        };
        let filter = ListFilter {
            scope,
            glob,
            prefix,
            tags: q
                .tags
                .as_deref()
                .map(|t| {
                    t.split(',')
                        .filter(|t| !t.is_empty())
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default(),
            all_versions: flag(q.all_versions.as_deref(), "allVersions")?,
            include_deleted: flag(q.deleted.as_deref(), "deleted")?,
        };
        let exact = q.path.as_deref().filter(|s| !s.is_empty());
        let mut found: Vec<FileRecord> = app
            .store
            .list(&filter)?
            .into_iter()
            .filter(|r| caller.allows(&r.namespace))
            .filter(|r| exact.is_none_or(|p| r.full_path() == p))
            .collect();
        match q.order.as_deref() {
            None | Some("" | "newest") => {
                found.sort_by(|a, b| b.uploaded_at.cmp(&a.uploaded_at).then(b.id.cmp(&a.id)));
            }
            Some("path") => {}
            Some(o) => {
                return Err(ApiError::bad(
                    "INVALID_INPUT",
                    format!("order {:?}: use newest or path", shorten(o)),
                ));
            }
        }
        let total = found.len();
        let files: Vec<Value> = found
            .iter()
            .skip(offset)
            .take(limit)
            .map(|r| {
                // Every id handed out resolves (the version may come from another process).
                app.catalog.register_version(r);
                let mut v = file_json(r);
                // Here `path` is the whole path in the experiment: the client compares it with
                // the path it asked for.
                v["path"] = json!(r.full_path());
                v
            })
            .collect();
        let has_more = offset.saturating_add(files.len()) < total;
        Ok(Json(
            json!({"files": files, "total": total, "totalCount": total, "hasMore": has_more}),
        ))
    })
    .await
}

/// `GET /api/experiments/{id}/parameters`
pub async fn get_params(
    State(app): State<Shared>,
    Path(id): Path<String>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<Value>> {
    blocking(move || {
        let exp = experiment(&app, &caller, &id)?;
        let p = app.store.journal(&exp)?.params.unwrap_or_default();
        Ok(Json(json!({
            "id": Node::experiment(&exp).id().to_string(),
            "experimentId": Node::experiment(&exp).id().to_string(),
            "data": p.data,
            "version": p.version,
            "createdAt": p.created_at,
            "updatedAt": p.updated_at,
        })))
    })
    .await
}

/// `POST /api/experiments/{id}/parameters` with `{"data": {...}}`: merged into the parameters.
pub async fn post_params(
    State(app): State<Shared>,
    Path(id): Path<String>,
    Extension(caller): Extension<Caller>,
    req: Request,
) -> ApiResult<Json<Value>> {
    let body = object(read_json(req.into_body(), MAX_JSON).await?, "the body")?;
    blocking(move || {
        let exp = experiment(&app, &caller, &id)?;
        let data = body
            .get("data")
            .filter(|d| d.is_object())
            .ok_or_else(|| ApiError::bad("INVALID_INPUT", "`data` must be a JSON object"))?;
        let p = app.store.set_params(&exp, data)?;
        Ok(Json(
            json!({"data": p.data, "version": p.version, "updatedAt": p.updated_at}),
        ))
    })
    .await
}

/// The client's level names to the store's (`fatal` is `critical`).
fn level(l: &str) -> String {
    match l.to_ascii_lowercase().as_str() {
        "fatal" => "critical".into(),
        "warning" => "warn".into(),
        other => other.into(),
    }
}

/// `POST /api/experiments/{id}/logs` with `{"logs": [{timestamp, level, message, metadata?}]}`:
/// appended in order, durable together.
pub async fn post_logs(
    State(app): State<Shared>,
    Path(id): Path<String>,
    Extension(caller): Extension<Caller>,
    req: Request,
) -> ApiResult<Json<Value>> {
    let body = object(read_json(req.into_body(), MAX_BATCH).await?, "the body")?;
    blocking(move || {
        let exp = experiment(&app, &caller, &id)?;
        let Some(Value::Array(logs)) = body.get("logs") else {
            return Err(ApiError::bad("INVALID_INPUT", "`logs` must be a list"));
        };
        let mut lines = Vec::with_capacity(logs.len());
        for l in logs {
            let Value::Object(m) = l else {
                return Err(ApiError::bad(
                    "INVALID_INPUT",
                    "each log line must be an object",
                ));
            };
            let message = opt_str(m, "message")?
                .ok_or_else(|| ApiError::bad("INVALID_INPUT", "a log line needs a message"))?;
            let lvl = level(opt_str(m, "level")?.unwrap_or("info"));
            let ts = opt_str(m, "timestamp")?.map(str::to_string);
            let metadata = match m.get("metadata") {
                None | Some(Value::Null) => None,
                Some(v) => Some(v.clone()),
            };
            lines.push((ts, lvl, message.to_string(), metadata));
        }
        let done = app.store.log_many(&exp, lines)?;
        let (first, last) = (
            done.first().map(|l| l.sequence_number),
            done.last().map(|l| l.sequence_number),
        );
        Ok(Json(json!({
            "created": done.len(),
            "startSequence": first,
            "endSequence": last,
            "experimentId": Node::experiment(&exp).id().to_string(),
        })))
    })
    .await
}

#[derive(serde::Deserialize)]
pub struct LogsQuery {
    limit: Option<String>,
    offset: Option<String>,
    order: Option<String>,
    #[serde(rename = "orderBy")]
    order_by: Option<String>,
    level: Option<String>,
    #[serde(rename = "startTime")]
    start_time: Option<String>,
    #[serde(rename = "endTime")]
    end_time: Option<String>,
    search: Option<String>,
}

/// `GET /api/experiments/{id}/logs?limit&offset&order&orderBy&level&startTime&endTime&search`
pub async fn get_logs(
    State(app): State<Shared>,
    Path(id): Path<String>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<LogsQuery>,
) -> ApiResult<Json<Value>> {
    blocking(move || {
        let exp = experiment(&app, &caller, &id)?;
        let limit = number(q.limit.as_deref(), 1000, 10_000, "limit")?;
        let offset = number(q.offset.as_deref(), 0, usize::MAX, "offset")?;
        let levels: Option<Vec<String>> = q
            .level
            .as_deref()
            .filter(|l| !l.is_empty())
            .map(|l| l.split(',').map(|x| level(x.trim())).collect());
        let search = q.search.as_deref().map(str::to_lowercase);
        let mut logs: Vec<ml_dash::LogEntry> = app
            .store
            .journal(&exp)?
            .logs
            .into_iter()
            .filter(|l| {
                levels
                    .as_ref()
                    .is_none_or(|ls| ls.contains(&level(&l.level)))
            })
            .filter(|l| {
                q.start_time
                    .as_ref()
                    .is_none_or(|t| l.timestamp.as_str() >= t.as_str())
            })
            .filter(|l| {
                q.end_time
                    .as_ref()
                    .is_none_or(|t| l.timestamp.as_str() <= t.as_str())
            })
            .filter(|l| {
                search
                    .as_ref()
                    .is_none_or(|s| l.message.to_lowercase().contains(s))
            })
            .collect();
        if q.order_by.as_deref() == Some("timestamp") {
            logs.sort_by(|a, b| a.timestamp.cmp(&b.timestamp));
        }
        match q.order.as_deref() {
            None | Some("" | "asc") => {}
            Some("desc") => logs.reverse(),
            Some(o) => {
                return Err(ApiError::bad(
                    "INVALID_INPUT",
                    format!("order {:?}: use asc or desc", shorten(o)),
                ));
            }
        }
        let total = logs.len();
        let page: Vec<Value> = logs
            .into_iter()
            .skip(offset)
            .take(limit)
            .map(|l| {
                json!({"id": l.sequence_number.to_string(), "sequenceNumber": l.sequence_number,
                       "timestamp": l.timestamp, "level": l.level, "message": l.message,
                       "metadata": l.metadata})
            })
            .collect();
        let has_more = offset.saturating_add(page.len()) < total;
        Ok(Json(json!({
            "logs": page, "total": total, "offset": offset, "limit": limit, "hasMore": has_more,
        })))
    })
    .await
}

fn metric_id(exp: &ExperimentKey, name: &str) -> String {
    // Derived like node ids, from a kind no node uses.
    Node::ExpFolder {
        ns: exp.namespace.clone(),
        project: exp.project.clone(),
        name: exp.experiment.clone(),
        prefix: format!("\0metric\0{name}"),
    }
    .id()
    .to_string()
}

fn metric_summary(exp: &ExperimentKey, name: &str, points: &[ml_dash::MetricPoint]) -> Value {
    json!({
        "metricId": metric_id(exp, name),
        "name": name,
        "description": Value::Null,
        "tags": [],
        "metadata": Value::Null,
        "totalDataPoints": points.len(),
        "bufferedDataPoints": 0,
        "chunkedDataPoints": points.len(),
        "totalChunks": 0,
        "firstDataAt": points.first().map(|p| p.created_at.clone()),
        "lastDataAt": points.last().map(|p| p.created_at.clone()),
        "createdAt": points.first().map(|p| p.created_at.clone()),
        "updatedAt": points.last().map(|p| p.created_at.clone()),
    })
}

/// `GET /api/experiments/{id}/metrics`
pub async fn list_metrics(
    State(app): State<Shared>,
    Path(id): Path<String>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<Value>> {
    blocking(move || {
        let exp = experiment(&app, &caller, &id)?;
        let j = app.store.journal(&exp)?;
        let metrics: Vec<Value> = j
            .metrics
            .iter()
            .map(|(name, pts)| metric_summary(&exp, name, pts))
            .collect();
        Ok(Json(json!({"metrics": metrics})))
    })
    .await
}

/// `POST /api/experiments/{id}/metrics/{name}/append` (`{"data": {...}}`) and
/// `.../append-batch` (`{"dataPoints": [...]}`): the name may contain `/` (the client does not
/// escape it).
pub async fn post_metric(
    State(app): State<Shared>,
    Path((id, rest)): Path<(String, String)>,
    Extension(caller): Extension<Caller>,
    req: Request,
) -> ApiResult<Json<Value>> {
    let (name, batch) = if let Some(n) = rest.strip_suffix("/append-batch") {
        (n.to_string(), true)
    } else if let Some(n) = rest.strip_suffix("/append") {
        (n.to_string(), false)
    } else {
        return Err(unknown(&format!("metrics/{rest}")));
    };
    let body = object(read_json(req.into_body(), MAX_BATCH).await?, "the body")?;
    blocking(move || {
        let exp = experiment(&app, &caller, &id)?;
        let points: Vec<Value> = if batch {
            match body.get("dataPoints") {
                Some(Value::Array(a)) => a.clone(),
                _ => {
                    return Err(ApiError::bad(
                        "INVALID_INPUT",
                        "`dataPoints` must be a list of objects",
                    ));
                }
            }
        } else {
            match body.get("data") {
                Some(d @ Value::Object(_)) => vec![d.clone()],
                _ => return Err(ApiError::bad("INVALID_INPUT", "`data` must be an object")),
            }
        };
        let done = app.store.append_metrics(&exp, &name, &points)?;
        let first = done.first().map(|p| p.index);
        Ok(Json(json!({
            "metricId": metric_id(&exp, &name),
            "name": name,
            "count": done.len(),
            "startIndex": first,
            "endIndex": done.last().map(|p| p.index),
        })))
    })
    .await
}

#[derive(serde::Deserialize)]
pub struct RowsQuery {
    limit: Option<String>,
    cursor: Option<String>,
}

/// `GET .../metrics/{name}/rows?limit&cursor` (format `ml-dash.metric-rows.v1`),
/// `GET .../metrics/{name}/stats`, and `GET .../metrics/{name}/points?limit&cursor` (the
/// points as stored, for our own clients).
pub async fn get_metric(
    State(app): State<Shared>,
    Path((id, rest)): Path<(String, String)>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<RowsQuery>,
) -> ApiResult<Response> {
    let (name, what) = if let Some(n) = rest.strip_suffix("/rows") {
        (n.to_string(), "rows")
    } else if let Some(n) = rest.strip_suffix("/stats") {
        (n.to_string(), "stats")
    } else if let Some(n) = rest.strip_suffix("/points") {
        (n.to_string(), "points")
    } else {
        return Err(unknown(&format!("metrics/{rest}")));
    };
    blocking(move || {
        let exp = experiment(&app, &caller, &id)?;
        let j = app.store.journal(&exp)?;
        let Some(points) = j.metrics.get(&name) else {
            let body = json!({"code": "not_found", "message": format!("no metric {name:?}"),
                              "error": format!("no metric {name:?}")});
            return Ok((StatusCode::NOT_FOUND, Json(body)).into_response());
        };
        if what == "stats" {
            return Ok(Json(metric_summary(&exp, &name, points)).into_response());
        }
        let limit = number(q.limit.as_deref(), 1000, 10_000, "limit")?.max(1);
        let start = match q.cursor.as_deref().filter(|c| !c.is_empty()) {
            None => 0,
            Some(c) => c
                .strip_prefix("i")
                .and_then(|n| n.parse::<usize>().ok())
                .filter(|n| *n <= points.len())
                .ok_or_else(|| {
                    let body = json!({"code": "bad_cursor",
                        "message": "the cursor is not one this server gave; start without one"});
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "bad_cursor",
                        body["message"].as_str().unwrap_or_default(),
                    )
                })?,
        };
        let end = start.saturating_add(limit).min(points.len());
        let page = &points[start..end];
        if what == "points" {
            // The points as the store keeps them (index, fields, time): for our own clients.
            let has_more = end < points.len();
            return Ok(Json(json!({
                "points": page,
                "hasMore": has_more,
                "nextCursor": if has_more { Value::String(format!("i{end}")) } else { Value::Null },
            }))
            .into_response());
        }
        let blocks = row_blocks(page);
        let has_more = end < points.len();
        Ok(Json(json!({
            "format": "ml-dash.metric-rows.v1",
            "visibility": "committed",
            "order": "storage",
            "metricId": metric_id(&exp, &name),
            "blocks": blocks,
            "returned": page.len(),
            "hasMore": has_more,
            "nextCursor": if has_more { Value::String(format!("i{end}")) } else { Value::Null },
        }))
        .into_response())
    })
    .await
}

/// Column type and cell of one value (`ml-dash.metric-rows.v1`): integers are `int64` as
/// decimal strings, other numbers `float64`, lists and objects `utf8` JSON text.
fn cell(v: &Value) -> (&'static str, Value) {
    match v {
        Value::Null => ("float64", Value::Null),
        Value::Bool(b) => ("bool", Value::Bool(*b)),
        Value::Number(n) if n.is_i64() || n.is_u64() => {
            if n.is_u64() && !n.is_i64() {
                ("uint64", Value::String(n.to_string()))
            } else {
                ("int64", Value::String(n.to_string()))
            }
        }
        Value::Number(n) => ("float64", json!(n.as_f64())),
        Value::String(s) => ("utf8", Value::String(s.clone())),
        other => ("utf8", Value::String(other.to_string())),
    }
}

/// Points in blocks of consecutive points with the same columns.
fn row_blocks(points: &[ml_dash::MetricPoint]) -> Vec<Value> {
    /// Column names and types, and the rows having them.
    type Block = (Vec<(String, &'static str)>, Vec<Value>);
    let mut blocks: Vec<Block> = Vec::new();
    for p in points {
        let mut cols = Vec::with_capacity(p.data.len());
        let mut row = Vec::with_capacity(p.data.len());
        for (k, v) in &p.data {
            let (t, c) = cell(v);
            cols.push((k.clone(), t));
            row.push(c);
        }
        match blocks.last_mut() {
            Some((c, rows)) if *c == cols => rows.push(Value::Array(row)),
            _ => blocks.push((cols, vec![Value::Array(row)])),
        }
    }
    blocks
        .into_iter()
        .map(|(cols, rows)| {
            let columns: Vec<Value> = cols
                .into_iter()
                .map(|(name, t)| json!({"name": name, "type": t}))
                .collect();
            json!({"columns": columns, "rows": rows})
        })
        .collect()
}

/// `GET /health`: alive (to anyone), and to a caller with a valid token (or on a store with
/// none) the write-behind's state when `--remote` is set.
pub async fn health(State(app): State<Shared>, caller: Option<Extension<Caller>>) -> Json<Value> {
    #[cfg_attr(not(feature = "remote"), allow(unused_mut))]
    let mut out = json!({
        "status": "ok",
        "uptimeSeconds": app.started.elapsed().as_secs(),
        "version": env!("CARGO_PKG_VERSION"),
    });
    #[cfg(feature = "remote")]
    if let Some(p) = &app.push
        && caller.is_some()
    {
        out["push"] = p.status();
    }
    #[cfg(not(feature = "remote"))]
    let _ = caller;
    Json(out)
}

fn unknown(what: &str) -> ApiError {
    ApiError::not_found(format!("no such route: {}", shorten(what)))
}

/// Anything else: a JSON 404.
pub async fn unknown_route(req: Request) -> ApiError {
    unknown(&format!("{} {}", req.method(), req.uri().path()))
}
