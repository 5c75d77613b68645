//! Node ids of the ml-dash server API, and the tree of nodes they name.
//!
//! The ml-dash client addresses everything by id: namespaces, projects, folders (of a project,
//! or inside an experiment), experiments and files. Ids here are derived from names: a 19-digit
//! number (as the client expects; sent as a JSON string) from the BLAKE3 hash of the node's kind
//! and names, or of the version id for a file. The same node always gets the same id, in every
//! process and after a restart, so the catalog is derived data: what the store holds (versions,
//! and experiments with a journal) is found again by `refresh`. Folders that hold nothing yet
//! exist only as registrations, kept in `<root>/serve-nodes.jsonl` (one JSON line per node, no
//! fsync: losing one costs an empty folder) so they outlive a restart too.
//!
//! An experiment in folders (`ns/project/f1/f2/name`) is stored as experiment `f1.f2.name` (the
//! name `ml-dash import` gives an ml-dash tree's nested experiment), its folder path recorded
//! in its journal.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use ml_dash::{ExperimentKey, Id, ListFilter, Store};
use serde::{Deserialize, Serialize};

/// A node of the tree.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Node {
    Namespace {
        ns: String,
    },
    Project {
        ns: String,
        project: String,
    },
    /// A folder of a project, above experiments: `path` is `f1` or `f1/f2`.
    Folder {
        ns: String,
        project: String,
        path: String,
    },
    /// An experiment (its record and its node share one id). `name` is the stored name
    /// (folders joined with `.`).
    Experiment {
        ns: String,
        project: String,
        name: String,
    },
    /// A folder inside an experiment: `prefix` is a normalized prefix (`/models/best`).
    ExpFolder {
        ns: String,
        project: String,
        name: String,
        prefix: String,
    },
    /// One version of a file.
    Version {
        id: String,
    },
}

impl Node {
    pub fn experiment(exp: &ExperimentKey) -> Node {
        Node::Experiment {
            ns: exp.namespace.clone(),
            project: exp.project.clone(),
            name: exp.experiment.clone(),
        }
    }

    /// The id: 10^18 + (64 bits of BLAKE3 of the kind and names) mod 8·10^18, so always 19
    /// digits and below 2^63.
    pub fn id(&self) -> u64 {
        let text = match self {
            Node::Namespace { ns } => format!("namespace\0{ns}"),
            Node::Project { ns, project } => format!("project\0{ns}\0{project}"),
            Node::Folder { ns, project, path } => format!("folder\0{ns}\0{project}\0{path}"),
            Node::Experiment { ns, project, name } => {
                format!("experiment\0{ns}\0{project}\0{name}")
            }
            Node::ExpFolder {
                ns,
                project,
                name,
                prefix,
            } => format!("expfolder\0{ns}\0{project}\0{name}\0{prefix}"),
            Node::Version { id } => format!("version\0{id}"),
        };
        let h = blake3::hash(text.as_bytes());
        let mut first = [0u8; 8];
        first.copy_from_slice(&h.as_bytes()[..8]);
        1_000_000_000_000_000_000 + u64::from_le_bytes(first) % 8_000_000_000_000_000_000
    }

    /// The namespace the node belongs to (what a token must allow to write to it).
    pub fn namespace(&self) -> &str {
        match self {
            Node::Namespace { ns }
            | Node::Project { ns, .. }
            | Node::Folder { ns, .. }
            | Node::Experiment { ns, .. }
            | Node::ExpFolder { ns, .. } => ns,
            Node::Version { .. } => "",
        }
    }
}

/// The experiment of a node inside one, and its key.
pub fn experiment_key(ns: &str, project: &str, name: &str) -> ExperimentKey {
    ExperimentKey {
        namespace: ns.to_string(),
        project: project.to_string(),
        experiment: name.to_string(),
    }
}

/// Every node the server knows, by id.
pub struct Catalog {
    nodes: RwLock<HashMap<u64, Node>>,
    /// The folder path of each experiment that sits in project folders.
    folders: RwLock<HashMap<(String, String, String), String>>,
    /// Where registrations are appended.
    file: PathBuf,
    append: Mutex<()>,
    last_refresh: Mutex<Option<Instant>>,
}

