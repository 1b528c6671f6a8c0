//! The compiled policy and the access decision for one inquiry: deny by default, allow only
//! what a grant lists, for its purposes, inside its validity window (R1, R8).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::Path;

use crate::jalali::JalaliDate;
use crate::load::{self, PolicyErrors, PolicySource};
use crate::model::{Agency, Grant, Service, Subscription};

/// A grant with its validity window resolved to instants and its fields in output order.
#[derive(Debug, Clone)]
struct CompiledGrant {
    grant: Grant,
    /// Index into `Policy::services`.
    service: usize,
    /// First valid instant (inclusive).
    from: Option<jiff::Timestamp>,
    /// First instant after validity (exclusive).
    until: Option<jiff::Timestamp>,
    /// Granted fields in the service's output order.
    fields: Vec<String>,
}

/// The compiled policy: immutable, cheap to query, swapped whole on reload.
#[derive(Debug, Clone)]
pub struct Policy {
    agencies: Vec<Agency>,
    agency_by_id: HashMap<String, usize>,
    agency_by_cn: HashMap<String, usize>,
    services: Vec<Service>,
    service_by_id: HashMap<String, usize>,
    /// agency → service → grant. Nested so that lookups take two `&str` without allocating.
    grants: HashMap<String, HashMap<String, CompiledGrant>>,
    subscriptions: Vec<Subscription>,
    subscribers: HashMap<String, Vec<String>>,
    /// Who consented to and approved each grant and subscription, and when (one line per
    /// item, from [`Policy::attach_signatures`]); empty when signatures were not checked.
    signed: HashMap<(crate::signatures::Kind, String), String>,
}

/// What the hub asks the engine for one inquiry.
#[derive(Debug, Clone, Copy)]
pub struct DecisionRequest<'a> {
    /// Calling agency (from its verified certificate).
    pub agency: &'a str,
    /// Catalog service id.
    pub service: &'a str,
    /// Purpose stated in the request context.
    pub purpose: &'a str,
    /// When the request is decided.
    pub at: jiff::Timestamp,
    /// Output fields asked for; empty means every granted field.
    pub requested_fields: &'a [String],
}

/// The answer for one inquiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision<'a> {
    /// Go ahead, and return only `fields`.
    Allow {
        /// Requested ∩ granted (all granted when none were requested), in the service's
        /// output order.
        fields: Vec<String>,
        /// The grant that allows it (for rate limits and audit).
        grant: &'a Grant,
    },
    /// Refused; the reason names what is missing.
    Deny(Deny),
}

impl Decision<'_> {
    /// True for `Allow`.
    pub fn is_allow(&self) -> bool {
        matches!(self, Decision::Allow { .. })
    }
}

/// Why an inquiry was refused. `Display` says what is missing and whom to ask.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Deny {
    /// The service id is not in the catalog.
    #[error("service is not in the catalog; call ListServices to see what you may call")]
    UnknownService,
    /// No grant for this agency and service.
    #[error("agency {agency} has no grant for service {service}; ask the interoperability working group for one")]
    NoGrant {
        /// Calling agency.
        agency: String,
        /// Requested service.
        service: String,
    },
    /// The grant does not cover the stated purpose.
    #[error("purpose `{purpose}` is not covered by the grant (allowed purposes: {})", allowed.join(", "))]
    PurposeNotAllowed {
        /// Purpose stated.
        purpose: String,
        /// Purposes the grant lists.
        allowed: Vec<String>,
    },
    /// The grant starts later.
    #[error("the grant is valid only from {from} (Tehran time)")]
    NotYetValid {
        /// First valid day.
        from: JalaliDate,
    },
    /// The grant has ended.
    #[error("the grant expired at the end of {until} (Tehran time); ask the interoperability working group to renew it")]
    Expired {
        /// Last valid day.
        until: JalaliDate,
    },
    /// Fields were asked for that the grant does not list.
    #[error("fields {} are not granted (granted: {}); ask only for granted fields or for a wider grant", fields.join(", "), granted.join(", "))]
    FieldsNotGranted {
        /// Asked for but not granted.
        fields: Vec<String>,
        /// What the grant lists.
        granted: Vec<String>,
    },
}

