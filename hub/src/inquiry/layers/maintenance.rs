//! Maintenance: a planned outage announced in the catalog (R14) is refused saying until
//! when, instead of letting the call fail against a provider that is down on purpose. The
//! windows' Jalali times are converted once, when the policy is loaded, not per request.

use std::collections::HashMap;
use std::time::Duration;

use jiff::Timestamp;
use tabadol_policy::model::Service;
use tabadol_policy::Policy;

use crate::edge::error::HubError;

/// One window as instants: `[from, until)`, and its place in the service's list.
#[derive(Debug, Clone, Copy)]
struct Window {
    from: Timestamp,
    until: Timestamp,
    index: usize,
}

/// Every service's maintenance windows, compiled from the policy.
#[derive(Debug, Default)]
pub struct Schedule {
    windows: HashMap<String, Vec<Window>>,
}

impl Schedule {
    pub fn new(policy: &Policy) -> Self {
        let windows = policy
            .services()
            .filter(|s| !s.maintenance.is_empty())
            .map(|s| {
                let w = s
                    .maintenance
                    .iter()
                    .enumerate()
                    .map(|(index, w)| Window {
                        from: w.from.to_timestamp(),
                        until: w.until.to_timestamp(),
                        index,
                    })
                    .collect();
                (s.id.clone(), w)
            })
            .collect();
        Self { windows }
    }

    /// Refuses a call of `service` at `at` inside one of its windows.
    pub fn check(&self, service: &Service, at: Timestamp) -> Result<(), HubError> {
        let Some(windows) = self.windows.get(&service.id) else {
            return Ok(());
        };
        let Some(hit) = windows.iter().find(|w| w.from <= at && at < w.until) else {
            return Ok(());
        };
        let window = &service.maintenance[hit.index];
        Err(HubError::Maintenance {
            provider: service.provider.clone(),
            service: service.id.clone(),
            until: window.until.to_string(),
            note: window.note.clone().unwrap_or_default(),
            retry_after: hit
                .until
                .duration_since(at)
                .try_into()
                .unwrap_or(Duration::ZERO),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policy/national");
        Policy::load_dir(&dir).unwrap()
    }

    /// Inside the shipped identity window the call is refused with the time left; just
    /// before it and at its end the call goes through.
    #[test]
    fn window_is_half_open() {
        let p = policy();
        let schedule = Schedule::new(&p);
        let s = p.service("nocr.identity").unwrap();
        let w = &s.maintenance[0];
        let (from, until) = (w.from.to_timestamp(), w.until.to_timestamp());
        let before = from - jiff::SignedDuration::from_secs(1);
        assert!(schedule.check(s, before).is_ok());
        let Err(HubError::Maintenance { retry_after, .. }) = schedule.check(s, from) else {
            panic!("not refused at the start of the window");
        };
        assert_eq!(retry_after, Duration::from_secs(2 * 3600));
        assert!(schedule.check(s, until).is_ok());
        let other = p.service("nocr.life-status").unwrap();
        assert!(schedule.check(other, from).is_ok());
    }
}
