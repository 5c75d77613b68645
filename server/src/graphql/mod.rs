//! `POST /graphql`: the read side of the ml-dash client, a subset of its server's schema.
//!
//! Documents are parsed (`parse.rs`) and answered field by field, so any document that selects
//! within the schema below works, whatever its whitespace or operation name (the client sends
//! two different documents under one name). A field outside it is an error naming the field,
//! answered as 400 with `{"error", "code": "GRAPHQL_UNSUPPORTED", "errors": [...]}`.
//!
//! ```text
//! Query      me namespace(slug) project(id | namespaceSlug, projectSlug) experimentById(id)
//!            experimentNode(experimentId) experiment(namespaceSlug, projectSlug, experimentName)
//!            projectsPaginated(namespaceSlug, limit, offset)
//!            experimentsPaginated(namespaceSlug, projectSlug, status, limit, offset)
//!            searchExperimentsPaginated(pattern, limit, offset)
//! Namespace  id slug name projects
//! Project    id slug name description tags experimentCount namespace
//!            nodes(parentId, maxDepth)
//! Node       id name type pPath experimentId parentId children
//! Experiment id name description tags status metadata startedAt endedAt createdAt updatedAt
//!            projectId project metrics{name} files filesPaginated(limit, offset) parameters
//!            trackCount displayPath
//! File       id name filename path description tags metadata createdAt updatedAt pPath
//!            sizeBytes checksum version physicalFile{id filename contentType sizeBytes
//!            checksum s3Url}
//! ```

pub mod parse;

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Extension, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use ml_dash::{ExperimentKey, FileRecord, ListFilter, Scope};
use serde_json::{Map, Value, json};

use crate::api::{experiment_json, file_json, read_json};
use crate::auth::Caller;
use crate::catalog::{Node, experiment_key, parse_id};
use crate::error::ApiError;
use crate::{Shared, blocking};
use parse::{Field, Selection};

/// Largest GraphQL request body.
const MAX_BODY: usize = 256 * 1024;
/// Largest page a paginated field answers.
const MAX_PAGE: usize = 10_000;

/// An error in a query: unsupported field, bad argument, forbidden namespace.
#[derive(Debug)]
pub struct GqlError {
    pub message: String,
    pub forbidden: bool,
}

impl GqlError {
    fn new(m: impl Into<String>) -> GqlError {
        GqlError {
            message: m.into(),
            forbidden: false,
        }
    }
}

impl From<ApiError> for GqlError {
    fn from(e: ApiError) -> GqlError {
        GqlError {
            forbidden: e.status == StatusCode::FORBIDDEN,
            message: e.message,
        }
    }
}

impl From<ml_dash::Error> for GqlError {
    fn from(e: ml_dash::Error) -> GqlError {
        GqlError::new(e.to_string())
    }
}

type R<T> = Result<T, GqlError>;

/// What a field resolves to.
enum Obj {
    Me,
    Namespace(String),
    Project(String, String),
    Experiment(ExperimentKey),
    TreeNode(u64, Node),
    File(Box<FileRecord>),
    PhysicalFile(Box<FileRecord>),
    Page {
        key: &'static str,
        items: Vec<Obj>,
        total: usize,
        has_more: bool,
    },
    Params(ExperimentKey),
    MetricName(String),
}

struct Ctx<'a> {
    app: &'a Shared,
    caller: &'a Caller,
    vars: &'a Map<String, Value>,
    fragments: &'a HashMap<String, Vec<Selection>>,
    /// Fragment spreads being expanded (a cycle is an error, not a stack overflow).
    depth: std::cell::Cell<usize>,
}

