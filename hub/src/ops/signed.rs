//! Signed grants at the hub and on the command line: loading the policy with its
//! signatures checked (withdrawn grants out; under `policy.require_signatures` an unsigned
//! active grant refuses the load), `tabadol policy sign|check|diff`, and the development
//! signatures `tabadol dev` writes. The verification itself is `tabadol_policy::signatures`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use serde::Deserialize;
use tabadol_policy::load::{PolicyErrors, PolicySource};
use tabadol_policy::model::Grant;
use tabadol_policy::signatures::{
    self, Action, ItemStatus, Kind, PartyState, Report, Role, SignRequest, Trust, SIGNATURES_FILE,
};
use tabadol_policy::Policy;

use crate::ops::config::{Config, Revocation};
use crate::ops::pki::{self, LeafSpec, PkiLayout};

/// `policy:` in the hub's configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySection {
    /// Refuse to load (at start) or to take (on reload, keeping the last good policy) a
    /// policy in which an active grant or subscription lacks a valid consent of its
    /// provider or approval of the secretariat. Default false: unsigned grants are then
    /// only logged. Withdrawn grants are never honoured.
    #[serde(default)]
    pub require_signatures: bool,
    /// The signatures file; default `<policy_dir>/signatures.yaml`.
    #[serde(default)]
    pub signatures: Option<PathBuf>,
}

/// What signers' certificates are checked against.
#[derive(Debug, Clone)]
pub struct TrustFiles {
    /// PEM file with the national root(s).
    pub ca: PathBuf,
    /// PEM CRL files.
    pub crls: Vec<PathBuf>,
    /// Whether certificates are checked against `crls` (deny by default: true unless the
    /// hub runs with `revocation: off`).
    pub check_revocation: bool,
}

impl TrustFiles {
    /// Reads the files.
    pub fn read(&self) -> Result<Trust, String> {
        let ca = std::fs::read_to_string(&self.ca)
            .map_err(|e| format!("cannot read the national root {}: {e}", self.ca.display()))?;
        let mut crls = Vec::new();
        for p in &self.crls {
            crls.push(
                std::fs::read_to_string(p)
                    .map_err(|e| format!("cannot read the CRL {}: {e}", p.display()))?,
            );
        }
        Trust::from_pem(&ca, &crls, self.check_revocation).map_err(|e| {
            format!(
                "signers' trust (root {}, CRLs {:?}): {e}",
                self.ca.display(),
                self.crls
            )
        })
    }
}

/// Why a policy was not loaded.
#[derive(Debug, Clone)]
pub enum LoadError {
    /// The policy files themselves are broken.
    Policy(PolicyErrors),
    /// Signatures are required and missing or invalid (one line per grant), or the trust
    /// material cannot be read.
    Signatures(Vec<String>),
}

impl LoadError {
    /// How many problems.
    pub fn len(&self) -> usize {
        match self {
            LoadError::Policy(e) => e.len(),
            LoadError::Signatures(v) => v.len(),
        }
    }

    /// Never true for an error the loader returns.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The first problem and how many more.
    pub fn summary(&self) -> String {
        match self {
            LoadError::Policy(e) => e.summary(),
            LoadError::Signatures(v) => match v.len() {
                0 => "no errors".to_owned(),
                1 => v[0].clone(),
                n => format!("{} (and {} more)", v[0], n - 1),
            },
        }
    }

    /// Every problem, one per line.
    pub fn lines(&self) -> Vec<String> {
        match self {
            LoadError::Policy(e) => e.to_string().lines().map(str::to_owned).collect(),
            LoadError::Signatures(v) => v.clone(),
        }
    }
}

/// How the hub loads its policy: the directory, the signatures and the trust to check
/// them with, and whether they are required.
#[derive(Debug, Clone)]
pub struct PolicyLoader {
    /// The policy directory.
    pub dir: PathBuf,
    /// The signatures file.
    pub signatures: PathBuf,
    /// Trust for the signers; `None` checks no signatures at all.
    pub trust: Option<TrustFiles>,
    /// `policy.require_signatures`.
    pub require: bool,
}

