//! Minimize: only the granted (and requested) fields of the provider's records leave the
//! hub (R8).

use tabadol_adapters::Record;

/// Keeps in each record only the fields in `granted`.
pub fn minimize(records: Vec<Record>, granted: &[String]) -> Vec<Record> {
    records
        .into_iter()
        .map(|mut r| {
            r.retain(|k, _| granted.iter().any(|f| f == k));
            r
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ungranted fields are dropped from every record.
    #[test]
    fn drops_ungranted_fields() {
        let r: Record = [("a", "1"), ("b", "2"), ("c", "3")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let out = minimize(vec![r.clone(), r], &["a".to_owned(), "c".to_owned()]);
        assert_eq!(out.len(), 2);
        for r in out {
            assert_eq!(r.keys().map(String::as_str).collect::<Vec<_>>(), ["a", "c"]);
        }
    }
}