impl Policy {
    /// Loads and compiles the policy directory, reporting every problem at once.
    pub fn load_dir(dir: &Path) -> Result<Policy, PolicyErrors> {
        load::load_dir(dir).map(Policy::compile)
    }

    /// Loads and compiles policy text (useful in tests and for `policy check` on stdin).
    pub fn from_sources(dir: &Path, sources: load::Sources<'_>) -> Result<Policy, PolicyErrors> {
        load::load_sources(dir, sources).map(Policy::compile)
    }

    /// Compiles validated policy source into lookup maps.
    pub fn compile(src: PolicySource) -> Policy {
        let PolicySource {
            agencies,
            services,
            grants: grant_list,
            subscriptions,
        } = src;
        let agency_by_id = agencies
            .iter()
            .enumerate()
            .map(|(i, a)| (a.id.clone(), i))
            .collect();
        // A blank common name never identifies an agency (the loader refuses one; this
        // guards policies built by hand).
        let agency_by_cn = agencies
            .iter()
            .enumerate()
            .filter(|(_, a)| !a.certificate.common_name.trim().is_empty())
            .map(|(i, a)| (a.certificate.common_name.clone(), i))
            .collect();
        let service_by_id: HashMap<String, usize> = services
            .iter()
            .enumerate()
            .map(|(i, s)| (s.id.clone(), i))
            .collect();
        let mut grants: HashMap<String, HashMap<String, CompiledGrant>> = HashMap::new();
        for g in grant_list {
            let Some(&si) = service_by_id.get(&g.service) else {
                continue; // cannot happen for validated source
            };
            let wanted: HashSet<&str> = g.fields.iter().map(String::as_str).collect();
            let fields = services[si]
                .outputs
                .iter()
                .filter(|o| wanted.contains(o.as_str()))
                .cloned()
                .collect();
            // Loaded dates (years 1..=3000) convert exactly; a hand-built date past jiff's
            // range saturates, so the grant then starts or ends never rather than panicking.
            let compiled = CompiledGrant {
                service: si,
                from: g.valid_from.map(|d| d.start_in_tehran()),
                until: g.valid_until.map(|d| d.end_in_tehran()),
                fields,
                grant: g,
            };
            grants
                .entry(compiled.grant.agency.clone())
                .or_default()
                .insert(compiled.grant.service.clone(), compiled);
        }
        let mut subscribers: HashMap<String, Vec<String>> = HashMap::new();
        for s in &subscriptions {
            for ev in &s.event_types {
                subscribers
                    .entry(ev.clone())
                    .or_default()
                    .push(s.agency.clone());
            }
        }
        Policy {
            agencies,
            agency_by_id,
            agency_by_cn,
            services,
            service_by_id,
            grants,
            subscriptions,
            subscribers,
            signed: HashMap::new(),
        }
    }

    /// Records who consented to and approved each item of `report` (shown by ListServices
    /// and `policy explain`).
    pub fn attach_signatures(&mut self, report: &crate::signatures::Report) {
        self.signed = report
            .items
            .iter()
            .map(|i| ((i.kind, i.id.clone()), i.summary()))
            .collect();
    }

    /// Who consented to and approved a grant or subscription, and when; `None` when the
    /// signatures were not checked.
    pub fn signature_summary(&self, kind: crate::signatures::Kind, id: &str) -> Option<&str> {
        self.signed.get(&(kind, id.to_owned())).map(String::as_str)
    }

    /// All agencies, in file order.
    pub fn agencies(&self) -> impl Iterator<Item = &Agency> {
        self.agencies.iter()
    }

    /// The agency with this id.
    pub fn agency(&self, id: &str) -> Option<&Agency> {
        self.agency_by_id.get(id).map(|&i| &self.agencies[i])
    }

