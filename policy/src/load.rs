//! Loading the policy directory: reads the four YAML files, deserializes every item on its
//! own, checks cross-references, and reports every problem at once as
//! `file:line:column: message`, pointing at the offending node.
//!
//! What the loader accepts is bounded before and while parsing, so that no file — however
//! large, deep or broken — can exhaust the stack, the memory or the log of the hub that
//! reloads it: [`MAX_FILE_BYTES`] per file, [`MAX_DEPTH`] levels of nesting,
//! [`MAX_ID_CHARS`] per id, and [`MAX_ERRORS`] errors reported in full (the rest are
//! counted). Every check is linear in the size of the files.

use std::collections::{BinaryHeap, HashMap, HashSet};
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use crate::model::{Agency, Approval, Grant, InputKind, InputSpec, Rate, Service, Subscription};
use crate::yaml::{self, Node, Step};

/// File names inside a policy directory.
pub const AGENCIES_FILE: &str = "agencies.yaml";
/// The service catalog.
pub const SERVICES_FILE: &str = "services.yaml";
/// Grants of services to agencies.
pub const GRANTS_FILE: &str = "grants.yaml";
/// Event subscriptions (optional file).
pub const SUBSCRIPTIONS_FILE: &str = "subscriptions.yaml";

/// Largest policy file the loader reads: 4 MiB, several hundred times the shipped files
/// (the whole national policy is about 15 KB) and far above any real policy. A larger
/// file is refused before it is read into memory.
pub const MAX_FILE_BYTES: usize = 4 * 1024 * 1024;
/// Deepest nesting of lists and mappings in a policy file; the shipped files need 5.
pub const MAX_DEPTH: usize = 32;
/// Longest id, in characters: agency, service, national service id, provider, operation,
/// input, output and field names, purposes, event types and certificate common names.
pub const MAX_ID_CHARS: usize = 128;
/// How many errors are reported in full (the first ones by file, line and column); the
/// others are only counted ("… and N more").
pub const MAX_ERRORS: usize = 50;
/// Longest error message, in characters; longer ones (quoting a huge value) are clipped.
const MAX_MESSAGE_CHARS: usize = 600;
/// How many names a message lists (e.g. a service's outputs) before "… and N more".
const MAX_LISTED: usize = 20;

/// One problem in a policy file, positioned at the offending node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    /// The file, as the directory path given to the loader joined with the file name.
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// A sentence saying what is wrong.
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.message
        )
    }
}

impl std::error::Error for PolicyError {}

/// Every problem found while loading a policy; never empty. At most [`MAX_ERRORS`] are
/// kept (the first by file, line and column); the others are counted in `omitted`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyErrors {
    /// The errors kept, in file then line then column order.
    pub errors: Vec<PolicyError>,
    /// How many more were found and not kept.
    pub omitted: usize,
}

impl PolicyErrors {
    /// The errors kept, in file then line order.
    pub fn iter(&self) -> std::slice::Iter<'_, PolicyError> {
        self.errors.iter()
    }

    /// How many problems were found, kept or not.
    pub fn len(&self) -> usize {
        self.errors.len() + self.omitted
    }

    /// Always false for errors returned by the loader.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// One line for a log: the first error and how many others there are.
    pub fn summary(&self) -> String {
        let Some(first) = self.errors.first() else {
            return "no errors".to_owned();
        };
        match self.len() - 1 {
            0 => first.to_string(),
            n => format!("{first} (and {n} more)"),
        }
    }
}

impl From<PolicyError> for PolicyErrors {
    fn from(e: PolicyError) -> Self {
        PolicyErrors {
            errors: vec![e],
            omitted: 0,
        }
    }
}

impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        if self.omitted > 0 {
            write!(
                f,
                "\n… and {} more errors (only the first {MAX_ERRORS} are listed; fix these and check again)",
                self.omitted
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for PolicyErrors {}

impl<'a> IntoIterator for &'a PolicyErrors {
    type Item = &'a PolicyError;
    type IntoIter = std::slice::Iter<'a, PolicyError>;
    fn into_iter(self) -> Self::IntoIter {
        self.errors.iter()
    }
}

/// The first [`MAX_ERRORS`] errors by (file, line, column, discovery order), and a count
/// of the rest: memory stays bounded however many errors a file holds.
#[derive(Default)]
struct Collected {
    kept: BinaryHeap<Ranked>,
    omitted: usize,
    found: usize,
}

/// An error with the key it is reported in order of.
struct Ranked {
    key: (usize, usize, usize, usize),
    error: PolicyError,
}

impl PartialEq for Ranked {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}
impl Eq for Ranked {}
impl PartialOrd for Ranked {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Ranked {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key.cmp(&other.key)
    }
}

impl Collected {
    fn push(&mut self, mut error: PolicyError) {
        let order = [
            AGENCIES_FILE,
            SERVICES_FILE,
            GRANTS_FILE,
            SUBSCRIPTIONS_FILE,
        ]
        .iter()
        .position(|n| error.file.file_name().is_some_and(|x| x == *n))
        .unwrap_or(usize::MAX);
        let key = (order, error.line, error.column, self.found);
        self.found += 1;
        if self.kept.len() == MAX_ERRORS {
            if self.kept.peek().is_some_and(|last| last.key < key) {
                self.omitted += 1;
                return;
            }
            self.kept.pop();
            self.omitted += 1;
        }
        error.message = one_line(&clip(&error.message, MAX_MESSAGE_CHARS));
        self.kept.push(Ranked { key, error });
    }

    fn is_empty(&self) -> bool {
        self.found == 0
    }

    fn into_errors(self) -> PolicyErrors {
        PolicyErrors {
            errors: self
                .kept
                .into_sorted_vec()
                .into_iter()
                .map(|r| r.error)
                .collect(),
            omitted: self.omitted,
        }
    }
}

/// `s` cut to at most `max` characters, ending in `…` when cut.
fn clip(s: &str, max: usize) -> String {
    if s.char_indices().nth(max).is_none() {
        return s.to_owned();
    }
    // More than `max` characters: keep `max - 1` and the ellipsis.
    let cut = s
        .char_indices()
        .nth(max.saturating_sub(1))
        .map_or(0, |(i, _)| i);
    format!("{}…", &s[..cut])
}

/// `s` with control characters (a newline in a quoted key, ...) written as escapes, so
/// that every error is one line.
fn one_line(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_owned();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Names joined by `, `, at most [`MAX_LISTED`] of them, each clipped to an id's length.
fn listed<'a>(names: impl ExactSizeIterator<Item = &'a str>) -> String {
    let total = names.len();
    let mut out: Vec<String> = names
        .take(MAX_LISTED)
        .map(|n| clip(n, MAX_ID_CHARS))
        .collect();
    if total > MAX_LISTED {
        out.push(format!("… and {} more", total - MAX_LISTED));
    }
    out.join(", ")
}

/// The validated content of a policy directory, before compilation into a `Policy`.
#[derive(Debug, Clone, Default)]
pub struct PolicySource {
    /// `agencies.yaml`.
    pub agencies: Vec<Agency>,
    /// `services.yaml`.
    pub services: Vec<Service>,
    /// `grants.yaml`.
    pub grants: Vec<Grant>,
    /// `subscriptions.yaml` (empty when the file is absent).
    pub subscriptions: Vec<Subscription>,
}

/// Reads and validates the policy directory `dir`.
pub fn load_dir(dir: &Path) -> Result<PolicySource, PolicyErrors> {
    let read = |name: &str, optional: bool| -> Result<Option<String>, PolicyError> {
        let path = dir.join(name);
        match read_bounded(&path) {
            Ok(s) => Ok(Some(s)),
            Err(ReadError::Io(e)) if optional && e.kind() == std::io::ErrorKind::NotFound => {
                Ok(None)
            }
            Err(e) => {
                let (line, column, message) = e.describe();
                Err(PolicyError {
                    file: path,
                    line,
                    column,
                    message,
                })
            }
        }
    };
    let mut io_errors = Vec::new();
    let mut texts: [Option<String>; 4] = Default::default();
    for (slot, (name, optional)) in texts.iter_mut().zip([
        (AGENCIES_FILE, false),
        (SERVICES_FILE, false),
        (GRANTS_FILE, false),
        (SUBSCRIPTIONS_FILE, true),
    ]) {
        match read(name, optional) {
            Ok(t) => *slot = t,
            Err(e) => io_errors.push(e),
        }
    }
    let [a, s, g, sub] = texts;
    let result = load_sources(
        dir,
        Sources {
            agencies: a.as_deref(),
            services: s.as_deref(),
            grants: g.as_deref(),
            subscriptions: sub.as_deref(),
        },
    );
    if io_errors.is_empty() {
        return result;
    }
    let mut all = Collected::default();
    for e in io_errors {
        all.push(e);
    }
    if let Err(more) = result {
        for e in more.errors {
            all.push(e);
        }
        all.omitted += more.omitted;
    }
    Err(all.into_errors())
}

/// Why a policy file could not be read.
enum ReadError {
    Io(std::io::Error),
    /// Larger than [`MAX_FILE_BYTES`]; the size when known.
    TooBig(Option<u64>),
    /// Not UTF-8 from this byte offset on; the text before it.
    NotUtf8 {
        valid: String,
    },
}

impl ReadError {
    /// Line, column and sentence for the error.
    fn describe(&self) -> (usize, usize, String) {
        match self {
            ReadError::Io(e) => (1, 1, format!("cannot read the file: {e}")),
            ReadError::TooBig(size) => (1, 1, too_big(*size)),
            ReadError::NotUtf8 { valid } => {
                let line = valid.matches('\n').count() + 1;
                let column = valid.rsplit('\n').next().unwrap_or("").chars().count() + 1;
                (
                    line,
                    column,
                    "the file is not UTF-8 text from here on; save it as UTF-8".to_owned(),
                )
            }
        }
    }
}

/// The message for a file over [`MAX_FILE_BYTES`].
fn too_big(size: Option<u64>) -> String {
    let size = size.map_or_else(|| "larger than that".to_owned(), |n| format!("{n} bytes"));
    format!(
        "the file is {size}; a policy file may be at most 4 MiB ({MAX_FILE_BYTES} bytes), far \
         more than any real policy needs, so look for data pasted into it by mistake"
    )
}

/// Reads a file of at most [`MAX_FILE_BYTES`] as UTF-8, never holding more than that in
/// memory (a file that grows while it is read, or a device, is cut off and refused).
fn read_bounded(path: &Path) -> Result<String, ReadError> {
    let file = std::fs::File::open(path).map_err(ReadError::Io)?;
    let meta = file.metadata().map_err(ReadError::Io)?;
    if meta.is_dir() {
        return Err(ReadError::Io(std::io::Error::other(
            "it is a directory, not a file",
        )));
    }
    if meta.len() > MAX_FILE_BYTES as u64 {
        return Err(ReadError::TooBig(Some(meta.len())));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_FILE_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(ReadError::Io)?;
    if bytes.len() > MAX_FILE_BYTES {
        return Err(ReadError::TooBig(None));
    }
    String::from_utf8(bytes).map_err(|e| {
        let valid_up_to = e.utf8_error().valid_up_to();
        let mut bytes = e.into_bytes();
        bytes.truncate(valid_up_to);
        ReadError::NotUtf8 {
            valid: String::from_utf8(bytes).unwrap_or_default(),
        }
    })
}

/// The text of the four policy files; `None` means the file is absent (an error except
/// for subscriptions, which then default to none).
#[derive(Debug, Clone, Copy, Default)]
pub struct Sources<'a> {
    /// Text of `agencies.yaml`.
    pub agencies: Option<&'a str>,
    /// Text of `services.yaml`.
    pub services: Option<&'a str>,
    /// Text of `grants.yaml`.
    pub grants: Option<&'a str>,
    /// Text of `subscriptions.yaml`.
    pub subscriptions: Option<&'a str>,
}

/// Validates policy text; errors name files as `dir.join(file name)`. Missing required
/// sources are expected to have been reported by the caller (see [`load_dir`]).
pub fn load_sources(dir: &Path, src: Sources<'_>) -> Result<PolicySource, PolicyErrors> {
    let mut cx = Checker::default();
    let agencies = cx.file::<Agency>(dir, AGENCIES_FILE, "agencies", src.agencies);
    let services = cx.file::<Service>(dir, SERVICES_FILE, "services", src.services);
    let grants = cx.file::<Grant>(dir, GRANTS_FILE, "grants", src.grants);
    let subs = cx.file::<Subscription>(dir, SUBSCRIPTIONS_FILE, "subscriptions", src.subscriptions);

    cx.check_agencies(&agencies);
    cx.check_services(&services, &agencies);
    cx.check_grants(&grants, &services, &agencies);
    cx.check_subscriptions(&subs, &agencies);

    if cx.errors.is_empty() {
        Ok(PolicySource {
            agencies: agencies.into_items(),
            services: services.into_items(),
            grants: grants.into_items(),
            subscriptions: subs.into_items(),
        })
    } else {
        // In file, line, column order; stable among errors on the same node.
        Err(cx.errors.into_errors())
    }
}

/// One parsed file: its items (with their index in the list) and positions.
struct Loaded<T> {
    file: PathBuf,
    key: &'static str,
    root: Option<Node>,
    /// Items that deserialized, with their index in the YAML list.
    items: Vec<(usize, T)>,
    /// False when the file could not be parsed at all; cross-references into it are then
    /// not checked, to avoid a cascade of follow-on errors.
    usable: bool,
    /// Ids (or `agency`/`service` names) of items that failed to deserialize.
    broken_ids: HashSet<String>,
}

impl<T> Loaded<T> {
    fn into_items(self) -> Vec<T> {
        self.items.into_iter().map(|(_, t)| t).collect()
    }

    /// The YAML node of the item at `index`.
    fn item_node(&self, index: usize) -> Option<&Node> {
        match &self.root.as_ref()?.get(self.key)?.kind {
            yaml::Kind::Seq(items) => items.get(index),
            _ => None,
        }
    }

    fn item_path<'p>(&self, index: usize, rest: &[Step<'p>]) -> Vec<Step<'p>>
    where
        'static: 'p,
    {
        let mut p = vec![Step::Key(self.key), Step::Index(index)];
        p.extend_from_slice(rest);
        p
    }
}