impl PolicyLoader {
    /// The loader of a hub configuration: signatures checked against `tls.ca` and
    /// `tls.crls`.
    pub fn from_config(cfg: &Config) -> PolicyLoader {
        PolicyLoader {
            dir: cfg.policy_dir.clone(),
            signatures: cfg
                .policy
                .signatures
                .clone()
                .unwrap_or_else(|| cfg.policy_dir.join(SIGNATURES_FILE)),
            trust: Some(TrustFiles {
                ca: cfg.tls.ca.clone(),
                crls: cfg.tls.crls.clone(),
                check_revocation: cfg.tls.revocation == Revocation::Crl,
            }),
            require: cfg.policy.require_signatures,
        }
    }

    /// A loader of `dir` that checks no signatures.
    pub fn plain(dir: &Path) -> PolicyLoader {
        PolicyLoader {
            dir: dir.to_owned(),
            signatures: dir.join(SIGNATURES_FILE),
            trust: None,
            require: false,
        }
    }

    /// Loads and checks the policy (blocking work). Withdrawn grants and subscriptions are
    /// taken out; with `require`, any active one without valid signatures refuses the
    /// whole policy, naming each.
    pub fn load(&self) -> Result<Policy, LoadError> {
        self.load_with_report().map(|(p, _)| p)
    }

    /// [`PolicyLoader::load`], with the signature report when signatures were checked.
    pub fn load_with_report(&self) -> Result<(Policy, Option<Report>), LoadError> {
        let src = tabadol_policy::load::load_dir(&self.dir).map_err(LoadError::Policy)?;
        let Some(files) = &self.trust else {
            return Ok((Policy::compile(src), None));
        };
        let trust = match files.read() {
            Ok(t) => t,
            Err(e) if self.require => {
                return Err(LoadError::Signatures(vec![format!(
                    "policy.require_signatures: {e}"
                )]))
            }
            Err(e) => {
                tracing::warn!(message = "policy signatures not checked", error = %e);
                return Ok((Policy::compile(src), None));
            }
        };
        let report = signatures::check(
            &self.dir,
            &self.signatures,
            &src,
            &trust,
            jiff::Timestamp::now(),
        );
        if self.require {
            let refusals = report.refusals();
            if !refusals.is_empty() {
                return Err(LoadError::Signatures(
                    refusals
                        .into_iter()
                        .map(|r| format!("policy.require_signatures: {r}"))
                        .collect(),
                ));
            }
        } else {
            for p in &report.problems {
                tracing::warn!(message = "policy signatures file problem", problem = %p);
            }
            let (_, unsigned, _) = report.counts();
            if unsigned > 0 {
                tracing::warn!(
                    message = "grants or subscriptions without a valid consent and approval (honoured: policy.require_signatures is off)",
                    unsigned,
                    hint = "run `tabadol policy check` with --ca to list them",
                );
            }
        }
        for w in report.withdrawn() {
            tracing::warn!(
                message = "withdrawn; not honoured",
                item = %format!("{} {}", w.kind.as_str(), w.id),
                agency = %w.agency,
                what = %w.what,
                signatures = %w.summary(),
            );
        }
        let mut policy = Policy::compile(report.honoured(src));
        policy.attach_signatures(&report);
        Ok((policy, Some(report)))
    }
}

/// The approval text of a grant for ListServices, with who consented and approved.
pub fn approval_with_signatures(policy: &Policy, g: &Grant) -> String {
    let text = crate::inquiry::pipeline::approval_text(&g.approved);
    match policy.signature_summary(Kind::Grant, &g.id) {
        Some(s) => format!("{text}; signed: {s}"),
        None => text,
    }
}

