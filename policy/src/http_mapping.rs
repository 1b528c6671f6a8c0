//! The `http:` section of a catalog entry: how the generic adapter (`adapter: http`) calls a
//! provider's HTTP/JSON API — where each input goes (path, query, JSON body), where each output
//! is read (JSON pointer, RFC 6901), list-valued answers, and how the provider's answers map to
//! NOT_FOUND / INVALID_ARGUMENT / UNAVAILABLE — and its validation at `file:line:column`.
//!
//! ```yaml
//! http:
//!   method: POST                      # GET (default) or POST
//!   path: /sso/v1/workshops/{workshop_code}/insurance-lists   # {input} = one whole segment
//!   query: { branch: branch_code }    # query parameter → input
//!   body: { /enterprise/id: enterprise_id }   # JSON pointer in the request body → input
//!   records: /data/insured            # pointer to an array: one record per element
//!   outputs: { full_name: /fullName } # output → pointer inside one record
//!   error_code: /error/code           # pointer to the provider's error-code field
//!   errors:                           # first matching rule decides; 5xx is always UNAVAILABLE
//!     - { status: 404, code: WORKSHOP_NOT_FOUND, outcome: not_found }
//!     - { status: 400, outcome: invalid_argument }
//! ```

use std::collections::{HashMap, HashSet};
use std::fmt;

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use crate::model::Service;
use crate::yaml::{Kind, Node, Pos};

/// How the generic adapter calls one provider operation.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpMapping {
    /// `GET` (default) or `POST`.
    #[serde(default)]
    pub method: HttpMethod,
    /// Path under the provider's base URL; `{input}` stands for one whole path segment and
    /// is percent-encoded.
    pub path: String,
    /// Query parameters: wire name → input name, in the order written.
    #[serde(default)]
    pub query: Pairs,
    /// JSON body (POST only): JSON pointer → input name; values are sent as JSON strings.
    #[serde(default)]
    pub body: Pairs,
    /// Pointer to a JSON array in the answer; each element is one record. Without it the
    /// answer (object) is the one record.
    #[serde(default)]
    pub records: Option<String>,
    /// Output name → JSON pointer inside one record; every output of the service is mapped
    /// exactly once. A missing or null value leaves the field out of that record.
    pub outputs: Pairs,
    /// Pointer to the provider's error-code field (string or number) in an answer.
    #[serde(default)]
    pub error_code: Option<String>,
    /// Rules mapping the provider's answers to outcomes; the first that matches decides.
    #[serde(default)]
    pub errors: Vec<ErrorRule>,
    /// Output → (the provider's value → the value the hub answers); a value not listed is
    /// refused as an unexpected answer.
    #[serde(default)]
    pub values: Pairs<Pairs>,
    /// Outputs holding a Jalali date the provider writes `YYYY-MM-DD`, `YYYYMMDD` or
    /// `YYYY/MM/DD`; the hub answers `YYYY/MM/DD` (and refuses a date that does not exist).
    #[serde(default)]
    pub jalali_dates: Vec<String>,
}

/// A provider's Jalali date in the hub's form `YYYY/MM/DD`, or `None` when it is not one.
pub fn jalali_date(value: &str) -> Option<String> {
    let v = value.trim();
    let spaced;
    let v = if v.len() == 8 && v.bytes().all(|b| b.is_ascii_digit()) {
        spaced = format!("{}/{}/{}", &v[..4], &v[4..6], &v[6..]);
        spaced.as_str()
    } else {
        v
    };
    v.parse::<crate::jalali::JalaliDate>()
        .ok()
        .map(|d| d.to_string())
}

/// The HTTP method of a call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum HttpMethod {
    /// No body; inputs go in the path and query.
    #[default]
    #[serde(rename = "GET")]
    Get,
    /// A JSON body built from `body:`.
    #[serde(rename = "POST")]
    Post,
}

/// One rule: an answer with this status (and error code, when given) means `outcome`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorRule {
    /// HTTP status of the answer, e.g. 404.
    #[serde(default)]
    pub status: Option<u16>,
    /// Value of the `error_code` field, e.g. `POSTCODE_NOT_FOUND`.
    #[serde(default)]
    pub code: Option<String>,
    /// What the hub answers the caller.
    pub outcome: Outcome,
}

/// What a matched provider answer means for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The provider has no record of the subject (gRPC NOT_FOUND).
    NotFound,
    /// The provider refused the inputs (gRPC INVALID_ARGUMENT).
    InvalidArgument,
    /// The provider cannot answer now (gRPC UNAVAILABLE).
    Unavailable,
}

impl ErrorRule {
    /// Whether an answer with `status` and `code` matches this rule.
    pub fn matches(&self, status: u16, code: Option<&str>) -> bool {
        self.status.is_none_or(|s| s == status)
            && self
                .code
                .as_deref()
                .is_none_or(|c| code.is_some_and(|x| x == c))
    }
}