#[derive(Default)]
struct Checker {
    errors: Collected,
}

impl Checker {
    fn push<T>(&mut self, l: &Loaded<T>, path: &[Step<'_>], message: String) {
        let pos = l.root.as_ref().map(|r| r.pos_of(path)).unwrap_or_default();
        self.errors.push(PolicyError {
            file: l.file.clone(),
            line: pos.line.max(1),
            column: pos.column.max(1),
            message,
        });
    }

    fn at<T>(&mut self, l: &Loaded<T>, index: usize, rest: &[Step<'_>], message: String) {
        let path = l.item_path(index, rest);
        self.push(l, &path, message);
    }

    /// Refuses an id longer than [`MAX_ID_CHARS`]; true when `value` is short enough.
    fn id_ok<T>(
        &mut self,
        l: &Loaded<T>,
        index: usize,
        rest: &[Step<'_>],
        what: &str,
        value: &str,
    ) -> bool {
        if value.len() <= MAX_ID_CHARS {
            return true;
        }
        let n = value.chars().count();
        if n <= MAX_ID_CHARS {
            return true;
        }
        self.at(
            l,
            index,
            rest,
            format!(
                "{what} `{}` is {n} characters long; ids may be at most {MAX_ID_CHARS}",
                clip(value, 40)
            ),
        );
        false
    }

    /// The `id:` of a grant or subscription (what signatures name it by): an id's length,
    /// lowercase letters, digits, `-`, `_` and `.`, unique in its file. True when usable.
    fn item_id_ok<'a, T>(
        &mut self,
        l: &Loaded<T>,
        index: usize,
        seen: &mut HashMap<&'a str, usize>,
        what: &str,
        id: &'a str,
    ) -> bool {
        if !self.id_ok(l, index, &[Step::Key("id")], &format!("{what} id"), id) {
            return false;
        }
        let allowed = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b);
        if id.is_empty() || !id.bytes().all(allowed) {
            self.at(
                l,
                index,
                &[Step::Key("id")],
                format!(
                    "{what} id `{}` must be lowercase letters, digits, `-`, `_` and `.`, e.g. `moe-shahkar`",
                    clip(id, 40)
                ),
            );
            return false;
        }
        if let Some(first) = seen.insert(id, index) {
            let line = l
                .root
                .as_ref()
                .map_or(0, |r| r.pos_of(&l.item_path(first, &[])).line);
            self.at(
                l,
                index,
                &[Step::Key("id")],
                format!("{what} id `{id}` is used twice (first on line {line}); give every {what} its own id"),
            );
            return false;
        }
        true
    }

    /// Checks the length of every id in a list; true when all are short enough.
    fn ids_ok<T>(
        &mut self,
        l: &Loaded<T>,
        index: usize,
        key: &str,
        what: &str,
        values: &[String],
    ) -> bool {
        let mut ok = true;
        for (j, v) in values.iter().enumerate() {
            ok &= self.id_ok(l, index, &[Step::Key(key), Step::Index(j)], what, v);
        }
        ok
    }

    fn file<T: DeserializeOwned>(
        &mut self,
        dir: &Path,
        name: &str,
        key: &'static str,
        text: Option<&str>,
    ) -> Loaded<T> {
        let mut l = Loaded {
            file: dir.join(name),
            key,
            root: None,
            items: Vec::new(),
            usable: text.is_some(),
            broken_ids: HashSet::new(),
        };
        let Some(text) = text else { return l };
        if text.len() > MAX_FILE_BYTES {
            l.usable = false;
            self.errors.push(PolicyError {
                file: l.file.clone(),
                line: 1,
                column: 1,
                message: too_big(Some(text.len() as u64)),
            });
            return l;
        }
        match yaml::parse(text, MAX_DEPTH) {
            Err(e) => {
                l.usable = false;
                self.errors.push(PolicyError {
                    file: l.file.clone(),
                    line: e.pos.line.max(1),
                    column: e.pos.column.max(1),
                    message: e.message,
                });
                return l;
            }
            Ok(root) => l.root = root,
        }
        let Some(root) = l.root.take() else {
            return l; // empty file: no items
        };
        let list = match &root.kind {
            yaml::Kind::Map(entries) => {
                for (k, _) in entries {
                    if k.as_str() != Some(key) {
                        self.errors.push(PolicyError {
                            file: l.file.clone(),
                            line: k.pos.line,
                            column: k.pos.column,
                            message: format!(
                                "unknown top-level key `{}`; this file has only `{key}:`",
                                k.as_str().unwrap_or("?")
                            ),
                        });
                    }
                }
                root.get(key)
            }
            _ => None,
        };
        match list.map(|n| &n.kind) {
            Some(yaml::Kind::Seq(items)) => {
                for (i, item) in items.iter().enumerate() {
                    match T::deserialize(item) {
                        Ok(t) => l.items.push((i, t)),
                        Err(e) => {
                            let pos = e.pos.unwrap_or(item.pos);
                            for id_key in ["id", "agency"] {
                                if let Some(id) = item.get(id_key).and_then(Node::as_str) {
                                    l.broken_ids.insert(id.to_owned());
                                }
                            }
                            if let Some(s) = item.get("service").and_then(Node::as_str) {
                                l.broken_ids.insert(s.to_owned());
                            }
                            self.errors.push(PolicyError {
                                file: l.file.clone(),
                                line: pos.line,
                                column: pos.column,
                                message: describe_item(key, item, &explain(&e.message)),
                            });
                        }
                    }
                }
            }
            Some(yaml::Kind::Scalar { value, .. })
                if value.is_empty() || value == "~" || value == "null" => {}
            _ => {
                l.usable = false;
                self.errors.push(PolicyError {
                    file: l.file.clone(),
                    line: root.pos.line.max(1),
                    column: root.pos.column.max(1),
                    message: format!("this file must be a mapping with one key `{key}:` holding a list (lines starting with `- `)"),
                });
            }
        }
        l.root = Some(root);
        l
    }

    fn check_rate<T>(&mut self, l: &Loaded<T>, i: usize, rate: &Option<Rate>, who: &str) {
        if let Some(r) = rate {
            if r.per_second == 0 || r.burst == 0 {
                self.at(
                    l,
                    i,
                    &[Step::Key("rate")],
                    format!("{who}: rate per_second and burst must both be at least 1 (to forbid access, remove the grant instead)"),
                );
            }
        }
    }

    /// A working-group approval must name its body, session and item (R1).
    fn check_approval<T>(&mut self, l: &Loaded<T>, i: usize, a: &Approval, who: &str) {
        let at = |key| [Step::Key("approved"), Step::Key(key)];
        if a.body.trim().is_empty() {
            self.at(
                l,
                i,
                &at("body"),
                format!("{who}: approved.body is empty; name the approving body, e.g. `interoperability-working-group`"),
            );
        }
        if a.session == 0 {
            self.at(
                l,
                i,
                &at("session"),
                format!("{who}: approved.session must be at least 1; write the number of the session that approved it, e.g. 26"),
            );
        }
        if a.item.trim().is_empty() {
            self.at(
                l,
                i,
                &at("item"),
                format!("{who}: approved.item is empty; write the item of the session's resolutions as written there, e.g. \"access resolution, item 3\""),
            );
        }
    }

    fn check_agencies(&mut self, l: &Loaded<Agency>) {
        let mut dataset_ids: HashMap<String, String> = HashMap::new();
        let mut ids: HashMap<&str, usize> = HashMap::new();
        let mut cns: HashMap<&str, &str> = HashMap::new();
        for (i, a) in &l.items {
            let mut ok = self.id_ok(l, *i, &[Step::Key("id")], "agency id", &a.id);
            ok &= self.id_ok(
                l,
                *i,
                &[Step::Key("certificate"), Step::Key("common_name")],
                "certificate common_name",
                &a.certificate.common_name,
            );
            ok &= self.ids_ok(l, *i, "publishes", "event type", &a.publishes);
            if !ok {
                continue; // the length is the problem to fix first
            }
            let who = format!("agency {}", a.id);
            if !is_slug(&a.id) {
                self.at(
                    l,
                    *i,
                    &[Step::Key("id")],
                    format!(
                        "agency id `{}` must be lowercase letters, digits and `-`",
                        a.id
                    ),
                );
            }
            if let Some(first) = ids.insert(&a.id, *i) {
                let line = l
                    .root
                    .as_ref()
                    .map_or(0, |r| r.pos_of(&l.item_path(first, &[])).line);
                self.at(
                    l,
                    *i,
                    &[Step::Key("id")],
                    format!(
                        "agency id `{}` is defined twice (first on line {line})",
                        a.id
                    ),
                );
            }
            if a.certificate.common_name.trim().is_empty() {
                self.at(
                    l,
                    *i,
                    &[Step::Key("certificate"), Step::Key("common_name")],
                    format!(
                        "{who}: certificate common_name is empty; write the subject CN of the agency's client certificate, e.g. `{}.agency.tabadol.ir`",
                        a.id
                    ),
                );
            } else if let Some(other) = cns.insert(&a.certificate.common_name, &a.id) {
                self.at(
                    l,
                    *i,
                    &[Step::Key("certificate"), Step::Key("common_name")],
                    format!(
                        "{who}: certificate common name `{}` is already used by agency {other}",
                        a.certificate.common_name
                    ),
                );
            }
            self.check_rate(l, *i, &a.rate, &who);
            self.check_datasets(l, *i, a, &mut dataset_ids);
            let mut seen = HashSet::new();
            for (j, ev) in a.publishes.iter().enumerate() {
                if !seen.insert(ev) {
                    self.at(
                        l,
                        *i,
                        &[Step::Key("publishes"), Step::Index(j)],
                        format!("{who}: event type `{ev}` is listed twice"),
                    );
                }
            }
        }
    }

    fn check_services(&mut self, l: &Loaded<Service>, agencies: &Loaded<Agency>) {
        let agency_ids = agency_ids(agencies);
        let mut ids: HashMap<&str, usize> = HashMap::new();
        let mut nsids: HashMap<&str, &str> = HashMap::new();
        for (i, s) in &l.items {
            let i = *i;
            let mut ok = self.id_ok(l, i, &[Step::Key("id")], "service id", &s.id);
            ok &= self.id_ok(
                l,
                i,
                &[Step::Key("national_service_id")],
                "national_service_id",
                &s.national_service_id,
            );
            ok &= self.id_ok(l, i, &[Step::Key("provider")], "provider", &s.provider);
            ok &= self.id_ok(l, i, &[Step::Key("operation")], "operation", &s.operation);
            for (j, inp) in s.inputs.iter().enumerate() {
                ok &= self.id_ok(
                    l,
                    i,
                    &[Step::Key("inputs"), Step::Index(j), Step::Key("name")],
                    "input name",
                    &inp.name,
                );
            }
            for (g, group) in s.one_of.iter().enumerate() {
                for (j, name) in group.iter().enumerate() {
                    ok &= self.id_ok(
                        l,
                        i,
                        &[Step::Key("one_of"), Step::Index(g), Step::Index(j)],
                        "one_of input",
                        name,
                    );
                }
            }
            ok &= self.ids_ok(l, i, "outputs", "output", &s.outputs);
            if !ok {
                continue;
            }
            let who = format!("service {}", s.id);
            if let Some(first) = ids.insert(&s.id, i) {
                let line = l
                    .root
                    .as_ref()
                    .map_or(0, |r| r.pos_of(&l.item_path(first, &[])).line);
                self.at(
                    l,
                    i,
                    &[Step::Key("id")],
                    format!(
                        "service id `{}` is defined twice (first on line {line})",
                        s.id
                    ),
                );
            }
            if s.national_service_id.trim().is_empty() {
                self.at(l, i, &[Step::Key("national_service_id")], format!("{who}: national_service_id is empty; every service needs its catalog id (R9)"));
            } else if let Some(other) = nsids.insert(&s.national_service_id, &s.id) {
                self.at(
                    l,
                    i,
                    &[Step::Key("national_service_id")],
                    format!(
                        "{who}: national service id `{}` is already used by service {other}",
                        s.national_service_id
                    ),
                );
            }
            if agencies.usable && !has_agency(agencies, &agency_ids, &s.provider) {
                self.at(
                    l,
                    i,
                    &[Step::Key("provider")],
                    format!(
                        "{who}: provider `{}` is not an agency in agencies.yaml",
                        s.provider
                    ),
                );
            }
            let mut names: HashMap<&str, &InputSpec> = HashMap::new();
            for (j, inp) in s.inputs.iter().enumerate() {
                if names.contains_key(inp.name.as_str()) {
                    self.at(
                        l,
                        i,
                        &[Step::Key("inputs"), Step::Index(j), Step::Key("name")],
                        format!("{who}: input `{}` is listed twice", inp.name),
                    );
                } else {
                    names.insert(&inp.name, inp);
                }
            }
            for (g, group) in s.one_of.iter().enumerate() {
                if group.len() < 2 {
                    self.at(
                        l,
                        i,
                        &[Step::Key("one_of"), Step::Index(g)],
                        format!("{who}: a one_of group needs at least two inputs"),
                    );
                }
                for (j, name) in group.iter().enumerate() {
                    let path = [Step::Key("one_of"), Step::Index(g), Step::Index(j)];
                    match names.get(name.as_str()) {
                        None => self.at(l, i, &path, format!(
                            "{who}: one_of names `{name}`, which is not an input (inputs: {})",
                            listed(s.inputs.iter().map(|x| x.name.as_str()))
                        )),
                        Some(x) if x.required => self.at(l, i, &path, format!(
                            "{who}: input `{name}` is in a one_of group, so it cannot also be required: true"
                        )),
                        Some(_) => {}
                    }
                }
            }
            if s.outputs.is_empty() {
                self.at(
                    l,
                    i,
                    &[Step::Key("outputs")],
                    format!("{who}: list at least one output"),
                );
            }
            let mut outs = HashSet::new();
            for (j, o) in s.outputs.iter().enumerate() {
                if !outs.insert(o) {
                    self.at(
                        l,
                        i,
                        &[Step::Key("outputs"), Step::Index(j)],
                        format!("{who}: output `{o}` is listed twice"),
                    );
                }
            }
            if let Some(item) = l.item_node(i) {
                for problem in crate::http_mapping::check(s, item) {
                    self.errors.push(PolicyError {
                        file: l.file.clone(),
                        line: problem.pos.line.max(1),
                        column: problem.pos.column.max(1),
                        message: problem.message,
                    });
                }
            }
            for (j, w) in s.maintenance.iter().enumerate() {
                if w.from >= w.until {
                    self.at(
                        l,
                        i,
                        &[Step::Key("maintenance"), Step::Index(j), Step::Key("until")],
                        format!(
                            "{who}: maintenance window ends ({}) before it starts ({})",
                            w.until, w.from
                        ),
                    );
                }
            }
        }
    }

    fn check_grants(
        &mut self,
        l: &Loaded<Grant>,
        services: &Loaded<Service>,
        agencies: &Loaded<Agency>,
    ) {
        let agency_ids = agency_ids(agencies);
        // The first service of each id, with its outputs as a set.
        let mut catalog: HashMap<&str, (&Service, HashSet<&str>)> = HashMap::new();
        for (_, s) in &services.items {
            catalog
                .entry(&s.id)
                .or_insert_with(|| (s, s.outputs.iter().map(String::as_str).collect()));
        }
        let mut seen: HashMap<(&str, &str), usize> = HashMap::new();
        let mut item_ids: HashMap<&str, usize> = HashMap::new();
        for (i, g) in &l.items {
            let i = *i;
            let mut ok = self.item_id_ok(l, i, &mut item_ids, "grant", &g.id);
            ok &= self.id_ok(l, i, &[Step::Key("agency")], "agency", &g.agency);
            ok &= self.id_ok(l, i, &[Step::Key("service")], "service", &g.service);
            ok &= self.ids_ok(l, i, "fields", "field", &g.fields);
            ok &= self.ids_ok(l, i, "purposes", "purpose", &g.purposes);
            if !ok {
                continue;
            }
            let who = format!("grant {} → {}", g.agency, g.service);
            if agencies.usable && !has_agency(agencies, &agency_ids, &g.agency) {
                self.at(
                    l,
                    i,
                    &[Step::Key("agency")],
                    format!(
                        "{who}: agency `{}` is not defined in agencies.yaml",
                        g.agency
                    ),
                );
            }
            match catalog.get(g.service.as_str()) {
                None if services.usable && !services.broken_ids.contains(&g.service) => {
                    self.at(
                        l,
                        i,
                        &[Step::Key("service")],
                        format!(
                            "{who}: service `{}` is not in the catalog (services.yaml)",
                            g.service
                        ),
                    );
                }
                None => {}
                Some((s, outputs)) => {
                    for (j, f) in g.fields.iter().enumerate() {
                        if !outputs.contains(f.as_str()) {
                            self.at(
                                l,
                                i,
                                &[Step::Key("fields"), Step::Index(j)],
                                format!(
                                    "{who}: field `{f}` is not an output of service {} (outputs: {})",
                                    s.id,
                                    listed(s.outputs.iter().map(String::as_str))
                                ),
                            );
                        }
                    }
                }
            }
            if g.fields.is_empty() {
                self.at(
                    l,
                    i,
                    &[Step::Key("fields")],
                    format!("{who}: list the fields the agency may receive (at least one)"),
                );
            }
            let mut fs = HashSet::new();
            for (j, f) in g.fields.iter().enumerate() {
                if !fs.insert(f) {
                    self.at(
                        l,
                        i,
                        &[Step::Key("fields"), Step::Index(j)],
                        format!("{who}: field `{f}` is listed twice"),
                    );
                }
            }
            if g.purposes.is_empty() {
                self.at(
                    l,
                    i,
                    &[Step::Key("purposes")],
                    format!("{who}: list at least one purpose the agency may state"),
                );
            }
            for (j, p) in g.purposes.iter().enumerate() {
                if !is_slug(p) {
                    self.at(
                        l,
                        i,
                        &[Step::Key("purposes"), Step::Index(j)],
                        format!("{who}: purpose `{p}` must be lowercase letters, digits and `-`"),
                    );
                }
            }
            if let Some(first) = seen.insert((&g.agency, &g.service), i) {
                let line = l
                    .root
                    .as_ref()
                    .map_or(0, |r| r.pos_of(&l.item_path(first, &[])).line);
                self.at(l, i, &[], format!("{who}: this agency already has a grant for this service (line {line}); merge them into one"));
            }
            if let (Some(from), Some(until)) = (g.valid_from, g.valid_until) {
                if from > until {
                    self.at(
                        l,
                        i,
                        &[Step::Key("valid_until")],
                        format!("{who}: valid_until {until} is before valid_from {from}"),
                    );
                }
            }
            self.check_rate(l, i, &g.rate, &who);
            self.check_approval(l, i, &g.approved, &who);
            if let Some(r) = &g.request {
                let ok = r.len() <= MAX_ID_CHARS
                    && r.starts_with("sr-")
                    && r.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
                if !ok {
                    self.at(
                        l,
                        i,
                        &[Step::Key("request")],
                        format!("{who}: request `{}` is not a service request id; copy it from `tabadol requests list` (it starts with `sr-`)", clip(r, 40)),
                    );
                }
            }
            if let Some(c) = &g.condition {
                let service = catalog.get(g.service.as_str()).map(|(s, _)| *s);
                self.check_condition(l, i, c, service, agencies, &who);
            }
        }
    }

    /// The datasets an agency publishes (R3): ids well formed and unique across agencies,
    /// readers defined.
    fn check_datasets(
        &mut self,
        l: &Loaded<Agency>,
        i: usize,
        a: &Agency,
        seen: &mut HashMap<String, String>,
    ) {
        let known = agency_ids(l);
        for (j, d) in a.datasets.iter().enumerate() {
            let at = |key| [Step::Key("datasets"), Step::Index(j), Step::Key(key)];
            if !self.id_ok(l, i, &at("id"), "dataset id", &d.id) {
                continue;
            }
            let allowed =
                |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b);
            if d.id.is_empty() || !d.id.bytes().all(allowed) {
                self.at(
                    l,
                    i,
                    &at("id"),
                    format!(
                        "agency {}: dataset id `{}` must be lowercase letters, digits, `-`, `_` and `.`, e.g. `{}.divestment-list`",
                        a.id,
                        clip(&d.id, 40),
                        a.id
                    ),
                );
                continue;
            }
            if let Some(other) = seen.insert(d.id.clone(), a.id.clone()) {
                self.at(
                    l,
                    i,
                    &at("id"),
                    format!(
                        "agency {}: dataset id `{}` is already defined by agency {other}; give every dataset its own id",
                        a.id, d.id
                    ),
                );
            }
            for (k, r) in d.readers.iter().enumerate() {
                if !known.contains(r.as_str()) && !l.broken_ids.contains(r) {
                    self.at(
                        l,
                        i,
                        &[
                            Step::Key("datasets"),
                            Step::Index(j),
                            Step::Key("readers"),
                            Step::Index(k),
                        ],
                        format!(
                            "agency {}: dataset {}: reader `{}` is not an agency in agencies.yaml",
                            a.id,
                            d.id,
                            clip(r, MAX_ID_CHARS)
                        ),
                    );
                }
            }
        }
    }