    /// The agency whose client certificate has this subject common name; `None` for an
    /// empty or blank name (a certificate without a CN is nobody).
    pub fn agency_for_common_name(&self, cn: &str) -> Option<&Agency> {
        if cn.trim().is_empty() {
            return None;
        }
        self.agency_by_cn.get(cn).map(|&i| &self.agencies[i])
    }

    /// The catalog service with this id.
    pub fn service(&self, id: &str) -> Option<&Service> {
        self.service_by_id.get(id).map(|&i| &self.services[i])
    }

    /// All catalog services, in file order.
    pub fn services(&self) -> impl Iterator<Item = &Service> {
        self.services.iter()
    }

    /// The grant of `service` to `agency`, if any (regardless of validity window).
    pub fn grant(&self, agency: &str, service: &str) -> Option<&Grant> {
        self.grants
            .get(agency)
            .and_then(|m| m.get(service))
            .map(|c| &c.grant)
    }

    /// Every service granted to `agency`, sorted by service id.
    pub fn grants_for(&self, agency: &str) -> Vec<(&Service, &Grant)> {
        let mut v: Vec<_> = self
            .grants
            .get(agency)
            .into_iter()
            .flat_map(|m| m.values())
            .map(|c| (&self.services[c.service], &c.grant))
            .collect();
        v.sort_by(|a, b| a.0.id.cmp(&b.0.id));
        v
    }

    /// Decides one inquiry. Checks, in order: service known, grant exists, purpose
    /// allowed, validity window, requested fields granted.
    pub fn decide(&self, req: &DecisionRequest<'_>) -> Decision<'_> {
        if !self.service_by_id.contains_key(req.service) {
            return Decision::Deny(Deny::UnknownService);
        }
        let Some(g) = self.grants.get(req.agency).and_then(|m| m.get(req.service)) else {
            return Decision::Deny(Deny::NoGrant {
                agency: req.agency.to_owned(),
                service: req.service.to_owned(),
            });
        };
        if !g.grant.purposes.iter().any(|p| p == req.purpose) {
            return Decision::Deny(Deny::PurposeNotAllowed {
                purpose: req.purpose.to_owned(),
                allowed: g.grant.purposes.clone(),
            });
        }
        if let (Some(from), Some(day)) = (g.from, g.grant.valid_from) {
            if req.at < from {
                return Decision::Deny(Deny::NotYetValid { from: day });
            }
        }
        if let (Some(until), Some(day)) = (g.until, g.grant.valid_until) {
            if req.at >= until {
                return Decision::Deny(Deny::Expired { until: day });
            }
        }
        if req.requested_fields.is_empty() {
            return Decision::Allow {
                fields: g.fields.clone(),
                grant: &g.grant,
            };
        }
        let missing: Vec<String> = req
            .requested_fields
            .iter()
            .filter(|f| !g.fields.contains(f))
            .cloned()
            .collect();
        if !missing.is_empty() {
            return Decision::Deny(Deny::FieldsNotGranted {
                fields: missing,
                granted: g.fields.clone(),
            });
        }
        Decision::Allow {
            fields: g
                .fields
                .iter()
                .filter(|f| req.requested_fields.contains(f))
                .cloned()
                .collect(),
            grant: &g.grant,
        }
    }

    /// All subscriptions, in file order.
    pub fn subscriptions(&self) -> &[Subscription] {
        &self.subscriptions
    }

    /// Agencies subscribed to `event_type`, in file order.
    pub fn subscribers_of(&self, event_type: &str) -> Vec<&str> {
        self.subscribers
            .get(event_type)
            .map(|v| v.iter().map(String::as_str).collect())
            .unwrap_or_default()
    }

    /// Whether `agency` may publish events of `event_type`.
    pub fn may_publish(&self, agency: &str, event_type: &str) -> bool {
        self.agency(agency)
            .is_some_and(|a| a.publishes.iter().any(|e| e == event_type))
    }
}

impl fmt::Display for Decision<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::Allow { fields, grant } => write!(
                f,
                "allowed by grant {} → {} (fields: {})",
                grant.agency,
                grant.service,
                fields.join(", ")
            ),
            Decision::Deny(d) => write!(f, "denied: {d}"),
        }
    }
}