/// A YAML mapping kept as written: its pairs in order, duplicates included (so that a key
/// written twice is reported, not silently replaced).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pairs<T = String>(pub Vec<(String, T)>);

impl<T> Default for Pairs<T> {
    fn default() -> Self {
        Pairs(Vec::new())
    }
}

impl<T> Pairs<T> {
    /// The value of the first pair with key `key`.
    pub fn value(&self, key: &str) -> Option<&T> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The pairs in order.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &T)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }
}

impl Pairs {
    /// The value of the first pair with key `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The pairs in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Pairs<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Pairs<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Pairs<T>, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = m.next_entry::<String, T>()? {
                    out.push((k, v));
                }
                Ok(Pairs(out))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// The segments of a path template: literal text, or the input a `{name}` segment stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment<'a> {
    /// Sent as written (percent-encoded).
    Literal(&'a str),
    /// Replaced by the value of this input.
    Input(&'a str),
}

/// Splits a path template into segments, or says what is wrong with it.
pub fn path_segments(path: &str) -> Result<Vec<Segment<'_>>, String> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err(format!(
            "path `{path}` must start with `/`, e.g. /api/v1/persons/{{national_code}}"
        ));
    };
    let mut out = Vec::new();
    for seg in rest.split('/') {
        if seg.is_empty() {
            return Err(format!(
                "path `{path}` has an empty segment (`//` or a trailing `/`)"
            ));
        }
        match seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            Some(name) if !name.is_empty() && !name.contains(['{', '}']) => {
                out.push(Segment::Input(name))
            }
            _ if seg.contains(['{', '}', '?', '#', '%']) => {
                return Err(format!(
                    "path segment `{seg}` is not allowed: an input must be a whole segment \
                     written `{{name}}`, and `?`, `#` and `%` belong in `query:`"
                ))
            }
            _ => out.push(Segment::Literal(seg)),
        }
    }
    Ok(out)
}

/// The reference tokens of a JSON pointer (RFC 6901), unescaped; `""` is the whole document.
pub fn pointer_tokens(pointer: &str) -> Result<Vec<String>, String> {
    if pointer.is_empty() {
        return Ok(Vec::new());
    }
    let Some(rest) = pointer.strip_prefix('/') else {
        return Err(format!(
            "`{pointer}` is not a JSON pointer: it must be empty or start with `/`, e.g. /data/name"
        ));
    };
    rest.split('/')
        .map(|t| {
            let mut out = String::with_capacity(t.len());
            let mut chars = t.chars();
            while let Some(c) = chars.next() {
                match c {
                    '~' => match chars.next() {
                        Some('0') => out.push('~'),
                        Some('1') => out.push('/'),
                        _ => {
                            return Err(format!(
                                "`{pointer}` is not a JSON pointer: `~` must be followed by 0 \
                                 (for ~) or 1 (for /)"
                            ))
                        }
                    },
                    c => out.push(c),
                }
            }
            Ok(out)
        })
        .collect()
}

/// One problem in an `http:` section: where, and a sentence saying what to fix.
pub(crate) struct MappingProblem {
    pub pos: Pos,
    pub message: String,
}

/// The node of the `i`th pair of mapping `map` (its key when `key`, else its value).
fn pair_pos(map: Option<&Node>, i: usize, key: bool, fallback: Pos) -> Pos {
    match map.map(|m| &m.kind) {
        Some(Kind::Map(entries)) => entries
            .get(i)
            .map(|(k, v)| if key { k.pos } else { v.pos })
            .unwrap_or(fallback),
        _ => fallback,
    }
}