    /// A grant's condition (R4): the dataset exists, and its key is a required
    /// legal-entity-id input of the service (so every call carries the value it checks).
    fn check_condition(
        &mut self,
        l: &Loaded<Grant>,
        i: usize,
        c: &crate::model::Condition,
        service: Option<&Service>,
        agencies: &Loaded<Agency>,
        who: &str,
    ) {
        let at = |key| [Step::Key("condition"), Step::Key(key)];
        let datasets: Vec<&str> = agencies
            .items
            .iter()
            .flat_map(|(_, a)| a.datasets.iter().map(|d| d.id.as_str()))
            .collect();
        if agencies.usable
            && agencies.broken_ids.is_empty()
            && !datasets.contains(&c.dataset.as_str())
        {
            let known = if datasets.is_empty() {
                "none".to_owned()
            } else {
                listed(datasets.iter().copied())
            };
            self.at(
                l,
                i,
                &at("dataset"),
                format!(
                    "{who}: condition names dataset `{}`, which no agency publishes (datasets: {known})",
                    clip(&c.dataset, MAX_ID_CHARS)
                ),
            );
        }
        let Some(s) = service else { return };
        match s.inputs.iter().find(|x| x.name == c.key) {
            None => self.at(
                l,
                i,
                &at("key"),
                format!(
                    "{who}: condition key `{}` is not an input of service {} (inputs: {})",
                    clip(&c.key, MAX_ID_CHARS),
                    s.id,
                    listed(s.inputs.iter().map(|x| x.name.as_str()))
                ),
            ),
            Some(x) if x.kind != InputKind::LegalEntityId || !x.required => self.at(
                l,
                i,
                &at("key"),
                format!(
                    "{who}: condition key `{}` must be a required legal_entity_id input of service {} (the dataset is keyed by enterprise national id)",
                    c.key, s.id
                ),
            ),
            Some(_) => {}
        }
    }