/// Where the signatures are and what to check them against (`policy check|explain`).
#[derive(Debug, Clone, clap::Args)]
pub struct SignatureArgs {
    /// The signatures file [default: DIR/signatures.yaml].
    #[arg(long, value_name = "FILE")]
    pub signatures: Option<PathBuf>,
    /// The national root (PEM) the signers' certificates must chain to.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// A CRL (PEM) of the root; repeat for several. Without one, revocation is not checked.
    #[arg(long, value_name = "FILE")]
    pub crl: Vec<PathBuf>,
    /// A `tabadol dev` directory: its root (DEV/pki/ca.crt) and signatures
    /// (DEV/signatures.yaml), no revocation.
    #[arg(long, value_name = "DEV", conflicts_with_all = ["ca", "signatures"])]
    pub dev: Option<PathBuf>,
    /// Fail (exit 1) when an active grant or subscription is not signed, as a hub with
    /// `policy.require_signatures: true` would refuse it.
    #[arg(long)]
    pub require_signatures: bool,
}

impl SignatureArgs {
    /// The loader these arguments describe for `dir`; no trust when no root was given.
    pub fn loader(&self, dir: &Path) -> PolicyLoader {
        let (signatures, ca, crls) = match &self.dev {
            Some(dev) => (
                dev.join(SIGNATURES_FILE),
                Some(PkiLayout::new(dev.join("pki")).ca_cert()),
                Vec::new(),
            ),
            None => (
                self.signatures
                    .clone()
                    .unwrap_or_else(|| dir.join(SIGNATURES_FILE)),
                self.ca.clone(),
                self.crl.clone(),
            ),
        };
        PolicyLoader {
            dir: dir.to_owned(),
            signatures,
            trust: ca.map(|ca| TrustFiles {
                ca,
                check_revocation: !crls.is_empty(),
                crls,
            }),
            require: self.require_signatures,
        }
    }
}

/// `tabadol policy check DIR`: the files, then every grant's and subscription's
/// signatures.
pub fn check_command(dir: &Path, args: &SignatureArgs) -> anyhow::Result<ExitCode> {
    let src = match tabadol_policy::load::load_dir(dir) {
        Ok(src) => src,
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!("{}: {} error(s)", dir.display(), errors.len());
            return Ok(ExitCode::FAILURE);
        }
    };
    println!(
        "{}: ok ({} agencies, {} services, {} grants, {} subscriptions)",
        dir.display(),
        src.agencies.len(),
        src.services.len(),
        src.grants.len(),
        src.subscriptions.len()
    );
    let loader = args.loader(dir);
    let Some(files) = &loader.trust else {
        println!(
            "signatures: not checked; give the national root with --ca FILE (and --crl FILE), or --dev DIR for a `tabadol dev` directory"
        );
        return Ok(if args.require_signatures {
            eprintln!("--require-signatures needs --ca or --dev");
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        });
    };
    let trust = files.read().map_err(anyhow::Error::msg)?;
    let report = signatures::check(
        dir,
        &loader.signatures,
        &src,
        &trust,
        jiff::Timestamp::now(),
    );
    println!(
        "signatures: {} (root {}, revocation {})",
        loader.signatures.display(),
        files.ca.display(),
        if files.check_revocation {
            format!("checked against {} CRL file(s)", files.crls.len())
        } else {
            "NOT checked: no --crl given".to_owned()
        }
    );
    for item in &report.items {
        println!("{item}");
    }
    for n in &report.notes {
        println!("note: {n}");
    }
    for p in &report.problems {
        eprintln!("{p}");
    }
    let (signed, unsigned, withdrawn) = report.counts();
    println!("{signed} signed, {unsigned} unsigned, {withdrawn} withdrawn");
    let refused = args.require_signatures && !report.refusals().is_empty();
    if refused {
        eprintln!(
            "a hub with policy.require_signatures: true refuses this policy: sign the UNSIGNED items (`tabadol policy sign`)"
        );
    }
    Ok(if refused || !report.problems.is_empty() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Arguments of `tabadol policy sign`.
#[derive(Debug, Clone, clap::Args)]
#[command(group(clap::ArgGroup::new("item").required(true).args(["grant", "subscription"])))]
pub struct SignArgs {
    /// Id of the grant to sign (grants.yaml).
    #[arg(long, value_name = "ID")]
    pub grant: Option<String>,
    /// Id of the subscription to sign (subscriptions.yaml).
    #[arg(long, value_name = "ID")]
    pub subscription: Option<String>,
    /// Sign as the provider agency (consent) or as the secretariat (approval).
    #[arg(long = "as", value_enum)]
    pub role: RoleArg,
    /// The signer's certificate (PEM; intermediates may follow the leaf).
    #[arg(long, value_name = "FILE")]
    pub cert: PathBuf,
    /// The signer's private key (PEM, PKCS#8).
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// Withdraw the consent (or approval) of the item as it stands, for good.
    #[arg(long)]
    pub withdraw: bool,
    /// The policy directory.
    #[arg(long, default_value = "policy/national")]
    pub dir: PathBuf,
    /// The signatures file [default: DIR/signatures.yaml].
    #[arg(long, value_name = "FILE")]
    pub signatures: Option<PathBuf>,
}

/// `--as` of `policy sign`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RoleArg {
    /// The provider agency: consent.
    Provider,
    /// The secretariat: approval.
    Secretariat,
}

