//! Shared test setup: the three simulators on 127.0.0.1:0 and adapters pointed at them.
#![allow(dead_code)] // each test binary uses a different part of this module

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tabadol_adapters::simulators::{Dataset, Simulators};
use tabadol_adapters::{
    build, AdapterConfig, AdapterKind, Provider, ProviderError, ProviderRequest, Record,
};

/// Seed every test uses, so failures reproduce.
pub const SEED: u64 = 42;

pub struct World {
    pub sims: Simulators,
    pub shahkar: Arc<dyn Provider>,
    pub nocr: Arc<dyn Provider>,
    pub tax: Arc<dyn Provider>,
}

impl World {
    pub fn ds(&self) -> &Dataset {
        &self.sims.dataset
    }
}

pub fn config(kind: AdapterKind, base_url: String, timeout: Duration) -> AdapterConfig {
    let provider = match kind {
        AdapterKind::Shahkar => "cra",
        AdapterKind::CivilRegistry => "nocr",
        AdapterKind::Tax => "inta",
        AdapterKind::Http => "post",
    };
    AdapterConfig::new(provider, kind, base_url, timeout)
}

pub async fn world() -> World {
    let sims = Simulators::start(Arc::new(Dataset::generate(SEED)))
        .await
        .expect("simulators start");
    let adapter = |kind| {
        build(&config(
            kind,
            sims.handle(kind)
                .expect("a simulator of this kind")
                .base_url(),
            Duration::from_secs(10),
        ))
        .expect("adapter")
    };
    World {
        shahkar: adapter(AdapterKind::Shahkar),
        nocr: adapter(AdapterKind::CivilRegistry),
        tax: adapter(AdapterKind::Tax),
        sims,
    }
}

pub fn request(operation: &str, params: &[(&str, &str)]) -> ProviderRequest {
    ProviderRequest {
        operation: operation.into(),
        params: params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
        tracking_code: "TRK-1403-000042".into(),
        timeout: Duration::from_secs(10),
        mapping: None,
        traceparent: None,
    }
}

/// Call and expect exactly one record.
pub async fn one(p: &dyn Provider, req: ProviderRequest) -> Result<Record, ProviderError> {
    let mut resp = p.call(req).await?;
    assert_eq!(resp.records.len(), 1, "{resp:?}");
    Ok(resp.records.remove(0))
}

pub fn rec(pairs: &[(&str, &str)]) -> Record {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}