    fn check_subscriptions(&mut self, l: &Loaded<Subscription>, agencies: &Loaded<Agency>) {
        let published: HashSet<&str> = agencies
            .items
            .iter()
            .flat_map(|(_, a)| a.publishes.iter().map(String::as_str))
            .collect();
        let known = {
            let mut known: Vec<_> = published.iter().copied().collect();
            known.sort_unstable();
            if known.is_empty() {
                "none".to_owned()
            } else {
                listed(known.into_iter())
            }
        };
        let agency_ids = agency_ids(agencies);
        let mut seen: HashMap<&str, usize> = HashMap::new();
        let mut item_ids: HashMap<&str, usize> = HashMap::new();
        for (i, s) in &l.items {
            let i = *i;
            let mut ok = self.item_id_ok(l, i, &mut item_ids, "subscription", &s.id);
            ok &= self.id_ok(l, i, &[Step::Key("agency")], "agency", &s.agency);
            ok &= self.ids_ok(l, i, "event_types", "event type", &s.event_types);
            if !ok {
                continue;
            }
            let who = format!("subscription of {}", s.agency);
            if agencies.usable && !has_agency(agencies, &agency_ids, &s.agency) {
                self.at(
                    l,
                    i,
                    &[Step::Key("agency")],
                    format!(
                        "{who}: agency `{}` is not defined in agencies.yaml",
                        s.agency
                    ),
                );
            }
            if let Some(first) = seen.insert(&s.agency, i) {
                let line = l
                    .root
                    .as_ref()
                    .map_or(0, |r| r.pos_of(&l.item_path(first, &[])).line);
                self.at(l, i, &[Step::Key("agency")], format!("{who}: this agency already has a subscription (line {line}); merge them into one"));
            }
            self.check_approval(l, i, &s.approved, &who);
            if s.event_types.is_empty() {
                self.at(
                    l,
                    i,
                    &[Step::Key("event_types")],
                    format!("{who}: list at least one event type"),
                );
            }
            for (j, ev) in s.event_types.iter().enumerate() {
                if agencies.usable
                    && agencies.broken_ids.is_empty()
                    && !published.contains(ev.as_str())
                {
                    self.at(
                        l,
                        i,
                        &[Step::Key("event_types"), Step::Index(j)],
                        format!(
                            "{who}: no agency publishes event type `{ev}` (published: {known})"
                        ),
                    );
                }
            }
        }
    }
}