/// The content of an item and the common names allowed to sign it in `role`.
fn item_and_signers(
    dir: &Path,
    src: &PolicySource,
    kind: Kind,
    id: &str,
    role: Role,
) -> anyhow::Result<(serde_json::Value, Vec<(String, String)>)> {
    let cn_of = |agency: &str| {
        src.agencies
            .iter()
            .find(|a| a.id == agency)
            .map(|a| (a.id.clone(), a.certificate.common_name.clone()))
    };
    let (content, providers) = match kind {
        Kind::Grant => {
            let g = src.grants.iter().find(|g| g.id == id).ok_or_else(|| {
                anyhow::anyhow!(
                    "no grant `{id}` in {}/grants.yaml (ids: {})",
                    dir.display(),
                    src.grants
                        .iter()
                        .map(|g| g.id.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })?;
            let provider = src
                .services
                .iter()
                .find(|s| s.id == g.service)
                .map(|s| s.provider.clone())
                .unwrap_or_default();
            (
                signatures::grant_content(g),
                cn_of(&provider).into_iter().collect::<Vec<_>>(),
            )
        }
        Kind::Subscription => {
            let s = src
                .subscriptions
                .iter()
                .find(|s| s.id == id)
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "no subscription `{id}` in {}/subscriptions.yaml",
                        dir.display()
                    )
                })?;
            let publishers = src
                .agencies
                .iter()
                .filter(|a| a.publishes.iter().any(|e| s.event_types.contains(e)))
                .map(|a| (a.id.clone(), a.certificate.common_name.clone()))
                .collect();
            (signatures::subscription_content(s), publishers)
        }
    };
    let signers = match role {
        Role::Provider => providers,
        Role::Secretariat => {
            let s = signatures::load_secretariat(dir).map_err(|e| anyhow::anyhow!("{e}"))?;
            vec![("secretariat".to_owned(), s.certificate.common_name)]
        }
    };
    Ok((content, signers))
}

/// The subject common name of the first certificate in a PEM file.
fn common_name(pem: &str) -> anyhow::Result<String> {
    let ders = signatures::pem_certificates(pem).map_err(anyhow::Error::msg)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&ders[0])
        .map_err(|e| anyhow::anyhow!("unreadable certificate: {e}"))?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|c| c.as_str().ok())
        .unwrap_or("")
        .to_owned();
    Ok(cn)
}