pub async fn handler(
    State(app): State<Shared>,
    Extension(caller): Extension<Caller>,
    req: Request,
) -> Response {
    let body = match read_json(req.into_body(), MAX_BODY).await {
        Ok(Value::Object(m)) => m,
        Ok(_) => return bad("the body must be a JSON object {\"query\", \"variables\"}"),
        Err(e) => {
            let body = json!({"error": e.message, "code": e.code,
                              "errors": [{"message": e.message}]});
            return (e.status, Json(body)).into_response();
        }
    };
    let Some(Value::String(query)) = body.get("query").cloned() else {
        return bad("`query` must be a string");
    };
    let vars = match body.get("variables") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => return bad("`variables` must be a JSON object"),
    };
    let r = blocking(move || {
        let doc = parse::parse(&query).map_err(|m| ApiError::bad("GRAPHQL_SYNTAX", m))?;
        let op = match body.get("operationName").and_then(Value::as_str) {
            Some(name) => doc
                .operations
                .iter()
                .find(|o| o.name.as_deref() == Some(name))
                .ok_or_else(|| {
                    ApiError::bad(
                        "GRAPHQL_UNSUPPORTED",
                        format!("no operation named {name:?}"),
                    )
                })?,
            None if doc.operations.len() == 1 => &doc.operations[0],
            None => {
                return Err(ApiError::bad(
                    "GRAPHQL_UNSUPPORTED",
                    "several operations: say which with `operationName`",
                ));
            }
        };
        let ctx = Ctx {
            app: &app,
            caller: &caller,
            vars: &vars,
            fragments: &doc.fragments,
            depth: std::cell::Cell::new(0),
        };
        ctx.root(&op.selections).map_err(|e| {
            if e.forbidden {
                ApiError::new(StatusCode::FORBIDDEN, "FORBIDDEN", e.message)
            } else {
                ApiError::bad("GRAPHQL_UNSUPPORTED", e.message)
            }
        })
    })
    .await;
    match r {
        Ok(data) => Json(json!({ "data": data })).into_response(),
        Err(e) => {
            let body = json!({"error": e.message, "code": e.code,
                              "errors": [{"message": e.message}]});
            (e.status, Json(body)).into_response()
        }
    }
}

fn bad(m: &str) -> Response {
    let body = json!({"error": m, "code": "GRAPHQL_BAD_REQUEST", "errors": [{"message": m}]});
    (StatusCode::BAD_REQUEST, Json(body)).into_response()
}

impl<'a> Ctx<'a> {
    /// Flatten fragment spreads and inline fragments into fields.
    fn fields(&self, sel: &'a [Selection], out: &mut Vec<&'a Field>) -> R<()> {
        for s in sel {
            match s {
                Selection::Field(f) => out.push(f),
                Selection::Inline(inner) => self.fields(inner, out)?,
                Selection::Spread(name) => {
                    if self.depth.get() > 16 {
                        return Err(GqlError::new("fragments nest too deep (a cycle?)"));
                    }
                    let frag = self
                        .fragments
                        .get(name)
                        .ok_or_else(|| GqlError::new(format!("unknown fragment {name}")))?;
                    self.depth.set(self.depth.get() + 1);
                    let r = self.fields(frag, out);
                    self.depth.set(self.depth.get() - 1);
                    r?;
                }
            }
        }
        Ok(())
    }

    fn arg(&self, f: &'a Field, name: &str) -> R<Option<Value>> {
        let Some((_, v)) = f.args.iter().find(|(n, _)| n == name) else {
            return Ok(None);
        };
        Ok(Some(self.value(v)?)).map(|v| v.filter(|v| !v.is_null()))
    }

    fn value(&self, v: &parse::Value) -> R<Value> {
        use parse::Value as V;
        Ok(match v {
            V::Variable(n) => self.vars.get(n).cloned().unwrap_or(Value::Null),
            V::Null => Value::Null,
            V::Bool(b) => json!(b),
            V::Int(i) => json!(i),
            V::Float(f) => json!(f),
            V::String(s) | V::Enum(s) => json!(s),
            V::List(items) => Value::Array(items.iter().map(|i| self.value(i)).collect::<R<_>>()?),
            V::Object(fields) => Value::Object(
                fields
                    .iter()
                    .map(|(k, v)| Ok((k.clone(), self.value(v)?)))
                    .collect::<R<_>>()?,
            ),
        })
    }