/// The ids of the agencies that loaded.
fn agency_ids(agencies: &Loaded<Agency>) -> HashSet<&str> {
    agencies.items.iter().map(|(_, a)| a.id.as_str()).collect()
}

/// Whether `id` is an agency, counting agencies that failed to load (so that one broken
/// agency does not make every reference to it an error too).
fn has_agency(agencies: &Loaded<Agency>, ids: &HashSet<&str>, id: &str) -> bool {
    ids.contains(id) || agencies.broken_ids.contains(id)
}

fn is_slug(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Prefixes a deserialization error with the item it belongs to, when it can be named.
fn describe_item(key: &str, item: &Node, message: &str) -> String {
    let s = |k: &str| {
        item.get(k)
            .and_then(Node::as_str)
            .map(|v| clip(v, MAX_ID_CHARS))
    };
    let who = match key {
        "agencies" => s("id").map(|id| format!("agency {id}")),
        "services" => s("id").map(|id| format!("service {id}")),
        "grants" => match (s("agency"), s("service")) {
            (Some(a), Some(sv)) => Some(format!("grant {a} → {sv}")),
            _ => None,
        },
        "subscriptions" => s("agency").map(|a| format!("subscription of {a}")),
        _ => None,
    };
    match who {
        Some(w) => format!("{w}: {message}"),
        None => message.to_owned(),
    }
}

/// Turns serde's wording into advice where it helps.
fn explain(message: &str) -> String {
    if message == "missing field `approved`" {
        return "missing `approved:`; every grant and subscription must cite its working-group approval as { body, session, date, item } (R1)".to_owned();
    }
    if message == "missing field `id`" {
        return "missing `id:`; give every grant and subscription a stable id, unique in its file (e.g. `id: moe-shahkar`): signatures name it by its id".to_owned();
    }
    if let Some(rest) = message.strip_prefix("unknown variant ") {
        return format!("unknown value {rest}");
    }
    message.to_owned()
}