/// Lookups that miss refresh from the store at most this often.
const REFRESH_EVERY: Duration = Duration::from_millis(500);

impl Catalog {
    /// The catalog of `store`: registrations read back, then everything the store holds.
    pub fn open(store: &Store) -> ml_dash::Result<Catalog> {
        let file = store.root().join("serve-nodes.jsonl");
        let mut nodes = HashMap::new();
        if let Ok(f) = std::fs::File::open(&file) {
            for line in std::io::BufReader::new(f).lines() {
                let Ok(line) = line else { break };
                // A torn last line (a crash while appending) is skipped.
                if let Ok(n) = serde_json::from_str::<Node>(&line) {
                    nodes.insert(n.id(), n);
                }
            }
        }
        let c = Catalog {
            nodes: RwLock::new(nodes),
            folders: RwLock::new(HashMap::new()),
            file,
            append: Mutex::new(()),
            last_refresh: Mutex::new(None),
        };
        c.refresh(store)?;
        Ok(c)
    }

    fn insert(&self, n: Node) -> (u64, bool) {
        let id = n.id();
        let mut nodes = self.nodes.write().unwrap_or_else(|p| p.into_inner());
        let new = !nodes.contains_key(&id);
        if new {
            nodes.insert(id, n);
        }
        (id, new)
    }

