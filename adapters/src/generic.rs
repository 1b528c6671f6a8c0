//! The generic HTTP/JSON adapter (`adapter: http`): calls any provider as the service's
//! `http:` catalog section says ([`tabadol_policy::http_mapping`]), with no provider-specific
//! Rust code.
//!
//! Each input goes into the path (one percent-encoded segment), the query or the JSON body
//! (as a string at its pointer); the answer's records are read at `records:` (an array, one
//! record per element) or are the answer itself; each output is read at its pointer (a
//! string as is, a number or boolean as written, null or absent leaves the field out). The
//! first `errors:` rule matching the answer's status and error code decides NOT_FOUND /
//! INVALID_ARGUMENT / UNAVAILABLE; 5xx is always UNAVAILABLE. Messages are the hub's own —
//! nothing the provider wrote (an error text, a body) reaches the calling agency.

use futures::future::BoxFuture;
use futures::FutureExt;
use serde_json::{Map, Value};
use tabadol_policy::http_mapping::{
    jalali_date, path_segments, pointer_tokens, HttpMapping, HttpMethod, Outcome, Segment,
};

use crate::breaker::CircuitConfig;
use crate::http::{Reply, Transport};
use crate::{
    AdapterConfig, ConfigError, Provider, ProviderError, ProviderRequest, ProviderResponse, Record,
};

/// The generic adapter of one provider; the mapping comes with each request.
pub struct GenericAdapter {
    http: Transport,
}

impl GenericAdapter {
    /// An adapter for the provider endpoint `cfg` describes.
    pub fn new(cfg: &AdapterConfig, circuit: CircuitConfig) -> Result<Self, ConfigError> {
        Ok(Self {
            http: Transport::new(cfg, circuit)?,
        })
    }

    fn rejected(&self, message: String) -> ProviderError {
        ProviderError::Rejected {
            provider: self.http.provider().to_owned(),
            message,
        }
    }

    async fn run(
        &self,
        req: &ProviderRequest,
        m: &HttpMapping,
    ) -> Result<ProviderResponse, ProviderError> {
        let provider = self.http.provider();
        let param = |name: &str| {
            req.params
                .get(name)
                .filter(|v| !v.is_empty())
                .map(String::as_str)
        };
        // The path: every input segment must be given (an optional one in the path would
        // make another URL, not an absent parameter).
        let template = path_segments(&m.path).map_err(|e| {
            self.http
                .protocol(format!("catalog http.path is unusable: {e}"))
        })?;
        let mut segments = Vec::with_capacity(template.len());
        for s in &template {
            match s {
                Segment::Literal(l) => segments.push(*l),
                Segment::Input(name) => match param(name) {
                    Some(v) => segments.push(v),
                    None => {
                        return Err(self.rejected(format!(
                            "operation {} needs parameter {name}",
                            req.operation
                        )))
                    }
                },
            }
        }
        let mut url = self.http.url(&segments);
        {
            let mut pairs = url.query_pairs_mut();
            for (wire, input) in m.query.iter() {
                if let Some(v) = param(input) {
                    pairs.append_pair(wire, v);
                }
            }
        }
        if url.query() == Some("") {
            url.set_query(None);
        }
        let request = match m.method {
            HttpMethod::Get => self.http.client().get(url),
            HttpMethod::Post => {
                let mut body = Value::Object(Map::new());
                for (pointer, input) in m.body.iter() {
                    let Some(v) = param(input) else { continue };
                    let tokens = pointer_tokens(pointer).map_err(|e| {
                        self.http
                            .protocol(format!("catalog http.body pointer is unusable: {e}"))
                    })?;
                    put(&mut body, &tokens, Value::String(v.to_owned()));
                }
                self.http.client().post(url).json(&body)
            }
        };
        let reply = self.http.send_for(request, req).await?;
        let json: Option<Value> = serde_json::from_slice(&reply.body).ok();
        let code = match (&m.error_code, &json) {
            (Some(p), Some(body)) => at(body, p).and_then(scalar),
            _ => None,
        };
        let status = reply.status.as_u16();
        if let Some((i, rule)) = m
            .errors
            .iter()
            .enumerate()
            .find(|(_, r)| r.matches(status, code.as_deref()))
        {
            return Err(match rule.outcome {
                Outcome::NotFound => ProviderError::NotFound {
                    provider: provider.to_owned(),
                    // The inputs by name, never their values.
                    what: format!(
                        "the given {}",
                        req.params
                            .keys()
                            .map(String::as_str)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                },
                Outcome::InvalidArgument => ProviderError::Invalid {
                    provider: provider.to_owned(),
                    message: format!(
                        "operation {} refused the inputs (HTTP {status}{})",
                        req.operation,
                        rule.code
                            .as_deref()
                            .map(|c| format!(", error code {c}"))
                            .unwrap_or_default()
                    ),
                },
                Outcome::Unavailable => ProviderError::Unavailable {
                    provider: provider.to_owned(),
                    reason: format!("its answer (HTTP {status}) matched http.errors[{i}]"),
                },
            });
        }
        if !reply.status.is_success() {
            return Err(self.unmapped(&reply));
        }
        let Some(body) = json else {
            return Err(self.http.protocol(format!(
                "HTTP {status} body is not JSON, as the catalog's http section expects"
            )));
        };
        let elements: Vec<&Value> = match &m.records {
            None => vec![&body],
            Some(p) => match at(&body, p) {
                Some(Value::Array(items)) => items.iter().collect(),
                Some(_) => {
                    return Err(self
                        .http
                        .protocol(format!("the value at records pointer {p} is not a list")))
                }
                None => {
                    return Err(self
                        .http
                        .protocol(format!("the answer has nothing at records pointer {p}")))
                }
            },
        };
        let mut records = Vec::with_capacity(elements.len());
        for (n, element) in elements.into_iter().enumerate() {
            let mut record = Record::new();
            for (output, pointer) in m.outputs.iter() {
                match at(element, pointer) {
                    None | Some(Value::Null) => {}
                    Some(v) => match scalar(v) {
                        Some(text) => {
                            let text = self.translate(m, n, output, text)?;
                            record.insert(output.to_owned(), text);
                        }
                        None => {
                            return Err(self.http.protocol(format!(
                                "record {n}: output {output} at {pointer} is a list or object, \
                                 not a single value"
                            )))
                        }
                    },
                }
            }
            if record.is_empty() {
                return Err(self.http.protocol(format!(
                    "record {n} has none of the outputs at the catalog's pointers"
                )));
            }
            records.push(record);
        }
        Ok(ProviderResponse { records })
    }

    /// `text` as the hub answers it: through the output's `http.values` table and, for a
    /// `http.jalali_dates` output, in the form `YYYY/MM/DD`. The provider's value is never
    /// quoted in the error.
    fn translate(
        &self,
        m: &HttpMapping,
        n: usize,
        output: &str,
        text: String,
    ) -> Result<String, ProviderError> {
        let text = match m.values.value(output) {
            None => text,
            Some(table) => match table.get(&text) {
                Some(v) => v.to_owned(),
                None => {
                    return Err(self.http.protocol(format!(
                        "record {n}: output {output} has a value http.values does not list"
                    )))
                }
            },
        };
        if m.jalali_dates.iter().any(|d| d == output) {
            return jalali_date(&text).ok_or_else(|| {
                self.http.protocol(format!(
                    "record {n}: output {output} is not a Jalali date (YYYY-MM-DD, YYYYMMDD or YYYY/MM/DD)"
                ))
            });
        }
        Ok(text)
    }

    /// A non-2xx answer no rule maps: 4xx is a refusal of this request, named by status only.
    fn unmapped(&self, reply: &Reply) -> ProviderError {
        self.http.protocol(format!(
            "HTTP {} matches no rule in the catalog's http.errors",
            reply.status.as_u16()
        ))
    }
}

impl Provider for GenericAdapter {
    fn name(&self) -> &str {
        self.http.provider()
    }

