//! CloudEvents binary-mode Kafka headers (`ce_*`, `content-type`) of everything the hub
//! produces: events and daily manifests.

use rdkafka::message::{Header, OwnedHeaders};

/// The CloudEvents attributes of one record; the data is always protobuf.
#[derive(Debug, Clone, Copy)]
pub struct Attributes<'a> {
    /// `ce_id`: the same for every copy and resend of one event, so consumers drop duplicates.
    pub id: &'a str,
    pub source: &'a str,
    pub r#type: &'a str,
    pub subject: &'a str,
    /// `ce_dataschema`: the protobuf message name of the payload.
    pub dataschema: &'a str,
    /// `ce_time` (RFC 3339), when known.
    pub time: Option<&'a str>,
    /// `tabadol_sequence`: the outbox sequence of an event.
    pub sequence: Option<&'a str>,
}

impl Attributes<'_> {
    /// The headers, in a fixed order.
    pub fn headers(&self) -> OwnedHeaders {
        let mut h = OwnedHeaders::new()
            .insert(header("ce_specversion", "1.0"))
            .insert(header("ce_id", self.id))
            .insert(header("ce_source", self.source))
            .insert(header("ce_type", self.r#type));
        if let Some(t) = self.time {
            h = h.insert(header("ce_time", t));
        }
        h = h
            .insert(header("ce_subject", self.subject))
            .insert(header("content-type", "application/protobuf"))
            .insert(header("ce_dataschema", self.dataschema));
        if let Some(s) = self.sequence {
            h = h.insert(header("tabadol_sequence", s));
        }
        h
    }
}

fn header<'a>(key: &'a str, value: &'a str) -> Header<'a, &'a str> {
    Header {
        key,
        value: Some(value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::Headers as _;

    #[test]
    fn optional_attributes_are_left_out() {
        let a = Attributes {
            id: "m/1",
            source: "tabadol.ir/hub",
            r#type: "ir.tabadol.manifest.v1",
            subject: "1405/09/01",
            dataschema: "tabadol.v1.Manifest",
            time: None,
            sequence: None,
        };
        let h = a.headers();
        let keys: Vec<&str> = h.iter().map(|h| h.key).collect();
        assert_eq!(
            keys,
            [
                "ce_specversion",
                "ce_id",
                "ce_source",
                "ce_type",
                "ce_subject",
                "content-type",
                "ce_dataschema"
            ]
        );
        let full = Attributes {
            time: Some("2026-11-22T10:00:00Z"),
            sequence: Some("7"),
            ..a
        }
        .headers();
        assert_eq!(full.count(), 9);
    }
}