/// Checks the `http:` section of `service` (deserialized from `item`) against the service's
/// inputs and outputs; `adapter: http` needs one and other adapters take none.
pub(crate) fn check(service: &Service, item: &Node) -> Vec<MappingProblem> {
    let mut out = Vec::new();
    let who = format!("service {}", service.id);
    let mut push = |pos: Pos, message: String| out.push(MappingProblem { pos, message });
    let generic = service.adapter == crate::model::AdapterKind::Http;
    let Some(m) = service.http.as_deref() else {
        if generic {
            let pos = item.get("adapter").map_or(item.pos, |n| n.pos);
            push(
                pos,
                format!(
                    "{who}: adapter `http` needs an `http:` section saying how to call the \
                     provider (path, query/body, outputs, errors); see policy/national/README.md"
                ),
            );
        }
        return out;
    };
    let node = item.get("http");
    let at = |key: &str| {
        node.and_then(|n| n.get(key))
            .map_or_else(|| node.map_or(item.pos, |n| n.pos), |n| n.pos)
    };
    if !generic {
        push(
            at("path"),
            format!(
                "{who}: an `http:` section is only read by `adapter: http`; this service uses \
                 adapter `{}` — remove the section or write `adapter: http`",
                service.adapter.as_str()
            ),
        );
        return out;
    }
    let inputs: HashSet<&str> = service.input_names().collect();
    let input_list = service.input_names().collect::<Vec<_>>().join(", ");
    let mut used: HashSet<&str> = HashSet::new();
    let unknown_input = |pos: Pos, name: &str, place: &str, push: &mut dyn FnMut(Pos, String)| {
        if inputs.contains(name) {
            true
        } else {
            push(
                pos,
                format!(
                    "{who}: {place} uses `{name}`, which is not an input of this service \
                     (inputs: {input_list})"
                ),
            );
            false
        }
    };

    // Path.
    match path_segments(&m.path) {
        Err(e) => push(at("path"), format!("{who}: {e}")),
        Ok(segments) => {
            for s in segments {
                if let Segment::Input(name) = s {
                    if unknown_input(at("path"), name, "path", &mut push) {
                        used.insert(name);
                    }
                }
            }
        }
    }
    // Query.
    let query = node.and_then(|n| n.get("query"));
    let mut names = HashSet::new();
    for (i, (wire, input)) in m.query.iter().enumerate() {
        let pos = pair_pos(query, i, false, at("query"));
        if !names.insert(wire) {
            push(
                pair_pos(query, i, true, at("query")),
                format!("{who}: query parameter `{wire}` is written twice"),
            );
        }
        if unknown_input(pos, input, &format!("query parameter `{wire}`"), &mut push) {
            used.insert(input);
        }
    }
    // Body.
    let body = node.and_then(|n| n.get("body"));
    if m.method == HttpMethod::Get && !m.body.0.is_empty() {
        push(
            at("body"),
            format!("{who}: a GET request has no body; write `method: POST` or move the inputs to `query:`"),
        );
    }
    let mut paths: Vec<(Vec<String>, usize)> = Vec::new();
    for (i, (pointer, input)) in m.body.iter().enumerate() {
        let key_pos = pair_pos(body, i, true, at("body"));
        match pointer_tokens(pointer) {
            Err(e) => push(key_pos, format!("{who}: body {e}")),
            Ok(t) if t.is_empty() => push(
                key_pos,
                format!("{who}: body pointer `` (the whole body) cannot hold one input; write e.g. /nationalCode"),
            ),
            Ok(t) => {
                if let Some((_, j)) = paths.iter().find(|(p, _)| {
                    p.len() <= t.len() && t[..p.len()] == p[..]
                        || t.len() <= p.len() && p[..t.len()] == t[..]
                }) {
                    let other = &m.body.0[*j].0;
                    push(
                        key_pos,
                        format!(
                            "{who}: body pointer `{pointer}` overlaps `{other}`; each input needs a place of its own in the body"
                        ),
                    );
                } else {
                    paths.push((t, i));
                }
            }
        }
        let pos = pair_pos(body, i, false, at("body"));
        if unknown_input(pos, input, &format!("body `{pointer}`"), &mut push) {
            used.insert(input);
        }
    }
    for inp in &service.inputs {
        if !used.contains(inp.name.as_str()) {
            push(
                at("path"),
                format!(
                    "{who}: input `{}` is never sent to the provider; put it in the path \
                     (`{{{}}}`), `query:` or `body:`",
                    inp.name, inp.name
                ),
            );
        }
    }
    // Records.
    if let Some(r) = &m.records {
        if let Err(e) = pointer_tokens(r) {
            push(at("records"), format!("{who}: records {e}"));
        }
    }
    // Outputs.
    let outputs_node = node.and_then(|n| n.get("outputs"));
    let declared: HashSet<&str> = service.outputs.iter().map(String::as_str).collect();
    let mut mapped: HashMap<&str, usize> = HashMap::new();
    for (i, (name, pointer)) in m.outputs.iter().enumerate() {
        let key_pos = pair_pos(outputs_node, i, true, at("outputs"));
        if let Some(first) = mapped.insert(name, i) {
            let first_pos = pair_pos(outputs_node, first, true, at("outputs"));
            push(
                key_pos,
                format!(
                    "{who}: output `{name}` is mapped twice (first on line {}); keep one pointer",
                    first_pos.line
                ),
            );
        }
        if !declared.contains(name) {
            push(
                key_pos,
                format!(
                    "{who}: `{name}` is not an output of this service (outputs: {}); add it to \
                     `outputs:` or remove this line",
                    service.outputs.join(", ")
                ),
            );
        }
        if let Err(e) = pointer_tokens(pointer) {
            push(
                pair_pos(outputs_node, i, false, at("outputs")),
                format!("{who}: output `{name}`: {e}"),
            );
        }
    }
    for o in &service.outputs {
        if !mapped.contains_key(o.as_str()) {
            push(
                at("outputs"),
                format!(
                    "{who}: output `{o}` has no pointer in http.outputs; write `{o}: /where/it/is`"
                ),
            );
        }
    }
    // Value translations and dates.
    let values_node = node.and_then(|n| n.get("values"));
    let mut translated = HashSet::new();
    for (i, (name, _)) in m.values.entries().enumerate() {
        let pos = pair_pos(values_node, i, true, at("values"));
        if !declared.contains(name) {
            push(
                pos,
                format!(
                    "{who}: http.values names `{name}`, which is not an output of this service"
                ),
            );
        } else if !translated.insert(name) {
            push(
                pos,
                format!("{who}: http.values lists `{name}` twice; keep one mapping"),
            );
        }
    }
    let dates_node = node.and_then(|n| n.get("jalali_dates"));
    for (i, name) in m.jalali_dates.iter().enumerate() {
        if !declared.contains(name.as_str()) {
            let pos = match dates_node.map(|n| &n.kind) {
                Some(Kind::Seq(items)) => items.get(i).map_or(at("jalali_dates"), |n| n.pos),
                _ => at("jalali_dates"),
            };
            push(pos, format!("{who}: http.jalali_dates names `{name}`, which is not an output of this service"));
        }
    }
    // Errors.
    if let Some(p) = &m.error_code {
        if let Err(e) = pointer_tokens(p) {
            push(at("error_code"), format!("{who}: error_code {e}"));
        }
    }
    let errors_node = node.and_then(|n| n.get("errors"));
    for (i, rule) in m.errors.iter().enumerate() {
        let pos = match errors_node.map(|n| &n.kind) {
            Some(Kind::Seq(items)) => items.get(i).map_or(at("errors"), |n| n.pos),
            _ => at("errors"),
        };
        if rule.status.is_none() && rule.code.is_none() {
            push(
                pos,
                format!("{who}: errors[{i}] matches every answer; give `status:`, `code:` or both"),
            );
        }
        if let Some(s) = rule.status {
            if !(200..=599).contains(&s) {
                push(
                    pos,
                    format!(
                        "{who}: errors[{i}]: status {s} is not an HTTP answer status (200–599)"
                    ),
                );
            } else if s >= 500 && rule.outcome != Outcome::Unavailable {
                push(pos, format!("{who}: errors[{i}]: a {s} answer is always UNAVAILABLE (the provider failed); use outcome: unavailable or remove the rule"));
            }
        }
        if rule.code.is_some() && m.error_code.is_none() {
            push(
                pos,
                format!("{who}: errors[{i}] matches an error code, but no `error_code:` pointer says where the provider writes it"),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointers_unescape_and_refuse_bad_escapes() {
        assert_eq!(pointer_tokens("").unwrap(), Vec::<String>::new());
        assert_eq!(pointer_tokens("/a~1b/c~0d").unwrap(), ["a/b", "c~d"]);
        assert_eq!(pointer_tokens("/").unwrap(), [""]);
        assert!(pointer_tokens("data/x")
            .unwrap_err()
            .contains("start with `/`"));
        assert!(pointer_tokens("/a~2")
            .unwrap_err()
            .contains("`~` must be followed"));
    }

    #[test]
    fn path_inputs_are_whole_segments() {
        assert_eq!(
            path_segments("/post/v1/{postal_code}").unwrap(),
            [
                Segment::Literal("post"),
                Segment::Literal("v1"),
                Segment::Input("postal_code")
            ]
        );
        assert!(path_segments("post").is_err());
        assert!(path_segments("/a//b").is_err());
        assert!(path_segments("/a/x{code}")
            .unwrap_err()
            .contains("whole segment"));
        assert!(path_segments("/a?b=1").is_err());
    }

    #[test]
    fn jalali_dates_take_the_providers_forms() {
        assert_eq!(jalali_date("1398-02-15").as_deref(), Some("1398/02/15"));
        assert_eq!(jalali_date("13980215").as_deref(), Some("1398/02/15"));
        assert_eq!(jalali_date("1398/2/5").as_deref(), Some("1398/02/05"));
        assert_eq!(jalali_date("1398/13/01"), None);
        assert_eq!(jalali_date("soon"), None);
    }

    #[test]
    fn rules_match_status_and_code() {
        let r = ErrorRule {
            status: Some(404),
            code: Some("NF".into()),
            outcome: Outcome::NotFound,
        };
        assert!(r.matches(404, Some("NF")));
        assert!(!r.matches(404, None));
        assert!(!r.matches(400, Some("NF")));
        let any404 = ErrorRule {
            status: Some(404),
            code: None,
            outcome: Outcome::NotFound,
        };
        assert!(any404.matches(404, Some("X")));
    }
}