    fn call(&self, req: ProviderRequest) -> BoxFuture<'_, Result<ProviderResponse, ProviderError>> {
        async move {
            match req.mapping.clone() {
                Some(m) => self.run(&req, &m).await,
                None => Err(ProviderError::UnknownOperation {
                    provider: self.http.provider().to_owned(),
                    operation: req.operation,
                }),
            }
        }
        .boxed()
    }

    fn circuit_open(&self) -> bool {
        self.http.circuit_open()
    }
}

/// The value at JSON pointer `pointer` (RFC 6901) in `v`.
fn at<'a>(v: &'a Value, pointer: &str) -> Option<&'a Value> {
    let tokens = pointer_tokens(pointer).ok()?;
    let mut v = v;
    for t in &tokens {
        v = match v {
            Value::Object(map) => map.get(t)?,
            Value::Array(items) => items.get(t.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(v)
}

/// A string as is; a number or boolean as JSON writes it; anything else none.
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Puts `value` at `tokens` in `root`, creating objects on the way (the catalog check makes
/// sure no two pointers overlap).
fn put(root: &mut Value, tokens: &[String], value: Value) {
    let Some((last, parents)) = tokens.split_last() else {
        return;
    };
    let mut v = root;
    for t in parents {
        if !v.is_object() {
            *v = Value::Object(Map::new());
        }
        v = v
            .as_object_mut()
            .expect("made an object above")
            .entry(t.clone())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    if !v.is_object() {
        *v = Value::Object(Map::new());
    }
    v.as_object_mut()
        .expect("made an object above")
        .insert(last.clone(), value);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pointers_read_objects_and_arrays() {
        let v = json!({"a": {"b~c": [10, {"d/e": "x"}]}});
        assert_eq!(at(&v, "/a/b~0c/0"), Some(&json!(10)));
        assert_eq!(at(&v, "/a/b~0c/1/d~1e"), Some(&json!("x")));
        assert_eq!(at(&v, ""), Some(&v));
        assert_eq!(at(&v, "/a/missing"), None);
        assert_eq!(at(&v, "/a/b~0c/9"), None);
    }

    #[test]
    fn body_is_built_at_the_pointers() {
        let mut body = Value::Object(Map::new());
        put(&mut body, &["enterprise".into(), "id".into()], json!("1"));
        put(&mut body, &["enterprise".into(), "name".into()], json!("2"));
        put(&mut body, &["year".into()], json!("1403"));
        assert_eq!(
            body,
            json!({"enterprise": {"id": "1", "name": "2"}, "year": "1403"})
        );
    }

    #[test]
    fn scalars_are_text() {
        assert_eq!(scalar(&json!(12)).as_deref(), Some("12"));
        assert_eq!(scalar(&json!(1.5)).as_deref(), Some("1.5"));
        assert_eq!(scalar(&json!(true)).as_deref(), Some("true"));
        assert_eq!(scalar(&json!({})), None);
    }
}
