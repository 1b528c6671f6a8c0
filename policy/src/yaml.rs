//! A YAML document tree that remembers the line and column of every node, and a serde
//! `Deserializer` over it, so that both type errors and semantic errors in policy files
//! can point at the exact offending node (`file:line:column`).

use std::fmt;

use serde::de::{self, DeserializeSeed, IntoDeserializer, MapAccess, SeqAccess, Visitor};
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// A 1-based position in a source file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Pos {
    pub line: usize,
    pub column: usize,
}

impl Pos {
    fn from_marker(m: Marker) -> Self {
        // yaml-rust2 lines are 1-based, columns 0-based.
        Pos {
            line: m.line(),
            column: m.col() + 1,
        }
    }
}

/// One YAML node with its position.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub pos: Pos,
    pub kind: Kind,
}

#[derive(Debug, Clone)]
pub(crate) enum Kind {
    /// A scalar; `plain` is false for quoted and block scalars (always strings).
    Scalar {
        value: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
    /// Anchors and aliases are not supported in policy files (they hide what a grant says).
    Alias,
}

/// One step of a path into a document.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

impl Node {
    /// The value of `key` in a mapping.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.kind {
            Kind::Map(entries) => entries
                .iter()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// The scalar text, if this is a scalar.
    pub fn as_str(&self) -> Option<&str> {
        match &self.kind {
            Kind::Scalar { value, .. } => Some(value),
            _ => None,
        }
    }