/// `tabadol policy sign`.
pub fn sign_command(args: &SignArgs) -> anyhow::Result<ExitCode> {
    let src = tabadol_policy::load::load_dir(&args.dir)
        .map_err(|e| anyhow::anyhow!("policy {} is not valid:\n{e}", args.dir.display()))?;
    let (kind, id) = match (&args.grant, &args.subscription) {
        (Some(g), _) => (Kind::Grant, g.as_str()),
        (None, Some(s)) => (Kind::Subscription, s.as_str()),
        (None, None) => anyhow::bail!("give --grant ID or --subscription ID"),
    };
    let role = match args.role {
        RoleArg::Provider => Role::Provider,
        RoleArg::Secretariat => Role::Secretariat,
    };
    let read =
        |p: &Path| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()));
    let (cert, key) = (read(&args.cert)?, read(&args.key)?);
    let (content, signers) = item_and_signers(&args.dir, &src, kind, id, role)?;
    let cn = common_name(&cert)?;
    if !signers.iter().any(|(_, c)| *c == cn) {
        anyhow::bail!(
            "{} is {cn}, but the {} of {} {id} is signed by {}; use that party's certificate",
            args.cert.display(),
            role.act(),
            kind.as_str(),
            signers
                .iter()
                .map(|(who, c)| format!("{who} ({c})"))
                .collect::<Vec<_>>()
                .join(" or ")
        );
    }
    let action = if args.withdraw {
        Action::Withdraw
    } else {
        Action::Accept
    };
    let entry = signatures::sign(&SignRequest {
        kind,
        id,
        content: &content,
        role,
        action,
        chain_pem: &cert,
        key_pem: &key,
        at: jiff::Timestamp::now(),
    })?;
    let path = args
        .signatures
        .clone()
        .unwrap_or_else(|| args.dir.join(SIGNATURES_FILE));
    signatures::append_entry(&path, &entry).map_err(anyhow::Error::msg)?;
    println!(
        "{} {id}: {} {} by {} at {} (content sha256 {}) → {}",
        kind.as_str(),
        role.act(),
        if args.withdraw { "WITHDRAWN" } else { "signed" },
        entry.signer,
        entry.signed_at,
        &signatures::content_hash(&content)[..16],
        path.display()
    );
    if args.withdraw {
        println!("the hub stops honouring it at its next reload (SIGHUP)");
    }
    Ok(ExitCode::SUCCESS)
}

/// `tabadol policy explain` with signatures (--ca or --dev): the honoured policy (its
/// grants carry who consented and approved) and the report, for withdrawn grants.
pub fn explain_lines(
    dir: &Path,
    args: &SignatureArgs,
) -> anyhow::Result<Option<(Policy, Option<Report>)>> {
    let loader = args.loader(dir);
    if loader.trust.is_none() {
        return Ok(None);
    }
    let loader = PolicyLoader {
        require: false,
        ..loader
    };
    loader
        .load_with_report()
        .map(Some)
        .map_err(|e| anyhow::anyhow!("{}", e.lines().join("\n")))
}

/// Lines for `policy explain AGENCY`: the agency's withdrawn grants (not honoured).
pub fn withdrawn_lines(report: &Report, agency: &str) -> Vec<String> {
    report
        .withdrawn()
        .into_iter()
        .filter(|i| i.kind == Kind::Grant && i.agency == agency)
        .map(|i| {
            format!(
                "  {} — WITHDRAWN, not honoured (grant {}): {}",
                i.what,
                i.id,
                i.summary()
            )
        })
        .collect()
}

/// Arguments of `tabadol policy diff`.
#[derive(Debug, Clone, clap::Args)]
pub struct DiffArgs {
    /// The policy before; with --git, the policy directory whose version at REV is the
    /// policy before and whose working copy is the policy after.
    pub old: PathBuf,
    /// The policy after (not with --git).
    #[arg(required_unless_present = "git", conflicts_with = "git")]
    pub new: Option<PathBuf>,
    /// Compare the policy directory as committed at this git revision with its working copy.
    #[arg(long, value_name = "REV")]
    pub git: Option<String>,
    /// The signatures of the new policy [default: NEW/signatures.yaml].
    #[arg(long, value_name = "FILE")]
    pub signatures: Option<PathBuf>,
}