    /// Know `n` (and keep it across restarts); returns its id.
    pub fn register(&self, n: Node) -> u64 {
        let keep = matches!(
            n,
            Node::Folder { .. } | Node::ExpFolder { .. } | Node::Project { .. }
        );
        let line = serde_json::to_string(&n).expect("a node serializes");
        let (id, new) = self.insert(n);
        if new && keep {
            let _g = self.append.lock().unwrap_or_else(|p| p.into_inner());
            let r = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.file)
                .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()));
            if let Err(e) = r {
                eprintln!(
                    "ml-dash serve: cannot record a folder in {}: {e}",
                    self.file.display()
                );
            }
        }
        id
    }

    /// Register an experiment, its project and namespace, and its project folders.
    pub fn register_experiment(&self, exp: &ExperimentKey, folder: Option<&str>) -> u64 {
        self.insert(Node::Namespace {
            ns: exp.namespace.clone(),
        });
        self.register(Node::Project {
            ns: exp.namespace.clone(),
            project: exp.project.clone(),
        });
        if let Some(f) = folder.filter(|f| !f.is_empty()) {
            self.folders
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(
                    (
                        exp.namespace.clone(),
                        exp.project.clone(),
                        exp.experiment.clone(),
                    ),
                    f.to_string(),
                );
            let mut path = String::new();
            for seg in f.split('/') {
                if !path.is_empty() {
                    path.push('/');
                }
                path.push_str(seg);
                self.register(Node::Folder {
                    ns: exp.namespace.clone(),
                    project: exp.project.clone(),
                    path: path.clone(),
                });
            }
        }
        self.insert(Node::experiment(exp)).0
    }

    /// Register a version, its experiment and the folders of its prefix.
    pub fn register_version(&self, r: &ml_dash::FileRecord) -> u64 {
        let exp = experiment_key(&r.namespace, &r.project, &r.experiment);
        self.register_experiment(&exp, None);
        let mut prefix = String::new();
        for seg in r.path.split('/').filter(|s| !s.is_empty()) {
            prefix.push('/');
            prefix.push_str(seg);
            self.insert(Node::ExpFolder {
                ns: r.namespace.clone(),
                project: r.project.clone(),
                name: r.experiment.clone(),
                prefix: prefix.clone(),
            });
        }
        self.insert(Node::Version {
            id: r.id.to_string(),
        })
        .0
    }

    /// The project folders an experiment sits in (`a/b`), if any.
    pub fn folder_of(&self, exp: &ExperimentKey) -> Option<String> {
        self.folders
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(
                exp.namespace.clone(),
                exp.project.clone(),
                exp.experiment.clone(),
            ))
            .cloned()
    }

    pub fn get(&self, id: u64) -> Option<Node> {
        self.nodes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
    }

    /// Look `id` up; on a miss, refresh from the store (at most every half second) and look
    /// again: another process (the CLI) may have written what the id names.
    pub fn resolve(&self, store: &Store, id: u64) -> ml_dash::Result<Option<Node>> {
        if let Some(n) = self.get(id) {
            return Ok(Some(n));
        }
        let due = {
            let last = self.last_refresh.lock().unwrap_or_else(|p| p.into_inner());
            last.is_none_or(|t| t.elapsed() >= REFRESH_EVERY)
        };
        if due {
            self.refresh(store)?;
        }
        Ok(self.get(id))
    }

    /// Learn every live version and every experiment with a journal.
    pub fn refresh(&self, store: &Store) -> ml_dash::Result<()> {
        *self.last_refresh.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        let all = ListFilter {
            all_versions: true,
            ..ListFilter::default()
        };
        for r in store.list(&all)? {
            self.register_version(&r);
        }
        for exp in store.journal_experiments()? {
            let folder = store.journal(&exp)?.info.and_then(|i| i.folder);
            self.register_experiment(&exp, folder.as_deref());
        }
        Ok(())
    }

    /// Every node of one project, sorted (for the tree the client walks).
    pub fn project_nodes(&self, ns: &str, project: &str) -> Vec<(u64, Node)> {
        let nodes = self.nodes.read().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<(u64, Node)> = nodes
            .iter()
            .filter(|(_, n)| match n {
                Node::Folder {
                    ns: a, project: b, ..
                }
                | Node::Experiment {
                    ns: a, project: b, ..
                }
                | Node::ExpFolder {
                    ns: a, project: b, ..
                } => a == ns && b == project,
                _ => false,
            })
            .map(|(id, n)| (*id, n.clone()))
            .collect();
        out.sort_by(|a, b| a.1.cmp(&b.1));
        out
    }

    /// Projects of a namespace (`None`: every namespace), sorted by name.
    pub fn projects(&self, ns: Option<&str>) -> Vec<(String, String)> {
        let nodes = self.nodes.read().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<(String, String)> = nodes
            .values()
            .filter_map(|n| match n {
                Node::Project { ns: a, project } if ns.is_none_or(|ns| ns == a) => {
                    Some((a.clone(), project.clone()))
                }
                _ => None,
            })
            .collect();
        out.sort();
        out
    }

    /// Experiments of a project (`None`: every one), sorted.
    pub fn experiments(&self, ns: Option<&str>, project: Option<&str>) -> Vec<ExperimentKey> {
        let nodes = self.nodes.read().unwrap_or_else(|p| p.into_inner());
        let mut out: BTreeMap<(String, String, String), ()> = BTreeMap::new();
        for n in nodes.values() {
            if let Node::Experiment {
                ns: a,
                project: b,
                name,
            } = n
                && ns.is_none_or(|ns| ns == a)
                && project.is_none_or(|p| p == b)
            {
                out.insert((a.clone(), b.clone(), name.clone()), ());
            }
        }
        out.into_keys()
            .map(|(a, b, c)| experiment_key(&a, &b, &c))
            .collect()
    }
}

/// Parse a node id as sent by a client (a decimal string or number).
pub fn parse_id(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// The version id of a `Version` node.
pub fn version_id(n: &Node) -> Option<Id> {
    match n {
        Node::Version { id } => id.parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_19_digits_stable_and_distinct_per_kind() {
        let a = Node::Project {
            ns: "n".into(),
            project: "p".into(),
        };
        let b = Node::Folder {
            ns: "n".into(),
            project: "p".into(),
            path: "p".into(),
        };
        assert_eq!(a.id(), a.clone().id());
        assert_ne!(a.id(), b.id());
        for n in [a, b] {
            assert_eq!(n.id().to_string().len(), 19);
            assert!(i64::try_from(n.id()).is_ok());
        }
        assert_eq!(
            parse_id("1234567890123456789"),
            Some(1_234_567_890_123_456_789)
        );
        for bad in ["", "-1", "12a", "1 2", "999999999999999999999"] {
            assert_eq!(parse_id(bad), None, "{bad}");
        }
    }
}