    /// Position of the node at `path`, or of its deepest existing ancestor.
    pub fn pos_of(&self, path: &[Step<'_>]) -> Pos {
        let mut node = self;
        for step in path {
            let next = match (step, &node.kind) {
                (Step::Key(k), _) => node.get(k),
                (Step::Index(i), Kind::Seq(items)) => items.get(*i),
                _ => None,
            };
            match next {
                Some(n) => node = n,
                None => break,
            }
        }
        node.pos
    }

    fn is_null(&self) -> bool {
        matches!(&self.kind, Kind::Scalar { value, plain: true }
            if value.is_empty() || value == "~" || value == "null" || value == "Null" || value == "NULL")
    }

    fn type_name(&self) -> &'static str {
        match &self.kind {
            Kind::Scalar { .. } if self.is_null() => "nothing (null)",
            Kind::Scalar { .. } => "a single value",
            Kind::Seq(_) => "a list",
            Kind::Map(_) => "a mapping",
            Kind::Alias => "an alias",
        }
    }
}

/// A syntax error while reading YAML.
#[derive(Debug)]
pub(crate) struct SyntaxError {
    pub pos: Pos,
    pub message: String,
}

/// Parses one YAML document; an empty file yields `None`.
///
/// Collections nested deeper than `max_depth` are refused at the first one too deep. The
/// events are pulled one by one here, not through `Parser::load`, which recurses once per
/// nesting level and overflows the stack on a few thousand levels (`- - - - …`); the tree
/// built below is at most `max_depth` deep, so dropping or deserializing it cannot either.
pub(crate) fn parse(src: &str, max_depth: usize) -> Result<Option<Node>, SyntaxError> {
    let mut builder = Builder::default();
    let mut parser = Parser::new_from_str(src);
    let mut depth = 0usize;
    let mut documents = 0usize;
    loop {
        let (ev, mark) = parser.next_token().map_err(|e| SyntaxError {
            pos: Pos::from_marker(*e.marker()),
            message: format!("YAML syntax error: {}", e.info()),
        })?;
        let pos = Pos::from_marker(mark);
        match ev {
            Event::StreamEnd => break,
            Event::DocumentStart => {
                documents += 1;
                if documents > 1 {
                    return Err(SyntaxError {
                        pos,
                        message: "a second YAML document (`---`) starts here; a policy file \
                                  holds one document, so remove the `---` line or move what \
                                  follows into its own file"
                            .to_owned(),
                    });
                }
            }
            Event::SequenceStart(..) | Event::MappingStart(..) => {
                depth += 1;
                if depth > max_depth {
                    return Err(SyntaxError {
                        pos,
                        message: format!(
                            "lists and mappings are nested more than {max_depth} levels deep \
                             here; policy files need at most 5, so look for stray `- ` or \
                             brackets"
                        ),
                    });
                }
            }
            Event::SequenceEnd | Event::MappingEnd => depth = depth.saturating_sub(1),
            _ => {}
        }
        builder.on_event(ev, mark);
    }
    Ok(builder.root)
}

#[derive(Default)]
struct Builder {
    stack: Vec<Node>,
    /// Pending mapping keys, parallel to mapping frames on `stack`.
    keys: Vec<Option<Node>>,
    root: Option<Node>,
}

impl Builder {
    fn push_value(&mut self, node: Node) {
        let Some(parent) = self.stack.last_mut() else {
            if self.root.is_none() {
                self.root = Some(node);
            }
            return;
        };
        match &mut parent.kind {
            Kind::Seq(items) => items.push(node),
            Kind::Map(entries) => {
                let slot = self.keys.last_mut().expect("a key slot per mapping");
                match slot.take() {
                    None => *slot = Some(node),
                    Some(key) => entries.push((key, node)),
                }
            }
            _ => unreachable!("only collections are on the stack"),
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let pos = Pos::from_marker(mark);
        match ev {
            Event::Scalar(value, style, _, _) => self.push_value(Node {
                pos,
                kind: Kind::Scalar {
                    value,
                    plain: style == TScalarStyle::Plain,
                },
            }),
            Event::Alias(_) => self.push_value(Node {
                pos,
                kind: Kind::Alias,
            }),
            Event::SequenceStart(..) => self.stack.push(Node {
                pos,
                kind: Kind::Seq(Vec::new()),
            }),
            Event::MappingStart(..) => {
                self.stack.push(Node {
                    pos,
                    kind: Kind::Map(Vec::new()),
                });
                self.keys.push(None);
            }
            Event::SequenceEnd => {
                let node = self.stack.pop().expect("balanced events");
                self.push_value(node);
            }
            Event::MappingEnd => {
                let mut node = self.stack.pop().expect("balanced events");
                // A block mapping's start marker sits after its first key; point at the key.
                if let Kind::Map(entries) = &node.kind {
                    if let Some((k, _)) = entries.first() {
                        if (k.pos.line, k.pos.column) < (node.pos.line, node.pos.column) {
                            node.pos = k.pos;
                        }
                    }
                }
                self.keys.pop();
                self.push_value(node);
            }
            _ => {}
        }
    }
}

/// A deserialization error, positioned at the innermost node that caused it.
#[derive(Debug)]
pub(crate) struct DeError {
    pub message: String,
    pub pos: Option<Pos>,
}

impl DeError {
    fn at(mut self, pos: Pos) -> Self {
        self.pos.get_or_insert(pos);
        self
    }
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError {
            message: msg.to_string(),
            pos: None,
        }
    }
}

fn expected(node: &Node, what: &str) -> DeError {
    DeError {
        message: format!("expected {what}, found {}", node.type_name()),
        pos: Some(node.pos),
    }
}

impl Node {
    fn scalar(&self, what: &str) -> Result<&str, DeError> {
        match &self.kind {
            Kind::Scalar { value, .. } => Ok(value),
            Kind::Alias => Err(DeError {
                message: "anchors and aliases (*name) are not allowed in policy files; write the value out".into(),
                pos: Some(self.pos),
            }),
            _ => Err(expected(self, what)),
        }
    }

    fn number<T: std::str::FromStr>(&self) -> Result<T, DeError> {
        let s = self.scalar("a number")?;
        s.replace('_', "")
            .parse()
            .map_err(|_| expected(self, "a number").with_found(s))
    }
}

impl DeError {
    fn with_found(mut self, s: &str) -> Self {
        self.message = format!(
            "{}: `{s}`",
            self.message.split(", found").next().unwrap_or_default()
        );
        self
    }
}

macro_rules! number_methods {
    ($($method:ident => $visit:ident : $ty:ty),* $(,)?) => {$(
        fn $method<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
            let n: $ty = self.number()?;
            v.$visit::<DeError>(n).map_err(|e: DeError| e.at(self.pos))
        }
    )*};
}