/// `tabadol policy diff OLD NEW`: grants added, removed and changed, per agency; a grant
/// whose content is not what its signatures sign is marked.
pub fn diff_command(args: &DiffArgs) -> anyhow::Result<ExitCode> {
    let load = |d: &Path| {
        tabadol_policy::load::load_dir(d)
            .map_err(|e| anyhow::anyhow!("policy {} is not valid:\n{e}", d.display()))
    };
    let (before_dir, _checkout) = match &args.git {
        Some(rev) => {
            let tmp = crate::ops::diff::checkout(&args.old, rev)?;
            (tmp.path().to_owned(), Some(tmp))
        }
        None => (args.old.clone(), None),
    };
    let after_dir = args.new.clone().unwrap_or_else(|| args.old.clone());
    let (old, new) = (load(&before_dir)?, load(&after_dir)?);
    let sig_path = args
        .signatures
        .clone()
        .unwrap_or_else(|| after_dir.join(SIGNATURES_FILE));
    let claimed = signatures::claimed_hashes(&sig_path);
    let by_id = |src: &PolicySource| -> BTreeMap<String, Grant> {
        src.grants
            .iter()
            .map(|g| (g.id.clone(), g.clone()))
            .collect()
    };
    let (before, after) = (by_id(&old), by_id(&new));
    // agency → lines
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mark = |g: &Grant| -> String {
        let hash = signatures::content_hash(&signatures::grant_content(g));
        let sigs = claimed.get(&(Kind::Grant, g.id.clone()));
        let roles: BTreeSet<&str> = sigs
            .into_iter()
            .flatten()
            .filter(|(_, action, h)| *action == Action::Accept && *h == hash)
            .map(|(role, _, _)| role.act())
            .collect();
        match (sigs.map_or(0, Vec::len), roles.len()) {
            (0, _) => "unsigned".to_owned(),
            (_, 0) => "SIGNATURES NO LONGER MATCH: sign again".to_owned(),
            (_, 1) => format!(
                "signed for this content: {} only (not verified here; run `policy check`)",
                roles.into_iter().next().unwrap_or_default()
            ),
            _ => "consent and approval signed for this content (not verified here; run `policy check`)"
                .to_owned(),
        }
    };
    for (id, g) in &after {
        match before.get(id) {
            None => out.entry(g.agency.clone()).or_default().push(format!(
                "  + grant {id} ({}) — {}",
                g.service,
                mark(g)
            )),
            Some(o) if o != g => {
                let a = signatures::grant_content(o);
                let b = signatures::grant_content(g);
                let empty = serde_json::Map::new();
                let (a, b) = (
                    a.as_object().unwrap_or(&empty),
                    b.as_object().unwrap_or(&empty),
                );
                let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
                let changed: Vec<String> = keys
                    .into_iter()
                    .filter(|k| a.get(*k) != b.get(*k))
                    .map(|k| format!("`{k}`"))
                    .collect();
                out.entry(g.agency.clone()).or_default().push(format!(
                    "  ~ grant {id} ({}): {} changed — {}",
                    g.service,
                    changed.join(", "),
                    mark(g)
                ));
            }
            Some(_) => {}
        }
    }
    for (id, g) in &before {
        if !after.contains_key(id) {
            out.entry(g.agency.clone())
                .or_default()
                .push(format!("  - grant {id} ({})", g.service));
        }
    }
    if out.is_empty() {
        println!("no grant added, removed or changed");
    }
    for (agency, lines) in out {
        println!("{agency}:");
        for l in lines {
            println!("{l}");
        }
    }
    // What each change does to access, with the approval it cites (ops/diff.rs).
    if crate::ops::diff::print(&crate::ops::diff::changes(&old, &new)) {
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// The secretariat's development certificate and key in a dev PKI.
pub fn secretariat_files(layout: &PkiLayout) -> (PathBuf, PathBuf) {
    (
        layout.dir.join("secretariat.crt"),
        layout.dir.join("secretariat.key"),
    )
}

/// `tabadol dev`: signs, with the development PKI, every grant and subscription of the
/// policy in `dir` that lacks a valid signature of a party (and is not withdrawn): the
/// provider with its agency certificate, the secretariat with a certificate issued here
/// for the name in `secretariat.yaml`. `fresh` (a new root) starts the file anew. Returns
/// how many signatures were written.
pub fn dev_sign(
    dir: &Path,
    signatures_file: &Path,
    layout: &PkiLayout,
    fresh: bool,
) -> anyhow::Result<usize> {
    if fresh && signatures_file.exists() {
        std::fs::remove_file(signatures_file)
            .with_context(|| format!("removing {}", signatures_file.display()))?;
    }
    let src = tabadol_policy::load::load_dir(dir).map_err(|e| anyhow::anyhow!("{e}"))?;
    let secretariat = match signatures::load_secretariat(dir) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(message = "no secretariat: approvals not signed", error = %e);
            None
        }
    };
    let (s_cert, s_key) = secretariat_files(layout);
    if let Some(s) = &secretariat {
        let current = std::fs::read_to_string(&s_cert)
            .ok()
            .and_then(|pem| common_name(&pem).ok());
        if fresh || !s_key.exists() || current.as_deref() != Some(&s.certificate.common_name) {
            let ca = pki::read_ca(layout)?;
            let pair = pki::issue(&ca, &LeafSpec::client(s.certificate.common_name.clone()))?;
            std::fs::write(&s_cert, &pair.cert)?;
            std::fs::write(&s_key, &pair.key)?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&s_key, std::fs::Permissions::from_mode(0o600))?;
            }
        }
    }
    let trust = TrustFiles {
        ca: layout.ca_cert(),
        crls: Vec::new(),
        check_revocation: false,
    }
    .read()
    .map_err(anyhow::Error::msg)?;
    let report = signatures::check(dir, signatures_file, &src, &trust, jiff::Timestamp::now());
    let mut written = 0;
    for item in &report.items {
        if item.status() == ItemStatus::Withdrawn {
            continue;
        }
        let content = match item.kind {
            Kind::Grant => src
                .grants
                .iter()
                .find(|g| g.id == item.id)
                .map(signatures::grant_content),
            Kind::Subscription => src
                .subscriptions
                .iter()
                .find(|s| s.id == item.id)
                .map(signatures::subscription_content),
        };
        let Some(content) = content else { continue };
        for p in &item.parties {
            if !matches!(p.state, PartyState::Unsigned { .. }) {
                continue;
            }
            let (cert, key) = match p.role {
                Role::Provider => (layout.agency_cert(&p.party), layout.agency_key(&p.party)),
                Role::Secretariat if secretariat.is_some() => (s_cert.clone(), s_key.clone()),
                Role::Secretariat => continue,
            };
            let (Ok(cert), Ok(key)) = (
                std::fs::read_to_string(&cert),
                std::fs::read_to_string(&key),
            ) else {
                continue;
            };
            let entry = signatures::sign(&SignRequest {
                kind: item.kind,
                id: &item.id,
                content: &content,
                role: p.role,
                action: Action::Accept,
                chain_pem: &cert,
                key_pem: &key,
                at: jiff::Timestamp::now(),
            })?;
            signatures::append_entry(signatures_file, &entry).map_err(anyhow::Error::msg)?;
            written += 1;
        }
    }
    Ok(written)
}

/// The report of the policy in `dir` under the dev PKI (tests, `tabadol dev`).
pub fn dev_report(
    dir: &Path,
    signatures_file: &Path,
    layout: &PkiLayout,
) -> anyhow::Result<Report> {
    let src = tabadol_policy::load::load_dir(dir).map_err(|e| anyhow::anyhow!("{e}"))?;
    let trust = TrustFiles {
        ca: layout.ca_cert(),
        crls: Vec::new(),
        check_revocation: false,
    }
    .read()
    .map_err(anyhow::Error::msg)?;
    Ok(signatures::check(
        dir,
        signatures_file,
        &src,
        &trust,
        jiff::Timestamp::now(),
    ))
}