    fn str_arg(&self, f: &'a Field, name: &str) -> R<Option<String>> {
        match self.arg(f, name)? {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(Value::Number(n)) => Ok(Some(n.to_string())),
            Some(_) => Err(GqlError::new(format!(
                "argument {name} of {} must be a string",
                f.name
            ))),
        }
    }

    fn int_arg(&self, f: &'a Field, name: &str, default: usize) -> R<usize> {
        match self.arg(f, name)? {
            None => Ok(default),
            Some(Value::Number(n)) => n
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| GqlError::new(format!("argument {name} must be >= 0"))),
            Some(Value::String(s)) => s
                .parse()
                .map_err(|_| GqlError::new(format!("argument {name} must be a number"))),
            Some(_) => Err(GqlError::new(format!("argument {name} must be a number"))),
        }
    }

    fn root(&self, sel: &'a [Selection]) -> R<Value> {
        let mut fields = Vec::new();
        self.fields(sel, &mut fields)?;
        let mut out = Map::new();
        for f in fields {
            let v = match self.root_field(f)? {
                Some(obj) => self.select(&obj, f)?,
                None => Value::Null,
            };
            out.insert(f.key().to_string(), v);
        }
        Ok(Value::Object(out))
    }

    fn node_id(&self, f: &'a Field, name: &str) -> R<Option<(u64, Node)>> {
        let Some(s) = self.str_arg(f, name)? else {
            return Ok(None);
        };
        let Some(id) = parse_id(&s) else {
            return Err(GqlError::new(format!("{name} {s:?} is not an id")));
        };
        Ok(self
            .app
            .catalog
            .resolve(&self.app.store, id)?
            .map(|n| (id, n)))
    }

    fn experiment_of(&self, f: &'a Field, name: &str) -> R<Option<ExperimentKey>> {
        match self.node_id(f, name)? {
            Some((_, Node::Experiment { ns, project, name })) => {
                self.caller.check(&ns)?;
                Ok(Some(experiment_key(&ns, &project, &name)))
            }
            _ => Ok(None),
        }
    }

    fn root_field(&self, f: &'a Field) -> R<Option<Obj>> {
        Ok(match f.name.as_str() {
            "me" => Some(Obj::Me),
            "namespace" => {
                let slug = self
                    .str_arg(f, "slug")?
                    .ok_or_else(|| GqlError::new("namespace needs slug"))?;
                ml_dash::validate::segment("namespace", &slug).map_err(ApiError::from)?;
                self.caller.check(&slug)?;
                Some(Obj::Namespace(slug))
            }
            "project" => {
                if let Some((_, n)) = self.node_id(f, "id")? {
                    match n {
                        Node::Project { ns, project } => {
                            self.caller.check(&ns)?;
                            Some(Obj::Project(ns, project))
                        }
                        _ => None,
                    }
                } else {
                    let ns = self.str_arg(f, "namespaceSlug")?;
                    let p = self.str_arg(f, "projectSlug")?;
                    match (ns, p) {
                        (Some(ns), Some(p)) => {
                            self.caller.check(&ns)?;
                            self.app
                                .catalog
                                .projects(Some(&ns))
                                .into_iter()
                                .find(|(_, x)| *x == p)
                                .map(|(ns, p)| Obj::Project(ns, p))
                        }
                        _ => {
                            return Err(GqlError::new(
                                "project needs id, or namespaceSlug and projectSlug",
                            ));
                        }
                    }
                }
            }
            "experimentById" => self.experiment_of(f, "id")?.map(Obj::Experiment),
            "experimentNode" => self.experiment_of(f, "experimentId")?.map(|e| {
                let n = Node::experiment(&e);
                Obj::TreeNode(n.id(), n)
            }),
            "experiment" => {
                let ns = self.str_arg(f, "namespaceSlug")?;
                let p = self
                    .str_arg(f, "projectSlug")?
                    .ok_or_else(|| GqlError::new("experiment needs projectSlug"))?;
                let name = self
                    .str_arg(f, "experimentName")?
                    .ok_or_else(|| GqlError::new("experiment needs experimentName"))?;
                self.visible_experiments(ns.as_deref(), Some(&p))
                    .into_iter()
                    .find(|(e, display)| e.experiment == name || *display == name)
                    .map(|(e, _)| Obj::Experiment(e))
            }
            "projectsPaginated" => {
                let ns = self.str_arg(f, "namespaceSlug")?;
                let all: Vec<Obj> = self
                    .app
                    .catalog
                    .projects(ns.as_deref())
                    .into_iter()
                    .filter(|(ns, _)| self.caller.allows(ns))
                    .map(|(ns, p)| Obj::Project(ns, p))
                    .collect();
                Some(self.page(f, "projects", all)?)
            }
            "experimentsPaginated" => {
                let ns = self.str_arg(f, "namespaceSlug")?;
                let p = self.str_arg(f, "projectSlug")?;
                let status = self.str_arg(f, "status")?;
                let mut all = Vec::new();
                for (e, _) in self.visible_experiments(ns.as_deref(), p.as_deref()) {
                    if let Some(s) = &status {
                        let info = self.app.store.journal(&e)?.info;
                        if info.and_then(|i| i.status).as_deref() != Some(s.as_str()) {
                            continue;
                        }
                    }
                    all.push(Obj::Experiment(e));
                }
                Some(self.page(f, "experiments", all)?)
            }
            "searchExperimentsPaginated" => {
                let pattern = self.str_arg(f, "pattern")?.unwrap_or_default();
                let all: Vec<Obj> = self
                    .visible_experiments(None, None)
                    .into_iter()
                    .filter(|(e, display)| {
                        let path = format!("{}/{}/{}", e.namespace, e.project, e.experiment);
                        wildcard(&pattern, display)
                            || wildcard(&pattern, &e.experiment)
                            || wildcard(&pattern, &path)
                    })
                    .map(|(e, _)| Obj::Experiment(e))
                    .collect();
                Some(self.page(f, "experiments", all)?)
            }
            other => return Err(GqlError::new(format!("unsupported field Query.{other}"))),
        })
    }

    /// Experiments the caller may see (with the name the client knows them by).
    fn visible_experiments(
        &self,
        ns: Option<&str>,
        project: Option<&str>,
    ) -> Vec<(ExperimentKey, String)> {
        self.app
            .catalog
            .experiments(ns, project)
            .into_iter()
            .filter(|e| self.caller.allows(&e.namespace))
            .map(|e| {
                let folder = self.app.catalog.folder_of(&e);
                let display = crate::api::display_name(&e.experiment, folder.as_deref());
                (e, display)
            })
            .collect()
    }

    fn page(&self, f: &'a Field, key: &'static str, all: Vec<Obj>) -> R<Obj> {
        let limit = self.int_arg(f, "limit", 100)?.min(MAX_PAGE);
        let offset = self.int_arg(f, "offset", 0)?;
        let total = all.len();
        let items: Vec<Obj> = all.into_iter().skip(offset).take(limit).collect();
        let has_more = offset.saturating_add(items.len()) < total;
        Ok(Obj::Page {
            key,
            items,
            total,
            has_more,
        })
    }

    fn select(&self, obj: &Obj, f: &'a Field) -> R<Value> {
        if f.selections.is_empty() {
            return Err(GqlError::new(format!(
                "{} needs a selection of fields",
                f.name
            )));
        }
        let mut fields = Vec::new();
        self.fields(&f.selections, &mut fields)?;
        let mut out = Map::new();
        for sub in fields {
            let v = self.field(obj, sub)?;
            out.insert(sub.key().to_string(), v);
        }
        Ok(Value::Object(out))
    }

    fn list(&self, items: &[Obj], f: &'a Field) -> R<Value> {
        Ok(Value::Array(
            items
                .iter()
                .map(|o| self.select(o, f))
                .collect::<R<Vec<_>>>()?,
        ))
    }

    fn leaf(f: &Field, v: Value) -> R<Value> {
        if !f.selections.is_empty() {
            return Err(GqlError::new(format!(
                "{} is a value: it has no fields",
                f.name
            )));
        }
        Ok(v)
    }

    fn field(&self, obj: &Obj, f: &'a Field) -> R<Value> {
        let name = f.name.as_str();
        if name == "__typename" {
            let t = match obj {
                Obj::Me => "User",
                Obj::Namespace(_) => "Namespace",
                Obj::Project(..) => "Project",
                Obj::Experiment(_) => "Experiment",
                Obj::TreeNode(..) => "Node",
                Obj::File(_) => "File",
                Obj::PhysicalFile(_) => "PhysicalFile",
                Obj::Page { .. } => "Page",
                Obj::Params(_) => "Parameters",
                Obj::MetricName(_) => "Metric",
            };
            return Self::leaf(f, json!(t));
        }
        match obj {
            Obj::Me => {
                let n = self.caller.name().to_string();
                let v = match name {
                    "id" => json!(Node::Namespace { ns: n.clone() }.id().to_string()),
                    "username" | "name" | "given_name" => json!(n),
                    "email" | "family_name" | "picture" => Value::Null,
                    _ => return Err(unsupported("User", name)),
                };
                Self::leaf(f, v)
            }
            Obj::Namespace(ns) => match name {
                "id" => Self::leaf(
                    f,
                    json!(Node::Namespace { ns: ns.clone() }.id().to_string()),
                ),
                "slug" | "name" => Self::leaf(f, json!(ns)),
                "projects" => {
                    let ps: Vec<Obj> = self
                        .app
                        .catalog
                        .projects(Some(ns))
                        .into_iter()
                        .map(|(ns, p)| Obj::Project(ns, p))
                        .collect();
                    self.list(&ps, f)
                }
                _ => Err(unsupported("Namespace", name)),
            },
            Obj::Project(ns, p) => match name {
                "id" => Self::leaf(
                    f,
                    json!(
                        Node::Project {
                            ns: ns.clone(),
                            project: p.clone()
                        }
                        .id()
                        .to_string()
                    ),
                ),
                "slug" | "name" => Self::leaf(f, json!(p)),
                "description" => Self::leaf(f, Value::Null),
                "tags" => Self::leaf(f, json!([])),
                "experimentCount" => Self::leaf(
                    f,
                    json!(self.app.catalog.experiments(Some(ns), Some(p)).len()),
                ),
                "namespace" => self.select(&Obj::Namespace(ns.clone()), f),
                "nodes" => {
                    let parent = self.str_arg(f, "parentId")?;
                    let depth = self.int_arg(f, "maxDepth", 10)?;
                    let kids = self.children(ns, p, parent.as_deref())?;
                    self.tree(&kids, f, depth)
                }
                _ => Err(unsupported("Project", name)),
            },
            Obj::TreeNode(id, n) => self.tree_field(*id, n, f, 10),
            Obj::Experiment(e) => self.experiment_field(e, f),
            Obj::File(r) => match name {
                "physicalFile" => self.select(&Obj::PhysicalFile(r.clone()), f),
                _ => {
                    let j = file_json(r);
                    let v = match name {
                        "id" | "name" | "filename" | "path" | "description" | "tags"
                        | "metadata" | "createdAt" | "updatedAt" | "deletedAt" | "pPath"
                        | "sizeBytes" | "checksum" | "contentType" | "version" | "experimentId"
                        | "parentId" | "projectId" | "type" => j[name].clone(),
                        _ => return Err(unsupported("File", name)),
                    };
                    Self::leaf(f, v)
                }
            },
            Obj::PhysicalFile(r) => {
                let j = file_json(r);
                let v = match name {
                    "id" | "filename" | "contentType" | "sizeBytes" | "checksum" | "s3Url" => {
                        j["physicalFile"][name].clone()
                    }
                    _ => return Err(unsupported("PhysicalFile", name)),
                };
                Self::leaf(f, v)
            }
            Obj::Page {
                key,
                items,
                total,
                has_more,
            } => match name {
                n if n == *key => self.list(items, f),
                "totalCount" => Self::leaf(f, json!(total)),
                "hasMore" => Self::leaf(f, json!(has_more)),
                _ => Err(unsupported("Page", name)),
            },
            Obj::Params(e) => {
                let p = self.app.store.journal(e)?.params.unwrap_or_default();
                let v = match name {
                    "id" => json!(Node::experiment(e).id().to_string()),
                    "data" => json!(p.data),
                    "version" => json!(p.version),
                    "createdAt" => json!(p.created_at),
                    "updatedAt" => json!(p.updated_at),
                    _ => return Err(unsupported("Parameters", name)),
                };
                Self::leaf(f, v)
            }
            Obj::MetricName(n) => match name {
                "name" => Self::leaf(f, json!(n)),
                _ => Err(unsupported("Metric", name)),
            },
        }
    }

    fn experiment_field(&self, e: &ExperimentKey, f: &'a Field) -> R<Value> {
        let name = f.name.as_str();
        let live = |this: &Self| -> R<Vec<Obj>> {
            let filter = ListFilter {
                scope: Scope {
                    namespace: Some(e.namespace.clone()),
                    project: Some(e.project.clone()),
                    experiment: Some(e.experiment.clone()),
                },
                ..ListFilter::default()
            };
            Ok(this
                .app
                .store
                .list(&filter)?
                .into_iter()
                .map(|r| {
                    // Every id handed out resolves (the version may come from another process).
                    this.app.catalog.register_version(&r);
                    Obj::File(Box::new(r))
                })
                .collect())
        };
        match name {
            "project" => self.select(&Obj::Project(e.namespace.clone(), e.project.clone()), f),
            "files" => {
                let files = live(self)?;
                self.list(&files, f)
            }
            "filesPaginated" => {
                let files = live(self)?;
                let page = self.page(f, "files", files)?;
                self.select(&page, f)
            }
            "parameters" => self.select(&Obj::Params(e.clone()), f),
            "metrics" => {
                let names: Vec<Obj> = self
                    .app
                    .store
                    .journal(e)?
                    .metrics
                    .into_keys()
                    .map(Obj::MetricName)
                    .collect();
                self.list(&names, f)
            }
            "trackCount" => Self::leaf(f, json!(0)),
            _ => {
                let info = self.app.store.journal(e)?.info;
                let j = experiment_json(e, info.as_ref());
                let v = match name {
                    "id" | "name" | "description" | "tags" | "status" | "metadata"
                    | "startedAt" | "endedAt" | "createdAt" | "updatedAt" | "projectId"
                    | "displayPath" | "parentId" => j[name].clone(),
                    _ => return Err(unsupported("Experiment", name)),
                };
                Self::leaf(f, v)
            }
        }
    }

    /// The children of `parent` (`None`: the project's root) in the project's tree: folders
    /// and experiments.
    fn children(&self, ns: &str, p: &str, parent: Option<&str>) -> R<Vec<(u64, Node)>> {
        let parent_path: Option<String> = match parent.filter(|s| !s.is_empty() && *s != "ROOT") {
            None => None,
            Some(id) => {
                let Some(id) = parse_id(id) else {
                    return Err(GqlError::new("parentId is not an id"));
                };
                match self.app.catalog.get(id) {
                    Some(Node::Folder { path, .. }) => Some(path),
                    _ => return Ok(Vec::new()),
                }
            }
        };
        let mut out = Vec::new();
        for (id, n) in self.app.catalog.project_nodes(ns, p) {
            let at = match &n {
                Node::Folder { path, .. } => path.rsplit_once('/').map(|(up, _)| up.to_string()),
                Node::Experiment { .. } => {
                    let e = match &n {
                        Node::Experiment { ns, project, name } => experiment_key(ns, project, name),
                        _ => unreachable!(),
                    };
                    self.app.catalog.folder_of(&e).filter(|f| !f.is_empty())
                }
                _ => continue,
            };
            if at == parent_path {
                out.push((id, n));
            }
        }
        Ok(out)
    }

    fn tree(&self, nodes: &[(u64, Node)], f: &'a Field, depth: usize) -> R<Value> {
        let mut fields = Vec::new();
        self.fields(&f.selections, &mut fields)?;
        let mut arr = Vec::with_capacity(nodes.len());
        for (id, n) in nodes {
            let mut out = Map::new();
            for sub in &fields {
                out.insert(sub.key().to_string(), self.tree_field(*id, n, sub, depth)?);
            }
            arr.push(Value::Object(out));
        }
        Ok(Value::Array(arr))
    }

    fn tree_field(&self, id: u64, n: &Node, f: &'a Field, depth: usize) -> R<Value> {
        let (name, kind, parent, ppath, exp_id) = match n {
            Node::Folder { ns, project, path } => {
                let (up, last) = match path.rsplit_once('/') {
                    Some((up, last)) => (Some(up), last),
                    None => (None, path.as_str()),
                };
                let parent = up.map(|u| {
                    Node::Folder {
                        ns: ns.clone(),
                        project: project.clone(),
                        path: u.to_string(),
                    }
                    .id()
                    .to_string()
                });
                (last.to_string(), "FOLDER", parent, path.clone(), None)
            }
            Node::Experiment { ns, project, name } => {
                let e = experiment_key(ns, project, name);
                let folder = self.app.catalog.folder_of(&e).filter(|f| !f.is_empty());
                let display = crate::api::display_name(name, folder.as_deref());
                let parent = folder.as_ref().map(|fo| {
                    Node::Folder {
                        ns: ns.clone(),
                        project: project.clone(),
                        path: fo.clone(),
                    }
                    .id()
                    .to_string()
                });
                let ppath = match &folder {
                    Some(fo) => format!("{fo}/{display}"),
                    None => display.clone(),
                };
                (display, "EXPERIMENT", parent, ppath, Some(id.to_string()))
            }
            _ => return Err(GqlError::new("not a node of a project tree")),
        };
        let v = match f.name.as_str() {
            "id" => json!(id.to_string()),
            "name" => json!(name),
            "type" => json!(kind),
            "parentId" => json!(parent),
            "pPath" => json!(ppath),
            "experimentId" => json!(exp_id),
            "__typename" => json!("Node"),
            "children" => {
                if depth == 0 {
                    return Ok(json!([]));
                }
                let kids = match n {
                    Node::Folder { ns, project, .. } => {
                        self.children(ns, project, Some(&id.to_string()))?
                    }
                    _ => Vec::new(),
                };
                return self.tree(&kids, f, depth - 1);
            }
            other => return Err(unsupported("Node", other)),
        };
        Self::leaf(f, v)
    }
}

fn unsupported(ty: &str, field: &str) -> GqlError {
    GqlError::new(format!("unsupported field {ty}.{field}"))
}

/// `*` any run of characters, `?` one; everything else literal. No pattern matches all.
fn wildcard(pattern: &str, s: &str) -> bool {
    if pattern.is_empty() {
        return true;
    }
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = s.chars().collect();
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}