impl<'de> de::Deserializer<'de> for &'de Node {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        let r = match &self.kind {
            Kind::Scalar { value, plain: true } => {
                if self.is_null() {
                    v.visit_unit()
                } else if value == "true" {
                    v.visit_bool(true)
                } else if value == "false" {
                    v.visit_bool(false)
                } else if let Ok(n) = value.parse::<i64>() {
                    v.visit_i64(n)
                } else if let Ok(n) = value.parse::<f64>() {
                    v.visit_f64(n)
                } else {
                    v.visit_borrowed_str(value)
                }
            }
            Kind::Scalar {
                value,
                plain: false,
            } => v.visit_borrowed_str(value),
            Kind::Seq(items) => v.visit_seq(Seq(items.iter())),
            Kind::Map(entries) => v.visit_map(Map {
                iter: entries.iter(),
                value: None,
            }),
            Kind::Alias => self.scalar("a value").map(|_| unreachable!()),
        };
        r.map_err(|e: DeError| e.at(self.pos))
    }

    fn deserialize_bool<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        match self.scalar("true or false")? {
            "true" => v.visit_bool(true),
            "false" => v.visit_bool(false),
            other => Err(expected(self, "true or false").with_found(other)),
        }
        .map_err(|e: DeError| e.at(self.pos))
    }

    number_methods! {
        deserialize_i8 => visit_i8: i8, deserialize_i16 => visit_i16: i16,
        deserialize_i32 => visit_i32: i32, deserialize_i64 => visit_i64: i64,
        deserialize_u8 => visit_u8: u8, deserialize_u16 => visit_u16: u16,
        deserialize_u32 => visit_u32: u32, deserialize_u64 => visit_u64: u64,
        deserialize_f32 => visit_f32: f32, deserialize_f64 => visit_f64: f64,
    }

    fn deserialize_str<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        let s = match &self.kind {
            Kind::Scalar { value, .. } => value.as_str(),
            _ => return Err(expected(self, "text")),
        };
        v.visit_borrowed_str(s).map_err(|e: DeError| e.at(self.pos))
    }

    fn deserialize_string<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_str(v)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_str(v)
    }

    fn deserialize_char<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_str(v)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_any(v)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_any(v)
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        if self.is_null() {
            v.visit_none()
        } else {
            v.visit_some(self)
        }
        .map_err(|e: DeError| e.at(self.pos))
    }

    fn deserialize_unit<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        if self.is_null() {
            v.visit_unit().map_err(|e: DeError| e.at(self.pos))
        } else {
            Err(expected(self, "nothing"))
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        v: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_unit(v)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        v: V,
    ) -> Result<V::Value, DeError> {
        v.visit_newtype_struct(self)
            .map_err(|e: DeError| e.at(self.pos))
    }

    fn deserialize_seq<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        match &self.kind {
            Kind::Seq(items) => v
                .visit_seq(Seq(items.iter()))
                .map_err(|e: DeError| e.at(self.pos)),
            _ => Err(expected(
                self,
                "a list, e.g. [a, b] or lines starting with `- `",
            )),
        }
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _len: usize, v: V) -> Result<V::Value, DeError> {
        self.deserialize_seq(v)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        v: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_seq(v)
    }

    fn deserialize_map<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        match &self.kind {
            Kind::Map(entries) => v
                .visit_map(Map {
                    iter: entries.iter(),
                    value: None,
                })
                .map_err(|e: DeError| e.at(self.pos)),
            _ => Err(expected(self, "a mapping of `key: value` lines")),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_map(v)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, DeError> {
        let s = self.scalar("one of the listed words")?;
        v.visit_enum(IntoDeserializer::<DeError>::into_deserializer(s))
            .map_err(|e: DeError| e.at(self.pos))
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        v.visit_unit()
    }
}

struct Seq<'de>(std::slice::Iter<'de, Node>);

impl<'de> SeqAccess<'de> for Seq<'de> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        match self.0.next() {
            Some(node) => seed
                .deserialize(node)
                .map(Some)
                .map_err(|e: DeError| e.at(node.pos)),
            None => Ok(None),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.0.len())
    }
}

struct Map<'de> {
    iter: std::slice::Iter<'de, (Node, Node)>,
    value: Option<&'de Node>,
}

impl<'de> MapAccess<'de> for Map<'de> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        match self.iter.next() {
            Some((k, v)) => {
                self.value = Some(v);
                seed.deserialize(k)
                    .map(Some)
                    .map_err(|e: DeError| e.at(k.pos))
            }
            None => Ok(None),
        }
    }

    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, DeError> {
        let v = self.value.take().expect("value after key");
        seed.deserialize(v).map_err(|e: DeError| e.at(v.pos))
    }
}
